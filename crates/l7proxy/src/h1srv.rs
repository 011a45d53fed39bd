//! A lean HTTP/1.1 server loop for the requests that make up most of a
//! waypoint's traffic, handing everything else to hyper.
//!
//! The loop parses a request head from its buffer and serves it in the
//! connection's own task: no body channel, no dispatcher, and the answer's
//! head and (small) body leave in one write. It takes only a strict subset
//! of HTTP/1.1, where there is nothing to interpret about framing:
//! - `HTTP/1.1`, a method other than `CONNECT`, an origin-form target;
//! - no transfer coding: no `transfer-encoding`, and at most one
//!   `content-length`, of at most [`MAX_BODY`] bytes (the body is read
//!   whole before the request is served, as nginx buffers request bodies);
//! - no `expect`, `upgrade` or `te`, and `connection` only `keep-alive`
//!   or `close`;
//! - a head `httparse` accepts with at most [`MAX_HEADERS`] fields in at
//!   most [`MAX_HEAD`] bytes.
//!
//! At the first request outside that subset (a body, the HTTP/2 preface,
//! HTTP/1.0, anything malformed), nothing of it has been answered, and the
//! connection with the bytes read so far goes to hyper, which serves it
//! from that request on, errors included. So every request the loop
//! serves is one hyper would have parsed the same way, and the framing
//! decisions that request smuggling plays on are all hyper's.

use std::cell::RefCell;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderName, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Body;
use crate::h1::{Spans, has_token, parse_decimal, shared_headers, span};
use crate::sniff::H2_PREFACE;

/// The largest request head the loop parses (larger ones go to hyper).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields the loop parses (hyper's default limit).
pub(crate) const MAX_HEADERS: usize = 100;
/// The largest request body the loop reads (larger ones go to hyper,
/// which streams them).
pub(crate) const MAX_BODY: u64 = 64 * 1024;
/// Response bodies up to this size are copied behind the head.
const COALESCE: usize = 16 * 1024;

/// What the loop does next.
// Returned once per request and taken apart at once: boxing the request
// would cost an allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Next {
    /// Serve this request, with its whole body.
    Request(Request<Bytes>, Ask),
    /// Let hyper serve the connection from the buffered bytes on.
    Handover,
    /// The client closed between requests, or reading failed.
    Closed,
}

/// What the request asked of the answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    head: bool,
    close: bool,
}

/// One downstream connection served by the loop.
pub(crate) struct Downstream<IO> {
    io: IO,
    buf: BytesMut,
    out: Vec<u8>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Downstream<IO> {
    /// The loop over `io`.
    pub(crate) fn new(io: IO) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            out: Vec::new(),
        }
    }

    /// The transport and what was read but not served, for hyper.
    pub(crate) fn into_parts(self) -> (Bytes, IO) {
        (self.buf.freeze(), self.io)
    }

    /// The next request the loop serves, or why it stops.
    pub(crate) async fn next(&mut self) -> Next {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(H2_PREFACE.len());
                if self.buf[..n] == H2_PREFACE[..n] {
                    // The HTTP/2 preface (or its start): hyper's.
                    if n == H2_PREFACE.len() {
                        return Next::Handover;
                    }
                } else {
                    match parse(&mut self.buf) {
                        Parsed::Request(req, ask, len) => {
                            return match self.body(len).await {
                                Some(body) => Next::Request(req.map(|()| body), ask),
                                // Cut inside the body: nothing to answer.
                                None => Next::Closed,
                            };
                        }
                        Parsed::Other => return Next::Handover,
                        Parsed::Partial if self.buf.len() > MAX_HEAD => return Next::Handover,
                        Parsed::Partial => {}
                    }
                }
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(8 * 1024);
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() => return Next::Closed,
                // Cut inside a head: hyper answers as it would have.
                Ok(0) => return Next::Handover,
                Ok(_) => {}
                Err(_) => return Next::Closed,
            }
        }
    }

    /// The request body of `len` bytes behind the head, read whole;
    /// `None` when the connection ends (or fails) first.
    async fn body(&mut self, len: usize) -> Option<Bytes> {
        if len == 0 {
            return Some(Bytes::new());
        }
        while self.buf.len() < len {
            self.buf.reserve(len - self.buf.len());
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        Some(self.buf.split_to(len).freeze())
    }

    /// Writes `resp` as the answer to a request that asked `ask`; whether
    /// the connection carries another request. An error (writing, or the
    /// body failing) ends the connection, cutting the answer short as
    /// hyper would.
    pub(crate) async fn respond(&mut self, ask: Ask, resp: Response<Body>) -> io::Result<bool> {
        let (parts, mut body) = resp.into_parts();
        let status = parts.status;
        let mut headers = parts.headers;
        let close = ask.close || has_token(&headers, "close");
        let bodiless = ask.head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        // The first frame: often the whole body, written with the head.
        let mut first = None;
        let mut ended = body.is_end_stream();
        if !bodiless && !ended {
            match body.frame().await {
                Some(Ok(f)) => first = f.into_data().ok(),
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => {}
            }
            ended = body.is_end_stream();
        }
        let length = if ended {
            Some(first.as_ref().map_or(0, |b| b.len() as u64))
        } else {
            body.size_hint()
                .exact()
                .map(|rest| rest + first.as_ref().map_or(0, |b| b.len() as u64))
        };
        self.out.clear();
        let out = &mut self.out;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let chunked = !bodiless && length.is_none();
        // The framing is this hop's: computed here, never passed on.
        headers.remove(TRANSFER_ENCODING);
        if !bodiless {
            headers.remove(CONTENT_LENGTH);
        }
        for (name, value) in &headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !headers.contains_key(DATE) {
            out.extend_from_slice(b"date: ");
            with_date(|d| out.extend_from_slice(d));
            out.extend_from_slice(b"\r\n");
        }
        if close && !has_token(&headers, "close") {
            out.extend_from_slice(b"connection: close\r\n");
        }
        if !bodiless {
            match length {
                Some(n) => {
                    out.extend_from_slice(b"content-length: ");
                    // Writing into a Vec cannot fail.
                    let _ = write!(out, "{n}");
                    out.extend_from_slice(b"\r\n");
                }
                None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            }
        }
        out.extend_from_slice(b"\r\n");
        // The head is in `out`: its map serves the next one.
        crate::h1::recycle(headers);
        if bodiless {
            self.io.write_all(&self.out).await?;
            self.io.flush().await?;
            return Ok(!close);
        }
        let mut pending = first;
        if let Some(data) = pending.take_if(|d| d.len() <= COALESCE) {
            frame_into(&mut self.out, &data, chunked);
        }
        self.io.write_all(&self.out).await?;
        if let Some(data) = pending {
            self.write_data(data, chunked).await?;
        }
        while !ended {
            match body.frame().await {
                Some(Ok(f)) => {
                    // Trailers are dropped: no request the loop serves
                    // asked for them (`te`).
                    if let Ok(data) = f.into_data() {
                        self.write_data(data, chunked).await?;
                    }
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => ended = true,
            }
        }
        if chunked {
            self.io.write_all(b"0\r\n\r\n").await?;
        }
        self.io.flush().await?;
        Ok(!close)
    }

    async fn write_data(&mut self, data: Bytes, chunked: bool) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if chunked {
            self.io
                .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            self.io.write_all(&data).await?;
            self.io.write_all(b"\r\n").await
        } else {
            self.io.write_all(&data).await
        }
    }

    /// Ends the connection after an answer that closes it.
    pub(crate) async fn close(mut self) {
        let _ = self.io.shutdown().await;
    }
}

/// `data` behind the head, as a chunk when `chunked`.
fn frame_into(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// What the buffer holds.
#[allow(clippy::large_enum_variant)] // as `Next`
enum Parsed {
    /// A request the loop serves (its head consumed), and the length of
    /// its body.
    Request(Request<()>, Ask, usize),
    /// A head that is not complete yet.
    Partial,
    /// Anything else: hyper's.
    Other,
}

/// Parses and takes a request head from `buf`, if it is one the loop
/// serves.
fn parse(buf: &mut BytesMut) -> Parsed {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if req.version != Some(1) {
        return Parsed::Other;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT || !path.starts_with('/') {
        return Parsed::Other;
    }
    let mut close = false;
    let mut length = None;
    let mut spans = Spans::new();
    for f in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(f.name.as_bytes()) else {
            return Parsed::Other;
        };
        if name == TRANSFER_ENCODING
            || name == http::header::EXPECT
            || name == http::header::UPGRADE
            || name == http::header::TE
        {
            return Parsed::Other;
        }
        if name == CONTENT_LENGTH {
            match parse_decimal(f.value) {
                // One length only.
                Some(n) if n <= MAX_BODY && length.is_none() => length = Some(n as usize),
                _ => return Parsed::Other,
            }
        }
        if name == CONNECTION {
            for token in f.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return Parsed::Other;
                }
            }
        }
        spans.push((name, span(buf, f.value)));
    }
    let path = span(buf, path.as_bytes());
    let head = buf.split_to(len).freeze();
    let (Ok(uri), Some(headers)) = (
        Uri::from_maybe_shared(head.slice(path)),
        shared_headers(&head, spans),
    ) else {
        restore(buf, &head);
        return Parsed::Other;
    };
    let ask = Ask {
        head: method == Method::HEAD,
        close,
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Parsed::Request(request, ask, length.unwrap_or(0))
}

/// What the loop makes of `data` (for the fuzz target): the request it
/// would serve, the bytes its head took and its body's length, or `Err`
/// with whether the buffer was left exactly as it came (it must be, for
/// hyper).
pub(crate) fn parse_whole(data: &[u8]) -> Result<(Request<()>, usize, usize), bool> {
    let mut buf = BytesMut::from(data);
    match parse(&mut buf) {
        Parsed::Request(req, _, len) => Ok((req, data.len() - buf.len(), len)),
        Parsed::Partial | Parsed::Other => Err(buf[..] == *data),
    }
}

/// Puts a head taken from `buf` back in front of it, for hyper.
fn restore(buf: &mut BytesMut, head: &[u8]) {
    let mut all = BytesMut::with_capacity(head.len() + buf.len());
    all.extend_from_slice(head);
    all.extend_from_slice(buf);
    *buf = all;
}

/// The `date` value for now, formatted at most once a second per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        f(d.1.as_bytes());
    });
}
