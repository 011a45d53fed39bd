//! The mesh state as istio/ztunnel's `/config_dump` shows it: JSON with
//! ztunnel's field names, value spellings and omissions.
//!
//! [`state`] gives the four state keys of ztunnel's dump:
//!
//! - `workloads`: sorted by uid; a workload's `services` is the list of
//!   `namespace/hostname` it backs (its ports show in the services'
//!   endpoints), gateways are `{destination: "network/ip" |
//!   "namespace/hostname", hboneMtlsPort}`.
//! - `services`: sorted by hostname; `endpoints` maps each workload uid to
//!   `{workloadUid, port: {servicePort: targetPort}, status}`, from the
//!   workloads naming the service and from the service's own endpoints
//!   (which win for their uid).
//! - `policies`: sorted by `namespace/name`, rules as ztunnel nests them
//!   (`rules` → clauses → matches, empty match fields left out, string
//!   matches as `{"Exact": "..."}` / `{"Presence": []}`).
//! - `stagedServices`: `namespace/hostname` → uid → endpoint, for services
//!   workloads name but the state does not hold.
//!
//! The output parses back as a local config ([`crate::Config::parse`]) to
//! the same model.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::model::{
    AppTunnelProtocol, GatewayAddress, HealthStatus, IpFamily, LoadBalancerHealthPolicy,
    LoadBalancerMode, LoadBalancerScope, Match, NetworkMode, Policy, PolicyAction, PolicyScope,
    Port, Service, ServiceAccountMatch, StringMatch, TunnelProtocol, Workload,
};
use crate::state::MeshState;

/// The whole state: an object with `workloads`, `services`, `policies`
/// and `stagedServices`.
pub fn state(s: &MeshState) -> Value {
    let mut workloads: Vec<_> = s.workloads().collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut services: Vec<_> = s.services().collect();
    services.sort_by(|a, b| (&a.hostname, &a.namespace).cmp(&(&b.hostname, &b.namespace)));
    let mut policies: Vec<_> = s.policies().collect();
    policies.sort_by_key(|p| p.key());
    json!({
        "workloads": workloads.iter().map(|w| workload(w)).collect::<Vec<_>>(),
        "services": services.iter().map(|svc| service(s, svc)).collect::<Vec<_>>(),
        "policies": policies.iter().map(|p| policy(p)).collect::<Vec<_>>(),
        "stagedServices": staged_services(s),
    })
}

/// Inserts `v` under `k` unless `skip`.
fn put(m: &mut Map<String, Value>, k: &str, v: Value, skip: bool) {
    if !skip {
        m.insert(k.to_owned(), v);
    }
}

fn status(s: HealthStatus) -> &'static str {
    match s {
        HealthStatus::Healthy => "Healthy",
        HealthStatus::Unhealthy => "Unhealthy",
    }
}

fn port_map(ps: &[Port]) -> Value {
    let m: BTreeMap<String, u16> = ps
        .iter()
        .map(|p| (p.service_port.to_string(), p.target_port))
        .collect();
    json!(m)
}

/// A gateway: `{destination, hboneMtlsPort}`.
pub fn gateway(g: &GatewayAddress) -> Value {
    match g {
        GatewayAddress::Address {
            network,
            ip,
            hbone_port,
        } => json!({"destination": format!("{network}/{ip}"), "hboneMtlsPort": hbone_port}),
        GatewayAddress::Hostname {
            namespace,
            hostname,
            hbone_port,
        } => json!({"destination": format!("{namespace}/{hostname}"), "hboneMtlsPort": hbone_port}),
    }
}

/// One workload.
pub fn workload(w: &Workload) -> Value {
    let mut m = Map::new();
    put(&mut m, "workloadIps", json!(w.addresses), false);
    if let Some(g) = &w.waypoint {
        put(&mut m, "waypoint", gateway(g), false);
    }
    if let Some(g) = &w.network_gateway {
        put(&mut m, "networkGateway", gateway(g), false);
    }
    let protocol = match w.protocol {
        TunnelProtocol::None => "TCP",
        TunnelProtocol::Hbone => "HBONE",
        TunnelProtocol::LegacyIstioMtls => "LEGACY_ISTIO_MTLS",
    };
    put(&mut m, "protocol", json!(protocol), false);
    let mode = match w.network_mode {
        NetworkMode::Standard => "Standard",
        NetworkMode::HostNetwork => "HostNetwork",
    };
    put(&mut m, "networkMode", json!(mode), false);
    for (k, v, always) in [
        ("uid", &w.uid, false),
        ("name", &w.name, true),
        ("namespace", &w.namespace, true),
        ("trustDomain", &w.trust_domain, false),
        ("serviceAccount", &w.service_account, false),
        ("network", &w.network, false),
        ("workloadName", &w.workload_name, false),
        ("workloadType", &w.workload_type, false),
        ("canonicalName", &w.canonical_name, false),
        ("canonicalRevision", &w.canonical_revision, false),
        ("hostname", &w.hostname, false),
        ("node", &w.node, false),
    ] {
        put(&mut m, k, json!(v), !always && v.is_empty());
    }
    put(&mut m, "nativeTunnel", json!(true), !w.native_tunnel);
    if let Some(t) = &w.application_tunnel {
        let protocol = match t.protocol {
            AppTunnelProtocol::None => "NONE",
            AppTunnelProtocol::Proxy => "PROXY",
        };
        put(
            &mut m,
            "applicationTunnel",
            json!({"protocol": protocol, "port": t.port}),
            false,
        );
    }
    put(
        &mut m,
        "authorizationPolicies",
        json!(w.authorization_policies),
        w.authorization_policies.is_empty(),
    );
    put(&mut m, "status", json!(status(w.status)), false);
    put(&mut m, "clusterId", json!(w.cluster_id), false);
    if let Some(l) = &w.locality {
        put(
            &mut m,
            "locality",
            json!({"region": l.region, "zone": l.zone, "subzone": l.subzone}),
            false,
        );
    }
    let services: Vec<&String> = w.services.keys().collect();
    put(&mut m, "services", json!(services), services.is_empty());
    put(&mut m, "capacity", json!(w.capacity), false);
    Value::Object(m)
}

fn endpoint(uid: &str, ports: &[Port], st: HealthStatus) -> Value {
    json!({"workloadUid": uid, "port": port_map(ports), "status": status(st)})
}

/// One service, with its endpoints as `state` knows them.
pub fn service(state: &MeshState, svc: &Service) -> Value {
    let key = svc.key();
    let mut endpoints = Map::new();
    for uid in state.members(&key) {
        if let Some(w) = state.workload(uid) {
            let ports = w.services.get(&key).map(Vec::as_slice).unwrap_or_default();
            endpoints.insert(uid.to_owned(), endpoint(uid, ports, w.status));
        }
    }
    for (uid, e) in &svc.endpoints {
        endpoints.insert(uid.clone(), endpoint(uid, &e.ports, e.status));
    }
    let vips: Vec<String> = svc.vips.iter().map(|(n, ip)| format!("{n}/{ip}")).collect();
    let mut m = Map::new();
    put(&mut m, "name", json!(svc.name), false);
    put(&mut m, "namespace", json!(svc.namespace), false);
    put(&mut m, "hostname", json!(svc.hostname), false);
    put(&mut m, "vips", json!(vips), false);
    put(&mut m, "ports", port_map(&svc.ports), false);
    put(&mut m, "endpoints", Value::Object(endpoints), false);
    put(
        &mut m,
        "subjectAltNames",
        json!(svc.subject_alt_names),
        false,
    );
    if let Some(g) = &svc.waypoint {
        put(&mut m, "waypoint", gateway(g), false);
    }
    if let Some(lb) = &svc.load_balancer {
        let prefs: Vec<&str> = lb
            .routing_preferences
            .iter()
            .map(|s| match s {
                LoadBalancerScope::Region => "Region",
                LoadBalancerScope::Zone => "Zone",
                LoadBalancerScope::Subzone => "Subzone",
                LoadBalancerScope::Node => "Node",
                LoadBalancerScope::Cluster => "Cluster",
                LoadBalancerScope::Network => "Network",
            })
            .collect();
        let mode = match lb.mode {
            LoadBalancerMode::Standard => "Standard",
            LoadBalancerMode::Strict => "Strict",
            LoadBalancerMode::Failover => "Failover",
            LoadBalancerMode::Passthrough => "Passthrough",
        };
        let health = match lb.health_policy {
            LoadBalancerHealthPolicy::OnlyHealthy => "OnlyHealthy",
            LoadBalancerHealthPolicy::AllowAll => "AllowAll",
        };
        put(
            &mut m,
            "loadBalancer",
            json!({"routingPreferences": prefs, "mode": mode, "healthPolicy": health}),
            false,
        );
    }
    if let Some(f) = svc.ip_families {
        let f = match f {
            IpFamily::Dual => "Dual",
            IpFamily::IPv4 => "IPv4",
            IpFamily::IPv6 => "IPv6",
        };
        put(&mut m, "ipFamilies", json!(f), false);
    }
    put(&mut m, "canonical", json!(svc.canonical), false);
    Value::Object(m)
}

/// Endpoints of services workloads name but `state` does not hold:
/// `namespace/hostname` → uid → endpoint.
pub fn staged_services(state: &MeshState) -> Value {
    let mut keys: Vec<&str> = state.staged_service_keys().collect();
    keys.sort_unstable();
    let mut out = Map::new();
    for key in keys {
        let mut eps = Map::new();
        for uid in state.members(key) {
            if let Some(w) = state.workload(uid) {
                let ports = w.services.get(key).map(Vec::as_slice).unwrap_or_default();
                eps.insert(uid.to_owned(), endpoint(uid, ports, w.status));
            }
        }
        out.insert(key.to_owned(), Value::Object(eps));
    }
    Value::Object(out)
}

fn string_matches(v: &[StringMatch]) -> Value {
    v.iter()
        .map(|m| match m {
            StringMatch::Exact(s) => json!({"Exact": s}),
            StringMatch::Prefix(s) => json!({"Prefix": s}),
            StringMatch::Suffix(s) => json!({"Suffix": s}),
            StringMatch::Presence => json!({"Presence": []}),
        })
        .collect()
}

fn service_accounts(v: &[ServiceAccountMatch]) -> Value {
    v.iter()
        .map(|m| json!({"namespace": m.namespace, "serviceAccount": m.service_account}))
        .collect()
}

fn rbac_match(x: &Match) -> Value {
    let nets = |v: &[ipnet::IpNet]| json!(v.iter().map(|n| n.to_string()).collect::<Vec<_>>());
    let mut m = Map::new();
    let fields = [
        (
            "namespaces",
            string_matches(&x.namespaces),
            x.namespaces.is_empty(),
        ),
        (
            "notNamespaces",
            string_matches(&x.not_namespaces),
            x.not_namespaces.is_empty(),
        ),
        (
            "serviceAccounts",
            service_accounts(&x.service_accounts),
            x.service_accounts.is_empty(),
        ),
        (
            "notServiceAccounts",
            service_accounts(&x.not_service_accounts),
            x.not_service_accounts.is_empty(),
        ),
        (
            "principals",
            string_matches(&x.principals),
            x.principals.is_empty(),
        ),
        (
            "notPrincipals",
            string_matches(&x.not_principals),
            x.not_principals.is_empty(),
        ),
        ("sourceIps", nets(&x.source_ips), x.source_ips.is_empty()),
        (
            "notSourceIps",
            nets(&x.not_source_ips),
            x.not_source_ips.is_empty(),
        ),
        (
            "destinationIps",
            nets(&x.destination_ips),
            x.destination_ips.is_empty(),
        ),
        (
            "notDestinationIps",
            nets(&x.not_destination_ips),
            x.not_destination_ips.is_empty(),
        ),
        (
            "destinationPorts",
            json!(x.destination_ports),
            x.destination_ports.is_empty(),
        ),
        (
            "notDestinationPorts",
            json!(x.not_destination_ports),
            x.not_destination_ports.is_empty(),
        ),
    ];
    for (k, v, skip) in fields {
        put(&mut m, k, v, skip);
    }
    Value::Object(m)
}

/// One authorization policy.
pub fn policy(p: &Policy) -> Value {
    let scope = match p.scope {
        PolicyScope::Global => "Global",
        PolicyScope::Namespace => "Namespace",
        PolicyScope::WorkloadSelector => "WorkloadSelector",
    };
    let action = match p.action {
        PolicyAction::Allow => "Allow",
        PolicyAction::Deny => "Deny",
    };
    let rules: Vec<Vec<Vec<Value>>> = p
        .rules
        .iter()
        .map(|r| {
            r.clauses
                .iter()
                .map(|c| c.matches.iter().map(rbac_match).collect())
                .collect()
        })
        .collect();
    json!({
        "name": p.name,
        "namespace": p.namespace,
        "scope": scope,
        "action": action,
        "rules": rules,
        "dryRun": p.dry_run,
    })
}
