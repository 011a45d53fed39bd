//! A minimal DNS client for tests and the benchmark: one query over UDP or
//! TCP, with hickory-proto for the wire format.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A query message for `name`/`ty` with id `id` (and EDNS when `edns`).
pub(crate) fn query(id: u16, name: &str, ty: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), ty));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

/// Sends `packet` over UDP from `socket` to `server`; the reply or `None`
/// after `wait`.
pub(crate) async fn udp(
    socket: &UdpSocket,
    server: SocketAddr,
    packet: &[u8],
    wait: Duration,
) -> Option<Message> {
    socket.send_to(packet, server).await.expect("send");
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(Message::from_vec(&buf[..n]).expect("a well-formed reply"))
}

/// Sends one framed `packet` on `stream` and reads one framed reply.
pub(crate) async fn tcp(stream: &mut TcpStream, packet: &[u8]) -> Option<Message> {
    let len = (packet.len() as u16).to_be_bytes();
    stream.write_all(&[&len[..], packet].concat()).await.ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.ok()?;
    Some(Message::from_vec(&reply).expect("a well-formed reply"))
}

/// The A and AAAA addresses of an answer.
#[allow(dead_code)]
pub(crate) fn ips(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}
