//! DNS end to end in the local mesh (in-pod mode, node agents capturing
//! DNS): `sleep` asks the resolver its pod is configured with (any address
//! on port 53; here 10.96.0.10, where nothing runs) and the pod's rules
//! hand the query to ztunnel's DNS proxy inside the pod, which answers
//! mesh names from the mesh state — full names, short names, both
//! families — and forwards the rest to the upstream resolver the test runs
//! in the no-mesh pod. Over UDP and TCP.

#[path = "../../../crates/dns/tests/support/client.rs"]
mod client;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ambit_testbed::{Binaries, DEFAULT_MESH, DIRECT_SERVER_IP, LocalMesh, Mode, Options};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

const RESOLVER: &str = "10.96.0.10:53";

/// A ServiceEntry host with an auto-allocated VIP (as istiod allocates
/// from 240.240.0.0/16 and 2001:2::/48), appended to the default mesh's
/// services.
const SERVICE_ENTRY: &str = r#"
- name: api-external
  namespace: default
  hostname: api.external.test
  vips: ["/240.240.0.7", "/2001:2::7"]
  ports: {443: 443}
"#;
const WAIT: Duration = Duration::from_secs(5);

/// A blocking upstream resolver in the no-mesh pod: every A query gets
/// 192.0.2.1; counts what it answered. Stops when `stop` is set.
fn upstream(
    m: &LocalMesh,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    let pod = m.cluster.pod(1, 3);
    let addr = SocketAddr::new(DIRECT_SERVER_IP.parse().expect("ip"), 53);
    let sock = pod.ns().udp_socket(addr).expect("upstream socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(query) = q.queries.first().cloned() else {
                continue;
            };
            let mut reply = Message::response(q.metadata.id, q.metadata.op_code);
            reply.metadata.message_type = MessageType::Response;
            reply.metadata.recursion_desired = q.metadata.recursion_desired;
            reply.add_query(query.clone());
            if query.query_type() == RecordType::A {
                reply.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
                ));
            }
            if let Ok(bytes) = reply.to_vec() {
                seen.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send_to(&bytes, from);
            }
        }
    })
}

#[test]
fn pods_dns_is_captured_and_answered_from_the_mesh() {
    let bins = Binaries::beside(Path::new(env!("CARGO_BIN_EXE_ztunnel"))).expect("binaries");
    let m = LocalMesh::start_opts(
        &bins,
        Options {
            mode: Mode::InPod,
            dns_capture: true,
            mesh_yaml: format!("{DEFAULT_MESH}{SERVICE_ENTRY}"),
            dns_upstream: Some(SocketAddr::new(DIRECT_SERVER_IP.parse().expect("ip"), 53)),
            ..Options::default()
        },
        |_| {},
    )
    .expect("local mesh");
    let (stop, seen) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let up = upstream(&m, stop.clone(), seen.clone());
    let vip: IpAddr = "10.96.0.30".parse().expect("vip");
    let answers = m
        .sleep()
        .ns()
        .spawn_async(move || async move {
            let resolver: SocketAddr = RESOLVER.parse().expect("resolver");
            let sock = tokio::net::UdpSocket::bind("0.0.0.0:0")
                .await
                .expect("bind");
            let mut out = Vec::new();
            for (id, name, ty) in [
                (1, "reviews.default.svc.cluster.local.", RecordType::A),
                (2, "reviews.default.svc.cluster.local.", RecordType::AAAA),
                (3, "reviews.", RecordType::A),
                (4, "api.outside.test.", RecordType::A),
                (6, "api.external.test.", RecordType::A),
                (7, "api.external.test.", RecordType::AAAA),
            ] {
                let q = client::query(id, name, ty, None);
                out.push(client::udp(&sock, resolver, &q, WAIT).await);
            }
            let mut tcp = tokio::net::TcpStream::connect(resolver)
                .await
                .expect("tcp 53");
            let q = client::query(5, "reviews.default.svc.cluster.local.", RecordType::A, None);
            out.push(client::tcp(&mut tcp, &q).await);
            out
        })
        .expect("client")
        .join();
    stop.store(true, Ordering::Relaxed);
    let _ = up.join();
    let [full, aaaa, short, outside, se_a, se_aaaa, over_tcp] =
        answers.try_into().expect("seven answers");
    // The ServiceEntry host: its allocated VIPs, both families, answered
    // by the proxy (never forwarded).
    let se_a = se_a.expect("an answer for the ServiceEntry host");
    assert!(se_a.metadata.authoritative, "{se_a:?}");
    assert_eq!(client::ips(&se_a), vec![IpAddr::from([240, 240, 0, 7])]);
    let se_aaaa = se_aaaa.expect("an AAAA answer for the ServiceEntry host");
    assert_eq!(
        client::ips(&se_aaaa),
        vec!["2001:2::7".parse::<IpAddr>().expect("ip")]
    );
    let full = full.expect("an answer for the service's name (capture reached ztunnel)");
    assert_eq!(full.metadata.response_code, ResponseCode::NoError);
    assert!(
        full.metadata.authoritative,
        "mesh names are answered by the proxy"
    );
    assert_eq!(client::ips(&full), vec![vip]);
    let aaaa = aaaa.expect("an AAAA answer");
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(
        client::ips(&aaaa).is_empty(),
        "the service has no IPv6 VIP: {aaaa:?}"
    );
    let short = short.expect("the short name, expanded in sleep's namespace");
    assert_eq!(client::ips(&short), vec![vip], "{short:?}");
    // Answered under the asked name (a CNAME only when a search domain
    // was stripped, as istio/ztunnel does).
    assert_eq!(short.answers[0].name.to_ascii(), "reviews.");
    let outside = outside.expect("an outside name, forwarded");
    assert_eq!(client::ips(&outside), vec![IpAddr::from([192, 0, 2, 1])]);
    assert!(seen.load(Ordering::Relaxed) >= 1, "the upstream saw it");
    let over_tcp = over_tcp.expect("the same over TCP");
    assert_eq!(client::ips(&over_tcp), vec![vip]);
    // Istio's DNS metrics on node a's ztunnel.
    let zt_a = m.cluster.pod(0, 0).ns();
    let mut s = zt_a
        .tcp_connect("127.0.0.1:15020".parse().expect("addr"))
        .expect("metrics");
    use std::io::{Read, Write};
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    assert!(
        text.contains("istio_dns_requests_total{"),
        "dns metrics: {text}"
    );
    assert!(
        text.contains("istio_dns_upstream_requests_total{"),
        "{text}"
    );
}
