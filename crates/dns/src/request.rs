//! The request path without the network: parse a client's query, answer
//! it for a mesh name, or say it must be forwarded.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use crate::metrics::DnsLabels;
use crate::resolver::{Family, MeshResolver};

/// Size of a DNS header.
pub(crate) const HEADER_LEN: usize = 12;
/// The classic UDP limit (RFC 1035), and the floor of any EDNS size.
pub(crate) const MIN_UDP_PAYLOAD: usize = 512;
/// The largest DNS message (TCP framing is a 16-bit length).
pub(crate) const MAX_MESSAGE: usize = u16::MAX as usize;

/// How a client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// One datagram per query; replies are truncated to the client's size.
    Udp,
    /// Length-framed messages on a connection.
    Tcp,
}

impl Protocol {
    /// `udp` or `tcp` (the metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

/// What to do with one message from a client.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes back (already sized for the transport).
    Reply(Vec<u8>),
    /// Not a mesh name: forward upstream.
    Forward(Box<Forward>),
    /// Send nothing (too short to carry a header, or not a query).
    Drop,
}

/// A query to be forwarded upstream, with what the reply needs.
#[derive(Debug)]
pub struct Forward {
    /// The client's message as received.
    pub(crate) packet: Vec<u8>,
    /// The client's parsed message.
    pub(crate) request: Message,
    /// Largest reply the client can take.
    pub(crate) max_reply: usize,
    /// Metric labels of this query.
    pub(crate) labels: DnsLabels,
}

impl Forward {
    /// The question being forwarded.
    pub fn query(&self) -> Option<&Query> {
        self.request.queries.first()
    }
}

/// The fixed inputs of [`handle`].
pub(crate) struct Context<'a> {
    pub(crate) resolver: &'a dyn MeshResolver,
    pub(crate) ttl: u32,
    pub(crate) max_udp_payload: u16,
}

/// The largest reply a client can take over `protocol`.
pub(crate) fn max_reply(request: &Message, protocol: Protocol, cap: u16) -> usize {
    match protocol {
        Protocol::Tcp => MAX_MESSAGE,
        Protocol::Udp => {
            let asked = request
                .edns
                .as_ref()
                .map_or(MIN_UDP_PAYLOAD, |e| usize::from(e.max_payload()));
            asked.min(usize::from(cap)).max(MIN_UDP_PAYLOAD)
        }
    }
}

/// Parses `packet` and answers it when it asks for a mesh name; reports
/// the query to `count` (the requests metric) once it is well formed.
pub(crate) fn handle(
    ctx: &Context<'_>,
    packet: &[u8],
    client: SocketAddr,
    protocol: Protocol,
    count: &dyn Fn(&DnsLabels),
) -> Outcome {
    if packet.len() < HEADER_LEN || packet[2] & 0x80 != 0 {
        // No header to answer with, or a response (answering responses
        // invites reflection loops).
        return Outcome::Drop;
    }
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return Outcome::Reply(header_only(packet, ResponseCode::FormErr)),
    };
    if request.metadata.op_code != OpCode::Query {
        return Outcome::Reply(header_only(packet, ResponseCode::NotImp));
    }
    let [query] = request.queries.as_slice() else {
        return Outcome::Reply(header_only(packet, ResponseCode::FormErr));
    };
    let labels = DnsLabels::new(
        &query.query_type().to_string(),
        protocol,
        ctx.resolver.client_labels(client),
    );
    count(&labels);
    let max_reply = max_reply(&request, protocol, ctx.max_udp_payload);
    let family = match (query.query_class(), query.query_type()) {
        (DNSClass::IN, RecordType::A) => Some(Family::V4),
        (DNSClass::IN, RecordType::AAAA) => Some(Family::V6),
        _ => None,
    };
    let answer = family.and_then(|f| Some((f, ctx.resolver.lookup(client, query.name(), f)?)));
    let Some((family, answer)) = answer else {
        return Outcome::Forward(Box::new(Forward {
            packet: packet.to_vec(),
            request,
            max_reply,
            labels,
        }));
    };
    let mut reply = response_to(&request, ctx.max_udp_payload);
    reply.metadata.authoritative = true;
    let mut owner = query.name().clone();
    if let Some(canonical) = answer.canonical_name {
        reply.add_answer(Record::from_rdata(
            owner,
            ctx.ttl,
            RData::CNAME(CNAME(canonical.clone())),
        ));
        owner = canonical;
    }
    for ip in answer.addrs.iter().filter(|ip| family.matches(ip)) {
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(*v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
        };
        reply.add_answer(Record::from_rdata(owner.clone(), ctx.ttl, rdata));
    }
    Outcome::Reply(encode_fitting(&reply, max_reply, &request))
}

/// A response skeleton for `request`: same id, opcode, RD and CD, the
/// question, RA set (the proxy recurses through its upstreams), and an OPT
/// record when the request had one.
pub(crate) fn response_to(request: &Message, max_udp_payload: u16) -> Message {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.checking_disabled = request.metadata.checking_disabled;
    reply.metadata.recursion_available = true;
    reply.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(max_udp_payload.max(MIN_UDP_PAYLOAD as u16));
        reply.set_edns(edns);
    }
    reply
}

/// An error reply with the request's question.
pub(crate) fn error_reply(request: &Message, code: ResponseCode, max_udp_payload: u16) -> Vec<u8> {
    let mut reply = response_to(request, max_udp_payload);
    reply.metadata.response_code = code;
    encode_fitting(&reply, MAX_MESSAGE, request)
}

/// An error reply made from the raw header of a message that did not
/// parse: id, opcode and RD copied, no sections.
pub(crate) fn header_only(packet: &[u8], code: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[0] = packet[0];
    out[1] = packet[1];
    // QR, the opcode and RD of the query.
    out[2] = 0x80 | (packet[2] & 0x79);
    // RA, and the 4-bit response code.
    out[3] = 0x80 | (u16::from(code) as u8 & 0x0f);
    out
}

/// Encodes `reply`; if it does not fit in `max`, encodes it truncated
/// instead (TC set, only the question and OPT kept) so the client retries
/// over TCP. If it cannot be encoded at all, a SERVFAIL header.
pub(crate) fn encode_fitting(reply: &Message, max: usize, request: &Message) -> Vec<u8> {
    match reply.to_vec() {
        Ok(bytes) if bytes.len() <= max => bytes,
        Ok(_) => truncated(reply).unwrap_or_else(|| servfail_header(request)),
        Err(_) => servfail_header(request),
    }
}

fn truncated(reply: &Message) -> Option<Vec<u8>> {
    let mut short = reply.truncate();
    short.metadata.message_type = MessageType::Response;
    short.to_vec().ok()
}

fn servfail_header(request: &Message) -> Vec<u8> {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.response_code = ResponseCode::ServFail;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.to_vec().unwrap_or_else(|_| {
        let mut h = vec![0u8; HEADER_LEN];
        h[..2].copy_from_slice(&request.metadata.id.to_be_bytes());
        h[2] = 0x80;
        h[3] = 0x82;
        h
    })
}

/// Fits an upstream reply (already carrying the client's id) to the
/// client's limit: as is when it fits, else truncated.
pub(crate) fn fit_relayed(reply: Vec<u8>, max: usize, request: &Message) -> Vec<u8> {
    if reply.len() <= max {
        return reply;
    }
    match Message::from_vec(&reply) {
        Ok(parsed) => truncated(&parsed).unwrap_or_else(|| servfail_header(request)),
        Err(_) => servfail_header(request),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
