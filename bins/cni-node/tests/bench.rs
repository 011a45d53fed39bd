//! Benchmark: time from the plugin's ADD to "pod enrolled" (the ADD
//! returns only after the agent has programmed the pod), node-level mode,
//! nft backend, for 1 and 1,000 pods. Run as root:
//! `cargo test --release -p cni-node --test bench -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use ambit_netns::harness::Cluster;
use ambit_redirect::Backend;
use ambit_redirect::profiles::{self, NodeConfig};
use common::*;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn add(cluster: &Cluster, run: &std::path::Path, i: usize) -> Duration {
    let ip = format!("10.245.{}.{}", i / 250, i % 250 + 2);
    let stdin = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","type":"istio-cni","ambient_enabled":true,"cni_agent_run_dir":"{}","prevResult":{{"cniVersion":"1.0.0","ips":[{{"address":"{ip}/16"}}]}}}}"#,
        run.display()
    );
    let env = [
        ("CNI_COMMAND", "ADD".to_owned()),
        ("CNI_CONTAINERID", format!("ctr-{i}")),
        ("CNI_NETNS", format!("/run/netns/bench-{i}")),
        ("CNI_IFNAME", "eth0".into()),
        (
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{i}"),
        ),
    ];
    let t = Instant::now();
    let out = exec_plugin(
        cluster.node(0).ns(),
        std::path::Path::new(BIN),
        &env,
        &stdin,
    );
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    d
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture as root"]
fn add_to_enrolled_latency() {
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("cluster");
    let tmp = TempDir::new("bench");
    let (run, pods) = (tmp.sub("run"), tmp.sub("pods"));
    const N: usize = 1000;
    for i in 0..=N {
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

    // Baseline: the plugin process alone (VERSION, no agent work).
    let mut base = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let out = exec_plugin(
            cluster.node(0).ns(),
            std::path::Path::new(BIN),
            &[("CNI_COMMAND", "VERSION".into())],
            "{}",
        );
        base.push(t.elapsed());
        assert!(out.status.success());
    }

    let one = add(&cluster, &run, N); // the single pod, on an idle agent
    let t = Instant::now();
    let mut each: Vec<Duration> = (0..N).map(|i| add(&cluster, &run, i)).collect();
    let total = t.elapsed();

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
    assert_eq!(members.len(), N + 1);
    assert!(agent.stop());

    println!(
        "plugin process alone (VERSION), median of 50: {:.2} ms",
        pct(&mut base, 0.5).as_secs_f64() * 1e3
    );
    println!("1 pod: ADD → enrolled: {:.2} ms", one.as_secs_f64() * 1e3);
    println!(
        "{N} pods, sequential ADDs: total {:.2} s, {:.1} pods/s, per ADD median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        total.as_secs_f64(),
        N as f64 / total.as_secs_f64(),
        pct(&mut each, 0.5).as_secs_f64() * 1e3,
        pct(&mut each, 0.99).as_secs_f64() * 1e3,
        pct(&mut each, 1.0).as_secs_f64() * 1e3,
    );
}
