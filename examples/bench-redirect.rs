//! In-pod capture by nftables vs by eBPF (with and without the same-pod
//! splice) vs no mesh, in one run: new
//! connection latency and rate, 1-byte round trips and bulk echo between
//! two pods on the same node.
//!
//! Three local meshes run side by side (in-pod mode; one with NAT rules in
//! the pods, one with `cni-node --redirect ebpf`, one with eBPF plus the
//! sk_msg splice of app ↔ ztunnel connections, `--ebpf-splice true`), and
//! a bare two-pod node serves as the no-mesh baseline. Each round measures the three paths one
//! after another; the table shows medians over rounds and the ratios to no
//! mesh. Run as root, with release binaries:
//!
//! ```text
//! cargo build --release -p ztunnel -p cni-node -p waypoint
//! cargo run --release -p ambit-examples --example bench-redirect   # or: make bench-redirect
//! ```
//!
//! Both meshed paths go sleep → ztunnel (in sleep's namespace) → HBONE →
//! ztunnel (in productpage-v2's namespace) → productpage-v2, all on node a.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ambit_netns::harness::{Cluster, Pod};
use ambit_testbed::{Binaries, LocalMesh, Mode, Options, median, percentile, tcpapp};
use anyhow::Context;
use clap::Parser;

/// Compare in-pod capture by nftables and by eBPF with no mesh.
#[derive(Debug, Parser)]
struct Args {
    /// Rounds; each measures every path once.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// New connections per latency round.
    #[arg(long, default_value_t = 300)]
    conns: usize,
    /// 1-byte round trips per round.
    #[arg(long, default_value_t = 3000)]
    round_trips: usize,
    /// Seconds per connection-rate round.
    #[arg(long, default_value_t = 1.0)]
    conn_secs: f64,
    /// Bulk echo per round, MiB.
    #[arg(long, default_value_t = 256)]
    bulk_mib: usize,
    /// The ztunnel binary (default: next to this example's build).
    #[arg(long, env = "AMBIT_ZTUNNEL")]
    ztunnel: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench-redirect.json")]
    json: PathBuf,
}

/// One path's figures for one round.
#[derive(Debug, Default, Clone)]
struct Round {
    conn_p50_us: f64,
    conn_p99_us: f64,
    conn_per_s: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    bulk_mbps: f64,
}

/// A table row: its label and the figure it shows.
type Row = (&'static str, fn(&Round) -> f64);

const SAME_NODE_SERVER: &str = "10.244.0.4:9080";

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn measure(a: &Args, pod: &Pod, to: SocketAddr) -> anyhow::Result<Round> {
    let f = tcpapp::drive(pod, to, a.conns, 0)?;
    anyhow::ensure!(
        f.errors == 0,
        "{} of {} connections to {to} failed",
        f.errors,
        a.conns
    );
    let rate = tcpapp::conn_rate(pod, to, a.conn_secs)?;
    let rtt: Vec<f64> = tcpapp::rtt_1byte(pod, to, a.round_trips)?
        .into_iter()
        .map(us)
        .collect();
    anyhow::ensure!(!rtt.is_empty(), "no round trips to {to}");
    let bulk = tcpapp::drive(pod, to, 0, a.bulk_mib << 20)?;
    anyhow::ensure!(bulk.errors == 0, "bulk echo to {to} failed");
    Ok(Round {
        conn_p50_us: us(f.p50),
        conn_p99_us: us(f.p99),
        conn_per_s: rate,
        rtt_p50_us: percentile(&rtt, 50),
        rtt_p99_us: percentile(&rtt, 99),
        bulk_mbps: bulk.mbps,
    })
}

/// Medians over rounds, one figure at a time.
fn medians(rounds: &[Round]) -> Round {
    let m = |f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    Round {
        conn_p50_us: m(|r| r.conn_p50_us),
        conn_p99_us: m(|r| r.conn_p99_us),
        conn_per_s: m(|r| r.conn_per_s),
        rtt_p50_us: m(|r| r.rtt_p50_us),
        rtt_p99_us: m(|r| r.rtt_p99_us),
        bulk_mbps: m(|r| r.bulk_mbps),
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    ambit_testbed::preflight()?;
    ambit_redirect::ebpf::supported()
        .map_err(|why| anyhow::anyhow!("eBPF capture is not available here: {why}"))?;
    let bin = ambit_testbed::ztunnel_binary(a.ztunnel.clone())?;
    let bins = Binaries::beside(&bin)?;
    let start = |ebpf: bool, ebpf_splice: bool| {
        let opts = Options {
            mode: Mode::InPod,
            ebpf,
            ebpf_splice,
            ..Options::default()
        };
        let what = match (ebpf, ebpf_splice) {
            (false, _) => "nftables",
            (true, false) => "eBPF",
            (true, true) => "eBPF+splice",
        };
        LocalMesh::start_opts(&bins, opts, |s| eprintln!("[bench {what}] {s}"))
            .with_context(|| format!("starting the {what} mesh"))
    };
    let nft = start(false, false)?;
    let ebpf = start(true, false)?;
    let splice = start(true, true)?;
    // No mesh: two wired pods on one node of a bare cluster.
    let bare = Cluster::builder()
        .nodes(1)
        .pods_per_node(2)
        .build()
        .context("building the no-mesh node")?;
    let server = bare.pod(0, 1);
    let _app = tcpapp::app_server(server, 9080, "no-mesh".into())?;
    let direct_to = SocketAddr::from((server.ip(), 9080));
    let meshed_to: SocketAddr = SAME_NODE_SERVER.parse()?;

    // Thousands of short connections per round would exhaust the
    // ephemeral ports (TIME_WAIT) and slow later rounds: every namespace
    // may reuse them, the same for all four paths.
    for c in [&nft.cluster, &ebpf.cluster, &splice.cluster, &bare] {
        tcpapp::reuse_ports(c)?;
    }

    let names = ["no mesh", "nftables", "eBPF", "eBPF+splice"];
    let mut all: [Vec<Round>; 4] = Default::default();
    for round in 1..=a.rounds {
        all[0].push(measure(&a, bare.pod(0, 0), direct_to)?);
        all[1].push(measure(&a, nft.sleep(), meshed_to)?);
        all[2].push(measure(&a, ebpf.sleep(), meshed_to)?);
        all[3].push(measure(&a, splice.sleep(), meshed_to)?);
        eprintln!("[bench] round {round}/{} done", a.rounds);
    }
    let med: Vec<Round> = all.iter().map(|r| medians(r)).collect();

    println!(
        "\nIn-pod capture, same node (sleep → ztunnel → HBONE → ztunnel → productpage-v2); medians of {} rounds\n",
        a.rounds
    );
    println!(
        "  {:<26} {:>10} {:>10} {:>10} {:>12}   {:>9} {:>9} {:>9}",
        "figure", names[0], names[1], names[2], names[3], "nft/none", "eBPF/none", "splice/none"
    );
    let rows: [Row; 6] = [
        ("new connection p50 (µs)", |r| r.conn_p50_us),
        ("new connection p99 (µs)", |r| r.conn_p99_us),
        ("new connections/s", |r| r.conn_per_s),
        ("1-byte RTT p50 (µs)", |r| r.rtt_p50_us),
        ("1-byte RTT p99 (µs)", |r| r.rtt_p99_us),
        ("bulk echo (MB/s)", |r| r.bulk_mbps),
    ];
    let mut json_rows = Vec::new();
    for (label, f) in rows {
        let v: Vec<f64> = med.iter().map(f).collect();
        let ratio = |x: f64| if v[0] > 0.0 { x / v[0] } else { 0.0 };
        println!(
            "  {label:<26} {:>10.1} {:>10.1} {:>10.1} {:>12.1}   {:>8.2}x {:>8.2}x {:>10.2}x",
            v[0],
            v[1],
            v[2],
            v[3],
            ratio(v[1]),
            ratio(v[2]),
            ratio(v[3])
        );
        json_rows.push(serde_json::json!({
            "figure": label,
            "no_mesh": v[0],
            "nftables": v[1],
            "ebpf": v[2],
            "ebpf_splice": v[3],
        }));
    }
    let conn = |r: &Round| r.conn_p50_us;
    println!(
        "\n  added per new connection (p50): nftables +{:.0} µs, eBPF +{:.0} µs, eBPF+splice +{:.0} µs",
        conn(&med[1]) - conn(&med[0]),
        conn(&med[2]) - conn(&med[0]),
        conn(&med[3]) - conn(&med[0])
    );
    let json = serde_json::json!({
        "rounds": a.rounds,
        "conns": a.conns,
        "round_trips": a.round_trips,
        "bulk_mib": a.bulk_mib,
        "rows": json_rows,
    });
    if let Some(dir) = a.json.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&a.json, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", a.json.display()))?;
    println!("  JSON: {}", a.json.display());
    drop((nft, ebpf, splice));
    Ok(())
}
