//! Socket helpers the capture tests share: listeners as ztunnel binds
//! them, bounded accepts, and the original destination as ztunnel reads it.
#![allow(dead_code)] // each test file uses its own subset

use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ambit_netns::NetNs;
use socket2::{Domain, Protocol, Type};

/// A `[::]:port` listener with IPV6_V6ONLY off, as ztunnel binds in-pod.
pub(crate) fn dual_listener(ns: &NetNs, port: u16) -> TcpListener {
    let s = ns
        .socket(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))
        .expect("socket");
    s.set_only_v6(false).expect("IPV6_V6ONLY off");
    s.set_reuse_address(true).expect("reuse");
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())
        .expect("bind");
    s.listen(16).expect("listen");
    s.into()
}

/// Accepts one connection within a few seconds (a test fails, never hangs).
pub(crate) fn accept(l: &TcpListener) -> (TcpStream, SocketAddr) {
    l.set_nonblocking(true).expect("nonblocking");
    for _ in 0..100 {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).expect("blocking");
                return (s, peer);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    panic!("nothing arrived on {:?}", l.local_addr());
}

/// Nothing arrives on `l` within a short time.
pub(crate) fn nothing_on(l: &TcpListener) -> bool {
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::sleep(Duration::from_millis(200));
    l.accept().is_err()
}

/// `IP6T_SO_ORIGINAL_DST` of an accepted connection.
pub(crate) fn original_dst6(s: &TcpStream) -> SocketAddr {
    socket2::SockRef::from(s)
        .original_dst_v6()
        .expect("IP6T_SO_ORIGINAL_DST")
        .as_socket()
        .expect("inet")
}

/// `SO_ORIGINAL_DST` of an accepted connection, as ztunnel reads it.
pub(crate) fn original_dst4(s: &TcpStream) -> SocketAddr {
    socket2::SockRef::from(s)
        .original_dst_v4()
        .expect("SO_ORIGINAL_DST")
        .as_socket()
        .expect("inet")
}

/// A connect with ztunnel's mark (SO_MARK 1337), which capture leaves alone.
pub(crate) fn marked_connect(ns: &NetNs, to: SocketAddr) -> socket2::Socket {
    let domain = if to.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = ns
        .socket(domain, Type::STREAM, Some(Protocol::TCP))
        .expect("socket");
    s.set_mark(1337).expect("SO_MARK");
    s.connect(&to.into()).expect("marked connect");
    s
}

/// ztunnel's three in-pod listeners (15001, 15006, 15008) on 0.0.0.0.
pub(crate) fn ztunnel_listeners(ns: &NetNs) -> [TcpListener; 3] {
    [15001, 15006, 15008].map(|port| {
        ns.tcp_listener(([0, 0, 0, 0], port).into())
            .unwrap_or_else(|e| panic!("listening on {port}: {e}"))
    })
}
