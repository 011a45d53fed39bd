//! Per-pod in-pod plans, in real namespaces with nftables: the
//! `ambient.istio.io/dns-capture` annotation overrides the agent's DNS setting
//! (proved with a real UDP query to port 53), a flip re-applies in place,
//! and with IPv6 on, a pod whose namespace has no IPv6 gets the IPv4 plan.
//! Needs root.
#![cfg(feature = "inpod")]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use ambit_cni::Dataplane;
use ambit_cni::inpod::{InpodDataplane, InpodSettings};
use ambit_netns::NetNs;
use ambit_redirect::Backend;
use ambit_redirect::profiles::{self, InpodConfig, PROBE_SET_V4, PROBE_SET_V6};

mod support;

use support::{Cleanup, pod};

fn sh(ns: &NetNs, args: &str) {
    let out = ns
        .output(
            Command::new(args.split_whitespace().next().expect("tool"))
                .args(args.split_whitespace().skip(1)),
        )
        .expect("run");
    assert!(out.status.success(), "{args}: {out:?}");
}

/// A pod namespace with an address and a default route, so a query to an
/// outside DNS server has somewhere to go.
fn pod_ns(name: &str) -> NetNs {
    let ns = NetNs::create_named(name).expect("pod ns");
    sh(&ns, "ip link set lo up");
    sh(&ns, "ip link add eth0 type veth peer name peer0");
    sh(&ns, "ip link set peer0 up");
    sh(&ns, "ip addr add 10.79.0.2/24 dev eth0");
    sh(&ns, "ip link set eth0 up");
    sh(&ns, "ip route add default via 10.79.0.1 dev eth0");
    ns
}

/// Sends one UDP query from the pod to 192.0.2.53:53 and reports whether
/// it reached the stand-in DNS proxy on 127.0.0.1:15053 in the pod.
fn query_redirected(ns: &NetNs) -> bool {
    let proxy: UdpSocket = ns
        .udp_socket(SocketAddr::from(([127, 0, 0, 1], 15053)))
        .expect("15053");
    proxy
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let client = ns
        .udp_socket(SocketAddr::from(([0, 0, 0, 0], 0)))
        .expect("client");
    client
        .send_to(b"query", SocketAddr::from(([192, 0, 2, 53], 53)))
        .expect("send");
    let mut buf = [0u8; 16];
    match proxy.recv_from(&mut buf) {
        Ok((n, _)) => {
            assert_eq!(&buf[..n], b"query");
            true
        }
        Err(_) => false,
    }
}

fn plan(capture_dns: bool, ipv6: bool) -> ambit_redirect::Plan {
    profiles::inpod(&InpodConfig {
        capture_dns,
        ipv6,
        ..InpodConfig::default()
    })
    .expect("plan")
}

fn data_plane(
    host: &NetNs,
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    cfg: InpodConfig,
    tag: &str,
) -> InpodDataplane {
    let mut dp = InpodDataplane::new(InpodSettings {
        host: host.try_clone().expect("clone"),
        backend: Backend::Nft,
        config: cfg,
        zds_socket: dir.join(format!("zds-{tag}.sock")),
        runtime: rt.handle().clone(),
        rule_writes: Default::default(),
    })
    .expect("data plane");
    dp.start().expect("start");
    dp
}

#[test]
fn dns_annotation_overrides_the_agent_setting_and_flips_in_place() {
    let id = std::process::id();
    let names: Vec<String> = ["host", "a", "b"]
        .iter()
        .map(|n| format!("ambit-dns-{id}-{n}"))
        .collect();
    let dir = std::env::temp_dir().join(format!("ambit-dns-{id}"));
    let _cleanup = Cleanup(names.clone(), dir.clone());
    std::fs::create_dir_all(&dir).expect("mkdir");
    let host = NetNs::create_named(&names[0]).expect("host ns");
    let a_ns = pod_ns(&names[1]);
    let b_ns = pod_ns(&names[2]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    assert!(!query_redirected(&a_ns), "nothing applied yet");

    // Agent setting on, annotation false: no port-53 redirect in that pod.
    let on = InpodConfig {
        capture_dns: true,
        ..InpodConfig::default()
    };
    let mut dp = data_plane(&host, &dir, &rt, on, "on");
    let a = pod("a", &names[1], &["10.79.0.2"], Some(false));
    assert!(dp.enrol(std::slice::from_ref(&a)).iter().all(Result::is_ok));
    assert!(
        plan(false, false)
            .verify(&a_ns, Backend::Nft)
            .expect("verify")
            .is_empty()
    );
    assert!(!query_redirected(&a_ns), "annotation false wins");

    // The annotation goes away: the agent's setting applies, in place.
    let a_default = pod("a", &names[1], &["10.79.0.2"], None);
    assert!(
        dp.enrol(std::slice::from_ref(&a_default))
            .iter()
            .all(Result::is_ok)
    );
    assert!(
        plan(true, false)
            .verify(&a_ns, Backend::Nft)
            .expect("verify")
            .is_empty()
    );
    assert!(query_redirected(&a_ns), "agent setting on");

    // And back to false: the DNS chains (raw table included) are gone.
    assert!(dp.enrol(std::slice::from_ref(&a)).iter().all(Result::is_ok));
    let drift = plan(false, false)
        .verify(&a_ns, Backend::Nft)
        .expect("verify");
    assert!(drift.is_empty(), "{drift:?}");
    assert!(!query_redirected(&a_ns));
    // Repair finds nothing to do, and un-enrolment leaves nothing.
    assert!(!dp.repair(&a).expect("repair"));
    dp.unenrol(&[ambit_cni::Removal {
        uid: Some(a.uid.clone()),
        ips: a.ips.clone(),
        netns: a.netns.clone(),
        netns_id: None,
    }])
    .expect("unenrol");
    let left = a_ns
        .output(Command::new("nft").args(["list", "ruleset"]))
        .expect("nft");
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "");
    dp.stop(false).expect("stop");

    // Agent setting off, annotation true: the redirect is there.
    let mut dp = data_plane(&host, &dir, &rt, InpodConfig::default(), "off");
    let b = pod("b", &names[2], &["10.79.0.2"], Some(true));
    assert!(dp.enrol(std::slice::from_ref(&b)).iter().all(Result::is_ok));
    assert!(
        plan(true, false)
            .verify(&b_ns, Backend::Nft)
            .expect("verify")
            .is_empty()
    );
    assert!(query_redirected(&b_ns), "annotation true wins");
    dp.stop(false).expect("stop");
}

#[test]
fn ipv6_follows_each_pod_namespace() {
    let id = std::process::id();
    let names: Vec<String> = ["host", "v6", "v4"]
        .iter()
        .map(|n| format!("ambit-v6-{id}-{n}"))
        .collect();
    let dir = std::env::temp_dir().join(format!("ambit-v6-{id}"));
    let _cleanup = Cleanup(names.clone(), dir.clone());
    std::fs::create_dir_all(&dir).expect("mkdir");
    let host = NetNs::create_named(&names[0]).expect("host ns");
    let v6_ns = pod_ns(&names[1]);
    let v4_ns = pod_ns(&names[2]);
    sh(&v4_ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cfg = InpodConfig {
        ipv6: true,
        ..InpodConfig::default()
    };
    let host_plan = profiles::inpod_host_probes(&cfg).expect("host plan");
    let mut dp = data_plane(&host, &dir, &rt, cfg, "v6");
    assert!(dp.observes_ipv6());
    let dual = pod("dual", &names[1], &["10.79.0.2", "fd00:10:244::3"], None);
    let only4 = pod("only4", &names[2], &["10.79.0.4", "fd00:10:244::4"], None);
    let results = dp.enrol(&[dual.clone(), only4.clone()]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(
        plan(false, true)
            .verify(&v6_ns, Backend::Nft)
            .expect("verify")
            .is_empty()
    );
    assert!(
        plan(false, false)
            .verify(&v4_ns, Backend::Nft)
            .expect("verify")
            .is_empty(),
        "no IPv6 in the namespace: the IPv4 plan"
    );
    let v4s = host_plan
        .members(&host, Backend::Nft, PROBE_SET_V4)
        .expect("v4 set");
    let v6s = host_plan
        .members(&host, Backend::Nft, PROBE_SET_V6)
        .expect("v6 set");
    assert_eq!(v4s.len(), 2, "{v4s:?}");
    assert!(
        v6s.contains(&"fd00:10:244::3".parse::<IpAddr>().expect("ip")),
        "{v6s:?}"
    );
    let observed = dp.observed().expect("observed");
    assert!(observed.contains(&"fd00:10:244::3".parse::<IpAddr>().expect("ip")));

    // Un-enrolment takes the IPv6 addresses out of the v6 set too.
    let removals: Vec<ambit_cni::Removal> = [dual, only4]
        .into_iter()
        .map(|p| ambit_cni::Removal {
            uid: Some(p.uid.clone()),
            ips: p.ips.clone(),
            netns: p.netns.clone(),
            netns_id: None,
        })
        .collect();
    dp.unenrol(&removals).expect("unenrol");
    assert!(dp.observed().expect("observed").is_empty());
    for ns in [&v6_ns, &v4_ns] {
        let out = ns
            .output(Command::new("nft").args(["list", "ruleset"]))
            .expect("nft");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
        let out = ns
            .output(Command::new("ip").args(["-6", "rule"]))
            .expect("ip");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("lookup 100"));
    }
    dp.stop(false).expect("stop");
}
