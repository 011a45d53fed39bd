//! The downstream idle timeout: a connection on which no byte has moved,
//! in either direction, for [`WaypointConfig::idle_timeout`] is closed.
//!
//! Envoy gives its HTTP connection manager and its TCP proxy the same
//! bound (an hour by default; Istio's `ISTIO_META_IDLE_TIMEOUT`). It is
//! what ends connections whose far end vanished without a FIN or a reset,
//! which otherwise stay open for the life of the process.
//!
//! The cost on the data path is one relaxed store per read or write that
//! moved bytes: [`Tracked`] sets a flag, and [`until_idle`] looks at it
//! every quarter of the timeout. So a connection is closed between one and
//! one and a quarter timeouts after its last byte.
//!
//! [`WaypointConfig::idle_timeout`]: crate::WaypointConfig::idle_timeout

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use ambit_hbone::{Abort, ChunkIo};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Quiet quarters after which a connection is idle.
const QUARTERS: u32 = 4;

/// `io`, noting when bytes move through it.
#[derive(Debug)]
pub(crate) struct Tracked<IO> {
    io: IO,
    moved: Arc<AtomicBool>,
}

impl<IO> Tracked<IO> {
    /// Wraps `io`; the flag is the one [`until_idle`] watches.
    pub(crate) fn new(io: IO) -> (Self, Arc<AtomicBool>) {
        let moved = Arc::new(AtomicBool::new(false));
        (
            Self {
                io,
                moved: Arc::clone(&moved),
            },
            moved,
        )
    }

    fn note(&self, n: usize) {
        if n > 0 {
            self.moved.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs `serve` until it completes (`false`) or no byte has moved through
/// `moved`'s [`Tracked`] stream for `timeout`, to within a quarter of it
/// (`true`; `serve` is dropped). A zero `timeout` never expires.
///
/// The timer is polled only when it is due or when the task's waker
/// changed, so a wake-up of the connection's task costs one atomic load
/// more than `serve` alone.
pub(crate) async fn until_idle<F: Future<Output = ()>>(
    serve: F,
    moved: Arc<AtomicBool>,
    timeout: Duration,
) -> bool {
    let mut serve = std::pin::pin!(serve);
    if timeout.is_zero() {
        serve.await;
        return false;
    }
    let quarter = timeout / QUARTERS;
    let mut tick = std::pin::pin!(tokio::time::sleep(quarter));
    let mut quiet = 0;
    // The waker the timer last saw; `None` until it has seen one.
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(|cx| {
        if serve.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        let same = registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if same && !tick.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if tick.as_mut().poll(cx).is_pending() {
                registered = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if moved.swap(false, Ordering::Relaxed) {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= QUARTERS {
                    return Poll::Ready(true);
                }
            }
            // From now, not from the deadline: a late tick (a starved
            // task) must not be followed by ticks already due.
            tick.as_mut().reset(tokio::time::Instant::now() + quarter);
        }
    })
    .await
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        self.note(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        self.note(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs))?;
        self.note(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Abort> Abort for Tracked<IO> {
    fn abort(&mut self) {
        self.io.abort();
    }
}

/// Chunks pass through as the inner stream gives and takes them (an
/// HBONE stream's DATA frames without a copy).
impl<IO: ChunkIo + Unpin> ChunkIo for Tracked<IO> {
    fn poll_read_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        spare: &mut BytesMut,
        size: usize,
    ) -> Poll<io::Result<Bytes>> {
        let chunk = ready!(Pin::new(&mut self.io).poll_read_chunk(cx, spare, size))?;
        self.note(chunk.len());
        Poll::Ready(Ok(chunk))
    }

    fn poll_write_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write_chunk(cx, chunk))?;
        self.note(n);
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn expires_after_a_quiet_timeout_and_not_while_bytes_move() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut a, moved) = Tracked::new(a);
        let timeout = Duration::from_millis(400);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let watch = tokio::spawn(until_idle(
            async move {
                let _ = done_rx.await;
            },
            moved,
            timeout,
        ));
        // A byte every 100 ms, alternating directions, for a second (two
        // and a half timeouts): never idle.
        for i in 0..10u8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut one = [0u8];
            if i % 2 == 0 {
                a.write_all(&[i]).await.expect("write a");
                b.read_exact(&mut one).await.expect("read b");
            } else {
                b.write_all(&[i]).await.expect("write b");
                a.read_exact(&mut one).await.expect("read a");
            }
            assert!(!watch.is_finished(), "expired while bytes moved ({i})");
        }
        // Then quiet: idle after at least a timeout, and the served
        // future dropped.
        let quiet = tokio::time::Instant::now();
        let idle = tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("never expired")
            .expect("the watch task");
        assert!(idle, "ended idle");
        assert!(quiet.elapsed() >= timeout, "{:?}", quiet.elapsed());
        assert!(done_tx.is_closed(), "the served future was dropped");
    }

    #[tokio::test]
    async fn a_served_future_that_ends_is_not_idle_and_zero_never_expires() {
        let (_, moved) = Tracked::new(());
        assert!(!until_idle(async {}, moved.clone(), Duration::from_millis(100)).await);
        let slow = tokio::time::sleep(Duration::from_millis(300));
        assert!(!until_idle(slow, moved, Duration::ZERO).await);
    }
}
