//! Kernel tests: real links in namespaces made by the `ambit-netns` harness.
//! They need root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2, which is used
//! only to cross-check (`ip -j`), never to make changes. Every namespace is
//! the harness's and is deleted when the `Cluster` drops, also on panic.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Instant;

use ambit_netns::NetNs;
use ambit_netns::harness::Cluster;
use ambit_tunnel::{
    Action, Error, IfAddr, IstioTunnels, Links, Ttl, Tunnel, TunnelKind, delete, list, reconcile,
    reconcile_from,
};
use serde_json::Value;

const MIB: usize = 1 << 20;

fn cluster(nodes: usize, pods: usize) -> Cluster {
    Cluster::builder()
        .nodes(nodes)
        .pods_per_node(pods)
        .build()
        .expect("cluster")
}

/// `ip -j -d [-s] link show` inside `ns`, parsed.
fn ip_links(ns: &NetNs, stats: bool) -> Vec<Value> {
    let mut cmd = Command::new("ip");
    cmd.args(["-j", "-d"]);
    if stats {
        cmd.arg("-s");
    }
    cmd.args(["link", "show"]);
    let out = ns.output(&mut cmd).expect("ip -j link");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("json") {
        Value::Array(v) => v,
        other => panic!("unexpected ip output {other}"),
    }
}

fn ip_link(ns: &NetNs, name: &str) -> Option<Value> {
    ip_links(ns, true).into_iter().find(|l| l["ifname"] == name)
}

fn count_named(ns: &NetNs, name: &str) -> usize {
    ip_links(ns, false)
        .iter()
        .filter(|l| l["ifname"] == name)
        .count()
}

fn ip_addrs(ns: &NetNs, name: &str) -> Vec<String> {
    let out = ns
        .output(Command::new("ip").args(["-j", "addr", "show", "dev", name]))
        .expect("ip -j addr");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["scope"] != "link")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or("?"), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    Ipv4Addr::new(a, b, c, d).into()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn geneve_refusal_names_config_geneve_and_suggests_vxlan() {
    let c = cluster(1, 0);
    let node = c.node(0).ns();
    let t = Tunnel::new("istioin", TunnelKind::Geneve, 1000, v4(10, 244, 0, 2));
    match reconcile(node, &t) {
        Err(e @ Error::GeneveUnsupported { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("CONFIG_GENEVE"), "{msg}");
            assert!(msg.contains("Vxlan"), "{msg}");
            assert!(msg.contains("istioin"), "{msg}");
            assert!(msg.contains(node.label()), "{msg}");
            // The errno stays available as the source.
            let source = std::error::Error::source(&e).expect("source");
            assert!(source.to_string().contains("not supported"), "{source}");
            assert_eq!(count_named(node, "istioin"), 0);
        }
        // A kernel with Geneve (another machine): then it must really work.
        Ok(out) => {
            assert_eq!(out.action, Action::Created);
            let l = ip_link(node, "istioin").expect("link");
            assert_eq!(l["linkinfo"]["info_kind"], "geneve");
            assert_eq!(l["linkinfo"]["info_data"]["id"], 1000);
            assert!(delete(node, "istioin").expect("delete"));
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[test]
fn vxlan_istio_pair_carries_1mib_over_tcp_at_mtu_1410() {
    // Node 0 is the host; its pod 0 plays the ztunnel pod.
    let c = cluster(1, 1);
    let (node, zt) = (c.node(0), c.pod(0, 0));
    let istio = IstioTunnels {
        mtu: Some(1410),
        ..IstioTunnels::vxlan()
    };
    let host = istio
        .apply_host_side(node.ns(), zt.ip().into())
        .expect("host side");
    assert_eq!(host.port, 6081, "first free port on a clean node");
    assert_eq!(host.inbound.action, Action::Created);
    assert_eq!(host.outbound.action, Action::Created);
    let pod = istio
        .apply_ztunnel_side(zt.ns(), node.pod_gateway().into(), host.port)
        .expect("ztunnel side");
    assert_eq!(pod.inbound.action, Action::Created);

    // Cross-check with iproute2.
    for (ns, name, vni, remote, addr) in [
        (node.ns(), "istioin", 1000, zt.ip(), "192.168.126.1/30"),
        (node.ns(), "istioout", 1001, zt.ip(), "192.168.127.1/30"),
        (
            zt.ns(),
            "pistioin",
            1000,
            node.pod_gateway(),
            "192.168.126.2/30",
        ),
        (
            zt.ns(),
            "pistioout",
            1001,
            node.pod_gateway(),
            "192.168.127.2/30",
        ),
    ] {
        let l = ip_link(ns, name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(l["mtu"], 1410, "{name}");
        assert_eq!(l["operstate"], "UNKNOWN", "{name} is up");
        assert!(
            l["flags"].as_array().expect("flags").contains(&"UP".into()),
            "{name}"
        );
        let info = &l["linkinfo"];
        assert_eq!(info["info_kind"], "vxlan", "{name}");
        assert_eq!(info["info_data"]["id"], vni, "{name}");
        assert_eq!(info["info_data"]["remote"], remote.to_string(), "{name}");
        assert_eq!(info["info_data"]["port"], 6081, "{name}");
        assert_eq!(ip_addrs(ns, name), [addr], "{name}");
        let rp = ns
            .sysctl(&format!("net/ipv4/conf/{name}/rp_filter"))
            .expect("rp_filter");
        assert_eq!(rp, "0", "{name}");
    }
    let al = node
        .ns()
        .sysctl("net/ipv4/conf/istioin/accept_local")
        .expect("accept_local");
    assert_eq!(al, "1");

    // TCP across each /30: host .1 -> ztunnel .2, 1 MiB, checked byte for byte.
    for (dst, dev) in [("192.168.126.2", "istioin"), ("192.168.127.2", "istioout")] {
        let addr: SocketAddr = format!("{dst}:7000").parse().expect("addr");
        let before = tx_bytes(node.ns(), dev);
        let listener = zt.ns().tcp_listener(addr).expect("listen in ztunnel pod");
        let server = std::thread::spawn(move || {
            let (mut conn, peer) = listener.accept().expect("accept");
            let mut got = Vec::with_capacity(MIB);
            conn.read_to_end(&mut got).expect("read");
            (peer, got)
        });
        let sent = pattern(MIB);
        let mut conn = node.ns().tcp_connect(addr).expect("connect from node");
        let mss = socket2::SockRef::from(&conn).tcp_mss().expect("TCP_MAXSEG");
        let start = Instant::now();
        conn.write_all(&sent).expect("write");
        conn.shutdown(std::net::Shutdown::Write)
            .expect("half-close");
        let (peer, got) = server.join().expect("server thread");
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(got.len(), MIB, "{dev}");
        assert!(got == sent, "{dev}: bytes differ");
        // The client's source is the host side of the /30.
        assert_eq!(peer.ip().to_string(), dst.replace(".2", ".1"), "{dev}");
        // MTU 1410 - 20 (IPv4) - 20 (TCP) = 1370; less with TCP options.
        assert!((1300..=1370).contains(&mss), "{dev}: mss {mss}");
        // The bytes really went through the tunnel device.
        let sent_on_dev = tx_bytes(node.ns(), dev) - before;
        assert!(sent_on_dev >= MIB as u64, "{dev}: {sent_on_dev} bytes");
        eprintln!(
            "{dev}: 1 MiB in {:.1} ms ({:.0} Mbit/s), mss {mss}, {sent_on_dev} bytes on the device",
            secs * 1e3,
            8.0 * MIB as f64 / secs / 1e6
        );
    }

    // Re-applying both sides changes nothing.
    let again = istio
        .apply_host_side(node.ns(), zt.ip().into())
        .expect("host again");
    assert_eq!(again.port, 6081);
    assert_eq!(again.inbound.action, Action::Unchanged);
    assert_eq!(again.outbound.action, Action::Unchanged);
    assert_eq!(again.inbound.index, host.inbound.index);
    let again = istio
        .apply_ztunnel_side(zt.ns(), node.pod_gateway().into(), 6081)
        .expect("pod again");
    assert_eq!(again.inbound.action, Action::Unchanged);
    assert_eq!(again.outbound.action, Action::Unchanged);

    istio.delete_host_side(node.ns()).expect("delete host side");
    istio.delete_ztunnel_side(zt.ns()).expect("delete pod side");
    for name in ["istioin", "istioout"] {
        assert_eq!(count_named(node.ns(), name), 0);
    }
    for name in ["pistioin", "pistioout"] {
        assert_eq!(count_named(zt.ns(), name), 0);
    }
}

fn tx_bytes(ns: &NetNs, dev: &str) -> u64 {
    let l = ip_link(ns, dev).expect("link");
    l["stats64"]["tx"]["bytes"].as_u64().expect("tx bytes")
}

#[test]
fn reconcile_is_idempotent_replaces_on_change_and_delete_leaves_nothing() {
    let c = cluster(1, 0);
    let ns = c.node(0).ns();
    let base = Tunnel::new("tun0", TunnelKind::Vxlan, 4242, v4(10, 9, 0, 2))
        .port(6081)
        .mtu(1410)
        .address(IfAddr::new(Ipv4Addr::new(192, 168, 126, 1), 30))
        .sysctls(Some(0), Some(true));

    let first = reconcile(ns, &base).expect("create");
    assert_eq!(first.action, Action::Created);
    let snapshot = ip_link(ns, "tun0").expect("link");
    let second = reconcile(ns, &base).expect("again");
    assert_eq!(second.action, Action::Unchanged);
    assert_eq!(second.index, first.index);
    let after = ip_link(ns, "tun0").expect("link");
    assert_eq!(after["ifindex"], snapshot["ifindex"]);
    assert_eq!(after["linkinfo"], snapshot["linkinfo"]);
    assert_eq!(after["mtu"], snapshot["mtu"]);
    assert_eq!(ip_addrs(ns, "tun0"), ["192.168.126.1/30"]);

    // In-place changes keep the link.
    let t = base
        .clone()
        .mtu(1400)
        .address(IfAddr::new(Ipv4Addr::new(192, 168, 50, 1), 24));
    let out = reconcile(ns, &t).expect("update");
    assert_eq!(out.index, first.index);
    assert_eq!(out.action, Action::Updated(vec!["mtu", "addresses"]));
    assert_eq!(ip_link(ns, "tun0").expect("link")["mtu"], 1400);
    assert_eq!(
        ip_addrs(ns, "tun0"),
        ["192.168.126.1/30", "192.168.50.1/24"]
    );

    // A different remote means a different link: replaced, never two.
    let mut moved = base.clone();
    moved.params.remote = v4(10, 9, 0, 3);
    let out = reconcile(ns, &moved).expect("replace");
    assert_eq!(out.action, Action::Replaced(vec!["remote"]));
    assert_ne!(out.index, first.index);
    assert_eq!(count_named(ns, "tun0"), 1);
    let l = ip_link(ns, "tun0").expect("link");
    assert_eq!(l["linkinfo"]["info_data"]["remote"], "10.9.0.3");
    assert_eq!(l["mtu"], 1410);
    assert_eq!(ip_addrs(ns, "tun0"), ["192.168.126.1/30"]);
    assert_eq!(
        reconcile(ns, &moved).expect("again").action,
        Action::Unchanged
    );

    // TTL and port changes replace too; our own listing agrees with ip.
    let ttl = moved.clone().ttl(Ttl::Fixed(9)).port(6090);
    let out = reconcile(ns, &ttl).expect("replace ttl");
    assert_eq!(out.action, Action::Replaced(vec!["port", "ttl"]));
    let ours = list(ns)
        .expect("list")
        .into_iter()
        .find(|l| l.name == "tun0")
        .expect("listed");
    assert_eq!(ours.params.as_ref().map(|p| p.port), Some(6090));
    assert_eq!(ours.params.as_ref().map(|p| p.ttl), Some(Ttl::Fixed(9)));
    assert_eq!(ours.mtu, Some(1410));
    assert_eq!(ours.index, out.index);

    assert!(delete(ns, "tun0").expect("delete"));
    assert_eq!(count_named(ns, "tun0"), 0);
    assert!(!delete(ns, "tun0").expect("delete absent"));
}

#[test]
fn a_non_tunnel_link_with_the_name_is_left_alone() {
    let c = cluster(1, 1);
    let ns = c.node(0).ns();
    let veth = c.pod(0, 0).host_veth();
    let before = ip_link(ns, &veth).expect("veth");
    let t = Tunnel::new(veth.clone(), TunnelKind::Vxlan, 1, v4(10, 9, 0, 2));
    match reconcile(ns, &t) {
        Err(e @ Error::NameTaken { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&veth) && msg.contains("veth"), "{msg}");
        }
        other => panic!("expected NameTaken, got {other:?}"),
    }
    let after = ip_link(ns, &veth).expect("veth still there");
    assert_eq!(after["ifindex"], before["ifindex"]);
}

#[test]
fn bad_input_is_refused_before_the_kernel_sees_it() {
    let c = cluster(1, 0);
    let ns = c.node(0).ns();
    let before = ip_links(ns, false);
    let ok = Tunnel::new("tun0", TunnelKind::Vxlan, 1, v4(10, 9, 0, 2));
    let mut long = ok.clone();
    long.name = "a-name-of-16-byt".into();
    let mut vni = ok.clone();
    vni.params.vni = 1 << 24;
    let port = ok.clone().port(0);
    let family = ok.clone().local("fd00::1".parse().expect("v6"));
    for (t, item, words) in [
        (&long, "name", "a-name-of-16-byt"),
        (&vni, "vni", "16777216"),
        (&port, "port", "0"),
        (&family, "local", "fd00::1"),
    ] {
        for r in [
            reconcile(ns, t).map(drop),
            Links::open(ns).and_then(|mut l| l.create(t, None)),
        ] {
            match r {
                Err(e @ Error::Invalid { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(item), "{msg}");
                    assert!(msg.contains(words), "{msg}");
                }
                other => panic!("{item}: expected Invalid, got {other:?}"),
            }
        }
    }
    assert!(matches!(
        delete(ns, "a-name-of-16-byt"),
        Err(Error::Invalid { item: "name", .. })
    ));
    // Nothing changed in the namespace.
    let after = ip_links(ns, false);
    assert_eq!(before, after);
}

#[test]
fn port_choice_skips_ports_of_other_links_and_is_stable() {
    let c = cluster(1, 0);
    let ns = c.node(0).ns();
    let other = Tunnel::new("other0", TunnelKind::Vxlan, 7, v4(10, 9, 0, 9)).port(6081);
    reconcile(ns, &other).expect("other link");
    let istio = IstioTunnels::vxlan();
    let zt = v4(10, 244, 0, 2);
    let first = istio.apply_host_side(ns, zt).expect("host side");
    assert_eq!(first.port, 6082);
    // Our own links do not block their port on a re-apply.
    let again = istio.apply_host_side(ns, zt).expect("again");
    assert_eq!(again.port, 6082);
    assert_eq!(again.inbound.action, Action::Unchanged);
    let l = ip_link(ns, "istioout").expect("istioout");
    assert_eq!(l["linkinfo"]["info_data"]["port"], 6082);
}

#[test]
fn link_created_in_one_namespace_and_moved_to_another_carries_traffic() {
    // Node 0 creates `mv0` (its UDP socket stays in node 0) and moves it into
    // its pod; node 1 has the other end. Traffic from the pod's `mv0` leaves
    // through node 0's underlay.
    let c = cluster(2, 1);
    let (n0, n1, pod) = (c.node(0), c.node(1), c.pod(0, 0));
    let a = Tunnel::new("mv0", TunnelKind::Vxlan, 77, n1.underlay_ip().into())
        .port(4789)
        .address(IfAddr::new(Ipv4Addr::new(192, 168, 200, 1), 30));
    let b = Tunnel::new("mv0", TunnelKind::Vxlan, 77, n0.underlay_ip().into())
        .port(4789)
        .address(IfAddr::new(Ipv4Addr::new(192, 168, 200, 2), 30));
    let out = reconcile_from(n0.ns(), pod.ns(), &a).expect("create and move");
    assert_eq!(out.action, Action::Created);
    reconcile(n1.ns(), &b).expect("far end");
    assert_eq!(count_named(n0.ns(), "mv0"), 0, "not left in the node");
    let l = ip_link(pod.ns(), "mv0").expect("in the pod");
    assert!(
        l.get("link_netnsid").is_some(),
        "socket in another netns: {l}"
    );
    assert_eq!(
        reconcile_from(n0.ns(), pod.ns(), &a).expect("again").action,
        Action::Unchanged
    );

    let addr: SocketAddr = "192.168.200.2:7001".parse().expect("addr");
    let listener = n1.ns().tcp_listener(addr).expect("listen");
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        let mut got = Vec::new();
        conn.read_to_end(&mut got).expect("read");
        (peer, got)
    });
    let mut conn = pod.ns().tcp_connect(addr).expect("connect from pod");
    conn.write_all(b"through the moved tunnel").expect("write");
    drop(conn);
    let (peer, got) = server.join().expect("server");
    assert_eq!(got, b"through the moved tunnel");
    assert_eq!(peer.ip(), Ipv4Addr::new(192, 168, 200, 1));
    assert!(delete(pod.ns(), "mv0").expect("delete"));
}
