//! The accept loop: one task per connection, backoff on accept errors, a
//! connection cap, and a drain with a deadline.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

/// First pause after a failed `accept`; doubled on each further failure.
const MIN_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause after a failed `accept`.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one "connection cap reached" warning per this interval.
const CAP_WARN_EVERY: Duration = Duration::from_secs(5);

/// Something connections are accepted from: a TCP or a Unix listener.
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Stream: Send + 'static;
    /// The peer's address.
    type Addr: Send + std::fmt::Debug + 'static;
    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send {
        tokio::net::TcpListener::accept(self)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Addr)>> + Send {
        tokio::net::UnixListener::accept(self)
    }
}

/// Bounds of one accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long connections may go on once shutdown starts; the rest are
    /// then aborted.
    pub drain_deadline: Duration,
    /// Most connections served at once. A connection accepted beyond it is
    /// closed at once (the peer sees a reset or an EOF), so the backlog
    /// never fills with clients that will wait forever.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            drain_deadline: Duration::from_secs(5),
            max_connections: usize::MAX,
        }
    }
}

/// Tells a connection that the server is draining. Cheap to clone; every
/// connection task gets one. It resolves when shutdown starts (and also if
/// the loop is gone), so a connection that can end gracefully (HTTP/2
/// GOAWAY, HTTP/1 `connection: close`) does so, and one that cannot simply
/// runs until it ends or the drain deadline aborts it.
#[derive(Debug, Clone)]
pub struct Drain(Option<watch::Receiver<bool>>);

impl Drain {
    /// A drain that never starts (for connections served outside a loop).
    pub fn never() -> Self {
        Self(None)
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Resolves once shutdown starts.
    pub async fn signaled(self) {
        match self.0 {
            Some(mut rx) => {
                let _ = rx.wait_for(|draining| *draining).await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Accepts connections from `listener` until `shutdown` resolves, running
/// `each(stream, peer, drain)` as its own task for every one. Then it stops
/// accepting (the listener is closed), signals every connection's
/// [`Drain`], and waits up to [`Limits::drain_deadline`] for them before
/// aborting the rest.
///
/// A failed `accept` (out of descriptors, say) is logged and retried after
/// a pause that doubles from 5 ms up to 1 s, reset by the next success.
pub async fn run<L, F, Fut>(
    listener: L,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
    mut each: F,
) where
    L: Listener,
    F: FnMut(L::Stream, L::Addr, Drain) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut backoff = MIN_BACKOFF;
    let mut last_cap_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = MIN_BACKOFF;
                    if conns.len() >= limits.max_connections {
                        if last_cap_warning.is_none_or(|t| t.elapsed() >= CAP_WARN_EVERY) {
                            tracing::warn!(?peer, max = limits.max_connections, "connection cap reached: closing new connections");
                            last_cap_warning = Some(Instant::now());
                        }
                        drop(stream);
                        continue;
                    }
                    conns.spawn(each(stream, peer, Drain(Some(drain_rx.clone()))));
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "accept failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    if conns.is_empty() {
        return;
    }
    tracing::debug!(connections = conns.len(), deadline = ?limits.drain_deadline, "draining");
    let drained = tokio::time::timeout(limits.drain_deadline, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "drain deadline passed: closing the remaining connections"
        );
        conns.shutdown().await;
    }
}
