//! Measures the DNS proxy in one run, inside a network namespace it
//! creates (run as root): queries/s and latency of
//!
//! (a) the test upstream alone (the baseline),
//! (b) the proxy answering a mesh name itself,
//! (c) the proxy forwarding to the upstream,
//!
//! with ratios to (a). Closed loop: `DNS_BENCH_CONC` clients (default 16),
//! each with its own UDP socket and one query outstanding, for
//! `DNS_BENCH_SECS` seconds per case (default 3), on a 2-worker runtime.
//!
//! ```sh
//! cargo run --release -p ambit-dns --example dns-bench
//! ```

#[path = "../tests/support/client.rs"]
#[allow(dead_code)]
mod client;
#[path = "../tests/support/upstream.rs"]
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_dns::{Config, DnsProxy, Family, MeshAnswer, Metrics, Name};
use ambit_netns::NetNs;
use hickory_proto::rr::RecordType;
use tokio::net::{TcpListener, UdpSocket};

const UPSTREAM: &str = "127.0.0.2:53";
const PROXY: &str = "127.0.0.1:15053";

struct Figures {
    qps: f64,
    p50: Duration,
    p99: Duration,
    lost: u64,
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One closed-loop client: queries `server` for `name` until `until`.
async fn client_loop(
    server: SocketAddr,
    name: &'static str,
    until: Instant,
) -> (Vec<Duration>, u64) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
    sock.connect(server).await.expect("connect");
    let mut latencies = Vec::new();
    let mut lost = 0;
    let mut buf = vec![0u8; 4096];
    let mut id: u16 = 0;
    while Instant::now() < until {
        id = id.wrapping_add(1);
        let packet = client::query(id, name, RecordType::A, None);
        let started = Instant::now();
        sock.send(&packet).await.expect("send");
        let got = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let n = sock.recv(&mut buf).await.expect("recv");
                if n >= 2 && buf[..2] == id.to_be_bytes() {
                    return;
                }
            }
        })
        .await;
        match got {
            Ok(()) => latencies.push(started.elapsed()),
            Err(_) => lost += 1,
        }
    }
    (latencies, lost)
}

async fn measure(server: SocketAddr, name: &'static str, conc: u64, secs: u64) -> Figures {
    // Warm up (socket buffers, caches, the upstream connection path).
    let _ = client_loop(server, name, Instant::now() + Duration::from_millis(200)).await;
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conc)
        .map(|_| tokio::spawn(client_loop(server, name, until)))
        .collect();
    let mut all = Vec::new();
    let mut lost = 0;
    for t in tasks {
        let (l, n) = t.await.expect("client task");
        all.extend(l);
        lost += n;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        qps: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        lost,
    }
}

fn mesh(_: SocketAddr, name: &Name, _: Family) -> Option<MeshAnswer> {
    (name.to_lowercase().to_ascii() == "reviews.default.svc.cluster.local.")
        .then(|| MeshAnswer::addrs([IpAddr::from([10, 96, 0, 7])]))
}

async fn bench(conc: u64, secs: u64) {
    let seen = Arc::new(upstream::Seen::default());
    let up_udp = UdpSocket::bind(UPSTREAM).await.expect("upstream udp");
    let up_tcp = TcpListener::bind(UPSTREAM).await.expect("upstream tcp");
    tokio::spawn(upstream::serve(up_udp, up_tcp, seen));
    let mut config = Config::with_upstreams([UPSTREAM.parse().expect("addr")]);
    config.timeout = Duration::from_secs(1);
    let mut registry = prometheus_client::registry::Registry::default();
    let proxy = DnsProxy::new(config, Arc::new(mesh), Metrics::new(&mut registry));
    let udp = UdpSocket::bind(PROXY).await.expect("proxy udp");
    let tcp = TcpListener::bind(PROXY).await.expect("proxy tcp");
    tokio::spawn(async move { proxy.serve(udp, tcp, std::future::pending()).await });

    let upstream = UPSTREAM.parse().expect("addr");
    let proxied = PROXY.parse().expect("addr");
    let a = measure(upstream, "www.example.", conc, secs).await;
    let b = measure(proxied, "reviews.default.svc.cluster.local.", conc, secs).await;
    let c = measure(proxied, "www.example.", conc, secs).await;
    println!("dns-bench: {conc} closed-loop UDP clients, {secs} s per case, 2 runtime workers");
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>6} {:>9} {:>9}",
        "case", "queries/s", "p50 µs", "p99 µs", "lost", "qps/(a)", "p99/(a)"
    );
    for (label, f) in [
        ("(a) upstream alone", &a),
        ("(b) proxy, mesh name", &b),
        ("(c) proxy, forwarded to upstream", &c),
    ] {
        println!(
            "{:<34} {:>10.0} {:>9} {:>9} {:>6} {:>9.2} {:>9.2}",
            label,
            f.qps,
            f.p50.as_micros(),
            f.p99.as_micros(),
            f.lost,
            f.qps / a.qps,
            f.p99.as_secs_f64() / a.p99.as_secs_f64(),
        );
    }
}

fn main() {
    let conc = env_or("DNS_BENCH_CONC", 16);
    let secs = env_or("DNS_BENCH_SECS", 3);
    let ns = NetNs::create_anonymous().expect("a network namespace (run as root)");
    let up = ns
        .output(Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("ip");
    assert!(up.status.success(), "lo up");
    // Threads started from inside the namespace stay in it, so the whole
    // runtime runs there.
    ns.run(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(bench(conc, secs));
    })
    .expect("run in the namespace");
}
