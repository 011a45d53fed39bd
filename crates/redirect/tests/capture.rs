//! Real packets through real rules: Istio's capture profiles applied in a
//! harness cluster, with both backends, checked against the kernel's tools.
//!
//! Node-level topology (node 0 is "the host"):
//!   pod 0.0 = the ztunnel pod (10.244.0.2, host veth0), pistioin/pistioout
//!   pod 0.1 = an enrolled app pod (10.244.0.3)
//!   pod 0.2 = an unenrolled pod (10.244.0.4)
//!   pod 1.0 = a server on another node (10.244.1.2)
//! The Geneve pairs are VXLAN here (this kernel has no Geneve).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use ambit_netns::NetNs;
use ambit_netns::harness::{Cluster, Node, Pod};
use ambit_redirect::ipset::Ipset;
use ambit_redirect::profiles::{self, InpodConfig, NodeConfig, PodRef, ZtunnelConfig};
use ambit_redirect::{Backend, Plan, Step};
use ambit_tunnel::IstioTunnels;
use socket2::{Domain, Protocol, Type};

mod common;
use common::ztunnel_listeners;

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

/// A transparent listener (IP_TRANSPARENT), as ztunnel binds for TPROXY.
fn transparent_listener(ns: &NetNs, port: u16) -> TcpListener {
    let s = ns
        .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .expect("socket");
    s.set_ip_transparent_v4(true).expect("IP_TRANSPARENT");
    s.set_reuse_address(true).expect("reuse");
    s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
        .expect("bind");
    s.listen(16).expect("listen");
    s.into()
}

/// Connects from `ns` and says hello; returns the local address used.
fn hello(ns: &NetNs, to: SocketAddr) -> SocketAddr {
    let mut c = ns.tcp_connect(to).expect("connect");
    c.write_all(b"hello").expect("write");
    c.local_addr().expect("local")
}

/// Accepts one connection and returns (peer, local, payload).
fn accept(l: &TcpListener) -> (SocketAddr, SocketAddr, Vec<u8>) {
    l.set_nonblocking(false).expect("blocking");
    let (mut s, peer) = l.accept().expect("accept");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).expect("read");
    (peer, s.local_addr().expect("local"), buf.to_vec())
}

/// Nothing arrives on `l` within a short time.
fn nothing_on(l: &TcpListener) -> bool {
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::sleep(Duration::from_millis(200));
    l.accept().is_err()
}

struct NodeMesh<'a> {
    host: &'a Node,
    zt: &'a Pod,
    host_plan: Plan,
    zt_plan: Plan,
    cfg: NodeConfig,
    tunnels: IstioTunnels,
}

fn node_mesh(cluster: &Cluster, backend: Backend) -> NodeMesh<'_> {
    let host = cluster.node(0);
    let zt = cluster.pod(0, 0);
    let tunnels = IstioTunnels::vxlan();
    let out = tunnels
        .apply_host_side(host.ns(), IpAddr::V4(zt.ip()))
        .expect("host tunnels");
    tunnels
        .apply_ztunnel_side(zt.ns(), IpAddr::V4(host.pod_gateway()), out.port)
        .expect("ztunnel tunnels");
    let mut cfg = NodeConfig::new(host.pod_gateway(), zt.host_veth(), zt.ip());
    cfg.tunnel_port = out.port;
    let host_plan = profiles::node_host(&cfg).expect("host plan");
    let zt_plan =
        profiles::ztunnel_ns(&ZtunnelConfig::new(host.pod_gateway(), zt.ip())).expect("zt plan");
    host_plan.apply(host.ns(), backend).expect("apply host");
    zt_plan.apply(zt.ns(), Backend::Nft).expect("apply ztunnel");
    NodeMesh {
        host,
        zt,
        host_plan,
        zt_plan,
        cfg,
        tunnels,
    }
}

fn node_profile_captures_real_packets(backend: Backend) {
    let cluster = Cluster::builder()
        .nodes(2)
        .pods_per_node(3)
        .build()
        .expect("cluster");
    let m = node_mesh(&cluster, backend);
    let (app, other, server) = (cluster.pod(0, 1), cluster.pod(0, 2), cluster.pod(1, 0));
    profiles::enrol(
        m.host.ns(),
        backend,
        &m.host_plan,
        &m.cfg,
        &[PodRef {
            ip: app.ip(),
            uid: "uid-app".into(),
            host_veth: Some(app.host_veth()),
        }],
    )
    .expect("enrol");
    let drift = m.host_plan.verify(m.host.ns(), backend).expect("verify");
    assert!(drift.is_empty(), "{drift:#?}");
    assert!(
        m.zt_plan
            .verify(m.zt.ns(), Backend::Nft)
            .expect("verify")
            .is_empty()
    );

    let outbound = transparent_listener(m.zt.ns(), 15001);
    let inbound = transparent_listener(m.zt.ns(), 15006);
    let target = SocketAddr::from((server.ip(), SERVER_PORT));
    let real = server.ns().tcp_listener(target).expect("server");

    // Enrolled pod → any address: lands on ztunnel's 15001 with original
    // source and destination intact.
    let from = hello(app.ns(), target);
    let (peer, local, data) = accept(&outbound);
    assert_eq!(
        (peer, local, data.as_slice()),
        (from, target, &b"hello"[..])
    );
    assert!(nothing_on(&real));

    // An unenrolled pod's traffic is untouched.
    let from = hello(other.ns(), target);
    let (peer, local, _) = accept(&real);
    assert_eq!((peer, local), (from, target));

    // ztunnel's own traffic is not captured again.
    let from = hello(m.zt.ns(), target);
    let (peer, _, _) = accept(&real);
    assert_eq!(peer, from);
    assert_eq!(peer.ip(), IpAddr::V4(m.zt.ip()));

    // Inbound to the enrolled pod from another node goes to 15006.
    let app_addr = SocketAddr::from((app.ip(), 80));
    let from = hello(server.ns(), app_addr);
    let (peer, local, _) = accept(&inbound);
    assert_eq!((peer, local), (from, app_addr));

    // Unenrol: traffic flows directly again.
    profiles::unenrol(m.host.ns(), backend, &m.host_plan, &m.cfg, &[app.ip()]).expect("unenrol");
    let from = hello(app.ns(), target);
    let (peer, _, _) = accept(&real);
    assert_eq!(peer, from);

    m.host_plan.remove(m.host.ns(), backend).expect("remove");
    m.zt_plan.remove(m.zt.ns(), Backend::Nft).expect("remove");
    m.tunnels.delete_host_side(m.host.ns()).expect("tunnels");
}

#[test]
fn node_profile_nft_captures_real_packets() {
    node_profile_captures_real_packets(Backend::Nft);
}

#[test]
fn node_profile_iptables_captures_real_packets() {
    node_profile_captures_real_packets(Backend::Iptables);
}

/// What the kernel's tools print of everything a plan may touch.
fn snapshot(ns: &NetNs) -> Vec<String> {
    let iptables: String = sh(ns, &["iptables-save"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_owned() + "\n")
        .collect();
    vec![
        sh(ns, &["nft", "-s", "list", "ruleset"]),
        sh(ns, &["ip", "rule"]),
        sh(ns, &["ip", "-6", "rule"]),
        sh(ns, &["ip", "-4", "route", "show", "table", "all"]),
        // Link-local addresses appear when DAD finishes; not ours to compare.
        sh(ns, &["ip", "-6", "route", "show", "table", "all"])
            .lines()
            .filter(|l| !l.contains("fe80:"))
            .collect::<Vec<_>>()
            .join("\n"),
        sh(ns, &["ipset", "list", "-n"]),
        iptables,
    ]
}

fn apply_twice_and_remove(backend: Backend) {
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(2)
        .build()
        .expect("cluster");
    let host = cluster.node(0);
    let zt = cluster.pod(0, 0);
    let before = snapshot(host.ns());
    let tunnels = IstioTunnels::vxlan();
    let port = tunnels
        .apply_host_side(host.ns(), IpAddr::V4(zt.ip()))
        .expect("tunnels")
        .port;
    let with_tunnels = snapshot(host.ns());
    let mut cfg = NodeConfig::new(host.pod_gateway(), zt.host_veth(), zt.ip());
    cfg.tunnel_port = port;
    let plan = profiles::node_host(&cfg).expect("plan");

    plan.apply(host.ns(), backend).expect("apply");
    let once = snapshot(host.ns());
    plan.apply(host.ns(), backend).expect("apply again");
    assert_eq!(once, snapshot(host.ns()), "second apply changed something");

    // The kernel's tools agree with the plan.
    let rules = sh(host.ns(), &["ip", "-j", "rule"]);
    assert!(
        rules.contains(
            r#""priority":101,"src":"all","fwmark":"0x100","fwmask":"0x100","table":"101""#
        ),
        "{rules}"
    );
    let t101 = sh(host.ns(), &["ip", "-j", "route", "show", "table", "101"]);
    assert!(
        t101.contains(r#""dst":"default","gateway":"192.168.127.2","dev":"istioout""#),
        "{t101}"
    );
    match backend {
        Backend::Iptables => {
            let save = sh(host.ns(), &["iptables-save", "-t", "mangle"]);
            assert!(
                save.contains("-A PREROUTING -j ztunnel-PREROUTING"),
                "{save}"
            );
            assert!(save.contains("-A ztunnel-PREROUTING -p tcp -m tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100"), "{save}");
            let xml = sh(
                host.ns(),
                &["ipset", "list", "ztunnel-pods-ips", "-o", "xml"],
            );
            assert!(
                xml.contains("<type>hash:ip</type>") && xml.contains("<comment/>"),
                "{xml}"
            );
        }
        _ => {
            let json = sh(host.ns(), &["nft", "-j", "list", "ruleset"]);
            let v: serde_json::Value = serde_json::from_str(&json).expect("json");
            let items = v["nftables"].as_array().expect("array");
            let chains = items
                .iter()
                .filter(|i| i["chain"]["table"] == "ambit-node")
                .count();
            let rules = items
                .iter()
                .filter(|i| i["rule"]["table"] == "ambit-node")
                .count();
            let jumps = plan.netfilter.jumps.len();
            assert_eq!(chains, plan.netfilter.chains.len() + jumps, "{json}");
            assert_eq!(rules, plan.netfilter.rules.len() + jumps, "{json}");
            assert!(
                items.iter().any(|i| i["set"]["name"] == "ztunnel-pods-ips"),
                "{json}"
            );
        }
    }
    assert!(plan.verify(host.ns(), backend).expect("verify").is_empty());

    // Drift is reported: delete one rule and one route by hand.
    sh(host.ns(), &["ip", "rule", "del", "priority", "102"]);
    sh(host.ns(), &["ip", "route", "flush", "table", "101"]);
    let drift = plan.verify(host.ns(), backend).expect("verify");
    assert_eq!(drift.len(), 3, "{drift:#?}");
    plan.apply(host.ns(), backend).expect("repair");
    assert!(plan.verify(host.ns(), backend).expect("verify").is_empty());

    plan.remove(host.ns(), backend).expect("remove");
    plan.remove(host.ns(), backend).expect("remove again");
    assert_eq!(with_tunnels, snapshot(host.ns()), "remove left something");
    tunnels.delete_host_side(host.ns()).expect("tunnels");
    assert_eq!(before, snapshot(host.ns()));
}

#[test]
fn nft_apply_is_idempotent_and_remove_is_exact() {
    apply_twice_and_remove(Backend::Nft);
}

#[test]
fn iptables_apply_is_idempotent_and_remove_is_exact() {
    apply_twice_and_remove(Backend::Iptables);
}

#[test]
fn an_interrupted_apply_is_completed_by_the_next() {
    for backend in [Backend::Nft, Backend::Iptables] {
        let cluster = Cluster::builder()
            .nodes(1)
            .pods_per_node(1)
            .build()
            .expect("cluster");
        let host = cluster.node(0);
        let zt = cluster.pod(0, 0);
        let tunnels = IstioTunnels::vxlan();
        let port = tunnels
            .apply_host_side(host.ns(), IpAddr::V4(zt.ip()))
            .expect("tunnels")
            .port;
        let mut cfg = NodeConfig::new(host.pod_gateway(), zt.host_veth(), zt.ip());
        cfg.tunnel_port = port;
        let plan = profiles::node_host(&cfg).expect("plan");
        // Every prefix of the steps stands for a process killed after it.
        for cut in 1..Step::ALL.len() {
            for step in &Step::ALL[..cut] {
                plan.apply_step(host.ns(), backend, *step)
                    .expect("partial apply");
            }
            assert!(!plan.verify(host.ns(), backend).expect("verify").is_empty());
            plan.apply(host.ns(), backend).expect("full apply");
            assert!(
                plan.verify(host.ns(), backend).expect("verify").is_empty(),
                "after cut {cut}"
            );
            plan.remove(host.ns(), backend).expect("remove");
        }
    }
}

#[test]
fn a_rejected_batch_leaves_nothing_and_names_the_rule() {
    let ns = NetNs::create_anonymous().expect("netns");
    let cfg = InpodConfig::default();
    let mut plan = profiles::inpod(&cfg).expect("plan");
    // A set the kernel does not have: nft refuses the whole transaction.
    plan.netfilter.push(
        ambit_redirect::netfilter::Table::Nat,
        "ISTIO_OUTPUT",
        vec![
            ambit_redirect::netfilter::Match::Proto(ambit_redirect::netfilter::Proto::Tcp),
            ambit_redirect::netfilter::Match::Set {
                name: "no-such-set".into(),
                dir: ambit_redirect::netfilter::Dir::Dst,
                family: ambit_redirect::route::Family::V4,
                neg: false,
            },
        ],
        ambit_redirect::netfilter::Target::Accept,
    );
    let before = snapshot(&ns);
    let err = plan
        .apply_step(&ns, Backend::Nft, Step::Netfilter)
        .expect_err("refused");
    assert!(err.to_string().contains("no-such-set"), "{err}");
    assert_eq!(before, snapshot(&ns), "nft left a partial table");
    let err = plan
        .apply_step(&ns, Backend::Iptables, Step::Netfilter)
        .expect_err("refused");
    assert!(
        err.to_string().contains("no-such-set") || err.to_string().contains("Set"),
        "{err}"
    );
    assert_eq!(
        before,
        snapshot(&ns),
        "iptables-restore left a partial table"
    );
}

/// SO_ORIGINAL_DST of an accepted (REDIRECTed) connection.
fn original_dst(s: &TcpStream) -> SocketAddr {
    let sock = socket2::SockRef::from(s);
    sock.original_dst_v4()
        .expect("SO_ORIGINAL_DST")
        .as_socket()
        .expect("inet")
}

fn inpod_redirects(backend: Backend) {
    let cluster = Cluster::builder()
        .nodes(2)
        .pods_per_node(1)
        .build()
        .expect("cluster");
    let (pod, remote) = (cluster.pod(0, 0), cluster.pod(1, 0));
    let plan = profiles::inpod(&InpodConfig::default()).expect("plan");
    plan.apply(pod.ns(), backend).expect("apply");
    plan.apply(pod.ns(), backend).expect("apply again");
    assert!(plan.verify(pod.ns(), backend).expect("verify").is_empty());

    let [l15001, l15006, l15008] = ztunnel_listeners(pod.ns());
    let target = SocketAddr::from((remote.ip(), SERVER_PORT));
    let real = remote.ns().tcp_listener(target).expect("server");

    // Outbound from the app → 15001, original destination recoverable.
    let mut c = pod.ns().tcp_connect(target).expect("connect");
    c.write_all(b"x").expect("write");
    let (s, peer) = l15001.accept().expect("accept 15001");
    assert_eq!(original_dst(&s), target);
    assert_eq!(peer, c.local_addr().expect("local"));

    // ztunnel's sockets (SO_MARK 1337) pass.
    let zt = pod
        .ns()
        .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .expect("socket");
    zt.set_mark(1337).expect("SO_MARK");
    zt.connect(&target.into()).expect("marked connect");
    let (_, peer) = real.accept().expect("real server");
    assert_eq!(peer.ip(), IpAddr::V4(pod.ip()));

    // Inbound plaintext → 15006; HBONE 15008 is not redirected.
    let app = SocketAddr::from((pod.ip(), 80));
    let _c = remote.ns().tcp_connect(app).expect("inbound");
    let (s, peer) = l15006.accept().expect("accept 15006");
    assert_eq!(original_dst(&s), app);
    assert_eq!(peer.ip(), IpAddr::V4(remote.ip()));
    let _h = remote
        .ns()
        .tcp_connect((pod.ip(), 15008).into())
        .expect("hbone");
    let (s, _) = l15008.accept().expect("accept 15008");
    assert_eq!(s.local_addr().expect("local").port(), 15008);

    plan.remove(pod.ns(), backend).expect("remove");
    // After removal traffic goes straight out.
    let _c = pod.ns().tcp_connect(target).expect("connect");
    let (_, peer) = real.accept().expect("direct");
    assert_eq!(peer.ip(), IpAddr::V4(pod.ip()));
}

#[test]
fn inpod_nft_redirects_outbound_and_inbound() {
    inpod_redirects(Backend::Nft);
}

#[test]
fn inpod_iptables_redirects_outbound_and_inbound() {
    inpod_redirects(Backend::Iptables);
}

#[test]
fn host_probe_plan_and_sidecar_apply_and_remove() {
    let ns = NetNs::create_anonymous().expect("netns");
    let before = snapshot(&ns);
    for backend in [Backend::Nft, Backend::Iptables] {
        for plan in [
            profiles::inpod_host_probes(&InpodConfig::default()).expect("plan"),
            profiles::sidecar(&Default::default()).expect("plan"),
        ] {
            plan.apply(&ns, backend).expect("apply");
            assert!(
                plan.verify(&ns, backend).expect("verify").is_empty(),
                "{}",
                plan.name
            );
            plan.remove(&ns, backend).expect("remove");
        }
    }
    assert_eq!(before, snapshot(&ns));
    assert!(
        Ipset::open(Some(&ns))
            .expect("ipset")
            .names()
            .expect("names")
            .is_empty()
    );
}

/// Who opens a connection in the sidecar cases.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// The app in the sidecar pod (root, not the proxy's uid or gid).
    App,
    /// The proxy: a socket created with fsuid and fsgid 1337.
    Proxy,
    /// A socket with the proxy's gid only (uid root), which Istio's gid
    /// rules exempt as well.
    ProxyGid,
    /// The proxy answering inbound as itself, from 127.0.0.6.
    ProxyPassthrough,
    /// A workload in another namespace.
    Remote,
}

/// Where a connection must land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lands {
    /// The stand-in proxy's outbound listener (15001), original
    /// destination intact.
    Outbound,
    /// The stand-in proxy's inbound listener (15006), original
    /// destination intact.
    Inbound,
    /// The real listener of the destination, not captured.
    Direct,
}

/// A socket whose file carries `uid`/`gid` as its owner, as a process
/// running as them would create it. Only the dedicated thread of
/// [`NetNs::run`] changes its fs credentials, and it exits afterwards.
fn socket_as(ns: &NetNs, uid: u32, gid: u32) -> socket2::Socket {
    ns.run(move || {
        // Per-thread credentials: the rest of the test process stays root.
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        socket2::Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
    })
    .expect("netns")
    .expect("socket")
}

/// Accepts the connection coming from `peer` on `l`, waiting at most five
/// seconds; returns the accepted stream.
fn accept_from(l: &TcpListener, peer: SocketAddr) -> Option<TcpStream> {
    l.set_nonblocking(true).expect("nonblocking");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match l.accept() {
            Ok((s, p)) if p == peer => return Some(s),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    None
}

/// Nothing is waiting on any of `ls`.
fn all_idle(ls: &[&TcpListener]) -> bool {
    ls.iter().all(|l| {
        l.set_nonblocking(true).expect("nonblocking");
        l.accept().is_err()
    })
}

fn sidecar_captures(backend: Backend) {
    // pod 0.0 = the sidecar pod (app on 8080, stand-in proxy on 15001 and
    // 15006, the proxy's metrics/health/HBONE ports listening directly),
    // pod 0.1 = a remote workload with a server on 8080,
    // pod 0.2 = "istiod" with the control plane's 15012.
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(3)
        .build()
        .expect("cluster");
    let (pod, remote, istiod) = (cluster.pod(0, 0), cluster.pod(0, 1), cluster.pod(0, 2));
    let cfg = profiles::SidecarConfig::default();
    let proxy = (cfg.proxy_uid, cfg.proxy_gid);
    let before = snapshot(pod.ns());
    let plan = profiles::sidecar(&cfg).expect("plan");
    plan.apply(pod.ns(), backend).expect("apply");
    plan.apply(pod.ns(), backend).expect("apply again");
    assert!(plan.verify(pod.ns(), backend).expect("verify").is_empty());

    // The stand-in proxy's listeners belong to the proxy's uid/gid, as
    // Envoy's do; what the plan matches on is the owner of the sockets
    // the proxy connects from.
    let proxy_listener = |port: u16| -> TcpListener {
        let s = socket_as(pod.ns(), proxy.0, proxy.1);
        s.set_reuse_address(true).expect("reuse");
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
            .expect("bind");
        s.listen(16).expect("listen");
        s.into()
    };
    let outbound = proxy_listener(cfg.outbound_port);
    let inbound = proxy_listener(cfg.inbound_port);
    let app = pod
        .ns()
        .tcp_listener(([0, 0, 0, 0], SERVER_PORT).into())
        .expect("app");
    let excluded: Vec<(u16, TcpListener)> = cfg
        .exclude_inbound
        .iter()
        .map(|&p| (p, proxy_listener(p)))
        .collect();
    let server_addr = SocketAddr::from((remote.ip(), SERVER_PORT));
    let server = remote.ns().tcp_listener(server_addr).expect("server");
    let istiod_addr = SocketAddr::from((istiod.ip(), 15012));
    let xds = istiod.ns().tcp_listener(istiod_addr).expect("istiod");

    let pod_app = SocketAddr::from((pod.ip(), SERVER_PORT));
    let local_app = SocketAddr::from((Ipv4Addr::LOCALHOST, SERVER_PORT));
    let mut cases = vec![
        // 1. remote → local pod: inbound to the app port goes to 15006.
        (
            "remote to local pod",
            Client::Remote,
            pod_app,
            Lands::Inbound,
        ),
        // 2. local → remote: the app's outbound goes to 15001.
        ("local to remote", Client::App, server_addr, Lands::Outbound),
        // 4. local → local: loopback from the app is never captured, to
        // 127.0.0.1 or to its own pod IP (`-o lo ! --uid-owner 1337 -j
        // RETURN`) ...
        ("app to localhost", Client::App, local_app, Lands::Direct),
        ("app to own pod IP", Client::App, pod_app, Lands::Direct),
        // ... but the proxy reaching its own pod IP (a service address
        // that resolved to this pod) is sent back inbound ...
        (
            "proxy to own pod IP",
            Client::Proxy,
            pod_app,
            Lands::Inbound,
        ),
        // ... except to the HBONE port ...
        (
            "proxy to own pod IP's HBONE port",
            Client::Proxy,
            SocketAddr::from((pod.ip(), cfg.hbone_port)),
            Lands::Direct,
        ),
        // ... or when it comes from the inbound passthrough source.
        (
            "proxy passthrough to own pod IP",
            Client::ProxyPassthrough,
            pod_app,
            Lands::Direct,
        ),
        // 5. the proxy's own traffic (uid, or gid alone) is not captured.
        ("proxy to remote", Client::Proxy, server_addr, Lands::Direct),
        (
            "proxy gid to remote",
            Client::ProxyGid,
            server_addr,
            Lands::Direct,
        ),
        // 6. proxy → control plane.
        ("proxy to istiod", Client::Proxy, istiod_addr, Lands::Direct),
    ];
    // 3. scrapes and probes of the excluded ports reach them directly.
    for &port in &cfg.exclude_inbound {
        cases.push((
            "remote to excluded port",
            Client::Remote,
            SocketAddr::from((pod.ip(), port)),
            Lands::Direct,
        ));
    }

    let real_for = |to: SocketAddr| -> &TcpListener {
        if to == server_addr {
            &server
        } else if to == istiod_addr {
            &xds
        } else if to.port() == SERVER_PORT {
            &app
        } else {
            &excluded
                .iter()
                .find(|(p, _)| *p == to.port())
                .expect("a listener for the port")
                .1
        }
    };
    for (name, client, to, lands) in cases {
        let s = match client {
            Client::App => pod
                .ns()
                .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
                .expect("socket"),
            Client::Proxy => socket_as(pod.ns(), proxy.0, proxy.1),
            Client::ProxyGid => socket_as(pod.ns(), 0, proxy.1),
            Client::ProxyPassthrough => {
                let s = socket_as(pod.ns(), proxy.0, proxy.1);
                s.bind(&SocketAddr::from((cfg.inbound_passthrough_src, 0)).into())
                    .expect("bind 127.0.0.6");
                s
            }
            Client::Remote => remote
                .ns()
                .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
                .expect("socket"),
        };
        s.connect_timeout(&to.into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{name}: connect {to}: {e}"));
        let from = s.local_addr().expect("local").as_socket().expect("inet");
        let l = match lands {
            Lands::Outbound => &outbound,
            Lands::Inbound => &inbound,
            Lands::Direct => real_for(to),
        };
        let got = accept_from(l, from)
            .unwrap_or_else(|| panic!("{name}: {from} → {to} did not land on {lands:?}"));
        match lands {
            Lands::Direct => {
                assert_eq!(got.local_addr().expect("local"), to, "{name}");
            }
            _ => assert_eq!(original_dst(&got), to, "{name}: original destination"),
        }
        let mut others = vec![&outbound, &inbound, &app, &server, &xds];
        others.extend(excluded.iter().map(|(_, l)| l));
        assert!(all_idle(&others), "{name}: a second connection appeared");
    }

    plan.remove(pod.ns(), backend).expect("remove");
    // No capture remains: the app reaches the remote server and the remote
    // reaches the app directly.
    for (ns, to, l) in [
        (pod.ns(), server_addr, &server),
        (remote.ns(), pod_app, &app),
    ] {
        let c = ns.tcp_connect(to).expect("connect");
        let from = c.local_addr().expect("local");
        let got = accept_from(l, from).expect("direct after removal");
        assert_eq!(got.local_addr().expect("local"), to);
    }
    assert_eq!(before, snapshot(pod.ns()), "remove left something");
    assert_eq!(sh(pod.ns(), &["nft", "list", "ruleset"]).trim(), "");
}

#[test]
fn sidecar_nft_captures_six_traffic_kinds() {
    sidecar_captures(Backend::Nft);
}

#[test]
fn sidecar_iptables_captures_six_traffic_kinds() {
    sidecar_captures(Backend::Iptables);
}

#[cfg(feature = "nftnl")]
mod nftnl {
    use super::*;

    /// The in-process backend produces exactly what `nft -f` produces: the
    /// kernel lists the same table for every profile.
    #[test]
    fn nftnl_matches_nft_text_for_every_profile() {
        let ns = NetNs::create_anonymous().expect("netns");
        for cmd in [
            "ip link add veth0 type veth peer name eth0",
            "ip link add istioin type vxlan id 1000 remote 10.244.0.2 dstport 6081",
            "ip link add istioout type vxlan id 1001 remote 10.244.0.2 dstport 6081",
            "ip link add pistioin type vxlan id 1002 remote 10.244.0.1 dstport 6082",
            "ip link add pistioout type vxlan id 1003 remote 10.244.0.1 dstport 6082",
        ] {
            sh(&ns, &cmd.split(' ').collect::<Vec<_>>());
        }
        for l in [
            "lo",
            "veth0",
            "eth0",
            "istioin",
            "istioout",
            "pistioin",
            "pistioout",
        ] {
            sh(&ns, &["ip", "link", "set", l, "up"]);
        }
        sh(&ns, &["ip", "addr", "add", "10.244.0.1/24", "dev", "eth0"]);
        sh(
            &ns,
            &["ip", "addr", "add", "192.168.127.1/30", "dev", "istioout"],
        );
        sh(
            &ns,
            &["ip", "addr", "add", "192.168.126.1/30", "dev", "pistioin"],
        );
        sh(
            &ns,
            &["ip", "addr", "add", "192.168.127.2/30", "dev", "pistioout"],
        );
        let before = snapshot(&ns);
        let mut node = NodeConfig::new(
            Ipv4Addr::new(10, 244, 0, 1),
            "veth0",
            Ipv4Addr::new(10, 244, 0, 2),
        );
        node.capture_dns = true;
        let inpod = InpodConfig {
            capture_dns: true,
            ipv6: true,
            ..InpodConfig::default()
        };
        for plan in [
            profiles::node_host(&node).expect("plan"),
            profiles::ztunnel_ns(&ZtunnelConfig::new(
                Ipv4Addr::new(10, 244, 0, 1),
                Ipv4Addr::new(10, 244, 0, 2),
            ))
            .expect("plan"),
            profiles::inpod(&inpod).expect("plan"),
            profiles::inpod_host_probes(&inpod).expect("plan"),
            profiles::sidecar(&Default::default()).expect("plan"),
        ] {
            plan.apply(&ns, Backend::Nftnl).expect("apply");
            plan.apply(&ns, Backend::Nftnl).expect("apply again");
            // Both backends' verify see no drift in what nftnl wrote.
            for verifier in [Backend::Nftnl, Backend::Nft] {
                let drift = plan.verify(&ns, verifier).expect("verify");
                assert!(
                    drift.is_empty(),
                    "{} ({verifier:?}'s verify of nftnl's table): {}",
                    plan.name,
                    drift
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            plan.remove(&ns, Backend::Nftnl).expect("remove");
            plan.remove(&ns, Backend::Nftnl).expect("remove again");
        }
        assert_eq!(before[0], snapshot(&ns)[0], "nft ruleset after removal");
    }

    #[test]
    fn nftnl_node_profile_captures_real_packets() {
        node_profile_captures_real_packets(Backend::Nftnl);
    }

    #[test]
    fn nftnl_inpod_redirects() {
        inpod_redirects(Backend::Nftnl);
    }

    #[test]
    fn nftnl_sidecar_captures_six_traffic_kinds() {
        sidecar_captures(Backend::Nftnl);
    }

    #[test]
    fn nftnl_refused_batch_names_the_rule_and_applies_nothing() {
        let ns = NetNs::create_anonymous().expect("netns");
        let mut plan = profiles::inpod(&InpodConfig::default()).expect("plan");
        plan.netfilter.push(
            ambit_redirect::netfilter::Table::Nat,
            "ISTIO_OUTPUT",
            vec![
                ambit_redirect::netfilter::Match::Proto(ambit_redirect::netfilter::Proto::Tcp),
                ambit_redirect::netfilter::Match::Set {
                    name: "no-such-set".into(),
                    dir: ambit_redirect::netfilter::Dir::Dst,
                    family: ambit_redirect::route::Family::V4,
                    neg: false,
                },
            ],
            ambit_redirect::netfilter::Target::Accept,
        );
        let before = snapshot(&ns);
        let err = plan
            .apply_step(&ns, Backend::Nftnl, Step::Netfilter)
            .expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("no-such-set") && msg.contains("nothing was applied"),
            "{msg}"
        );
        assert_eq!(before, snapshot(&ns));
    }
}
