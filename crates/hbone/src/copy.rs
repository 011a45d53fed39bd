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
//! - Bytes move as [chunks](ChunkIo): what a read returns is handed to the
//!   write as it is, so a stream that already holds its bytes in a `Bytes`
//!   (an HTTP/2 DATA frame) gives them on without a copy, and one that
//!   sends `Bytes` (an HBONE stream) takes the read buffer's bytes without
//!   a copy.

use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

/// The first buffer size of each direction.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// The largest buffer size of each direction.
pub const MAX_BUFFER: usize = 256 * 1024;
/// Consecutive full reads after which a buffer grows.
pub const GROW_AFTER: u32 = 4;

/// The most idle read buffers a thread keeps (see [`Pipe::poll_copy`]).
const SPARE_BUFFERS: usize = 4;

thread_local! {
    /// Each thread's idle read buffers of [`INITIAL_BUFFER`] bytes. A
    /// direction with nothing to read gives its buffer here rather than to
    /// the allocator, and the next read on this thread takes it back: a
    /// copy polls both directions at every wake-up, so the idle one would
    /// otherwise allocate and free a buffer each time.
    static SPARE_READ_BUFFERS: std::cell::RefCell<Vec<BytesMut>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// One of this thread's idle read buffers, or an empty one (a read
/// allocates it).
fn take_buffer() -> BytesMut {
    SPARE_READ_BUFFERS
        .try_with(|l| l.try_borrow_mut().ok().and_then(|mut l| l.pop()))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Gives `buf`, empty, to this thread's idle read buffers when nothing
/// else shares its allocation (a chunk read into it and not yet written
/// does) and the thread has room; else it is freed.
fn give_buffer(mut buf: BytesMut) {
    if !buf.is_empty() || buf.capacity() == 0 || !buf.try_reclaim(INITIAL_BUFFER) {
        return;
    }
    if buf.capacity() > INITIAL_BUFFER {
        return;
    }
    // Gone only while the thread itself is ending.
    let _ = SPARE_READ_BUFFERS.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut()
            && l.len() < SPARE_BUFFERS
        {
            l.push(buf);
        }
    });
}

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

/// A stream [`copy_bidirectional`] can move bytes through as whole
/// chunks (`Bytes`) rather than through a borrowed slice, so that streams
/// which hold or send their bytes as `Bytes` — an [`HboneStream`]'s HTTP/2
/// DATA frames — pass them on without copying them.
///
/// The default methods read into the caller's spare buffer and write
/// through [`AsyncWrite::poll_write`], which is right for any plain byte
/// stream (TCP, TLS); a stream overrides them when it can do better.
///
/// [`HboneStream`]: crate::HboneStream
pub trait ChunkIo: AsyncRead + AsyncWrite + Abort {
    /// Reads at most `size` bytes (at least one unless at EOF) as one
    /// chunk; an empty chunk is EOF.
    ///
    /// `spare` is the caller's read buffer: the default reserves `size`
    /// bytes in it, reads into its spare capacity (never zeroed first) and
    /// splits the bytes read off, so the buffer's allocation is reused
    /// once the chunk is dropped. A stream that already holds its bytes as
    /// `Bytes` hands them out and leaves `spare` alone.
    fn poll_read_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        spare: &mut BytesMut,
        size: usize,
    ) -> Poll<io::Result<Bytes>> {
        spare.reserve(size.max(1));
        let n = ready!(poll_read_buf(self, cx, spare))?;
        Poll::Ready(Ok(spare.split_to(n).freeze()))
    }

    /// Writes a prefix of `chunk` and advances `chunk` past it; returns
    /// how many bytes that was (zero only for an empty chunk or a stream
    /// that cannot take more).
    ///
    /// The default writes through [`AsyncWrite::poll_write`]; a stream
    /// that sends `Bytes` takes its part of the chunk without a copy.
    fn poll_write_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(self.poll_write(cx, chunk))?;
        chunk.advance(n.min(chunk.len()));
        Poll::Ready(Ok(n))
    }
}

impl ChunkIo for tokio::net::TcpStream {}

impl ChunkIo for tokio::io::DuplexStream {}

impl<IO> ChunkIo for tokio_rustls::client::TlsStream<IO> where
    IO: AsyncRead + AsyncWrite + Abort + Unpin
{
}

impl<IO> ChunkIo for tokio_rustls::server::TlsStream<IO> where
    IO: AsyncRead + AsyncWrite + Abort + Unpin
{
}

impl<T: ChunkIo + Unpin + ?Sized> ChunkIo for Box<T> {
    fn poll_read_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        spare: &mut BytesMut,
        size: usize,
    ) -> Poll<io::Result<Bytes>> {
        Pin::new(&mut **self.get_mut()).poll_read_chunk(cx, spare, size)
    }

    fn poll_write_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut **self.get_mut()).poll_write_chunk(cx, chunk)
    }
}

impl<T: ChunkIo + Unpin + ?Sized> ChunkIo for &mut T {
    fn poll_read_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        spare: &mut BytesMut,
        size: usize,
    ) -> Poll<io::Result<Bytes>> {
        Pin::new(&mut **self.get_mut()).poll_read_chunk(cx, spare, size)
    }

    fn poll_write_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut **self.get_mut()).poll_write_chunk(cx, chunk)
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
/// half-close and reset propagation: EOF on one side shuts down the other
/// side's write half while the opposite direction goes on, and an error on
/// one side aborts the other. Bytes move as [`ChunkIo`] chunks, through
/// buffers that start at [`INITIAL_BUFFER`] and grow to [`MAX_BUFFER`]
/// under bulk transfer.
///
/// Returns the bytes moved each way. On an error, the other stream is
/// aborted before returning; drop both streams afterwards.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> Result<CopyStats, CopyError>
where
    A: ChunkIo + Unpin + ?Sized,
    B: ChunkIo + Unpin + ?Sized,
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
    /// The read buffer sources that read into one fill (see
    /// [`ChunkIo::poll_read_chunk`]). Its allocation is at least `size`
    /// bytes while data moves, and none at all while the direction is
    /// idle at its initial size (see [`Pipe::poll_copy`]).
    spare: BytesMut,
    /// Read and not yet written.
    held: Bytes,
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
            spare: BytesMut::new(),
            held: Bytes::new(),
            size: INITIAL_BUFFER,
            full_reads: 0,
            read_eof: false,
            need_flush: false,
            done: false,
            moved: 0,
        }
    }

    /// Moves what `src` has to `dst`, one chunk at a time: the chunk a
    /// read returns is what the writes take, so neither side copies bytes
    /// it can hand over as `Bytes`. An idle direction (a read found
    /// nothing, nothing is held and the size has not grown) gives its read
    /// buffer back, so an idle connection holds no copy buffers at all;
    /// the next read allocates again.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut src: Pin<&mut R>,
        mut dst: Pin<&mut W>,
    ) -> Poll<Result<(), PipeError>>
    where
        R: ChunkIo + ?Sized,
        W: ChunkIo + ?Sized,
    {
        loop {
            if self.held.is_empty() && !self.read_eof {
                self.grow_if_bulk();
                // At the first size, a read needs a whole buffer: the one
                // held if nothing else shares it (a chunk in flight does),
                // else one of the thread's, else the read allocates one.
                if self.size == INITIAL_BUFFER && !self.spare.try_reclaim(INITIAL_BUFFER) {
                    self.spare = take_buffer();
                }
                match src.as_mut().poll_read_chunk(cx, &mut self.spare, self.size) {
                    Poll::Ready(Ok(chunk)) if chunk.is_empty() => self.read_eof = true,
                    Poll::Ready(Ok(chunk)) => {
                        self.full_reads = if chunk.len() >= self.size {
                            self.full_reads + 1
                        } else {
                            0
                        };
                        self.held = chunk;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(("reading", true, e))),
                    Poll::Pending => {
                        if self.size == INITIAL_BUFFER {
                            // The last chunk, written, must not pin it.
                            self.held = Bytes::new();
                            give_buffer(std::mem::take(&mut self.spare));
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
            while !self.held.is_empty() {
                let n = ready!(dst.as_mut().poll_write_chunk(cx, &mut self.held))
                    .map_err(|e| ("writing", false, e))?;
                if n == 0 {
                    return Poll::Ready(Err((
                        "writing",
                        false,
                        io::Error::new(io::ErrorKind::WriteZero, "write returned zero bytes"),
                    )));
                }
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
                self.held = Bytes::new();
                give_buffer(std::mem::take(&mut self.spare));
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
    use std::future::Future;

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

    /// A stream of given chunks (then EOF) that keeps the chunks written
    /// to it whole, to see whether the copy passed them on or copied them.
    #[derive(Default)]
    struct Chunks {
        to_read: std::collections::VecDeque<Bytes>,
        written: Vec<Bytes>,
        shut_down: bool,
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if let Some(front) = this.to_read.front_mut() {
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front.split_to(n));
                if front.is_empty() {
                    this.to_read.pop_front();
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Chunks {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().written.push(Bytes::copy_from_slice(buf));
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().shut_down = true;
            Poll::Ready(Ok(()))
        }
    }

    impl Abort for Chunks {
        fn abort(&mut self) {}
    }

    impl ChunkIo for Chunks {
        fn poll_read_chunk(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _spare: &mut BytesMut,
            size: usize,
        ) -> Poll<io::Result<Bytes>> {
            let this = self.get_mut();
            let Some(front) = this.to_read.front_mut() else {
                return Poll::Ready(Ok(Bytes::new()));
            };
            let chunk = front.split_to(front.len().min(size));
            if front.is_empty() {
                this.to_read.pop_front();
            }
            Poll::Ready(Ok(chunk))
        }

        fn poll_write_chunk(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            chunk: &mut Bytes,
        ) -> Poll<io::Result<usize>> {
            let n = chunk.len();
            self.get_mut().written.push(std::mem::take(chunk));
            Poll::Ready(Ok(n))
        }
    }

    #[tokio::test]
    async fn chunks_pass_through_without_a_copy() {
        let first = Bytes::from(vec![1u8; 1000]);
        let second = Bytes::from(vec![2u8; INITIAL_BUFFER + 10]);
        let mut a = Chunks {
            to_read: [first.clone(), second.clone()].into(),
            ..Chunks::default()
        };
        let mut b = Chunks::default();
        let stats = copy_bidirectional(&mut a, &mut b).await.expect("copy");
        assert_eq!(
            stats,
            CopyStats {
                a_to_b: 1000 + INITIAL_BUFFER as u64 + 10,
                b_to_a: 0
            }
        );
        // The very bytes read were written: same memory, no copy; a chunk
        // larger than the read size came as two reads.
        let ptrs: Vec<_> = b.written.iter().map(|c| (c.as_ptr(), c.len())).collect();
        assert_eq!(
            ptrs,
            vec![
                (first.as_ptr(), 1000),
                (second.as_ptr(), INITIAL_BUFFER),
                (second[INITIAL_BUFFER..].as_ptr(), 10),
            ]
        );
        assert!(a.shut_down && b.shut_down, "EOF shut both write halves");
    }

    #[test]
    fn an_idle_direction_holds_no_buffer_and_lends_it_to_the_thread() {
        let spares = || SPARE_READ_BUFFERS.with(|l| l.borrow().len());
        SPARE_READ_BUFFERS.with(|l| l.borrow_mut().clear());
        let (mut src, mut peer) = duplex(1 << 16);
        let mut dst = Chunks::default();
        let mut pipe = Pipe::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Nothing to read: the buffer the read reserved goes to the thread.
        let poll = pipe.poll_copy(&mut cx, Pin::new(&mut src), Pin::new(&mut dst));
        assert!(poll.is_pending());
        assert_eq!((pipe.spare.capacity(), spares()), (0, 1));
        // Polled idle again: taken and given back, nothing allocated.
        let poll = pipe.poll_copy(&mut cx, Pin::new(&mut src), Pin::new(&mut dst));
        assert!(poll.is_pending());
        assert_eq!((pipe.spare.capacity(), spares()), (0, 1));
        // Data read into the lent buffer and still held by the destination
        // pins that buffer: the next read takes another (here, a new one),
        // and that is what goes back to the thread.
        let mut write = std::pin::pin!(peer.write_all(b"hello"));
        assert!(write.as_mut().poll(&mut cx).is_ready());
        let poll = pipe.poll_copy(&mut cx, Pin::new(&mut src), Pin::new(&mut dst));
        assert!(poll.is_pending());
        assert_eq!(dst.written, vec![Bytes::from_static(b"hello")]);
        assert_eq!(pipe.moved, 5);
        assert_eq!((pipe.spare.capacity(), spares()), (0, 1));
        let (start, room) = SPARE_READ_BUFFERS.with(|l| {
            let l = l.borrow();
            (l[0].as_ptr() as usize, l[0].capacity())
        });
        assert_eq!(room, INITIAL_BUFFER);
        let chunk = dst.written[0].as_ptr() as usize;
        assert!(
            !(start..start + room).contains(&chunk),
            "a lent buffer holds a live chunk"
        );
        // A thread keeps at most a few.
        for _ in 0..2 * SPARE_BUFFERS {
            give_buffer(BytesMut::with_capacity(INITIAL_BUFFER));
        }
        assert_eq!(spares(), SPARE_BUFFERS);
        SPARE_READ_BUFFERS.with(|l| l.borrow_mut().clear());
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
