//! The HBONE client: CONNECT streams over a pool of mTLS HTTP/2
//! connections.
//!
//! Invariants of the pool:
//! - Connections are pooled per [`PoolKey`]: source identity, expected
//!   destination identities (sorted), destination address, and where the
//!   TCP connection is dialled from ([`Origin`]: its scope and source
//!   address). Streams of different keys never share a connection, so a
//!   connection's TLS identities and source address always match the
//!   streams it carries.
//! - Every wait of [`Client::connect`] (the per-key lock, dialling, TLS,
//!   the CONNECT response) shares one deadline,
//!   [`ClientConfig::connect_timeout`]: callers queued behind a slow
//!   connection setup never wait N × the timeout.
//! - A connection carries at most
//!   [`ClientConfig::max_streams_per_connection`] open streams; the next
//!   stream goes to another connection of the key, or a new one. New
//!   connections of one key are opened one at a time (a per-key lock), so
//!   a burst of N streams opens ⌈N / limit⌉ connections, not N.
//! - A connection is only pooled once the server has answered with its
//!   HTTP/2 SETTINGS, i.e. after the server has accepted our certificate
//!   (in TLS 1.3 a refusal only arrives after the client's handshake is
//!   done); so a refusal is reported as a typed [`HandshakeError`].
//! - A connection that received GOAWAY, failed a keepalive PING or closed
//!   takes no new streams; its open streams run to completion. A request
//!   refused by GOAWAY is retried once on another connection.
//! - A connection with no open streams for
//!   [`ClientConfig::idle_timeout`] is evicted; dropping the last handle
//!   closes it with GOAWAY.

use std::{
    collections::HashMap,
    fmt, io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use ambit_identity::{CertManager, HandshakeError, Identity, tls::placeholder_server_name};
use bytes::Bytes;
use h2::{Ping, client::SendRequest};
use http::StatusCode;
use tokio::{io::AsyncReadExt, net::TcpStream};
use tokio_rustls::TlsConnector;

mod connect;
use connect::{First, SendError, build_request, send_connect};

use crate::{
    config::{ClientConfig, tune_tcp},
    headers::{Authority, ConnectHeaders},
    origin::Origin,
    rewind::Rewind,
    server::BoxFuture,
    stream::HboneStream,
    transport::Transport,
};

/// A boxed error from a [`TlsProvider`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Supplies the rustls client config for a new connection: the source
/// identity's certificate, and a verifier that accepts only the expected
/// destination identities.
pub trait TlsProvider: Send + Sync + 'static {
    /// The config for connecting as `source` to one of `expected`.
    fn client_config<'a>(
        &'a self,
        source: &'a Identity,
        expected: &'a [Identity],
    ) -> BoxFuture<'a, Result<Arc<rustls::ClientConfig>, BoxError>>;
}

/// A shared provider: a `CertManager` (or any provider) held in an `Arc`
/// by the rest of the process serves the client too.
impl<T: TlsProvider + ?Sized> TlsProvider for Arc<T> {
    fn client_config<'a>(
        &'a self,
        source: &'a Identity,
        expected: &'a [Identity],
    ) -> BoxFuture<'a, Result<Arc<rustls::ClientConfig>, BoxError>> {
        T::client_config(self, source, expected)
    }
}

/// Certificates from ambit-identity's manager: each connection presents
/// the source's current (rotating) certificate.
impl TlsProvider for CertManager {
    fn client_config<'a>(
        &'a self,
        source: &'a Identity,
        expected: &'a [Identity],
    ) -> BoxFuture<'a, Result<Arc<rustls::ClientConfig>, BoxError>> {
        Box::pin(async move {
            CertManager::client_config(self, source, expected.to_vec())
                .await
                .map(Arc::new)
                .map_err(|e| Box::new(e) as BoxError)
        })
    }
}

/// One fixed rustls config for every connection, whatever the identities
/// (tests, and callers that manage configs themselves).
#[derive(Debug, Clone)]
pub struct StaticTls(pub Arc<rustls::ClientConfig>);

impl TlsProvider for StaticTls {
    fn client_config<'a>(
        &'a self,
        _source: &'a Identity,
        _expected: &'a [Identity],
    ) -> BoxFuture<'a, Result<Arc<rustls::ClientConfig>, BoxError>> {
        let config = self.0.clone();
        Box::pin(async move { Ok(config) })
    }
}

/// A CONNECT to open.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The identity to present.
    pub source: Identity,
    /// The identities the server may have (its URI SAN must be one).
    pub destination_identities: Vec<Identity>,
    /// Where to connect (usually `podIP:15008`).
    pub address: SocketAddr,
    /// The `:authority` (usually `podIP:targetPort`).
    pub authority: Authority,
    /// `forwarded`, `baggage`, `traceparent`.
    pub headers: ConnectHeaders,
    /// Any other request headers.
    pub extra_headers: http::HeaderMap,
    /// Double HBONE: the CONNECT above goes to an east-west gateway, and
    /// this one is sent inside it, over TLS to the final destination.
    pub inner: Option<InnerConnect>,
    /// Where the TCP connection is dialled from; `None`: a plain connect
    /// from the process's namespace.
    pub origin: Option<Origin>,
    /// Tunnel bytes sent right behind the CONNECT's HEADERS, before the
    /// answer (of the inner CONNECT with double HBONE); see
    /// [`ConnectRequest::with_early_data`].
    pub early_data: Bytes,
}

/// The inner CONNECT of double HBONE.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InnerConnect {
    /// The final destination's identities.
    pub destination_identities: Vec<Identity>,
    /// The inner `:authority` (the final `ip:port`).
    pub authority: Authority,
    /// The inner request's headers.
    pub headers: ConnectHeaders,
}

impl InnerConnect {
    /// An inner CONNECT to `authority`, whose server must be one of
    /// `destination_identities`.
    pub fn new(destination_identities: Vec<Identity>, authority: Authority) -> Self {
        Self {
            destination_identities,
            authority,
            headers: ConnectHeaders::default(),
        }
    }
}

impl ConnectRequest {
    /// A CONNECT to `authority` through the HBONE server at `address`,
    /// presenting `source` and expecting one of `destination_identities`.
    pub fn new(
        source: Identity,
        destination_identities: Vec<Identity>,
        address: SocketAddr,
        authority: impl Into<Authority>,
    ) -> Self {
        Self {
            source,
            destination_identities,
            address,
            authority: authority.into(),
            headers: ConnectHeaders::default(),
            extra_headers: http::HeaderMap::new(),
            inner: None,
            origin: None,
            early_data: Bytes::new(),
        }
    }

    /// Sends `data`, the first bytes of the tunnel, as a DATA frame right
    /// behind the CONNECT's HEADERS instead of after the `200`: both go out
    /// in one write, and the far side can hand the bytes to the upstream as
    /// soon as it has dialled it, a round trip sooner. The stream's frames
    /// are the same as when the bytes come after the answer (HTTP/2 lets a
    /// client send DATA once its HEADERS are out); if the server refuses
    /// the CONNECT, they are dropped with the stream. A request with early
    /// data is retried on another connection only when the server cannot
    /// have seen it (`REFUSED_STREAM`, or refused by GOAWAY), never after
    /// the connection merely failed. Keep `data` within the peer's initial
    /// stream window (64 KiB unless its SETTINGS say more): a server that
    /// refuses the CONNECT while the client still has early bytes queued
    /// may reset the stream, and the refusal then arrives as a reset
    /// rather than its status.
    pub fn with_early_data(mut self, data: Bytes) -> Self {
        self.early_data = data;
        self
    }

    /// Dials the connection from `origin` (see [`Origin`]).
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }

    /// Sets the HBONE headers.
    pub fn with_headers(mut self, headers: ConnectHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// Makes this a double-HBONE request: `self` targets the gateway,
    /// `inner` the final destination.
    pub fn with_inner(mut self, inner: InnerConnect) -> Self {
        self.inner = Some(inner);
        self
    }

    fn key(&self) -> PoolKey {
        let mut destination_identities = self.destination_identities.clone();
        destination_identities.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        destination_identities.dedup();
        PoolKey {
            source: self.source.clone(),
            destination_identities,
            address: self.address,
            origin_scope: self.origin.as_ref().map_or(0, |o| o.scope),
            source_address: self.origin.as_ref().and_then(|o| o.source),
        }
    }
}

/// What a pooled connection is shared by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity presented.
    pub source: Identity,
    /// The identities accepted, sorted.
    pub destination_identities: Vec<Identity>,
    /// The server's address.
    pub address: SocketAddr,
    /// [`Origin::scope`] (`0` without an origin).
    pub origin_scope: u64,
    /// [`Origin::source`].
    pub source_address: Option<IpAddr>,
}

/// Why a CONNECT failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No TLS config could be had for the source identity.
    #[error("no tls configuration for {identity}")]
    TlsConfig {
        /// The source identity.
        identity: Identity,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The TCP connection failed.
    #[error("failed to connect to {address}")]
    Connect {
        /// The server's address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Connecting (TCP, TLS and HTTP/2) took too long.
    #[error("timed out connecting to {address}")]
    ConnectTimeout {
        /// The server's address.
        address: SocketAddr,
    },
    /// The TLS handshake failed, or the server refused our certificate;
    /// the variant says why.
    #[error("tls handshake with {address} failed")]
    Tls {
        /// The server's address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: HandshakeError,
    },
    /// HTTP/2 failed.
    #[error("http/2 error with {address}")]
    Http2 {
        /// The server's address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: h2::Error,
    },
    /// The server answered the CONNECT with something other than 200.
    #[error("hbone server {address} answered {status}")]
    Status {
        /// The server's address.
        address: SocketAddr,
        /// The status (400, 401, 503, ...).
        status: StatusCode,
    },
    /// The request could not be built.
    #[error("invalid hbone request")]
    Request(#[source] http::Error),
}

impl ClientError {
    /// The status of a non-200 answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The TLS failure, if that is what this is.
    pub fn handshake(&self) -> Option<&HandshakeError> {
        match self {
            Self::Tls { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An HBONE client with a connection pool. Cheap to clone; the pool lives
/// until the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    pool: Arc<Pool>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.pool.config)
            .field("connections", &self.pooled_connections())
            .finish_non_exhaustive()
    }
}

struct Pool {
    config: ClientConfig,
    tls: Arc<dyn TlsProvider>,
    h2: h2::client::Builder,
    /// Key → that key's connections. The inner async lock is held while
    /// choosing a connection and while opening a new one, which
    /// serializes connection setup per key.
    keys: Mutex<HashMap<PoolKey, KeyConns>>,
    /// Connections opened so far (pooled ones; double HBONE's inner ones
    /// are not counted).
    opened: AtomicU64,
    next_id: AtomicU64,
}

/// One key's connections, behind the lock that serializes choosing and
/// opening them.
type KeyConns = Arc<tokio::sync::Mutex<Vec<Arc<Conn>>>>;

/// One pooled connection.
struct Conn {
    id: u64,
    send: SendRequest<Bytes>,
    /// Streams handed out and not yet dropped.
    streams: AtomicUsize,
    /// GOAWAY received, keepalive failed, or the connection ended: take no
    /// new streams.
    unusable: AtomicBool,
    /// When the last stream was dropped (meaningful when `streams` is 0).
    idle_since: Mutex<Instant>,
}

impl Conn {
    fn idle_since(&self) -> MutexGuard<'_, Instant> {
        match self.idle_since.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// Holds one stream slot of a pooled connection; released on drop.
struct Slot {
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.conn.idle_since() = Instant::now();
        }
    }
}

fn h2_builder(config: &ClientConfig) -> h2::client::Builder {
    let mut h2 = h2::client::Builder::new();
    h2.initial_window_size(config.h2.stream_window)
        .initial_connection_window_size(config.h2.connection_window)
        .max_frame_size(config.h2.max_frame_size)
        .max_header_list_size(config.h2.max_header_list_size)
        .max_send_buffer_size(config.h2.max_send_buffer)
        .enable_push(false);
    h2
}

impl Client {
    /// A client whose connections get their TLS configs from `tls` (a
    /// [`CertManager`], or [`StaticTls`]). Must be called within a tokio
    /// runtime: it starts the idle-eviction task.
    pub fn new(config: ClientConfig, tls: impl TlsProvider) -> Self {
        let pool = Arc::new(Pool {
            h2: h2_builder(&config),
            config,
            tls: Arc::new(tls),
            keys: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        });
        tokio::spawn(evict_idle(Arc::downgrade(&pool)));
        Self { pool }
    }

    /// Opens a CONNECT stream (double HBONE when `request.inner` is set).
    pub async fn connect(&self, request: ConnectRequest) -> Result<HboneStream, ClientError> {
        let outer = self.connect_pooled(&request, &mut None).await?;
        match &request.inner {
            None => Ok(outer.0),
            Some(inner) => self.connect_inner(&request, inner, outer.0).await,
        }
    }

    /// Opens a CONNECT stream as [`Client::connect`] does, and while the
    /// answer is awaited, sends what `first` yields (the tunnel's first
    /// bytes, say from a client that had sent nothing yet when the CONNECT
    /// left) as DATA at once rather than after the `200`: the far side
    /// has them as soon as its upstream is dialled. Returns the stream and
    /// the bytes `first` yielded, which the caller no longer has. `first`
    /// is polled until it yields once (empty: nothing to send) or the
    /// answer comes, whichever is first; a retry on another connection
    /// resends what it yielded as early data ([`ConnectRequest::with_early_data`]).
    /// With double HBONE it is not used (the bytes belong to the inner
    /// tunnel, whose CONNECT leaves later): this is [`Client::connect`].
    pub async fn connect_then<F>(
        &self,
        request: ConnectRequest,
        first: F,
    ) -> Result<(HboneStream, Bytes), ClientError>
    where
        F: std::future::Future<Output = Bytes> + Send,
    {
        if request.inner.is_some() {
            return Ok((self.connect(request).await?, Bytes::new()));
        }
        let first = std::pin::pin!(first);
        let mut first: First<'_> = Some(first);
        self.connect_pooled(&request, &mut first).await
    }

    /// Connections opened so far by the pool.
    pub fn connections_opened(&self) -> u64 {
        self.pool.opened.load(Ordering::Relaxed)
    }

    /// Connections in the pool now (including ones that are draining).
    pub fn pooled_connections(&self) -> usize {
        let keys: Vec<_> = self.pool.keys().values().cloned().collect();
        keys.iter()
            .map(|k| k.try_lock().map(|c| c.len()).unwrap_or(0))
            .sum()
    }

    /// The CONNECT on a pooled connection; with `first`, also the bytes
    /// it yielded (see [`Client::connect_then`]).
    async fn connect_pooled(
        &self,
        request: &ConnectRequest,
        first: &mut First<'_>,
    ) -> Result<(HboneStream, Bytes), ClientError> {
        let key = request.key();
        let address = request.address;
        let build = || build_request(&request.authority, &request.headers, &request.extra_headers);
        // Built here, so a bad request fails before a connection is taken;
        // the first attempt sends it, and a retry (rare) builds another.
        let mut http_request = Some(build()?);
        let deadline = Instant::now() + self.pool.config.connect_timeout;
        let timed_out = |_| ClientError::ConnectTimeout { address };
        // With double HBONE the early bytes belong to the inner tunnel.
        let base = match request.inner {
            None => request.early_data.clone(),
            Some(_) => Bytes::new(),
        };
        // What `first` yielded; on a retry it goes out as early data.
        let mut got = Bytes::new();
        // One retry: the first connection may have been told GOAWAY.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (conn, slot) = self
                .pool
                .checkout(&key, request.origin.as_ref(), deadline)
                .await?;
            let early = match got.is_empty() {
                true => base.clone(),
                false => Bytes::from([base.as_ref(), got.as_ref()].concat()),
            };
            let http_request = match http_request.take() {
                Some(built) => built,
                None => build()?,
            };
            let sent = send_connect(conn.send.clone(), http_request, &early, first, &mut got);
            match tokio::time::timeout_at(deadline, sent)
                .await
                .map_err(timed_out)?
            {
                Ok((send, recv)) => return Ok((HboneStream::new(send, recv).keep(slot), got)),
                Err(SendError::Refused(e)) if attempts < 3 => {
                    tracing::debug!(conn = conn.id, error = %e, "connection refuses new streams; retrying on another");
                    conn.unusable.store(true, Ordering::Release);
                }
                Err(SendError::Refused(e) | SendError::Other(e)) => {
                    return Err(ClientError::Http2 { address, source: e });
                }
                Err(SendError::Status(status)) => {
                    return Err(ClientError::Status { address, status });
                }
            }
        }
    }

    /// Double HBONE: TLS to the final destination over `outer`, HTTP/2 on
    /// that, and the inner CONNECT. The inner connection is not pooled: it
    /// lives as long as the returned stream.
    async fn connect_inner(
        &self,
        request: &ConnectRequest,
        inner: &InnerConnect,
        outer: HboneStream,
    ) -> Result<HboneStream, ClientError> {
        let address = request.address;
        let http_request =
            build_request(&inner.authority, &inner.headers, &http::HeaderMap::new())?;
        let tls = self
            .pool
            .tls
            .client_config(&request.source, &inner.destination_identities)
            .await
            .map_err(|source| ClientError::TlsConfig {
                identity: request.source.clone(),
                source,
            })?;
        let setup = async {
            let (send_request, driver) =
                handshake(&self.pool.h2, tls, Transport::Hbone(outer), address, None).await?;
            tokio::spawn(driver);
            send_connect(
                send_request,
                http_request,
                &request.early_data,
                &mut None,
                &mut Bytes::new(),
            )
            .await
            .map_err(|e| match e {
                SendError::Refused(source) | SendError::Other(source) => {
                    ClientError::Http2 { address, source }
                }
                SendError::Status(status) => ClientError::Status { address, status },
            })
        };
        let (send, recv) = tokio::time::timeout(self.pool.config.connect_timeout, setup)
            .await
            .map_err(|_| ClientError::ConnectTimeout { address })??;
        Ok(HboneStream::new(send, recv))
    }
}

impl Pool {
    fn keys(&self) -> MutexGuard<'_, HashMap<PoolKey, KeyConns>> {
        match self.keys.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A connection of `key` with a free stream slot, opening one if
    /// needed; the slot is taken.
    async fn checkout(
        &self,
        key: &PoolKey,
        origin: Option<&Origin>,
        deadline: Instant,
    ) -> Result<(Arc<Conn>, Slot), ClientError> {
        let entry = self.keys().entry(key.clone()).or_default().clone();
        let mut conns = tokio::time::timeout_at(deadline, entry.lock())
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                address: key.address,
            })?;
        conns.retain(|c| !c.unusable.load(Ordering::Acquire));
        let limit = self.config.max_streams_per_connection.max(1);
        for conn in conns.iter() {
            let taken = conn
                .streams
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit).then_some(n + 1)
                });
            if taken.is_ok() {
                return Ok((conn.clone(), Slot { conn: conn.clone() }));
            }
        }
        let conn = self.open(key, origin, deadline).await?;
        conn.streams.store(1, Ordering::Release);
        conns.push(conn.clone());
        Ok((conn.clone(), Slot { conn }))
    }

    async fn open(
        &self,
        key: &PoolKey,
        origin: Option<&Origin>,
        deadline: Instant,
    ) -> Result<Arc<Conn>, ClientError> {
        let address = key.address;
        let setup = async {
            let tls = self
                .tls
                .client_config(&key.source, &key.destination_identities)
                .await
                .map_err(|source| ClientError::TlsConfig {
                    identity: key.source.clone(),
                    source,
                })?;
            let tcp = match origin {
                Some(o) => o.dialer.dial(o.source, address).await,
                None => TcpStream::connect(address).await,
            }
            .map_err(|source| ClientError::Connect { address, source })?;
            tune_tcp(&tcp, self.config.tcp_keepalive);
            handshake(
                &self.h2,
                tls,
                Transport::Tcp(tcp),
                address,
                Some(&self.config),
            )
            .await
        };
        let (send, driver) = tokio::time::timeout_at(deadline, setup)
            .await
            .map_err(|_| ClientError::ConnectTimeout { address })??;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            send,
            streams: AtomicUsize::new(0),
            unusable: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        let weak = Arc::downgrade(&conn);
        tokio::spawn(async move {
            driver.await;
            if let Some(conn) = weak.upgrade() {
                conn.unusable.store(true, Ordering::Release);
            }
        });
        tracing::debug!(conn = id, %address, source = %key.source, "hbone connection opened");
        Ok(conn)
    }
}

/// TLS over `io`, wait for the server's first bytes (its SETTINGS, or the
/// alert refusing our certificate), then the HTTP/2 handshake. Returns the
/// request handle and the connection driver (with keepalive if `config`
/// asks for it), which must be spawned.
async fn handshake(
    h2: &h2::client::Builder,
    tls: Arc<rustls::ClientConfig>,
    io: Transport,
    address: SocketAddr,
    keepalive: Option<&ClientConfig>,
) -> Result<(SendRequest<Bytes>, BoxFuture<'static, ()>), ClientError> {
    let tls_err = |e: io::Error| ClientError::Tls {
        address,
        source: HandshakeError::from_io(e),
    };
    let mut tls = TlsConnector::from(tls)
        .connect(placeholder_server_name(), io)
        .await
        .map_err(tls_err)?;
    let mut first = vec![0u8; 9];
    let n = tls.read(&mut first).await.map_err(tls_err)?;
    if n == 0 {
        return Err(tls_err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "server closed the connection after the tls handshake",
        )));
    }
    first.truncate(n);
    let io = Rewind::new(Bytes::from(first), tls);
    let (send, mut conn) = h2
        .handshake(io)
        .await
        .map_err(|source| ClientError::Http2 { address, source })?;
    let keepalive = keepalive
        .and_then(|c| c.keepalive_interval.map(|i| (i, c.keepalive_timeout)))
        .and_then(|(interval, timeout)| {
            conn.ping_pong()
                .map(|pp| keepalive_loop(pp, interval, timeout))
        });
    let driver = async move {
        let result = match keepalive {
            Some(keepalive) => {
                tokio::select! {
                    r = conn => r,
                    () = keepalive => {
                        tracing::warn!(%address, "hbone keepalive failed: closing the connection");
                        Ok(())
                    }
                }
            }
            None => conn.await,
        };
        if let Err(error) = result {
            tracing::debug!(%address, %error, "hbone connection ended with an error");
        }
    };
    Ok((send, Box::pin(driver)))
}

/// PINGs every `interval`; returns when one is not answered within
/// `timeout` (or the connection is gone).
async fn keepalive_loop(mut pp: h2::PingPong, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pp.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "keepalive ping failed");
                return;
            }
            Err(_) => {
                tracing::debug!(?timeout, "keepalive ping unanswered");
                return;
            }
        }
    }
}

/// Evicts idle connections until the pool is dropped.
async fn evict_idle(pool: Weak<Pool>) {
    loop {
        let period = match pool.upgrade() {
            Some(pool) => (pool.config.idle_timeout / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(30)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let idle_timeout = pool.config.idle_timeout;
        let mut keys = pool.keys();
        keys.retain(|key, entry| {
            let Ok(mut conns) = entry.try_lock() else {
                return true;
            };
            conns.retain(|c| {
                let idle = c.streams.load(Ordering::Acquire) == 0
                    && c.idle_since().elapsed() >= idle_timeout;
                let closed = c.unusable.load(Ordering::Acquire)
                    && c.streams.load(Ordering::Acquire) == 0;
                if idle || closed {
                    tracing::debug!(conn = c.id, address = %key.address, idle, "evicting hbone connection");
                }
                !(idle || closed)
            });
            !conns.is_empty()
        });
    }
}
