//! [`HboneStream`]: one CONNECT stream as `AsyncRead + AsyncWrite`, and as
//! [`ChunkIo`] without copies: reads hand out the received DATA frames'
//! `Bytes`, writes send slices of the caller's `Bytes`.
//!
//! Flow control invariants:
//! - Receive: capacity is released to the peer only as the reader consumes
//!   bytes, so a slow reader makes the peer stop sending (per-stream window
//!   4 MiB by default) instead of growing a buffer here.
//! - Send: before each DATA frame the writer reserves capacity and sends
//!   only what the peer's window grants, so nothing is queued without
//!   bound inside h2.
//!
//! Closing: [`poll_shutdown`](AsyncWrite::poll_shutdown) sends an empty
//! DATA frame with END_STREAM (the TCP FIN of the tunnel); a reset from the
//! peer surfaces as `ConnectionReset` on the next read or write;
//! [`Abort::abort`](crate::Abort::abort) sends RST_STREAM(CONNECT_ERROR),
//! as RFC 9113 §8.5 asks of a proxy whose TCP connection was reset.
//! Dropping a stream that is not closed both ways resets it (h2 sends
//! RST_STREAM(CANCEL)).

use std::{
    any::Any,
    fmt, io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ChunkIo;

/// The most bytes offered to h2 in one DATA write (so the most in one DATA
/// frame we send). About 64 KiB rather than the 1 MiB the peer allows:
/// each [`AsyncWrite`] write is copied into a fresh `Bytes` (a
/// [`ChunkIo`] write is not), and allocations above
/// glibc's 128 KiB mmap threshold showed up as page faults and
/// TLB-shootdown IPIs in profiles; smaller frames also let the receiver's
/// h2 hand data on sooner instead of buffering a whole large frame. Not
/// exactly 64 KiB: h2 writes the 9-byte frame header and the payload in
/// one vectored write, which rustls cuts into 16 KiB records, so header
/// plus payload are made exactly four full records — with a 64 KiB
/// payload every frame left a 9-byte fifth record (one more syscall and
/// one more seal/open per frame). Measured in PERFORMANCE.md (bulk
/// through the loopback mesh).
const MAX_WRITE: usize = 4 * TLS_RECORD - FRAME_HEADER;
/// TLS's largest record payload.
const TLS_RECORD: usize = 16 * 1024;
/// An HTTP/2 frame header.
const FRAME_HEADER: usize = 9;

/// A bidirectional byte stream carried by one HTTP/2 CONNECT stream, on
/// either side of the tunnel.
pub struct HboneStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not yet handed to the reader (their flow-control
    /// capacity is not released yet).
    pending: Bytes,
    /// END_STREAM received.
    read_eof: bool,
    /// END_STREAM sent.
    write_closed: bool,
    /// Kept alive as long as the stream: the pool's stream-slot guard, or
    /// the inner connection of a double-HBONE stream.
    _keep: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for HboneStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneStream")
            .field("id", &self.send.stream_id().as_u32())
            .field("read_eof", &self.read_eof)
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

impl HboneStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            read_eof: false,
            write_closed: false,
            _keep: None,
        }
    }

    /// Attaches something that must live as long as the stream.
    pub(crate) fn keep(mut self, value: impl Any + Send + Sync) -> Self {
        self._keep = Some(Box::new(value));
        self
    }

    /// The HTTP/2 stream id.
    pub fn stream_id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }

    /// Resets the stream with `reason` (RST_STREAM); later reads and writes
    /// fail.
    pub fn reset(&mut self, reason: Reason) {
        self.send.send_reset(reason);
    }

    /// Waits until received bytes are pending or the peer ended the
    /// stream (then `pending` stays empty).
    fn poll_received(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() && !self.read_eof {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => self.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => self.read_eof = true,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes up to `max` pending bytes for the reader, without a copy,
    /// and lets the peer send as many more.
    fn take_received(&mut self, max: usize) -> Bytes {
        let n = self.pending.len().min(max);
        if n == 0 {
            return Bytes::new();
        }
        let data = self.pending.split_to(n);
        // The reader has taken n bytes: let the peer send n more. Fails
        // only if the stream is already gone, which the next read reports.
        let _ = self.recv.flow_control().release_capacity(n);
        data
    }

    /// Waits for send capacity for up to `len` bytes (at most
    /// [`MAX_WRITE`]) and returns how much was granted: zero only when
    /// `len` is.
    fn poll_send_capacity(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "hbone stream already closed for writing",
            )));
        }
        let want = len.min(MAX_WRITE);
        self.send.reserve_capacity(want);
        match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(0)) => {
                // Capacity was assigned and taken back (window shrank); wait.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(Ok(n)) => Poll::Ready(Ok(n.min(want))),
            // The stream is closed or reset: report why.
            Some(Err(_)) | None => self.poll_send_error(cx).map(Err),
        }
    }

    /// Sends `data` (no more than [`poll_send_capacity`] granted) as DATA.
    ///
    /// [`poll_send_capacity`]: Self::poll_send_capacity
    fn poll_send(&mut self, cx: &mut Context<'_>, data: Bytes) -> Poll<io::Result<usize>> {
        let n = data.len();
        match self.send.send_data(data, false) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => self.poll_send_error(cx).map(Err),
        }
    }

    /// The error to report once the send side is unusable: the peer's
    /// reset reason if it sent one.
    fn poll_send_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        Poll::Ready(match ready!(self.send.poll_reset(cx)) {
            Ok(reason) => reset_error(reason),
            Err(e) => h2_to_io(e),
        })
    }
}

/// An RST_STREAM as an I/O error: `ConnectionReset`, keeping the reason.
fn reset_error(reason: Reason) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("hbone stream reset: {reason}"),
    )
}

/// h2 errors as I/O errors: resets become `ConnectionReset`, a GOAWAY
/// `ConnectionAborted`, transport errors stay what they were.
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 transport error"));
    }
    let kind = if e.is_reset() {
        io::ErrorKind::ConnectionReset
    } else if e.is_go_away() {
        io::ErrorKind::ConnectionAborted
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl AsyncRead for HboneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_received(cx))?;
        buf.put_slice(&this.take_received(buf.remaining()));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HboneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?;
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        this.poll_send(cx, Bytes::copy_from_slice(&buf[..n]))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes frames out as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Ok(()));
        }
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => {
                this.write_closed = true;
                Poll::Ready(Ok(()))
            }
            Err(_) => this.poll_send_error(cx).map(Err),
        }
    }
}

/// Without copies: reads hand out the received DATA frames' own `Bytes`
/// (up to `size` bytes; flow-control capacity is released as they are
/// handed out, as for [`AsyncRead`]); writes send `DATA` frames that are
/// slices of the caller's chunk, of the same sizes an [`AsyncWrite`] write
/// of the same bytes sends.
impl ChunkIo for HboneStream {
    fn poll_read_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _spare: &mut BytesMut,
        size: usize,
    ) -> Poll<io::Result<Bytes>> {
        let this = self.get_mut();
        ready!(this.poll_received(cx))?;
        Poll::Ready(Ok(this.take_received(size.max(1))))
    }

    fn poll_write_chunk(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(this.poll_send_capacity(cx, chunk.len()))?;
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        this.poll_send(cx, chunk.split_to(n))
    }
}

impl crate::Abort for HboneStream {
    fn abort(&mut self) {
        self.send.send_reset(Reason::CONNECT_ERROR);
    }
}
