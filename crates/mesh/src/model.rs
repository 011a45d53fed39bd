//! The mesh's data model: workloads, services and authorization policies,
//! shaped after Istio's workload API (`istio.workload`, `istio.security`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ambit_identity::Identity;
use ipnet::IpNet;

/// How a workload receives mesh traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TunnelProtocol {
    /// Plain TCP: the workload is not in the mesh (or opted out).
    #[default]
    None,
    /// HBONE: HTTP/2 CONNECT over mTLS to port 15008.
    Hbone,
    /// Istio's legacy sidecar mTLS.
    LegacyIstioMtls,
}

/// Whether a workload may receive traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HealthStatus {
    /// Ready.
    #[default]
    Healthy,
    /// Not ready: never picked as an endpoint.
    Unhealthy,
}

/// A port of a service and the workload port it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port {
    /// The service port.
    pub service_port: u16,
    /// The workload port (0 means "the same as the service port").
    pub target_port: u16,
}

impl Port {
    /// The port traffic to `service_port` reaches on the workload.
    pub fn target(&self) -> u16 {
        if self.target_port == 0 {
            self.service_port
        } else {
            self.target_port
        }
    }
}

/// Where a waypoint (or network gateway) is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GatewayAddress {
    /// A service by `namespace/hostname`.
    Hostname {
        /// Namespace.
        namespace: String,
        /// Hostname.
        hostname: String,
        /// The HBONE port (15008).
        hbone_port: u16,
    },
    /// An address.
    Address {
        /// Network.
        network: String,
        /// IP.
        ip: IpAddr,
        /// The HBONE port (15008).
        hbone_port: u16,
    },
}

/// Whether a workload has its own network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NetworkMode {
    /// Its own addresses (a normal pod).
    #[default]
    Standard,
    /// The node's network: its addresses are the node's, so they do not
    /// identify the workload.
    HostNetwork,
}

/// What the application itself speaks inside a tunnel it terminates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AppTunnelProtocol {
    /// Plain bytes.
    #[default]
    None,
    /// A PROXY protocol header precedes the bytes.
    Proxy,
}

/// A tunnel the workload terminates itself (Istio's `ApplicationTunnel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ApplicationTunnel {
    /// Protocol spoken to the application.
    pub protocol: AppTunnelProtocol,
    /// Port to deliver to; `None` keeps the original port.
    pub port: Option<u16>,
}

/// A workload: a pod, VM or other endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Unique id, e.g. `cluster1//v1/Pod/default/sleep-abc`.
    pub uid: String,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// IP addresses.
    pub addresses: Vec<IpAddr>,
    /// DNS hostname, for workloads without addresses.
    pub hostname: String,
    /// Network the addresses belong to ("" is the default network).
    pub network: String,
    /// How the workload receives mesh traffic.
    pub protocol: TunnelProtocol,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Service account.
    pub service_account: String,
    /// The waypoint in front of this workload.
    pub waypoint: Option<GatewayAddress>,
    /// Network gateway for cross-network traffic.
    pub network_gateway: Option<GatewayAddress>,
    /// The node it runs on.
    pub node: String,
    /// Canonical service name (app label).
    pub canonical_name: String,
    /// Canonical revision (version label).
    pub canonical_revision: String,
    /// Workload kind: Deployment, Pod, Job, CronJob.
    pub workload_type: String,
    /// Name of the owning workload (deployment name).
    pub workload_name: String,
    /// Services this workload backs: `namespace/hostname` → ports.
    pub services: BTreeMap<String, Vec<Port>>,
    /// Policies (`namespace/name`) selecting this workload.
    pub authorization_policies: Vec<String>,
    /// Health.
    pub status: HealthStatus,
    /// Cluster.
    pub cluster_id: String,
    /// Locality: region/zone/subzone (`None` when every part is empty).
    pub locality: Option<Locality>,
    /// Whether the workload has its own network namespace.
    pub network_mode: NetworkMode,
    /// The workload speaks HBONE itself: forward HBONE to it as is.
    pub native_tunnel: bool,
    /// A tunnel the workload terminates itself.
    pub application_tunnel: Option<ApplicationTunnel>,
    /// Relative weight among a service's endpoints (Istio's default is 1).
    pub capacity: u32,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            uid: String::new(),
            name: String::new(),
            namespace: String::new(),
            addresses: Vec::new(),
            hostname: String::new(),
            network: String::new(),
            protocol: TunnelProtocol::default(),
            trust_domain: String::new(),
            service_account: String::new(),
            waypoint: None,
            network_gateway: None,
            node: String::new(),
            canonical_name: String::new(),
            canonical_revision: String::new(),
            workload_type: String::new(),
            workload_name: String::new(),
            services: BTreeMap::new(),
            authorization_policies: Vec::new(),
            status: HealthStatus::default(),
            cluster_id: String::new(),
            locality: None,
            network_mode: NetworkMode::default(),
            native_tunnel: false,
            application_tunnel: None,
            capacity: 1,
        }
    }
}

/// Where a workload runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Subzone.
    pub subzone: String,
}

impl Workload {
    /// The workload's SPIFFE identity, if its fields form a valid one.
    pub fn identity(&self) -> Option<Identity> {
        let td = if self.trust_domain.is_empty() {
            "cluster.local"
        } else {
            &self.trust_domain
        };
        let sa = if self.service_account.is_empty() {
            "default"
        } else {
            &self.service_account
        };
        Identity::new(td, &self.namespace, sa).ok()
    }
}

/// A topology level endpoints are matched at when choosing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoadBalancerScope {
    /// Same region.
    Region,
    /// Same zone.
    Zone,
    /// Same subzone.
    Subzone,
    /// Same node.
    Node,
    /// Same cluster.
    Cluster,
    /// Same network.
    Network,
}

/// How `routing_preferences` are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LoadBalancerMode {
    /// Ignore the preferences (Istio's `UNSPECIFIED_MODE`).
    #[default]
    Standard,
    /// Only endpoints matching every preference; none means failure.
    Strict,
    /// Prefer endpoints matching the most preferences, in order.
    Failover,
    /// Choose no endpoint: send to the original destination address.
    Passthrough,
}

/// Whether unhealthy endpoints may be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LoadBalancerHealthPolicy {
    /// Healthy endpoints only.
    #[default]
    OnlyHealthy,
    /// Any endpoint.
    AllowAll,
}

/// A service's endpoint selection settings (Istio's `LoadBalancing`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LoadBalancer {
    /// Topology levels to match, most important first.
    pub routing_preferences: Vec<LoadBalancerScope>,
    /// How the preferences apply.
    pub mode: LoadBalancerMode,
    /// Whether unhealthy endpoints may be chosen.
    pub health_policy: LoadBalancerHealthPolicy,
}

/// Which address families a service uses (unset means automatic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    /// IPv4 and IPv6.
    Dual,
    /// IPv4 only.
    IPv4,
    /// IPv6 only.
    IPv6,
}

/// An endpoint stated on the service itself rather than by a workload's
/// `services` map (ztunnel's local config allows both).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ServiceEndpoint {
    /// Service port → workload port overrides for this endpoint.
    pub ports: Vec<Port>,
    /// Health of the endpoint.
    pub status: HealthStatus,
}

/// A service: a hostname and VIPs, backed by workloads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Hostname, e.g. `productpage.default.svc.cluster.local`.
    pub hostname: String,
    /// VIPs as `(network, ip)`.
    pub vips: Vec<(String, IpAddr)>,
    /// Ports.
    pub ports: Vec<Port>,
    /// Identities its endpoints may present (besides their own).
    pub subject_alt_names: Vec<String>,
    /// The waypoint in front of the service.
    pub waypoint: Option<GatewayAddress>,
    /// Endpoints stated on the service, by workload uid (besides the
    /// workloads whose `services` map names it).
    pub endpoints: BTreeMap<String, ServiceEndpoint>,
    /// Endpoint selection settings.
    pub load_balancer: Option<LoadBalancer>,
    /// Address families (`None`: automatic).
    pub ip_families: Option<IpFamily>,
    /// The canonical service among those sharing the hostname.
    pub canonical: bool,
}

impl Service {
    /// The key workloads use in their `services` map: `namespace/hostname`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// Where a policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PolicyScope {
    /// Every workload in the mesh.
    Global,
    /// Every workload in the policy's namespace.
    #[default]
    Namespace,
    /// Workloads that list the policy in `authorization_policies`.
    WorkloadSelector,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PolicyAction {
    /// Allow.
    #[default]
    Allow,
    /// Deny.
    Deny,
}

/// A string match on an identity or other string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Any value, as long as there is one.
    Presence,
}

impl StringMatch {
    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Self::Exact(x) => s == x,
            Self::Prefix(x) => s.starts_with(x.as_str()),
            Self::Suffix(x) => s.ends_with(x.as_str()),
            Self::Presence => !s.is_empty(),
        }
    }
}

/// A service-account match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccountMatch {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

/// One match: every non-empty field must hold; within a positive field any
/// value may match, within a negative field none may.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// Source namespaces.
    pub namespaces: Vec<StringMatch>,
    /// Not these source namespaces.
    pub not_namespaces: Vec<StringMatch>,
    /// Source principals (`td/ns/NS/sa/SA`).
    pub principals: Vec<StringMatch>,
    /// Not these principals.
    pub not_principals: Vec<StringMatch>,
    /// Source IP ranges.
    pub source_ips: Vec<IpNet>,
    /// Not these source ranges.
    pub not_source_ips: Vec<IpNet>,
    /// Destination IP ranges.
    pub destination_ips: Vec<IpNet>,
    /// Not these destination ranges.
    pub not_destination_ips: Vec<IpNet>,
    /// Destination ports.
    pub destination_ports: Vec<u16>,
    /// Not these destination ports.
    pub not_destination_ports: Vec<u16>,
    /// Source service accounts.
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Not these service accounts.
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// A clause: matches when any of its matches does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Clause {
    /// The alternatives.
    pub matches: Vec<Match>,
}

/// A rule: matches when all of its clauses do (an empty rule matches all).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// The conjuncts.
    pub clauses: Vec<Clause>,
}

/// An authorization policy (`istio.security.Authorization`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Scope.
    pub scope: PolicyScope,
    /// Action.
    pub action: PolicyAction,
    /// Rules: the policy matches when any rule does.
    pub rules: Vec<Rule>,
    /// Evaluated and logged, never enforced.
    pub dry_run: bool,
}

impl Policy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
