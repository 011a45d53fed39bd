//! Inbound: HBONE streams terminated on 15008 and plaintext connections on
//! 15006, each decided by [`route::inbound`] and carried to the workload.

use std::future::Future;
use std::net::SocketAddr;

use ambit_hbone::{Decision, Handler, InboundRequest, Rejection, copy_bidirectional};
use tokio::net::TcpStream;

use crate::conn::{ConnRecord, Peers, Reporter};
use crate::plan::Local;
use crate::proxy::Proxy;
use crate::route::{self, Inbound};
use crate::serve::{Capture, Scope};
use crate::sockets::Sockets;
use crate::watch::{Facts, REVOKED, until_revoked};

impl Proxy {
    /// A plaintext inbound connection from outside the mesh (15006).
    pub(crate) async fn inbound_plain(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        capture: Capture,
        scope: &Scope,
    ) {
        let Ok(target) = capture.original_dst(&tcp) else {
            return;
        };
        let inner = &self.inner;
        let plan = {
            let Ok(st) = inner.state.read() else {
                return;
            };
            route::inbound(
                &st,
                &inner.cfg.network,
                &inner.cfg.ports,
                target,
                None,
                peer.ip(),
                &|w| scope.local.contains(w),
            )
        };
        let record = ConnRecord::new(&inner.metrics, "inbound_plaintext", peer, target);
        let (workload, target) = match plan {
            Inbound::Accept {
                workload, target, ..
            } => (workload, target),
            Inbound::NotLocal(why) => return record.close(0, 0, why),
            Inbound::Denied(reason) => return record.close(0, 0, &format!("DENY {reason:?}")),
        };
        let mut record = record.with_peers(&Peers {
            reporter: Reporter::Destination,
            source: None,
            source_principal: None,
            destination: Some(&workload),
            service: None,
            mtls: false,
        });
        record.open();
        let tracked = inner.registry.track(Facts {
            workload: workload.uid.clone(),
            src_identity: None,
            src_ip: peer.ip(),
            dst: target,
        });
        let spoof = inner.cfg.spoof_source.then_some(peer.ip());
        let mut up = match scope.sockets.connect(target, spoof).await {
            Ok(up) => up,
            Err(e) => return record.fail(&format!("connect {target}: {e}")),
        };
        match until_revoked(&tracked, copy_bidirectional(&mut tcp, &mut up)).await {
            Some(Ok(s)) => record.close(s.a_to_b, s.b_to_a, ""),
            Some(Err(e)) => record.close(0, 0, &e.to_string()),
            None => record.close(0, 0, REVOKED),
        }
    }
}

/// The connection's source: the TCP peer (the source ztunnel dials from the
/// source workload's own address), or the `forwarded` client when the peer
/// is a waypoint that mesh state names for the destination. A header from
/// any other peer is ignored: it could claim any address.
fn source_of(
    st: &ambit_mesh::MeshState,
    network: &str,
    req: &InboundRequest,
    target: SocketAddr,
) -> SocketAddr {
    let Some(claimed) = req
        .connect_headers
        .forwarded
        .as_ref()
        .and_then(|f| f.for_addr)
    else {
        return req.peer_addr;
    };
    if claimed.ip() == req.peer_addr.ip() {
        return req.peer_addr;
    }
    let trusted = st.workload_by_ip(network, target.ip()).is_some_and(|dst| {
        route::is_waypoint_for(st, network, &dst, req.peer_addr.ip(), &req.peer_identity)
    });
    if trusted {
        claimed
    } else {
        tracing::debug!(peer = %req.peer_addr, %claimed, "ignoring forwarded from a peer that is not the destination's waypoint");
        req.peer_addr
    }
}

/// Decides each inbound HBONE stream and carries it to the workload.
#[derive(Clone)]
pub(crate) struct InboundHandler {
    pub(crate) proxy: Proxy,
    pub(crate) local: Local,
    pub(crate) sockets: Sockets,
}

impl Handler for InboundHandler {
    fn handle(&self, req: InboundRequest) -> impl Future<Output = Decision> + Send {
        let me = self.clone();
        async move {
            let inner = &me.proxy.inner;
            let Some(target) = req.authority.socket_addr() else {
                return Decision::reject(Rejection::BadRequest);
            };
            let peer_id = req.peer_identity.clone();
            let (plan, src, src_wl, dst_wl) = {
                let Ok(st) = inner.state.read() else {
                    return Decision::reject(Rejection::Unavailable);
                };
                let net = &inner.cfg.network;
                let src = source_of(&st, net, &req, target);
                let plan = route::inbound(
                    &st,
                    &inner.cfg.network,
                    &inner.cfg.ports,
                    target,
                    Some(&req.peer_identity),
                    src.ip(),
                    &|w| me.local.contains(w),
                );
                (
                    plan,
                    src,
                    st.workload_by_ip(net, src.ip()),
                    st.workload_by_ip(net, target.ip()),
                )
            };
            let record = ConnRecord::new(&inner.metrics, "inbound", src, target)
                .with_source_identity(Some(&peer_id))
                .with_via(Some(SocketAddr::new(target.ip(), inner.cfg.ports.hbone)));
            let peers = |destination| Peers {
                reporter: Reporter::Destination,
                source: src_wl.as_deref(),
                source_principal: Some(&peer_id),
                destination,
                service: None,
                mtls: true,
            };
            let (workload, target) = match plan {
                Inbound::NotLocal(why) => {
                    record.close(0, 0, why);
                    return Decision::reject(Rejection::BadRequest);
                }
                Inbound::Denied(reason) => {
                    record
                        .with_peers(&peers(dst_wl.as_deref()))
                        .refuse("DENY", &format!("DENY {reason:?}"));
                    return Decision::reject(Rejection::Unauthorized);
                }
                Inbound::Accept {
                    workload, target, ..
                } => (workload, target),
            };
            let mut record = record.with_peers(&peers(Some(&workload)));
            record.open();
            let tracked = inner.registry.track(Facts {
                workload: workload.uid.clone(),
                src_identity: Some(req.peer_identity.clone()),
                src_ip: src.ip(),
                dst: target,
            });
            let spoof = inner.cfg.spoof_source.then_some(src.ip());
            let mut upstream = match me.sockets.connect(target, spoof).await {
                Ok(u) => u,
                Err(e) => {
                    record.fail(&format!("connect {target}: {e}"));
                    return Decision::reject(Rejection::Unavailable);
                }
            };
            Decision::accept(move |mut stream| async move {
                let copy = copy_bidirectional(&mut stream, &mut upstream);
                match until_revoked(&tracked, copy).await {
                    Some(Ok(s)) => record.close(s.a_to_b, s.b_to_a, ""),
                    Some(Err(e)) => record.close(e.stats.a_to_b, e.stats.b_to_a, &e.to_string()),
                    None => record.close(0, 0, REVOKED),
                }
            })
        }
    }
}
