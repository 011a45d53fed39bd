//! The proxy over real sockets, in a network namespace each test creates:
//! a test upstream on 127.0.0.2:53 (UDP and TCP), the proxy on
//! 127.0.0.1:15053, clients on loopback. Nothing leaves the namespace.

#[path = "support/client.rs"]
mod client;
#[path = "support/upstream.rs"]
mod upstream;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_dns::{Config, DnsProxy, Family, MeshAnswer, Metrics, Name};
use ambit_netns::NetNs;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const UPSTREAM: &str = "127.0.0.2:53";
const PROXY: &str = "127.0.0.1:15053";
const WAIT: Duration = Duration::from_secs(5);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// Runs `body` inside a fresh namespace with loopback up; the namespace
/// goes away with the task.
fn in_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let ns = NetNs::create_anonymous().expect("netns (run as root)");
    let up = ns
        .output(Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("ip");
    assert!(up.status.success(), "lo up");
    ns.spawn_async(body).expect("task in netns").join();
}

fn mesh(_: SocketAddr, name: &Name, family: Family) -> Option<MeshAnswer> {
    match name.to_lowercase().to_ascii().as_str() {
        "reviews.default.svc.cluster.local." => Some(match family {
            Family::V4 => MeshAnswer::addrs([IpAddr::from([10, 96, 0, 7])]),
            Family::V6 => MeshAnswer::addrs([IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 7])]),
        }),
        _ => None,
    }
}

struct Running {
    seen: Arc<upstream::Seen>,
    registry: Registry,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

impl Running {
    fn metrics_text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task");
    }
}

/// Starts the test upstream and the proxy (with `tune` applied to a config
/// forwarding to the upstream).
async fn start(tune: impl FnOnce(&mut Config)) -> Running {
    let seen = Arc::new(upstream::Seen::default());
    let up_udp = UdpSocket::bind(UPSTREAM).await.expect("upstream udp");
    let up_tcp = TcpListener::bind(UPSTREAM).await.expect("upstream tcp");
    tokio::spawn(upstream::serve(up_udp, up_tcp, seen.clone()));

    let mut config = Config::with_upstreams([addr(UPSTREAM)]);
    config.timeout = Duration::from_secs(2);
    tune(&mut config);
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let proxy = DnsProxy::new(config, Arc::new(mesh), metrics);
    let udp = UdpSocket::bind(PROXY).await.expect("proxy udp");
    let tcp = TcpListener::bind(PROXY).await.expect("proxy tcp");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        proxy
            .serve(udp, tcp, async {
                let _ = stopped.await;
            })
            .await;
    });
    Running {
        seen,
        registry,
        stop,
        served,
    }
}

async fn client_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("client socket")
}

#[test]
fn mesh_names_are_answered_by_the_proxy_over_udp_and_tcp() {
    in_netns(|| async {
        let run = start(|_| {}).await;
        let sock = client_socket().await;
        let name = "reviews.default.svc.cluster.local.";
        let a = client::udp(
            &sock,
            addr(PROXY),
            &client::query(7, name, RecordType::A, None),
            WAIT,
        )
        .await
        .expect("A reply");
        assert_eq!(a.metadata.id, 7);
        assert!(a.metadata.authoritative);
        assert_eq!(client::ips(&a), [IpAddr::from([10, 96, 0, 7])]);
        assert_eq!(a.answers[0].ttl, 30);
        let mut tcp = TcpStream::connect(PROXY).await.expect("connect");
        let aaaa = client::tcp(&mut tcp, &client::query(8, name, RecordType::AAAA, None))
            .await
            .expect("AAAA reply");
        assert_eq!(aaaa.metadata.id, 8);
        assert_eq!(
            client::ips(&aaaa),
            [IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 7])]
        );
        // Several queries on one connection.
        let again = client::tcp(&mut tcp, &client::query(9, name, RecordType::A, None))
            .await
            .expect("second query on the connection");
        assert_eq!(again.metadata.id, 9);
        assert_eq!(run.seen.udp() + run.seen.tcp(), 0, "upstream not asked");
        let text = run.metrics_text();
        assert!(
            text.contains(r#"istio_dns_requests_total{request_query_type="a",request_protocol="udp",source_canonical_service="unknown",source_canonical_revision="unknown"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"istio_dns_requests_total{request_query_type="a",request_protocol="tcp""#
            ),
            "{text}"
        );
        run.stop().await;
    });
}

#[test]
fn other_names_are_forwarded_and_relayed_with_the_client_id() {
    in_netns(|| async {
        let run = start(|_| {}).await;
        let sock = client_socket().await;
        let a = client::udp(
            &sock,
            addr(PROXY),
            &client::query(0x4242, "www.example.", RecordType::A, None),
            WAIT,
        )
        .await
        .expect("forwarded reply");
        assert_eq!(a.metadata.id, 0x4242);
        assert!(!a.metadata.authoritative);
        assert_eq!(client::ips(&a), [IpAddr::from([192, 0, 2, 1])]);
        // A non-address type for a mesh name is forwarded too.
        let txt = client::udp(
            &sock,
            addr(PROXY),
            &client::query(
                2,
                "reviews.default.svc.cluster.local.",
                RecordType::TXT,
                Some(1232),
            ),
            WAIT,
        )
        .await
        .expect("TXT reply");
        assert_eq!(txt.answers.len(), 1);
        let nx = client::udp(
            &sock,
            addr(PROXY),
            &client::query(3, "nx.example.", RecordType::A, None),
            WAIT,
        )
        .await
        .expect("NXDOMAIN reply");
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(run.seen.udp(), 3);
        let text = run.metrics_text();
        assert!(
            text.contains(
                r#"istio_dns_upstream_requests_total{request_query_type="a",request_protocol="udp""#
            ),
            "{text}"
        );
        assert!(
            text.contains("istio_dns_upstream_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            !text.contains("istio_dns_upstream_failures_total{"),
            "{text}"
        );
        run.stop().await;
    });
}

#[test]
fn truncated_answers_are_retried_over_tcp_by_proxy_and_client() {
    in_netns(|| async {
        let run = start(|_| {}).await;
        let sock = client_socket().await;
        let query = client::query(11, "big.example.", RecordType::A, None);
        let short = client::udp(&sock, addr(PROXY), &query, WAIT)
            .await
            .expect("UDP reply");
        // The upstream truncated over UDP, the proxy fetched it over TCP,
        // and the whole answer does not fit the client's 512 bytes either.
        assert_eq!(run.seen.udp(), 1);
        assert_eq!(run.seen.tcp(), 1, "proxy retried over TCP");
        assert!(short.metadata.truncation);
        assert!(short.answers.is_empty());
        assert_eq!(short.metadata.id, 11);
        // The client retries over TCP and gets everything.
        let mut tcp = TcpStream::connect(PROXY).await.expect("connect");
        let whole = client::tcp(&mut tcp, &query).await.expect("TCP reply");
        assert!(!whole.metadata.truncation);
        assert_eq!(whole.answers.len(), 100);
        // A client with a large enough EDNS size gets it over UDP.
        let big = client::query(12, "big.example.", RecordType::A, Some(4096));
        let capped = client::udp(&sock, addr(PROXY), &big, WAIT)
            .await
            .expect("EDNS reply");
        // 100 A records are ~1.6 kB: over the proxy's 1232-byte cap.
        assert!(capped.metadata.truncation);
        run.stop().await;
    });
}

#[test]
fn a_silent_upstream_gets_servfail_within_the_timeout() {
    in_netns(|| async {
        let run = start(|c| {
            c.timeout = Duration::from_millis(300);
            c.attempts = 2;
        })
        .await;
        let sock = client_socket().await;
        let started = Instant::now();
        let reply = client::udp(
            &sock,
            addr(PROXY),
            &client::query(5, "silent.example.", RecordType::A, None),
            WAIT,
        )
        .await
        .expect("a SERVFAIL, not silence");
        let took = started.elapsed();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(reply.metadata.id, 5);
        assert_eq!(reply.queries.len(), 1);
        assert!(
            took >= Duration::from_millis(550) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        assert_eq!(run.seen.udp(), 2, "one try per attempt");
        let text = run.metrics_text();
        assert!(
            text.contains(r#"istio_dns_upstream_failures_total{request_query_type="a""#),
            "{text}"
        );
        run.stop().await;
    });
}

#[test]
fn malformed_input_slow_clients_and_caps_are_survived() {
    in_netns(|| async {
        let run = start(|c| {
            c.tcp_request_timeout = Duration::from_millis(300);
            c.tcp_idle_timeout = Duration::from_millis(500);
            c.max_tcp_connections = 2;
        })
        .await;
        let sock = client_socket().await;
        // Garbage datagrams: too short (dropped), a response (dropped),
        // a header with a missing question (FORMERR).
        sock.send_to(&[1, 2, 3], PROXY).await.expect("send");
        let mut as_response = client::query(1, "www.example.", RecordType::A, None);
        as_response[2] |= 0x80;
        sock.send_to(&as_response, PROXY).await.expect("send");
        let bad = [0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f, b'x'];
        let formerr = client::udp(&sock, addr(PROXY), &bad, WAIT)
            .await
            .expect("FORMERR");
        assert_eq!(formerr.metadata.id, 0xabcd);
        assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);

        // A slowloris: claims 65535 bytes, sends 3, stalls. Cut after the
        // request timeout; the idle one is cut after the idle timeout.
        let mut slow = TcpStream::connect(PROXY).await.expect("connect");
        slow.write_all(&[0xff, 0xff, 1, 2, 3]).await.expect("write");
        let idle = TcpStream::connect(PROXY).await.expect("connect");
        // Both slots taken: a third connection is closed at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = TcpStream::connect(PROXY).await.expect("connect");
        let refused = client::tcp(
            &mut third,
            &client::query(2, "www.example.", RecordType::A, None),
        )
        .await;
        assert!(refused.is_none(), "over the connection cap");
        for mut cut in [slow, idle] {
            let mut buf = [0u8; 1];
            let read =
                tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut cut, &mut buf))
                    .await
                    .expect("the proxy closes stalled connections");
            assert!(matches!(read, Ok(0) | Err(_)));
        }

        // Still serving.
        let mut tcp = TcpStream::connect(PROXY).await.expect("connect");
        let ok = client::tcp(
            &mut tcp,
            &client::query(3, "www.example.", RecordType::A, None),
        )
        .await
        .expect("served after abuse");
        assert_eq!(client::ips(&ok), [IpAddr::from([192, 0, 2, 1])]);
        let ok = client::udp(
            &sock,
            addr(PROXY),
            &client::query(4, "www.example.", RecordType::A, None),
            WAIT,
        )
        .await
        .expect("UDP still served");
        assert_eq!(ok.metadata.id, 4);
        run.stop().await;
    });
}
