//! In-pod capture with IPv6: real packets through the dual-stack in-pod
//! plan, with both backends.
//!
//! Topology (one harness node; the harness is IPv4, the IPv6 addresses are
//! added here):
//!   node: veth0/veth1 carry fd00:10:244::1/128, routes to each pod's /128
//!   pod 0.0 = the enrolled app, 10.244.0.2 and fd00:10:244::2
//!   pod 0.1 = a peer,           10.244.0.3 and fd00:10:244::3
//! Both pods route fd00:10:244::/64 via the node.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::process::Command;
use std::time::Duration;

use ambit_netns::NetNs;
use ambit_netns::harness::Cluster;
use ambit_redirect::ipset::IpSetEntry;
use ambit_redirect::profiles::{self, InpodConfig, PROBE_SET_V6};
use ambit_redirect::{Backend, NsHandle, Plan};
use socket2::{Domain, Protocol, Type};

mod common;
use common::{accept, dual_listener, nothing_on, original_dst4, original_dst6};

const SERVER_PORT: u16 = 8080;

fn sh(ns: &NetNs, args: &[&str]) -> String {
    let out = ns
        .output(Command::new(args[0]).args(&args[1..]))
        .expect("run tool");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a plan could leave behind in a namespace.
fn snapshot(ns: &NetNs) -> Vec<String> {
    let iptables = |tool: &str| -> String {
        sh(ns, &[tool])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_owned() + "\n")
            .collect()
    };
    vec![
        sh(ns, &["nft", "-s", "list", "ruleset"]),
        sh(ns, &["ip", "rule"]),
        sh(ns, &["ip", "-6", "rule"]),
        sh(ns, &["ip", "-4", "route", "show", "table", "all"]),
        sh(ns, &["ip", "-6", "route", "show", "table", "all"])
            .lines()
            .filter(|l| !l.contains("fe80:"))
            .collect::<Vec<_>>()
            .join("\n"),
        iptables("iptables-save"),
        iptables("ip6tables-save"),
    ]
}

/// An IPv4 address as a dual-stack socket reports it.
fn mapped(ip: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V6(ip.to_ipv6_mapped())
}

fn ipv6_capture(backend: Backend) {
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(2)
        .ipv6(true)
        .build()
        .expect("cluster");
    let (node, pod, peer) = (cluster.node(0), cluster.pod(0, 0), cluster.pod(0, 1));
    let (pod_ip6, peer_ip6) = (pod.ip6().expect("ipv6"), peer.ip6().expect("ipv6"));
    let before = snapshot(pod.ns());
    let before_node = snapshot(node.ns());

    let cfg = InpodConfig {
        ipv6: true,
        ..InpodConfig::default()
    };
    let plan = profiles::inpod(&cfg).expect("plan");
    plan.apply(pod.ns(), backend).expect("apply");
    plan.apply(pod.ns(), backend).expect("apply again");
    assert!(plan.verify(pod.ns(), backend).expect("verify").is_empty());
    let host = profiles::inpod_host_probes(&cfg).expect("host plan");
    host.apply(node.ns(), backend).expect("host apply");
    host.add_members(
        node.ns(),
        backend,
        PROBE_SET_V6,
        &[IpSetEntry::new(IpAddr::V6(pod_ip6), "uid-pod".to_owned())],
    )
    .expect("v6 probe member");

    let l15001 = dual_listener(pod.ns(), 15001);
    let l15006 = dual_listener(pod.ns(), 15006);
    let l15008 = dual_listener(pod.ns(), 15008);
    let app = dual_listener(pod.ns(), SERVER_PORT);
    let real = dual_listener(peer.ns(), SERVER_PORT);

    // Outbound IPv6 from the app → 15001; the real destination is kept.
    let target6 = SocketAddr::V6(SocketAddrV6::new(peer_ip6, SERVER_PORT, 0, 0));
    let mut c = pod.ns().tcp_connect(target6).expect("connect v6");
    c.write_all(b"x").expect("write");
    let (s, from) = accept(&l15001);
    assert_eq!(original_dst6(&s), target6);
    assert_eq!(from, c.local_addr().expect("local"));
    assert!(nothing_on(&real), "captured, not delivered");

    // Outbound IPv4 lands on the same dual-stack listener, mapped.
    let target4 = SocketAddr::from((peer.ip(), SERVER_PORT));
    let _c4 = pod.ns().tcp_connect(target4).expect("connect v4");
    let (s, from) = accept(&l15001);
    assert_eq!(from.ip(), mapped(pod.ip()));
    assert_eq!(original_dst4(&s), target4);

    // ztunnel's own sockets (SO_MARK 1337) pass, both families.
    for target in [target6, target4] {
        let domain = if target.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let zt = pod
            .ns()
            .socket(domain, Type::STREAM, Some(Protocol::TCP))
            .expect("socket");
        zt.set_mark(1337).expect("SO_MARK");
        zt.connect(&target.into()).expect("marked connect");
        let (_, from) = accept(&real);
        let want = match target {
            SocketAddr::V6(_) => IpAddr::V6(pod_ip6),
            SocketAddr::V4(_) => mapped(pod.ip()),
        };
        assert_eq!(from.ip(), want);
    }
    assert!(nothing_on(&l15001));

    // Inbound IPv6 plaintext → 15006; IPv4 too, on the same listener.
    let in6 = SocketAddr::V6(SocketAddrV6::new(pod_ip6, 80, 0, 0));
    let _i = peer.ns().tcp_connect(in6).expect("inbound v6");
    let (s, from) = accept(&l15006);
    assert_eq!(original_dst6(&s), in6);
    assert_eq!(from.ip(), IpAddr::V6(peer_ip6));
    let in4 = SocketAddr::from((pod.ip(), 80));
    let _i4 = peer.ns().tcp_connect(in4).expect("inbound v4");
    let (s, from) = accept(&l15006);
    assert_eq!(original_dst4(&s), in4);
    assert_eq!(from.ip(), mapped(peer.ip()));

    // HBONE (15008) passes unredirected.
    let _h = peer
        .ns()
        .tcp_connect(SocketAddr::V6(SocketAddrV6::new(pod_ip6, 15008, 0, 0)))
        .expect("hbone v6");
    let (s, from) = accept(&l15008);
    assert_eq!(s.local_addr().expect("local").port(), 15008);
    assert_eq!(from.ip(), IpAddr::V6(peer_ip6));

    // A kubelet probe from the node: SNATed to the IPv6 probe address and
    // let through to the app's own port, not captured.
    let probe = SocketAddr::V6(SocketAddrV6::new(pod_ip6, SERVER_PORT, 0, 0));
    let mut k = node.ns().tcp_connect(probe).expect("probe");
    k.write_all(b"probe").expect("write");
    let (mut s, from) = accept(&app);
    assert_eq!(from.ip(), IpAddr::V6(cfg.probe_ip6));
    let mut buf = [0u8; 5];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"probe");
    assert!(nothing_on(&l15006), "the probe is not captured");
    drop((k, s));

    // Removal leaves the pod and the node as they were.
    drop((l15001, l15006, l15008, app, real));
    plan.remove(pod.ns(), backend).expect("remove");
    plan.remove(pod.ns(), backend).expect("remove again");
    host.remove(node.ns(), backend).expect("host remove");
    assert_eq!(before, snapshot(pod.ns()));
    assert_eq!(before_node, snapshot(node.ns()));
}

#[test]
fn inpod_nft_captures_ipv6() {
    ipv6_capture(Backend::Nft);
}

#[test]
fn inpod_iptables_captures_ipv6() {
    ipv6_capture(Backend::Iptables);
}

/// Switching a pod between plans (DNS capture on and off, IPv6 on and off)
/// leaves exactly the new plan, and removing it leaves nothing.
fn plans_replace_each_other(backend: Backend) {
    let ns = NetNs::create_anonymous().expect("netns");
    sh(&ns, &["ip", "link", "set", "lo", "up"]);
    let before = snapshot(&ns);
    let plan = |capture_dns, ipv6| -> Plan {
        profiles::inpod(&InpodConfig {
            capture_dns,
            ipv6,
            ..InpodConfig::default()
        })
        .expect("plan")
    };
    let all = [
        plan(true, true),
        plan(false, true),
        plan(true, false),
        plan(false, false),
        plan(true, true),
    ];
    for pair in all.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        old.apply(&ns, backend).expect("apply old");
        new.apply_replacing(old, &ns, backend).expect("replace");
        assert!(
            new.verify(&ns, backend).expect("verify").is_empty(),
            "{:?}",
            new.verify(&ns, backend)
        );
        new.remove(&ns, backend).expect("remove");
        assert_eq!(before, snapshot(&ns), "after removing the replacement");
        // The same switch again, with the new plan applied already.
        old.apply(&ns, backend).expect("apply old");
        new.apply_replacing(old, &ns, backend).expect("replace");
        new.apply_replacing(old, &ns, backend)
            .expect("replace again");
        new.remove(&ns, backend).expect("remove");
        assert_eq!(before, snapshot(&ns));

        // After a check: over the old plan, what the check saw leads to
        // the old plan's chains going; in a namespace where neither was
        // applied, the new plan alone is put in place.
        for old_there in [true, false] {
            if old_there {
                old.apply(&ns, backend).expect("apply old");
            }
            let mut h = NsHandle::lazy(&ns);
            let drift = new.verify_in(&mut h, backend).expect("verify");
            new.apply_replacing_verified(old, &mut h, backend, &drift)
                .expect("replace after a check");
            drop(h);
            assert!(
                new.verify(&ns, backend).expect("verify").is_empty(),
                "old plan there: {old_there}: {:?}",
                new.verify(&ns, backend)
            );
            new.remove(&ns, backend).expect("remove");
            assert_eq!(before, snapshot(&ns), "old plan there: {old_there}");
        }
    }
}

#[test]
fn nft_plans_replace_each_other() {
    plans_replace_each_other(Backend::Nft);
}

#[test]
fn iptables_plans_replace_each_other() {
    plans_replace_each_other(Backend::Iptables);
}

#[cfg(feature = "nftnl")]
#[test]
fn nftnl_plans_replace_each_other() {
    plans_replace_each_other(Backend::Nftnl);
}
