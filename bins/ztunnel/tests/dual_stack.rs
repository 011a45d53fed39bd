//! Dual-stack end to end (in-pod mode): every node and pod has an IPv4
//! and an IPv6 address, the workloads and service VIPs have both, the node
//! agents capture both families in each pod, and ztunnel's pod listeners
//! are dual-stack `[::]` sockets. IPv6 traffic is carried over HBONE
//! between the nodes with the client's address preserved, endpoints are
//! chosen in the family of the VIP asked for, IPv4 keeps working beside
//! it, DNS answers AAAA with the IPv6 VIP over an IPv6 resolver address,
//! and kubelet-style probes from the node reach the pod over IPv6 with
//! the IPv6 probe source, uncaptured.

#[path = "../../../crates/dns/tests/support/client.rs"]
#[allow(dead_code)]
mod client;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ambit_testbed::httpapp::{self, Req, Version};
use ambit_testbed::{
    Binaries, DEFAULT_MESH, LocalMesh, Mode, Options, dual_stack, ipv6_twin, tcpapp,
};
use hickory_proto::rr::RecordType;

/// The IPv6 twin of a harness IPv4 socket address.
fn v6(addr: &str) -> SocketAddr {
    let a: SocketAddr = addr.parse().expect("addr");
    let IpAddr::V4(ip) = a.ip() else {
        panic!("{addr} is not IPv4")
    };
    SocketAddr::new(IpAddr::V6(ipv6_twin(ip).expect("twin")), a.port())
}

#[test]
fn ipv6_is_carried_end_to_end_in_inpod_mode_beside_ipv4() {
    let bins = Binaries::beside(Path::new(env!("CARGO_BIN_EXE_ztunnel"))).expect("binaries");
    let m = LocalMesh::start_opts(
        &bins,
        Options {
            mode: Mode::InPod,
            dual_stack: true,
            dns_capture: true,
            mesh_yaml: dual_stack(DEFAULT_MESH),
            ..Options::default()
        },
        |_| {},
    )
    .expect("local mesh");
    let sleep6 = m.sleep().ip6().expect("sleep has IPv6");

    // The productpage VIP over IPv6: both endpoints, at their IPv6
    // addresses (the VIP's family), each seeing sleep's own IPv6 address.
    let vip6 = v6("10.96.0.20:9080");
    let f = tcpapp::drive(m.sleep(), vip6, 20, 1 << 16).expect("drive");
    assert_eq!(f.errors, 0, "{f:?}");
    for name in ["productpage-v1", "productpage-v2"] {
        assert!(
            f.greetings.iter().any(|g| g.starts_with(name)),
            "{name} answered over IPv6: {:?}",
            f.greetings
        );
    }
    let want = format!("saw source {sleep6}");
    assert!(
        f.greetings.iter().all(|g| g.ends_with(&want)),
        "the client's IPv6 address is preserved: {:?}",
        f.greetings
    );
    // It went through the mesh: node b's ztunnel took the HBONE
    // connection on productpage-v1's IPv6 address with sleep's identity.
    let v1_6 = ipv6_twin("10.244.1.3".parse().expect("ip")).expect("twin");
    let dst = format!("[{v1_6}]");
    let inbound = m
        .wait_access_log(|n, v| {
            n == "node-b"
                && v["direction"] == "inbound"
                && v["dst.addr"].as_str().is_some_and(|a| a.starts_with(&dst))
        })
        .expect("an inbound IPv6 access log on node b");
    assert_eq!(
        inbound.1["src.identity"],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(inbound.1["dst.addr"], format!("[{v1_6}]:15008"));
    assert!(
        inbound.1["src.addr"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("[{sleep6}]"))),
        "{}",
        inbound.1
    );

    // A pod's IPv6 address directly, across nodes.
    let f =
        tcpapp::drive(m.sleep(), SocketAddr::new(IpAddr::V6(v1_6), 9080), 3, 1024).expect("drive");
    assert_eq!(f.errors, 0, "{f:?}");
    assert_eq!(
        f.greetings,
        vec![format!("productpage-v1 saw source {sleep6}")]
    );

    // IPv4 still works through the same dual-stack listeners.
    let f = tcpapp::drive(m.sleep(), "10.96.0.20:9080".parse().expect("vip"), 6, 1024)
        .expect("drive v4");
    assert_eq!(f.errors, 0, "{f:?}");
    assert!(
        f.greetings
            .iter()
            .all(|g| g.ends_with("saw source 10.244.0.3")),
        "{:?}",
        f.greetings
    );

    // HTTP over IPv6 through the waypoint: the route's subset is honoured.
    let r = httpapp::send(
        m.sleep(),
        v6("10.96.0.30:9080"),
        Version::Http1,
        vec![Req::get("/v1/over-ipv6")],
        Duration::from_secs(10),
    )
    .expect("send")
    .remove(0);
    assert_eq!(
        (r.status, r.served_by.as_deref()),
        (200, Some("reviews-v1")),
        "{r:?}"
    );

    // DNS over IPv6: a query to the IPv6 cluster resolver address is
    // captured into ztunnel's [::1]:15053 and AAAA answers with the VIP's
    // IPv6 address; A still answers the IPv4 one.
    let resolver6 = v6("10.96.0.10:53");
    let answers = m
        .sleep()
        .ns()
        .spawn_async(move || async move {
            let sock = tokio::net::UdpSocket::bind("[::]:0").await.expect("bind");
            let mut out = Vec::new();
            for (id, ty) in [(1, RecordType::AAAA), (2, RecordType::A)] {
                let q = client::query(id, "reviews.default.svc.cluster.local.", ty, None);
                out.push(client::udp(&sock, resolver6, &q, Duration::from_secs(5)).await);
            }
            out
        })
        .expect("dns client")
        .join();
    let [aaaa, a] = answers.try_into().expect("two answers");
    let aaaa = aaaa.expect("an AAAA answer over IPv6 (capture reached ztunnel)");
    assert_eq!(client::ips(&aaaa), vec![v6("10.96.0.30:9080").ip()]);
    let a = a.expect("an A answer over IPv6");
    assert_eq!(
        client::ips(&a),
        vec!["10.96.0.30".parse::<IpAddr>().expect("ip")]
    );

    // A kubelet-style probe from the node to a pod's IPv6 address is
    // SNATed to Istio's IPv6 probe address and not captured.
    let pp2_6 = ipv6_twin("10.244.0.4".parse().expect("ip")).expect("twin");
    let mut s = m
        .cluster
        .node(0)
        .ns()
        .tcp_connect(SocketAddr::new(IpAddr::V6(pp2_6), 9080))
        .expect("probe connects");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut greeting = String::new();
    BufReader::new(&mut s)
        .read_line(&mut greeting)
        .expect("greeting");
    let probe: Ipv6Addr = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
        .parse()
        .expect("probe ip");
    assert_eq!(
        greeting.trim_end(),
        format!("productpage-v2 saw source {probe}")
    );
}
