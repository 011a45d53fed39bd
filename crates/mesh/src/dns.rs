//! Resolving DNS names from the mesh state, as istio/ztunnel's DNS proxy
//! does, for a DNS server to answer with (names the mesh does not know are
//! the server's to forward).
//!
//! A name is tried in this order, the first match winning:
//!
//! 1. The name itself (`reviews.default.svc.cluster.local`, `api.example.com`).
//! 2. Its Kubernetes expansions with the client's namespace `ns` and the
//!    cluster domain `D`: one label `x` → `x.ns.svc.D`; two labels `x.y` →
//!    `x.y.svc.D`, then `x.y.ns.svc.D` (a pod's `host.subdomain`); three
//!    labels → `x.y.svc.D` when the last is `svc`, then `x.y.z.svc.D`; four
//!    labels ending in `svc` → `…svc.D`.
//! 3. For each search domain of a Kubernetes pod (`ns.svc.D`, `svc.D`, `D`)
//!    that the name ends with: the name without it, then that name's
//!    expansions. A match found this way carries the stripped name, which
//!    the server answers with a CNAME to ([`HostAnswer::cname`]).
//!
//! Each candidate is looked up as a service hostname, then (unless a service
//! matched) as the hostname of a workload with addresses, then as the
//! service wildcards covering it (`*.example.com`, `*.com`). Services without
//! VIPs are only answered when their hostname is in `svc.D` (Kubernetes
//! headless services, whose answer is their endpoints' addresses); others are
//! left to the upstream resolver, as in ztunnel. Workload hostnames are an
//! addition: ztunnel's proxy does not answer them.
//!
//! When several namespaces define the hostname (ServiceEntry), the service
//! in the client's namespace wins, then the one in the preferred namespace,
//! then the one marked `canonical`, then the first one defined.
//!
//! Names compare case-insensitively; a trailing dot is ignored.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::balance::{family_accepts, health_allows};
use crate::model::{Service, Workload};
use crate::state::{MeshState, Target};

/// What a mesh name resolves to.
#[derive(Debug, Clone)]
pub struct HostAnswer {
    /// The service or workload the name names.
    pub target: Target,
    /// The mesh hostname that matched, lowercased: a service's or workload's
    /// hostname, or a wildcard (`*.example.com`).
    pub matched: String,
    /// When the name matched only once a search domain was removed, and not
    /// through a wildcard: the name without the search domain. The answer is
    /// then a CNAME from the asked name to this one, with the address
    /// records under this one (ztunnel's behaviour).
    pub cname: Option<String>,
    /// The addresses to answer with, of any family: for a service, its VIPs
    /// on the client's network; for a headless service, the first address of
    /// each family of each (healthy, or any under `ALLOW_ALL`) endpoint; for
    /// a workload, its addresses. Only families the service's `ipFamilies`
    /// accept. A family with no address here is "known name, no record of
    /// that type": an empty, authoritative answer, not NXDOMAIN.
    pub addresses: Vec<IpAddr>,
}

impl HostAnswer {
    /// The IPv4 addresses (A records).
    pub fn ipv4(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.addresses.iter().filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The IPv6 addresses (AAAA records).
    pub fn ipv6(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.addresses.iter().filter_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
    }

    /// Whether the match was a wildcard hostname.
    pub fn is_wildcard(&self) -> bool {
        self.matched.starts_with("*.")
    }
}

/// Lowercased, without a trailing dot; `None` when empty.
fn normalize(name: &str) -> Option<Cow<'_, str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.starts_with('.') {
        return None;
    }
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// `name` without the trailing labels `suffix` (each part may hold dots),
/// when something is left.
fn strip_labels<'n>(name: &'n str, suffix: &[&str]) -> Option<&'n str> {
    let mut rest = name;
    for part in suffix.iter().rev() {
        rest = rest.strip_suffix(part)?.strip_suffix('.')?;
    }
    (!rest.is_empty()).then_some(rest)
}

/// Whether `host` ends with `.svc.<domain>` (ASCII case-insensitive).
fn in_svc_domain(host: &str, domain: &str) -> bool {
    let (h, d) = (host.as_bytes(), domain.as_bytes());
    let tail = d.len() + ".svc.".len();
    h.len() > tail
        && h[h.len() - d.len()..].eq_ignore_ascii_case(d)
        && h[h.len() - tail..h.len() - d.len()].eq_ignore_ascii_case(b".svc.")
}

/// A name's Kubernetes FQDN expansions (ztunnel's `to_kube_fqdns`).
fn kube_fqdns(name: &str, ns: Option<&str>, domain: &str) -> [Option<String>; 2] {
    let in_ns = |n: &str| ns.map(|ns| format!("{n}.{ns}.svc.{domain}"));
    let svc = name.ends_with(".svc");
    match name.split('.').count() {
        1 => [in_ns(name), None],
        2 => [Some(format!("{name}.svc.{domain}")), in_ns(name)],
        3 => [
            svc.then(|| format!("{name}.{domain}")),
            Some(format!("{name}.svc.{domain}")),
        ],
        4 if svc => [Some(format!("{name}.{domain}")), None],
        _ => [None, None],
    }
}

/// One resolution: the state and the client's view of it.
struct Lookup<'a> {
    state: &'a MeshState,
    client: Option<&'a Workload>,
    domain: &'a str,
    preferred: Option<&'a str>,
}

impl Lookup<'_> {
    fn namespace(&self) -> Option<&str> {
        self.client.map(|c| c.namespace.as_str())
    }

    /// Tries `alias`: its services, its workloads, then service wildcards.
    fn alias(&self, alias: &str, stripped: Option<&str>) -> Option<HostAnswer> {
        let answer = |target: Target, matched: &str, addresses: Vec<IpAddr>| HostAnswer {
            target,
            matched: matched.to_owned(),
            cname: stripped
                .filter(|_| !matched.starts_with("*."))
                .map(str::to_owned),
            addresses,
        };
        if let Some(svc) = self.service(alias) {
            let ips = self.service_addresses(&svc);
            return Some(answer(Target::Service(svc), alias, ips));
        }
        if let Some(w) = self.workload(alias) {
            let ips = w.addresses.clone();
            return Some(answer(Target::Workload(w), alias, ips));
        }
        if self.state.wildcard_hosts == 0 {
            return None;
        }
        let mut wildcard = String::with_capacity(alias.len() + 1);
        let mut rest = alias;
        while let Some((_, parent)) = rest.split_once('.') {
            wildcard.clear();
            wildcard.push_str("*.");
            wildcard.push_str(parent);
            if let Some(svc) = self.service(&wildcard) {
                let ips = self.service_addresses(&svc);
                return Some(answer(Target::Service(svc), &wildcard, ips));
            }
            rest = parent;
        }
        None
    }

    /// The service answering for hostname `host`, with ztunnel's
    /// precedence among namespaces.
    fn service(&self, host: &str) -> Option<Arc<Service>> {
        let list = self.state.by_host.get(host)?;
        let answerable = list
            .iter()
            .filter(|s| !s.vips.is_empty() || in_svc_domain(&s.hostname, self.domain));
        let in_ns = |ns: Option<&str>| {
            let ns = ns?;
            answerable.clone().find(|s| s.namespace == ns)
        };
        in_ns(self.namespace())
            .or_else(|| in_ns(self.preferred))
            .or_else(|| answerable.clone().find(|s| s.canonical))
            .or_else(|| answerable.clone().next())
            .cloned()
    }

    /// The workload with hostname `host` and addresses, the client's
    /// namespace first.
    fn workload(&self, host: &str) -> Option<Arc<Workload>> {
        let workloads = self
            .state
            .by_hostname
            .get(host)?
            .iter()
            .filter_map(|u| self.state.workloads.get(u))
            .filter(|w| !w.addresses.is_empty());
        let ns = self.namespace();
        workloads
            .clone()
            .find(|w| Some(w.namespace.as_str()) == ns)
            .or_else(|| workloads.clone().next())
            .cloned()
    }

    fn service_addresses(&self, svc: &Service) -> Vec<IpAddr> {
        let fam = svc.ip_families;
        if svc.vips.is_empty() {
            // Headless: the endpoints' addresses, one of each family each.
            let mut out = Vec::new();
            for (w, explicit) in self.state.members_of(svc, &svc.key()) {
                if !health_allows(svc, explicit.map_or(w.status, |e| e.status)) {
                    continue;
                }
                let ok = |ip: &&IpAddr| family_accepts(fam, **ip);
                out.extend(w.addresses.iter().filter(ok).find(|ip| ip.is_ipv4()));
                out.extend(w.addresses.iter().filter(ok).find(|ip| ip.is_ipv6()));
            }
            return out;
        }
        let network = self.client.map_or("", |c| c.network.as_str());
        svc.vips
            .iter()
            .filter(|(n, ip)| n == network && family_accepts(fam, *ip))
            .map(|(_, ip)| *ip)
            .collect()
    }
}

impl MeshState {
    /// Resolves `name` as a DNS proxy in the mesh would for `client` (the
    /// workload asking, whose namespace and network apply; `None` when
    /// unknown: no namespace expansions, the default network's VIPs), in
    /// cluster domain `cluster_domain` (empty: `cluster.local`), preferring
    /// `preferred_namespace` among namespaces defining the same hostname
    /// when the client's own does not. See the module docs for the rules.
    ///
    /// `None`: the mesh does not know the name; forward the query.
    pub fn resolve_host(
        &self,
        name: &str,
        client: Option<&Workload>,
        cluster_domain: &str,
        preferred_namespace: Option<&str>,
    ) -> Option<HostAnswer> {
        let name = normalize(name)?;
        let domain = normalize(cluster_domain).unwrap_or(Cow::Borrowed("cluster.local"));
        let lookup = Lookup {
            state: self,
            client,
            domain: &domain,
            preferred: preferred_namespace,
        };
        let ns = lookup.namespace().filter(|n| !n.is_empty());
        let expanded = |n: &str, stripped: Option<&str>| {
            kube_fqdns(n, ns, &domain)
                .into_iter()
                .flatten()
                .find_map(|alias| lookup.alias(&alias, stripped))
        };
        if let Some(a) = lookup.alias(&name, None).or_else(|| expanded(&name, None)) {
            return Some(a);
        }
        let search: [&[&str]; 3] = [
            &[ns.unwrap_or(""), "svc", &domain],
            &["svc", &domain],
            &[&domain],
        ];
        search
            .into_iter()
            .filter(|sd| !sd[0].is_empty())
            .filter_map(|sd| strip_labels(&name, sd))
            .find_map(|s| lookup.alias(s, Some(s)).or_else(|| expanded(s, Some(s))))
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
