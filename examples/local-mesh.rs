//! The main job: a whole Istio-style ambient mesh on one machine.
//!
//! Builds two nodes and their pods in network namespaces, applies
//! node-level capture (Istio 1.16–1.20's design, VXLAN standing in for
//! Geneve), starts a real `ztunnel` process per node, runs a `sleep`
//! client and `productpage` v1/v2 behind a service VIP, drives traffic
//! directly and through the mesh, prints the path and a table, and tears
//! everything down. Run as root:
//!
//! ```text
//! cargo build --release -p ztunnel && cargo run --release -p ambit-examples --example local-mesh
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ambit_examples::localmesh::{
    self, DEFAULT_MESH, DIRECT_SERVER, Figures, LocalMesh, NODES, VIP,
};
use anyhow::Context;
use clap::Parser;

/// Run a local ambient mesh and show traffic flowing through it.
#[derive(Debug, Parser)]
struct Args {
    /// Leave the mesh running until Ctrl-C, for exploration.
    #[arg(long)]
    keep: bool,
    /// Another mesh config (ztunnel local YAML; pods must use the harness addresses).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The ztunnel binary (default: next to this example's build).
    #[arg(long, env = "AMBIT_ZTUNNEL")]
    ztunnel: Option<PathBuf>,
    /// Connections per measurement.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Bulk transfer size per measurement, MiB.
    #[arg(long, default_value_t = 64)]
    bulk_mib: usize,
}

fn ztunnel_path(a: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &a.ztunnel {
        return Ok(p.clone());
    }
    // target/<profile>/examples/local-mesh → target/<profile>/ztunnel
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .context("locating the build directory")?;
    let p = dir.join("ztunnel");
    anyhow::ensure!(
        p.exists(),
        "{} not found: build it first (`cargo build --release -p ztunnel`, or `make run`)",
        p.display()
    );
    Ok(p)
}

fn row(name: &str, f: &Figures) {
    println!(
        "  {name:<24} {:>8} {:>7} {:>10.0} {:>10.0} {:>10.0}",
        f.requests,
        f.errors,
        f.p50.as_secs_f64() * 1e6,
        f.p99.as_secs_f64() * 1e6,
        f.mbps
    );
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    localmesh::preflight()?;
    let bin = ztunnel_path(&a)?;
    let yaml = match &a.config {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => DEFAULT_MESH.to_owned(),
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = tokio::signal::ctrl_c().await;
                });
                flag.store(true, Ordering::SeqCst);
            }
        });
    }
    let bulk = a.bulk_mib << 20;
    let vip: std::net::SocketAddr = VIP.parse()?;
    let pp_v1: std::net::SocketAddr = "10.244.1.3:9080".parse()?;

    let mesh = LocalMesh::start(&bin, &yaml, |step| println!("[local-mesh] {step}"))?;
    let sleep = mesh.sleep();

    println!("[local-mesh] driving traffic from sleep ({})", sleep.ip());
    // Meshed: the pods are enrolled, so every connection is captured.
    let meshed_pod = localmesh::drive(sleep, pp_v1, a.requests, bulk)?;
    let meshed_vip = localmesh::drive(sleep, vip, a.requests, bulk)?;
    // Direct: a client and a server outside the mesh on the same two nodes
    // (the same routed hops, no capture, no ztunnel).
    let direct = localmesh::drive(
        mesh.direct_client(),
        DIRECT_SERVER.parse()?,
        a.requests,
        bulk,
    )?;

    println!("\nPath of a request (from the ztunnels' access logs):");
    let logs = mesh.access_logs();
    let pick = |node: &str, dir: &str| {
        logs.iter()
            .rev()
            .find(|(n, v)| {
                n == node && v["fields"]["direction"] == dir && v["fields"]["reason"] == "-"
            })
            .map(|(_, v)| v["fields"].clone())
    };
    if let (Some(out), Some(inb)) = (pick(NODES[0], "outbound"), pick(NODES[1], "inbound")) {
        println!(
            "  1. sleep {} connects to {} (service VIP or pod IP)",
            out["src"], out["dst"]
        );
        println!(
            "  2. node-a captures it (mark 0x100 -> table 101 -> istioout) into ztunnel-a:15001"
        );
        println!(
            "  3. ztunnel-a (as {}) opens HBONE to {} over mTLS: HTTP/2 CONNECT",
            out["src_identity"], out["via"]
        );
        println!(
            "  4. node-b routes it (table 100 -> istioin) to ztunnel-b:15008, which verifies {} and authorizes",
            inb["src_identity"]
        );
        println!(
            "  5. ztunnel-b (as {}) connects to {} keeping the original source {}; mTLS between nodes: yes",
            inb["dst_identity"], inb["dst"], inb["src"]
        );
    } else {
        println!(
            "  (no complete access-log pair found; see {})",
            mesh.dir.display()
        );
    }
    println!(
        "  backends that answered via the VIP: {}",
        meshed_vip.greetings.join(" | ")
    );
    println!("  answer by pod IP: {}", meshed_pod.greetings.join(" | "));

    println!(
        "\n  {:<24} {:>8} {:>7} {:>10} {:>10} {:>10}",
        "path", "requests", "errors", "p50 µs", "p99 µs", "MB/s"
    );
    row("direct (no mesh)", &direct);
    row("meshed, pod IP", &meshed_pod);
    row("meshed, service VIP", &meshed_vip);
    if direct.p50 > Duration::ZERO && direct.mbps > 0.0 {
        println!(
            "  meshed/direct: latency p50 {:.2}x, throughput {:.2}x (each connection is a new HBONE stream)",
            meshed_pod.p50.as_secs_f64() / direct.p50.as_secs_f64(),
            meshed_pod.mbps / direct.mbps
        );
    }

    println!("\nWhere to look:");
    for (i, n) in NODES.iter().enumerate() {
        let ns = mesh.cluster.pod(i, 0).name();
        println!(
            "  {n}: ip netns exec {ns} curl -s 127.0.0.1:15000/config_dump | 127.0.0.1:15020/metrics | 127.0.0.1:15021/healthz/ready"
        );
    }
    println!("  logs: {}", mesh.dir.display());

    let failed = meshed_pod.errors + meshed_vip.errors + direct.errors;
    if a.keep {
        println!("\n[local-mesh] --keep: running until Ctrl-C");
        while !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("[local-mesh] tearing down");
    drop(mesh);
    println!("[local-mesh] done: every namespace, link, rule and process removed");
    anyhow::ensure!(failed == 0, "{failed} requests failed");
    Ok(())
}
