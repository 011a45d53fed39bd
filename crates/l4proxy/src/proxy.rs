//! The proxy: listeners, and carrying out the plans of [`crate::route`].

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ambit_hbone::{
    Client, ConnectHeaders, ConnectRequest, Decision, Forwarded, Handler, InboundRequest,
    Rejection, Server, copy_bidirectional,
};
use ambit_identity::{CertManager, Identity};
use ambit_mesh::{MeshState, Workload};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::admin::{Responder, reply};
use crate::metrics::{AccessLog, Metrics, TcpLabels};
use crate::route::{self, Inbound, Outbound, Ports};
use crate::sockets::{Sockets, original_dst};
use crate::socks5::{self, Reply};

/// How an outbound connection reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Captured on 15001: the app does not know the proxy is there.
    Captured,
    /// Through the SOCKS5 listener: the app waits for a reply before its
    /// bytes flow, and asked for the mesh path explicitly.
    Socks5,
}

/// The far side of an outbound connection, once connected.
enum Upstream {
    Tcp(TcpStream),
    Hbone(Box<ambit_hbone::HboneStream>),
}

impl Upstream {
    /// The local address of the hop (SOCKS5's BND.ADDR).
    fn bound(&self) -> SocketAddr {
        match self {
            Self::Tcp(s) => s.local_addr().unwrap_or_else(|_| socks5::unspecified()),
            Self::Hbone(_) => socks5::unspecified(),
        }
    }

    /// Copies both ways between the client and this upstream: bytes
    /// received from the client, bytes sent to it.
    async fn copy_with(self, client: &mut TcpStream) -> Result<(u64, u64), String> {
        let r = match self {
            Self::Tcp(mut up) => copy_bidirectional(client, &mut up).await,
            Self::Hbone(mut up) => copy_bidirectional(client, &mut *up).await,
        };
        r.map(|s| (s.a_to_b, s.b_to_a)).map_err(|e| e.to_string())
    }
}

/// Why an outbound connection could not be made: for the access log, and
/// the SOCKS5 reply it becomes.
struct Failure {
    reason: String,
    reply: Reply,
}

impl Failure {
    fn new(reason: impl Into<String>, reply: Reply) -> Self {
        Self {
            reason: reason.into(),
            reply,
        }
    }

    fn io(what: String, e: &std::io::Error) -> Self {
        Self::new(format!("{what}: {e}"), Reply::for_io(e))
    }

    /// An HBONE failure: the far ztunnel's 401 is a policy refusal, its
    /// 503 a refused or unknown upstream.
    fn hbone(address: SocketAddr, e: &ambit_hbone::ClientError) -> Self {
        use ambit_hbone::ClientError as E;
        let reply = match e {
            E::Status { status, .. } if status.as_u16() == 401 || status.as_u16() == 403 => {
                Reply::NotAllowed
            }
            E::Status { status, .. } if status.as_u16() == 503 => Reply::ConnectionRefused,
            E::Connect { source, .. } => Reply::for_io(source),
            E::ConnectTimeout { .. } => Reply::TtlExpired,
            E::Tls { .. } | E::TlsConfig { .. } => Reply::NotAllowed,
            _ => Reply::GeneralFailure,
        };
        Self::new(format!("hbone connect {address}: {e}"), reply)
    }
}

/// The longest a SOCKS5 client may take to greet and send its request.
const SOCKS5_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How captured connections arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// TPROXY: the accepted socket's local address is the original
    /// destination (node-level design; listeners are IP_TRANSPARENT).
    Tproxy,
    /// REDIRECT: `SO_ORIGINAL_DST` gives it (in-pod design).
    Redirect,
}

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
    pub(crate) fn contains(&self, w: &Workload) -> bool {
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
}

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The network this proxy's addresses live on ("" by default).
    pub network: String,
    /// The node name (workloads with this `node` are local).
    pub node_name: String,
    /// ztunnel's ports.
    pub ports: Ports,
    /// Connect to local workloads with the original source address.
    pub spoof_source: bool,
    /// How long connections may go on after shutdown starts.
    pub drain_deadline: Duration,
    /// HBONE client settings.
    pub hbone_client: ambit_hbone::ClientConfig,
    /// HBONE server settings.
    pub hbone_server: ambit_hbone::ServerConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            network: String::new(),
            node_name: String::new(),
            ports: Ports::default(),
            spoof_source: true,
            drain_deadline: Duration::from_secs(5),
            hbone_client: ambit_hbone::ClientConfig::default(),
            hbone_server: ambit_hbone::ServerConfig::default(),
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

/// The ztunnel engine. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("node", &self.inner.cfg.node_name)
            .finish()
    }
}

struct Inner {
    cfg: ProxyConfig,
    /// The mesh, written by the config source, read per connection.
    state: Arc<RwLock<MeshState>>,
    certs: Arc<CertManager>,
    client: Client,
    metrics: Metrics,
    /// One HBONE server per local identity, so each presents its own
    /// certificate; built on first use and kept for the process.
    servers: tokio::sync::Mutex<HashMap<String, Server<InboundHandler>>>,
}

/// Client TLS from the shared certificate manager.
struct ManagerTls(Arc<CertManager>);

impl ambit_hbone::TlsProvider for ManagerTls {
    fn client_config<'a>(
        &'a self,
        source: &'a Identity,
        expected: &'a [Identity],
    ) -> ambit_hbone::BoxFuture<'a, Result<Arc<rustls::ClientConfig>, ambit_hbone::BoxError>> {
        ambit_hbone::TlsProvider::client_config(self.0.as_ref(), source, expected)
    }
}

/// A local workload's identity, as HBONE presents it.
fn identity_key(id: &Identity) -> String {
    id.as_str().to_owned()
}

impl Proxy {
    /// A proxy over `state`, with certificates from `certs`.
    pub fn new(cfg: ProxyConfig, state: Arc<RwLock<MeshState>>, certs: Arc<CertManager>) -> Self {
        let client = Client::new(cfg.hbone_client.clone(), ManagerTls(Arc::clone(&certs)));
        Self {
            inner: Arc::new(Inner {
                cfg,
                state,
                certs,
                client,
                metrics: Metrics::new(),
                servers: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The mesh state.
    pub fn state(&self) -> &Arc<RwLock<MeshState>> {
        &self.inner.state
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The HBONE client (pooled connections).
    pub fn client(&self) -> &Client {
        &self.inner.client
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
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let me = self.clone();
        let (s1, s2, s3) = (sockets.clone(), sockets.clone(), sockets);
        let l = local.clone();
        let mut rx = stop_rx.clone();
        tasks.spawn(async move {
            me.accept_captured(listeners.outbound, false, capture, l, s1, &mut rx)
                .await
        });
        let me = self.clone();
        let l = local.clone();
        let mut rx = stop_rx.clone();
        tasks.spawn(async move {
            me.accept_captured(listeners.inbound_plain, true, capture, l, s2, &mut rx)
                .await
        });
        let me = self.clone();
        let mut rx = stop_rx.clone();
        tasks.spawn(async move { me.accept_hbone(listeners.hbone, local, s3, &mut rx).await });
        shutdown.await;
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
    }

    /// Serves SOCKS5 on `listener` (istio/ztunnel's opt-in
    /// `127.0.0.1:15080`) until `shutdown`, then lets connections finish
    /// for up to the drain deadline. Each client does the RFC 1928
    /// handshake (no authentication, CONNECT to an IPv4 or IPv6 address or
    /// a hostname resolved from the mesh state, see
    /// [`route::resolve_host`]); its connection then takes the outbound
    /// path of a captured one, with the source workload chosen by
    /// [`route::socks5_source`], and the reply reports how connecting went.
    pub async fn serve_socks5(
        &self,
        listener: TcpListener,
        local: Local,
        sockets: Sockets,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let deadline = self.inner.cfg.drain_deadline;
        let accept = Self::accept_loop(listener, &mut stop_rx, deadline, |tcp, peer| {
            let me = self.clone();
            let sockets = sockets.clone();
            let local = local.clone();
            Some(async move { me.socks5(tcp, peer, &local, &sockets).await })
        });
        let stop = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tokio::join!(accept, stop);
    }

    /// One SOCKS5 client: handshake, resolve, then the outbound path.
    async fn socks5(&self, mut tcp: TcpStream, peer: SocketAddr, local: &Local, sockets: &Sockets) {
        let _ = tcp.set_nodelay(true);
        let handshake = async {
            socks5::read_greeting(&mut tcp).await?;
            socks5::read_request(&mut tcp).await
        };
        let requested = match tokio::time::timeout(SOCKS5_HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(a)) => a,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "socks5 handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "socks5 handshake timed out");
                return;
            }
        };
        let (dst, source) = {
            let net = &self.inner.cfg.network;
            let Ok(st) = self.inner.state.read() else {
                let _ = socks5::send_reply(&mut tcp, Reply::GeneralFailure, socks5::unspecified())
                    .await;
                return;
            };
            let dst = match &requested {
                socks5::Address::Ip(a) => Some(*a),
                socks5::Address::Domain(host, port) => {
                    route::resolve_host(&st, net, host).map(|ip| SocketAddr::new(ip, *port))
                }
            };
            let pod_uid = match local {
                Local::Pod { uid, .. } => Some(uid.as_str()),
                Local::Node(_) => None,
            };
            let source = route::socks5_source(&st, net, &|w| local.contains(w), pod_uid, peer.ip());
            (dst, source)
        };
        let Some(dst) = dst else {
            tracing::debug!(%peer, %requested, "socks5: unknown host");
            let _ =
                socks5::send_reply(&mut tcp, Reply::HostUnreachable, socks5::unspecified()).await;
            AccessLog {
                direction: "outbound",
                src: peer,
                dst: socks5::unspecified(),
                via: None,
                src_identity: None,
                dst_identity: None,
                bytes_received: 0,
                bytes_sent: 0,
                duration: Duration::ZERO,
                reason: &format!("socks5: unknown host {requested}"),
            }
            .emit();
            return;
        };
        self.outbound_to(tcp, peer, dst, source, Entry::Socks5, local, sockets)
            .await;
    }

    async fn accept_loop<F, Fut>(
        listener: TcpListener,
        stop: &mut watch::Receiver<bool>,
        deadline: Duration,
        mut each: F,
    ) where
        F: FnMut(TcpStream, SocketAddr) -> Option<Fut>,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut conns = JoinSet::new();
        let stopped = wait_stop(stop.clone());
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                r = listener.accept() => match r {
                    Ok((s, peer)) => {
                        if let Some(f) = each(s, peer) {
                            conns.spawn(f);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        let left = conns.len();
        if left > 0 {
            tracing::info!(connections = left, ?deadline, "draining");
            if tokio::time::timeout(deadline, async {
                while conns.join_next().await.is_some() {}
            })
            .await
            .is_err()
            {
                tracing::warn!(
                    connections = conns.len(),
                    "drain deadline passed: closing connections"
                );
                conns.shutdown().await;
            }
        }
    }

    /// Accepts captured connections on 15001 (`inbound == false`) or
    /// plaintext inbound ones on 15006 (`inbound == true`).
    async fn accept_captured(
        &self,
        listener: TcpListener,
        inbound: bool,
        capture: Capture,
        local: Local,
        sockets: Sockets,
        stop: &mut watch::Receiver<bool>,
    ) {
        let deadline = self.inner.cfg.drain_deadline;
        Self::accept_loop(listener, stop, deadline, |tcp, peer| {
            let me = self.clone();
            let sockets = sockets.clone();
            let local = local.clone();
            Some(async move {
                if inbound {
                    me.inbound_plain(tcp, peer, capture, &local, &sockets).await
                } else {
                    me.outbound(tcp, peer, capture, &local, &sockets).await
                }
            })
        })
        .await;
    }

    async fn accept_hbone(
        &self,
        listener: TcpListener,
        local: Local,
        sockets: Sockets,
        stop: &mut watch::Receiver<bool>,
    ) {
        let deadline = self.inner.cfg.drain_deadline;
        let stop_rx = stop.clone();
        Self::accept_loop(listener, stop, deadline, |tcp, peer| {
            let me = self.clone();
            let sockets = sockets.clone();
            let local = local.clone();
            let rx = stop_rx.clone();
            Some(async move {
                // Small HBONE frames must not wait for delayed ACKs.
                let _ = tcp.set_nodelay(true);
                let Ok(local_addr) = tcp.local_addr() else { return };
                let Some(server) = me.server_for(local_addr, &local, sockets).await else {
                    tracing::debug!(%peer, %local_addr, "hbone connection to an address with no local workload");
                    return;
                };
                server
                    .serve_connection(tcp, local_addr, peer, wait_stop(rx))
                    .await;
            })
        })
        .await;
    }

    /// The HBONE server presenting the identity of the workload at `local_addr`.
    async fn server_for(
        &self,
        local_addr: SocketAddr,
        local: &Local,
        sockets: Sockets,
    ) -> Option<Server<InboundHandler>> {
        let w = {
            let st = self.inner.state.read().ok()?;
            st.workload_by_ip(&self.inner.cfg.network, local_addr.ip())
        }?;
        if !local.contains(&w) {
            return None;
        }
        let id = w.identity()?;
        let key = format!("{}|{local:?}", identity_key(&id));
        let mut servers = self.inner.servers.lock().await;
        if let Some(s) = servers.get(&key) {
            return Some(s.clone());
        }
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
                local: local.clone(),
                sockets,
            },
        );
        servers.insert(key, server.clone());
        Some(server)
    }

    fn labels(
        &self,
        reporter: &str,
        src: Option<&Workload>,
        src_id: Option<&str>,
        dst: Option<&Workload>,
        svc: Option<&str>,
        mtls: bool,
    ) -> TcpLabels {
        TcpLabels {
            reporter: reporter.into(),
            source_workload: src
                .map(|w| w.workload_name_or_name())
                .unwrap_or_else(|| "unknown".into()),
            source_workload_namespace: src
                .map(|w| w.namespace.clone())
                .unwrap_or_else(|| "unknown".into()),
            source_principal: src_id
                .map(str::to_owned)
                .unwrap_or_else(|| "unknown".into()),
            destination_workload: dst
                .map(|w| w.workload_name_or_name())
                .unwrap_or_else(|| "unknown".into()),
            destination_workload_namespace: dst
                .map(|w| w.namespace.clone())
                .unwrap_or_else(|| "unknown".into()),
            destination_principal: dst
                .and_then(|w| w.identity())
                .map(|i| i.as_str().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            destination_service: svc.unwrap_or("unknown").into(),
            request_protocol: "tcp".into(),
            response_flags: "-".into(),
            connection_security_policy: if mtls { "mutual_tls" } else { "none" }.into(),
        }
    }

    /// A captured outbound connection.
    async fn outbound(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        capture: Capture,
        local: &Local,
        sockets: &Sockets,
    ) {
        let _ = tcp.set_nodelay(true);
        let dst = match capture {
            Capture::Tproxy => tcp.local_addr(),
            Capture::Redirect => original_dst(&tcp),
        };
        let Ok(dst) = dst else {
            tracing::warn!(%peer, "no original destination for a captured connection");
            return;
        };
        let source = {
            let net = &self.inner.cfg.network;
            let Ok(st) = self.inner.state.read() else {
                return;
            };
            match local {
                Local::Node(_) => st.workload_by_ip(net, peer.ip()),
                Local::Pod { uid, .. } => st.workload(uid).or_else(|| {
                    st.workload_by_ip(net, peer.ip())
                        .filter(|w| local.contains(w))
                }),
            }
        };
        self.outbound_to(tcp, peer, dst, source, Entry::Captured, local, sockets)
            .await;
    }

    /// Carries one outbound connection from `source` (at `peer`) to `dst`:
    /// the route decision, authorization on the same-node path, metrics,
    /// the access log, and HBONE or plain TCP. Every outbound connection
    /// goes through here, captured or arriving over SOCKS5.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn outbound_to(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        dst: SocketAddr,
        source: Option<Arc<Workload>>,
        entry: Entry,
        local: &Local,
        sockets: &Sockets,
    ) {
        let started = Instant::now();
        let net = self.inner.cfg.network.clone();
        let plan = {
            let Ok(st) = self.inner.state.read() else {
                return;
            };
            route::outbound(&st, &net, &self.inner.cfg.ports, source.as_deref(), dst)
        };
        let src_id = source.as_ref().and_then(|w| w.identity());
        let src_id_s = src_id.as_ref().map(|i| i.as_str().to_owned());
        // The same-node shortcut skips the tunnel for captured traffic; a
        // SOCKS5 client asked for the mesh path, so it gets HBONE even to a
        // workload on this node (as istio/ztunnel does in-pod).
        let shortcut = entry == Entry::Captured;
        let (mut labels, via, connected) = match plan {
            Outbound::Reject(why) => {
                let mut l = self.labels(
                    "source",
                    source.as_deref(),
                    src_id_s.as_deref(),
                    None,
                    None,
                    false,
                );
                l.response_flags = "REJECT".into();
                let reply = if why.contains("ztunnel port") {
                    Reply::NotAllowed
                } else {
                    Reply::HostUnreachable
                };
                (l, None, Err(Failure::new(why, reply)))
            }
            Outbound::Passthrough {
                address,
                workload,
                service,
            } => {
                let svc = service.as_ref().map(|s| s.hostname.clone());
                let l = self.labels(
                    "source",
                    source.as_deref(),
                    src_id_s.as_deref(),
                    workload.as_deref(),
                    svc.as_deref(),
                    false,
                );
                self.inner.metrics.opened(&l);
                let r = match sockets.connect(address, None).await {
                    Ok(up) => Ok(Upstream::Tcp(up)),
                    Err(e) => Err(Failure::io(format!("connect {address}"), &e)),
                };
                (l, Some(address), r)
            }
            Outbound::Hbone {
                authority,
                workload: Some(w),
                service,
                waypoint: false,
                ..
            } if shortcut && local.contains(&w) => {
                // Same node: no wire to cross, so no tunnel; the inbound
                // checks run here and the workload is dialled directly.
                let svc = service.as_ref().map(|s| s.hostname.clone());
                let mut l = self.labels(
                    "source",
                    source.as_deref(),
                    src_id_s.as_deref(),
                    Some(&w),
                    svc.as_deref(),
                    true,
                );
                let decision = {
                    let Ok(st) = self.inner.state.read() else {
                        return;
                    };
                    route::inbound(
                        &st,
                        &net,
                        &self.inner.cfg.ports,
                        authority,
                        src_id.as_ref(),
                        peer.ip(),
                        &|x| local.contains(x),
                    )
                };
                let r = match decision {
                    Inbound::Accept { target, .. } => {
                        self.inner.metrics.opened(&l);
                        let spoof = self.inner.cfg.spoof_source.then_some(peer.ip());
                        match sockets.connect(target, spoof).await {
                            Ok(up) => Ok(Upstream::Tcp(up)),
                            Err(e) => Err(Failure::io(format!("connect {target}"), &e)),
                        }
                    }
                    Inbound::Denied(reason) => {
                        l.response_flags = "REJECT".into();
                        Err(Failure::new(format!("DENY {reason:?}"), Reply::NotAllowed))
                    }
                    Inbound::NotLocal(why) => {
                        l.response_flags = "REJECT".into();
                        Err(Failure::new(why, Reply::HostUnreachable))
                    }
                };
                (l, Some(authority), r)
            }
            Outbound::Hbone {
                address,
                authority,
                identities,
                workload,
                service,
                ..
            } => {
                let svc = service.as_ref().map(|s| s.hostname.clone());
                let l = self.labels(
                    "source",
                    source.as_deref(),
                    src_id_s.as_deref(),
                    workload.as_deref(),
                    svc.as_deref(),
                    true,
                );
                self.inner.metrics.opened(&l);
                let r = match src_id.clone() {
                    None => Err(Failure::new(
                        "source workload has no identity",
                        Reply::NotAllowed,
                    )),
                    Some(src) => {
                        let headers = ConnectHeaders {
                            forwarded: Some(Forwarded::new(peer)),
                            ..ConnectHeaders::default()
                        };
                        let req = ConnectRequest::new(src, identities, address, authority)
                            .with_headers(headers);
                        match self.inner.client.connect(req).await {
                            Ok(stream) => Ok(Upstream::Hbone(Box::new(stream))),
                            Err(e) => Err(Failure::hbone(address, &e)),
                        }
                    }
                };
                (l, Some(address), r)
            }
        };
        let result = match connected {
            Ok(up) => {
                let announced = match entry {
                    Entry::Captured => Ok(()),
                    Entry::Socks5 => {
                        socks5::send_reply(&mut tcp, Reply::Succeeded, up.bound()).await
                    }
                };
                match announced {
                    Ok(()) => up.copy_with(&mut tcp).await,
                    Err(e) => Err(format!("socks5 reply: {e}")),
                }
            }
            Err(f) => {
                if entry == Entry::Socks5 {
                    let _ = socks5::send_reply(&mut tcp, f.reply, socks5::unspecified()).await;
                }
                Err(f.reason)
            }
        };
        let (rx, tx, reason) = match &result {
            Ok((a, b)) => (*a, *b, String::new()),
            Err(e) => (0, 0, e.clone()),
        };
        if labels.response_flags == "REJECT" {
            self.inner.metrics.opened(&labels);
        } else if result.is_err() {
            labels.response_flags = "CONNECT".into();
        }
        self.inner.metrics.closed(&labels, rx, tx);
        AccessLog {
            direction: "outbound",
            src: peer,
            dst,
            via,
            src_identity: src_id_s.as_deref(),
            dst_identity: Some(labels.destination_principal.as_str()).filter(|s| *s != "unknown"),
            bytes_received: rx,
            bytes_sent: tx,
            duration: started.elapsed(),
            reason: &reason,
        }
        .emit();
    }

    /// A plaintext inbound connection from outside the mesh (15006).
    async fn inbound_plain(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        capture: Capture,
        local: &Local,
        sockets: &Sockets,
    ) {
        let started = Instant::now();
        let target = match capture {
            Capture::Tproxy => tcp.local_addr(),
            Capture::Redirect => original_dst(&tcp),
        };
        let Ok(target) = target else { return };
        let plan = {
            let Ok(st) = self.inner.state.read() else {
                return;
            };
            route::inbound(
                &st,
                &self.inner.cfg.network,
                &self.inner.cfg.ports,
                target,
                None,
                peer.ip(),
                &|w| local.contains(w),
            )
        };
        let (rx, tx, reason, dst) = match plan {
            Inbound::Accept {
                workload, target, ..
            } => {
                let l = self.labels("destination", None, None, Some(&workload), None, false);
                self.inner.metrics.opened(&l);
                let spoof = self.inner.cfg.spoof_source.then_some(peer.ip());
                let r = match sockets.connect(target, spoof).await {
                    Ok(mut up) => copy_bidirectional(&mut tcp, &mut up)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("connect {target}: {e}")),
                };
                let (a, b, why) = match r {
                    Ok(s) => (s.a_to_b, s.b_to_a, String::new()),
                    Err(e) => (0, 0, e),
                };
                self.inner.metrics.closed(&l, a, b);
                (
                    a,
                    b,
                    why,
                    workload.identity().map(|i| i.as_str().to_owned()),
                )
            }
            Inbound::NotLocal(why) => (0, 0, why.to_owned(), None),
            Inbound::Denied(reason) => (0, 0, format!("DENY {reason:?}"), None),
        };
        AccessLog {
            direction: "inbound_plaintext",
            src: peer,
            dst: target,
            via: None,
            src_identity: None,
            dst_identity: dst.as_deref(),
            bytes_received: rx,
            bytes_sent: tx,
            duration: started.elapsed(),
            reason: &reason,
        }
        .emit();
    }

    /// The admin endpoint (15000): `/config_dump`, `/quitquitquit`.
    pub fn admin_responder(&self, quit: Arc<Notify>) -> Responder {
        let me = self.clone();
        Arc::new(move |method, path| match (method.as_str(), path) {
            (_, "/config_dump") => reply(
                http::StatusCode::OK,
                "application/json",
                me.config_dump().to_string(),
            ),
            ("POST", "/quitquitquit") => {
                quit.notify_one();
                reply(http::StatusCode::OK, "text/plain", "OK\n")
            }
            (_, "/") => reply(
                http::StatusCode::OK,
                "text/plain",
                "/config_dump\n/quitquitquit (POST)\n",
            ),
            _ => reply(http::StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        })
    }

    /// The metrics endpoint (15020): `/metrics`, `/stats/prometheus`.
    pub fn metrics_responder(&self) -> Responder {
        let m = self.inner.metrics.clone();
        Arc::new(move |_, path| match path {
            "/metrics" | "/stats/prometheus" => reply(
                http::StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                m.encode(),
            ),
            _ => reply(http::StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        })
    }

    /// The readiness endpoint (15021): `/healthz/ready` is 200 once `ready`.
    pub fn readiness_responder(ready: Arc<AtomicBool>) -> Responder {
        Arc::new(move |_, path| match path {
            "/healthz/ready" if ready.load(Ordering::Acquire) => {
                reply(http::StatusCode::OK, "text/plain", "ready\n")
            }
            "/healthz/ready" => reply(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready\n",
            ),
            _ => reply(http::StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        })
    }

    /// Workloads, services, policies and certificates as JSON.
    pub fn config_dump(&self) -> serde_json::Value {
        use serde_json::json;
        let Ok(st) = self.inner.state.read() else {
            return json!({"error": "state lock poisoned"});
        };
        let mut workloads: Vec<serde_json::Value> = st
            .workloads()
            .map(|w| {
                json!({
                    "uid": w.uid, "name": w.name, "namespace": w.namespace,
                    "workloadIps": w.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "protocol": format!("{:?}", w.protocol), "node": w.node, "network": w.network,
                    "identity": w.identity().map(|i| i.as_str().to_owned()),
                    "services": w.services.iter().map(|(k, ps)| (k.clone(), ps.iter().map(|p| (p.service_port.to_string(), p.target())).collect::<HashMap<_, _>>())).collect::<HashMap<_, _>>(),
                    "status": format!("{:?}", w.status),
                    "waypoint": w.waypoint.as_ref().map(|g| format!("{g:?}")),
                })
            })
            .collect();
        workloads.sort_by(|a, b| a["uid"].as_str().cmp(&b["uid"].as_str()));
        let mut services: Vec<serde_json::Value> = st
            .services()
            .map(|s| {
                json!({
                    "name": s.name, "namespace": s.namespace, "hostname": s.hostname,
                    "vips": s.vips.iter().map(|(n, ip)| format!("{n}/{ip}")).collect::<Vec<_>>(),
                    "ports": s.ports.iter().map(|p| (p.service_port.to_string(), p.target())).collect::<HashMap<_, _>>(),
                    "endpoints": s.ports.first().map(|p| st.endpoints(s, p.service_port).len()).unwrap_or(0),
                    "waypoint": s.waypoint.as_ref().map(|g| format!("{g:?}")),
                })
            })
            .collect();
        services.sort_by(|a, b| a["hostname"].as_str().cmp(&b["hostname"].as_str()));
        let mut policies: Vec<serde_json::Value> = st
            .policies()
            .map(|p| {
                json!({
                    "name": p.name, "namespace": p.namespace, "scope": format!("{:?}", p.scope),
                    "action": format!("{:?}", p.action), "rules": p.rules.len(), "dryRun": p.dry_run,
                })
            })
            .collect();
        policies.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let certs: Vec<serde_json::Value> = self
            .inner
            .certs
            .identities()
            .into_iter()
            .filter_map(|id| {
                let c = self.inner.certs.current(&id)?;
                Some(json!({
                    "identity": id.as_str(),
                    "notBefore": format!("{:?}", c.not_before()),
                    "notAfter": format!("{:?}", c.not_after()),
                    "chainLength": c.chain().len(),
                }))
            })
            .collect();
        json!({"workloads": workloads, "services": services, "policies": policies, "certificates": certs})
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn wait_stop(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

trait WorkloadName {
    fn workload_name_or_name(&self) -> String;
}

impl WorkloadName for Workload {
    fn workload_name_or_name(&self) -> String {
        if self.workload_name.is_empty() {
            self.name.clone()
        } else {
            self.workload_name.clone()
        }
    }
}

/// Decides each inbound HBONE stream and carries it to the workload.
#[derive(Clone)]
struct InboundHandler {
    proxy: Proxy,
    local: Local,
    sockets: Sockets,
}

impl Handler for InboundHandler {
    fn handle(&self, req: InboundRequest) -> impl Future<Output = Decision> + Send {
        let me = self.clone();
        async move {
            let started = Instant::now();
            let inner = &me.proxy.inner;
            let Some(target) = req.authority.socket_addr() else {
                return Decision::reject(Rejection::BadRequest);
            };
            let src = req
                .connect_headers
                .forwarded
                .as_ref()
                .and_then(|f| f.for_addr)
                .unwrap_or(req.peer_addr);
            let plan = {
                let Ok(st) = inner.state.read() else {
                    return Decision::reject(Rejection::Unavailable);
                };
                route::inbound(
                    &st,
                    &inner.cfg.network,
                    &inner.cfg.ports,
                    target,
                    Some(&req.peer_identity),
                    src.ip(),
                    &|w| me.local.contains(w),
                )
            };
            let peer_id = req.peer_identity.as_str().to_owned();
            let log = |reason: &str, dst_id: Option<&str>, rx: u64, tx: u64| {
                AccessLog {
                    direction: "inbound",
                    src,
                    dst: target,
                    via: None,
                    src_identity: Some(&peer_id),
                    dst_identity: dst_id,
                    bytes_received: rx,
                    bytes_sent: tx,
                    duration: started.elapsed(),
                    reason,
                }
                .emit()
            };
            match plan {
                Inbound::NotLocal(why) => {
                    log(why, None, 0, 0);
                    Decision::reject(Rejection::BadRequest)
                }
                Inbound::Denied(reason) => {
                    let (l, why) = {
                        let st = inner.state.read().ok();
                        let dst = st
                            .as_ref()
                            .and_then(|s| s.workload_by_ip(&inner.cfg.network, target.ip()));
                        let mut l = me.proxy.labels(
                            "destination",
                            None,
                            Some(&peer_id),
                            dst.as_deref(),
                            None,
                            true,
                        );
                        l.response_flags = "DENY".into();
                        (l, format!("DENY {reason:?}"))
                    };
                    inner.metrics.opened(&l);
                    inner.metrics.closed(&l, 0, 0);
                    log(&why, None, 0, 0);
                    Decision::reject(Rejection::Unauthorized)
                }
                Inbound::Accept {
                    workload, target, ..
                } => {
                    let spoof = inner.cfg.spoof_source.then_some(src.ip());
                    let mut upstream = match me.sockets.connect(target, spoof).await {
                        Ok(u) => u,
                        Err(e) => {
                            log(&format!("connect {target}: {e}"), None, 0, 0);
                            return Decision::reject(Rejection::Unavailable);
                        }
                    };
                    let src_wl = inner
                        .state
                        .read()
                        .ok()
                        .and_then(|s| s.workload_by_ip(&inner.cfg.network, src.ip()));
                    let labels = me.proxy.labels(
                        "destination",
                        src_wl.as_deref(),
                        Some(&peer_id),
                        Some(&workload),
                        None,
                        true,
                    );
                    inner.metrics.opened(&labels);
                    let proxy = me.proxy.clone();
                    Decision::accept(move |mut stream| async move {
                        let dst_id = workload.identity().map(|i| i.as_str().to_owned());
                        let (rx, tx, why) =
                            match copy_bidirectional(&mut stream, &mut upstream).await {
                                Ok(s) => (s.a_to_b, s.b_to_a, String::new()),
                                Err(e) => (e.stats.a_to_b, e.stats.b_to_a, e.to_string()),
                            };
                        proxy.inner.metrics.closed(&labels, rx, tx);
                        AccessLog {
                            direction: "inbound",
                            src,
                            dst: target,
                            via: None,
                            src_identity: Some(&peer_id),
                            dst_identity: dst_id.as_deref(),
                            bytes_received: rx,
                            bytes_sent: tx,
                            duration: started.elapsed(),
                            reason: &why,
                        }
                        .emit();
                    })
                }
            }
        }
    }
}
