//! The waypoint: HBONE in, HTTP routing or an L4 hop, HBONE out.
//!
//! Per CONNECT: the authority's VIP names the service; the port's protocol
//! (configured, or sniffed from the first bytes) chooses between serving
//! HTTP/1.1 and HTTP/2 inside the tunnel with hyper, and copying bytes to
//! one endpoint. Per HTTP request: L7 authorization, route selection,
//! redirect, faults, backend choice, then attempts under the route's
//! timeout and retry policy, each on a pooled upstream HTTP/1.1 connection
//! (or the key's shared HTTP/2 connection for `http2`/`grpc` ports and
//! gRPC; [`pool`](crate::pool)) or a new one over an HBONE stream to
//! `podIP:15008` with `:authority podIP:targetPort`, as the waypoint's
//! identity.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use ambit_hbone::{
    Authority, Client, ClientConfig, Decision, Handler, HboneStream, InboundRequest, Rejection,
    Server, ServerConfig,
};
use ambit_identity::{CertManager, Identity};
use ambit_mesh::{MeshState, Service, Workload};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request};
use http_body_util::Full;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;

use crate::balance::Balancer;
use crate::config::{Protocol, RouteConfig};
use crate::forward::EndpointCache;
use crate::h1srv::{Downstream, Next};
use crate::idle::{self, Tracked};
use crate::metrics::{Metrics, SeriesCache};
use crate::pool::{HttpPool, PoolConfig, PoolStats};
use crate::sniff::{Rewind, Sniffed, sniff};

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the waypoint sends.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Why the waypoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The waypoint's certificate could not be obtained.
    #[error("certificate for the waypoint identity {identity}")]
    Certificate {
        /// The identity.
        identity: String,
        /// The cause.
        #[source]
        source: ambit_identity::ManagerError,
    },
    /// No service has the VIP a plaintext listener was given.
    #[error("no service for {vip}")]
    UnknownService {
        /// The VIP and port.
        vip: SocketAddr,
    },
    /// A per-core worker could not take its listener.
    #[error("a waypoint worker could not take its listener")]
    Workers {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A worker's thread panicked.
    #[error(transparent)]
    WorkerPanicked(#[from] ambit_server::WorkerPanicked),
}

/// The waypoint's settings.
#[derive(Debug, Clone)]
pub struct WaypointConfig {
    /// The identity presented to clients and upstreams.
    pub identity: Identity,
    /// The network VIPs and workload addresses belong to.
    pub network: String,
    /// HBONE client settings (pool, keepalive, connect timeout).
    pub hbone_client: ClientConfig,
    /// HBONE server settings.
    pub hbone_server: ServerConfig,
    /// How long to wait for a client's first bytes when sniffing.
    pub sniff_timeout: Duration,
    /// The largest request body buffered so it can be retried; larger
    /// bodies are streamed and never retried.
    pub max_retry_body: usize,
    /// The largest request body copied to mirrors (default 64 KiB); a
    /// request with a larger body, or one of unknown length, is not
    /// mirrored (counted as `skipped_body`).
    pub max_mirror_body: usize,
    /// The upstream HTTP/1.1 connection pool.
    pub pool: PoolConfig,
    /// Dial endpoints' target ports over plain TCP instead of HBONE. For
    /// benchmarks that compare the HTTP engine with a plain reverse proxy;
    /// never in a mesh (no mTLS, no identity).
    pub plaintext_upstreams: bool,
    /// A downstream connection (an HBONE stream, HTTP or opaque TCP, or a
    /// [`serve_plaintext`](Waypoint::serve_plaintext) connection) on which
    /// no byte has moved either way for this long is closed, within a
    /// quarter of it: one hour by default, as Envoy's HTTP connection
    /// manager and TCP proxy (Istio's `ISTIO_META_IDLE_TIMEOUT`); zero
    /// turns it off. An HBONE stream is reset, a plaintext connection
    /// closed.
    pub idle_timeout: Duration,
}

impl WaypointConfig {
    /// Defaults for `identity`.
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            network: String::new(),
            hbone_client: ClientConfig::default(),
            hbone_server: ServerConfig::default(),
            sniff_timeout: Duration::from_secs(1),
            max_retry_body: 64 * 1024,
            max_mirror_body: 64 * 1024,
            pool: PoolConfig::default(),
            plaintext_upstreams: false,
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// The waypoint engine. Cheap to clone.
#[derive(Clone)]
pub struct Waypoint {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Waypoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waypoint")
            .field("identity", &self.inner.cfg.identity)
            .finish_non_exhaustive()
    }
}

/// A waypoint's state. Everything but the upstream connections (`client`,
/// `pool`) is shared with its [`Waypoint::worker`] handles.
pub(crate) struct Inner {
    pub(crate) cfg: WaypointConfig,
    pub(crate) state: Arc<RwLock<MeshState>>,
    /// Replaced whole on reload; requests keep the snapshot they started with.
    pub(crate) routes: Arc<RwLock<Arc<RouteConfig>>>,
    pub(crate) certs: Arc<CertManager>,
    /// HBONE connections to upstreams, of this handle only.
    pub(crate) client: Client,
    /// Idle upstream HTTP connections of this handle only; lives as long
    /// as the handle.
    pub(crate) pool: Arc<HttpPool>,
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) metrics: Metrics,
    /// Every handle's pool, for [`Waypoint::pool_stats`].
    pub(crate) pools: Arc<Mutex<Vec<Weak<HttpPool>>>>,
}

/// What is known about one accepted CONNECT.
pub(crate) struct Conn {
    pub(crate) peer: Identity,
    /// The client: the HBONE peer's address.
    pub(crate) client: SocketAddr,
    pub(crate) service: Arc<Service>,
    pub(crate) port: u16,
    /// `forwarded: for="client"`, added to every upstream request.
    pub(crate) forwarded: Option<HeaderValue>,
    /// Metric handles for the label sets this connection has used.
    pub(crate) series: SeriesCache,
    /// The client's workload and the endpoints of the backends this
    /// connection has routed to, as of a mesh revision.
    pub(crate) endpoints: EndpointCache,
}

impl Conn {
    fn new(peer: Identity, client: SocketAddr, service: Arc<Service>, port: u16) -> Self {
        Self {
            forwarded: HeaderValue::from_str(&format!("for=\"{client}\"")).ok(),
            peer,
            client,
            service,
            port,
            series: SeriesCache::default(),
            endpoints: EndpointCache::default(),
        }
    }
}

/// What a request's handling settles that the metrics and access log need.
pub(crate) struct Meta {
    /// `-`, or the Envoy-style response flags.
    pub(crate) flags: &'static str,
    /// The workload of the last endpoint tried.
    pub(crate) destination: Option<Arc<Workload>>,
}

impl Waypoint {
    /// A waypoint over `state`, routing with `routes`, with certificates
    /// from `certs`.
    pub fn new(
        cfg: WaypointConfig,
        state: Arc<RwLock<MeshState>>,
        routes: RouteConfig,
        certs: Arc<CertManager>,
    ) -> Self {
        let client = Client::new(cfg.hbone_client.clone(), Arc::clone(&certs));
        let pool = HttpPool::new(cfg.pool);
        Self {
            inner: Arc::new(Inner {
                pools: Arc::new(Mutex::new(vec![Arc::downgrade(&pool)])),
                pool,
                balancer: Arc::new(Balancer::new(routes.outlier_detection)),
                routes: Arc::new(RwLock::new(Arc::new(routes))),
                cfg,
                state,
                certs,
                client,
                metrics: Metrics::new(),
            }),
        }
    }

    /// A handle for one worker of a per-core server ([`Waypoint::serve_workers`]
    /// uses them): it shares the routes, mesh state, certificates,
    /// balancer (outlier ejection and least-request counts) and metrics
    /// with this waypoint, but opens and pools its own upstream
    /// connections, so a request and the upstream connection it uses are
    /// driven on the same thread. Must be called on the runtime that will
    /// use it (the pools' sweep tasks start there).
    pub fn worker(&self) -> Waypoint {
        let i = &self.inner;
        let client = Client::new(i.cfg.hbone_client.clone(), Arc::clone(&i.certs));
        let pool = HttpPool::new(i.cfg.pool);
        {
            let mut pools = i.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.retain(|p| p.strong_count() > 0);
            pools.push(Arc::downgrade(&pool));
        }
        Waypoint {
            inner: Arc::new(Inner {
                cfg: i.cfg.clone(),
                state: Arc::clone(&i.state),
                routes: Arc::clone(&i.routes),
                certs: Arc::clone(&i.certs),
                client,
                pool,
                balancer: Arc::clone(&i.balancer),
                metrics: i.metrics.clone(),
                pools: Arc::clone(&i.pools),
            }),
        }
    }

    /// Upstream connection pool counters, summed over this waypoint and
    /// its live [`worker`](Waypoint::worker) handles.
    pub fn pool_stats(&self) -> PoolStats {
        let pools: Vec<Arc<HttpPool>> = {
            let pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        pools.iter().fold(PoolStats::default(), |a, p| {
            let s = p.stats();
            PoolStats {
                opened: a.opened + s.opened,
                reused: a.reused + s.reused,
                idle: a.idle + s.idle,
                h2_opened: a.h2_opened + s.h2_opened,
                h2: a.h2 + s.h2,
            }
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The mesh state.
    pub fn state(&self) -> &Arc<RwLock<MeshState>> {
        &self.inner.state
    }

    /// The routing config in use.
    pub fn routes(&self) -> Arc<RouteConfig> {
        match self.inner.routes.read() {
            Ok(r) => Arc::clone(&r),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Replaces the routing config (outlier settings stay as at start).
    pub fn set_routes(&self, routes: RouteConfig) {
        match self.inner.routes.write() {
            Ok(mut r) => *r = Arc::new(routes),
            Err(p) => *p.into_inner() = Arc::new(routes),
        }
    }

    /// Serves HBONE on `listener` (15008) until `shutdown`, presenting the
    /// waypoint's certificate (rotated by the manager).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        let id = &self.inner.cfg.identity;
        let tls =
            self.inner
                .certs
                .server_config(id)
                .await
                .map_err(|source| Error::Certificate {
                    identity: id.to_string(),
                    source,
                })?;
        let server = Server::new(
            Arc::new(tls),
            self.inner.cfg.hbone_server.clone(),
            self.clone(),
        );
        server.run(listener, shutdown).await;
        Ok(())
    }

    /// Starts one worker per listener serving HBONE until the future
    /// `shutdown()` makes for each worker completes; the returned future
    /// resolves once every worker has drained. The workers' threads are
    /// running when this returns (so a caller can declare itself ready),
    /// and the first worker error, if any, is the future's output. Fails
    /// if a thread or runtime cannot be started (none is left running).
    ///
    /// Each worker is a thread with a current-thread runtime, its own
    /// listener (bind them with [`ambit_server::reuseport_listeners`] so
    /// the kernel spreads connections over them) and its own
    /// [`worker`](Waypoint::worker) handle: a connection, its requests
    /// and the upstream connections they use stay on one thread, which
    /// saves the cross-thread wake-ups of a work-stealing runtime.
    pub fn serve_workers<S, F>(
        &self,
        listeners: Vec<std::net::TcpListener>,
        shutdown: S,
    ) -> std::io::Result<impl std::future::Future<Output = Result<(), Error>> + Send + use<S, F>>
    where
        S: Fn() -> F + Send + Sync + 'static,
        F: std::future::Future<Output = ()> + 'static,
    {
        let this = self.clone();
        let workers = ambit_server::Workers::start("waypoint", listeners, move |i, l| {
            // Called on the worker's thread, inside its runtime.
            let w = this.worker();
            let stop = shutdown();
            async move {
                let r = match TcpListener::from_std(l) {
                    Ok(l) => w.serve(l, stop).await,
                    Err(source) => Err(Error::Workers { source }),
                };
                if let Err(error) = &r {
                    // The others keep serving; the kernel stops sending
                    // connections to this worker's closed listener.
                    tracing::error!(worker = i, %error, "waypoint worker stopped");
                }
                r
            }
        })?;
        Ok(async move {
            let mut first_error = None;
            for r in workers.join().await {
                let e = match r {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e,
                    Err(panicked) => Error::from(panicked),
                };
                first_error.get_or_insert(e);
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// Serves the HTTP engine over plain HTTP (HTTP/1.1 or HTTP/2 prior
    /// knowledge; no TLS, no HBONE) on `listener` until `shutdown`, as if
    /// each connection were an HBONE CONNECT to `vip` from `peer` with the
    /// TCP peer as the original client. Routing, policy, balancing,
    /// pooling and metrics are the same code as behind 15008. Meant for
    /// benchmarks against plain reverse proxies: nothing authenticates the
    /// client, `peer` is simply asserted, so never expose it in a mesh.
    pub async fn serve_plaintext(
        &self,
        listener: TcpListener,
        vip: SocketAddr,
        peer: Identity,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        let (service, port) = self
            .service_for(&Authority::from(vip))
            .map_err(|_| Error::UnknownService { vip })?;
        let this = self.clone();
        let each = move |tcp: tokio::net::TcpStream, client, _| {
            let _ = tcp.set_nodelay(true);
            let conn = Arc::new(Conn::new(peer.clone(), client, Arc::clone(&service), port));
            let (tcp, moved) = Tracked::new(tcp);
            let timeout = this.inner.cfg.idle_timeout;
            let serve = this.clone().serve_http(conn, tcp);
            async move {
                if idle::until_idle(serve, moved, timeout).await {
                    tracing::debug!(%client, "downstream idle timeout: connection closed");
                }
            }
        };
        ambit_server::run(listener, shutdown, ambit_server::Limits::default(), each).await;
        Ok(())
    }

    fn service_for(&self, authority: &Authority) -> Result<(Arc<Service>, u16), Rejection> {
        let addr = authority.socket_addr().ok_or(Rejection::BadRequest)?;
        let state = self
            .inner
            .state
            .read()
            .map_err(|_| Rejection::Unavailable)?;
        let svc = state
            .service_by_vip(&self.inner.cfg.network, addr.ip())
            .ok_or(Rejection::BadRequest)?;
        if !svc.ports.iter().any(|p| p.service_port == addr.port()) {
            return Err(Rejection::BadRequest);
        }
        Ok((svc, addr.port()))
    }

    /// Serves one HBONE stream until it ends or is idle for the idle
    /// timeout.
    async fn serve_stream(self, conn: Conn, protocol: Protocol, stream: HboneStream) {
        let (stream, moved) = Tracked::new(stream);
        let (timeout, client) = (self.inner.cfg.idle_timeout, conn.client);
        if idle::until_idle(self.serve_tracked(conn, protocol, stream), moved, timeout).await {
            tracing::debug!(%client, "downstream idle timeout: stream reset");
        }
    }

    async fn serve_tracked(self, conn: Conn, protocol: Protocol, mut stream: Tracked<HboneStream>) {
        let mut first = BytesMut::new();
        let is_http = match protocol {
            Protocol::Http | Protocol::Http2 | Protocol::Grpc => true,
            Protocol::Tcp => false,
            Protocol::Auto => {
                let deadline = tokio::time::Instant::now() + self.inner.cfg.sniff_timeout;
                loop {
                    match sniff(&first) {
                        Sniffed::Http => break true,
                        Sniffed::Tcp => break false,
                        Sniffed::NeedMore => {}
                    }
                    match tokio::time::timeout_at(deadline, stream.read_buf(&mut first)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return,
                        Ok(Ok(_)) => {}
                        // A server-first protocol: nothing to sniff.
                        Err(_) => break false,
                    }
                }
            }
        };
        let io = Rewind::new(first.freeze(), stream);
        if is_http {
            self.serve_http(Arc::new(conn), io).await;
        } else {
            self.forward_tcp(conn, io).await;
        }
    }

    /// Serves HTTP on `io`: the lean HTTP/1.1 loop ([`crate::h1srv`])
    /// while requests are simple (no body, or a small one of known
    /// length), then hyper (HTTP/1.1 and HTTP/2) for the rest of the
    /// connection.
    async fn serve_http<IO>(self, conn: Arc<Conn>, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut down = Downstream::new(io);
        loop {
            match down.next().await {
                Next::Request(req, ask) => {
                    let resp = self.handle_request(&conn, req.map(Full::new), true).await;
                    match down.respond(ask, resp).await {
                        Ok(true) => {}
                        Ok(false) => return down.close().await,
                        Err(error) => {
                            tracing::debug!(%error, "http connection ended with an error");
                            return;
                        }
                    }
                }
                Next::Closed => return,
                Next::Handover => break,
            }
        }
        let (read, io) = down.into_parts();
        let io = Rewind::new(read, io);
        let svc = service_fn(move |req: Request<Incoming>| {
            let this = self.clone();
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(this.handle_request(&conn, req, false).await) }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if let Err(error) = builder.serve_connection(TokioIo::new(io), svc).await {
            tracing::debug!(%error, "http connection ended with an error");
        }
    }
}

impl Handler for Waypoint {
    async fn handle(&self, request: InboundRequest) -> Decision {
        let (service, port) = match self.service_for(&request.authority) {
            Ok(x) => x,
            Err(rejection) => {
                tracing::info!(authority = ?request.authority, "no service for the authority");
                return Decision::reject(rejection);
            }
        };
        let protocol = self
            .routes()
            .service(&service.hostname)
            .and_then(|s| s.ports.get(&port).copied())
            .unwrap_or_default();
        // The client is the TCP peer: the source ztunnel dials from the
        // source workload's own address. A `forwarded` header from the peer
        // is never believed (any workload could claim any address).
        let conn = Conn::new(
            request.peer_identity.clone(),
            request.peer_addr,
            service,
            port,
        );
        let this = self.clone();
        Decision::accept(move |stream| this.serve_stream(conn, protocol, stream))
    }
}
