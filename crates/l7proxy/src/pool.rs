//! Upstream HTTP connection pool: idle HTTP/1.1 connections, and one
//! shared HTTP/2 connection per key (for `http2`/`grpc` ports and gRPC
//! requests) carrying any number of concurrent streams.
//!
//! Each pooled connection is one hyper HTTP/1.1 client connection riding
//! its own transport: an HBONE stream to the endpoint's ztunnel (the HBONE
//! client below multiplexes those streams over pooled HTTP/2
//! connections), or plain TCP in the benchmark mode
//! ([`WaypointConfig::plaintext_upstreams`](crate::WaypointConfig)).
//! Connections are keyed by `PoolKey`: transport address, target
//! `podIP:port`, the identities the endpoint may present, and the original
//! client's IP — the CONNECT's `forwarded` header is fixed for the life of
//! the stream and the destination ztunnel authorizes and dials with it, so
//! a connection is never shared between original clients.
//!
//! Invariants:
//! - A connection goes back to the pool only when the response to its last
//!   request was read to its end without error (the body's end of stream
//!   was observed), the response did not say `connection: close` (nor was
//!   HTTP/1.0 without `keep-alive`), and hyper reports it ready for another
//!   request. A response body dropped unfinished, a body error, or a
//!   request future dropped by a timeout drop the connection, and hyper
//!   closes it.
//! - At most [`PoolConfig::max_idle_per_endpoint`] idle connections per
//!   key (the oldest is closed first); idle ones older than
//!   [`PoolConfig::idle_timeout`] are skipped on checkout and closed by a
//!   periodic sweep.
//! - Checkout is last-in first-out, so under light load a few connections
//!   stay warm and the rest reach the idle timeout.
//! - A request that a pooled connection refused before writing any of it
//!   (hyper hands it back: the peer closed the idle connection) is sent on
//!   the next pooled connection or a new one; it is not an attempt.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use ambit_identity::Identity;
use bytes::Bytes;
use http::Response;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

use crate::balance::InFlight;
use crate::h1::{Answer, H1Body, H1Conn, Home, keep_alive};
use crate::{Body, BoxError};

/// How long a returned connection may take to become ready again before
/// it is dropped instead of pooled.
const READY_WAIT: Duration = Duration::from_secs(5);

/// Upstream connection pool settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections kept per key (default 128; 0 disables pooling:
    /// one connection per request, as before pooling existed).
    pub max_idle_per_endpoint: usize,
    /// How long a connection may stay idle (default 60 s).
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle_per_endpoint: 128,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What an upstream connection may be shared by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    /// The HBONE server (`podIP:15008`); `None` for plain TCP.
    pub(crate) hbone: Option<SocketAddr>,
    /// `podIP:targetPort`.
    pub(crate) target: SocketAddr,
    /// The identities the endpoint may present.
    pub(crate) identities: Vec<Identity>,
    /// The original client (the CONNECT's `forwarded`).
    pub(crate) client_ip: IpAddr,
}

/// Counters of the upstream pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Upstream HTTP connections opened (HTTP/1.1 and HTTP/2).
    pub opened: u64,
    /// Requests sent on a pooled (reused) connection, HTTP/1.1 or HTTP/2.
    pub reused: u64,
    /// Idle HTTP/1.1 connections now.
    pub idle: usize,
    /// Upstream HTTP/2 connections opened (part of `opened`).
    pub h2_opened: u64,
    /// Open upstream HTTP/2 connections held by the pool now (each
    /// carries any number of concurrent requests).
    pub h2: usize,
}

/// Idle connections of one kind by key, each with the time it went idle;
/// the newest last.
struct IdleMap<C>(Mutex<ByKey<C>>);

/// Idle connections and since when, per key.
type ByKey<C> = HashMap<Arc<PoolKey>, Vec<(C, Instant)>>;

impl<C> IdleMap<C> {
    fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    fn lock(&self) -> MutexGuard<'_, ByKey<C>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The newest connection of `key` idle for less than `timeout` that
    /// `usable` accepts; the ones passed over on the way are dropped.
    fn take(
        &self,
        key: &PoolKey,
        timeout: Duration,
        mut usable: impl FnMut(&mut C) -> bool,
    ) -> Option<C> {
        let now = Instant::now();
        let mut idle = self.lock();
        let conns = idle.get_mut(key)?;
        let mut found = None;
        while let Some((mut c, since)) = conns.pop() {
            if now.duration_since(since) < timeout && usable(&mut c) {
                found = Some(c);
                break;
            }
        }
        if conns.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Keeps `conn` idle under `key`, closing the key's oldest beyond `cap`.
    fn put(&self, key: Arc<PoolKey>, conn: C, cap: usize) {
        let mut idle = self.lock();
        let conns = idle.entry(key).or_default();
        conns.push((conn, Instant::now()));
        if conns.len() > cap {
            conns.remove(0);
        }
    }

    /// Drops the connections idle for `timeout` or more at `now`, and
    /// those `usable` refuses.
    fn sweep(&self, now: Instant, timeout: Duration, mut usable: impl FnMut(&mut C) -> bool) {
        self.lock().retain(|_, conns| {
            conns.retain_mut(|(c, since)| now.duration_since(*since) < timeout && usable(c));
            !conns.is_empty()
        });
    }

    fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

/// One shared HTTP/2 connection and when it last carried a request.
pub(crate) struct H2Conn {
    pub(crate) sender: H2Sender,
    pub(crate) last_used: Instant,
}

/// The sending half of an upstream HTTP/2 connection.
pub(crate) type H2Sender = hyper::client::conn::http2::SendRequest<Body>;

/// The HTTP/2 connection of one key; its async lock is held while the
/// connection is being opened, so concurrent requests wait for it rather
/// than opening their own.
pub(crate) type H2Slot = Arc<tokio::sync::Mutex<Option<H2Conn>>>;

/// The pool: idle HTTP/1.1 connections and shared HTTP/2 connections by
/// key.
pub(crate) struct HttpPool {
    cfg: PoolConfig,
    /// hyper's HTTP/1.1 connections (requests with a streamed body).
    idle: IdleMap<SendRequest<Body>>,
    /// The lean client's ([`crate::h1`]).
    idle_h1: IdleMap<H1Conn>,
    h2: Mutex<HashMap<Arc<PoolKey>, H2Slot>>,
    opened: AtomicU64,
    reused: AtomicU64,
    h2_opened: AtomicU64,
}

impl HttpPool {
    /// A pool, and its sweep task (which ends with the pool). Must be
    /// called within a tokio runtime.
    pub(crate) fn new(cfg: PoolConfig) -> Arc<Self> {
        let pool = Arc::new(Self {
            cfg,
            idle: IdleMap::new(),
            idle_h1: IdleMap::new(),
            h2: Mutex::new(HashMap::new()),
            opened: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            h2_opened: AtomicU64::new(0),
        });
        if cfg.max_idle_per_endpoint > 0 {
            tokio::spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// The most recently returned lean HTTP/1.1 connection for `key` that
    /// is still idle (nothing arrived on it, not even its close).
    pub(crate) fn checkout_h1(&self, key: &PoolKey) -> Option<H1Conn> {
        if self.cfg.max_idle_per_endpoint == 0 {
            return None;
        }
        self.idle_h1
            .take(key, self.cfg.idle_timeout, |c| c.is_idle())
    }

    /// Takes back a lean HTTP/1.1 connection whose answer ended cleanly
    /// (the oldest idle one of the key closes when there are too many).
    pub(crate) fn checkin_h1(&self, key: Arc<PoolKey>, conn: H1Conn) {
        if self.cfg.max_idle_per_endpoint == 0 {
            return;
        }
        self.idle_h1.put(key, conn, self.cfg.max_idle_per_endpoint);
    }

    /// The response of a lean HTTP/1.1 exchange; its body returns the
    /// connection to the pool at its end, when the answer allows reuse.
    pub(crate) fn wrap_h1(
        self: &Arc<Self>,
        key: Arc<PoolKey>,
        conn: H1Conn,
        answer: Answer,
    ) -> Response<PooledBody> {
        let home = (self.cfg.max_idle_per_endpoint > 0).then(|| Home {
            pool: Arc::clone(self),
            key,
        });
        let body = H1Body::new(conn, &answer, home);
        let open = !body.is_end_stream();
        Response::from_parts(
            answer.head,
            PooledBody {
                inner: Inner::H1(body),
                ret: None,
                in_flight: None,
                open,
            },
        )
    }

    /// The most recently returned usable connection for `key`.
    pub(crate) fn checkout(&self, key: &PoolKey) -> Option<SendRequest<Body>> {
        if self.cfg.max_idle_per_endpoint == 0 {
            return None;
        }
        self.idle
            .take(key, self.cfg.idle_timeout, |sender| sender.is_ready())
    }

    /// Counts a newly opened connection.
    pub(crate) fn note_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a newly opened HTTP/2 connection.
    pub(crate) fn note_h2_opened(&self) {
        self.h2_opened.fetch_add(1, Ordering::Relaxed);
        self.note_opened();
    }

    fn h2_slots(&self) -> MutexGuard<'_, HashMap<Arc<PoolKey>, H2Slot>> {
        match self.h2.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The HTTP/2 slot of `key` (created empty), or `None` when pooling is
    /// off.
    pub(crate) fn h2_slot(&self, key: &Arc<PoolKey>) -> Option<H2Slot> {
        if self.cfg.max_idle_per_endpoint == 0 {
            return None;
        }
        Some(Arc::clone(
            self.h2_slots().entry(Arc::clone(key)).or_default(),
        ))
    }

    /// Wraps a response from an HTTP/2 connection (nothing to return: the
    /// connection stays shared).
    pub(crate) fn wrap_h2(resp: Response<Incoming>) -> Response<PooledBody> {
        resp.map(|inner| PooledBody {
            open: !inner.is_end_stream(),
            inner: Inner::Hyper(inner),
            ret: None,
            in_flight: None,
        })
    }

    /// Counts a request sent on a reused connection.
    pub(crate) fn note_reused(&self) {
        self.reused.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters.
    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            opened: self.opened.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            idle: self.idle.len() + self.idle_h1.len(),
            h2_opened: self.h2_opened.load(Ordering::Relaxed),
            h2: self
                .h2_slots()
                .values()
                .filter(|s| {
                    s.try_lock()
                        .map(|c| c.as_ref().is_some_and(|c| !c.sender.is_closed()))
                        // Being opened or used right now: open.
                        .unwrap_or(true)
                })
                .count(),
        }
    }

    /// Wraps a response so its connection returns to the pool when the
    /// body is read to the end, if the connection may be reused.
    pub(crate) fn wrap(
        self: &Arc<Self>,
        key: Arc<PoolKey>,
        sender: SendRequest<Body>,
        resp: Response<Incoming>,
    ) -> Response<PooledBody> {
        let reusable =
            self.cfg.max_idle_per_endpoint > 0 && keep_alive(resp.version(), resp.headers());
        let ret = Return {
            pool: Arc::clone(self),
            key,
            sender,
            reusable,
        };
        resp.map(|inner| {
            let mut body = PooledBody {
                inner: Inner::Hyper(inner),
                ret: Some(ret),
                in_flight: None,
                open: true,
            };
            if body.is_end_stream() {
                body.finish();
            }
            body
        })
    }

    fn checkin(self: Arc<Self>, key: Arc<PoolKey>, mut sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.push(key, sender);
            return;
        }
        // hyper marks the connection ready once it has seen the end of the
        // response itself, which may be a moment after the body's reader.
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
                self.push(key, sender);
            }
        });
    }

    fn push(&self, key: Arc<PoolKey>, sender: SendRequest<Body>) {
        self.idle.put(key, sender, self.cfg.max_idle_per_endpoint);
    }

    /// Drops closed and expired idle connections.
    fn sweep_now(&self, now: Instant) {
        let timeout = self.cfg.idle_timeout;
        self.idle.sweep(now, timeout, |sender| !sender.is_closed());
        self.idle_h1.sweep(now, timeout, |c| c.is_idle());
        // HTTP/2: drop closed connections and those idle past the timeout
        // (hyper closes a connection once its last sender is gone and its
        // streams have ended); a slot in use is left alone.
        self.h2_slots().retain(|_, slot| match slot.try_lock() {
            Ok(mut c) => {
                if c.as_ref().is_some_and(|c| {
                    c.sender.is_closed() || now.duration_since(c.last_used) >= timeout
                }) {
                    *c = None;
                }
                c.is_some()
            }
            Err(_) => true,
        });
    }
}

async fn sweep(pool: Weak<HttpPool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.cfg.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(p) => p.sweep_now(Instant::now()),
            None => return,
        }
    }
}

/// The connection a response body hands back at its end.
struct Return {
    pool: Arc<HttpPool>,
    key: Arc<PoolKey>,
    sender: SendRequest<Body>,
    reusable: bool,
}

/// An upstream response body that returns its connection to the pool when
/// read to the end and holds the endpoint's in-flight count until then.
pub struct PooledBody {
    inner: Inner,
    /// Present until the end of the body or an error.
    ret: Option<Return>,
    in_flight: Option<InFlight>,
    /// Until the end of the body or an error.
    open: bool,
}

/// Which client read the answer.
enum Inner {
    /// hyper's (HTTP/2, and HTTP/1.1 requests with a streamed body).
    Hyper(Incoming),
    /// The lean HTTP/1.1 client's.
    H1(H1Body),
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pending_return", &self.ret.is_some())
            .finish_non_exhaustive()
    }
}

impl PooledBody {
    /// Counts the request as in flight to its endpoint until the body
    /// ends (`None`: not counted).
    pub(crate) fn with_in_flight(mut self, guard: Option<InFlight>) -> Self {
        if self.open {
            self.in_flight = guard;
        }
        self
    }

    fn finish(&mut self) {
        self.open = false;
        self.in_flight = None;
        if let Some(r) = self.ret.take()
            && r.reusable
        {
            r.pool.checkin(r.key, r.sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = match &mut this.inner {
            Inner::Hyper(b) => {
                ready!(Pin::new(b).poll_frame(cx)).map(|f| f.map_err(BoxError::from))
            }
            Inner::H1(b) => ready!(Pin::new(b).poll_frame(cx)).map(|f| f.map_err(BoxError::from)),
        };
        match &frame {
            None => this.finish(),
            Some(Ok(_)) if this.is_end_stream() => this.finish(),
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                // Never reused: dropping the sender lets hyper close it
                // (the lean body has dropped its connection already).
                this.ret = None;
                this.in_flight = None;
                this.open = false;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(b) => b.size_hint(),
            Inner::H1(b) => b.size_hint(),
        }
    }
}
