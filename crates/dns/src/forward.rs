//! Forwarding to upstream resolvers: UDP first, TCP when the answer is
//! truncated, a timeout per try and rounds over the upstreams.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::Error;
use crate::request::HEADER_LEN;

/// Receive buffer for upstream UDP replies. A datagram that fills it is
/// taken as larger than it and the query is retried over TCP, so memory
/// per in-flight forward stays at this.
const UDP_BUFFER: usize = 4096;

/// Sends queries to upstream resolvers.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    pub(crate) upstreams: Vec<SocketAddr>,
    pub(crate) timeout: Duration,
    pub(crate) attempts: u32,
}

impl Forwarder {
    /// Forwards the client's `packet` (whose parsed form is `request`)
    /// and returns the first valid upstream reply, carrying the client's id.
    pub(crate) async fn forward(&self, packet: &[u8], request: &Message) -> Result<Vec<u8>, Error> {
        if packet.len() < HEADER_LEN {
            return Err(Error::Encode("query shorter than a header".to_owned()));
        }
        // A fresh random id upstream, so a reply cannot be forged by
        // guessing the client's, and replies to other forwards never match.
        let id: u16 = rand::random();
        let mut upstream_packet = packet.to_vec();
        upstream_packet[..2].copy_from_slice(&id.to_be_bytes());
        let mut last = Error::NoUpstreams;
        for _ in 0..self.attempts.max(1) {
            for &upstream in &self.upstreams {
                let attempt = self.try_upstream(upstream, &upstream_packet, id, request);
                match tokio::time::timeout(self.timeout, attempt).await {
                    Ok(Ok(mut reply)) => {
                        reply[..2].copy_from_slice(&request.metadata.id.to_be_bytes());
                        return Ok(reply);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "upstream try failed");
                        last = e;
                    }
                    Err(_) => {
                        tracing::debug!(%upstream, "upstream try timed out");
                        last = Error::UpstreamTimeout {
                            upstream,
                            transport: "udp",
                            timeout: self.timeout,
                        };
                    }
                }
            }
        }
        Err(last)
    }

    /// One try: UDP, then TCP to the same upstream if the UDP reply was
    /// truncated (TC set, or larger than the receive buffer).
    async fn try_upstream(
        &self,
        upstream: SocketAddr,
        packet: &[u8],
        id: u16,
        request: &Message,
    ) -> Result<Vec<u8>, Error> {
        match udp_exchange(upstream, packet, id, request).await? {
            UdpReply::Whole(reply) => Ok(reply),
            UdpReply::Truncated => tcp_exchange(upstream, packet, id, request).await,
        }
    }
}

enum UdpReply {
    Whole(Vec<u8>),
    Truncated,
}

async fn udp_exchange(
    upstream: SocketAddr,
    packet: &[u8],
    id: u16,
    request: &Message,
) -> Result<UdpReply, Error> {
    let io = |what: &'static str| {
        move |source| Error::Upstream {
            upstream,
            transport: "udp",
            what,
            source,
        }
    };
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io("binding"))?;
    // Connected: the kernel drops datagrams from anyone else.
    socket.connect(upstream).await.map_err(io("connecting"))?;
    socket.send(packet).await.map_err(io("sending"))?;
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io("receiving"))?;
        if n == buf.len() {
            return Ok(UdpReply::Truncated);
        }
        let reply = &buf[..n];
        match check_reply(reply, id, request) {
            // A stray or forged datagram: keep waiting for the real one.
            Err(reason) => tracing::debug!(%upstream, reason, "ignoring upstream datagram"),
            Ok(()) if reply[2] & 0x02 != 0 => return Ok(UdpReply::Truncated),
            Ok(()) => return Ok(UdpReply::Whole(reply.to_vec())),
        }
    }
}

async fn tcp_exchange(
    upstream: SocketAddr,
    packet: &[u8],
    id: u16,
    request: &Message,
) -> Result<Vec<u8>, Error> {
    let io = |what: &'static str| {
        move |source| Error::Upstream {
            upstream,
            transport: "tcp",
            what,
            source,
        }
    };
    let mut stream = TcpStream::connect(upstream)
        .await
        .map_err(io("connecting"))?;
    let len = u16::try_from(packet.len())
        .map_err(|_| Error::Encode("query longer than 65535 bytes".to_owned()))?;
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.map_err(io("sending"))?;
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .await
        .map_err(io("reading length"))?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream
        .read_exact(&mut reply)
        .await
        .map_err(io("reading reply"))?;
    check_reply(&reply, id, request).map_err(|reason| Error::BadReply {
        upstream,
        transport: "tcp",
        reason: reason.to_owned(),
    })?;
    Ok(reply)
}

/// Whether `reply` answers the query sent with `id`: a response with that
/// id and the same question.
fn check_reply(reply: &[u8], id: u16, request: &Message) -> Result<(), &'static str> {
    if reply.len() < HEADER_LEN {
        return Err("shorter than a header");
    }
    if u16::from_be_bytes([reply[0], reply[1]]) != id {
        return Err("id differs");
    }
    let parsed = Message::from_vec(reply).map_err(|_| "malformed")?;
    if parsed.metadata.message_type != MessageType::Response {
        return Err("not a response");
    }
    if parsed.queries != request.queries {
        return Err("question differs");
    }
    Ok(())
}
