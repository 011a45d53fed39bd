//! A lean HTTP/1.1 client for requests whose body is whole: none, or
//! bytes the engine already holds (buffered for retries or mirrors).
//!
//! The request's task writes the request and reads the answer itself, and
//! the response body reads straight from the connection inside the task
//! that consumes it (the downstream connection's). Nothing is spawned and
//! nothing crosses a channel: with hyper's client, each request went to a
//! connection task through a channel, and each body chunk came back
//! through another. Requests that stream their body keep hyper's client,
//! which reads the answer while the body is still being written.
//!
//! What the upstream says is checked as strictly as hyper checks it, and
//! anything else is an error that drops the connection:
//! - the head: `httparse` (no obs-fold, no bare CR, at most
//!   [`MAX_HEADERS`] fields, at most [`MAX_HEAD`] bytes), a 3-digit
//!   status, HTTP/1.0 or 1.1; `1xx` answers other than `101` are skipped;
//! - the body's length (RFC 9112 §6.3): none after `HEAD`, `1xx`, `204`
//!   and `304`; `transfer-encoding` ending in `chunked` is decoded (CRLF
//!   line ends, hexadecimal sizes that fit 64 bits, extensions ignored,
//!   trailers kept), any other transfer coding reads to the end of the
//!   connection; otherwise `content-length`, whose values must all be the
//!   same decimal number; otherwise to the end of the connection;
//! - a connection is reused only after its answer ended exactly where its
//!   framing said, with nothing more received, and when the answer allows
//!   it (not `connection: close`; HTTP/1.0 only with `keep-alive`; never
//!   after `transfer-encoding` together with `content-length`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

mod body;
mod chunked;

use body::{Chunk, Framing};
pub(crate) use body::{H1Body, Home};
use chunked::{Step, decode_chunk};

/// The largest response head accepted (hyper's client allows about as
/// much before its buffer limit).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head or a trailer section
/// (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;
/// How much room each read asks for.
const READ_CHUNK: usize = 16 * 1024;
/// Bodies up to this size are copied behind the head and written with it
/// in one call; larger ones are written on their own.
const COALESCE: usize = 16 * 1024;

/// An upstream connection's transport: plain TCP (benchmark mode) or an
/// HBONE stream to the endpoint's ztunnel.
pub(crate) use ambit_hbone::Transport as Io;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The connection refused the first byte: the peer had closed it. The
    /// request may go on another connection.
    #[error("connection closed before the request was written")]
    Unsent,
    /// Writing or reading failed after the request (or part of it) left.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The answer broke HTTP/1.1.
    #[error("bad upstream response: {0}")]
    Protocol(&'static str),
    /// The connection closed before the answer's head was complete.
    #[error("connection closed before the response head")]
    Closed,
}

/// One upstream HTTP/1.1 connection: its transport and what was read
/// from it but not yet used.
pub(crate) struct H1Conn {
    io: Io,
    buf: BytesMut,
}

/// The request head on the wire, and whether the body is carried along.
pub(crate) struct Encoded {
    wire: Vec<u8>,
    /// Written after `wire` when it was too large to copy behind the head.
    body: Bytes,
    method: Method,
}

/// Encodes `head` with `body` for the wire: origin-form target, the
/// head's fields except `content-length` and `transfer-encoding`, and a
/// `content-length` for any body (or an empty one of a method that
/// expects content, as a user agent should, RFC 9110 §8.6).
pub(crate) fn encode(head: &http::request::Parts, body: Bytes) -> Encoded {
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut wire = spare_wire();
    wire.reserve(
        256 + if body.len() <= COALESCE {
            body.len()
        } else {
            0
        },
    );
    wire.extend_from_slice(head.method.as_str().as_bytes());
    wire.push(b' ');
    wire.extend_from_slice(target.as_bytes());
    wire.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        wire.extend_from_slice(name.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    let expects = matches!(head.method, Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || expects {
        wire.extend_from_slice(b"content-length: ");
        // Writing into a Vec cannot fail.
        let _ = write!(wire, "{}", body.len());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    let body = if body.len() <= COALESCE {
        wire.extend_from_slice(&body);
        Bytes::new()
    } else {
        body
    };
    Encoded {
        wire,
        body,
        method: head.method.clone(),
    }
}

/// The largest request buffer kept for reuse.
const MAX_SPARE_WIRE: usize = 16 * 1024;

thread_local! {
    /// Each thread's spare request buffer: [`encode`] takes it and an
    /// [`Encoded`] gives it back when dropped, so a worker encodes its
    /// requests into one allocation.
    static SPARE_WIRE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// This thread's spare request buffer, empty (a new one when it has none).
fn spare_wire() -> Vec<u8> {
    let mut wire = SPARE_WIRE.try_with(Cell::take).unwrap_or_default();
    wire.clear();
    wire
}

impl Drop for Encoded {
    fn drop(&mut self) {
        let wire = std::mem::take(&mut self.wire);
        if wire.capacity() <= MAX_SPARE_WIRE {
            // Gone only while the thread itself is ending.
            let _ = SPARE_WIRE.try_with(|spare| spare.set(wire));
        }
    }
}

/// A response head read from a connection, and how its body is framed.
pub(crate) struct Answer {
    /// The response, with an empty body.
    pub(crate) head: http::response::Parts,
    framing: Framing,
    reusable: bool,
}

impl H1Conn {
    /// A connection over `io`.
    pub(crate) fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry a request: nothing has
    /// arrived on it, not even its end (the peer closing it while idle).
    pub(crate) fn is_idle(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Sends `req` and reads the answer's head. [`SendError::Unsent`]
    /// when the connection took none of it.
    pub(crate) async fn send(&mut self, req: &Encoded) -> Result<Answer, SendError> {
        self.write_request(req).await?;
        self.read_head(&req.method).await
    }

    async fn write_request(&mut self, req: &Encoded) -> Result<(), SendError> {
        let mut wire = &req.wire[..];
        let mut first = true;
        while !wire.is_empty() {
            match self.io.write(wire).await {
                Ok(0) if first => return Err(SendError::Unsent),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => wire = &wire[n..],
                Err(e) if first && unsent(&e) => return Err(SendError::Unsent),
                Err(e) => return Err(e.into()),
            }
            first = false;
        }
        if !req.body.is_empty() {
            self.io.write_all(&req.body).await?;
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        // Reads into the spare capacity, which is never zeroed.
        let read = tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.buf);
        std::pin::pin!(read).poll(cx)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    async fn read_head(&mut self, method: &Method) -> Result<Answer, SendError> {
        loop {
            if let Some(answer) = parse_head(&mut self.buf, method)? {
                return Ok(answer);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(SendError::Protocol("response head too large"));
            }
            if self.fill().await? == 0 {
                return Err(SendError::Closed);
            }
        }
    }
}

/// A complete final response head from the buffer (interim `1xx`
/// answers are consumed and skipped), or `None` when more is needed.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Answer>, SendError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Uninitialised: nothing is written for fields that are absent.
        let mut fields =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(SendError::Protocol("too many header fields"));
            }
            Err(_) => return Err(SendError::Protocol("malformed response head")),
        };
        if len > MAX_HEAD {
            return Err(SendError::Protocol("response head too large"));
        }
        let code = resp.code.unwrap_or(0);
        let version = match resp.version {
            Some(0) => Version::HTTP_10,
            Some(1) => Version::HTTP_11,
            _ => return Err(SendError::Protocol("unsupported HTTP version")),
        };
        let status =
            StatusCode::from_u16(code).map_err(|_| SendError::Protocol("invalid status code"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(SendError::Protocol(
                    "101 to a request that asked no upgrade",
                ));
            }
            buf.advance(len);
            continue;
        }
        // Field positions, so the values can share the head's bytes.
        let mut spans = Spans::new();
        for f in resp.headers.iter() {
            let name = HeaderName::from_bytes(f.name.as_bytes())
                .map_err(|_| SendError::Protocol("invalid header name"))?;
            spans.push((name, span(buf, f.value)));
        }
        let bytes = buf.split_to(len).freeze();
        let mut headers =
            shared_headers(&bytes, spans).ok_or(SendError::Protocol("invalid header value"))?;
        let (framing, framing_ok) = framing(method, status, version, &headers)?;
        if matches!(framing, Framing::Chunked(_) | Framing::Close) {
            // The transfer coding (or the connection's end) frames the
            // body; a proxy must not pass a length on with it (RFC 9112
            // §6.3).
            headers.remove(CONTENT_LENGTH);
        }
        let reusable = framing_ok && framing != Framing::Close && keep_alive(version, &headers);
        let mut head = Response::new(()).into_parts().0;
        head.status = status;
        // The upstream's version concerns this hop only (its reuse is
        // decided above); the answer goes on in the client's protocol.
        head.version = Version::HTTP_11;
        head.headers = headers;
        return Ok(Some(Answer {
            head,
            framing,
            reusable,
        }));
    }
}

/// Where `part`, a slice of `buf`, sits in it.
pub(crate) fn span(buf: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let at = part.as_ptr() as usize - buf.as_ptr() as usize;
    at..at + part.len()
}

/// A parsed head's fields: their names and where their values sit in the
/// head (on the stack for a usual head).
pub(crate) type Spans = smallvec::SmallVec<[(HeaderName, std::ops::Range<usize>); 16]>;

/// Fields a parsed head's map has room for beyond its own.
const HEADROOM: usize = 4;

/// The fields whose values sit at `spans` of `head`, as a header map
/// sharing `head`'s bytes; `None` when a value is not a header value.
pub(crate) fn shared_headers(head: &Bytes, spans: Spans) -> Option<HeaderMap> {
    // Room for the fields the engine adds (`forwarded`, `host`, a route's
    // header operations) without growing the map, which would rehash it.
    let mut headers = spare_map(spans.len() + HEADROOM);
    for (name, at) in spans {
        headers.append(name, HeaderValue::from_maybe_shared(head.slice(at)).ok()?);
    }
    Some(headers)
}

/// The most header maps a thread keeps for reuse: a worker parses a burst
/// of heads (one per ready connection) before their answers give maps
/// back, so a few would not cover it (4 kept: 3.5 allocations per request
/// left of 5.9; 32: 2.0). About 40 KB per thread for usual heads, at
/// most about 100 KB (32 maps of [`MAX_SPARE_MAP`] fields).
const SPARE_MAPS: usize = 32;

/// The largest header map (in fields it has room for) kept for reuse.
const MAX_SPARE_MAP: usize = 32;

thread_local! {
    /// Each thread's spare header maps: a parsed head takes one
    /// ([`shared_headers`]) and the lean paths give it back once the head
    /// is on the wire ([`recycle`]), so a worker's requests and answers
    /// reuse a few maps instead of allocating two per head.
    static SPARE_MAP_LIST: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty header map with room for `fields`: one of this thread's
/// spares when it has one, else a new one.
fn spare_map(fields: usize) -> HeaderMap {
    let spare = SPARE_MAP_LIST
        .try_with(|list| list.try_borrow_mut().ok().and_then(|mut l| l.pop()))
        .ok()
        .flatten();
    match spare {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Gives a head's map, no longer needed, to this thread's spares:
/// emptied (its values, which share a head's bytes, are dropped now), and
/// only when the thread has room and the map is not unusually large.
pub(crate) fn recycle(mut map: HeaderMap) {
    if map.capacity() > MAX_SPARE_MAP {
        return;
    }
    map.clear();
    // Gone only while the thread itself is ending.
    let _ = SPARE_MAP_LIST.try_with(|list| {
        if let Ok(mut list) = list.try_borrow_mut()
            && list.len() < SPARE_MAPS
        {
            list.push(map);
        }
    });
}

/// What the client makes of `data` as a whole answer to `method`, with
/// no socket (for the fuzz target): `None` when incomplete, else the
/// status, the decoded body and whether the connection would be reused.
pub(crate) fn decode_whole(
    data: &[u8],
    method: &Method,
) -> Result<Option<(u16, Vec<u8>, bool)>, String> {
    let mut buf = BytesMut::from(data);
    let Some(answer) = parse_head(&mut buf, method).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let mut body = Vec::new();
    match answer.framing {
        Framing::Done => {}
        Framing::Length(n) => {
            let Ok(n) = usize::try_from(n) else {
                return Ok(None);
            };
            if buf.len() < n {
                return Ok(None);
            }
            body.extend_from_slice(&buf.split_to(n));
        }
        Framing::Close => body.extend_from_slice(&buf.split()),
        Framing::Chunked(mut state) => loop {
            match decode_chunk(&mut buf, state).map_err(str::to_owned)? {
                Step::Need => return Ok(None),
                Step::Next(next) => state = next,
                Step::Data(data, next) => {
                    body.extend_from_slice(&data);
                    state = next;
                }
                Step::End(_) => break,
            }
        },
    }
    Ok(Some((answer.head.status.as_u16(), body, answer.reusable)))
}

/// Whether a write error means the peer had closed the connection, so
/// nothing of the request reached it.
fn unsent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// How the body of a `status` answer to `method` is framed (RFC 9112
/// §6.3), and whether that framing leaves the connection reusable.
fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<(Framing, bool), SendError> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, true));
    }
    let has_cl = headers.contains_key(CONTENT_LENGTH);
    if headers.contains_key(TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(SendError::Protocol(
                "transfer-encoding in an HTTP/1.0 response",
            ));
        }
        let mut last = None;
        for v in headers.get_all(TRANSFER_ENCODING) {
            let v = v
                .to_str()
                .map_err(|_| SendError::Protocol("invalid transfer-encoding"))?;
            for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                last = Some(coding);
            }
        }
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case("chunked") => {
                // With a content-length too, the coding wins and the
                // connection is not trusted again.
                (Framing::Chunked(Chunk::Size), !has_cl)
            }
            _ => (Framing::Close, false),
        });
    }
    if has_cl {
        let mut len: Option<u64> = None;
        for v in headers.get_all(CONTENT_LENGTH) {
            for part in v.as_bytes().split(|b| *b == b',') {
                let n = parse_decimal(trim(part))
                    .ok_or(SendError::Protocol("invalid content-length"))?;
                if len.is_some_and(|l| l != n) {
                    return Err(SendError::Protocol("conflicting content-length values"));
                }
                len = Some(n);
            }
        }
        return Ok(match len {
            Some(0) => (Framing::Done, true),
            Some(n) => (Framing::Length(n), true),
            None => return Err(SendError::Protocol("invalid content-length")),
        });
    }
    Ok((Framing::Close, false))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(start, |i| i + 1);
    &b[start..end]
}

/// A length field's value: 1 to 19 ASCII digits (no sign, no space, no
/// list), so it fits 64 bits.
pub(crate) fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Whether an answer lets its connection carry another request (RFC 9112
/// §9.3: HTTP/1.1 persists unless `close`; HTTP/1.0 only with
/// `keep-alive`).
pub(crate) fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| has_token(headers, token);
    match version {
        Version::HTTP_11 => !has("close"),
        Version::HTTP_10 => has("keep-alive") && !has("close"),
        _ => false,
    }
}

/// Whether a `connection` field of `headers` lists `token`.
pub(crate) fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(http::header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_maps_come_back_empty_with_their_room() {
        // A map with room for 20 fields, given back with a field in it.
        let mut big = HeaderMap::with_capacity(20);
        big.insert(http::header::HOST, HeaderValue::from_static("stale"));
        let room = big.capacity();
        assert!((20..=MAX_SPARE_MAP).contains(&room));
        // Drain this thread's spares first, so the next take is `big`.
        while SPARE_MAP_LIST.with(|l| l.borrow_mut().pop()).is_some() {}
        recycle(big);
        let head = Bytes::from_static(b"GET / HTTP/1.1\r\nx-a: 1\r\n\r\n");
        let mut spans = Spans::new();
        spans.push((HeaderName::from_static("x-a"), 21..22));
        let map = shared_headers(&head, spans).expect("headers");
        // The spare, not a new map (which would have room for 5 only)...
        assert_eq!(map.capacity(), room);
        // ...holding only this head's field.
        assert_eq!(map.len(), 1);
        assert_eq!(map["x-a"], "1");
        assert!(!map.contains_key(http::header::HOST));
        // Too large a map is not kept; neither is a fifth spare.
        recycle(HeaderMap::with_capacity(4 * MAX_SPARE_MAP));
        for _ in 0..SPARE_MAPS + 2 {
            recycle(HeaderMap::with_capacity(8));
        }
        SPARE_MAP_LIST.with(|l| {
            let l = l.borrow();
            assert_eq!(l.len(), SPARE_MAPS);
            assert!(
                l.iter()
                    .all(|m| m.capacity() <= MAX_SPARE_MAP && m.is_empty())
            );
        });
    }

    fn head(raw: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        for line in raw.lines().filter(|l| !l.is_empty()) {
            if let Some((n, v)) = line.split_once(':')
                && let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(n.trim().as_bytes()),
                    HeaderValue::from_str(v.trim()),
                )
            {
                m.append(n, v);
            }
        }
        m
    }

    #[test]
    fn framing_rules() {
        let get = Method::GET;
        let ok = StatusCode::OK;
        let v11 = Version::HTTP_11;
        let f = |m: &Method, s: StatusCode, v: Version, h: &str| {
            framing(m, s, v, &head(h)).map_err(|e| e.to_string())
        };
        assert_eq!(
            f(&get, ok, v11, "content-length: 5"),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            f(&get, ok, v11, "content-length: 5, 5"),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            f(&get, ok, v11, "content-length: 5\ncontent-length: 5"),
            Ok((Framing::Length(5), true))
        );
        assert!(f(&get, ok, v11, "content-length: 5\ncontent-length: 6").is_err());
        assert!(f(&get, ok, v11, "content-length: +5").is_err());
        assert!(f(&get, ok, v11, "content-length: 0x5").is_err());
        assert!(f(&get, ok, v11, "content-length: 99999999999999999999").is_err());
        assert_eq!(
            f(&get, ok, v11, "content-length: 0"),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            f(&get, ok, v11, "transfer-encoding: chunked"),
            Ok((Framing::Chunked(Chunk::Size), true))
        );
        assert_eq!(
            f(&get, ok, v11, "transfer-encoding: gzip, Chunked"),
            Ok((Framing::Chunked(Chunk::Size), true))
        );
        assert_eq!(
            f(
                &get,
                ok,
                v11,
                "transfer-encoding: chunked\ncontent-length: 5"
            ),
            Ok((Framing::Chunked(Chunk::Size), false)),
            "both: chunked wins, the connection is not reused"
        );
        assert_eq!(
            f(&get, ok, v11, "transfer-encoding: chunked, gzip"),
            Ok((Framing::Close, false))
        );
        assert!(f(&get, ok, Version::HTTP_10, "transfer-encoding: chunked").is_err());
        assert_eq!(f(&get, ok, v11, ""), Ok((Framing::Close, false)));
        assert_eq!(
            f(&Method::HEAD, ok, v11, "content-length: 5"),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            f(
                &get,
                StatusCode::NO_CONTENT,
                v11,
                "transfer-encoding: chunked"
            ),
            Ok((Framing::Done, true))
        );
        assert_eq!(
            f(&get, StatusCode::NOT_MODIFIED, v11, "content-length: 5"),
            Ok((Framing::Done, true))
        );
    }

    #[test]
    fn encoding() {
        let req = http::Request::builder()
            .method("POST")
            .uri("/a?b=c")
            .header("host", "svc:80")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .header("x-k", "v")
            .body(())
            .expect("request");
        let (parts, ()) = req.into_parts();
        let e = encode(&parts, Bytes::from_static(b"abc"));
        assert_eq!(
            String::from_utf8_lossy(&e.wire),
            "POST /a?b=c HTTP/1.1\r\nhost: svc:80\r\nx-k: v\r\ncontent-length: 3\r\n\r\nabc"
        );
        let (get, ()) = http::Request::builder()
            .uri("/x")
            .body(())
            .expect("request")
            .into_parts();
        assert_eq!(
            String::from_utf8_lossy(&encode(&get, Bytes::new()).wire),
            "GET /x HTTP/1.1\r\n\r\n"
        );
        let (put, ()) = http::Request::builder()
            .method("PUT")
            .uri("/x")
            .body(())
            .expect("request")
            .into_parts();
        assert_eq!(
            String::from_utf8_lossy(&encode(&put, Bytes::new()).wire),
            "PUT /x HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        let big = Bytes::from(vec![b'x'; COALESCE + 1]);
        let e = encode(&put, big.clone());
        assert_eq!(e.body, big, "a large body is written on its own");
        assert!(String::from_utf8_lossy(&e.wire).ends_with("content-length: 16385\r\n\r\n"));
    }

    /// A thread encodes into the buffer its last request gave back, which
    /// holds nothing of that request; an oversized buffer is not kept.
    #[test]
    fn encoding_reuses_the_threads_buffer() {
        // The first request asks for more room than the second, so the
        // second needs no reallocation, whatever the allocator does.
        let (long, ()) = http::Request::builder()
            .method("PUT")
            .uri("/long/path/of/the/first/request")
            .header("x-first", "1")
            .body(())
            .expect("request")
            .into_parts();
        let (put, ()) = http::Request::builder()
            .method("PUT")
            .uri("/b")
            .body(())
            .expect("request")
            .into_parts();
        let first = encode(&long, Bytes::from_static(b"a longer body"));
        let at = first.wire.as_ptr();
        drop(first);
        let second = encode(&put, Bytes::from_static(b"hi"));
        assert_eq!(second.wire.as_ptr(), at, "the spare buffer is reused");
        assert_eq!(
            String::from_utf8_lossy(&second.wire),
            "PUT /b HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi"
        );
        drop(second);
        let huge = encode(&put, Bytes::from(vec![b'y'; COALESCE]));
        assert!(huge.wire.capacity() > MAX_SPARE_WIRE);
        drop(huge);
        assert!(
            SPARE_WIRE.with(Cell::take).capacity() <= MAX_SPARE_WIRE,
            "an oversized buffer is dropped, not kept"
        );
    }

    #[test]
    fn keep_alive_rules() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            if let Ok(v) = v.parse() {
                m.insert(http::header::CONNECTION, v);
            }
            m
        };
        assert!(keep_alive(Version::HTTP_11, &HeaderMap::new()));
        assert!(!keep_alive(Version::HTTP_11, &h("close")));
        assert!(!keep_alive(Version::HTTP_11, &h("Upgrade, Close")));
        assert!(keep_alive(Version::HTTP_11, &h("keep-alive")));
        assert!(!keep_alive(Version::HTTP_10, &HeaderMap::new()));
        assert!(keep_alive(Version::HTTP_10, &h("Keep-Alive")));
    }
}
