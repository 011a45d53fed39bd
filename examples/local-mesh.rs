//! The main job: a whole Istio-style ambient mesh on one machine.
//!
//! Builds two nodes and bare pod namespaces, wires every pod through a
//! real CNI chain (`ptp` + `static`, then Ambit's `istio-cni` plugin,
//! installed by `cni-node install`), runs a `cni-node` agent per node that
//! captures the enrolled pods (node-level capture by default, VXLAN
//! standing in for Geneve; `--mode inpod` for Istio's current design, `--redirect
//! ebpf` for in-pod capture by eBPF instead of NAT rules), a
//! `ztunnel` per node and a `waypoint`, all real child processes, with an
//! in-process control plane (delta ADS + CA). It drives TCP to
//! `productpage` (L4) and HTTP to `reviews` (through the waypoint), prints
//! the path and a table, tears everything down and checks that the host's
//! namespaces, nftables ruleset, ipsets and ip rules are as they were.
//! Run as root:
//!
//! ```text
//! cargo build --release -p ztunnel -p cni-node -p waypoint
//! cargo run --release -p ambit-examples --example local-mesh   # or: make run
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ambit_testbed::httpapp::{self, Req, Version};
use ambit_testbed::{
    Binaries, DEFAULT_KUBE_ROUTES, DEFAULT_MESH, DEFAULT_ROUTES, DIRECT_SERVER, Figures,
    HostSnapshot, LocalMesh, Mode, NODES, Options, REVIEWS_VIP, VIP, kube_mesh, tcpapp,
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
    /// Another waypoint routing config (ambit-l7proxy YAML).
    #[arg(long)]
    routes: Option<PathBuf>,
    /// Where the waypoint's routes come from: `file` (the routes YAML) or
    /// `kube` (HTTPRoute and AuthorizationPolicy objects with the same
    /// intent, from an in-process Kubernetes API server, as in a cluster).
    #[arg(long, value_enum, default_value = "file")]
    routes_from: RoutesFrom,
    /// Capture mode: node-level (Istio 1.16–1.20) or in-pod (current Istio).
    #[arg(long, value_enum, default_value = "node")]
    mode: ModeArg,
    /// How in-pod capture redirects connections: `netfilter` (NAT rules in
    /// each pod, as Istio) or `ebpf` (cgroup hooks and sk_lookup;
    /// implies `--mode inpod`; DNS is then not captured).
    #[arg(long, value_enum, default_value = "netfilter")]
    redirect: RedirectArg,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoutesFrom {
    File,
    Kube,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RedirectArg {
    Netfilter,
    Ebpf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Node,
    Inpod,
}

/// A JSON string without its quotes (other values as JSON).
fn txt(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    ambit_testbed::preflight()?;
    let bin = ambit_testbed::ztunnel_binary(a.ztunnel.clone())?;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let ebpf = a.redirect == RedirectArg::Ebpf;
    let opts = Options {
        mesh_yaml: a.config.as_ref().map(read).transpose()?.unwrap_or_else(|| {
            match a.routes_from {
                RoutesFrom::File => DEFAULT_MESH.to_owned(),
                RoutesFrom::Kube => kube_mesh(),
            }
        }),
        routes_yaml: a
            .routes
            .as_ref()
            .map(read)
            .transpose()?
            .unwrap_or(DEFAULT_ROUTES.to_owned()),
        mode: match (a.mode, ebpf) {
            (_, true) | (ModeArg::Inpod, _) => Mode::InPod,
            (ModeArg::Node, false) => Mode::Node,
        },
        dns_capture: !ebpf,
        ebpf,
        kube_routes: a.routes_from == RoutesFrom::Kube,
        kube_objects: DEFAULT_KUBE_ROUTES.to_owned(),
        ..Options::default()
    };
    let bins = Binaries::beside(&bin)?;
    let host_before = HostSnapshot::take();
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

    let mesh = LocalMesh::start_opts(&bins, opts, |step| println!("[local-mesh] {step}"))?;
    let sleep = mesh.sleep();

    // DNS: sleep asks its resolver; the node agents capture port 53 into
    // ztunnel's DNS proxy, which answers mesh names itself.
    let resolver: std::net::SocketAddr = ambit_testbed::dns::POD_RESOLVER.parse()?;
    let dns_name = "reviews.default.svc.cluster.local";
    let resolved = ambit_testbed::dns::resolve_a(sleep.ns(), resolver, dns_name);

    println!("[local-mesh] driving traffic from sleep ({})", sleep.ip());
    // Meshed: the pods are enrolled, so every connection is captured.
    let meshed_pod = tcpapp::drive(sleep, pp_v1, a.requests, bulk)?;
    let meshed_vip = tcpapp::drive(sleep, vip, a.requests, bulk)?;
    // Direct: a client and a server outside the mesh on the same two nodes
    // (the same routed hops, no capture, no ztunnel).
    let direct = tcpapp::drive(
        mesh.direct_client(),
        DIRECT_SERVER.parse()?,
        a.requests,
        bulk,
    )?;

    // HTTP through the waypoint: a 90/10 split route on one keep-alive
    // connection, and one request per routing rule for the trace.
    let reviews: std::net::SocketAddr = REVIEWS_VIP.parse()?;
    let l7 = httpapp::send(
        sleep,
        reviews,
        Version::Http1,
        vec![Req::get("/split"); a.requests],
        Duration::from_secs(10),
    )?;
    let l7_checks = httpapp::send(
        sleep,
        reviews,
        Version::Http1,
        vec![
            Req::get("/v1/hello"),
            Req::get("/v1/hello").header("x-version", "v2"),
            Req::get("/admin/x").method("DELETE"),
            Req::get("/flaky").header("x-fail-on", "reviews-v1"),
        ],
        Duration::from_secs(10),
    )?;
    let l7_figures = Figures::of_http(&l7);

    if ebpf {
        println!("\nDNS: not captured with --redirect ebpf (sleep's resolver is asked directly):");
    } else {
        println!("\nDNS (captured into ztunnel's DNS proxy on 15053):");
    }
    match &resolved {
        Ok(ips) => println!(
            "  sleep resolves {dns_name} via {resolver}: {}",
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => println!("  sleep could not resolve {dns_name}: {e:#}"),
    }

    println!("\nPath of a request (from the ztunnels' access logs):");
    let logs = mesh.access_logs();
    // The L4 example: a connection to productpage (its VIP or v1's pod).
    let productpage = |v: &serde_json::Value| {
        ["dst.addr", "dst.hbone_addr"].iter().any(|k| {
            v[k].as_str()
                .is_some_and(|d| d.starts_with("10.96.0.20:") || d.starts_with("10.244.1.3:"))
        })
    };
    let pick = |node: &str, dir: &str| {
        logs.iter()
            .rev()
            .find(|(n, v)| {
                n == node && v["direction"] == dir && v["error"].is_null() && productpage(v)
            })
            .map(|(_, v)| v.clone())
    };
    if let (Some(out), Some(inb)) = (pick(NODES[0], "outbound"), pick(NODES[1], "inbound")) {
        println!(
            "  1. sleep {} connects to {} (service VIP or pod IP; endpoint {})",
            txt(&out["src.addr"]),
            txt(&out["dst.service"]),
            txt(&out["dst.hbone_addr"])
        );
        let (capture, arrive) = match (ebpf, a.mode) {
            (true, _) => (
                "node-a's eBPF program (cgroup connect4) rewrites the connect to ztunnel-a:15001 in sleep's namespace",
                "arrives in productpage's namespace, where ztunnel-b listens on 15008",
            ),
            (false, ModeArg::Inpod) => (
                "the in-pod rule in sleep's namespace redirects it to ztunnel-a:15001",
                "arrives in productpage's namespace, where ztunnel-b listens on 15008",
            ),
            (false, ModeArg::Node) => (
                "node-a captures it (mark 0x100 -> table 101 -> istioout) into ztunnel-a:15001",
                "node-b routes it (table 100 -> istioin) to ztunnel-b:15008",
            ),
        };
        println!("  2. {capture}");
        println!(
            "  3. ztunnel-a (as {}) opens HBONE to {} over mTLS: HTTP/2 CONNECT",
            txt(&out["src.identity"]),
            txt(&out["dst.addr"])
        );
        println!(
            "  4. it {arrive}, which verifies {} and authorizes",
            txt(&inb["src.identity"])
        );
        println!(
            "  5. ztunnel-b (as {}) connects to {} keeping the original source address {} (ztunnel-a dialled from it); mTLS between nodes: yes",
            txt(&inb["dst.identity"]),
            txt(&inb["dst.hbone_addr"]),
            txt(&inb["src.addr"])
                .rsplit_once(':')
                .map_or_else(|| txt(&inb["src.addr"]), |(ip, _)| ip.to_owned())
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

    println!("\nPath of an HTTP request to reviews ({REVIEWS_VIP}), which has a waypoint:");
    let wp = logs
        .iter()
        .find(|(n, v)| n == "waypoint" && v["path"] == "/v1/hello")
        .map(|(_, v)| v.clone());
    let to_wp = logs
        .iter()
        .rev()
        .find(|(n, v)| {
            n == NODES[0]
                && v["dst.hbone_addr"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(REVIEWS_VIP.split(':').next().unwrap_or("-")))
        })
        .map(|(_, v)| v.clone());
    if let (Some(out), Some(wp)) = (to_wp, wp) {
        println!(
            "  1. sleep connects to {}; node-a captures it into ztunnel-a",
            txt(&out["dst.hbone_addr"])
        );
        println!(
            "  2. the service has a waypoint: ztunnel-a (as {}) opens HBONE to {} over mTLS",
            txt(&out["src.identity"]),
            txt(&out["dst.addr"])
        );
        println!(
            "  3. the waypoint (peer {}) applies L7 policy and route `{}` to {} {}: endpoint {}",
            txt(&wp["peer"]),
            txt(&wp["route"]),
            txt(&wp["method"]),
            txt(&wp["path"]),
            txt(&wp["endpoint"])
        );
        println!(
            "  4. the waypoint re-originates HBONE, as spiffe://cluster.local/ns/default/sa/waypoint, to the pod's node: its ztunnel delivers it; status {}",
            txt(&wp["status"])
        );
    } else {
        println!(
            "  (no waypoint access-log line found; see {})",
            mesh.dir.display()
        );
    }
    let label = [
        "GET /v1/hello",
        "GET /v1/hello, x-version: v2",
        "DELETE /admin/x",
        "GET /flaky, v1 fails",
    ];
    for (what, r) in label.iter().zip(&l7_checks) {
        println!(
            "  {what:<30} -> {} {}",
            r.status,
            r.served_by.as_deref().unwrap_or("(waypoint)")
        );
    }
    let v1 = l7
        .iter()
        .filter(|r| r.served_by.as_deref() == Some("reviews-v1"))
        .count();
    println!(
        "  /split (90/10): v1 {v1}, v2 {} of {}",
        l7.iter()
            .filter(|r| r.served_by.as_deref() == Some("reviews-v2"))
            .count(),
        l7.len()
    );

    let table = ambit_testbed::table(&[
        ("direct (no mesh)", &direct),
        ("meshed, pod IP", &meshed_pod),
        ("meshed, service VIP", &meshed_vip),
        ("HTTP via the waypoint", &l7_figures),
    ]);
    println!("\n{table}");
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
    if let Some((i, j)) = mesh.waypoint_pod() {
        println!(
            "  waypoint: ip netns exec {} curl -s 127.0.0.1:15020/metrics  (istio_requests_total)",
            mesh.cluster.pod(i, j).name()
        );
    }
    for (i, n) in NODES.iter().enumerate() {
        println!(
            "  {n} cni-node: ip netns exec {} curl -s 127.0.0.1:15014/metrics; nft list ruleset / ip rule there",
            mesh.cluster.node(i).name()
        );
    }
    println!("  logs: {}", mesh.dir.display());

    let failed = meshed_pod.errors + meshed_vip.errors + direct.errors + l7_figures.errors;
    let l7_wrong = [200, 200, 403, 200]
        .iter()
        .zip(&l7_checks)
        .filter(|(want, r)| **want != r.status)
        .count();
    if a.keep {
        println!("\n[local-mesh] --keep: running until Ctrl-C");
        while !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("[local-mesh] tearing down");
    drop(mesh);
    let changed = host_before.changed(&HostSnapshot::take());
    if changed.is_empty() {
        println!(
            "[local-mesh] done: host unchanged ({})",
            host_before.what().join(", ")
        );
    } else {
        println!(
            "[local-mesh] host state differs after teardown: {}",
            changed.join(", ")
        );
    }
    anyhow::ensure!(failed == 0, "{failed} requests failed");
    match &resolved {
        Ok(ips) => anyhow::ensure!(
            ips.iter().any(|ip| ip.to_string() == "10.96.0.30"),
            "{dns_name} resolved to {ips:?}, not reviews' VIP"
        ),
        Err(_) if ebpf => {} // DNS is not captured with --redirect ebpf.
        Err(e) => anyhow::bail!("DNS through ztunnel failed: {e:#}"),
    }
    anyhow::ensure!(
        l7_wrong == 0,
        "{l7_wrong} waypoint checks gave the wrong status"
    );
    anyhow::ensure!(
        changed.is_empty(),
        "teardown left the host changed: {} (another process may have changed it meanwhile)",
        changed.join(", ")
    );
    Ok(())
}
