//! Reaching a workload on another network. Its pod address means nothing
//! on this proxy's network, so it is never dialled: the connection goes to
//! the workload's network gateway (an east-west gateway) with double HBONE
//! — an outer CONNECT that the gateway terminates, and inside it an inner
//! CONNECT over TLS to the destination itself. As in istio/ztunnel:
//!
//! - the gateway is the workload's `network_gateway`: by address (the
//!   gateway workload at that IP, or an endpoint of the service with that
//!   VIP), or by hostname (an endpoint of that service serving the
//!   gateway's HBONE port);
//! - the outer TLS must present the gateway workload's identity (or one of
//!   its service's SANs), the inner TLS the destination workload's (or one
//!   of the destination service's SANs);
//! - the outer `:authority` is the destination service's `hostname:port`,
//!   which the gateway routes on without opening the inner tunnel;
//! - a workload on another network without a gateway is refused.
//!
//! The inner `:authority` is the destination's `ip:targetPort` when the
//! workload has an address (the far ztunnel delivers to exactly the
//! endpoint whose identity was checked), and the service `hostname:port`
//! (what istio/ztunnel sends) when it has none.
//!
//! Decisions only: no I/O, tested as tables.

use std::net::SocketAddr;

use ambit_hbone::Authority;
use ambit_identity::Identity;
use ambit_mesh::model::GatewayAddress;
use ambit_mesh::{Client, MeshState, Pick, Service, Workload};

/// A resolved network gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Where to dial (the gateway's address on its HBONE port).
    pub address: SocketAddr,
    /// Identities the gateway may present.
    pub identities: Vec<Identity>,
}

/// The double-HBONE route to a workload on another network.
#[derive(Debug, Clone)]
pub struct CrossNetwork {
    /// The gateway the outer CONNECT goes to.
    pub gateway: Gateway,
    /// The outer `:authority` (the service `hostname:port`).
    pub authority: Authority,
    /// The inner `:authority`.
    pub inner_authority: Authority,
    /// Identities the destination may present on the inner TLS.
    pub identities: Vec<Identity>,
}

fn with_sans(w: &Workload, svc: Option<&Service>) -> Vec<Identity> {
    let mut ids: Vec<Identity> = w.identity().into_iter().collect();
    if let Some(s) = svc {
        ids.extend(s.subject_alt_names.iter().filter_map(|s| s.parse().ok()));
    }
    ids
}

/// An endpoint of `svc` serving `port` for a client on `network`, as
/// (its `ip:targetPort`, its identities).
fn endpoint_of(
    state: &MeshState,
    svc: &Service,
    port: u16,
    network: &str,
    source: Option<&Workload>,
) -> Option<(SocketAddr, Vec<Identity>)> {
    let client = Client::new(network).with_source(source);
    match state.select(svc, port, &client) {
        Pick::Endpoint(ep) => {
            let addr = SocketAddr::new(ep.address?, ep.port);
            Some((addr, with_sans(&ep.workload, Some(svc))))
        }
        Pick::OriginalDestination | Pick::NoEndpoint => None,
    }
}

/// Resolves `gw`, the network gateway of a workload on `dst_network`, for
/// a client on `network`.
pub fn resolve_gateway(
    state: &MeshState,
    network: &str,
    dst_network: &str,
    source: Option<&Workload>,
    gw: &GatewayAddress,
) -> Result<Gateway, String> {
    let found = match gw {
        GatewayAddress::Address {
            network: net,
            ip,
            hbone_port,
        } => {
            let net = if net.is_empty() { dst_network } else { net };
            if let Some(w) = state.workload_by_ip(net, *ip) {
                Some((SocketAddr::new(*ip, *hbone_port), with_sans(&w, None)))
            } else {
                state
                    .service_by_vip(net, *ip)
                    .and_then(|s| endpoint_of(state, &s, *hbone_port, network, source))
            }
        }
        GatewayAddress::Hostname {
            namespace,
            hostname,
            hbone_port,
        } => state
            .service(&format!("{namespace}/{hostname}"))
            .and_then(|s| endpoint_of(state, &s, *hbone_port, network, source)),
    };
    match found {
        Some((address, identities)) if !identities.is_empty() => Ok(Gateway {
            address,
            identities,
        }),
        Some(_) => Err(format!("network gateway {gw:?} has no identity")),
        None => Err(format!("network gateway {gw:?} not found")),
    }
}

/// The route from a client on `network` to `workload` (on another
/// network) reached through `service` on `service_port`; `target` is the
/// workload's `ip:targetPort` when it has an address. Fails, with the
/// reason, when the workload has no gateway or the gateway is unknown.
pub fn cross_network(
    state: &MeshState,
    network: &str,
    source: Option<&Workload>,
    workload: &Workload,
    service: &Service,
    service_port: u16,
    target: Option<SocketAddr>,
) -> Result<CrossNetwork, String> {
    let Some(gw) = &workload.network_gateway else {
        return Err(format!(
            "workload {}/{} is on network {:?} without a network gateway (not dialled directly)",
            workload.namespace, workload.name, workload.network
        ));
    };
    let gateway = resolve_gateway(state, network, &workload.network, source, gw)?;
    let host = Authority::Host {
        host: service.hostname.to_ascii_lowercase(),
        port: service_port,
    };
    let identities = with_sans(workload, Some(service));
    if identities.is_empty() {
        return Err(format!(
            "workload {}/{} on network {:?} has no identity",
            workload.namespace, workload.name, workload.network
        ));
    }
    Ok(CrossNetwork {
        gateway,
        inner_authority: target.map_or_else(|| host.clone(), Authority::Addr),
        authority: host,
        identities,
    })
}

/// Shared with the plan tests: a mesh with networks net-a (this proxy's),
/// net-b (behind the east-west gateway) and net-c (no gateway).
#[cfg(test)]
pub(crate) const MESH: &str = r#"
workloads:
- {uid: sleep, name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["10.1.0.2"], protocol: HBONE, node: a, network: net-a}
- {uid: ewgw, name: ewgw, namespace: istio-system, serviceAccount: eastwest, workloadIps: ["10.1.0.1"], protocol: TCP, node: gw, network: net-b,
   services: {"istio-system/eastwest.istio-system.svc.cluster.local": {15008: 15008}}}
- {uid: echo-b, name: echo-b, namespace: default, serviceAccount: echo, workloadIps: ["10.2.0.2"], protocol: HBONE, node: b, network: net-b,
   networkGateway: {destination: {namespace: istio-system, hostname: eastwest.istio-system.svc.cluster.local}, hboneMtlsPort: 15008},
   services: {"default/echo.default.svc.cluster.local": {80: 7000}}}
- {uid: by-ip, name: by-ip, namespace: default, serviceAccount: by-ip, workloadIps: ["10.2.0.3"], protocol: TCP, node: b, network: net-b,
   networkGateway: {destination: "net-b/10.1.0.1", hboneMtlsPort: 15008},
   services: {"default/by-ip.default.svc.cluster.local": {80: 7000}}}
- {uid: no-addr, name: no-addr, namespace: default, serviceAccount: no-addr, workloadIps: [], protocol: HBONE, node: b, network: net-b,
   networkGateway: {destination: "net-b/10.1.0.100", hboneMtlsPort: 15008},
   services: {"default/no-addr.default.svc.cluster.local": {80: 7000}}}
- {uid: lost, name: lost, namespace: default, serviceAccount: lost, workloadIps: ["10.2.0.4"], protocol: HBONE, node: b, network: net-b,
   networkGateway: {destination: "net-b/10.9.9.9", hboneMtlsPort: 15008},
   services: {"default/lost.default.svc.cluster.local": {80: 7000}}}
- {uid: echo-c, name: echo-c, namespace: default, serviceAccount: echo, workloadIps: ["10.3.0.2"], protocol: HBONE, node: c, network: net-c,
   services: {"default/island.default.svc.cluster.local": {80: 7000}}}
- {uid: echo-a, name: echo-a, namespace: default, serviceAccount: echo, workloadIps: ["10.1.0.5"], protocol: HBONE, node: a2, network: net-a,
   services: {"default/local.default.svc.cluster.local": {80: 7000}}}
services:
- {name: eastwest, namespace: istio-system, hostname: eastwest.istio-system.svc.cluster.local, vips: ["net-b/10.1.0.100"], ports: {15008: 15008}}
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: ["net-a/10.96.0.1"], ports: {80: 7000}}
- {name: island, namespace: default, hostname: island.default.svc.cluster.local, vips: ["net-a/10.96.0.2"], ports: {80: 7000}}
- {name: local, namespace: default, hostname: local.default.svc.cluster.local, vips: ["net-a/10.96.0.3"], ports: {80: 7000}}
- {name: by-ip, namespace: default, hostname: by-ip.default.svc.cluster.local, vips: ["net-a/10.96.0.4"], ports: {80: 7000}}
- {name: no-addr, namespace: default, hostname: no-addr.default.svc.cluster.local, vips: ["net-a/10.96.0.5"], ports: {80: 7000}}
- {name: lost, namespace: default, hostname: lost.default.svc.cluster.local, vips: ["net-a/10.96.0.6"], ports: {80: 7000}}
"#;
