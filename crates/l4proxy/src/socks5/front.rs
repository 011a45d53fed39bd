//! The SOCKS5 front door: handshake, resolve the requested host from the
//! mesh, then the outbound path of a captured connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{Address, Reply, read_handshake, unspecified};
use crate::conn::ConnRecord;
use crate::plan::{Entry, plan_outbound};
use crate::proxy::Proxy;
use crate::route;
use crate::serve::Scope;

/// The longest a SOCKS5 client may take to greet and send its request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Proxy {
    /// One SOCKS5 client: handshake, resolve, plan, then carry the plan.
    pub(crate) async fn socks5(&self, mut tcp: TcpStream, peer: SocketAddr, scope: &Scope) {
        let _ = tcp.set_nodelay(true);
        let handshake = read_handshake(&mut tcp);
        let mut hs = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(done)) => done,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "socks5 handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "socks5 handshake timed out");
                return;
            }
        };
        // Ok(None): the mesh does not know the host.
        let planned = self.inner.state.read().map_err(drop).map(|st| {
            let cfg = &self.inner.cfg;
            let dst = match &hs.address {
                Address::Ip(a) => Some(*a),
                Address::Domain(host, port) => route::resolve_host(&st, &cfg.network, host)
                    .map(|ip| SocketAddr::new(ip, *port)),
            };
            dst.map(|dst| plan_outbound(&st, cfg, &scope.local, Entry::Socks5, peer, dst))
        });
        let Ok(plan) = planned else {
            let _ = hs
                .reply(&mut tcp, Reply::GeneralFailure, unspecified())
                .await;
            return;
        };
        let Some(plan) = plan else {
            tracing::debug!(%peer, requested = %hs.address, "socks5: unknown host");
            let _ = hs
                .reply(&mut tcp, Reply::HostUnreachable, unspecified())
                .await;
            ConnRecord::new(&self.inner.metrics, "outbound", peer, unspecified()).close(
                0,
                0,
                &format!("socks5: unknown host {}", hs.address),
            );
            return;
        };
        self.carry(tcp, peer, plan, Entry::Socks5, scope, Some(hs))
            .await;
    }
}
