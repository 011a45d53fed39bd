//! A test-only upstream DNS server (hickory-proto for the wire format),
//! shared by the integration tests and the benchmark example.
//!
//! Zone, all under `example.`:
//! - `big.example.` A: 100 addresses (does not fit in 512 bytes: over UDP
//!   the reply is truncated, TC set);
//! - `silent.example.`: never answered;
//! - `nx.example.`: NXDOMAIN;
//! - any other name: A 192.0.2.1, AAAA 2001:db8::1, TXT "upstream".

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// What the upstream has seen.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Queries received over UDP.
    pub(crate) udp: AtomicUsize,
    /// Queries received over TCP.
    pub(crate) tcp: AtomicUsize,
}

impl Seen {
    #[allow(dead_code)]
    pub(crate) fn udp(&self) -> usize {
        self.udp.load(Ordering::Relaxed)
    }
    #[allow(dead_code)]
    pub(crate) fn tcp(&self) -> usize {
        self.tcp.load(Ordering::Relaxed)
    }
}

/// The reply to `query`, or `None` to stay silent. Over UDP a reply that
/// does not fit the client's size comes back truncated.
fn answer(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let q = request.queries.first()?.clone();
    let name = q.name().to_lowercase().to_ascii();
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    match name.as_str() {
        "silent.example." => return None,
        "nx.example." => reply.metadata.response_code = ResponseCode::NXDomain,
        "big.example." if q.query_type() == RecordType::A => {
            for i in 0..100u8 {
                let rdata = RData::A(A(Ipv4Addr::new(198, 51, 100, i)));
                reply.add_answer(Record::from_rdata(q.name().clone(), 60, rdata));
            }
        }
        _ => {
            let rdata = match q.query_type() {
                RecordType::A => Some(RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))),
                RecordType::AAAA => Some(RData::AAAA(AAAA(Ipv6Addr::new(
                    0x2001, 0xdb8, 0, 0, 0, 0, 0, 1,
                )))),
                RecordType::TXT => Some(RData::TXT(TXT::new(vec!["upstream".to_owned()]))),
                _ => None,
            };
            if let Some(rdata) = rdata {
                reply.add_answer(Record::from_rdata(q.name().clone(), 60, rdata));
            }
        }
    }
    let bytes = reply.to_vec().ok()?;
    if udp && bytes.len() > usize::from(request.max_payload()) {
        let mut short = reply.truncate();
        short.metadata.message_type = MessageType::Response;
        return short.to_vec().ok();
    }
    Some(bytes)
}

/// Serves the zone on `udp` and `tcp` until the task is dropped.
pub(crate) async fn serve(udp: UdpSocket, tcp: TcpListener, seen: Arc<Seen>) {
    let udp_loop = {
        let seen = seen.clone();
        async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                seen.udp.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = answer(&buf[..n], true) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        }
    };
    let tcp_loop = async move {
        loop {
            let Ok((mut stream, _)) = tcp.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    seen.tcp.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = answer(&query, false) {
                        let len = (reply.len() as u16).to_be_bytes();
                        if stream
                            .write_all(&[&len[..], &reply].concat())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    };
    tokio::join!(udp_loop, tcp_loop);
}
