//! End to end through the whole local mesh — pods wired by the CNI chain,
//! cni-node capturing them, ztunnels, the waypoint: L7 routing, splits,
//! policy, retries, timeouts and hostile HTTP through ztunnel A → waypoint
//! → ztunnel B; in-pod capture; cni-node restarts.
//!
//! Needs the `cni-node` and `waypoint` binaries beside this crate's
//! ztunnel (`cargo test --workspace` builds them; alone:
//! `cargo build -p cni-node -p waypoint` first).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ambit_testbed::httpapp::{self, Req, Version};
use ambit_testbed::{Binaries, LocalMesh, Mode, Options, REVIEWS_VIP, VIP, rss_kib, tcpapp};

fn mesh(mode: Mode) -> LocalMesh {
    let bins = Binaries::beside(Path::new(env!("CARGO_BIN_EXE_ztunnel"))).expect("binaries");
    LocalMesh::start_opts(
        &bins,
        Options {
            mode,
            ..Options::default()
        },
        |_| {},
    )
    .expect("local mesh")
}

fn reviews() -> SocketAddr {
    REVIEWS_VIP.parse().expect("vip")
}

fn send(m: &LocalMesh, v: Version, reqs: Vec<Req>) -> Vec<httpapp::Resp> {
    httpapp::send(m.sleep(), reviews(), v, reqs, Duration::from_secs(10)).expect("send")
}

fn one(m: &LocalMesh, r: Req) -> httpapp::Resp {
    send(m, Version::Http1, vec![r]).remove(0)
}

/// Sends raw bytes to the reviews VIP from `sleep`; returns what came back
/// until the server closed (or 5 s passed).
fn raw(m: &LocalMesh, bytes: Vec<u8>) -> String {
    let mut s = m.sleep().ns().tcp_connect(reviews()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(&bytes).expect("write");
    let mut out = Vec::new();
    let closed = s.read_to_end(&mut out).is_ok();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(closed, "the connection must be closed after: {text}");
    text
}

#[test]
fn waypoint_path_routes_splits_denies_retries_and_times_out() {
    let mut m = mesh(Mode::Node);

    // Path routing, through ztunnel A → waypoint (node b) → ztunnel → pod.
    let got = send(
        &m,
        Version::Http1,
        (0..4)
            .map(|i| Req::get(if i % 2 == 0 { "/v1/a" } else { "/v2/a" }))
            .collect(),
    );
    let by: Vec<_> = got
        .iter()
        .map(|r| (r.status, r.served_by.clone()))
        .collect();
    assert_eq!(
        by,
        [
            (200, Some("reviews-v1".into())),
            (200, Some("reviews-v2".into())),
            (200, Some("reviews-v1".into())),
            (200, Some("reviews-v2".into())),
        ],
        "{got:?}"
    );
    // A header match overrides the path.
    let r = one(&m, Req::get("/v1/a").header("x-version", "v2"));
    assert_eq!(r.served_by.as_deref(), Some("reviews-v2"), "{r:?}");

    // 90/10 over 1,000 requests on one keep-alive connection.
    let got = send(&m, Version::Http1, vec![Req::get("/split"); 1000]);
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in &got {
        assert_eq!(r.status, 200, "{r:?}");
        *count
            .entry(r.served_by.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let v1 = count.get("reviews-v1").copied().unwrap_or(0) as f64 / 1000.0;
    assert!((0.87..=0.93).contains(&v1), "v1 share {v1}: {count:?}");

    // L7 policy: DENY DELETE /admin*, GET passes.
    assert_eq!(one(&m, Req::get("/admin/x").method("DELETE")).status, 403);
    assert_eq!(one(&m, Req::get("/admin/x")).status, 200);

    // v1 answers 503: retried on the other endpoint, every request succeeds.
    let got = send(
        &m,
        Version::Http1,
        vec![Req::get("/flaky").header("x-fail-on", "reviews-v1"); 10],
    );
    for r in &got {
        assert_eq!(
            (r.status, r.served_by.as_deref()),
            (200, Some("reviews-v2")),
            "{r:?}"
        );
    }

    // A hung upstream hits the 500 ms route timeout.
    let r = one(&m, Req::get("/hang"));
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        r.elapsed >= Duration::from_millis(450) && r.elapsed < Duration::from_secs(5),
        "{:?}",
        r.elapsed
    );

    // HTTP/2 (prior knowledge) inside the tunnel, several on one connection.
    let got = send(&m, Version::Http2, vec![Req::get("/v2/h2"); 3]);
    for r in &got {
        assert_eq!(
            (r.status, r.served_by.as_deref()),
            (200, Some("reviews-v2")),
            "{r:?}"
        );
    }

    // A 100 MiB upload streams through: the app counts every byte, and the
    // waypoint's memory does not grow by anything like the body.
    let pid = m.waypoint_pid().expect("waypoint");
    let before = rss_kib(pid).expect("rss");
    let r = send(
        &m,
        Version::Http1,
        vec![Req::get("/v1/upload").method("POST").body(100 << 20)],
    )
    .remove(0);
    let after = rss_kib(pid).expect("rss");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.ends_with(&format!(" {}\n", 100u64 << 20)),
        "{}",
        r.body
    );
    eprintln!("waypoint RSS around a 100 MiB upload: {before} KiB → {after} KiB");
    assert!(
        after < before + 32 * 1024,
        "waypoint RSS grew {before} → {after} KiB for a 100 MiB upload"
    );

    // The path: ztunnel A sent to the waypoint, the waypoint to a pod.
    let logs = m.access_logs();
    assert!(
        logs.iter().any(|(who, _)| who == "waypoint"),
        "the waypoint logs requests"
    );
    assert!(
        logs.iter()
            .any(|(who, v)| who == "node-a" && v.to_string().contains("10.244.1.6")),
        "ztunnel A's access log names the waypoint as the hop"
    );
}

#[test]
fn hostile_http_through_the_waypoint_gets_400_and_a_closed_connection() {
    let m = mesh(Mode::Node);
    let cases: [(&str, Vec<u8>); 5] = [
        (
            "CL + TE",
            b"POST /v1 HTTP/1.1\r\nHost: r\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2 HTTP/1.1\r\nHost: r\r\n\r\n".to_vec(),
        ),
        (
            "duplicate CL",
            b"POST /v1 HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc".to_vec(),
        ),
        ("malformed request line", b"GET\x01/ HTTP/9\r\n\r\n".to_vec()),
        (
            "oversized headers",
            format!("GET /v1 HTTP/1.1\r\nHost: r\r\nX-Big: {}\r\n\r\n", "a".repeat(512 << 10))
                .into_bytes(),
        ),
        (
            "bad chunk size",
            b"POST /v1 HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        let answer = raw(&m, bytes);
        if what == "CL + TE" {
            // hyper follows RFC 9112 §6.3: Transfer-Encoding wins, the
            // Content-Length is dropped and the connection is closed after
            // the one response, so the smuggled `GET /v2` never runs.
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
            assert!(answer.contains("reviews-v1 POST /v1 0"), "{answer:?}");
            assert!(
                !answer.contains("reviews-v2"),
                "smuggled request ran: {answer:?}"
            );
            assert_eq!(
                answer.matches("HTTP/1.1").count(),
                1,
                "{what}: one answer only"
            );
            continue;
        }
        let status = answer.split_whitespace().nth(1).unwrap_or("");
        assert!(
            status == "400" || (what == "oversized headers" && status == "431"),
            "{what}: {answer:?}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{what}: one answer only"
        );
    }
    // The waypoint still serves.
    assert_eq!(one(&m, Req::get("/v1/after")).status, 200);
}

#[test]
fn inpod_mode_carries_l4_and_l7() {
    let m = mesh(Mode::InPod);
    assert_eq!(m.mode(), Mode::InPod);
    let vip: SocketAddr = VIP.parse().expect("vip");
    let f = tcpapp::drive(m.sleep(), vip, 20, 1 << 20).expect("drive");
    assert_eq!(f.errors, 0, "{f:?}");
    let backends: Vec<_> = f
        .greetings
        .iter()
        .filter_map(|g| g.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(
        backends.contains(&"productpage-v1".to_owned()),
        "{backends:?}"
    );
    assert!(
        backends.contains(&"productpage-v2".to_owned()),
        "{backends:?}"
    );
    // Source addresses are preserved to the server pods.
    assert!(
        f.greetings.iter().all(|g| g.ends_with("10.244.0.3")),
        "{:?}",
        f.greetings
    );
    let r = one(&m, Req::get("/v2/inpod"));
    assert_eq!(
        (r.status, r.served_by.as_deref()),
        (200, Some("reviews-v2")),
        "{r:?}"
    );
    // Both ztunnels' access logs carry mTLS identities.
    let logs = m.access_logs();
    assert!(
        logs.iter().any(|(_, v)| v
            .to_string()
            .contains("spiffe://cluster.local/ns/default/sa/sleep")),
        "identities in access logs"
    );
}

#[test]
fn cni_node_restart_reconciles_pods_changed_while_it_was_down() {
    let mut m = mesh(Mode::Node);
    let vip: SocketAddr = VIP.parse().expect("vip");
    // A plain restart: everything stays enrolled, traffic flows, and the
    // agent reports ready.
    m.restart_agent(0).expect("restart");
    let mut s = m
        .cluster
        .node(0)
        .ns()
        .tcp_connect("127.0.0.1:15014".parse().expect("addr"))
        .expect("connect");
    s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut ready = String::new();
    s.read_to_string(&mut ready).expect("read");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert_eq!(
        tcpapp::drive(m.sleep(), vip, 10, 0).expect("drive").errors,
        0
    );

    // While the agent is down, productpage-v2 (node a) leaves the mesh.
    let enrolled = m
        .agent_metric(0, "ambit_cni_pods_enrolled")
        .expect("metric");
    m.kill_agent(0);
    let dir = m.pod_dir(0).to_path_buf();
    let file = dir.join("default-productpage-v2.json");
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("record")).expect("json");
    rec["labels"]["istio.io/dataplane-mode"] = "none".into();
    std::fs::write(&file, rec.to_string()).expect("write");
    m.start_agent(0).expect("start");
    let mut now = None;
    for _ in 0..100 {
        now = m.agent_metric(0, "ambit_cni_pods_enrolled");
        if now == Some(enrolled - 1.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        now,
        Some(enrolled - 1.0),
        "the opted-out pod was unenrolled"
    );
    // Its address is gone from the node's capture set.
    let set = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            m.cluster.node(0).name(),
            "nft",
            "list",
            "ruleset",
        ])
        .output()
        .expect("nft");
    let ruleset = String::from_utf8_lossy(&set.stdout);
    assert!(ruleset.contains("10.244.0.3"), "sleep still enrolled");
    assert!(
        !ruleset.contains("10.244.0.4"),
        "productpage-v2 not: {ruleset}"
    );
}

/// Lifecycle, in-pod mode: a rolling upgrade of node b's ztunnel (the new
/// process gets every pod over ZDS and binds the pods' listeners beside the
/// old ones through SO_REUSEPORT; the old one drains on SIGTERM) refuses or
/// resets no connection under continuous new-connection load.
#[test]
fn inpod_mode_upgrade_refuses_no_connection() {
    let mut m = mesh(Mode::InPod);
    let c = m.churn_across_upgrade(1).expect("upgrade under load");
    eprintln!("connections across the upgrade: {c:?}");
    if c.failed > 0 {
        for (n, v) in m.access_logs() {
            if v["error"].as_str().is_some_and(|r| !r.is_empty()) {
                eprintln!("{n}: {v}");
            }
        }
    }
    assert!(c.ok > 50, "load ran: {c:?}");
    assert_eq!(c.failed, 0, "{c:?}");
    // Only the new ztunnel is left, and it serves the pods.
    let pp: SocketAddr = "10.244.1.3:9080".parse().expect("addr");
    let after = ambit_testbed::tcpapp::drive(m.sleep(), pp, 5, 0).expect("drive");
    assert_eq!(after.errors, 0, "{after:?}");
}

/// Lifecycle, in-pod mode: the node agent restarts while ztunnel keeps
/// running. The new agent re-announces every pod in its ZDS snapshot;
/// ztunnel keeps the listeners it already has in each pod's netns (binding
/// again would fail and abort the snapshot), and traffic never stops.
#[test]
fn inpod_agent_restart_with_ztunnel_running_loses_nothing() {
    let mut m = mesh(Mode::InPod);
    let pp: SocketAddr = "10.244.1.3:9080".parse().expect("addr");
    assert_eq!(tcpapp::drive(m.sleep(), pp, 5, 0).expect("drive").errors, 0);
    m.restart_agent(1).expect("restart the agent on node b");
    let after = tcpapp::drive(m.sleep(), pp, 10, 0).expect("drive");
    assert_eq!(after.errors, 0, "{after:?}");
    // ztunnel reconnects to the new agent with a backoff: wait for the
    // snapshot to be handled.
    let mut ztunnel_log = String::new();
    for _ in 0..100 {
        ztunnel_log = std::fs::read_to_string(m.log_path(1)).expect("ztunnel log");
        if ztunnel_log.contains("already serving this pod in this netns: kept") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ztunnel_log.contains("already serving this pod in this netns: kept"),
        "ztunnel kept the pods' listeners"
    );
    let after = tcpapp::drive(m.sleep(), pp, 10, 0).expect("drive");
    assert_eq!(after.errors, 0, "after the snapshot: {after:?}");
    assert!(
        !ztunnel_log.contains("opening listeners in pod"),
        "no listener was bound twice"
    );
    let agent_log = std::fs::read_to_string(m.agent_log_path(1)).expect("agent log");
    assert!(
        !agent_log.contains("zds snapshot failed"),
        "the snapshot went through"
    );
}
