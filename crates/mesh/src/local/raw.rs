//! The serde shapes of ztunnel's local config (and of the state part of its
//! `/config_dump`, which uses the same names), and their conversion into
//! the model. Enum values take ztunnel's spelling and, as aliases, the
//! protobuf one (`HostNetwork` / `HOST_NETWORK`).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::model::{
    AppTunnelProtocol, ApplicationTunnel, Clause, GatewayAddress, HealthStatus, IpFamily,
    LoadBalancer, LoadBalancerHealthPolicy, LoadBalancerMode, LoadBalancerScope, Locality, Match,
    NetworkMode, Policy, PolicyAction, PolicyScope, Port, Rule, Service, ServiceAccountMatch,
    ServiceEndpoint, StringMatch, TunnelProtocol, Workload,
};

/// A value written either as a map or as a list; ztunnel's local config
/// and its dump differ this way for a workload's `services`.
#[derive(Debug)]
pub(super) enum MapOrList<M, L> {
    /// The map form.
    Map(M),
    /// The list form.
    List(L),
}

impl<M: Default, L> Default for MapOrList<M, L> {
    fn default() -> Self {
        Self::Map(M::default())
    }
}

impl<'de, M: Deserialize<'de> + Default, L: Deserialize<'de>> Deserialize<'de> for MapOrList<M, L> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<M, L>(PhantomData<(M, L)>);
        impl<'de, M: Deserialize<'de> + Default, L: Deserialize<'de>> Visitor<'de> for V<M, L> {
            type Value = MapOrList<M, L>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map or a list")
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                M::deserialize(MapAccessDeserializer::new(a)).map(MapOrList::Map)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                L::deserialize(SeqAccessDeserializer::new(a)).map(MapOrList::List)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MapOrList::Map(M::default()))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A port number as a map key: YAML writes `80`, JSON (the dump) `"80"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct PortNum(pub(super) u16);

impl<'de> Deserialize<'de> for PortNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortNum;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortNum, E> {
                u16::try_from(v)
                    .map(PortNum)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortNum, E> {
                u16::try_from(v)
                    .map(PortNum)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortNum, E> {
                v.parse()
                    .map(PortNum)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) type PortMap = BTreeMap<PortNum, PortNum>;

fn ports(m: PortMap) -> Vec<Port> {
    m.into_iter()
        .map(|(s, t)| Port {
            service_port: s.0,
            target_port: t.0,
        })
        .collect()
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LocalConfig {
    #[serde(default)]
    pub(super) workloads: Vec<LocalWorkload>,
    #[serde(default)]
    pub(super) policies: Vec<LocalPolicy>,
    #[serde(default)]
    pub(super) services: Vec<LocalService>,
    /// Only in dumps: endpoints of services not (yet) known, by
    /// `namespace/hostname`, then workload uid.
    #[serde(default)]
    pub(super) staged_services: BTreeMap<String, BTreeMap<String, LocalEndpoint>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LocalWorkload {
    pub(super) uid: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    trust_domain: String,
    #[serde(default)]
    workload_ips: Vec<IpAddr>,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    protocol: Option<LocalProtocol>,
    #[serde(default)]
    network_mode: Option<LocalNetworkMode>,
    #[serde(default)]
    node: String,
    #[serde(default)]
    network: String,
    /// Local config: `namespace/hostname` → port map; dump: a list of
    /// `namespace/hostname` (the ports are in the service's endpoints).
    #[serde(default)]
    services: MapOrList<BTreeMap<String, PortMap>, Vec<String>>,
    #[serde(default)]
    waypoint: Option<LocalGateway>,
    #[serde(default)]
    network_gateway: Option<LocalGateway>,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: String,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    native_tunnel: bool,
    #[serde(default)]
    application_tunnel: Option<LocalAppTunnel>,
    #[serde(default)]
    authorization_policies: Vec<String>,
    #[serde(default)]
    status: Option<LocalStatus>,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    locality: Option<LocalLocality>,
    #[serde(default)]
    capacity: Option<u32>,
}

#[derive(Debug, Deserialize)]
enum LocalProtocol {
    #[serde(rename = "HBONE")]
    Hbone,
    #[serde(rename = "TCP", alias = "NONE")]
    Tcp,
    #[serde(rename = "LegacyIstioMtls", alias = "LEGACY_ISTIO_MTLS")]
    LegacyIstioMtls,
}

#[derive(Debug, Deserialize)]
enum LocalNetworkMode {
    #[serde(alias = "STANDARD")]
    Standard,
    #[serde(alias = "HOST_NETWORK")]
    HostNetwork,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) enum LocalStatus {
    #[serde(alias = "HEALTHY")]
    Healthy,
    #[serde(alias = "UNHEALTHY")]
    Unhealthy,
}

fn status(s: Option<LocalStatus>) -> HealthStatus {
    match s {
        Some(LocalStatus::Unhealthy) => HealthStatus::Unhealthy,
        Some(LocalStatus::Healthy) | None => HealthStatus::Healthy,
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalAppTunnel {
    #[serde(default)]
    protocol: Option<LocalAppTunnelProtocol>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
enum LocalAppTunnelProtocol {
    #[serde(rename = "NONE", alias = "None")]
    None,
    #[serde(rename = "PROXY", alias = "Proxy")]
    Proxy,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalLocality {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    subzone: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalGateway {
    destination: LocalDestination,
    #[serde(default = "default_hbone_port")]
    hbone_mtls_port: u16,
}

fn default_hbone_port() -> u16 {
    15008
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LocalDestination {
    /// `network/ip`, or (ztunnel's form for hostnames) `namespace/hostname`.
    Text(String),
    /// `{namespace, hostname}`.
    Hostname(LocalNamespacedHostname),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalNamespacedHostname {
    namespace: String,
    hostname: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LocalService {
    name: String,
    pub(super) namespace: String,
    pub(super) hostname: String,
    #[serde(default)]
    vips: Vec<String>,
    #[serde(default)]
    ports: PortMap,
    /// A map by workload uid (ztunnel's shape) or a list.
    #[serde(default)]
    endpoints: MapOrList<BTreeMap<String, LocalEndpoint>, Vec<LocalEndpoint>>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    #[serde(default)]
    waypoint: Option<LocalGateway>,
    #[serde(default)]
    load_balancer: Option<LocalLoadBalancer>,
    #[serde(default)]
    ip_families: Option<LocalIpFamily>,
    #[serde(default)]
    canonical: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LocalEndpoint {
    #[serde(default)]
    workload_uid: Option<String>,
    #[serde(default)]
    port: PortMap,
    #[serde(default)]
    status: Option<LocalStatus>,
}

impl LocalEndpoint {
    /// The endpoint under map key `key` (`None` in the list form): its uid
    /// and model.
    pub(super) fn into_model(
        self,
        key: Option<String>,
    ) -> Result<(String, ServiceEndpoint), String> {
        let uid = match (key, self.workload_uid) {
            (Some(k), Some(u)) if k != u => {
                return Err(format!("endpoint {k:?} has workloadUid {u:?}"));
            }
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => return Err("endpoint without workloadUid".into()),
        };
        if uid.is_empty() {
            return Err("endpoint with an empty workloadUid".into());
        }
        Ok((
            uid,
            ServiceEndpoint {
                ports: ports(self.port),
                status: status(self.status),
            },
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalLoadBalancer {
    #[serde(default)]
    routing_preferences: Vec<LocalScopePref>,
    #[serde(default)]
    mode: Option<LocalLbMode>,
    #[serde(default)]
    health_policy: Option<LocalHealthPolicy>,
}

#[derive(Debug, Deserialize)]
enum LocalScopePref {
    #[serde(alias = "REGION")]
    Region,
    #[serde(alias = "ZONE")]
    Zone,
    #[serde(alias = "SUBZONE")]
    Subzone,
    #[serde(alias = "NODE")]
    Node,
    #[serde(alias = "CLUSTER")]
    Cluster,
    #[serde(alias = "NETWORK")]
    Network,
}

#[derive(Debug, Deserialize)]
enum LocalLbMode {
    #[serde(alias = "UNSPECIFIED_MODE", alias = "UNSPECIFIED")]
    Standard,
    #[serde(alias = "STRICT")]
    Strict,
    #[serde(alias = "FAILOVER")]
    Failover,
    #[serde(alias = "PASSTHROUGH")]
    Passthrough,
}

#[derive(Debug, Deserialize)]
enum LocalHealthPolicy {
    #[serde(alias = "ONLY_HEALTHY")]
    OnlyHealthy,
    #[serde(alias = "ALLOW_ALL")]
    AllowAll,
}

#[derive(Debug, Deserialize)]
enum LocalIpFamily {
    #[serde(alias = "DUAL")]
    Dual,
    #[serde(alias = "IPV4_ONLY")]
    IPv4,
    #[serde(alias = "IPV6_ONLY")]
    IPv6,
    #[serde(alias = "AUTOMATIC")]
    Automatic,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LocalPolicy {
    name: String,
    namespace: String,
    #[serde(default)]
    scope: LocalScope,
    #[serde(default)]
    action: LocalAction,
    /// rules → clauses → matches.
    #[serde(default)]
    rules: Vec<Vec<Vec<LocalMatch>>>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Default, Deserialize)]
enum LocalScope {
    #[serde(alias = "GLOBAL")]
    Global,
    #[default]
    #[serde(alias = "NAMESPACE")]
    Namespace,
    #[serde(alias = "WORKLOAD_SELECTOR")]
    WorkloadSelector,
}

#[derive(Debug, Default, Deserialize)]
enum LocalAction {
    #[default]
    #[serde(alias = "ALLOW")]
    Allow,
    #[serde(alias = "DENY")]
    Deny,
}

#[derive(Debug, Deserialize)]
enum LocalStringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `{Presence: {}}`, or `{Presence: []}` as ztunnel's dump writes it.
    Presence(#[serde(default)] de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalSaMatch {
    namespace: String,
    service_account: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalMatch {
    #[serde(default)]
    namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    not_namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    principals: Vec<LocalStringMatch>,
    #[serde(default)]
    not_principals: Vec<LocalStringMatch>,
    #[serde(default)]
    source_ips: Vec<IpNet>,
    #[serde(default)]
    not_source_ips: Vec<IpNet>,
    #[serde(default)]
    destination_ips: Vec<IpNet>,
    #[serde(default)]
    not_destination_ips: Vec<IpNet>,
    #[serde(default)]
    destination_ports: Vec<u16>,
    #[serde(default)]
    not_destination_ports: Vec<u16>,
    #[serde(default)]
    service_accounts: Vec<LocalSaMatch>,
    #[serde(default)]
    not_service_accounts: Vec<LocalSaMatch>,
}

/// Parses `network/ip` (the network may be empty: `/10.0.0.1`).
pub fn network_address(s: &str) -> Result<(String, IpAddr), String> {
    let (net, ip) = s
        .rsplit_once('/')
        .ok_or_else(|| format!("{s:?} is not network/ip"))?;
    let ip = ip
        .parse()
        .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
    Ok((net.to_owned(), ip))
}

fn gateway(g: LocalGateway) -> Result<GatewayAddress, String> {
    let hbone_port = g.hbone_mtls_port;
    Ok(match g.destination {
        LocalDestination::Text(t) => match network_address(&t) {
            Ok((network, ip)) => GatewayAddress::Address {
                network,
                ip,
                hbone_port,
            },
            // Not `network/ip`: ztunnel's `namespace/hostname`.
            Err(_) => match t.split_once('/') {
                Some((namespace, hostname)) if !hostname.is_empty() => GatewayAddress::Hostname {
                    namespace: namespace.to_owned(),
                    hostname: hostname.to_owned(),
                    hbone_port,
                },
                _ => {
                    return Err(format!(
                        "gateway destination {t:?} is neither network/ip nor namespace/hostname"
                    ));
                }
            },
        },
        LocalDestination::Hostname(h) => GatewayAddress::Hostname {
            namespace: h.namespace,
            hostname: h.hostname,
            hbone_port,
        },
    })
}

impl LocalWorkload {
    /// The model; errors name no item (the caller does).
    pub(super) fn into_model(self) -> Result<Workload, String> {
        if self.uid.is_empty() {
            return Err("uid must not be empty".into());
        }
        let services = match self.services {
            MapOrList::Map(m) => m.into_iter().map(|(k, p)| (k, ports(p))).collect(),
            MapOrList::List(l) => l.into_iter().map(|k| (k, Vec::new())).collect(),
        };
        let locality = self
            .locality
            .map(|l| Locality {
                region: l.region,
                zone: l.zone,
                subzone: l.subzone,
            })
            .filter(|l| *l != Locality::default());
        let w = Workload {
            uid: self.uid,
            name: self.name,
            namespace: self.namespace,
            addresses: self.workload_ips,
            hostname: self.hostname,
            network: self.network,
            protocol: match self.protocol {
                Some(LocalProtocol::Hbone) => TunnelProtocol::Hbone,
                Some(LocalProtocol::LegacyIstioMtls) => TunnelProtocol::LegacyIstioMtls,
                Some(LocalProtocol::Tcp) | None => TunnelProtocol::None,
            },
            trust_domain: self.trust_domain,
            service_account: self.service_account,
            waypoint: self.waypoint.map(gateway).transpose()?,
            network_gateway: self.network_gateway.map(gateway).transpose()?,
            node: self.node,
            canonical_name: self.canonical_name,
            canonical_revision: self.canonical_revision,
            workload_type: self.workload_type,
            workload_name: self.workload_name,
            services,
            authorization_policies: self.authorization_policies,
            status: status(self.status),
            cluster_id: self.cluster_id,
            locality,
            network_mode: match self.network_mode {
                Some(LocalNetworkMode::HostNetwork) => NetworkMode::HostNetwork,
                Some(LocalNetworkMode::Standard) | None => NetworkMode::Standard,
            },
            native_tunnel: self.native_tunnel,
            application_tunnel: self.application_tunnel.map(|t| ApplicationTunnel {
                protocol: match t.protocol {
                    Some(LocalAppTunnelProtocol::Proxy) => AppTunnelProtocol::Proxy,
                    Some(LocalAppTunnelProtocol::None) | None => AppTunnelProtocol::None,
                },
                port: t.port.filter(|p| *p != 0),
            }),
            capacity: self.capacity.unwrap_or(1),
        };
        if w.addresses.is_empty() && w.hostname.is_empty() && w.network_gateway.is_none() {
            return Err("needs workloadIps, hostname or networkGateway".into());
        }
        Ok(w)
    }
}

impl LocalService {
    /// The model; errors name no item (the caller does).
    pub(super) fn into_model(self) -> Result<Service, String> {
        let vips = self
            .vips
            .iter()
            .map(|v| network_address(v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut endpoints = BTreeMap::new();
        let listed: Vec<(Option<String>, LocalEndpoint)> = match self.endpoints {
            MapOrList::Map(m) => m.into_iter().map(|(k, e)| (Some(k), e)).collect(),
            MapOrList::List(l) => l.into_iter().map(|e| (None, e)).collect(),
        };
        for (key, e) in listed {
            let (uid, ep) = e.into_model(key)?;
            if endpoints.insert(uid.clone(), ep).is_some() {
                return Err(format!("endpoint {uid:?} listed twice"));
            }
        }
        Ok(Service {
            name: self.name,
            namespace: self.namespace,
            hostname: self.hostname,
            vips,
            ports: ports(self.ports),
            subject_alt_names: self.subject_alt_names,
            waypoint: self.waypoint.map(gateway).transpose()?,
            endpoints,
            load_balancer: self.load_balancer.map(|lb| LoadBalancer {
                routing_preferences: lb
                    .routing_preferences
                    .into_iter()
                    .map(|s| match s {
                        LocalScopePref::Region => LoadBalancerScope::Region,
                        LocalScopePref::Zone => LoadBalancerScope::Zone,
                        LocalScopePref::Subzone => LoadBalancerScope::Subzone,
                        LocalScopePref::Node => LoadBalancerScope::Node,
                        LocalScopePref::Cluster => LoadBalancerScope::Cluster,
                        LocalScopePref::Network => LoadBalancerScope::Network,
                    })
                    .collect(),
                mode: match lb.mode {
                    Some(LocalLbMode::Standard) | None => LoadBalancerMode::Standard,
                    Some(LocalLbMode::Strict) => LoadBalancerMode::Strict,
                    Some(LocalLbMode::Failover) => LoadBalancerMode::Failover,
                    Some(LocalLbMode::Passthrough) => LoadBalancerMode::Passthrough,
                },
                health_policy: match lb.health_policy {
                    Some(LocalHealthPolicy::OnlyHealthy) | None => {
                        LoadBalancerHealthPolicy::OnlyHealthy
                    }
                    Some(LocalHealthPolicy::AllowAll) => LoadBalancerHealthPolicy::AllowAll,
                },
            }),
            ip_families: match self.ip_families {
                Some(LocalIpFamily::Dual) => Some(IpFamily::Dual),
                Some(LocalIpFamily::IPv4) => Some(IpFamily::IPv4),
                Some(LocalIpFamily::IPv6) => Some(IpFamily::IPv6),
                Some(LocalIpFamily::Automatic) | None => None,
            },
            canonical: self.canonical,
        })
    }
}

fn sm(v: Vec<LocalStringMatch>) -> Vec<StringMatch> {
    v.into_iter()
        .map(|m| match m {
            LocalStringMatch::Exact(s) => StringMatch::Exact(s),
            LocalStringMatch::Prefix(s) => StringMatch::Prefix(s),
            LocalStringMatch::Suffix(s) => StringMatch::Suffix(s),
            LocalStringMatch::Presence(_) => StringMatch::Presence,
        })
        .collect()
}

fn sa(v: Vec<LocalSaMatch>) -> Vec<ServiceAccountMatch> {
    v.into_iter()
        .map(|m| ServiceAccountMatch {
            namespace: m.namespace,
            service_account: m.service_account,
        })
        .collect()
}

fn convert_match(m: LocalMatch) -> Match {
    Match {
        namespaces: sm(m.namespaces),
        not_namespaces: sm(m.not_namespaces),
        principals: sm(m.principals),
        not_principals: sm(m.not_principals),
        source_ips: m.source_ips,
        not_source_ips: m.not_source_ips,
        destination_ips: m.destination_ips,
        not_destination_ips: m.not_destination_ips,
        destination_ports: m.destination_ports,
        not_destination_ports: m.not_destination_ports,
        service_accounts: sa(m.service_accounts),
        not_service_accounts: sa(m.not_service_accounts),
    }
}

impl LocalPolicy {
    /// The model.
    pub(super) fn into_model(self) -> Policy {
        Policy {
            name: self.name,
            namespace: self.namespace,
            scope: match self.scope {
                LocalScope::Global => PolicyScope::Global,
                LocalScope::Namespace => PolicyScope::Namespace,
                LocalScope::WorkloadSelector => PolicyScope::WorkloadSelector,
            },
            action: match self.action {
                LocalAction::Allow => PolicyAction::Allow,
                LocalAction::Deny => PolicyAction::Deny,
            },
            rules: self
                .rules
                .into_iter()
                .map(|clauses| Rule {
                    clauses: clauses
                        .into_iter()
                        .map(|ms| Clause {
                            matches: ms.into_iter().map(convert_match).collect(),
                        })
                        .collect(),
                })
                .collect(),
            dry_run: self.dry_run,
        }
    }
}
