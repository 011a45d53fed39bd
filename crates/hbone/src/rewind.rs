//! A stream with bytes already read from it put back in front.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::copy::{Abort, ChunkIo};

/// `inner`, whose first reads return `prefix` — bytes read ahead (a first
/// frame, a protocol sniff) and handed back to the next reader.
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Abort> Abort for Rewind<S> {
    fn abort(&mut self) {
        self.inner.abort();
    }
}

/// The prefix is the first chunk read (up to `size` bytes of it per read),
/// without a copy; then `inner`'s own chunks.
impl<S: ChunkIo + Unpin> ChunkIo for Rewind<S> {
    fn poll_read_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        spare: &mut BytesMut,
        size: usize,
    ) -> Poll<io::Result<Bytes>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(size.max(1));
            return Poll::Ready(Ok(self.prefix.split_to(n)));
        }
        Pin::new(&mut self.inner).poll_read_chunk(cx, spare, size)
    }

    fn poll_write_chunk(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_chunk(cx, chunk)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn the_prefix_is_the_first_chunk() {
        let prefix = Bytes::from_static(b"sniffed");
        let (inner, mut peer) = duplex(64);
        let mut r = Rewind::new(prefix.clone(), inner);
        peer.write_all(b" then more").await.expect("write");
        drop(peer);
        let mut spare = BytesMut::new();
        let mut chunks = Vec::new();
        loop {
            let chunk =
                std::future::poll_fn(|cx| Pin::new(&mut r).poll_read_chunk(cx, &mut spare, 1024))
                    .await
                    .expect("read");
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        assert_eq!(
            chunks[0].as_ptr(),
            prefix.as_ptr(),
            "handed out, not copied"
        );
        assert_eq!(chunks.concat(), b"sniffed then more");
    }
}
