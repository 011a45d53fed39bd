//! Tests of name resolution, one form per case.

use std::collections::BTreeMap;

use super::*;
use crate::model::{HealthStatus, IpFamily, Port};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn service(ns: &str, host: &str, vips: &[(&str, &str)]) -> Service {
    Service {
        name: host.split('.').next().unwrap_or_default().into(),
        namespace: ns.into(),
        hostname: host.into(),
        vips: vips.iter().map(|(n, a)| ((*n).into(), ip(a))).collect(),
        ports: vec![Port {
            service_port: 80,
            target_port: 80,
        }],
        ..Service::default()
    }
}

fn workload(uid: &str, ns: &str, ips: &[&str], svc: Option<&str>) -> Workload {
    Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: ns.into(),
        addresses: ips.iter().map(|a| ip(a)).collect(),
        services: svc
            .map(|k| (k.to_owned(), vec![]))
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        ..Workload::default()
    }
}

fn mesh() -> MeshState {
    let mut s = MeshState::new();
    let svcs = [
        service(
            "ns1",
            "productpage.ns1.svc.cluster.local",
            &[("", "9.9.9.9")],
        ),
        service(
            "ns2",
            "example.ns2.svc.cluster.local",
            &[("", "10.10.10.10")],
        ),
        service(
            "ns2",
            "details.ns2.svc.cluster.remote",
            &[("", "11.11.11.11")],
        ),
        service("ns1", "www.google.com", &[("", "240.240.0.1")]),
        service("ns1", "*.wild.example.com", &[("", "240.240.0.5")]),
        service("ns1", "novip.example.com", &[]),
        service("ns1", "headless.ns1.svc.cluster.local", &[]),
        service(
            "ns1",
            "dual.localhost",
            &[("", "2.2.2.2"), ("", "2001:db8::2")],
        ),
        service("ns1", "ipv6.localhost", &[("", "2001:db8::6")]),
        service(
            "ns1",
            "multinet.ns1.svc.cluster.local",
            &[("net2", "10.20.0.1"), ("", "10.20.0.2")],
        ),
    ];
    for svc in svcs {
        s.insert_service(svc);
    }
    let headless = "ns1/headless.ns1.svc.cluster.local";
    s.insert_workload(workload(
        "h1",
        "ns1",
        &["10.1.0.1", "10.1.0.2", "fd00::1"],
        Some(headless),
    ));
    let mut sick = workload("h2", "ns1", &["10.1.0.3"], Some(headless));
    sick.status = HealthStatus::Unhealthy;
    s.insert_workload(sick);
    let mut vm = workload("vm1", "ns1", &["10.30.0.1"], None);
    vm.hostname = "vm1.example.internal".into();
    s.insert_workload(vm);
    let mut dns_only = workload("ext", "ns1", &[], None);
    dns_only.hostname = "db.example.org".into();
    s.insert_workload(dns_only);
    s
}

fn client(ns: &str) -> Workload {
    workload("client", ns, &["10.0.0.1"], None)
}

/// (matched, cname, addresses) or None.
type Want = Option<(&'static str, Option<&'static str>, &'static [&'static str])>;

#[test]
fn forms_of_a_name() {
    let s = mesh();
    let c = client("ns1");
    let pp = "productpage.ns1.svc.cluster.local";
    let cases: &[(&str, Want)] = &[
        (pp, Some((pp, None, &["9.9.9.9"]))),
        (
            "productpage.ns1.svc.cluster.local.",
            Some((pp, None, &["9.9.9.9"])),
        ),
        (
            "ProductPage.NS1.svc.Cluster.Local",
            Some((pp, None, &["9.9.9.9"])),
        ),
        ("productpage", Some((pp, None, &["9.9.9.9"]))),
        ("productpage.", Some((pp, None, &["9.9.9.9"]))),
        ("productpage.ns1", Some((pp, None, &["9.9.9.9"]))),
        ("productpage.ns1.svc", Some((pp, None, &["9.9.9.9"]))),
        (
            "productpage.ns1.ns1.svc.cluster.local",
            Some((pp, Some("productpage.ns1"), &["9.9.9.9"])),
        ),
        (
            "productpage.ns1.svc.cluster.local.ns1.svc.cluster.local",
            Some((pp, Some(pp), &["9.9.9.9"])),
        ),
        (
            "example.ns2",
            Some(("example.ns2.svc.cluster.local", None, &["10.10.10.10"])),
        ),
        (
            "example.ns2.svc",
            Some(("example.ns2.svc.cluster.local", None, &["10.10.10.10"])),
        ),
        ("example", None),
        (
            "details.ns2.svc.cluster.remote",
            Some(("details.ns2.svc.cluster.remote", None, &["11.11.11.11"])),
        ),
        ("details.ns2", None),
        (
            "www.google.com",
            Some(("www.google.com", None, &["240.240.0.1"])),
        ),
        (
            "www.google.com.ns1.svc.cluster.local",
            Some(("www.google.com", Some("www.google.com"), &["240.240.0.1"])),
        ),
        ("www.bing.com", None),
        (
            "a.wild.example.com",
            Some(("*.wild.example.com", None, &["240.240.0.5"])),
        ),
        (
            "a.b.wild.example.com.svc.cluster.local",
            Some(("*.wild.example.com", None, &["240.240.0.5"])),
        ),
        ("wild.example.com", None),
        ("novip.example.com", None),
        (
            "headless",
            Some((
                "headless.ns1.svc.cluster.local",
                None,
                &["10.1.0.1", "fd00::1"],
            )),
        ),
        (
            "vm1.example.internal",
            Some(("vm1.example.internal", None, &["10.30.0.1"])),
        ),
        ("db.example.org", None),
        (
            "multinet",
            Some(("multinet.ns1.svc.cluster.local", None, &["10.20.0.2"])),
        ),
        ("", None),
        (".", None),
        ("..", None),
    ];
    for (host, want) in cases {
        let got = s.resolve_host(host, Some(&c), "cluster.local", None);
        let got = got.as_ref().map(|a| {
            (
                a.matched.as_str(),
                a.cname.as_deref(),
                a.addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
        });
        let want = want.map(|(m, c, a)| (m, c, a.iter().map(|s| (*s).to_owned()).collect()));
        assert_eq!(got, want, "{host}");
    }
}

#[test]
fn the_client_decides_namespace_and_network() {
    let s = mesh();
    let ns2 = client("ns2");
    let found = |host: &str, c: Option<&Workload>| {
        s.resolve_host(host, c, "", None)
            .map(|a| a.matched)
            .unwrap_or_default()
    };
    assert_eq!(
        found("example", Some(&ns2)),
        "example.ns2.svc.cluster.local"
    );
    assert_eq!(found("productpage", Some(&ns2)), "");
    assert_eq!(
        found("productpage", None),
        "",
        "no namespace to expand with"
    );
    assert_eq!(
        found("productpage.ns1", None),
        "productpage.ns1.svc.cluster.local"
    );
    assert_eq!(
        found("productpage.ns1.svc.cluster.local.svc.cluster.local", None),
        "productpage.ns1.svc.cluster.local",
        "search domains without a namespace"
    );

    let mut remote = client("ns1");
    remote.network = "net2".into();
    let a = s.resolve_host("multinet", Some(&remote), "cluster.local", None);
    assert_eq!(
        a.map(|a| a.addresses),
        Some(vec![ip("10.20.0.1")]),
        "the client's network's VIP"
    );
    let a = s.resolve_host("productpage", Some(&remote), "cluster.local", None);
    assert_eq!(
        a.map(|a| a.addresses),
        Some(vec![]),
        "known, but no VIP on this network"
    );
}

#[test]
fn another_cluster_domain() {
    let s = mesh();
    let c = client("ns2");
    let a = s.resolve_host("details", Some(&c), "cluster.remote.", None);
    assert_eq!(
        a.map(|a| a.matched),
        Some("details.ns2.svc.cluster.remote".into())
    );
    assert!(
        s.resolve_host("example", Some(&c), "cluster.remote", None)
            .is_none()
    );
}

#[test]
fn families() {
    let mut s = mesh();
    let c = client("ns1");
    let a = s
        .resolve_host("dual.localhost", Some(&c), "cluster.local", None)
        .expect("known");
    assert_eq!(
        a.ipv4().collect::<Vec<_>>(),
        vec![Ipv4Addr::new(2, 2, 2, 2)]
    );
    assert_eq!(a.ipv6().count(), 1);
    let a = s
        .resolve_host("ipv6.localhost", Some(&c), "cluster.local", None)
        .expect("known: an empty A answer, not NXDOMAIN");
    assert_eq!((a.ipv4().count(), a.ipv6().count()), (0, 1));

    // A single-stack headless service answers one family only, even for
    // dual-stack pods.
    let Some(headless) = s.service("ns1/headless.ns1.svc.cluster.local") else {
        panic!("headless")
    };
    let mut v4 = (*headless).clone();
    v4.ip_families = Some(IpFamily::IPv4);
    s.insert_service(v4);
    let a = s
        .resolve_host("headless.ns1", Some(&c), "cluster.local", None)
        .expect("known");
    assert_eq!(a.addresses, vec![ip("10.1.0.1")]);
}

#[test]
fn precedence_among_namespaces() {
    let mut s = MeshState::new();
    let host = "api.example.com";
    s.insert_service(service("ns2", host, &[("", "240.0.0.2")]));
    let mut canonical = service("ns3", host, &[("", "240.0.0.3")]);
    canonical.canonical = true;
    s.insert_service(canonical);
    s.insert_service(service("pref", host, &[("", "240.0.0.4")]));
    s.insert_service(service("ns1", "other.example.com", &[("", "240.0.0.9")]));
    let vip = |s: &MeshState, ns: &str, pref: Option<&str>| {
        s.resolve_host(host, Some(&client(ns)), "cluster.local", pref)
            .map(|a| a.addresses)
            .unwrap_or_default()
    };
    assert_eq!(
        vip(&s, "ns2", Some("pref")),
        vec![ip("240.0.0.2")],
        "own ns"
    );
    assert_eq!(
        vip(&s, "ns1", Some("pref")),
        vec![ip("240.0.0.4")],
        "preferred"
    );
    assert_eq!(
        vip(&s, "ns1", Some("absent")),
        vec![ip("240.0.0.3")],
        "canonical"
    );
    assert_eq!(vip(&s, "ns1", None), vec![ip("240.0.0.3")], "canonical");
    s.remove_service("ns3/api.example.com");
    assert_eq!(vip(&s, "ns1", None), vec![ip("240.0.0.2")], "first defined");
    // A replacement keeps its place; a removal drops the hostname's entry.
    s.insert_service(service("ns2", host, &[("", "240.0.0.22")]));
    assert_eq!(vip(&s, "ns1", None), vec![ip("240.0.0.22")]);
    s.remove_service("ns2/api.example.com");
    s.remove_service("pref/api.example.com");
    assert!(s.resolve_host(host, None, "", None).is_none());
    assert!(!s.by_host.contains_key(host));
}

#[test]
fn indexes_follow_changes() {
    let mut s = mesh();
    assert_eq!(s.wildcard_hosts, 1);
    s.insert_service(service("ns1", "*.wild.example.com", &[("", "240.240.0.6")]));
    assert_eq!(s.wildcard_hosts, 1, "replaced, not added");
    s.remove_service("ns1/*.wild.example.com");
    assert_eq!(s.wildcard_hosts, 0);
    assert!(
        s.resolve_host("a.wild.example.com", None, "", None)
            .is_none()
    );
    s.remove_workload("vm1");
    assert!(
        s.resolve_host("vm1.example.internal", None, "", None)
            .is_none()
    );
    assert!(!s.by_hostname.contains_key("vm1.example.internal"));
}
