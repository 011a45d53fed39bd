//! Where a connection goes: decisions made from the mesh state and the
//! connection's facts alone, with no I/O, so they are tested as tables.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_identity::Identity;
use ambit_mesh::authz::{Connection, Decision, DenyReason};
use ambit_mesh::model::{GatewayAddress, TunnelProtocol};
use ambit_mesh::{Client, MeshState, Pick, Service, Target, Workload};

/// ztunnel's own ports, which are never a proxy destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Outbound capture (15001).
    pub outbound: u16,
    /// Inbound plaintext (15006).
    pub inbound_plain: u16,
    /// Inbound HBONE (15008).
    pub hbone: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            outbound: 15001,
            inbound_plain: 15006,
            hbone: 15008,
        }
    }
}

impl Ports {
    /// Whether `port` is one of ztunnel's capture ports.
    pub fn is_proxy_port(&self, port: u16) -> bool {
        port == self.outbound || port == self.inbound_plain || port == self.hbone
    }
}

/// The plan for a captured outbound connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Tunnel through HBONE.
    Hbone {
        /// Where to connect (`endpoint:15008` or `waypoint:15008`).
        address: SocketAddr,
        /// The CONNECT `:authority` (`endpoint:targetPort`, or the original
        /// VIP:port when going through a waypoint).
        authority: SocketAddr,
        /// Identities the server may present.
        identities: Vec<Identity>,
        /// The destination workload, when known.
        workload: Option<Arc<Workload>>,
        /// The service, when the destination was a VIP.
        service: Option<Arc<Service>>,
        /// Whether the hop is a waypoint.
        waypoint: bool,
    },
    /// Plain TCP to the destination (outside the mesh, or protocol TCP).
    Passthrough {
        /// Where to connect.
        address: SocketAddr,
        /// The destination workload, when known.
        workload: Option<Arc<Workload>>,
        /// The service, when the destination was a VIP.
        service: Option<Arc<Service>>,
    },
    /// The chosen endpoint is on another network than this proxy's: it is
    /// never dialled directly, only through its network gateway (double
    /// HBONE; see [`crate::network`]).
    OtherNetwork {
        /// The destination workload.
        workload: Arc<Workload>,
        /// The service the destination was reached through.
        service: Arc<Service>,
        /// The workload's `ip:targetPort`, when it has an address (on its
        /// own network).
        target: Option<SocketAddr>,
    },
    /// Refuse the connection.
    Reject(&'static str),
}

/// Resolves a waypoint to (its address on the HBONE port, its identity,
/// workload), choosing among a waypoint service's endpoints for `source`.
fn waypoint(
    state: &MeshState,
    network: &str,
    source: Option<&Workload>,
    gw: &GatewayAddress,
) -> Option<(SocketAddr, Arc<Workload>)> {
    match gw {
        GatewayAddress::Address {
            ip,
            hbone_port,
            network: net,
        } => {
            let net = if net.is_empty() { network } else { net };
            let w = state.workload_by_ip(net, *ip).or_else(|| {
                // A waypoint addressed by its service VIP.
                state.service_by_vip(net, *ip).and_then(|s| {
                    state
                        .pick_endpoint(&s, *hbone_port, network, source)
                        .map(|e| e.workload)
                })
            })?;
            Some((SocketAddr::new(*w.addresses.first()?, *hbone_port), w))
        }
        GatewayAddress::Hostname {
            namespace,
            hostname,
            hbone_port,
        } => {
            let svc = state.service(&format!("{namespace}/{hostname}"))?;
            // A waypoint service backs the HBONE port directly, or any port.
            let e = state
                .pick_endpoint(&svc, *hbone_port, network, source)
                .or_else(|| {
                    svc.ports
                        .first()
                        .and_then(|p| state.pick_endpoint(&svc, p.service_port, network, source))
                })?;
            Some((SocketAddr::new(e.address?, *hbone_port), e.workload))
        }
    }
}

/// Whether the HBONE peer at `peer_ip`, presenting `identity`, is a
/// waypoint that mesh state puts in front of `dst` (the workload's own
/// waypoint, or the waypoint of a service it backs). Only such a peer's
/// `forwarded` header (the original client) is believed: any other peer
/// could claim any source address.
pub fn is_waypoint_for(
    state: &MeshState,
    network: &str,
    dst: &Workload,
    peer_ip: std::net::IpAddr,
    identity: &Identity,
) -> bool {
    let Some(peer) = state.workload_by_ip(network, peer_ip) else {
        return false;
    };
    if peer.identity().as_ref() != Some(identity) {
        return false;
    }
    let is_peer = |gw: &GatewayAddress| match gw {
        GatewayAddress::Address {
            ip, network: net, ..
        } => {
            let net = if net.is_empty() { network } else { net };
            peer.addresses.contains(ip)
                || state
                    .service_by_vip(net, *ip)
                    .is_some_and(|s| peer.services.contains_key(&s.key()))
        }
        GatewayAddress::Hostname {
            namespace,
            hostname,
            ..
        } => peer
            .services
            .contains_key(&format!("{namespace}/{hostname}")),
    };
    dst.waypoint.as_ref().is_some_and(is_peer)
        || dst.services.keys().any(|key| {
            state
                .service(key)
                .and_then(|s| s.waypoint.clone())
                .is_some_and(|gw| is_peer(&gw))
        })
}

/// Decides the path of a connection from `source` to `dst` (the original
/// destination). `source` is None for traffic whose source is not a known
/// workload (it is passed through untouched).
pub fn outbound(
    state: &MeshState,
    network: &str,
    ports: &Ports,
    source: Option<&Workload>,
    dst: SocketAddr,
) -> Outbound {
    if ports.is_proxy_port(dst.port()) && state.workload_by_ip(network, dst.ip()).is_some() {
        return Outbound::Reject("destination is a ztunnel port");
    }
    let via_waypoint =
        |gw: &GatewayAddress, workload: Option<Arc<Workload>>, service: Option<Arc<Service>>| {
            // A waypoint's own traffic never loops back through itself.
            let (address, wp) = waypoint(state, network, source, gw)?;
            if source.is_some_and(|s| s.uid == wp.uid) {
                return None;
            }
            Some(Outbound::Hbone {
                address,
                authority: dst,
                identities: wp.identity().into_iter().collect(),
                workload,
                service,
                waypoint: true,
            })
        };
    match state.lookup(network, dst.ip()) {
        None => Outbound::Passthrough {
            address: dst,
            workload: None,
            service: None,
        },
        Some(Target::Service(svc)) => {
            if let Some(gw) = &svc.waypoint
                && let Some(o) = via_waypoint(gw, None, Some(svc.clone()))
            {
                return o;
            }
            let client = Client::new(network)
                .with_source(source)
                .with_destination(dst.ip());
            let ep = match state.select(&svc, dst.port(), &client) {
                Pick::Endpoint(ep) => ep,
                // PASSTHROUGH: the original destination, no endpoint chosen.
                Pick::OriginalDestination => {
                    return Outbound::Passthrough {
                        address: dst,
                        workload: None,
                        service: Some(svc),
                    };
                }
                Pick::NoEndpoint => {
                    return Outbound::Reject("no healthy endpoint for the service port");
                }
            };
            // Another network: only through its gateway, whatever the
            // workload's protocol (as istio/ztunnel does).
            if ep.workload.network != network {
                return Outbound::OtherNetwork {
                    target: ep.address.map(|ip| SocketAddr::new(ip, ep.port)),
                    workload: ep.workload,
                    service: svc,
                };
            }
            let Some(target) = ep.address.map(|ip| SocketAddr::new(ip, ep.port)) else {
                return Outbound::Reject("endpoint has no address");
            };
            if ep.workload.protocol == TunnelProtocol::Hbone {
                let mut identities: Vec<Identity> = ep.workload.identity().into_iter().collect();
                identities.extend(svc.subject_alt_names.iter().filter_map(|s| s.parse().ok()));
                Outbound::Hbone {
                    address: SocketAddr::new(target.ip(), ports.hbone),
                    authority: target,
                    identities,
                    workload: Some(ep.workload),
                    service: Some(svc),
                    waypoint: false,
                }
            } else {
                Outbound::Passthrough {
                    address: target,
                    workload: Some(ep.workload),
                    service: Some(svc),
                }
            }
        }
        Some(Target::Workload(w)) => {
            if let Some(gw) = &w.waypoint
                && let Some(o) = via_waypoint(gw, Some(w.clone()), None)
            {
                return o;
            }
            if w.protocol == TunnelProtocol::Hbone {
                Outbound::Hbone {
                    address: SocketAddr::new(dst.ip(), ports.hbone),
                    authority: dst,
                    identities: w.identity().into_iter().collect(),
                    workload: Some(w),
                    service: None,
                    waypoint: false,
                }
            } else {
                Outbound::Passthrough {
                    address: dst,
                    workload: Some(w),
                    service: None,
                }
            }
        }
    }
}

/// The plan for an inbound stream or connection.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// Connect to the workload.
    Accept {
        /// The local workload.
        workload: Arc<Workload>,
        /// Where to connect (its `ip:port`).
        target: SocketAddr,
        /// The ALLOW policy that admitted it, if one was needed.
        policy: Option<String>,
    },
    /// The target is not a local workload, or is a ztunnel port: 400.
    NotLocal(&'static str),
    /// Authorization denied: 401.
    Denied(DenyReason),
}

static AUTHZ_INFO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Logs authorization decisions at info instead of debug (istio/ztunnel's
/// `AUTHZ_POLICY_INFO_LOGGING`); process-wide.
pub fn set_authz_info_logging(on: bool) {
    AUTHZ_INFO.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn log_decision(w: &Workload, conn: &Connection<'_>, d: &Decision) {
    // One event, at the level chosen; its fields are only formatted when
    // that level is enabled (this runs for every inbound connection).
    macro_rules! decision {
        ($level:expr) => {
            if tracing::enabled!(target: "ambit_l4proxy::authz", $level) {
                let (allowed, why) = match d {
                    Decision::Allow(p) => (true, format!("{p:?}")),
                    Decision::Deny(r) => (false, format!("{r:?}")),
                };
                let src = conn.src_identity.map(|i| i.as_str().to_owned());
                tracing::event!(
                    target: "ambit_l4proxy::authz",
                    $level,
                    allowed,
                    dst.workload = w.name.as_str(),
                    dst.namespace = w.namespace.as_str(),
                    src.identity = src.as_deref().unwrap_or(""),
                    src.addr = tracing::field::display(conn.src_ip),
                    dst.port = conn.dst_port,
                    reason = %why,
                    "authorization decision"
                );
            }
        };
    }
    if AUTHZ_INFO.load(std::sync::atomic::Ordering::Relaxed) {
        decision!(tracing::Level::INFO);
    } else {
        decision!(tracing::Level::DEBUG);
    }
}

/// Decides an inbound connection to `target` from `source_ip` presenting
/// `identity` (None for plaintext). `is_local` says whether a workload is
/// served by this proxy (node name match, or the pod the listener is in).
pub fn inbound(
    state: &MeshState,
    network: &str,
    ports: &Ports,
    target: SocketAddr,
    identity: Option<&Identity>,
    source_ip: std::net::IpAddr,
    is_local: &dyn Fn(&Workload) -> bool,
) -> Inbound {
    if ports.is_proxy_port(target.port()) {
        return Inbound::NotLocal("target is a ztunnel port");
    }
    let Some(w) = state.workload_by_ip(network, target.ip()) else {
        return Inbound::NotLocal("target is not a known workload");
    };
    if !is_local(&w) {
        return Inbound::NotLocal("target is not a workload on this node");
    }
    let conn = Connection {
        src_identity: identity,
        src_ip: source_ip,
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let decision = state.authorize(&w, &conn);
    log_decision(&w, &conn, &decision);
    match decision {
        Decision::Allow(policy) => Inbound::Accept {
            workload: w,
            target,
            policy,
        },
        Decision::Deny(reason) => Inbound::Denied(reason),
    }
}

/// Resolves a hostname a SOCKS5 client asked for, from the mesh state
/// rather than DNS (the way ztunnel's DNS proxy answers for the mesh):
/// a service hostname (`name.ns.svc.cluster.local`, or the Kubernetes short
/// forms `name.ns` and `name.ns.svc`) → the service's VIP on `network`
/// (or its first VIP); otherwise a workload's `hostname` → its first
/// address. Case-insensitive; a trailing dot is ignored. `None` when the
/// mesh does not know the name.
pub fn resolve_host(state: &MeshState, network: &str, host: &str) -> Option<std::net::IpAddr> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    let vip = |s: &Service| {
        s.vips
            .iter()
            .find(|(n, _)| n == network)
            .or_else(|| s.vips.first())
            .map(|(_, ip)| *ip)
    };
    let short = |s: &Service| {
        let ns = format!("{}.{}", s.name, s.namespace).to_ascii_lowercase();
        host == ns || host.strip_suffix(".svc") == Some(ns.as_str())
    };
    // The usual form, `name.ns.svc.<domain>`, is one keyed lookup.
    let mut labels = host.split('.');
    if let (Some(_), Some(ns)) = (labels.next(), labels.next())
        && let Some(svc) = state.service(&format!("{ns}/{host}"))
        && let Some(ip) = vip(&svc)
    {
        return Some(ip);
    }
    if let Some(ip) = state
        .services()
        .filter(|s| s.hostname.eq_ignore_ascii_case(&host) || short(s))
        .find_map(|s| vip(s))
    {
        return Some(ip);
    }
    state
        .workloads()
        .filter(|w| !w.hostname.is_empty() && w.hostname.eq_ignore_ascii_case(&host))
        .filter(|w| w.network == network)
        .find_map(|w| w.addresses.first().copied())
}

/// The source workload of a SOCKS5 client at `peer_ip`. In-pod
/// (`pod_uid`), the pod the listener serves. Otherwise the local workload
/// at that address; a client on loopback has none, so the node's only
/// local workload with an identity is used when there is exactly one.
/// `None` leaves the connection without a source identity (HBONE is then
/// refused, plain TCP still works).
pub fn socks5_source(
    state: &MeshState,
    network: &str,
    is_local: &dyn Fn(&Workload) -> bool,
    pod_uid: Option<&str>,
    peer_ip: std::net::IpAddr,
) -> Option<Arc<Workload>> {
    if let Some(w) = pod_uid.and_then(|uid| state.workload(uid)) {
        return Some(w);
    }
    if let Some(w) = state
        .workload_by_ip(network, peer_ip)
        .filter(|w| is_local(w))
    {
        return Some(w);
    }
    let mut local = state
        .workloads()
        .filter(|w| is_local(w) && w.identity().is_some());
    match (local.next(), local.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_mesh::Config;

    const MESH: &str = r#"
workloads:
- {uid: sleep, name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["10.244.0.3"], protocol: HBONE, node: a}
- {uid: pp-v1, name: pp-v1, namespace: default, serviceAccount: pp, workloadIps: ["10.244.1.2"], protocol: HBONE, node: b,
   services: {"default/pp.default.svc.cluster.local": {9080: 9080}}}
- {uid: legacy, name: legacy, namespace: default, workloadIps: ["10.244.1.9"], protocol: TCP, node: b}
- {uid: wp, name: wp, namespace: default, serviceAccount: waypoint, workloadIps: ["10.244.0.9"], protocol: HBONE, node: a}
- {uid: behind, name: behind, namespace: default, workloadIps: ["10.244.1.7"], protocol: HBONE, node: b,
   waypoint: {destination: "/10.244.0.9"}}
services:
- {name: pp, namespace: default, hostname: pp.default.svc.cluster.local, vips: ["/10.96.0.10"], ports: {9080: 9080},
   subjectAltNames: ["spiffe://cluster.local/ns/default/sa/pp-alt"]}
- {name: ext, namespace: default, hostname: ext.example.com, vips: ["/240.240.0.1"], ports: {443: 443},
   loadBalancer: {mode: Passthrough}}
- {name: near, namespace: default, hostname: near.default.svc.cluster.local, vips: ["/10.96.0.11"], ports: {80: 8080},
   loadBalancer: {routingPreferences: [Node], mode: Strict},
   endpoints: [{workloadUid: pp-v1, port: {80: 8080}}, {workloadUid: wp, port: {80: 8080}}]}
policies:
- {name: deny-9999, namespace: default, action: Deny, rules: [[[{destinationPorts: [9999]}]]]}
"#;

    fn state() -> MeshState {
        MeshState::from_config(Config::parse(MESH, "test").expect("mesh"))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn outbound_table() {
        let s = state();
        let p = Ports::default();
        let src = s.workload("sleep").expect("sleep");
        let src = Some(src.as_ref());
        // Pod IP of an HBONE workload: tunnel to podIP:15008, authority podIP:port.
        match outbound(&s, "", &p, src, addr("10.244.1.2:9080")) {
            Outbound::Hbone {
                address,
                authority,
                identities,
                waypoint,
                ..
            } => {
                assert_eq!(
                    (address, authority, waypoint),
                    (addr("10.244.1.2:15008"), addr("10.244.1.2:9080"), false)
                );
                assert_eq!(
                    identities[0].as_str(),
                    "spiffe://cluster.local/ns/default/sa/pp"
                );
            }
            o => panic!("{o:?}"),
        }
        // Service VIP: an endpoint, plus the service's SANs.
        match outbound(&s, "", &p, src, addr("10.96.0.10:9080")) {
            Outbound::Hbone {
                address,
                authority,
                identities,
                service,
                ..
            } => {
                assert_eq!(
                    (address, authority),
                    (addr("10.244.1.2:15008"), addr("10.244.1.2:9080"))
                );
                assert_eq!(identities.len(), 2);
                assert!(service.is_some());
            }
            o => panic!("{o:?}"),
        }
        // A PASSTHROUGH service: the original destination, no endpoint.
        assert!(matches!(
            outbound(&s, "", &p, src, addr("240.240.0.1:443")),
            Outbound::Passthrough { address, workload: None, service: Some(_) }
                if address == addr("240.240.0.1:443")
        ));
        // Routing preferences see the source: STRICT on the node keeps the
        // endpoint on sleep's node; a source-less client gets none.
        for _ in 0..8 {
            assert!(matches!(
                outbound(&s, "", &p, src, addr("10.96.0.11:80")),
                Outbound::Hbone { authority, .. } if authority == addr("10.244.0.9:8080")
            ));
        }
        assert!(matches!(
            outbound(&s, "", &p, None, addr("10.96.0.11:80")),
            Outbound::Reject(_)
        ));
        // VIP port without endpoints.
        assert!(matches!(
            outbound(&s, "", &p, src, addr("10.96.0.10:1")),
            Outbound::Reject(_)
        ));
        // Protocol TCP and unknown destinations pass through.
        assert!(matches!(
            outbound(&s, "", &p, src, addr("10.244.1.9:80")),
            Outbound::Passthrough {
                workload: Some(_),
                ..
            }
        ));
        assert!(matches!(
            outbound(&s, "", &p, src, addr("192.0.2.1:443")),
            Outbound::Passthrough { workload: None, .. }
        ));
        // A workload behind a waypoint: tunnel to the waypoint, authority unchanged.
        match outbound(&s, "", &p, src, addr("10.244.1.7:8080")) {
            Outbound::Hbone {
                address,
                authority,
                waypoint,
                identities,
                ..
            } => {
                assert_eq!(
                    (address, authority, waypoint),
                    (addr("10.244.0.9:15008"), addr("10.244.1.7:8080"), true)
                );
                assert_eq!(identities[0].service_account(), "waypoint");
            }
            o => panic!("{o:?}"),
        }
        // The waypoint itself goes straight to the workload.
        let wp = s.workload("wp").expect("wp");
        assert!(matches!(
            outbound(&s, "", &p, Some(&wp), addr("10.244.1.7:8080")),
            Outbound::Hbone {
                waypoint: false,
                ..
            }
        ));
        // ztunnel ports of mesh workloads are never proxied to.
        assert!(matches!(
            outbound(&s, "", &p, src, addr("10.244.1.2:15008")),
            Outbound::Reject(_)
        ));
    }

    #[test]
    fn inbound_table() {
        let s = state();
        let p = Ports::default();
        let id: Identity = "spiffe://cluster.local/ns/default/sa/sleep"
            .parse()
            .expect("id");
        let on_b = |w: &Workload| w.node == "b";
        let src = "10.244.0.3".parse().expect("ip");
        assert!(matches!(
            inbound(&s, "", &p, addr("10.244.1.2:9080"), Some(&id), src, &on_b),
            Inbound::Accept { .. }
        ));
        assert!(matches!(
            inbound(&s, "", &p, addr("10.244.1.2:9999"), Some(&id), src, &on_b),
            Inbound::Denied(_)
        ));
        assert!(matches!(
            inbound(&s, "", &p, addr("10.244.0.3:80"), Some(&id), src, &on_b),
            Inbound::NotLocal(_)
        ));
        assert!(matches!(
            inbound(&s, "", &p, addr("10.9.9.9:80"), Some(&id), src, &on_b),
            Inbound::NotLocal(_)
        ));
        assert!(matches!(
            inbound(&s, "", &p, addr("10.244.1.2:15008"), Some(&id), src, &on_b),
            Inbound::NotLocal(_)
        ));
    }

    #[test]
    fn socks5_hostnames_resolve_from_the_mesh() {
        let s = state();
        let ip = |x: &str| Some(x.parse::<std::net::IpAddr>().expect("ip"));
        for host in [
            "pp.default.svc.cluster.local",
            "PP.default.svc.cluster.local.",
            "pp.default",
            "pp.default.svc",
        ] {
            assert_eq!(resolve_host(&s, "", host), ip("10.96.0.10"), "{host}");
        }
        assert_eq!(resolve_host(&s, "", "sleep.default"), None);
        assert_eq!(resolve_host(&s, "", "example.com"), None);
        assert_eq!(resolve_host(&s, "", ""), None);
        assert_eq!(resolve_host(&s, "", "."), None);
    }

    #[test]
    fn socks5_source_table() {
        let s = state();
        let on_a = |w: &Workload| w.node == "a";
        let loopback = "127.0.0.1".parse().expect("ip");
        // The peer's own workload address.
        let w = socks5_source(&s, "", &on_a, None, "10.244.0.3".parse().expect("ip"));
        assert_eq!(w.map(|w| w.uid.clone()).as_deref(), Some("sleep"));
        // Loopback on a node with two identified workloads: ambiguous.
        assert!(socks5_source(&s, "", &on_a, None, loopback).is_none());
        // In-pod: the pod the listener serves, whatever the peer address.
        let w = socks5_source(&s, "", &|_| false, Some("pp-v1"), loopback);
        assert_eq!(w.map(|w| w.uid.clone()).as_deref(), Some("pp-v1"));
        // Exactly one local workload: it is the source.
        let only_sleep = |w: &Workload| w.uid == "sleep";
        let w = socks5_source(&s, "", &only_sleep, None, loopback);
        assert_eq!(w.map(|w| w.uid.clone()).as_deref(), Some("sleep"));
    }
}
