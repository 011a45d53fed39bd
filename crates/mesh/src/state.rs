//! The mesh state: every workload, service and policy, indexed the ways the
//! proxies look them up.
//!
//! Invariants: `by_addr` holds exactly the addresses of the workloads in
//! `workloads` that are not host-network; `by_vip` exactly the VIPs of `services`; `endpoints[svc]`
//! exactly the uids of workloads whose `services` map names `svc`; `by_host[h]` exactly the
//! services whose lowercased hostname is `h` (in insertion order, a replacement keeping its
//! slot, as ztunnel's store does); `by_hostname[h]` exactly the uids of workloads whose
//! lowercased hostname is `h`. Every insert first removes the previous version's index entries.
//!
//! Endpoint selection lives in [`crate::balance`], name resolution in [`crate::dns`].

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::authz::{self, Connection, Decision};
use crate::balance::Client;
use crate::local::Config;
use crate::model::{NetworkMode, Policy, Service, Workload};

/// Uids (or service keys) by network and address. Looked up by
/// [`NetIp`], so a lookup on a named network copies nothing (proxies look
/// addresses up several times per connection).
type AddrIndex = hashbrown::HashMap<(String, IpAddr), String, std::hash::RandomState>;

/// A network and an address, borrowed: the key of an [`AddrIndex`] lookup.
/// Hashes as the `(String, IpAddr)` it stands for (a string hashes as its
/// `str`, a tuple as its fields in order, as the derive does).
#[derive(Hash)]
struct NetIp<'a>(&'a str, IpAddr);

impl hashbrown::Equivalent<(String, IpAddr)> for NetIp<'_> {
    fn equivalent(&self, key: &(String, IpAddr)) -> bool {
        self.1 == key.1 && self.0 == key.0
    }
}

/// The addresses a workload is found by: none for a host-network workload,
/// whose addresses are its node's (as in ztunnel).
fn indexed_addresses(w: &Workload) -> &[IpAddr] {
    match w.network_mode {
        NetworkMode::Standard => &w.addresses,
        NetworkMode::HostNetwork => &[],
    }
}

/// All workloads, services and policies.
#[derive(Debug, Default)]
pub struct MeshState {
    pub(crate) workloads: HashMap<String, Arc<Workload>>,
    by_addr: AddrIndex,
    /// Workload uids by lowercased hostname (workloads with one).
    pub(crate) by_hostname: HashMap<String, Vec<String>>,
    services: HashMap<String, Arc<Service>>,
    by_vip: AddrIndex,
    /// Services by lowercased hostname: several namespaces may define one.
    pub(crate) by_host: HashMap<String, Vec<Arc<Service>>>,
    /// How many `by_host` keys are wildcards (`*.example.com`).
    pub(crate) wildcard_hosts: usize,
    pub(crate) endpoints: HashMap<String, BTreeSet<String>>,
    policies: HashMap<String, Arc<Policy>>,
    /// Bumped by every change; see [`MeshState::revision`].
    revision: u64,
}

/// What an address refers to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A workload's own address.
    Workload(Arc<Workload>),
    /// A service VIP.
    Service(Arc<Service>),
}

/// A chosen service endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The workload.
    pub workload: Arc<Workload>,
    /// The port on the workload.
    pub port: u16,
    /// The workload address to connect to: one of a family the service
    /// accepts, preferring the original destination's family (ztunnel's
    /// choice). `None` when the workload has no address: it is reached by
    /// its hostname or through its network gateway.
    pub address: Option<IpAddr>,
}

impl MeshState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// A state holding a local config.
    pub fn from_config(c: Config) -> Self {
        let mut s = Self::new();
        s.load(c);
        s
    }

    /// Adds everything in a local config (replacing by key).
    pub fn load(&mut self, c: Config) {
        for w in c.workloads {
            self.insert_workload(w);
        }
        for svc in c.services {
            self.insert_service(svc);
        }
        for p in c.policies {
            self.insert_policy(p);
        }
    }

    /// Adds or replaces a workload (by uid).
    pub fn insert_workload(&mut self, w: Workload) {
        self.revision += 1;
        self.remove_workload(&w.uid);
        for a in indexed_addresses(&w) {
            self.by_addr.insert((w.network.clone(), *a), w.uid.clone());
        }
        if !w.hostname.is_empty() {
            self.by_hostname
                .entry(w.hostname.to_ascii_lowercase())
                .or_default()
                .push(w.uid.clone());
        }
        for svc in w.services.keys() {
            self.endpoints
                .entry(svc.clone())
                .or_default()
                .insert(w.uid.clone());
        }
        self.workloads.insert(w.uid.clone(), Arc::new(w));
    }

    /// Removes a workload; returns whether it existed.
    pub fn remove_workload(&mut self, uid: &str) -> bool {
        self.revision += 1;
        let Some(old) = self.workloads.remove(uid) else {
            return false;
        };
        for a in indexed_addresses(&old) {
            let key = NetIp(&old.network, *a);
            if self.by_addr.get(&key).is_some_and(|u| u == uid) {
                self.by_addr.remove(&key);
            }
        }
        if !old.hostname.is_empty() {
            let host = old.hostname.to_ascii_lowercase();
            if let Some(uids) = self.by_hostname.get_mut(&host) {
                uids.retain(|u| u != uid);
                if uids.is_empty() {
                    self.by_hostname.remove(&host);
                }
            }
        }
        for svc in old.services.keys() {
            if let Some(set) = self.endpoints.get_mut(svc) {
                set.remove(uid);
                if set.is_empty() {
                    self.endpoints.remove(svc);
                }
            }
        }
        true
    }

    /// Adds or replaces a service (by `namespace/hostname`).
    pub fn insert_service(&mut self, s: Service) {
        self.revision += 1;
        let key = s.key();
        let s = Arc::new(s);
        let host = s.hostname.to_ascii_lowercase();
        let slot = self.unindex_service(&key);
        for (net, ip) in &s.vips {
            self.by_vip.insert((net.clone(), *ip), key.clone());
        }
        let same_host = self.by_host.get_mut(&host);
        match (same_host, slot) {
            // A replacement keeps its place among the services of its hostname.
            (Some(list), Some((old_host, i))) if old_host == host && i <= list.len() => {
                list.insert(i, Arc::clone(&s));
            }
            (Some(list), _) => list.push(Arc::clone(&s)),
            (None, _) => {
                if host.starts_with("*.") {
                    self.wildcard_hosts += 1;
                }
                self.by_host.insert(host, vec![Arc::clone(&s)]);
            }
        }
        self.services.insert(key, s);
    }

    /// Removes a service; returns whether it existed.
    pub fn remove_service(&mut self, key: &str) -> bool {
        self.revision += 1;
        self.unindex_service(key).is_some()
    }

    /// Removes a service and its index entries; returns its lowercased
    /// hostname and its position among that hostname's services.
    fn unindex_service(&mut self, key: &str) -> Option<(String, usize)> {
        let old = self.services.remove(key)?;
        for (net, ip) in &old.vips {
            let k = NetIp(net, *ip);
            if self.by_vip.get(&k).is_some_and(|s| s == key) {
                self.by_vip.remove(&k);
            }
        }
        let host = old.hostname.to_ascii_lowercase();
        let list = self.by_host.get_mut(&host)?;
        let i = list.iter().position(|s| s.namespace == old.namespace)?;
        list.remove(i);
        if list.is_empty() {
            self.by_host.remove(&host);
            if host.starts_with("*.") {
                self.wildcard_hosts -= 1;
            }
        }
        Some((host, i))
    }

    /// Removes an xDS Address resource by name: a workload uid or a service
    /// `namespace/hostname`.
    pub fn remove_address(&mut self, name: &str) -> bool {
        self.remove_workload(name) || self.remove_service(name)
    }

    /// Adds or replaces a policy (by `namespace/name`).
    pub fn insert_policy(&mut self, p: Policy) {
        self.revision += 1;
        self.policies.insert(p.key(), Arc::new(p));
    }

    /// Removes a policy; returns whether it existed.
    pub fn remove_policy(&mut self, key: &str) -> bool {
        self.revision += 1;
        self.policies.remove(key).is_some()
    }

    /// A counter bumped by every change (workloads, services, policies):
    /// a reader that remembers it knows cheaply whether anything changed,
    /// e.g. to re-check open connections against the policies.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A workload by uid.
    pub fn workload(&self, uid: &str) -> Option<Arc<Workload>> {
        self.workloads.get(uid).cloned()
    }

    /// The workload with address `ip` on `network`.
    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        self.by_addr
            .get(&NetIp(network, ip))
            .and_then(|u| self.workload(u))
    }

    /// A service by `namespace/hostname`.
    pub fn service(&self, key: &str) -> Option<Arc<Service>> {
        self.services.get(key).cloned()
    }

    /// The service with VIP `ip` on `network`.
    pub fn service_by_vip(&self, network: &str, ip: IpAddr) -> Option<Arc<Service>> {
        self.by_vip
            .get(&NetIp(network, ip))
            .and_then(|k| self.service(k))
    }

    /// What `ip` is: a service VIP (checked first) or a workload.
    pub fn lookup(&self, network: &str, ip: IpAddr) -> Option<Target> {
        self.service_by_vip(network, ip)
            .map(Target::Service)
            .or_else(|| self.workload_by_ip(network, ip).map(Target::Workload))
    }

    /// Every endpoint of a service for `service_port` that endpoint
    /// selection could choose for a client without a known source workload
    /// on the default network ([`Client::default`]): the workloads whose
    /// `services` map names the service and the service's own `endpoints`
    /// (whose status and ports win for their uid), healthy unless the
    /// service's health policy is `AllowAll`, with target ports. Locality and
    /// routing preferences do not filter this list; see
    /// [`MeshState::select`] for the choice itself.
    pub fn endpoints(&self, svc: &Service, service_port: u16) -> Vec<Endpoint> {
        self.eligible(svc, service_port, &Client::default())
    }

    /// The uids of the workloads whose `services` map names `key`
    /// (`namespace/hostname`), whether or not the service is known.
    pub fn members(&self, key: &str) -> impl Iterator<Item = &str> {
        self.endpoints
            .get(key)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// The `namespace/hostname`s workloads name that no known service has:
    /// ztunnel keeps their endpoints as "staged".
    pub fn staged_service_keys(&self) -> impl Iterator<Item = &str> {
        self.endpoints
            .keys()
            .filter(|k| !self.services.contains_key(*k))
            .map(String::as_str)
    }

    /// Authorizes a connection to `workload` with every applicable policy.
    pub fn authorize(&self, workload: &Workload, conn: &Connection<'_>) -> Decision {
        authz::authorize(self.policies.values().map(|p| p.as_ref()), workload, conn)
    }

    /// Every workload.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// Every service.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Every policy.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    /// Counts: (workloads, services, policies).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.workloads.len(),
            self.services.len(),
            self.policies.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthStatus, Port};
    use std::collections::BTreeMap;

    fn wl(uid: &str, ip: &str, svc: Option<(&str, u16, u16)>) -> Workload {
        let mut services = BTreeMap::new();
        if let Some((k, s, t)) = svc {
            services.insert(
                k.to_owned(),
                vec![Port {
                    service_port: s,
                    target_port: t,
                }],
            );
        }
        Workload {
            uid: uid.into(),
            namespace: "default".into(),
            addresses: vec![ip.parse().expect("ip")],
            services,
            ..Workload::default()
        }
    }

    fn svc() -> Service {
        Service {
            name: "pp".into(),
            namespace: "default".into(),
            hostname: "pp.default.svc".into(),
            vips: vec![(String::new(), "10.96.0.10".parse().expect("ip"))],
            ports: vec![Port {
                service_port: 9080,
                target_port: 9080,
            }],
            ..Service::default()
        }
    }

    /// One address on several networks: each network's lookup finds its
    /// own workload or VIP, and removing one leaves the others.
    #[test]
    fn addresses_are_per_network() {
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let on = |uid: &str, net: &str| Workload {
            network: net.into(),
            ..wl(uid, "10.0.0.1", None)
        };
        let mut s = MeshState::new();
        s.insert_workload(on("plain", ""));
        s.insert_workload(on("east", "network-east"));
        let uid = |s: &MeshState, net: &str| s.workload_by_ip(net, ip).map(|w| w.uid.clone());
        assert_eq!(uid(&s, "").as_deref(), Some("plain"));
        assert_eq!(uid(&s, "network-east").as_deref(), Some("east"));
        assert_eq!(uid(&s, "network-west"), None);
        assert!(s.remove_workload("east"));
        assert_eq!(uid(&s, "network-east"), None);
        assert_eq!(uid(&s, "").as_deref(), Some("plain"));

        let west = Service {
            namespace: "west".into(),
            vips: vec![("network-west".into(), "10.96.0.10".parse().expect("ip"))],
            ..svc()
        };
        s.insert_service(svc());
        s.insert_service(west);
        let vip = "10.96.0.10".parse().expect("ip");
        let ns = |s: &MeshState, net: &str| s.service_by_vip(net, vip).map(|v| v.namespace.clone());
        assert_eq!(ns(&s, "").as_deref(), Some("default"));
        assert_eq!(ns(&s, "network-west").as_deref(), Some("west"));
        assert!(s.remove_service("west/pp.default.svc"));
        assert_eq!(ns(&s, "network-west"), None);
        assert_eq!(ns(&s, "").as_deref(), Some("default"));
    }

    #[test]
    fn indexes_follow_replacements_and_removals() {
        let mut s = MeshState::new();
        s.insert_workload(wl("a", "10.0.0.1", None));
        assert!(
            s.workload_by_ip("", "10.0.0.1".parse().expect("ip"))
                .is_some()
        );
        s.insert_workload(wl("a", "10.0.0.2", None));
        assert!(
            s.workload_by_ip("", "10.0.0.1".parse().expect("ip"))
                .is_none(),
            "old address dropped"
        );
        assert!(
            s.workload_by_ip("", "10.0.0.2".parse().expect("ip"))
                .is_some()
        );
        assert!(s.remove_address("a"));
        assert!(!s.remove_address("a"));
        assert_eq!(s.counts(), (0, 0, 0));
        assert!(s.by_addr.is_empty() && s.endpoints.is_empty());
    }

    #[test]
    fn host_network_workloads_are_not_found_by_address() {
        let mut s = MeshState::new();
        let mut w = wl("h", "172.18.0.2", None);
        w.network_mode = NetworkMode::HostNetwork;
        s.insert_workload(w);
        let ip = "172.18.0.2".parse().expect("ip");
        assert!(s.workload_by_ip("", ip).is_none(), "the node's address");
        assert!(s.workload("h").is_some());
        s.insert_workload(wl("h", "172.18.0.2", None));
        assert!(s.workload_by_ip("", ip).is_some(), "standard again");
        s.remove_workload("h");
        assert!(s.by_addr.is_empty());
    }

    #[test]
    fn service_endpoints_are_drawn_and_skip_unhealthy() {
        let mut s = MeshState::new();
        s.insert_service(svc());
        s.insert_workload(wl(
            "v1",
            "10.0.0.1",
            Some(("default/pp.default.svc", 9080, 9081)),
        ));
        s.insert_workload(wl(
            "v2",
            "10.0.0.2",
            Some(("default/pp.default.svc", 9080, 9082)),
        ));
        let mut bad = wl(
            "v3",
            "10.0.0.3",
            Some(("default/pp.default.svc", 9080, 9080)),
        );
        bad.status = HealthStatus::Unhealthy;
        s.insert_workload(bad);
        let Some(Target::Service(sv)) = s.lookup("", "10.96.0.10".parse().expect("ip")) else {
            panic!("VIP resolves to the service");
        };
        let picks: Vec<(String, u16)> = (0..64)
            .filter_map(|_| s.pick_endpoint(&sv, 9080, "", None))
            .map(|e| (e.workload.uid.clone(), e.port))
            .collect();
        assert_eq!(picks.len(), 64);
        assert!(picks.contains(&("v1".into(), 9081)) && picks.contains(&("v2".into(), 9082)));
        assert!(!picks.iter().any(|(u, _)| u == "v3"));
        assert!(
            s.pick_endpoint(&sv, 1234, "", None).is_none(),
            "unknown port"
        );
        s.remove_workload("v1");
        s.remove_workload("v2");
        assert!(s.pick_endpoint(&sv, 9080, "", None).is_none());
    }
}
