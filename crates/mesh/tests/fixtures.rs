//! Every fixture loads, carries the fields it states, survives the xDS
//! wire, and comes back unchanged from a `/config_dump` rendering.

use std::path::PathBuf;

use ambit_mesh::model::{
    AppTunnelProtocol, ApplicationTunnel, GatewayAddress, HealthStatus, IpFamily, LoadBalancer,
    LoadBalancerHealthPolicy, LoadBalancerMode, LoadBalancerScope, Locality, NetworkMode,
    PolicyAction, PolicyScope, Port, ServiceEndpoint, StringMatch, TunnelProtocol,
};
use ambit_mesh::xds::{self, AddressKind};
use ambit_mesh::{Config, MeshState, dump};

const FIXTURES: [&str; 5] = [
    "workloads.yaml",
    "services.yaml",
    "policies.yaml",
    "spellings.yaml",
    "ztunnel-dump.json",
];

fn load(name: &str) -> Config {
    // Read at run time (cargo sets it for tests): a test binary reused from
    // a shared target directory may have been built in another checkout.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let path: PathBuf = [dir.as_str(), "tests", "fixtures", name].iter().collect();
    Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// The config with its lists in dump order.
fn sorted(mut c: Config) -> Config {
    c.workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    c.services
        .sort_by(|a, b| (&a.hostname, &a.namespace).cmp(&(&b.hostname, &b.namespace)));
    c.policies.sort_by_key(|p| p.key());
    c
}

fn port(s: u16, t: u16) -> Port {
    Port {
        service_port: s,
        target_port: t,
    }
}

#[test]
fn every_fixture_round_trips_through_the_dump() {
    for name in FIXTURES {
        let config = load(name);
        let state = MeshState::from_config(config.clone());
        let dumped = dump::state(&state);
        for key in ["workloads", "services", "policies", "stagedServices"] {
            assert!(dumped.get(key).is_some(), "{name}: dump lacks {key}");
        }
        let text = serde_json::to_string_pretty(&dumped).expect("json");
        let back = Config::parse(&text, name).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(sorted(back), sorted(config), "{name}:\n{text}");
    }
}

#[test]
fn every_fixture_survives_the_xds_wire() {
    for name in FIXTURES {
        let config = load(name);
        for w in &config.workloads {
            let Ok(AddressKind::Workload(back)) = xds::address(&w.uid, &xds::encode::workload(w))
            else {
                panic!("{name}: {} did not decode as a workload", w.uid);
            };
            let mut want = w.clone();
            if want.workload_type.is_empty() {
                // Istio's default workload type.
                want.workload_type = "deployment".into();
            }
            assert_eq!(*back, want, "{name}");
        }
        for s in &config.services {
            let Ok(AddressKind::Service(back)) = xds::address(&s.key(), &xds::encode::service(s))
            else {
                panic!("{name}: {} did not decode as a service", s.key());
            };
            let mut want = s.clone();
            // The wire has no service endpoints and no passthrough mode.
            want.endpoints.clear();
            if let Some(lb) = &mut want.load_balancer
                && lb.mode == LoadBalancerMode::Passthrough
            {
                lb.mode = LoadBalancerMode::Standard;
            }
            assert_eq!(*back, want, "{name}");
        }
        for p in &config.policies {
            assert_eq!(
                xds::policy(&xds::encode::policy(p)).expect("decode"),
                *p,
                "{name}"
            );
        }
    }
}

#[test]
fn workload_fields_load() {
    let c = load("workloads.yaml");
    let cart = &c.workloads[0];
    assert_eq!(cart.trust_domain, "example.org");
    assert_eq!(cart.addresses.len(), 2);
    assert_eq!(cart.protocol, TunnelProtocol::Hbone);
    assert_eq!(cart.network_mode, NetworkMode::Standard);
    assert!(cart.native_tunnel);
    assert_eq!(
        cart.application_tunnel,
        Some(ApplicationTunnel {
            protocol: AppTunnelProtocol::Proxy,
            port: Some(15088)
        })
    );
    assert_eq!(cart.capacity, 3);
    assert_eq!(
        cart.locality,
        Some(Locality {
            region: "eu-west".into(),
            zone: "eu-west-1a".into(),
            subzone: "rack7".into()
        })
    );
    assert_eq!(
        cart.services["shop/cart.shop.svc.cluster.local"],
        vec![port(80, 8080), port(443, 8443)]
    );
    assert_eq!(
        cart.waypoint,
        Some(GatewayAddress::Hostname {
            namespace: "shop".into(),
            hostname: "waypoint.shop.svc.cluster.local".into(),
            hbone_port: 15008
        })
    );
    assert_eq!(
        cart.network_gateway,
        Some(GatewayAddress::Address {
            network: "net1".into(),
            ip: "192.0.2.10".parse().expect("ip"),
            hbone_port: 15009
        })
    );
    assert_eq!(
        (cart.cluster_id.as_str(), cart.workload_type.as_str()),
        ("cluster1", "deployment")
    );
    let agent = &c.workloads[1];
    assert_eq!(agent.network_mode, NetworkMode::HostNetwork);
    assert_eq!(agent.status, HealthStatus::Unhealthy);
    assert_eq!(agent.capacity, 1, "Istio's default capacity");
    assert!(matches!(
        agent.waypoint,
        Some(GatewayAddress::Hostname {
            hbone_port: 15008,
            ..
        })
    ));
    assert_eq!(
        agent.application_tunnel,
        Some(ApplicationTunnel::default()),
        "NONE without a port"
    );
    assert!(
        c.workloads[2].addresses.is_empty(),
        "reached via its gateway"
    );
    assert_eq!(c.workloads[3].protocol, TunnelProtocol::LegacyIstioMtls);
}

#[test]
fn service_fields_load_and_endpoints_fold_onto_workloads() {
    let c = load("services.yaml");
    let front = &c.services[0];
    assert_eq!(front.vips.len(), 3);
    assert!(front.canonical);
    assert_eq!(front.ip_families, Some(IpFamily::Dual));
    assert_eq!(
        front.load_balancer,
        Some(LoadBalancer {
            routing_preferences: vec![
                LoadBalancerScope::Network,
                LoadBalancerScope::Region,
                LoadBalancerScope::Zone,
                LoadBalancerScope::Subzone,
                LoadBalancerScope::Node,
                LoadBalancerScope::Cluster,
            ],
            mode: LoadBalancerMode::Failover,
            health_policy: LoadBalancerHealthPolicy::AllowAll,
        })
    );
    // front-2's restated endpoint folded onto it; the unknown one stays.
    assert_eq!(
        c.workloads[1].services["shop/front.shop.svc.cluster.local"],
        vec![port(80, 8081)]
    );
    assert_eq!(
        front.endpoints.keys().collect::<Vec<_>>(),
        vec!["c//v1/Pod/shop/front-elsewhere"]
    );
    let api = &c.services[1];
    assert_eq!(
        api.endpoints["c//v1/Pod/shop/front-1"],
        ServiceEndpoint {
            ports: vec![port(443, 9443)],
            status: HealthStatus::Unhealthy
        },
        "list form; front-1 does not list api, so it stays on the service"
    );
    assert_eq!(c.services[2].ip_families, Some(IpFamily::IPv6));
    assert_eq!(
        c.services[2].load_balancer.as_ref().map(|l| l.mode),
        Some(LoadBalancerMode::Passthrough)
    );

    // Endpoint selection sees both kinds of endpoint.
    let state = MeshState::from_config(c.clone());
    let svc = state
        .service("shop/front.shop.svc.cluster.local")
        .expect("front");
    let mut eps: Vec<(String, u16)> = state
        .endpoints(&svc, 80)
        .into_iter()
        .map(|e| (e.workload.name.clone(), e.port))
        .collect();
    eps.sort();
    assert_eq!(
        eps,
        vec![("front-1".into(), 8080), ("front-2".into(), 8081)]
    );
    let api = state
        .service("shop/api.shop.svc.cluster.local")
        .expect("api");
    assert!(
        state.endpoints(&api, 443).is_empty(),
        "its endpoint is unhealthy"
    );

    let dumped = dump::state(&state);
    assert_eq!(
        dumped["stagedServices"]["shop/queue.shop.svc.cluster.local"]["c//v1/Pod/shop/worker"]["port"]
            ["5672"],
        5672
    );
    let front = &dumped["services"][1];
    assert_eq!(front["hostname"], "front.shop.svc.cluster.local");
    assert_eq!(
        front["endpoints"]["c//v1/Pod/shop/front-2"],
        serde_json::json!({"workloadUid": "c//v1/Pod/shop/front-2", "port": {"80": 8081}, "status": "Healthy"})
    );
    assert_eq!(front["loadBalancer"]["mode"], "Failover");
    assert_eq!(front["ipFamilies"], "Dual");
    assert_eq!(front["vips"][1], "net1/10.96.1.2");
    assert_eq!(front["ports"], serde_json::json!({"80": 8080, "9090": 0}));
}

#[test]
fn policy_fields_load() {
    let c = load("policies.yaml");
    let p = &c.policies[0];
    assert_eq!(
        (p.scope, p.action, p.dry_run),
        (PolicyScope::WorkloadSelector, PolicyAction::Allow, false)
    );
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(m.namespaces.len(), 4);
    assert_eq!(m.namespaces[3], StringMatch::Presence);
    assert_eq!(m.not_service_accounts[0].service_account, "batch");
    assert_eq!(
        p.rules[0].clauses[1].matches[0].not_destination_ports,
        vec![9090]
    );
    assert_eq!(
        c.policies[1].rules[0].clauses[0].matches[0].principals,
        vec![StringMatch::Presence],
        "ztunnel's dump form {{Presence: []}}"
    );
    assert_eq!(c.policies[2].scope, PolicyScope::Global);
    let dumped = dump::policy(&c.policies[1]);
    assert_eq!(
        dumped,
        serde_json::json!({
            "name": "deny-batch", "namespace": "shop", "scope": "Namespace", "action": "Deny",
            "dryRun": true, "rules": [[[{"principals": [{"Presence": []}]}]]]
        })
    );
}

#[test]
fn protobuf_spellings_load() {
    let c = load("spellings.yaml");
    let a = &c.workloads[0];
    assert_eq!(a.protocol, TunnelProtocol::LegacyIstioMtls);
    assert_eq!(a.network_mode, NetworkMode::HostNetwork);
    assert_eq!(a.status, HealthStatus::Unhealthy);
    assert_eq!(c.workloads[1].protocol, TunnelProtocol::None);
    assert_eq!(c.services[0].ip_families, Some(IpFamily::IPv6));
    assert_eq!(
        c.services[0]
            .load_balancer
            .as_ref()
            .map(|l| l.health_policy),
        Some(LoadBalancerHealthPolicy::AllowAll)
    );
    assert_eq!(c.services[1].ip_families, None, "AUTOMATIC");
    assert_eq!(c.policies[0].action, PolicyAction::Deny);
}

#[test]
fn a_ztunnel_dump_loads() {
    let c = load("ztunnel-dump.json");
    let w = c
        .workloads
        .iter()
        .find(|w| w.name == "productpage-v1")
        .expect("workload");
    assert_eq!(
        w.services["bookinfo/productpage.bookinfo.svc.cluster.local"],
        vec![port(9080, 9080)],
        "ports from the service's endpoints"
    );
    assert_eq!(
        w.services["bookinfo/staged.bookinfo.svc.cluster.local"],
        vec![port(80, 9080)],
        "ports from stagedServices"
    );
    assert!(c.services[0].endpoints.is_empty(), "all folded");
}
