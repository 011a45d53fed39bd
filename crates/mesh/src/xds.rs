//! Conversion from Istio's workload API (`istio.workload.Address`,
//! `istio.security.Authorization`, from `ambit-xds`) into the mesh model,
//! and xDS handlers that keep a shared [`MeshState`] up to date.
//!
//! Conversion is strict where a wrong value would misroute traffic (an
//! address that is not 4 or 16 bytes, a prefix longer than the address) and
//! names the resource in its error; the handler rejects a whole response
//! when one resource is bad, so the ADS client NACKs it and keeps the last
//! good state.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use ambit_xds::proto::istio::security as sec;
use ambit_xds::proto::istio::workload as pb;
use ambit_xds::{Handler, HandlerError, XdsResource};
use ipnet::IpNet;

use crate::model::{
    AppTunnelProtocol, ApplicationTunnel, Clause, GatewayAddress, HealthStatus, IpFamily,
    LoadBalancer, LoadBalancerHealthPolicy, LoadBalancerMode, LoadBalancerScope, Locality, Match,
    NetworkMode, Policy, PolicyAction, PolicyScope, Port, Rule, Service, ServiceAccountMatch,
    StringMatch, TunnelProtocol, Workload,
};
use crate::state::MeshState;

/// A resource that cannot be represented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource {name}: {reason}")]
pub struct ConvertError {
    /// The resource name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

fn err(name: &str, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

fn ip(name: &str, bytes: &[u8]) -> Result<IpAddr, ConvertError> {
    match bytes.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| err(name, "bad IPv4 address"))?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| err(name, "bad IPv6 address"))?,
        )),
        n => Err(err(name, format!("address of {n} bytes (want 4 or 16)"))),
    }
}

fn port(name: &str, v: u32) -> Result<u16, ConvertError> {
    u16::try_from(v).map_err(|_| err(name, format!("port {v} out of range")))
}

fn gateway(name: &str, g: &pb::GatewayAddress) -> Result<Option<GatewayAddress>, ConvertError> {
    let hbone_port = if g.hbone_mtls_port == 0 {
        15008
    } else {
        port(name, g.hbone_mtls_port)?
    };
    Ok(match &g.destination {
        None => None,
        Some(pb::gateway_address::Destination::Hostname(h)) => Some(GatewayAddress::Hostname {
            namespace: h.namespace.clone(),
            hostname: h.hostname.clone(),
            hbone_port,
        }),
        Some(pb::gateway_address::Destination::Address(a)) => Some(GatewayAddress::Address {
            network: a.network.clone(),
            ip: ip(name, &a.address)?,
            hbone_port,
        }),
    })
}

fn ports(name: &str, ps: &[pb::Port]) -> Result<Vec<Port>, ConvertError> {
    ps.iter()
        .map(|p| {
            Ok(Port {
                service_port: port(name, p.service_port)?,
                target_port: port(name, p.target_port)?,
            })
        })
        .collect()
}

/// Converts a workload.
pub fn workload(w: &pb::Workload) -> Result<Workload, ConvertError> {
    let name = if w.uid.is_empty() { &w.name } else { &w.uid };
    if w.uid.is_empty() {
        return Err(err(name, "workload without uid"));
    }
    Ok(Workload {
        uid: w.uid.clone(),
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        addresses: w
            .addresses
            .iter()
            .map(|a| ip(name, a))
            .collect::<Result<_, _>>()?,
        hostname: w.hostname.clone(),
        network: w.network.clone(),
        protocol: match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
            Ok(pb::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
            Ok(pb::TunnelProtocol::LegacyIstioMtls) => TunnelProtocol::LegacyIstioMtls,
            _ => TunnelProtocol::None,
        },
        trust_domain: w.trust_domain.clone(),
        service_account: w.service_account.clone(),
        waypoint: w
            .waypoint
            .as_ref()
            .map(|g| gateway(name, g))
            .transpose()?
            .flatten(),
        network_gateway: w
            .network_gateway
            .as_ref()
            .map(|g| gateway(name, g))
            .transpose()?
            .flatten(),
        node: w.node.clone(),
        canonical_name: w.canonical_name.clone(),
        canonical_revision: w.canonical_revision.clone(),
        // ztunnel's spelling: the enum name in lower case.
        workload_type: pb::WorkloadType::try_from(w.workload_type)
            .unwrap_or_default()
            .as_str_name()
            .to_ascii_lowercase(),
        workload_name: w.workload_name.clone(),
        services: w
            .services
            .iter()
            .map(|(k, pl)| Ok((k.clone(), ports(name, &pl.ports)?)))
            .collect::<Result<_, ConvertError>>()?,
        authorization_policies: w.authorization_policies.clone(),
        status: if w.status == pb::WorkloadStatus::Unhealthy as i32 {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Healthy
        },
        cluster_id: w.cluster_id.clone(),
        locality: w
            .locality
            .as_ref()
            .map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.subzone.clone(),
            })
            .filter(|l| *l != Locality::default()),
        network_mode: match pb::NetworkMode::try_from(w.network_mode) {
            Ok(pb::NetworkMode::Standard) => NetworkMode::Standard,
            Ok(pb::NetworkMode::HostNetwork) => NetworkMode::HostNetwork,
            Err(_) => {
                return Err(err(
                    name,
                    format!("unknown network mode {}", w.network_mode),
                ));
            }
        },
        native_tunnel: w.native_tunnel,
        application_tunnel: w
            .application_tunnel
            .as_ref()
            .map(|t| app_tunnel(name, t))
            .transpose()?,
        capacity: w.capacity.unwrap_or(1),
    })
}

fn app_tunnel(name: &str, t: &pb::ApplicationTunnel) -> Result<ApplicationTunnel, ConvertError> {
    use pb::application_tunnel::Protocol;
    Ok(ApplicationTunnel {
        protocol: match Protocol::try_from(t.protocol) {
            Ok(Protocol::None) => AppTunnelProtocol::None,
            Ok(Protocol::Proxy) => AppTunnelProtocol::Proxy,
            Err(_) => {
                return Err(err(
                    name,
                    format!("unknown application tunnel protocol {}", t.protocol),
                ));
            }
        },
        port: match t.port {
            0 => None,
            p => Some(port(name, p)?),
        },
    })
}

fn load_balancer(name: &str, lb: &pb::LoadBalancing) -> Result<LoadBalancer, ConvertError> {
    use pb::load_balancing::{HealthPolicy, Mode, Scope};
    Ok(LoadBalancer {
        routing_preferences: lb
            .routing_preference
            .iter()
            .map(|s| match Scope::try_from(*s) {
                Ok(Scope::Region) => Ok(LoadBalancerScope::Region),
                Ok(Scope::Zone) => Ok(LoadBalancerScope::Zone),
                Ok(Scope::Subzone) => Ok(LoadBalancerScope::Subzone),
                Ok(Scope::Node) => Ok(LoadBalancerScope::Node),
                Ok(Scope::Cluster) => Ok(LoadBalancerScope::Cluster),
                Ok(Scope::Network) => Ok(LoadBalancerScope::Network),
                Ok(Scope::UnspecifiedScope) | Err(_) => {
                    Err(err(name, format!("invalid routing preference {s}")))
                }
            })
            .collect::<Result<_, _>>()?,
        mode: match Mode::try_from(lb.mode) {
            Ok(Mode::UnspecifiedMode) => LoadBalancerMode::Standard,
            Ok(Mode::Strict) => LoadBalancerMode::Strict,
            Ok(Mode::Failover) => LoadBalancerMode::Failover,
            Err(_) => {
                return Err(err(
                    name,
                    format!("unknown load balancing mode {}", lb.mode),
                ));
            }
        },
        health_policy: match HealthPolicy::try_from(lb.health_policy) {
            Ok(HealthPolicy::OnlyHealthy) => LoadBalancerHealthPolicy::OnlyHealthy,
            Ok(HealthPolicy::AllowAll) => LoadBalancerHealthPolicy::AllowAll,
            Err(_) => {
                return Err(err(
                    name,
                    format!("unknown health policy {}", lb.health_policy),
                ));
            }
        },
    })
}

/// Converts a service.
pub fn service(s: &pb::Service) -> Result<Service, ConvertError> {
    let name = format!("{}/{}", s.namespace, s.hostname);
    Ok(Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        vips: s
            .addresses
            .iter()
            .map(|a| Ok((a.network.clone(), ip(&name, &a.address)?)))
            .collect::<Result<_, ConvertError>>()?,
        ports: ports(&name, &s.ports)?,
        subject_alt_names: s.subject_alt_names.clone(),
        waypoint: s
            .waypoint
            .as_ref()
            .map(|g| gateway(&name, g))
            .transpose()?
            .flatten(),
        // The wire carries endpoints on the workloads only.
        endpoints: Default::default(),
        load_balancer: s
            .load_balancing
            .as_ref()
            .map(|lb| load_balancer(&name, lb))
            .transpose()?,
        ip_families: match pb::IpFamilies::try_from(s.ip_families) {
            Ok(pb::IpFamilies::Automatic) => None,
            Ok(pb::IpFamilies::Ipv4Only) => Some(IpFamily::IPv4),
            Ok(pb::IpFamilies::Ipv6Only) => Some(IpFamily::IPv6),
            Ok(pb::IpFamilies::Dual) => Some(IpFamily::Dual),
            Err(_) => return Err(err(&name, format!("unknown IP families {}", s.ip_families))),
        },
        canonical: s.canonical,
    })
}

fn string_matches(v: &[sec::StringMatch]) -> Vec<StringMatch> {
    v.iter()
        .filter_map(|m| {
            Some(match m.match_type.as_ref()? {
                sec::string_match::MatchType::Exact(s) => StringMatch::Exact(s.clone()),
                sec::string_match::MatchType::Prefix(s) => StringMatch::Prefix(s.clone()),
                sec::string_match::MatchType::Suffix(s) => StringMatch::Suffix(s.clone()),
                sec::string_match::MatchType::Presence(_) => StringMatch::Presence,
            })
        })
        .collect()
}

fn nets(name: &str, v: &[sec::Address]) -> Result<Vec<IpNet>, ConvertError> {
    v.iter()
        .map(|a| {
            let addr = ip(name, &a.address)?;
            let len = u8::try_from(a.length)
                .map_err(|_| err(name, format!("prefix length {}", a.length)))?;
            IpNet::new(addr, len)
                .map_err(|_| err(name, format!("prefix /{len} longer than {addr}")))
        })
        .collect()
}

fn sas(v: &[sec::ServiceAccountMatch]) -> Vec<ServiceAccountMatch> {
    v.iter()
        .map(|m| ServiceAccountMatch {
            namespace: m.namespace.clone(),
            service_account: m.service_account.clone(),
        })
        .collect()
}

fn port_list(name: &str, v: &[u32]) -> Result<Vec<u16>, ConvertError> {
    v.iter().map(|p| port(name, *p)).collect()
}

/// Converts an authorization policy.
pub fn policy(p: &sec::Authorization) -> Result<Policy, ConvertError> {
    let name = format!("{}/{}", p.namespace, p.name);
    let n = name.as_str();
    Ok(Policy {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        scope: match sec::Scope::try_from(p.scope) {
            Ok(sec::Scope::Global) => PolicyScope::Global,
            Ok(sec::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector,
            Ok(sec::Scope::Namespace) => PolicyScope::Namespace,
            Err(_) => return Err(err(n, format!("unknown scope {}", p.scope))),
        },
        action: match sec::Action::try_from(p.action) {
            Ok(sec::Action::Allow) => PolicyAction::Allow,
            Ok(sec::Action::Deny) => PolicyAction::Deny,
            // An action this proxy does not know must not silently allow.
            Err(_) => return Err(err(n, format!("unknown action {}", p.action))),
        },
        rules: p
            .rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    clauses: r
                        .clauses
                        .iter()
                        .map(|c| {
                            Ok(Clause {
                                matches: c
                                    .matches
                                    .iter()
                                    .map(|m| {
                                        Ok(Match {
                                            namespaces: string_matches(&m.namespaces),
                                            not_namespaces: string_matches(&m.not_namespaces),
                                            principals: string_matches(&m.principals),
                                            not_principals: string_matches(&m.not_principals),
                                            source_ips: nets(n, &m.source_ips)?,
                                            not_source_ips: nets(n, &m.not_source_ips)?,
                                            destination_ips: nets(n, &m.destination_ips)?,
                                            not_destination_ips: nets(n, &m.not_destination_ips)?,
                                            destination_ports: port_list(n, &m.destination_ports)?,
                                            not_destination_ports: port_list(
                                                n,
                                                &m.not_destination_ports,
                                            )?,
                                            service_accounts: sas(&m.service_accounts),
                                            not_service_accounts: sas(&m.not_service_accounts),
                                        })
                                    })
                                    .collect::<Result<_, ConvertError>>()?,
                            })
                        })
                        .collect::<Result<_, ConvertError>>()?,
                })
            })
            .collect::<Result<_, ConvertError>>()?,
        dry_run: p.dry_run,
    })
}

/// What an `Address` resource holds.
#[derive(Debug, Clone)]
pub enum AddressKind {
    /// A workload.
    Workload(Box<Workload>),
    /// A service.
    Service(Box<Service>),
}

/// Converts an `Address` resource.
pub fn address(name: &str, a: &pb::Address) -> Result<AddressKind, ConvertError> {
    match &a.r#type {
        Some(pb::address::Type::Workload(w)) => Ok(AddressKind::Workload(Box::new(workload(w)?))),
        Some(pb::address::Type::Service(s)) => Ok(AddressKind::Service(Box::new(service(s)?))),
        None => Err(err(name, "address without workload or service")),
    }
}

/// Keeps a shared state up to date from `istio.workload.Address` deltas.
#[derive(Debug, Clone)]
pub struct AddressHandler(pub Arc<RwLock<MeshState>>);

impl Handler<pb::Address> for AddressHandler {
    fn apply(
        &mut self,
        updated: Vec<XdsResource<pb::Address>>,
        removed: Vec<String>,
    ) -> Result<(), HandlerError> {
        // Convert everything first: a bad resource rejects the whole
        // response and nothing changes.
        let converted = updated
            .iter()
            .map(|r| address(&r.name, &r.resource))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HandlerError::from(e.to_string()))?;
        let mut st = self
            .0
            .write()
            .map_err(|_| HandlerError::from("mesh state lock poisoned"))?;
        for name in &removed {
            st.remove_address(name);
        }
        for a in converted {
            match a {
                AddressKind::Workload(w) => st.insert_workload(*w),
                AddressKind::Service(s) => st.insert_service(*s),
            }
        }
        Ok(())
    }
}

/// Keeps a shared state up to date from `istio.security.Authorization` deltas.
#[derive(Debug, Clone)]
pub struct AuthorizationHandler(pub Arc<RwLock<MeshState>>);

impl Handler<sec::Authorization> for AuthorizationHandler {
    fn apply(
        &mut self,
        updated: Vec<XdsResource<sec::Authorization>>,
        removed: Vec<String>,
    ) -> Result<(), HandlerError> {
        let converted = updated
            .iter()
            .map(|r| policy(&r.resource))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HandlerError::from(e.to_string()))?;
        let mut st = self
            .0
            .write()
            .map_err(|_| HandlerError::from("mesh state lock poisoned"))?;
        for name in &removed {
            st.remove_policy(name);
        }
        for p in converted {
            st.insert_policy(p);
        }
        Ok(())
    }
}

/// The model back to the wire, for control planes and tests that serve a
/// [`crate::Config`] over xDS.
pub mod encode;

/// Where a proxy's mesh state comes from: ztunnel's local YAML, or delta
/// ADS (istiod) with wildcard subscriptions to Istio's `Address` and
/// `Authorization` resources.
#[derive(Debug)]
pub enum MeshSource {
    /// A local config, loaded once.
    Local(crate::Config),
    /// A control plane.
    Xds(Box<ambit_xds::AdsConfig>),
}

/// Why a [`MeshSource`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The mesh state's lock was poisoned by a panic.
    #[error("the mesh state lock is poisoned")]
    Poisoned,
    /// The ADS client could not be built.
    #[error(transparent)]
    Ads(#[from] ambit_xds::AdsError),
    /// The ADS client stopped before the first push was applied.
    #[error("the xDS client stopped before it was ready")]
    Stopped,
}

impl MeshSource {
    /// Fills `state`: a local config now; for xDS, spawns the client on the
    /// current Tokio runtime (it runs until `shutdown`, keeping `state` in
    /// step) and returns once the first push has been applied.
    pub async fn start(
        self,
        state: Arc<RwLock<MeshState>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), SourceError> {
        match self {
            Self::Local(config) => {
                state
                    .write()
                    .map_err(|_| SourceError::Poisoned)?
                    .load(config);
                Ok(())
            }
            Self::Xds(ads) => {
                let address = ads.address.clone();
                let client = ambit_xds::AdsClient::builder(*ads)
                    .watch::<pb::Address, _>(
                        ambit_xds::Subscription::Wildcard,
                        AddressHandler(state.clone()),
                    )
                    .watch::<sec::Authorization, _>(
                        ambit_xds::Subscription::Wildcard,
                        AuthorizationHandler(state),
                    )
                    .build()?;
                let mut ready = client.ready();
                tokio::spawn(client.run(shutdown));
                tracing::info!(%address, "waiting for the first xDS push");
                ready
                    .wait_for(|r| *r)
                    .await
                    .map(|_| ())
                    .map_err(|_| SourceError::Stopped)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    const MESH: &str = r#"
workloads:
- {uid: a, name: a, namespace: ns, serviceAccount: sa, workloadIps: ["10.0.0.1", "fd00::1"], protocol: HBONE, node: n1,
   services: {"ns/svc.example": {80: 8080}}, waypoint: {destination: {namespace: ns, hostname: wp.ns.svc}, hboneMtlsPort: 15008}}
services:
- {name: svc, namespace: ns, hostname: svc.example, vips: ["net1/10.96.0.1"], ports: {80: 8080}, subjectAltNames: ["spiffe://td/ns/ns/sa/x"]}
policies:
- {name: p, namespace: ns, scope: WorkloadSelector, action: Deny, dryRun: true,
   rules: [[[{principals: [{Prefix: td/}], notSourceIps: ["10.0.0.0/8"], destinationPorts: [80], serviceAccounts: [{namespace: ns, serviceAccount: sa}]}],
            [{notNamespaces: [{Presence: {}}]}]]]}
"#;

    #[test]
    fn round_trip_through_the_wire_types() {
        let c = Config::parse(MESH, "t").expect("parse");
        for w in &c.workloads {
            let a = encode::workload(w);
            match address(&w.uid, &a).expect("decode") {
                AddressKind::Workload(back) => {
                    // The wire has no workload type string in our model; compare the rest.
                    assert_eq!(
                        Workload {
                            workload_type: String::new(),
                            ..*back
                        },
                        *w
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        for s in &c.services {
            match address(&s.key(), &encode::service(s)).expect("decode") {
                AddressKind::Service(back) => assert_eq!(*back, *s),
                other => panic!("{other:?}"),
            }
        }
        for p in &c.policies {
            assert_eq!(policy(&encode::policy(p)).expect("decode"), *p);
        }
    }

    #[test]
    fn bad_resources_are_named() {
        let mut w = pb::Workload {
            uid: "bad".into(),
            addresses: vec![vec![1, 2, 3]],
            ..Default::default()
        };
        let e = workload(&w).expect_err("3-byte address");
        assert!(
            e.to_string().contains("bad") && e.to_string().contains("3 bytes"),
            "{e}"
        );
        w.addresses.clear();
        w.uid.clear();
        assert!(workload(&w).is_err(), "uid required");
        let p = sec::Authorization {
            name: "x".into(),
            namespace: "y".into(),
            action: 7,
            ..Default::default()
        };
        assert!(
            policy(&p)
                .expect_err("unknown action")
                .to_string()
                .contains("y/x")
        );
        let p = sec::Authorization {
            rules: vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match {
                        source_ips: vec![sec::Address {
                            address: vec![10, 0, 0, 0],
                            length: 40,
                        }],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        };
        assert!(policy(&p).is_err(), "prefix longer than address");
    }

    #[test]
    fn handlers_apply_all_or_nothing() {
        let st = Arc::new(RwLock::new(MeshState::new()));
        let mut h = AddressHandler(st.clone());
        let good = XdsResource {
            name: "a".into(),
            version: "1".into(),
            resource: encode::workload(&Workload {
                uid: "a".into(),
                addresses: vec!["10.0.0.1".parse().expect("ip")],
                ..Workload::default()
            }),
        };
        let bad = XdsResource {
            name: "b".into(),
            version: "1".into(),
            resource: pb::Address::default(),
        };
        assert!(h.apply(vec![good.clone(), bad], vec![]).is_err());
        assert_eq!(st.read().expect("lock").counts().0, 0, "nothing applied");
        h.apply(vec![good], vec![]).expect("apply");
        assert_eq!(st.read().expect("lock").counts().0, 1);
        h.apply(vec![], vec!["a".into()]).expect("remove");
        assert_eq!(st.read().expect("lock").counts().0, 0);
    }

    #[test]
    fn a_local_source_loads_at_once_and_a_bad_xds_one_fails_to_build() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let st = Arc::new(RwLock::new(MeshState::new()));
        let config = crate::Config::parse(
            "workloads:\n- {uid: a, name: a, namespace: ns, workloadIps: [10.0.0.1]}\n",
            "t",
        )
        .expect("config");
        rt.block_on(MeshSource::Local(config).start(st.clone(), async {}))
            .expect("local");
        assert_eq!(st.read().expect("lock").counts().0, 1);
        let bad = ambit_xds::AdsConfig::new(
            "ftp://nowhere:1",
            ambit_xds::NodeIdentity::new("10.0.0.1", "p", "ns", "n"),
        );
        let e = rt
            .block_on(MeshSource::Xds(Box::new(bad)).start(st, async {}))
            .expect_err("ftp is no xds address");
        assert!(matches!(e, SourceError::Ads(_)), "{e}");
    }
}
