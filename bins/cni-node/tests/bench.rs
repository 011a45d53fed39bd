//! Benchmark: time from the plugin's ADD to "pod enrolled" (the ADD
//! returns only after the agent has programmed the pod), node-level mode,
//! nft backend, for 1 and 1,000 pods, with set entries written by one
//! `nft -f -` process per update (the baseline) and in process over
//! nfnetlink, in the same run; plus the agent's share alone (the event
//! posted without a plugin process). Also in-pod mode (current Istio):
//! every pod its own network namespace, the in-pod rules installed and
//! verified inside it, the pod added to the host's probe set. Run as root:
//! `cargo test --release -p cni-node --test bench -- --ignored --nocapture`
//! (`AMBIT_BENCH_PODS=N` for fewer pods; one test by name for one mode;
//! the plugin is the small `ambit-cni-plugin`, `AMBIT_BENCH_PLUGIN=<path>`
//! runs another, e.g. `cni-node` itself; `AMBIT_BENCH_AGENT=<path>` runs
//! another build of the agent, for A/B runs).

mod common;

use std::time::{Duration, Instant};

use ambit_netns::harness::Cluster;
use ambit_redirect::Backend;
use ambit_redirect::profiles::{self, InpodConfig, NodeConfig};
use common::*;

/// The plugin the ADD cases run: the small plugin `ambit-cni-plugin`
/// (what `cni-node install` puts in the CNI bin dir), or the executable
/// named by `AMBIT_BENCH_PLUGIN` (`cni-node` itself, another build, or
/// another project's plugin that speaks the same event socket).
fn plugin_binary() -> std::path::PathBuf {
    std::env::var_os("AMBIT_BENCH_PLUGIN")
        .filter(|p| !p.is_empty())
        .map_or_else(|| SMALL.into(), Into::into)
}

/// The plugin's file name, for the rows.
fn plugin_name() -> String {
    plugin_binary()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// A stand-in network namespace for every bench pod: node mode records a
/// sandbox's netns identity only, so one namespace (the ztunnel pod's) serves.
fn pod_netns(cluster: &Cluster) -> String {
    format!("/run/netns/{}", cluster.pod(0, 0).name())
}

fn pod_ip(i: usize) -> String {
    format!("10.245.{}.{}", i / 250, i % 250 + 2)
}

fn add(cluster: &Cluster, run: &std::path::Path, i: usize) -> Duration {
    add_in(cluster, run, i, &pod_netns(cluster))
}

/// An ADD for pod `i` whose sandbox is `netns`.
fn add_in(cluster: &Cluster, run: &std::path::Path, i: usize, netns: &str) -> Duration {
    let ip = pod_ip(i);
    let stdin = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","type":"istio-cni","ambient_enabled":true,"cni_agent_run_dir":"{}","prevResult":{{"cniVersion":"1.0.0","ips":[{{"address":"{ip}/16"}}]}}}}"#,
        run.display()
    );
    let env = [
        ("CNI_COMMAND", "ADD".to_owned()),
        ("CNI_CONTAINERID", format!("ctr-{i}")),
        ("CNI_NETNS", netns.to_owned()),
        ("CNI_IFNAME", "eth0".into()),
        (
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{i}"),
        ),
    ];
    let plugin = plugin_binary();
    let t = Instant::now();
    let out = exec_plugin(cluster.node(0).ns(), &plugin, &env, &stdin);
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    d
}

/// The plugin's event posted from this process (no plugin process): the
/// agent's share of an ADD.
fn post(cluster: &Cluster, run: &std::path::Path, i: usize) -> Duration {
    post_in(run, i, &pod_netns(cluster))
}

/// The event of pod `i` whose sandbox is `netns`, posted from this process.
fn post_in(run: &std::path::Path, i: usize, netns: &str) -> Duration {
    use ambit_cni::event::{EventKind, EventSink, PodEvent, UnixHttpSink};
    let ev = PodEvent {
        netns: netns.to_owned(),
        container_id: format!("ctr-{i}"),
        ifname: "eth0".into(),
        pod_name: format!("pod-{i}"),
        pod_namespace: "bench".into(),
        pod_uid: None,
        ips: vec![pod_ip(i).parse().expect("ip")],
        netns_id: None,
    };
    let t = Instant::now();
    // A burst coalesces into one reconcile, which may take longer than
    // the plugin's 30 s (the figure is what is measured here).
    let sink = UnixHttpSink {
        timeout: Duration::from_secs(600),
    };
    let answer = sink.post(run, EventKind::Add, &ev).expect("post");
    let d = t.elapsed();
    assert_eq!(answer, "enrolled");
    d
}

/// Figures of one run, in ms (totals in s).
struct Figures {
    one: f64,
    seq_total: f64,
    seq_p50: f64,
    seq_p99: f64,
    seq_max: f64,
    ev_p50: f64,
    ev_p99: f64,
    par_total: f64,
}

impl Figures {
    /// The figures of one case: the idle-agent ADD, the sequential ADDs
    /// (each, and their total), the agent's share per event, and the
    /// concurrent total (seconds).
    fn new(
        one: Duration,
        seq_total: Duration,
        each: &mut [Duration],
        events: &mut [Duration],
        par_total: f64,
    ) -> Self {
        Self {
            one: ms(one),
            seq_total: seq_total.as_secs_f64(),
            seq_p50: ms(pct(each, 0.5)),
            seq_p99: ms(pct(each, 0.99)),
            seq_max: ms(pct(each, 1.0)),
            ev_p50: ms(pct(events, 0.5)),
            ev_p99: ms(pct(events, 0.99)),
            par_total,
        }
    }
}

const N: usize = 1000;

/// Pods per case: `AMBIT_BENCH_PODS`, else [`N`].
fn pods_n() -> usize {
    std::env::var("AMBIT_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(N)
}
const EVENTS: usize = 200;
/// Concurrent posters in the burst case.
const THREADS: usize = 8;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Starts an agent writing set entries `how`, and measures.
fn run(how: &str, base: &mut Vec<Duration>) -> Figures {
    let n = pods_n();
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("cluster");
    let tmp = TempDir::new(&format!("bench-{how}"));
    let (run, pods) = (tmp.sub("run"), tmp.sub("pods"));
    for i in 0..=2 * n + EVENTS {
        write_record(
            &pods,
            &format!("pod-{i}"),
            "bench",
            &format!("uid-{i}"),
            true,
            &[],
            None,
        );
    }
    let args: Vec<String> = [
        "--mode",
        "node",
        "--tunnel",
        "vxlan",
        "--tunnel-port",
        "6081",
        "--ztunnel-ip",
        "10.244.0.2",
        "--host-ip",
        "10.244.0.1",
        "--nft-set-updates",
        how,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([
        "--netns".into(),
        format!("/run/netns/{}", cluster.node(0).name()),
        "--ztunnel-netns".into(),
        format!("/run/netns/{}", cluster.pod(0, 0).name()),
        "--pod-dir".into(),
        pods.display().to_string(),
    ])
    .collect();
    let mut agent = AgentProc::start(&run, &args);

    if base.is_empty() {
        // Baseline: the plugin process alone (VERSION, no agent work).
        for _ in 0..50 {
            let t = Instant::now();
            let out = exec_plugin(
                cluster.node(0).ns(),
                &plugin_binary(),
                &[("CNI_COMMAND", "VERSION".into())],
                "{}",
            );
            base.push(t.elapsed());
            assert!(out.status.success());
        }
    }

    let one = add(&cluster, &run, n); // the single pod, on an idle agent
    let t = Instant::now();
    let mut each: Vec<Duration> = (0..n).map(|i| add(&cluster, &run, i)).collect();
    let total = t.elapsed();
    let mut events: Vec<Duration> = (n + 1..=n + EVENTS)
        .map(|i| post(&cluster, &run, i))
        .collect();
    // A burst: n more pods' events from THREADS posters at once.
    let first = n + EVENTS + 1;
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..THREADS {
            let (cluster, run) = (&cluster, &run);
            s.spawn(move || {
                for i in (first + k..first + n).step_by(THREADS) {
                    post(cluster, run, i);
                }
            });
        }
    });
    let par_total = t.elapsed().as_secs_f64();

    let mut cfg = NodeConfig::new(
        "10.244.0.1".parse().expect("ip"),
        "veth0",
        "10.244.0.2".parse().expect("ip"),
    );
    cfg.tunnel_port = 6081;
    let plan = profiles::node_host(&cfg).expect("plan");
    let members = plan
        .members(cluster.node(0).ns(), Backend::Nft, &cfg.set_name)
        .expect("members");
    assert_eq!(members.len(), 2 * n + 1 + EVENTS);
    assert!(agent.stop());
    Figures::new(one, total, &mut each, &mut events, par_total)
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture as root"]
fn add_to_enrolled_latency() {
    let n = pods_n();
    let mut base = Vec::new();
    // Baseline: set entries written by one `nft -f -` process per update
    // (the former path), then the in-process nfnetlink path; same run.
    let old = run("nft", &mut base);
    let new = run("netlink", &mut base);
    let b = ms(pct(&mut base, 0.5));
    println!(
        "plugin process alone ({}, VERSION), median of 50: {b:.2} ms",
        plugin_name()
    );
    println!(
        "{:<46} {:>14} {:>14} {:>8}",
        "node mode, nft backend", "nft -f (base)", "nfnetlink", "ratio"
    );
    let row = |name: &str, o: f64, n: f64, unit: &str| {
        println!(
            "{name:<46} {:>11.2} {unit:<2} {:>11.2} {unit:<2} {:>7.2}x",
            o,
            n,
            o / n
        );
    };
    row("1 pod: ADD → enrolled (idle agent)", old.one, new.one, "ms");
    row(
        "per ADD (plugin process), p50",
        old.seq_p50,
        new.seq_p50,
        "ms",
    );
    row(
        "per ADD (plugin process), p99",
        old.seq_p99,
        new.seq_p99,
        "ms",
    );
    row(
        "per ADD (plugin process), max",
        old.seq_max,
        new.seq_max,
        "ms",
    );
    row(
        &format!("{n} pods, sequential ADDs: total"),
        old.seq_total,
        new.seq_total,
        "s",
    );
    row(
        "event → enrolled (no process), p50",
        old.ev_p50,
        new.ev_p50,
        "ms",
    );
    row(
        "event → enrolled (no process), p99",
        old.ev_p99,
        new.ev_p99,
        "ms",
    );
    row(
        &format!("{n} pods, {THREADS} concurrent events: total"),
        old.par_total,
        new.par_total,
        "s",
    );
}

/// Runs the in-pod agent against `n` pods, each in its own namespace with
/// an up loopback (so the dual-stack plan, as in a real pod).
fn run_inpod() -> Figures {
    let n = pods_n();
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("cluster");
    let tmp = TempDir::new("bench-inpod");
    let (run, pods) = (tmp.sub("run"), tmp.sub("pods"));
    let zds = tmp.0.join("ztunnel.sock");
    let total = 2 * n + EVENTS + 1;
    let mut sandboxes = Vec::with_capacity(total);
    for i in 0..total {
        write_record(
            &pods,
            &format!("pod-{i}"),
            "bench",
            &format!("uid-{i}"),
            true,
            &[],
            None,
        );
        let ns = NsName::new(&format!("abp{}-{i}", std::process::id()));
        let up = ns
            .open()
            .output(std::process::Command::new("ip").args(["link", "set", "lo", "up"]))
            .expect("ip link");
        assert!(up.status.success());
        sandboxes.push(ns);
    }
    let args: Vec<String> = vec![
        "--mode".into(),
        "inpod".into(),
        "--netns".into(),
        format!("/run/netns/{}", cluster.node(0).name()),
        "--pod-dir".into(),
        pods.display().to_string(),
        "--zds-socket".into(),
        zds.display().to_string(),
    ];
    let mut agent = AgentProc::start(&run, &args);
    let path = |i: usize| sandboxes[i].path();

    let one = add_in(&cluster, &run, n, &path(n));
    let t = Instant::now();
    let mut each: Vec<Duration> = (0..n)
        .map(|i| add_in(&cluster, &run, i, &path(i)))
        .collect();
    let seq_total = t.elapsed();
    let mut events: Vec<Duration> = (n + 1..=n + EVENTS)
        .map(|i| post_in(&run, i, &path(i)))
        .collect();
    let first = n + EVENTS + 1;
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..THREADS {
            let (run, path) = (&run, &path);
            s.spawn(move || {
                for i in (first + k..first + n).step_by(THREADS) {
                    post_in(run, i, &path(i));
                }
            });
        }
    });
    let par_total = t.elapsed().as_secs_f64();

    // Every pod is in the probe set and (sampled) carries the rules.
    let cfg = InpodConfig {
        ipv6: true,
        ..InpodConfig::default()
    };
    let host_plan = profiles::inpod_host_probes(&cfg).expect("plan");
    let members = host_plan
        .members(cluster.node(0).ns(), Backend::Nft, "istio-inpod-probes-v4")
        .expect("members");
    assert_eq!(members.len(), total);
    let pod_plan = profiles::inpod(&cfg).expect("plan");
    for i in [0, n / 2, n, first, total - 1] {
        let drift = pod_plan
            .verify(&sandboxes[i].open(), Backend::Nft)
            .expect("verify");
        assert!(drift.is_empty(), "pod {i}: {drift:?}");
    }
    assert!(agent.stop());
    Figures::new(one, seq_total, &mut each, &mut events, par_total)
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture as root"]
fn inpod_add_to_enrolled_latency() {
    let n = pods_n();
    let f = run_inpod();
    println!("in-pod mode, nft backend, dual-stack pods, {n} pods per case:");
    let row = |name: &str, v: f64, unit: &str| println!("{name:<46} {v:>11.2} {unit}");
    row("1 pod: ADD → enrolled (idle agent)", f.one, "ms");
    println!("plugin: {}", plugin_name());
    row("per ADD (plugin process), p50", f.seq_p50, "ms");
    row("per ADD (plugin process), p99", f.seq_p99, "ms");
    row("per ADD (plugin process), max", f.seq_max, "ms");
    row(
        &format!("{n} pods, sequential ADDs: total"),
        f.seq_total,
        "s",
    );
    row("event → enrolled (no process), p50", f.ev_p50, "ms");
    row("event → enrolled (no process), p99", f.ev_p99, "ms");
    row(
        &format!("{n} pods, {THREADS} concurrent events: total"),
        f.par_total,
        "s",
    );
}
