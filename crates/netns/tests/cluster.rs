//! Integration tests for the namespace handle and the cluster harness.
//! They need root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use ambit_netns::harness::Cluster;
use ambit_netns::{Error, NetNs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn pod_on_node_a_echoes_1mib_to_pod_on_node_b() {
    let cluster = Cluster::builder()
        .nodes(2)
        .pods_per_node(1)
        .build()
        .expect("cluster");
    let (a, b) = (cluster.pod(0, 0), cluster.pod(1, 0));
    let server_addr = SocketAddr::from((b.ip(), 7000));

    // Bind first, so the client cannot race the server.
    let listener = b.ns().tcp_listener(server_addr).expect("bind in pod b");
    let server = b
        .spawn_async(move || async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("register");
            let (mut conn, peer) = listener.accept().await.expect("accept");
            let (mut r, mut w) = conn.split();
            let n = tokio::io::copy(&mut r, &mut w).await.expect("echo");
            w.shutdown().await.expect("shutdown");
            (peer, n)
        })
        .expect("server task");

    let sent = pattern(MIB);
    let to_send = sent.clone();
    let client = a
        .spawn_async(move || async move {
            let mut conn = tokio::net::TcpStream::connect(server_addr)
                .await
                .expect("connect");
            let local = conn.local_addr().expect("local addr");
            let (mut r, mut w) = conn.split();
            let write = async {
                w.write_all(&to_send).await.expect("write");
                w.shutdown().await.expect("half-close");
            };
            let mut got = Vec::with_capacity(MIB);
            let read = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(write, read);
            n.expect("read");
            (local, got)
        })
        .expect("client task");

    let (local, got) = client.join();
    let (peer, echoed) = server.join();
    assert_eq!(echoed, MIB as u64);
    assert_eq!(got.len(), MIB);
    assert!(got == sent, "echoed bytes differ");
    // The connection crossed two routers without NAT: the server sees pod A.
    assert_eq!(peer, local);
    assert_eq!(peer.ip(), a.ip());
}

#[test]
fn child_process_runs_inside_a_pod() {
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(2)
        .build()
        .expect("cluster");
    let pod = cluster.pod(0, 1);
    let mut guard = pod
        .spawn(
            Command::new("ip")
                .args(["-4", "-o", "addr", "show", "dev", "eth0"])
                .stdout(Stdio::piped()),
        )
        .expect("spawn");
    let mut out = String::new();
    guard
        .child()
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert!(out.contains(&format!("{}/32", pod.ip())), "{out}");
    assert!(guard.wait().expect("wait").success());
}

#[test]
fn long_running_child_is_killed_on_drop() {
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("cluster");
    let mut guard = cluster
        .pod(0, 0)
        .spawn(Command::new("sleep").arg("600"))
        .expect("spawn");
    let pid = guard.child().id();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(guard);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn pods_on_one_node_reach_each_other_and_their_gateway() {
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(2)
        .build()
        .expect("cluster");
    let (p0, p1) = (cluster.pod(0, 0), cluster.pod(0, 1));
    let listener = p1.ns().tcp_listener((p1.ip(), 80).into()).expect("bind");
    let mut c = p0.ns().tcp_connect((p1.ip(), 80).into()).expect("connect");
    let (mut s, peer) = listener.accept().expect("accept");
    assert_eq!(peer.ip(), p0.ip());
    c.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");

    let node = cluster.node(0);
    let l = node
        .ns()
        .tcp_listener((node.pod_gateway(), 81).into())
        .expect("bind gw");
    let _c = p0
        .ns()
        .tcp_connect((node.pod_gateway(), 81).into())
        .expect("reach gateway");
    let (_s, peer) = l.accept().expect("accept");
    assert_eq!(peer.ip(), p0.ip());
}

#[test]
fn sysctls_are_per_namespace() {
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("cluster");
    assert_eq!(
        cluster
            .node(0)
            .ns()
            .sysctl("net.ipv4.ip_forward")
            .expect("read"),
        "1"
    );
    assert_eq!(
        cluster
            .pod(0, 0)
            .ns()
            .sysctl("net/ipv4/ip_forward")
            .expect("read"),
        "0"
    );
}

#[test]
fn named_namespace_lifecycle() {
    let name = format!("ambit-t{}-named", std::process::id());
    let ns = NetNs::create_named(&name).expect("create");
    assert!(NetNs::list_named().expect("list").contains(&name));
    assert!(matches!(
        NetNs::create_named(&name),
        Err(Error::Exists { .. })
    ));
    assert_eq!(ns.name(), Some(name.as_str()));
    let again = NetNs::named(&name).expect("open by name");
    assert!(again.same_as(&ns).expect("compare"));
    assert!(
        !ns.same_as(&NetNs::current().expect("current"))
            .expect("compare")
    );

    // A namespace opened by the pid of a process inside it is the same one.
    let mut child = ns
        .spawn_command(Command::new("sleep").arg("30"))
        .expect("spawn");
    let by_pid = NetNs::from_pid(child.id()).expect("by pid");
    assert!(by_pid.same_as(&ns).expect("compare"));
    child.kill().expect("kill");
    child.wait().expect("reap");

    NetNs::delete_named(&name).expect("delete");
    NetNs::delete_named(&name).expect("deleting twice is fine");
    assert!(!NetNs::list_named().expect("list").contains(&name));
}

#[test]
fn anonymous_namespace_isolates_sockets() {
    let ns = NetNs::create_anonymous().expect("create");
    assert_eq!(ns.name(), None);
    // A fresh namespace has only loopback, and it is down.
    let out = ns
        .output(Command::new("ip").args(["-o", "link", "show"]))
        .expect("ip link");
    let links = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("DOWN"), "{links}");
    ns.output(Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("lo up");

    // The namespace has its own port space: the host can bind the same port.
    let inside = ns
        .tcp_listener("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = inside.local_addr().expect("addr").port();
    let _host = std::net::TcpListener::bind(("127.0.0.1", port)).expect("same port on host");
    ns.tcp_connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .expect("connect inside");
    let (_, peer) = inside.accept().expect("accept inside");
    assert!(peer.ip().is_loopback());
}

#[test]
fn sockets_are_made_inside_and_the_caller_stays_home() {
    let ns = NetNs::create_anonymous().expect("create");
    ns.output(Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("lo up");
    let home = NetNs::current().expect("current");
    let s = ns
        .socket(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("socket");
    assert!(
        NetNs::current()
            .expect("current")
            .same_as(&home)
            .expect("compare"),
        "the calling thread is back in its own namespace"
    );
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    s.listen(8).expect("listen");
    let port = s
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    // Reachable from inside the namespace, not from the caller's.
    ns.tcp_connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .expect("connect inside");
    let outside = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(
        outside.is_err(),
        "the socket is not in the host's namespace"
    );
}

#[test]
fn reused_worker_runs_inside_and_leaves_the_caller_alone() {
    let (a, b) = (
        NetNs::create_anonymous().expect("create"),
        NetNs::create_anonymous().expect("create"),
    );
    let home = NetNs::current().expect("current");
    for _ in 0..3 {
        for ns in [&a, &b, &home] {
            let inside = ns
                .run_reused(NetNs::current)
                .expect("run")
                .expect("current inside");
            assert!(inside.same_as(ns).expect("compare"), "{ns}");
        }
    }
    assert!(
        NetNs::current()
            .expect("current")
            .same_as(&home)
            .expect("compare")
    );

    // A panic reaches the caller; the worker keeps serving.
    let panicked = std::panic::catch_unwind(|| a.run_reused(|| panic!("boom")));
    assert!(panicked.is_err());
    let inside = b.run_reused(NetNs::current).expect("run").expect("current");
    assert!(inside.same_as(&b).expect("compare"));

    // Called from a job, it runs on a fresh thread (no waiting for itself).
    let b2 = b.try_clone().expect("clone");
    let nested = a
        .run_reused(move || b2.run_reused(NetNs::current))
        .expect("outer")
        .expect("inner")
        .expect("current");
    assert!(nested.same_as(&b).expect("compare"));

    // From a thread already inside, it runs right there.
    let inline = a
        .run(|| {
            let me = std::thread::current().id();
            a.run_reused(move || std::thread::current().id() == me)
        })
        .expect("run")
        .expect("run_reused");
    assert!(inline);

    // Sysctls are read through it.
    a.set_sysctl("net.ipv4.ip_forward", "1").expect("write");
    assert_eq!(a.sysctl("net.ipv4.ip_forward").expect("read"), "1");
    assert_eq!(b.sysctl("net.ipv4.ip_forward").expect("read"), "0");
}

#[test]
fn run_here_visits_on_the_calling_thread_and_comes_back() {
    let (a, b) = (
        NetNs::create_anonymous().expect("create"),
        NetNs::create_anonymous().expect("create"),
    );
    let home = NetNs::current().expect("current");
    let me = std::thread::current().id();
    for _ in 0..3 {
        for ns in [&a, &b, &home] {
            let (inside, thread) = ns
                .run_here(|| (NetNs::current(), std::thread::current().id()))
                .expect("run_here");
            assert!(
                inside
                    .expect("current inside")
                    .same_as(ns)
                    .expect("compare"),
                "{ns}"
            );
            assert_eq!(thread, me, "no other thread runs it");
            assert!(
                NetNs::current()
                    .expect("current")
                    .same_as(&home)
                    .expect("compare"),
                "back home after {ns}"
            );
        }
    }

    // A panic reaches the caller once the thread is back home.
    let panicked = std::panic::catch_unwind(|| a.run_here(|| panic!("boom")));
    assert!(panicked.is_err());
    assert!(
        NetNs::current()
            .expect("current")
            .same_as(&home)
            .expect("compare")
    );

    // A socket made inside stays there: a listener bound in `a` is not
    // reachable from home.
    let up = a
        .output(std::process::Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("ip link");
    assert!(up.status.success());
    let listener = a
        .run_here(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("run_here")
        .expect("bind inside");
    let port = listener.local_addr().expect("addr").port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    a.tcp_connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .expect("connect inside");
}

#[test]
fn missing_namespace_is_a_clear_error() {
    let err = NetNs::open("/run/netns/ambit-does-not-exist").expect_err("must fail");
    let msg = err.to_string();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(msg.contains("/run/netns/ambit-does-not-exist"), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");

    let err = NetNs::open("/etc/hostname").expect_err("not a namespace");
    assert!(matches!(err, Error::NotNamespace { .. }), "{err:?}");

    let err = NetNs::named("../etc").expect_err("bad name");
    assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
}

#[test]
fn entering_without_privilege_is_a_clear_error() {
    let ns = NetNs::create_anonymous().expect("create");
    // Capabilities are per thread: drop CAP_SYS_ADMIN on this one only; the
    // helper thread `run` starts inherits the reduced set.
    let msg = std::thread::spawn(move || {
        caps::drop(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_ADMIN,
        )
        .expect("drop capability");
        let err = ns.run(|| ()).expect_err("setns must fail");
        assert!(
            matches!(
                err,
                Error::Syscall {
                    syscall: "setns(CLONE_NEWNET)",
                    ..
                }
            ),
            "{err:?}"
        );
        err.to_string()
    })
    .join()
    .expect("thread");
    assert!(msg.contains("EPERM"), "{msg}");
    assert!(msg.contains("run as root"), "{msg}");
}

#[tokio::test]
async fn tokio_sockets_created_inside_a_namespace() {
    let cluster = Cluster::builder()
        .nodes(2)
        .pods_per_node(1)
        .build()
        .expect("cluster");
    let (a, b) = (cluster.pod(0, 0), cluster.pod(1, 0));
    let listener = b
        .ns()
        .tokio_tcp_listener((b.ip(), 9000).into())
        .expect("listen");
    let accept = tokio::spawn(async move { listener.accept().await.map(|(_, p)| p) });
    let conn = a
        .ns()
        .tokio_tcp_connect((b.ip(), 9000).into())
        .await
        .expect("connect");
    let peer = accept.await.expect("join").expect("accept");
    assert_eq!(peer, conn.local_addr().expect("local"));

    let out = cluster
        .node(0)
        .ns()
        .spawn_tokio_command(tokio::process::Command::new("true").kill_on_drop(true))
        .expect("spawn")
        .wait()
        .await
        .expect("wait");
    assert!(out.success());
}

#[test]
fn dual_stack_pods_reach_each_other_over_ipv6_across_nodes_and_ipv4_still_works() {
    let cluster = Cluster::builder()
        .nodes(2)
        .pods_per_node(2)
        .ipv6(true)
        .build()
        .expect("cluster");
    let (a, b, c) = (cluster.pod(0, 0), cluster.pod(1, 1), cluster.pod(0, 1));
    let (a6, b6, c6) = (
        a.ip6().expect("a6"),
        b.ip6().expect("b6"),
        c.ip6().expect("c6"),
    );
    assert_eq!(b6.to_string(), "fd00:10:244:1::3");
    assert_eq!(
        cluster.node(1).pod_cidr6().as_deref(),
        Some("fd00:10:244:1::/64")
    );
    // Across nodes over IPv6, same node over IPv6, and across nodes over IPv4.
    for (from, to, want_src) in [
        (a, SocketAddr::from((b6, 7001)), std::net::IpAddr::V6(a6)),
        (a, SocketAddr::from((c6, 7002)), std::net::IpAddr::V6(a6)),
        (
            a,
            SocketAddr::from((b.ip(), 7003)),
            std::net::IpAddr::V4(a.ip()),
        ),
    ] {
        let server = if to.ip() == std::net::IpAddr::V6(c6) {
            c
        } else {
            b
        };
        let l = server.ns().tcp_listener(to).expect("bind");
        let mut conn = from.ns().tcp_connect(to).expect("connect");
        let (mut s, peer) = l.accept().expect("accept");
        assert_eq!(peer.ip(), want_src, "no NAT on the way to {to}");
        conn.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
    }
    // A single-stack cluster reports no IPv6 addresses.
    let v4 = Cluster::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("v4");
    assert_eq!(v4.pod(0, 0).ip6(), None);
    assert_eq!(v4.node(0).underlay_ip6(), None);
}
