//! The response body of the lean client: read from its connection by
//! whoever polls it, framed by length, chunks or the connection's end.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::chunked::{Step, decode_chunk};
use super::{Answer, H1Conn, MAX_HEAD};
use crate::pool::{HttpPool, PoolKey};

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// At the end of the connection.
    Close,
    /// Ended.
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
}

/// An error in a response body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// Reading failed.
    #[error("reading the upstream response body: {0}")]
    Io(#[from] io::Error),
    /// The body broke its framing.
    #[error("bad upstream response body: {0}")]
    Protocol(&'static str),
    /// The connection closed before the body's end.
    #[error("upstream closed the connection before the end of the response body")]
    Truncated,
}

/// Where an ended body's connection goes.
pub(crate) struct Home {
    pub(crate) pool: Arc<HttpPool>,
    pub(crate) key: Arc<PoolKey>,
}

/// A response body read from its connection by whoever polls it. At its
/// end, the connection goes back to the pool when it may be reused;
/// dropped before, the connection closes.
pub(crate) struct H1Body {
    conn: Option<H1Conn>,
    framing: Framing,
    reusable: bool,
    home: Option<Home>,
}

impl H1Body {
    /// The body of `answer` on `conn`; the connection returns to `home`
    /// at the end (`None`: it closes).
    pub(crate) fn new(conn: H1Conn, answer: &Answer, home: Option<Home>) -> Self {
        let mut body = Self {
            conn: Some(conn),
            framing: answer.framing,
            reusable: answer.reusable,
            home,
        };
        if body.framing == Framing::Done {
            body.finish();
        }
        body
    }

    /// The end: the connection is pooled if allowed and nothing more
    /// arrived behind the answer.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take())
            && self.reusable
            && conn.buf.is_empty()
        {
            home.pool.checkin_h1(home.key, conn);
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        self.home = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(e)))
    }
}

impl HttpBody for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => return this.fail(BodyError::Truncated),
                            Ok(_) => {}
                            Err(e) => return this.fail(e.into()),
                        }
                    }
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(n).freeze();
                    let left = left - n as u64;
                    this.framing = Framing::Length(left);
                    if left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => {
                                this.finish();
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return this.fail(e.into()),
                        }
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) => match decode_chunk(&mut conn.buf, state) {
                    Ok(Step::Need) => {
                        if conn.buf.len() > MAX_HEAD {
                            return this
                                .fail(BodyError::Protocol("chunk line or trailers too large"));
                        }
                        match ready!(conn.poll_fill(cx)) {
                            Ok(0) => return this.fail(BodyError::Truncated),
                            Ok(_) => {}
                            Err(e) => return this.fail(e.into()),
                        }
                    }
                    Ok(Step::Next(next)) => this.framing = Framing::Chunked(next),
                    Ok(Step::Data(data, next)) => {
                        this.framing = Framing::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::End(trailers)) => {
                        this.finish();
                        return match trailers {
                            Some(t) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                            None => Poll::Ready(None),
                        };
                    }
                    Err(e) => return this.fail(BodyError::Protocol(e)),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
