//! The complete plan for one outbound connection: who the source is, where
//! the bytes go and how, and — for a workload on this node reached without
//! a tunnel — the inbound authorization verdict. Made from the mesh state
//! and the connection's facts alone (no I/O), so it is tested as tables;
//! [`crate::outbound`] only carries plans out.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_hbone::Authority;
use ambit_identity::Identity;
use ambit_mesh::{MeshState, Service, Workload};

use crate::network;
use crate::proxy::ProxyConfig;
use crate::route::{self, Inbound, Outbound, Ports};

/// Which workloads a listener serves inbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// Every workload on this node (node mode).
    Node(String),
    /// One pod (in-pod mode): by workload uid, or by name and namespace
    /// (ZDS carries the pod's UID, xDS a workload uid; the names match).
    Pod {
        /// The uid ZDS gave.
        uid: String,
        /// The pod name.
        name: String,
        /// The pod namespace.
        namespace: String,
    },
}

impl Local {
    /// Whether this proxy serves `w` inbound.
    pub fn contains(&self, w: &Workload) -> bool {
        match self {
            Self::Node(n) => w.node == *n,
            Self::Pod {
                uid,
                name,
                namespace,
            } => {
                w.uid == *uid || (!name.is_empty() && w.name == *name && w.namespace == *namespace)
            }
        }
    }

    /// The pod's uid in in-pod mode.
    pub fn pod_uid(&self) -> Option<&str> {
        match self {
            Self::Pod { uid, .. } => Some(uid),
            Self::Node(_) => None,
        }
    }
}

/// How an outbound connection reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Captured on 15001: the app does not know the proxy is there.
    Captured,
    /// Through the SOCKS5 listener: the app waits for a reply before its
    /// bytes flow, and asked for the mesh path explicitly.
    Socks5,
}

/// Why a connection is refused before anything is dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Policy: authorization, a ztunnel port, a source without identity
    /// (SOCKS5 "not allowed").
    Policy,
    /// Nowhere to go: no endpoint, not local (SOCKS5 "host unreachable").
    Unreachable,
}

/// The hop an outbound connection takes.
#[derive(Debug, Clone)]
pub enum Hop {
    /// HBONE to a remote ztunnel or a waypoint, as the source identity.
    Hbone {
        /// Where to connect (`endpoint:15008` or `waypoint:15008`).
        address: SocketAddr,
        /// The CONNECT `:authority`.
        authority: SocketAddr,
        /// The source's identity, presented to the far side.
        source_identity: Identity,
        /// Identities the server may present.
        identities: Vec<Identity>,
    },
    /// Double HBONE to a workload on another network, through its network
    /// gateway (see [`crate::network`]): the outer CONNECT goes to the
    /// gateway, the inner one, over TLS inside it, to the destination.
    DoubleHbone {
        /// The gateway's address (its HBONE port).
        gateway: SocketAddr,
        /// The outer `:authority` (the service `hostname:port`).
        authority: Authority,
        /// Identities the gateway may present.
        gateway_identities: Vec<Identity>,
        /// The inner `:authority` (`ip:targetPort`, or the service
        /// `hostname:port` for a workload without an address).
        inner_authority: Authority,
        /// The source's identity, presented to both.
        source_identity: Identity,
        /// Identities the destination may present on the inner TLS.
        identities: Vec<Identity>,
    },
    /// A workload on this node, captured: no wire to cross, so no tunnel;
    /// the inbound checks already allowed it, and the workload is dialled
    /// directly (from the original source address when spoofing).
    SameNode {
        /// The workload's `ip:port`.
        target: SocketAddr,
    },
    /// Plain TCP (outside the mesh, or protocol TCP).
    Passthrough {
        /// Where to connect.
        address: SocketAddr,
    },
    /// Refused: nothing is dialled.
    Refuse {
        /// Why, for the access log.
        reason: String,
        /// What kind of refusal (the SOCKS5 reply).
        refusal: Refusal,
    },
}

/// Everything needed to carry one outbound connection.
#[derive(Debug, Clone)]
pub struct OutboundPlan {
    /// The source workload, when the peer is one.
    pub source: Option<Arc<Workload>>,
    /// The original destination.
    pub dst: SocketAddr,
    /// The destination workload, when known (metrics, logs).
    pub workload: Option<Arc<Workload>>,
    /// The service, when the destination was a VIP (metrics, logs).
    pub service: Option<Arc<Service>>,
    /// Whether the hop is mutually authenticated (HBONE, or a same-node
    /// hop inside the mesh).
    pub mtls: bool,
    /// The address actually dialled, when there is one (access log).
    pub via: Option<SocketAddr>,
    /// The hop.
    pub hop: Hop,
}

impl OutboundPlan {
    /// The source workload's SPIFFE id: the one an HBONE hop already
    /// carries, else made from the source workload.
    pub fn source_identity(&self) -> Option<Cow<'_, Identity>> {
        match &self.hop {
            Hop::Hbone {
                source_identity, ..
            }
            | Hop::DoubleHbone {
                source_identity, ..
            } => Some(Cow::Borrowed(source_identity)),
            _ => self
                .source
                .as_ref()
                .and_then(|w| w.identity())
                .map(Cow::Owned),
        }
    }
}

/// The source workload of a connection captured from `peer_ip`: in node
/// mode the local workload at that address; in-pod, the pod itself (by uid,
/// or by address within the pod).
pub fn captured_source(
    state: &MeshState,
    network: &str,
    local: &Local,
    peer_ip: IpAddr,
) -> Option<Arc<Workload>> {
    match local {
        Local::Node(_) => state.workload_by_ip(network, peer_ip),
        Local::Pod { uid, .. } => state.workload(uid).or_else(|| {
            state
                .workload_by_ip(network, peer_ip)
                .filter(|w| local.contains(w))
        }),
    }
}

/// ztunnel's other well-known ports: admin 15000, metrics 15020,
/// readiness 15021, DNS 15053, SOCKS5 15080.
const OTHER_ZTUNNEL_PORTS: [u16; 5] = [15000, 15020, 15021, 15053, 15080];

/// Why a connection to `dst` would come back to ztunnel itself: one of
/// ztunnel's own addresses (`own`, which includes its loopback) on a port
/// it listens on, or any loopback or unspecified address that the mesh
/// does not name as a workload or service (`known`: only a local-mode
/// configuration, such as a benchmark on one host, puts workloads on
/// loopback; ztunnel's loopback is never the app's). Without this an app
/// dialling `127.0.0.1:15001` chains through ztunnel until descriptors run
/// out.
pub fn self_loop(
    dst: SocketAddr,
    ports: &Ports,
    own: &[IpAddr],
    known: bool,
) -> Option<&'static str> {
    let ip = match dst.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let ztunnel_port = ports.is_proxy_port(dst.port()) || OTHER_ZTUNNEL_PORTS.contains(&dst.port());
    if ztunnel_port && (own.contains(&ip) || ip.is_loopback() || ip.is_unspecified()) {
        return Some("destination is ztunnel itself (self-loop)");
    }
    if (ip.is_loopback() || ip.is_unspecified()) && !known {
        return Some("destination is a loopback address outside the mesh (self-loop)");
    }
    None
}

/// Plans the connection from `peer` to `dst` that arrived by `entry` on a
/// listener serving `local`. The source workload is found as the entry
/// implies ([`captured_source`], or [`route::socks5_source`]); the path is
/// [`route::outbound`]'s; a captured connection to a workload this proxy
/// serves skips the tunnel and is authorized here as its inbound side
/// would ([`route::inbound`]). A SOCKS5 client asked for the mesh path, so
/// it gets HBONE even to a workload on this node (as istio/ztunnel does).
pub fn plan_outbound(
    state: &MeshState,
    cfg: &ProxyConfig,
    local: &Local,
    entry: Entry,
    peer: SocketAddr,
    dst: SocketAddr,
) -> OutboundPlan {
    let (network, ports) = (cfg.network.as_str(), &cfg.ports);
    let source = match entry {
        Entry::Captured => captured_source(state, network, local, peer.ip()),
        Entry::Socks5 => route::socks5_source(
            state,
            network,
            &|w| local.contains(w),
            local.pod_uid(),
            peer.ip(),
        ),
    };
    let src_id = source.as_ref().and_then(|w| w.identity());
    let mut plan = OutboundPlan {
        source,
        dst,
        workload: None,
        service: None,
        mtls: false,
        via: None,
        hop: Hop::Refuse {
            reason: String::new(),
            refusal: Refusal::Unreachable,
        },
    };
    let refuse = |reason: String, refusal| Hop::Refuse { reason, refusal };
    let known = state.lookup(network, dst.ip()).is_some();
    if let Some(why) = self_loop(dst, ports, &cfg.own_addresses, known) {
        plan.hop = refuse(why.to_owned(), Refusal::Policy);
        return plan;
    }
    match route::outbound(state, network, ports, plan.source.as_deref(), dst) {
        Outbound::Reject(why) => {
            let refusal = if why.contains("ztunnel port") {
                Refusal::Policy
            } else {
                Refusal::Unreachable
            };
            plan.hop = refuse(why.to_owned(), refusal);
        }
        Outbound::Passthrough {
            address,
            workload,
            service,
        } => {
            plan.workload = workload;
            plan.service = service;
            plan.via = Some(address);
            plan.hop = Hop::Passthrough { address };
        }
        Outbound::OtherNetwork {
            workload,
            service,
            target,
        } => {
            plan.mtls = true;
            let route = network::cross_network(
                state,
                network,
                plan.source.as_deref(),
                &workload,
                &service,
                dst.port(),
                target,
            );
            plan.workload = Some(workload);
            plan.service = Some(service);
            plan.hop = match (route, src_id) {
                (Err(reason), _) => refuse(reason, Refusal::Unreachable),
                (Ok(_), None) => refuse(
                    "source workload has no identity".to_owned(),
                    Refusal::Policy,
                ),
                (Ok(r), Some(source_identity)) => {
                    plan.via = Some(r.gateway.address);
                    Hop::DoubleHbone {
                        gateway: r.gateway.address,
                        authority: r.authority,
                        gateway_identities: r.gateway.identities,
                        inner_authority: r.inner_authority,
                        source_identity,
                        identities: r.identities,
                    }
                }
            };
        }
        Outbound::Hbone {
            authority,
            workload: Some(w),
            service,
            waypoint: false,
            ..
        } if entry == Entry::Captured && local.contains(&w) => {
            plan.mtls = true;
            plan.via = Some(authority);
            plan.service = service;
            let verdict = route::inbound(
                state,
                network,
                ports,
                authority,
                src_id.as_ref(),
                peer.ip(),
                &|x| local.contains(x),
            );
            plan.hop = match verdict {
                Inbound::Accept { target, .. } => Hop::SameNode { target },
                Inbound::Denied(reason) => refuse(format!("DENY {reason:?}"), Refusal::Policy),
                Inbound::NotLocal(why) => refuse(why.to_owned(), Refusal::Unreachable),
            };
            plan.workload = Some(w);
        }
        Outbound::Hbone {
            address,
            authority,
            identities,
            workload,
            service,
            ..
        } => {
            plan.mtls = true;
            plan.via = Some(address);
            plan.workload = workload;
            plan.service = service;
            plan.hop = match src_id {
                Some(source_identity) => Hop::Hbone {
                    address,
                    authority,
                    source_identity,
                    identities,
                },
                None => refuse(
                    "source workload has no identity".to_owned(),
                    Refusal::Policy,
                ),
            };
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_mesh::Config;

    const MESH: &str = r#"
workloads:
- {uid: sleep, name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["10.244.0.3"], protocol: HBONE, node: a}
- {uid: anon, name: anon, namespace: default, workloadIps: ["10.244.0.4"], protocol: TCP, node: a}
- {uid: echo, name: echo, namespace: default, serviceAccount: echo, workloadIps: ["10.244.0.5"], protocol: HBONE, node: a}
- {uid: remote, name: remote, namespace: default, serviceAccount: remote, workloadIps: ["10.244.1.2"], protocol: HBONE, node: b}
policies:
- {name: deny-9999, namespace: default, action: Deny, rules: [[[{destinationPorts: [9999]}]]]}
"#;

    fn state() -> MeshState {
        MeshState::from_config(Config::parse(MESH, "test").expect("mesh"))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn plan(entry: Entry, local: &Local, peer: &str, dst: &str) -> OutboundPlan {
        let cfg = ProxyConfig {
            own_addresses: vec!["10.244.0.2".parse().expect("ip")],
            ..ProxyConfig::default()
        };
        plan_outbound(&state(), &cfg, local, entry, addr(peer), addr(dst))
    }

    /// (entry, peer, dst) -> (source uid, hop kind, refusal, mtls, via).
    type Case = (
        Entry,
        &'static str,
        &'static str,
        Option<&'static str>,
        &'static str,
        Option<Refusal>,
        bool,
        Option<&'static str>,
    );

    #[test]
    fn outbound_plans() {
        let node_a = Local::Node("a".into());
        let sleep = "10.244.0.3:40000";
        // (entry, peer, dst) -> (source uid, hop kind, refusal, mtls, via)
        let cases: &[Case] = &[
            // Remote HBONE workload: tunnel as sleep.
            (
                Entry::Captured,
                sleep,
                "10.244.1.2:80",
                Some("sleep"),
                "hbone",
                None,
                true,
                Some("10.244.1.2:15008"),
            ),
            // Same node, allowed: dialled directly, authorized here.
            (
                Entry::Captured,
                sleep,
                "10.244.0.5:80",
                Some("sleep"),
                "same-node",
                None,
                true,
                Some("10.244.0.5:80"),
            ),
            // Same node, denied by policy: refused as policy.
            (
                Entry::Captured,
                sleep,
                "10.244.0.5:9999",
                Some("sleep"),
                "refuse",
                Some(Refusal::Policy),
                true,
                Some("10.244.0.5:9999"),
            ),
            // SOCKS5 asked for the mesh: HBONE even on the same node.
            (
                Entry::Socks5,
                sleep,
                "10.244.0.5:80",
                Some("sleep"),
                "hbone",
                None,
                true,
                Some("10.244.0.5:15008"),
            ),
            // Outside the mesh: passthrough.
            (
                Entry::Captured,
                sleep,
                "192.0.2.1:443",
                Some("sleep"),
                "passthrough",
                None,
                false,
                Some("192.0.2.1:443"),
            ),
            // A ztunnel port of a mesh workload: a policy refusal.
            (
                Entry::Captured,
                sleep,
                "10.244.1.2:15008",
                Some("sleep"),
                "refuse",
                Some(Refusal::Policy),
                false,
                None,
            ),
            // A workload without a service account tunnels as `default`.
            (
                Entry::Captured,
                "10.244.0.4:1",
                "10.244.1.2:80",
                Some("anon"),
                "hbone",
                None,
                true,
                Some("10.244.1.2:15008"),
            ),
            // A source that is no workload has no identity: it cannot tunnel.
            (
                Entry::Captured,
                "10.9.9.9:1",
                "10.244.1.2:80",
                None,
                "refuse",
                Some(Refusal::Policy),
                true,
                Some("10.244.1.2:15008"),
            ),
        ];
        for (entry, peer, dst, src, kind, refusal, mtls, via) in cases {
            let p = plan(*entry, &node_a, peer, dst);
            let case = format!("{entry:?} {peer} -> {dst}");
            assert_eq!(p.source.as_ref().map(|w| w.uid.as_str()), *src, "{case}");
            let (k, r) = match &p.hop {
                Hop::Hbone { .. } => ("hbone", None),
                Hop::DoubleHbone { .. } => ("double-hbone", None),
                Hop::SameNode { .. } => ("same-node", None),
                Hop::Passthrough { .. } => ("passthrough", None),
                Hop::Refuse { refusal, .. } => ("refuse", Some(*refusal)),
            };
            assert_eq!((k, r), (*kind, *refusal), "{case}: {:?}", p.hop);
            assert_eq!(p.mtls, *mtls, "{case}");
            assert_eq!(p.via, via.map(addr), "{case}");
            assert_eq!(p.dst, addr(dst), "{case}");
        }
    }

    #[test]
    fn self_loops_are_refused() {
        let node_a = Local::Node("a".into());
        for (entry, dst) in [
            (Entry::Captured, "127.0.0.1:15001"),
            (Entry::Captured, "127.0.0.53:53"),
            (Entry::Socks5, "127.0.0.1:15080"),
            (Entry::Socks5, "[::1]:15001"),
            (Entry::Socks5, "[::ffff:127.0.0.1]:15006"),
            (Entry::Captured, "0.0.0.0:15008"),
            // ztunnel's own address on its ports.
            (Entry::Captured, "10.244.0.2:15001"),
            (Entry::Captured, "10.244.0.2:15006"),
            (Entry::Socks5, "10.244.0.2:15000"),
        ] {
            let p = plan(entry, &node_a, "10.244.0.3:1", dst);
            let Hop::Refuse { reason, refusal } = &p.hop else {
                panic!("{entry:?} -> {dst}: {:?}", p.hop);
            };
            assert_eq!(*refusal, Refusal::Policy, "{dst}");
            assert!(reason.contains("self-loop"), "{dst}: {reason}");
        }
        // ztunnel's address on another port is an ordinary destination.
        let p = plan(Entry::Captured, &node_a, "10.244.0.3:1", "10.244.0.2:8080");
        assert!(matches!(p.hop, Hop::Passthrough { .. }), "{:?}", p.hop);
    }

    #[test]
    fn hbone_hops_carry_both_identities() {
        let p = plan(
            Entry::Captured,
            &Local::Node("a".into()),
            "10.244.0.3:1",
            "10.244.1.2:80",
        );
        let Hop::Hbone {
            source_identity,
            identities,
            authority,
            ..
        } = &p.hop
        else {
            panic!("{:?}", p.hop)
        };
        assert_eq!(
            source_identity.as_str(),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        assert_eq!(
            identities[0].as_str(),
            "spiffe://cluster.local/ns/default/sa/remote"
        );
        assert_eq!(*authority, addr("10.244.1.2:80"));
        assert_eq!(p.workload.as_ref().map(|w| w.uid.as_str()), Some("remote"));
    }

    #[test]
    fn in_pod_sources_are_the_pod() {
        let pod = Local::Pod {
            uid: "sleep".into(),
            name: "sleep".into(),
            namespace: "default".into(),
        };
        // In-pod, the peer address does not matter: the pod is the source.
        let p = plan(Entry::Captured, &pod, "127.0.0.6:1", "10.244.1.2:80");
        assert_eq!(p.source.as_ref().map(|w| w.uid.as_str()), Some("sleep"));
        // Another pod's workload is not local to this pod's listeners.
        let p = plan(Entry::Captured, &pod, "10.244.0.3:1", "10.244.0.5:80");
        assert!(matches!(p.hop, Hop::Hbone { .. }), "{:?}", p.hop);
        let s = state();
        assert!(captured_source(&s, "", &pod, "10.244.0.5".parse().expect("ip")).is_some());
        let other = Local::Pod {
            uid: "gone".into(),
            name: "gone".into(),
            namespace: "default".into(),
        };
        assert!(captured_source(&s, "", &other, "10.244.0.5".parse().expect("ip")).is_none());
    }

    /// (dst) -> (hop kind, refusal, via, outer authority, inner authority,
    /// gateway identity, destination identity).
    type NetCase = (
        &'static str,
        &'static str,
        Option<Refusal>,
        Option<&'static str>,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );

    #[test]
    fn cross_network_plans() {
        let state = MeshState::from_config(Config::parse(network::MESH, "test").expect("mesh"));
        let cfg = ProxyConfig {
            network: "net-a".into(),
            ..ProxyConfig::default()
        };
        let local = Local::Node("a".into());
        let sa = |s: &str| format!("spiffe://cluster.local/ns/{s}");
        let cases: &[NetCase] = &[
            // Gateway by hostname: an endpoint of the gateway service; the
            // outer authority is the service hostname, the inner the pod.
            (
                "10.96.0.1:80",
                "double-hbone",
                None,
                Some("10.1.0.1:15008"),
                "echo.default.svc.cluster.local:80",
                "10.2.0.2:7000",
                "istio-system/sa/eastwest",
                "default/sa/echo",
            ),
            // Gateway by address (the gateway workload's IP); a TCP workload
            // on another network goes through the gateway too.
            (
                "10.96.0.4:80",
                "double-hbone",
                None,
                Some("10.1.0.1:15008"),
                "by-ip.default.svc.cluster.local:80",
                "10.2.0.3:7000",
                "istio-system/sa/eastwest",
                "default/sa/by-ip",
            ),
            // A workload without an address, gateway by service VIP: the
            // inner authority is the service hostname, as ztunnel sends.
            (
                "10.96.0.5:80",
                "double-hbone",
                None,
                Some("10.1.0.1:15008"),
                "no-addr.default.svc.cluster.local:80",
                "no-addr.default.svc.cluster.local:80",
                "istio-system/sa/eastwest",
                "default/sa/no-addr",
            ),
            // Another network without a gateway: refused, never dialled.
            (
                "10.96.0.2:80",
                "refuse",
                Some(Refusal::Unreachable),
                None,
                "",
                "",
                "",
                "",
            ),
            // A gateway mesh state does not know: refused.
            (
                "10.96.0.6:80",
                "refuse",
                Some(Refusal::Unreachable),
                None,
                "",
                "",
                "",
                "",
            ),
            // Same network: the single-HBONE path, unchanged.
            (
                "10.96.0.3:80",
                "hbone",
                None,
                Some("10.1.0.5:15008"),
                "",
                "",
                "",
                "",
            ),
        ];
        for (dst, kind, refusal, via, outer, inner, gw_id, dst_id) in cases {
            let p = plan_outbound(
                &state,
                &cfg,
                &local,
                Entry::Captured,
                addr("10.1.0.2:1"),
                addr(dst),
            );
            assert_eq!(
                p.source.as_ref().map(|w| w.uid.as_str()),
                Some("sleep"),
                "{dst}"
            );
            assert_eq!(p.via, via.map(addr), "{dst}: {:?}", p.hop);
            // Whatever the hop, the plan names the source's own identity.
            assert_eq!(
                p.source_identity().map(|i| i.as_str().to_owned()),
                Some(sa("default/sa/sleep")),
                "{dst}"
            );
            match &p.hop {
                Hop::DoubleHbone {
                    gateway,
                    authority,
                    gateway_identities,
                    inner_authority,
                    source_identity,
                    identities,
                } => {
                    assert_eq!(*kind, "double-hbone", "{dst}");
                    assert!(p.mtls, "{dst}");
                    assert_eq!(Some(*gateway), via.map(addr), "{dst}");
                    assert_eq!(authority.to_string(), *outer, "{dst}");
                    assert_eq!(inner_authority.to_string(), *inner, "{dst}");
                    assert_eq!(gateway_identities[0].as_str(), sa(gw_id), "{dst}");
                    assert_eq!(identities[0].as_str(), sa(dst_id), "{dst}");
                    assert_eq!(source_identity.as_str(), sa("default/sa/sleep"));
                }
                Hop::Refuse { reason, refusal: r } => {
                    assert_eq!((*kind, Some(*r)), ("refuse", *refusal), "{dst}");
                    assert!(reason.contains("network gateway"), "{dst}: {reason}");
                    assert!(p.workload.is_some(), "{dst}");
                }
                Hop::Hbone { .. } => assert_eq!(*kind, "hbone", "{dst}"),
                other => panic!("{dst}: {other:?}"),
            }
        }
    }
}
