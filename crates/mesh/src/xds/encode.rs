//! The model back to the wire (`istio.workload.Address`,
//! `istio.security.Authorization`), for control planes and tests that
//! serve a [`crate::Config`] over xDS.
//!
//! Lossy in two places the wire cannot express: a service's explicit
//! `endpoints` (on the wire, endpoints are the workloads naming the service
//! in their `services` map), and [`LoadBalancerMode::Passthrough`], which
//! the `ambit-xds` protobuf has no value for (it is sent as unspecified).

use super::*;

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn gw(g: &GatewayAddress) -> pb::GatewayAddress {
    match g {
        GatewayAddress::Hostname {
            namespace,
            hostname,
            hbone_port,
        } => pb::GatewayAddress {
            destination: Some(pb::gateway_address::Destination::Hostname(
                pb::NamespacedHostname {
                    namespace: namespace.clone(),
                    hostname: hostname.clone(),
                },
            )),
            hbone_mtls_port: u32::from(*hbone_port),
        },
        GatewayAddress::Address {
            network,
            ip,
            hbone_port,
        } => pb::GatewayAddress {
            destination: Some(pb::gateway_address::Destination::Address(
                pb::NetworkAddress {
                    network: network.clone(),
                    address: ip_bytes(ip),
                    length: None,
                },
            )),
            hbone_mtls_port: u32::from(*hbone_port),
        },
    }
}

fn pports(ps: &[Port]) -> Vec<pb::Port> {
    ps.iter()
        .map(|p| pb::Port {
            service_port: u32::from(p.service_port),
            target_port: u32::from(p.target_port),
            app_protocol: 0,
        })
        .collect()
}

/// The wire value of a workload type string (`deployment`, `Pod`,
/// `CRONJOB`, ...; anything else is Istio's default, a deployment).
fn workload_type(t: &str) -> pb::WorkloadType {
    pb::WorkloadType::from_str_name(&t.to_ascii_uppercase()).unwrap_or_default()
}

fn load_balancing(lb: &LoadBalancer) -> pb::LoadBalancing {
    use pb::load_balancing::{HealthPolicy, Mode, Scope};
    pb::LoadBalancing {
        routing_preference: lb
            .routing_preferences
            .iter()
            .map(|s| match s {
                LoadBalancerScope::Region => Scope::Region as i32,
                LoadBalancerScope::Zone => Scope::Zone as i32,
                LoadBalancerScope::Subzone => Scope::Subzone as i32,
                LoadBalancerScope::Node => Scope::Node as i32,
                LoadBalancerScope::Cluster => Scope::Cluster as i32,
                LoadBalancerScope::Network => Scope::Network as i32,
            })
            .collect(),
        mode: match lb.mode {
            LoadBalancerMode::Standard | LoadBalancerMode::Passthrough => {
                Mode::UnspecifiedMode as i32
            }
            LoadBalancerMode::Strict => Mode::Strict as i32,
            LoadBalancerMode::Failover => Mode::Failover as i32,
        },
        health_policy: match lb.health_policy {
            LoadBalancerHealthPolicy::OnlyHealthy => HealthPolicy::OnlyHealthy as i32,
            LoadBalancerHealthPolicy::AllowAll => HealthPolicy::AllowAll as i32,
        },
    }
}

/// A workload as an `Address` resource.
pub fn workload(w: &Workload) -> pb::Address {
    pb::Address {
        r#type: Some(pb::address::Type::Workload(pb::Workload {
            uid: w.uid.clone(),
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            addresses: w.addresses.iter().map(ip_bytes).collect(),
            hostname: w.hostname.clone(),
            network: w.network.clone(),
            tunnel_protocol: match w.protocol {
                TunnelProtocol::Hbone => pb::TunnelProtocol::Hbone as i32,
                TunnelProtocol::LegacyIstioMtls => pb::TunnelProtocol::LegacyIstioMtls as i32,
                TunnelProtocol::None => pb::TunnelProtocol::None as i32,
            },
            trust_domain: w.trust_domain.clone(),
            service_account: w.service_account.clone(),
            waypoint: w.waypoint.as_ref().map(gw),
            network_gateway: w.network_gateway.as_ref().map(gw),
            node: w.node.clone(),
            canonical_name: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
            workload_name: w.workload_name.clone(),
            services: w
                .services
                .iter()
                .map(|(k, ps)| (k.clone(), pb::PortList { ports: pports(ps) }))
                .collect(),
            authorization_policies: w.authorization_policies.clone(),
            status: match w.status {
                HealthStatus::Healthy => pb::WorkloadStatus::Healthy as i32,
                HealthStatus::Unhealthy => pb::WorkloadStatus::Unhealthy as i32,
            },
            cluster_id: w.cluster_id.clone(),
            workload_type: workload_type(&w.workload_type) as i32,
            locality: w.locality.as_ref().map(|l| pb::Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.subzone.clone(),
            }),
            network_mode: match w.network_mode {
                NetworkMode::Standard => pb::NetworkMode::Standard as i32,
                NetworkMode::HostNetwork => pb::NetworkMode::HostNetwork as i32,
            },
            native_tunnel: w.native_tunnel,
            application_tunnel: w.application_tunnel.map(|t| pb::ApplicationTunnel {
                protocol: match t.protocol {
                    AppTunnelProtocol::None => pb::application_tunnel::Protocol::None as i32,
                    AppTunnelProtocol::Proxy => pb::application_tunnel::Protocol::Proxy as i32,
                },
                port: t.port.map_or(0, u32::from),
            }),
            capacity: Some(w.capacity),
            ..Default::default()
        })),
    }
}

/// A service as an `Address` resource.
pub fn service(s: &Service) -> pb::Address {
    pb::Address {
        r#type: Some(pb::address::Type::Service(pb::Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s.hostname.clone(),
            addresses: s
                .vips
                .iter()
                .map(|(n, ip)| pb::NetworkAddress {
                    network: n.clone(),
                    address: ip_bytes(ip),
                    length: None,
                })
                .collect(),
            ports: pports(&s.ports),
            subject_alt_names: s.subject_alt_names.clone(),
            waypoint: s.waypoint.as_ref().map(gw),
            load_balancing: s.load_balancer.as_ref().map(load_balancing),
            ip_families: match s.ip_families {
                None => pb::IpFamilies::Automatic as i32,
                Some(IpFamily::IPv4) => pb::IpFamilies::Ipv4Only as i32,
                Some(IpFamily::IPv6) => pb::IpFamilies::Ipv6Only as i32,
                Some(IpFamily::Dual) => pb::IpFamilies::Dual as i32,
            },
            canonical: s.canonical,
            ..Default::default()
        })),
    }
}

fn sm(v: &[StringMatch]) -> Vec<sec::StringMatch> {
    v.iter()
        .map(|m| sec::StringMatch {
            match_type: Some(match m {
                StringMatch::Exact(s) => sec::string_match::MatchType::Exact(s.clone()),
                StringMatch::Prefix(s) => sec::string_match::MatchType::Prefix(s.clone()),
                StringMatch::Suffix(s) => sec::string_match::MatchType::Suffix(s.clone()),
                StringMatch::Presence => sec::string_match::MatchType::Presence(()),
            }),
        })
        .collect()
}

fn an(v: &[IpNet]) -> Vec<sec::Address> {
    v.iter()
        .map(|n| sec::Address {
            address: ip_bytes(&n.addr()),
            length: u32::from(n.prefix_len()),
        })
        .collect()
}

fn sa(v: &[ServiceAccountMatch]) -> Vec<sec::ServiceAccountMatch> {
    v.iter()
        .map(|m| sec::ServiceAccountMatch {
            namespace: m.namespace.clone(),
            service_account: m.service_account.clone(),
        })
        .collect()
}

/// A policy as an `Authorization` resource.
pub fn policy(p: &Policy) -> sec::Authorization {
    sec::Authorization {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope: match p.scope {
            PolicyScope::Global => sec::Scope::Global as i32,
            PolicyScope::Namespace => sec::Scope::Namespace as i32,
            PolicyScope::WorkloadSelector => sec::Scope::WorkloadSelector as i32,
        },
        action: match p.action {
            PolicyAction::Allow => sec::Action::Allow as i32,
            PolicyAction::Deny => sec::Action::Deny as i32,
        },
        rules: p
            .rules
            .iter()
            .map(|r| sec::Rule {
                clauses: r
                    .clauses
                    .iter()
                    .map(|c| sec::Clause {
                        matches: c
                            .matches
                            .iter()
                            .map(|m| sec::Match {
                                namespaces: sm(&m.namespaces),
                                not_namespaces: sm(&m.not_namespaces),
                                principals: sm(&m.principals),
                                not_principals: sm(&m.not_principals),
                                source_ips: an(&m.source_ips),
                                not_source_ips: an(&m.not_source_ips),
                                destination_ips: an(&m.destination_ips),
                                not_destination_ips: an(&m.not_destination_ips),
                                destination_ports: m
                                    .destination_ports
                                    .iter()
                                    .map(|p| u32::from(*p))
                                    .collect(),
                                not_destination_ports: m
                                    .not_destination_ports
                                    .iter()
                                    .map(|p| u32::from(*p))
                                    .collect(),
                                service_accounts: sa(&m.service_accounts),
                                not_service_accounts: sa(&m.not_service_accounts),
                                extensions: vec![],
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: p.dry_run,
        extensions: vec![],
    }
}
