//! Table tests of endpoint selection: one rule per table or test.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::model::{GatewayAddress, Locality};

const SVC: &str = "default/pp.default.svc.cluster.local";

/// A workload backing [`SVC`] on port 80, at `net/region/zone/subzone`,
/// node `node`, cluster `cluster`.
fn wl(uid: &str, ip: &str, at: [&str; 6]) -> Workload {
    let [network, region, zone, subzone, node, cluster] = at;
    Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "default".into(),
        addresses: ip.split(',').filter_map(|s| s.parse().ok()).collect(),
        network: network.into(),
        node: node.into(),
        cluster_id: cluster.into(),
        locality: Some(Locality {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        }),
        services: BTreeMap::from([(
            SVC.to_owned(),
            vec![Port {
                service_port: 80,
                target_port: 8080,
            }],
        )]),
        ..Workload::default()
    }
}

fn svc(lb: Option<LoadBalancer>) -> Service {
    Service {
        name: "pp".into(),
        namespace: "default".into(),
        hostname: "pp.default.svc.cluster.local".into(),
        vips: vec![("n1".into(), "10.96.0.1".parse().expect("ip"))],
        ports: vec![Port {
            service_port: 80,
            target_port: 8080,
        }],
        load_balancer: lb,
        ..Service::default()
    }
}

fn lb(mode: LoadBalancerMode, prefs: &[LoadBalancerScope]) -> Option<LoadBalancer> {
    Some(LoadBalancer {
        routing_preferences: prefs.to_vec(),
        mode,
        health_policy: LoadBalancerHealthPolicy::OnlyHealthy,
    })
}

/// The client: network n1, region r1, zone z1, subzone s1, node nd1, cluster c1.
fn client_wl() -> Workload {
    let mut w = wl("client", "10.0.9.9", ["n1", "r1", "z1", "s1", "nd1", "c1"]);
    w.services.clear();
    w
}

/// The endpoints of the topology tables.
fn topology() -> Vec<Workload> {
    vec![
        wl(
            "same-all",
            "10.0.0.1",
            ["n1", "r1", "z1", "s1", "nd1", "c1"],
        ),
        wl(
            "same-zone",
            "10.0.0.2",
            ["n1", "r1", "z1", "s2", "nd2", "c1"],
        ),
        wl(
            "same-region",
            "10.0.0.3",
            ["n1", "r1", "z2", "s1", "nd3", "c2"],
        ),
        wl(
            "other-region",
            "10.0.0.4",
            ["n1", "r2", "z1", "s1", "nd4", "c1"],
        ),
        wl(
            "other-net",
            "10.1.0.5",
            ["n2", "r1", "z1", "s1", "nd5", "c1"],
        ),
    ]
}

fn state(workloads: Vec<Workload>, service: Service) -> MeshState {
    let mut s = MeshState::new();
    for w in workloads {
        s.insert_workload(w);
    }
    s.insert_service(service);
    s
}

/// Every uid `select` may return (300 seeded draws), or the outcome name.
fn outcomes(s: &MeshState, client: &Client<'_>) -> BTreeSet<String> {
    let Some(svc) = s.service(SVC) else {
        return BTreeSet::from(["no service".to_owned()]);
    };
    let mut rng = fastrand::Rng::with_seed(7);
    (0..300)
        .map(
            |_| match s.select_with(&svc, 80, client, |n| rng.u64(..n)) {
                Pick::Endpoint(e) => e.workload.uid.clone(),
                Pick::OriginalDestination => "passthrough".into(),
                Pick::NoEndpoint => "none".into(),
            },
        )
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn routing_preferences_rank_like_ztunnel() {
    use LoadBalancerMode::{Failover, Passthrough, Standard, Strict};
    use LoadBalancerScope::{Cluster, Network, Node, Region, Subzone, Zone};
    let all = &[
        "other-net",
        "other-region",
        "same-all",
        "same-region",
        "same-zone",
    ][..];
    let cases: Vec<(&str, Option<LoadBalancer>, &[&str])> = vec![
        ("no load balancer: every endpoint", None, all),
        (
            "unspecified mode ignores preferences",
            lb(Standard, &[Network, Region, Zone]),
            all,
        ),
        (
            "failover: the highest rank present",
            lb(Failover, &[Network, Region, Zone]),
            &["same-all", "same-zone"],
        ),
        (
            "failover down to the node",
            lb(Failover, &[Network, Region, Zone, Subzone, Node]),
            &["same-all"],
        ),
        (
            "the count stops at the first mismatch",
            lb(Failover, &[Region, Zone]),
            &["other-net", "same-all", "same-zone"],
        ),
        (
            "strict: every preference must match",
            lb(Strict, &[Network, Region]),
            &["same-all", "same-region", "same-zone"],
        ),
        (
            "strict on one scope",
            lb(Strict, &[Zone]),
            &["other-net", "other-region", "same-all", "same-zone"],
        ),
        (
            "cluster scope",
            lb(Strict, &[Cluster, Region]),
            &["other-net", "same-all", "same-zone"],
        ),
        ("strict with no preferences keeps all", lb(Strict, &[]), all),
        (
            "PreferClose",
            Some(LoadBalancer::prefer_close()),
            &["same-all"],
        ),
        (
            "passthrough chooses nothing",
            lb(Passthrough, &[Network]),
            &["passthrough"],
        ),
    ];
    let client = client_wl();
    for (name, lb, want) in cases {
        let s = state(topology(), svc(lb));
        let c = Client::new("n1").with_source(Some(&client));
        assert_eq!(outcomes(&s, &c), set(want), "{name}");
    }
}

#[test]
fn strict_without_a_match_has_no_endpoint_and_failover_falls_back() {
    use LoadBalancerScope::Node;
    let mut far = client_wl();
    far.node = "nd9".into();
    let c = Client::new("n1").with_source(Some(&far));
    let s = state(topology(), svc(lb(LoadBalancerMode::Strict, &[Node])));
    assert_eq!(outcomes(&s, &c), set(&["none"]));

    // PreferClose with the closest endpoints gone: the next rank serves.
    let mut eps = topology();
    eps.retain(|w| w.uid != "same-all" && w.uid != "same-zone");
    let s = state(eps, svc(Some(LoadBalancer::prefer_close())));
    let client = client_wl();
    let c = Client::new("n1").with_source(Some(&client));
    assert_eq!(outcomes(&s, &c), set(&["same-region"]), "network+region");
}

#[test]
fn without_a_source_only_the_network_scope_can_match() {
    use LoadBalancerScope::{Network, Region};
    let s = state(
        topology(),
        svc(lb(LoadBalancerMode::Failover, &[Network, Region])),
    );
    assert_eq!(
        outcomes(&s, &Client::new("n2")),
        set(&["other-net"]),
        "rank 1 on n2"
    );
    let s = state(topology(), svc(lb(LoadBalancerMode::Strict, &[Region])));
    assert_eq!(outcomes(&s, &Client::new("n1")), set(&["none"]));
}

#[test]
fn health_policy() {
    let mut sick = wl("sick", "10.0.0.7", ["n1", "r1", "z1", "s1", "nd1", "c1"]);
    sick.status = HealthStatus::Unhealthy;
    let well = wl("well", "10.0.0.8", ["n1", "r1", "z1", "s1", "nd1", "c1"]);
    let c = Client::new("n1");
    let s = state(vec![sick.clone(), well.clone()], svc(None));
    assert_eq!(outcomes(&s, &c), set(&["well"]), "only healthy by default");

    let mut allow = svc(lb(LoadBalancerMode::Standard, &[]));
    if let Some(l) = allow.load_balancer.as_mut() {
        l.health_policy = LoadBalancerHealthPolicy::AllowAll;
    }
    let s = state(vec![sick.clone(), well.clone()], allow.clone());
    assert_eq!(outcomes(&s, &c), set(&["sick", "well"]), "ALLOW_ALL");
    let Some(sv) = s.service(SVC) else {
        panic!("service")
    };
    assert_eq!(
        s.endpoints(&sv, 80).len(),
        2,
        "the listing follows the policy"
    );

    // The service's own endpoint status wins for its uid.
    let mut stated = svc(None);
    stated.endpoints.insert(
        "well".into(),
        ServiceEndpoint {
            ports: vec![],
            status: HealthStatus::Unhealthy,
        },
    );
    stated
        .endpoints
        .insert("sick".into(), ServiceEndpoint::default());
    let s = state(vec![sick, well], stated);
    assert_eq!(outcomes(&s, &c), set(&["sick"]));
}

#[test]
fn capacity_weights_the_draw() {
    let at = ["n1", "r1", "z1", "s1", "nd1", "c1"];
    let mut heavy = wl("heavy", "10.0.0.1", at);
    heavy.capacity = 3;
    let light = wl("light", "10.0.0.2", at);
    let mut off = wl("off", "10.0.0.3", at);
    off.capacity = 0;
    let s = state(vec![heavy, light, off], svc(None));
    let Some(sv) = s.service(SVC) else {
        panic!("service")
    };
    let mut rng = fastrand::Rng::with_seed(42);
    let c = Client::new("n1");
    let mut heavy_picks = 0;
    for _ in 0..4000 {
        let Pick::Endpoint(e) = s.select_with(&sv, 80, &c, |n| rng.u64(..n)) else {
            panic!("an endpoint")
        };
        assert_ne!(e.workload.uid, "off", "capacity 0 is never drawn");
        heavy_picks += usize::from(e.workload.uid == "heavy");
    }
    assert!(
        (2800..3200).contains(&heavy_picks),
        "3:1 → ~3000 of 4000, got {heavy_picks}"
    );
}

#[test]
fn capacity_zero_everywhere_means_no_endpoint() {
    use LoadBalancerScope::Zone;
    let at = ["n1", "r1", "z1", "s1", "nd1", "c1"];
    let mut a = wl("a", "10.0.0.1", at);
    a.capacity = 0;
    let s = state(vec![a.clone()], svc(None));
    assert_eq!(outcomes(&s, &Client::new("n1")), set(&["none"]));

    // As in ztunnel, the best rank is chosen before weights: a closest
    // endpoint of capacity 0 does not fail over.
    let mut b = wl("b", "10.0.0.2", at);
    b.locality = None;
    let client = client_wl();
    let s = state(vec![a, b], svc(lb(LoadBalancerMode::Failover, &[Zone])));
    let c = Client::new("n1").with_source(Some(&client));
    assert_eq!(outcomes(&s, &c), set(&["none"]));
}

#[test]
fn address_family_follows_the_service_and_the_destination() {
    let at = ["n1", "r1", "z1", "s1", "nd1", "c1"];
    let dual = wl("dual", "10.0.0.1,fd00::1", at);
    let v4 = wl("v4", "10.0.0.2", at);
    let v6: IpAddr = "fd00::1".parse().expect("ip");
    let four: IpAddr = "10.0.0.1".parse().expect("ip");
    let vip6: IpAddr = "fd00:96::1".parse().expect("ip");
    let vip4: IpAddr = "10.96.0.1".parse().expect("ip");

    let mut only6 = svc(None);
    only6.ip_families = Some(IpFamily::IPv6);
    let s = state(vec![dual.clone(), v4.clone()], only6);
    assert_eq!(
        outcomes(&s, &Client::new("n1")),
        set(&["dual"]),
        "a v4-only pod cannot serve a v6-only service"
    );
    let Some(sv) = s.service(SVC) else {
        panic!("service")
    };
    let e = s.pick_endpoint(&sv, 80, "n1", None).map(|e| e.address);
    assert_eq!(e, Some(Some(v6)));

    let s = state(vec![dual], svc(None));
    let Some(sv) = s.service(SVC) else {
        panic!("service")
    };
    let cases = [(None, four), (Some(vip6), v6), (Some(vip4), four)];
    for (dst, want) in cases {
        let mut c = Client::new("n1");
        c.destination = dst;
        let got = s.select(&sv, 80, &c).endpoint().and_then(|e| e.address);
        assert_eq!(got, Some(want), "destination {dst:?}");
    }
}

#[test]
fn workloads_without_addresses() {
    let at = ["n1", "r1", "z1", "s1", "nd1", "c1"];
    let gw = GatewayAddress::Address {
        network: "n2".into(),
        ip: "172.16.0.1".parse().expect("ip"),
        hbone_port: 15008,
    };
    let mut remote = wl("remote", "", ["n2", "r1", "z1", "s1", "nd1", "c1"]);
    remote.network_gateway = Some(gw.clone());
    let mut local_gw = wl("local-gw", "", at);
    local_gw.network_gateway = Some(gw);
    let mut named = wl("named", "", at);
    named.hostname = "db.example.com".into();
    let bare = wl("bare", "", at);
    let s = state(vec![remote, local_gw, named, bare], svc(None));
    assert_eq!(
        outcomes(&s, &Client::new("n1")),
        set(&["named", "remote"]),
        "a gateway only from another network; a hostname resolves later"
    );
    let Some(sv) = s.service(SVC) else {
        panic!("service")
    };
    assert!(
        s.eligible(&sv, 80, &Client::new("n1"))
            .iter()
            .all(|e| e.address.is_none())
    );
}

#[test]
fn ports_and_the_draw() {
    let at = ["n1", "r1", "z1", "s1", "nd1", "c1"];
    let s = state(vec![wl("a", "10.0.0.1", at)], svc(None));
    let Some(sv) = s.service(SVC) else {
        panic!("service")
    };
    let c = Client::new("n1");
    assert!(matches!(s.select(&sv, 81, &c), Pick::NoEndpoint));
    let Some(e) = s.select(&sv, 80, &c).endpoint() else {
        panic!("endpoint")
    };
    assert_eq!((e.port, e.address), (8080, "10.0.0.1".parse().ok()));
}

#[test]
fn draw_weighted_keeps_the_best_rank() {
    let items = [
        (0, 5, "far"),
        (2, 1, "near"),
        (1, 9, "mid"),
        (2, 1, "near2"),
    ];
    let mut seen = BTreeSet::new();
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..200 {
        seen.extend(draw_weighted(items.into_iter(), |n| rng.u64(..n)));
    }
    assert_eq!(seen, BTreeSet::from(["near", "near2"]));
    assert_eq!(
        draw_weighted(std::iter::empty::<(usize, u64, ())>(), |_| 0),
        None
    );
}

#[test]
fn preferred_gives_the_best_rank_for_a_proxys_own_balancer() {
    use LoadBalancerScope::{Network, Node, Region, Zone};
    let client = client_wl();
    let c = Client::new("n1").with_source(Some(&client));
    let uids = |s: &MeshState| -> BTreeSet<String> {
        let svc = s.service(SVC).expect("service");
        s.preferred(&svc, 80, &c)
            .into_iter()
            .map(|e| e.workload.uid.clone())
            .collect()
    };
    // No preferences: every eligible endpoint (the other network's too:
    // reaching it is the proxy's business, through its gateway).
    let s = state(topology(), svc(None));
    assert_eq!(
        uids(&s),
        set(&[
            "same-all",
            "same-zone",
            "same-region",
            "other-region",
            "other-net"
        ])
    );
    // FAILOVER network, region, zone: the same zone only.
    let s = state(
        topology(),
        svc(lb(LoadBalancerMode::Failover, &[Network, Region, Zone])),
    );
    assert_eq!(uids(&s), set(&["same-all", "same-zone"]));
    // STRICT on a node nothing runs on: none.
    let mut far = client_wl();
    far.node = "nd9".into();
    let cf = Client::new("n1").with_source(Some(&far));
    let s = state(topology(), svc(lb(LoadBalancerMode::Strict, &[Node])));
    let svc_now = s.service(SVC).expect("service");
    assert!(s.preferred(&svc_now, 80, &cf).is_empty());
    // Capacity 0 is never given.
    let mut eps = topology();
    for w in &mut eps {
        if w.uid == "same-all" {
            w.capacity = 0;
        }
    }
    let s = state(
        eps,
        svc(lb(LoadBalancerMode::Failover, &[Network, Region, Zone])),
    );
    assert_eq!(uids(&s), set(&["same-zone"]));
}
