//! The local mesh with in-pod capture by eBPF (`cni-node --redirect
//! ebpf`): the L4 and L7 checks of the in-pod mesh, with no NAT rule in
//! any pod, and an agent restart that loses nothing.
//!
//! Skips (with the reason) where the kernel cannot run the programs; needs
//! `cni-node` built with its default `ebpf` feature beside this crate's
//! ztunnel.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use ambit_testbed::httpapp::{self, Req, Version};
use ambit_testbed::{Binaries, LocalMesh, Mode, Options, REVIEWS_VIP, VIP, tcpapp};

fn mesh() -> Option<LocalMesh> {
    if let Err(why) = ambit_redirect::ebpf::supported() {
        eprintln!("skipping: eBPF capture is not available here: {why}");
        return None;
    }
    let bins = Binaries::beside(Path::new(env!("CARGO_BIN_EXE_ztunnel"))).expect("binaries");
    let m = LocalMesh::start_opts(
        &bins,
        Options {
            mode: Mode::InPod,
            ebpf: true,
            ..Options::default()
        },
        |_| {},
    )
    .expect("local mesh with eBPF capture");
    Some(m)
}

#[test]
fn ebpf_capture_carries_l4_and_l7_with_no_nat_rule() {
    let Some(m) = mesh() else { return };
    // Outbound to a VIP: both backends answer, each sees sleep's address.
    let vip: SocketAddr = VIP.parse().expect("vip");
    let f = tcpapp::drive(m.sleep(), vip, 20, 1 << 20).expect("drive");
    assert_eq!(f.errors, 0, "{f:?}");
    for b in ["productpage-v1", "productpage-v2"] {
        assert!(
            f.greetings.iter().any(|g| g.starts_with(b)),
            "{b}: {:?}",
            f.greetings
        );
    }
    assert!(
        f.greetings.iter().all(|g| g.ends_with("10.244.0.3")),
        "source preserved: {:?}",
        f.greetings
    );
    // L7 through the waypoint.
    let reviews: SocketAddr = REVIEWS_VIP.parse().expect("vip");
    let r = httpapp::send(
        m.sleep(),
        reviews,
        Version::Http1,
        vec![Req::get("/v2/ebpf"), Req::get("/admin/x").method("DELETE")],
        std::time::Duration::from_secs(10),
    )
    .expect("http");
    assert_eq!(
        (r[0].status, r[0].served_by.as_deref()),
        (200, Some("reviews-v2")),
        "{:?}",
        r[0]
    );
    assert_eq!(r[1].status, 403, "{:?}", r[1]);
    // mTLS identities in the access logs: the traffic went through HBONE.
    assert!(
        m.access_logs().iter().any(|(_, v)| v
            .to_string()
            .contains("spiffe://cluster.local/ns/default/sa/sleep")),
        "identities in access logs"
    );
    // No redirect rule anywhere in sleep's namespace: eBPF did it.
    let out = m
        .sleep()
        .ns()
        .output(Command::new("nft").args(["list", "ruleset"]))
        .expect("nft");
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(!rules.contains("redirect"), "{rules}");
    assert!(
        rules.contains("ct mark"),
        "the return path is there: {rules}"
    );
}

#[test]
fn ebpf_capture_survives_an_agent_restart() {
    let Some(mut m) = mesh() else { return };
    let pp: SocketAddr = "10.244.1.3:9080".parse().expect("addr");
    assert_eq!(tcpapp::drive(m.sleep(), pp, 5, 0).expect("drive").errors, 0);
    // SIGKILL: the pins stay, and capture with them.
    m.kill_agent(0);
    assert_eq!(tcpapp::drive(m.sleep(), pp, 5, 0).expect("drive").errors, 0);
    // The next agent takes the pins over (maps reused, links replaced).
    m.restart_agent(0).expect("restart the agent on node a");
    m.restart_agent(1).expect("restart the agent on node b");
    let after = tcpapp::drive(m.sleep(), pp, 10, 0).expect("drive");
    assert_eq!(after.errors, 0, "{after:?}");
    let log = std::fs::read_to_string(m.agent_log_path(0)).expect("agent log");
    assert!(log.contains("eBPF capture attached"), "{log}");
}
