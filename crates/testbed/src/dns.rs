//! A DNS client for the local mesh: one A query over UDP from inside a
//! pod, to whatever resolver address the pod uses (captured into
//! ztunnel's DNS proxy when the node agents capture DNS).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ambit_netns::NetNs;
use anyhow::Context;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

/// The resolver address pods are configured with in the local mesh (a
/// cluster DNS VIP; nothing listens there: capture must answer).
pub const POD_RESOLVER: &str = "10.96.0.10:53";

/// Asks `resolver` from inside `ns` for the A records of `name`; waits up
/// to 3 s.
pub fn resolve_a(ns: &NetNs, resolver: SocketAddr, name: &str) -> anyhow::Result<Vec<IpAddr>> {
    let sock = ns
        .udp_socket("0.0.0.0:0".parse().context("address")?)
        .context("udp socket in the pod")?;
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut q = Message::query();
    q.metadata.id = 0x4d42;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_ascii(name).context("name")?,
        RecordType::A,
    ));
    sock.send_to(&q.to_vec()?, resolver)?;
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .with_context(|| format!("no answer from {resolver} for {name}"))?;
    let reply = Message::from_vec(&buf[..n]).context("a malformed answer")?;
    anyhow::ensure!(
        reply.metadata.id == q.metadata.id,
        "an answer to another query"
    );
    Ok(reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect())
}
