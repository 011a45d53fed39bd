//! Copying between two byte streams in both directions, the way a
//! tunnel endpoint must: half-close travels across (a FIN becomes an
//! END_STREAM and back), a reset travels across (a TCP RST becomes an
//! RST_STREAM and back), and the buffers grow only under bulk transfer.
//!
//! Invariants:
//! - Each direction ends on its own: EOF from one side shuts down the
//!   other side's write half, and the opposite direction keeps going until
//!   its own EOF.
//! - On the first error the side that did not fail is [aborted](Abort), so
//!   the failure reaches the far end as a reset rather than a clean close.
//! - Each direction's buffer starts at [`INITIAL_BUFFER`] and quadruples
//!   (up to [`MAX_BUFFER`]) after [`GROW_AFTER`] consecutive reads that
//!   filled it: interactive streams keep small buffers, bulk ones get big
//!   reads and writes. A direction that is idle at the initial size holds
//!   no buffer at all (idle connections cost no copy memory).

use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

/// The first buffer size of each direction.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// The largest buffer size of each direction.
pub const MAX_BUFFER: usize = 256 * 1024;
/// Consecutive full reads after which a buffer grows.
pub const GROW_AFTER: u32 = 4;

/// A stream that can be torn down abortively, so that the peer sees a
/// reset rather than a clean end: a TCP RST, an HTTP/2 RST_STREAM.
pub trait Abort {
    /// Makes closing this stream abortive (or aborts it at once). The
    /// caller drops the stream afterwards.
    fn abort(&mut self);
}

impl Abort for tokio::net::TcpStream {
    /// Sets `SO_LINGER` to zero: dropping the socket then sends a TCP RST
    /// (and does not block).
    fn abort(&mut self) {
        if let Err(error) = socket2::SockRef::from(&*self).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(%error, "failed to set SO_LINGER 0 for an abortive close");
        }
    }
}

impl Abort for tokio::io::DuplexStream {
    /// In-memory pipes have no reset: dropping closes them.
    fn abort(&mut self) {}
}

impl<IO: Abort> Abort for tokio_rustls::client::TlsStream<IO> {
    fn abort(&mut self) {
        self.get_mut().0.abort();
    }
}

impl<IO: Abort> Abort for tokio_rustls::server::TlsStream<IO> {
    fn abort(&mut self) {
        self.get_mut().0.abort();
    }
}

impl<T: Abort + ?Sized> Abort for Box<T> {
    fn abort(&mut self) {
        (**self).abort();
    }
}

impl<T: Abort + ?Sized> Abort for &mut T {
    fn abort(&mut self) {
        (**self).abort();
    }
}

/// Bytes moved by [`copy_bidirectional`], per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
}

/// Which stream of a [`copy_bidirectional`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first stream.
    A,
    /// The second stream.
    B,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::A => "a",
            Self::B => "b",
        })
    }
}

/// A failed [`copy_bidirectional`]: where, and what had been moved.
#[derive(Debug, thiserror::Error)]
#[error("copy failed {op} stream {side} after {} bytes a→b and {} bytes b→a", stats.a_to_b, stats.b_to_a)]
pub struct CopyError {
    /// The stream that failed.
    pub side: Side,
    /// `reading`, `writing` or `shutting down`.
    pub op: &'static str,
    /// Bytes moved before the failure.
    pub stats: CopyStats,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

impl CopyError {
    /// Whether the failure was a reset from the peer (`ConnectionReset`).
    pub fn is_reset(&self) -> bool {
        self.source.kind() == io::ErrorKind::ConnectionReset
    }
}

/// Copies `a → b` and `b → a` until both directions have ended, with
/// half-close and reset propagation (see the [module docs](self)).
///
/// Returns the bytes moved each way. On an error, the other stream is
/// aborted before returning; drop both streams afterwards.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> Result<CopyStats, CopyError>
where
    A: AsyncRead + AsyncWrite + Abort + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Abort + Unpin + ?Sized,
{
    let mut ab = Pipe::new();
    let mut ba = Pipe::new();
    let result = std::future::poll_fn(|cx| {
        let stats = |ab: &Pipe, ba: &Pipe| CopyStats {
            a_to_b: ab.moved,
            b_to_a: ba.moved,
        };
        if !ab.done
            && let Poll::Ready(Err((op, src_failed, source))) =
                ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))
        {
            let side = if src_failed { Side::A } else { Side::B };
            return Poll::Ready(Err(CopyError {
                side,
                op,
                stats: stats(&ab, &ba),
                source,
            }));
        }
        if !ba.done
            && let Poll::Ready(Err((op, src_failed, source))) =
                ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))
        {
            let side = if src_failed { Side::B } else { Side::A };
            return Poll::Ready(Err(CopyError {
                side,
                op,
                stats: stats(&ab, &ba),
                source,
            }));
        }
        if ab.done && ba.done {
            Poll::Ready(Ok(stats(&ab, &ba)))
        } else {
            Poll::Pending
        }
    })
    .await;
    if let Err(e) = &result {
        tracing::debug!(error = %e, cause = %e.source, "copy failed: aborting the other side");
        match e.side {
            Side::A => b.abort(),
            Side::B => a.abort(),
        }
    }
    result
}

/// One direction of a copy.
struct Pipe {
    /// Read and not yet written. Its allocation is `size` bytes while
    /// data moves, and none at all while the direction is idle at its
    /// initial size (see [`Pipe::poll_copy`]).
    buf: BytesMut,
    /// The buffer size reads use now.
    size: usize,
    /// Consecutive reads that filled the buffer.
    full_reads: u32,
    /// The source reached EOF.
    read_eof: bool,
    /// Written bytes not yet flushed.
    need_flush: bool,
    /// EOF seen, everything written, destination shut down.
    done: bool,
    moved: u64,
}

/// An operation, whether the source (true) or destination failed, and why.
type PipeError = (&'static str, bool, io::Error);

impl Pipe {
    fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            size: INITIAL_BUFFER,
            full_reads: 0,
            read_eof: false,
            need_flush: false,
            done: false,
            moved: 0,
        }
    }

    /// Moves what `src` has to `dst`. An idle direction (a read found
    /// nothing, the buffer is empty and has not grown) gives its buffer
    /// back, so an idle connection holds no copy buffers at all; the next
    /// read allocates again. Reads go into the buffer's spare capacity, so
    /// a fresh allocation is never zeroed first.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
    ) -> Poll<Result<(), PipeError>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.buf.is_empty() && !self.read_eof {
                self.grow_if_bulk();
                self.buf.reserve(self.size);
                match poll_read_buf(src.as_mut(), cx, &mut self.buf) {
                    Poll::Ready(Ok(0)) => self.read_eof = true,
                    Poll::Ready(Ok(n)) => {
                        self.full_reads = if n >= self.size {
                            self.full_reads + 1
                        } else {
                            0
                        };
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(("reading", true, e))),
                    Poll::Pending => {
                        if self.size == INITIAL_BUFFER {
                            self.buf = BytesMut::new();
                        }
                        // Nothing more to read now: push out what was written.
                        if self.need_flush {
                            ready!(dst.as_mut().poll_flush(cx))
                                .map_err(|e| ("writing", false, e))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while !self.buf.is_empty() {
                let n = ready!(dst.as_mut().poll_write(cx, &self.buf))
                    .map_err(|e| ("writing", false, e))?;
                if n == 0 {
                    return Poll::Ready(Err((
                        "writing",
                        false,
                        io::Error::new(io::ErrorKind::WriteZero, "write returned zero bytes"),
                    )));
                }
                self.buf.advance(n);
                self.moved += n as u64;
                self.need_flush = true;
            }
            if self.read_eof {
                if self.need_flush {
                    ready!(dst.as_mut().poll_flush(cx)).map_err(|e| ("writing", false, e))?;
                    self.need_flush = false;
                }
                ready!(dst.as_mut().poll_shutdown(cx)).map_err(|e| ("shutting down", false, e))?;
                self.done = true;
                self.buf = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn grow_if_bulk(&mut self) {
        if self.full_reads >= GROW_AFTER && self.size < MAX_BUFFER {
            self.size = (self.size * 4).min(MAX_BUFFER);
            self.full_reads = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn copies_both_ways_with_half_close_and_grows_under_bulk() {
        let (mut client, mut a) = duplex(1 << 20);
        let (mut b, mut server) = duplex(1 << 20);
        let copier = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b).await });
        let bulk = vec![7u8; 4 << 20];
        let writer = {
            let bulk = bulk.clone();
            tokio::spawn(async move {
                client.write_all(&bulk).await.expect("write");
                client.shutdown().await.expect("shutdown");
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.expect("read back");
                back
            })
        };
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .expect("server reads to eof");
        assert_eq!(got.len(), bulk.len());
        // The client half-closed; the server can still answer.
        server.write_all(b"answer").await.expect("answer");
        server.shutdown().await.expect("server shutdown");
        assert_eq!(writer.await.expect("join"), b"answer");
        let stats = copier.await.expect("join").expect("copy");
        assert_eq!(
            stats,
            CopyStats {
                a_to_b: 4 << 20,
                b_to_a: 6
            }
        );
    }

    #[test]
    fn buffers_grow_only_after_consecutive_full_reads() {
        let mut p = Pipe::new();
        p.full_reads = GROW_AFTER - 1;
        p.grow_if_bulk();
        assert_eq!(p.size, INITIAL_BUFFER);
        p.full_reads = GROW_AFTER;
        p.grow_if_bulk();
        assert_eq!(p.size, INITIAL_BUFFER * 4);
        for _ in 0..10 {
            p.full_reads = GROW_AFTER;
            p.grow_if_bulk();
        }
        assert_eq!(p.size, MAX_BUFFER);
    }
}
