//! ztunnel benchmark on the local mesh, every figure against direct TCP
//! between pods outside the mesh on the same two nodes, in the same run:
//! bulk throughput, 1-byte round trips on an open connection, new
//! connections per second, and ztunnel memory per idle proxied connection.
//! Run as root, in release:
//!
//! ```text
//! cargo build --release -p ztunnel && cargo run --release -p ambit-examples --example ztunnel-bench
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ambit_testbed::{DEFAULT_MESH, DIRECT_SERVER, LocalMesh, rss_kib, tcpapp};

fn pct(v: &[Duration], p: usize) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[(v.len() * p / 100).min(v.len() - 1)].as_secs_f64() * 1e6
}

fn main() -> anyhow::Result<()> {
    ambit_testbed::preflight()?;
    let exe = std::env::current_exe()?;
    let bin: PathBuf = std::env::var_os("AMBIT_ZTUNNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            exe.parent()
                .and_then(|p| p.parent())
                .map(|d| d.join("ztunnel"))
                .unwrap_or_default()
        });
    anyhow::ensure!(
        bin.exists(),
        "{} not found: cargo build --release -p ztunnel",
        bin.display()
    );
    let mut mesh = LocalMesh::start(&bin, DEFAULT_MESH, |s| eprintln!("[bench] {s}"))?;
    let pids = mesh.ztunnel_pids();
    let direct: SocketAddr = DIRECT_SERVER.parse()?;
    let meshed: SocketAddr = "10.244.1.3:9080".parse()?;
    let (dc, mc) = (mesh.direct_client(), mesh.sleep());
    let rounds = 3;
    let bulk = 256 << 20;

    let mut t = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        t.0.push(tcpapp::drive(dc, direct, 0, bulk)?.mbps);
        t.1.push(tcpapp::drive(mc, meshed, 0, bulk)?.mbps);
    }
    t.0.sort_by(f64::total_cmp);
    t.1.sort_by(f64::total_cmp);
    let (td, tm) = (t.0[rounds / 2], t.1[rounds / 2]);

    let rd = tcpapp::rtt_1byte(dc, direct, 5000)?;
    let rm = tcpapp::rtt_1byte(mc, meshed, 5000)?;
    let cd = tcpapp::conn_rate(dc, direct, 2.0)?;
    let cm = tcpapp::conn_rate(mc, meshed, 2.0)?;

    let rss = |pids: &[u32]| pids.iter().filter_map(|p| rss_kib(*p)).sum::<u64>();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss(&pids);
    let (hold, opened) = tcpapp::hold_idle(mc, meshed, 1000)?;
    std::thread::sleep(Duration::from_millis(500));
    let after = rss(&pids);
    drop(hold);
    let per_conn = (after.saturating_sub(before) as f64 * 1024.0) / opened.max(1) as f64;

    println!(
        "\nztunnel on the local mesh (2 ztunnels in the path, release build if run with --release)"
    );
    println!(
        "{:<34} {:>12} {:>12} {:>10}",
        "measure", "direct", "meshed", "ratio"
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>9.2}x",
        "bulk throughput, MB/s (median of 3)",
        td,
        tm,
        tm / td
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>9.2}x",
        "1-byte round trip p50, µs",
        pct(&rd, 50),
        pct(&rm, 50),
        pct(&rm, 50) / pct(&rd, 50)
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>9.2}x",
        "1-byte round trip p99, µs",
        pct(&rd, 99),
        pct(&rm, 99),
        pct(&rm, 99) / pct(&rd, 99)
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>9.2}x",
        "new connections/s (1 client)",
        cd,
        cm,
        cm / cd
    );
    println!(
        "{:<34} {:>12} {:>12.0}",
        "ztunnel memory per idle conn, B", "-", per_conn
    );
    println!(
        "added p50 latency: {:.0} µs; {opened} idle connections held; ztunnel RSS {} KiB -> {} KiB (both nodes)",
        pct(&rm, 50) - pct(&rd, 50),
        before,
        after
    );
    drop(mesh);
    Ok(())
}
