//! Trust and lifecycle on the node agent's side (issue 18, items 5, 7, 8,
//! 9), through the real binary: a restart loses nothing and re-adds are
//! no-ops, pods running before the agent are found and enrolled, drift
//! inside a pod is repaired, one bad pod never blocks the node, and the
//! plugin decides membership before it needs the agent. Needs root.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ambit_netns::NetNs;
use ambit_redirect::profiles::{self, InpodConfig};
use ambit_redirect::{Backend, Plan};
use ambit_xds::{ZdsClient, ZdsMessage};
use common::*;
use serde_json::Value;

fn pod_plan() -> Plan {
    // The agent captures IPv6 by default (AMBIENT_IPV6), but these pods'
    // loopback is down (no `::1`), so each gets the IPv4 plan.
    profiles::inpod(&InpodConfig::default()).expect("in-pod plan")
}

fn drift(ns: &NetNs) -> usize {
    pod_plan().verify(ns, Backend::Nft).expect("verify").len()
}

/// Drift from the dual-stack plan, for pods whose loopback is up.
fn drift6(ns: &NetNs) -> usize {
    profiles::inpod(&InpodConfig {
        ipv6: true,
        ..InpodConfig::default()
    })
    .expect("in-pod plan")
    .verify(ns, Backend::Nft)
    .expect("verify")
    .len()
}

/// The pod's ruleset with object handles: re-created objects get new ones.
fn ruleset_with_handles(ns: &NetNs) -> String {
    let out = ns
        .output(Command::new("nft").args(["-a", "list", "ruleset"]))
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(ns: &NetNs, args: &str) {
    let out = ns
        .output(Command::new("ip").args(args.split_whitespace()))
        .expect("ip");
    assert!(out.status.success(), "ip {args}: {:?}", out);
}

async fn next(client: &mut ZdsClient) -> ZdsMessage {
    tokio::time::timeout(Duration::from_secs(15), client.recv())
        .await
        .expect("zds message in time")
        .expect("recv")
        .expect("connection open")
        .expect("valid message")
}

/// Receives a snapshot (acking each message): uid → namespace.
async fn snapshot(client: &mut ZdsClient) -> Vec<(String, NetNs)> {
    let mut pods = Vec::new();
    loop {
        match next(client).await {
            ZdsMessage::Add { uid, netns, .. } => {
                pods.push((uid.clone(), NetNs::from_fd(netns, uid).expect("netns fd")));
            }
            ZdsMessage::SnapshotSent => {
                client.ack(None).await.expect("ack");
                pods.sort_by(|a, b| a.0.cmp(&b.0));
                return pods;
            }
            other => panic!("unexpected {}", other.describe()),
        }
        client.ack(None).await.expect("ack");
    }
}

fn inpod_args(node: &NamedNs, pods: &std::path::Path, zds: &std::path::Path) -> Vec<String> {
    vec![
        "--mode".into(),
        "inpod".into(),
        "--netns".into(),
        node.path(),
        "--pod-dir".into(),
        pods.display().to_string(),
        "--zds-socket".into(),
        zds.display().to_string(),
    ]
}

fn tag(t: &str) -> String {
    format!("ambit-lc{t}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_keeps_enrolled_pods() {
    let t = tag("r");
    let node = NamedNs::new(&format!("{t}-node"));
    let p0 = NamedNs::new(&format!("{t}-p0"));
    let p1 = NamedNs::new(&format!("{t}-p1"));
    let tmp = TempDir::new("lc-restart");
    let (run, pods) = (tmp.sub("run"), tmp.sub("pods"));
    let zds = tmp.0.join("zds.sock");
    write_record(&pods, "app-0", "shop", "uid-0", true, &["10.77.0.10"], None);
    write_record(&pods, "app-1", "shop", "uid-1", true, &["10.77.0.11"], None);
    let mut args = inpod_args(&node, &pods, &zds);
    args.push("--keep-rules".into());
    let mut agent = AgentProc::start(&run, &args);
    let add = |ns: &NamedNs, name: &str, uid: &str, container: &str, addr: &str| {
        let (code, out) = plugin_add("", &run, &ns.path(), ("shop", name), uid, container, addr);
        assert_eq!(code, 0, "ADD {name}: {out}");
    };
    add(&p0, "app-0", "uid-0", "c0", "10.77.0.10");
    add(&p1, "app-1", "uid-1", "c1", "10.77.0.11");
    assert_eq!((drift(&p0.1), drift(&p1.1)), (0, 0));
    let mut client = ZdsClient::connect(&zds).await.expect("connect");
    let snap = snapshot(&mut client).await;
    assert_eq!(snap.len(), 2);
    assert!(snap[0].1.same_as(&p0.1).expect("stat") && snap[1].1.same_as(&p1.1).expect("stat"));
    let before = (ruleset_with_handles(&p0.1), ruleset_with_handles(&p1.1));

    // The agent restarts while "ztunnel" keeps running; ztunnel reconnects
    // and is sent the same pods with the same namespaces.
    assert!(agent.stop());
    drop(client);
    let mut agent = AgentProc::start(&run, &args);
    let mut client = ZdsClient::connect(&zds).await.expect("reconnect");
    let snap = snapshot(&mut client).await;
    let uids: Vec<&str> = snap.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(uids, ["uid-0", "uid-1"]);
    assert!(snap[0].1.same_as(&p0.1).expect("stat") && snap[1].1.same_as(&p1.1).expect("stat"));
    // Nothing in the pods was re-created: same objects, same handles.
    let after = (ruleset_with_handles(&p0.1), ruleset_with_handles(&p1.1));
    assert_eq!(
        after, before,
        "re-enrolling unchanged pods must not touch their rules"
    );

    // A repeated ADD of an unchanged sandbox changes nothing either.
    add(&p1, "app-1", "uid-1", "c1", "10.77.0.11");
    assert_eq!(ruleset_with_handles(&p1.1), before.1);

    // app-0's sandbox is recreated with the same uid at the same path.
    let name0 = p0.0.clone();
    drop(p0);
    let p0 = NamedNs::new(&name0);
    assert_ne!(drift(&p0.1), 0, "a fresh sandbox has no rules yet");
    add(&p0, "app-0", "uid-0", "c0-new", "10.77.0.10");
    // ztunnel is told: the old pod is gone, the new sandbox is a fresh Add
    // (and nothing about app-1, whose re-ADD came first).
    match next(&mut client).await {
        ZdsMessage::Del { uid } => assert_eq!(uid, "uid-0"),
        other => panic!("expected del uid-0, got {}", other.describe()),
    }
    client.ack(None).await.expect("ack");
    match next(&mut client).await {
        ZdsMessage::Add { uid, netns, .. } => {
            assert_eq!(uid, "uid-0");
            let ns = NetNs::from_fd(netns, uid).expect("fd");
            assert!(ns.same_as(&p0.1).expect("stat"), "the new sandbox's netns");
        }
        other => panic!("expected add uid-0, got {}", other.describe()),
    }
    client.ack(None).await.expect("ack");
    assert_eq!(drift(&p0.1), 0, "the new sandbox is enrolled");
    assert!(agent.stop());
}

#[test]
fn stale_record_is_skipped_not_fatal() {
    let t = tag("s");
    let node = NamedNs::new(&format!("{t}-node"));
    let p1 = NamedNs::new(&format!("{t}-p1"));
    let tmp = TempDir::new("lc-stale");
    let (run, pods) = (tmp.sub("run"), tmp.sub("pods"));
    let sandboxes = tmp.sub("run/sandboxes");
    // A sandbox remembered from before, whose namespace is gone.
    let ghost = sandboxes.join("shop_ghost.json");
    std::fs::write(
        &ghost,
        format!(
            r#"{{"netns":"/run/netns/{t}-gone","container_id":"cg","ifname":"eth0","pod_name":"ghost","pod_namespace":"shop","pod_uid":"uid-ghost","ips":["10.77.2.9"]}}"#
        ),
    )
    .expect("write sandbox");
    write_record(
        &pods,
        "ghost",
        "shop",
        "uid-ghost",
        true,
        &["10.77.2.9"],
        None,
    );
    // A pod record naming a namespace that does not exist: its enrolment
    // fails, alone.
    let missing = format!("/run/netns/{t}-missing");
    write_record(
        &pods,
        "broken",
        "shop",
        "uid-b",
        true,
        &["10.77.2.8"],
        Some(&missing),
    );
    write_record(
        &pods,
        "app-1",
        "shop",
        "uid-1",
        true,
        &["10.77.2.7"],
        Some(&p1.path()),
    );
    let port = free_port();
    let mut args = inpod_args(&node, &pods, &tmp.0.join("zds.sock"));
    args.extend(["--metrics-addr".into(), format!("127.0.0.1:{port}")]);
    let mut agent = AgentProc::start(&run, &args);
    eventually("app-1 enrolled", || drift(&p1.1) == 0);
    assert!(!ghost.exists(), "the stale record is removed");
    eventually("metrics", || {
        metric(port, "ambit_cni_stale_records_total") == 1.0
    });
    assert!(metric(port, "ambit_cni_pod_enrol_failures_total") >= 1.0);
    assert_eq!(metric(port, "ambit_cni_pods_enrolled"), 1.0);
    assert!(agent.stop());
}

/// A process in a pod's cgroup and netns, as a container runtime leaves
/// it; killed and its cgroups removed on drop.
struct PodProcess {
    child: std::process::Child,
    cgroups: Vec<PathBuf>,
}

impl PodProcess {
    fn start(ns: &NetNs, uid: &str) -> Self {
        let root = PathBuf::from(format!("/sys/fs/cgroup/pids/{}", tag("cg")));
        let pod = root.join(format!("kubepods/besteffort/pod{uid}"));
        let ctr = pod.join("0123456789abcdef");
        std::fs::create_dir_all(&ctr).expect("create the pod's cgroup (cgroup v1 pids)");
        let child = ns
            .spawn_command(Command::new("sleep").arg("300"))
            .expect("sleep in the pod");
        let me = Self {
            child,
            cgroups: vec![
                ctr.clone(),
                pod.clone(),
                root.join("kubepods/besteffort"),
                root.join("kubepods"),
                root,
            ],
        };
        std::fs::write(ctr.join("cgroup.procs"), me.child.id().to_string()).expect("join cgroup");
        me
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in &self.cgroups {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_running_before_agent_is_enrolled() {
    let t = tag("b");
    let node = NamedNs::new(&format!("{t}-node"));
    let p0 = NamedNs::new(&format!("{t}-p0"));
    ip(&p0.1, "link set lo up");
    ip(&p0.1, "addr add 10.77.3.5/32 dev lo");
    let uid = format!("5b8f0c1e-0000-4000-8000-{:012x}", std::process::id());
    let _proc = PodProcess::start(&p0.1, &uid);
    // A decoy: another netns whose process claims the same pod but does not
    // hold its address is not taken.
    let decoy = NamedNs::new(&format!("{t}-decoy"));
    let _decoy_proc = PodProcess::start(&decoy.1, &uid);
    let tmp = TempDir::new("lc-before");
    let (run, pods) = (tmp.sub("run"), tmp.sub("pods"));
    let zds = tmp.0.join("zds.sock");
    // The pod source lists the pod; no sandbox event ever reached the agent.
    write_record(&pods, "app-0", "shop", &uid, true, &["10.77.3.5"], None);
    let port = free_port();
    let mut args = inpod_args(&node, &pods, &zds);
    args.extend(["--metrics-addr".into(), format!("127.0.0.1:{port}")]);
    let mut agent = AgentProc::start(&run, &args);
    // Its loopback is up with ::1, so it gets the dual-stack plan.
    eventually("the running pod enrolled", || drift6(&p0.1) == 0);
    assert_ne!(drift(&decoy.1), 0, "the decoy namespace is untouched");
    let mut client = ZdsClient::connect(&zds).await.expect("connect");
    let snap = snapshot(&mut client).await;
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].0, uid);
    assert!(
        snap[0].1.same_as(&p0.1).expect("stat"),
        "ztunnel gets the pod's own netns"
    );
    assert_eq!(metric(port, "ambit_cni_pods_found_running_total"), 1.0);
    assert!(agent.stop());
}

#[test]
fn pod_rule_drift_is_repaired() {
    let t = tag("d");
    let node = NamedNs::new(&format!("{t}-node"));
    let p0 = NamedNs::new(&format!("{t}-p0"));
    let tmp = TempDir::new("lc-drift");
    let (run, pods) = (tmp.sub("run"), tmp.sub("pods"));
    write_record(
        &pods,
        "app-0",
        "shop",
        "uid-0",
        true,
        &["10.77.5.5"],
        Some(&p0.path()),
    );
    let port = free_port();
    let mut args = inpod_args(&node, &pods, &tmp.0.join("zds.sock"));
    args.extend([
        "--metrics-addr".into(),
        format!("127.0.0.1:{port}"),
        "--resync-secs".into(),
        "1".into(),
    ]);
    let mut agent = AgentProc::start(&run, &args);
    eventually("app-0 enrolled", || drift(&p0.1) == 0);
    // Someone flushes the pod's rules.
    let out =
        p0.1.output(Command::new("nft").args(["flush", "ruleset"]))
            .expect("nft");
    assert!(out.status.success());
    assert_ne!(drift(&p0.1), 0, "flushed");
    eventually("the pod's rules repaired", || drift(&p0.1) == 0);
    eventually("repair counted", || {
        metric(port, "ambit_cni_pod_rule_repairs_total") >= 1.0
    });
    assert!(agent.stop());
}

fn prev_result(addr: &str) -> Value {
    serde_json::from_str(&format!(
        r#"{{"cniVersion":"1.0.0","ips":[{{"address":"{addr}/32"}}]}}"#
    ))
    .expect("json")
}

#[test]
fn non_ambient_pod_starts_with_agent_down() {
    let tmp = TempDir::new("lc-plain");
    let (run, pods) = (tmp.0.join("no-agent-here"), tmp.sub("pods"));
    write_record(&pods, "web", "plain", "uid-w", false, &[], None);
    let extra = format!(r#","pod_records_dir":"{}""#, pods.display());
    let (code, out) = plugin_add(
        &extra,
        &run,
        "/run/netns/x",
        ("plain", "web"),
        "uid-w",
        "c",
        "10.77.4.5",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, prev_result("10.77.4.5"), "prevResult passed through");
}

#[test]
fn ambient_pod_fails_add_with_try_again_when_agent_down() {
    let t = tag("a");
    let tmp = TempDir::new("lc-ambient");
    let (run, pods) = (tmp.sub("run"), tmp.sub("pods"));
    let p0 = NamedNs::new(&format!("{t}-p0"));
    write_record(&pods, "web", "shop", "uid-w", true, &["10.77.6.5"], None);
    let extra = format!(r#","pod_records_dir":"{}""#, pods.display());
    let add = || {
        plugin_add(
            &extra,
            &run,
            &p0.path(),
            ("shop", "web"),
            "uid-w",
            "c",
            "10.77.6.5",
        )
    };

    // Agent down.
    let (code, out) = add();
    assert_eq!((code, out["code"].as_u64()), (1, Some(11)), "{out}");
    assert!(
        out["msg"]
            .as_str()
            .is_some_and(|m| m.contains("not reachable")),
        "{out}"
    );

    // Agent up but unable to confirm the pod (its pod source does not know it).
    let node = NamedNs::new(&format!("{t}-node"));
    let zds = tmp.0.join("zds.sock");
    let args: Vec<String> = vec![
        "--mode".into(),
        "inpod".into(),
        "--netns".into(),
        node.path(),
        "--pod-source".into(),
        "none".into(),
        "--zds-socket".into(),
        zds.display().to_string(),
    ];
    let mut agent = AgentProc::start(&run, &args);
    let (code, out) = add();
    assert_eq!((code, out["code"].as_u64()), (1, Some(11)), "{out}");
    assert!(
        out["msg"]
            .as_str()
            .is_some_and(|m| m.contains("cannot confirm")),
        "{out}"
    );
    assert_ne!(drift(&p0.1), 0, "not captured");
    assert!(agent.stop());

    // Once the agent knows the pod, the retried ADD succeeds, captured.
    let mut agent = AgentProc::start(&run, &inpod_args(&node, &pods, &zds));
    let (code, out) = add();
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, prev_result("10.77.6.5"));
    assert_eq!(drift(&p0.1), 0);
    assert!(agent.stop());
}
