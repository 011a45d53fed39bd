//! Listeners, accept loops and drain: which listener feeds which path.
//! Every loop is [`ambit_server::run`]; one stop signal fans out to all of
//! a scope's listeners.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_hbone::Server;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::inbound::InboundHandler;
use crate::plan::{Entry, Local};
use crate::proxy::Proxy;
use crate::route::Ports;
use crate::sockets::{Sockets, canonical, original_dst};

/// How captured connections arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// TPROXY: the accepted socket's local address is the original
    /// destination (node-level design; listeners are IP_TRANSPARENT).
    Tproxy,
    /// REDIRECT: `SO_ORIGINAL_DST` gives it (in-pod design).
    Redirect,
}

impl Capture {
    /// The original destination of a connection captured this way.
    pub(crate) fn original_dst(self, tcp: &TcpStream) -> std::io::Result<SocketAddr> {
        match self {
            Self::Tproxy => tcp.local_addr().map(canonical),
            Self::Redirect => original_dst(tcp),
        }
    }
}

/// The three listeners of one capture scope.
#[derive(Debug)]
pub struct Listeners {
    /// 15001.
    pub outbound: TcpListener,
    /// 15006.
    pub inbound_plain: TcpListener,
    /// 15008.
    pub hbone: TcpListener,
}

impl Listeners {
    /// Binds the three ports on `ip` with `sockets` (transparent for TPROXY).
    pub fn bind(
        sockets: &Sockets,
        ip: IpAddr,
        ports: Ports,
        capture: Capture,
    ) -> std::io::Result<Self> {
        let t = capture == Capture::Tproxy;
        Ok(Self {
            outbound: sockets.listen(SocketAddr::new(ip, ports.outbound), t)?,
            inbound_plain: sockets.listen(SocketAddr::new(ip, ports.inbound_plain), t)?,
            hbone: sockets.listen(SocketAddr::new(ip, ports.hbone), t)?,
        })
    }
}

/// Which workloads a set of listeners serves, and how its sockets are
/// made.
#[derive(Clone)]
pub(crate) struct Scope {
    pub(crate) local: Local,
    pub(crate) sockets: Sockets,
    /// This scope's HBONE origin scope (see [`ambit_hbone::Origin`]).
    id: u64,
    dialer: Arc<dyn ambit_hbone::Dialer>,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("local", &self.local)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Scope {
    pub(crate) fn new(local: Local, sockets: Sockets) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            local,
            dialer: Arc::new(sockets.clone()),
            sockets,
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Where this scope's HBONE connections are dialled from: its sockets
    /// (the pod's namespace in in-pod mode), from `source` when given.
    pub(crate) fn origin(&self, source: Option<IpAddr>) -> ambit_hbone::Origin {
        ambit_hbone::Origin {
            scope: self.id,
            source,
            dialer: self.dialer.clone(),
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Proxy {
    fn limits(&self) -> ambit_server::Limits {
        ambit_server::Limits {
            drain_deadline: self.inner.cfg.drain_deadline,
            max_connections: self.inner.cfg.max_connections,
        }
    }

    /// Serves one capture scope's listeners until `shutdown`, then lets
    /// connections finish for up to the drain deadline.
    pub async fn serve(
        &self,
        listeners: Listeners,
        capture: Capture,
        local: Local,
        sockets: Sockets,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let scope = Arc::new(Scope::new(local, sockets));
        let (stop_tx, stop_rx) = watch::channel(false);
        let limits = self.limits();
        let outbound = ambit_server::run(
            listeners.outbound,
            stopped(stop_rx.clone()),
            limits,
            |tcp, peer, _| {
                let (me, scope) = (self.clone(), scope.clone());
                async move { me.captured(tcp, canonical(peer), capture, &scope).await }
            },
        );
        let plain = ambit_server::run(
            listeners.inbound_plain,
            stopped(stop_rx.clone()),
            limits,
            |tcp, peer, _| {
                let (me, scope) = (self.clone(), scope.clone());
                async move {
                    me.inbound_plain(tcp, canonical(peer), capture, &scope)
                        .await
                }
            },
        );
        let hbone = ambit_server::run(
            listeners.hbone,
            stopped(stop_rx),
            limits,
            |tcp, peer, drain| {
                let (me, scope) = (self.clone(), scope.clone());
                async move {
                    // Small HBONE frames must not wait for delayed ACKs.
                    let _ = tcp.set_nodelay(true);
                    let Ok(local_addr) = tcp.local_addr().map(canonical) else {
                        return;
                    };
                    let peer = canonical(peer);
                    let Some(server) = me.server_for(local_addr, &scope).await else {
                        tracing::debug!(%peer, %local_addr, "hbone connection to an address with no local workload");
                        return;
                    };
                    server
                        .serve_connection(tcp, local_addr, peer, drain.signaled())
                        .await;
                }
            },
        );
        let stop = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tokio::join!(outbound, plain, hbone, stop);
        // The scope is gone (in-pod: its pod was removed): so are its HBONE
        // servers.
        self.inner
            .servers()
            .retain(|(_, scope_id), _| *scope_id != scope.id);
    }

    /// HBONE servers cached now (one per local identity and capture
    /// scope; a scope's go when it stops serving).
    pub fn hbone_servers(&self) -> usize {
        self.inner.servers().len()
    }

    /// Serves SOCKS5 on `listener` (istio/ztunnel's opt-in
    /// `127.0.0.1:15080`) until `shutdown`, then lets connections finish
    /// for up to the drain deadline. Each client does the RFC 1928
    /// handshake (no authentication, CONNECT to an IPv4 or IPv6 address or
    /// a hostname resolved from the mesh state, see
    /// [`crate::route::resolve_host`]); its connection then takes the
    /// outbound path of a captured one, with the source workload chosen by
    /// [`crate::route::socks5_source`], and the reply reports how
    /// connecting went.
    pub async fn serve_socks5(
        &self,
        listener: TcpListener,
        local: Local,
        sockets: Sockets,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let scope = Arc::new(Scope::new(local, sockets));
        ambit_server::run(listener, shutdown, self.limits(), |tcp, peer, _| {
            let (me, scope) = (self.clone(), scope.clone());
            async move { me.socks5(tcp, peer, &scope).await }
        })
        .await;
    }

    /// A connection captured on 15001: its original destination, then the
    /// outbound path.
    async fn captured(&self, tcp: TcpStream, peer: SocketAddr, capture: Capture, scope: &Scope) {
        let _ = tcp.set_nodelay(true);
        let Ok(dst) = capture.original_dst(&tcp) else {
            tracing::warn!(%peer, "no original destination for a captured connection");
            return;
        };
        self.outbound(tcp, peer, dst, Entry::Captured, scope).await;
    }

    /// The HBONE server presenting the identity of the workload at
    /// `local_addr`.
    async fn server_for(
        &self,
        local_addr: SocketAddr,
        scope: &Scope,
    ) -> Option<Server<InboundHandler>> {
        let w = {
            let st = self.inner.state.read().ok()?;
            st.workload_by_ip(&self.inner.cfg.network, local_addr.ip())
        }?;
        if !scope.local.contains(&w) {
            return None;
        }
        let id = w.identity()?;
        let key = (id.as_str().to_owned(), scope.id);
        if let Some(s) = self.inner.servers().get(&key) {
            return Some(s.clone());
        }
        // No lock is held across the CA call: other identities' connections
        // go on meanwhile (two racing builds keep the first).
        let tls = match self.inner.certs.server_config(&id).await {
            Ok(c) => Arc::new(c),
            Err(error) => {
                tracing::warn!(identity = %id, %error, "no certificate for local workload");
                return None;
            }
        };
        let mut cfg = self.inner.cfg.hbone_server.clone();
        // The L3 destination must be the HBONE target (SSRF guard).
        cfg.require_authority_ip_is_local = true;
        let server = Server::new(
            tls,
            cfg,
            InboundHandler {
                proxy: self.clone(),
                local: scope.local.clone(),
                sockets: scope.sockets.clone(),
            },
        );
        Some(self.inner.servers().entry(key).or_insert(server).clone())
    }
}
