//! Choosing a service endpoint for a client, with istio/ztunnel's rules.
//!
//! A service's load balancer (Istio's `LoadBalancing`) decides:
//!
//! - `PASSTHROUGH`: no endpoint is chosen; the connection goes to its
//!   original destination ([`Pick::OriginalDestination`]).
//! - Health: only healthy endpoints, unless the health policy is
//!   `ALLOW_ALL`.
//! - Routing preferences with `STRICT` or `FAILOVER`: an endpoint's rank is
//!   the number of leading preferences (in order) on which it matches the
//!   client — the first mismatch ends the count, so `[NETWORK, REGION, ZONE]`
//!   ranks "same network and region, other zone" 2 and "other network, same
//!   region" 0. `STRICT` keeps only endpoints matching every preference;
//!   `FAILOVER` keeps those of the highest rank present. Without a load
//!   balancer, or in `UNSPECIFIED_MODE`, preferences are ignored. Locality
//!   parts compare as strings, a missing locality as empty ones (as ztunnel
//!   does, so two workloads without a region share the "same region").
//! - Among the kept endpoints, one is drawn at random, weighted by the
//!   workload's capacity: capacity 0 is never drawn, and when every kept
//!   endpoint has capacity 0 there is no endpoint (ztunnel's weighted choice
//!   fails the same way).
//!
//! Reachability, also ztunnel's: a workload without addresses or hostname is
//! only eligible through its network gateway, from another network. Address
//! family: the endpoint's address is one its service's `ipFamilies` accept,
//! preferring the family of the original destination; a workload with
//! addresses but none the service accepts is not eligible (ztunnel picks it
//! and then fails the connection; here another endpoint is picked).
//!
//! `trafficDistribution: PreferClose` reaches the data plane as a plain load
//! balancer ([`LoadBalancer::prefer_close`]): ztunnel has no notion of it.
//!
//! Selection makes one pass over the endpoints, allocates nothing but the
//! service key, and clones only the chosen workload's `Arc`.

use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{
    HealthStatus, IpFamily, LoadBalancer, LoadBalancerHealthPolicy, LoadBalancerMode,
    LoadBalancerScope, Port, Service, ServiceEndpoint, Workload,
};
use crate::state::{Endpoint, MeshState};

/// Who an endpoint is chosen for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Client<'a> {
    /// The source workload, whose network, locality, node and cluster the
    /// routing preferences compare endpoints with. Without one, only the
    /// `Network` scope can match (against [`Client::network`]).
    pub source: Option<&'a Workload>,
    /// The network the connection arrived on, used when there is no source
    /// workload ("" is the default network).
    pub network: &'a str,
    /// The original destination address (a VIP): its family is preferred
    /// when the endpoint has addresses of both.
    pub destination: Option<IpAddr>,
}

impl<'a> Client<'a> {
    /// A client on `network`, with no known source workload or destination.
    pub fn new(network: &'a str) -> Self {
        Self {
            source: None,
            network,
            destination: None,
        }
    }

    /// With the source workload (if known).
    pub fn with_source(mut self, source: Option<&'a Workload>) -> Self {
        self.source = source;
        self
    }

    /// With the original destination address.
    pub fn with_destination(mut self, destination: IpAddr) -> Self {
        self.destination = Some(destination);
        self
    }

    /// The client's network: its source workload's, else [`Client::network`].
    pub fn network(&self) -> &'a str {
        self.source.map_or(self.network, |w| w.network.as_str())
    }

    /// Whether `w` matches the client at `scope`.
    fn matches(&self, scope: LoadBalancerScope, w: &Workload) -> bool {
        let Some(src) = self.source else {
            return scope == LoadBalancerScope::Network && self.network == w.network;
        };
        match scope {
            LoadBalancerScope::Region => region(src) == region(w),
            LoadBalancerScope::Zone => zone(src) == zone(w),
            LoadBalancerScope::Subzone => subzone(src) == subzone(w),
            LoadBalancerScope::Node => src.node == w.node,
            LoadBalancerScope::Cluster => src.cluster_id == w.cluster_id,
            LoadBalancerScope::Network => src.network == w.network,
        }
    }

    /// How many leading `preferences` `w` matches.
    fn rank(&self, preferences: &[LoadBalancerScope], w: &Workload) -> usize {
        preferences
            .iter()
            .take_while(|s| self.matches(**s, w))
            .count()
    }
}

fn region(w: &Workload) -> &str {
    w.locality.as_ref().map_or("", |l| l.region.as_str())
}

fn zone(w: &Workload) -> &str {
    w.locality.as_ref().map_or("", |l| l.zone.as_str())
}

fn subzone(w: &Workload) -> &str {
    w.locality.as_ref().map_or("", |l| l.subzone.as_str())
}

/// The outcome of endpoint selection.
#[derive(Debug, Clone)]
pub enum Pick {
    /// This endpoint.
    Endpoint(Endpoint),
    /// The service's mode is `PASSTHROUGH`: choose no endpoint, connect to
    /// the original destination address.
    OriginalDestination,
    /// No endpoint is eligible (none healthy, none with the port, none
    /// reachable, none matching a `STRICT` preference, all of capacity 0).
    NoEndpoint,
}

impl Pick {
    /// The endpoint, if one was chosen.
    pub fn endpoint(self) -> Option<Endpoint> {
        match self {
            Self::Endpoint(e) => Some(e),
            Self::OriginalDestination | Self::NoEndpoint => None,
        }
    }
}

impl LoadBalancer {
    /// What istiod sends for a Kubernetes service with
    /// `trafficDistribution: PreferClose`: prefer the same network, region,
    /// zone and subzone, failing over to farther endpoints.
    pub fn prefer_close() -> Self {
        Self {
            routing_preferences: vec![
                LoadBalancerScope::Network,
                LoadBalancerScope::Region,
                LoadBalancerScope::Zone,
                LoadBalancerScope::Subzone,
            ],
            mode: LoadBalancerMode::Failover,
            health_policy: LoadBalancerHealthPolicy::OnlyHealthy,
        }
    }
}

impl IpFamily {
    /// Whether an address of `ip`'s family belongs to this family set.
    pub fn accepts(self, ip: IpAddr) -> bool {
        match self {
            Self::Dual => true,
            Self::IPv4 => ip.is_ipv4(),
            Self::IPv6 => ip.is_ipv6(),
        }
    }
}

/// Whether `families` (`None`: automatic) accepts `ip`.
pub(crate) fn family_accepts(families: Option<IpFamily>, ip: IpAddr) -> bool {
    families.is_none_or(|f| f.accepts(ip))
}

/// The address to use among `addresses`: the first one `families` accepts
/// of the same family as `prefer`, else the first one it accepts.
fn choose_address(
    addresses: &[IpAddr],
    families: Option<IpFamily>,
    prefer: Option<IpAddr>,
) -> Option<IpAddr> {
    let mut first = None;
    for ip in addresses.iter().filter(|ip| family_accepts(families, **ip)) {
        if prefer.is_none_or(|p| p.is_ipv6() == ip.is_ipv6()) {
            return Some(*ip);
        }
        first.get_or_insert(*ip);
    }
    first
}

/// Whether a service endpoint of health `status` may be chosen.
pub(crate) fn health_allows(svc: &Service, status: HealthStatus) -> bool {
    status == HealthStatus::Healthy
        || svc
            .load_balancer
            .as_ref()
            .is_some_and(|lb| lb.health_policy == LoadBalancerHealthPolicy::AllowAll)
}

/// An endpoint that may be chosen, borrowed from the state.
struct Eligible<'a> {
    workload: &'a Arc<Workload>,
    port: u16,
    address: Option<IpAddr>,
}

impl Eligible<'_> {
    fn to_endpoint(&self) -> Endpoint {
        Endpoint {
            workload: Arc::clone(self.workload),
            port: self.port,
            address: self.address,
        }
    }
}

/// Draws one item, weighted, among those of the highest rank, in one pass
/// (weighted reservoir sampling). `draw(n)` returns a uniform value in
/// `0..n` (`n > 0`). Weight-0 items are never drawn; if every item of the
/// highest rank weighs 0, nothing is.
fn draw_weighted<T>(
    items: impl Iterator<Item = (usize, u64, T)>,
    mut draw: impl FnMut(u64) -> u64,
) -> Option<T> {
    let mut best_rank = 0;
    let mut total: u64 = 0;
    let mut chosen = None;
    for (rank, weight, item) in items {
        if rank < best_rank {
            continue;
        }
        if rank > best_rank {
            best_rank = rank;
            total = 0;
            chosen = None;
        }
        if weight == 0 {
            continue;
        }
        total = total.saturating_add(weight);
        if draw(total) < weight {
            chosen = Some(item);
        }
    }
    chosen
}

impl MeshState {
    /// The workloads behind a service (whose key is `key`), each with the
    /// endpoint the service states for it (if any): first the workloads
    /// whose `services` map names the service, then the service's own
    /// endpoints for other uids.
    pub(crate) fn members_of<'a>(
        &'a self,
        svc: &'a Service,
        key: &str,
    ) -> impl Iterator<Item = (&'a Arc<Workload>, Option<&'a ServiceEndpoint>)> + use<'a> {
        let members = self.endpoints.get(key);
        let listed = members
            .into_iter()
            .flatten()
            .map(|u| (u, svc.endpoints.get(u)));
        let stated = svc
            .endpoints
            .iter()
            .filter(move |(u, _)| !members.is_some_and(|m| m.contains(*u)))
            .map(|(u, e)| (u, Some(e)));
        listed
            .chain(stated)
            .filter_map(|(u, e)| Some((self.workloads.get(u)?, e)))
    }

    /// The endpoints a client may be given for `service_port`, unranked.
    fn eligible_iter<'a>(
        &'a self,
        svc: &'a Service,
        service_port: u16,
        client: &'a Client<'a>,
    ) -> impl Iterator<Item = Eligible<'a>> + 'a {
        let find = move |ps: &[Port]| ps.iter().find(|p| p.service_port == service_port).copied();
        let default = find(&svc.ports);
        let network = client.network();
        let key = svc.key();
        self.members_of(svc, &key).filter_map(move |(w, explicit)| {
            if !health_allows(svc, explicit.map_or(w.status, |e| e.status)) {
                return None;
            }
            // The endpoint's own port list wins over the service's; a
            // service without the port has no endpoint.
            let port = explicit
                .and_then(|e| find(&e.ports))
                .or_else(|| w.services.get(&key).and_then(|ps| find(ps)))
                .or(default)?
                .target();
            let address = choose_address(&w.addresses, svc.ip_families, client.destination);
            let reachable = if w.addresses.is_empty() {
                // Reached by hostname, or only through a network gateway
                // from another network (WDS names a gateway even for
                // clients on the workload's own network).
                !w.hostname.is_empty() || (w.network != network && w.network_gateway.is_some())
            } else {
                address.is_some()
            };
            reachable.then_some(Eligible {
                workload: w,
                port,
                address,
            })
        })
    }

    /// Every endpoint `client` may be given for `service_port`, before
    /// routing preferences and capacity.
    pub fn eligible(&self, svc: &Service, service_port: u16, client: &Client<'_>) -> Vec<Endpoint> {
        self.eligible_iter(svc, service_port, client)
            .map(|e| e.to_endpoint())
            .collect()
    }

    /// The endpoints `client` should be balanced over, for a proxy with a
    /// balancer of its own (the waypoint): the eligible endpoints of the
    /// best routing-preference rank (all of them without preferences;
    /// those matching every preference under STRICT, none when none do),
    /// without those of capacity 0. PASSTHROUGH services give their
    /// eligible endpoints (a waypoint still needs one).
    pub fn preferred(
        &self,
        svc: &Service,
        service_port: u16,
        client: &Client<'_>,
    ) -> Vec<Endpoint> {
        let (preferences, strict): (&[LoadBalancerScope], bool) = match &svc.load_balancer {
            Some(lb) if lb.mode == LoadBalancerMode::Strict => (&lb.routing_preferences, true),
            Some(lb) if lb.mode == LoadBalancerMode::Failover => (&lb.routing_preferences, false),
            _ => (&[], false),
        };
        let ranked: Vec<(usize, Eligible<'_>)> = self
            .eligible_iter(svc, service_port, client)
            .filter(|e| e.workload.capacity > 0)
            .map(|e| (client.rank(preferences, e.workload), e))
            .filter(|(rank, _)| !strict || *rank == preferences.len())
            .collect();
        let best = ranked.iter().map(|(r, _)| *r).max().unwrap_or(0);
        ranked
            .into_iter()
            .filter(|(r, _)| *r == best)
            .map(|(_, e)| e.to_endpoint())
            .collect()
    }

    /// Chooses the endpoint of `svc` serving `service_port` for `client`,
    /// with the service's load-balancing rules (see the module docs).
    pub fn select(&self, svc: &Service, service_port: u16, client: &Client<'_>) -> Pick {
        self.select_with(svc, service_port, client, |n| fastrand::u64(..n))
    }

    /// [`MeshState::select`] with a given random source.
    fn select_with(
        &self,
        svc: &Service,
        service_port: u16,
        client: &Client<'_>,
        draw: impl FnMut(u64) -> u64,
    ) -> Pick {
        let (preferences, strict): (&[LoadBalancerScope], bool) = match &svc.load_balancer {
            None => (&[], false),
            Some(lb) => match lb.mode {
                LoadBalancerMode::Passthrough => return Pick::OriginalDestination,
                LoadBalancerMode::Standard => (&[], false),
                LoadBalancerMode::Strict => (&lb.routing_preferences, true),
                LoadBalancerMode::Failover => (&lb.routing_preferences, false),
            },
        };
        let ranked = self
            .eligible_iter(svc, service_port, client)
            .filter_map(|e| {
                let rank = client.rank(preferences, e.workload);
                (!strict || rank == preferences.len()).then_some((
                    rank,
                    u64::from(e.workload.capacity),
                    e,
                ))
            });
        match draw_weighted(ranked, draw) {
            Some(e) => Pick::Endpoint(e.to_endpoint()),
            None => Pick::NoEndpoint,
        }
    }

    /// The chosen endpoint of `svc` for `service_port`, for a client with
    /// source workload `source` on `network`; `None` when there is none or
    /// the service is `PASSTHROUGH` (use [`MeshState::select`] to tell
    /// these apart).
    pub fn pick_endpoint(
        &self,
        svc: &Service,
        service_port: u16,
        network: &str,
        source: Option<&Workload>,
    ) -> Option<Endpoint> {
        self.select(svc, service_port, &Client::new(network).with_source(source))
            .endpoint()
    }
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
