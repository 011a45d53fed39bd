//! Protocol detection from a stream's first bytes, and a stream that
//! replays them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1 request line or the HTTP/2 preface.
    Http,
    /// Something else.
    Tcp,
    /// Too few bytes to tell.
    NeedMore,
}

/// Classifies the first bytes of a client's stream.
pub fn sniff(first: &[u8]) -> Sniffed {
    let mut need_more = false;
    for c in METHODS.iter().copied().chain([H2_PREFACE]) {
        if first.starts_with(c) {
            return Sniffed::Http;
        }
        if c.starts_with(first) {
            need_more = true;
        }
    }
    if need_more {
        Sniffed::NeedMore
    } else {
        Sniffed::Tcp
    }
}

/// A stream whose first reads return `prefix` (bytes read while sniffing).
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: ambit_hbone::Abort> ambit_hbone::Abort for Rewind<S> {
    fn abort(&mut self) {
        self.inner.abort();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn sniff_table() {
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Sniffed::Http),
            (b"DELETE /x", Sniffed::Http),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Sniffed::Http),
            (b"PRI * HT", Sniffed::NeedMore),
            (b"GE", Sniffed::NeedMore),
            (b"", Sniffed::NeedMore),
            (b"GETX", Sniffed::Tcp),
            (b"\x16\x03\x01", Sniffed::Tcp),
            (b"hello", Sniffed::Tcp),
        ] {
            assert_eq!(sniff(bytes), want, "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn rewind_replays_prefix() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .expect("write");
        drop(a);
        let mut r = Rewind::new(Bytes::from_static(b"hello"), b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.expect("read");
        assert_eq!(s, "hello world");
    }
}
