//! The waypoint's lean HTTP/1.1 loop, driven with raw bytes through an
//! HBONE tunnel: pipelining, `connection: close`, `HEAD`, chunked answers,
//! and the hand-over to hyper at the first request the loop does not take
//! (a body, `expect`, HTTP/1.0, a malformed or oversized head); the idle
//! timeout of HTTP and TCP streams.

mod common;

use std::time::Duration;

use ambit_hbone::HboneStream;
use ambit_l7proxy::WaypointConfig;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: http}
  routes:
  - name: flaky
    match: [{path: {prefix: /flaky}}]
    backends: [{subset: {version: v1}}]
    retries: {attempts: 2, retryOn: [5xx]}
  - name: v1
    backends: [{subset: {version: v1}}]
"#;

/// One answer read off the wire.
#[derive(Debug)]
struct Answer {
    version: u8,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.1 client over one tunnel.
struct Raw {
    s: HboneStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(mesh: &Mesh, vip: &str) -> Self {
        Self {
            s: mesh.tunnel(sleep_id(), vip).await,
            buf: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
        self.s.flush().await.expect("flush");
    }

    async fn more(&mut self) -> bool {
        let mut tmp = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut tmp))
            .await
            .expect("the waypoint answers within 5 s")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// Reads one answer to a request (`head`: a HEAD request's answer has
    /// no body).
    async fn answer(&mut self, head: bool) -> Answer {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).expect("a valid answer head")
            {
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let mut a = Answer {
                    version: r.version.expect("version"),
                    status: r.code.expect("status"),
                    headers,
                    body: Vec::new(),
                };
                self.buf.drain(..n);
                if a.status == 100 {
                    return a;
                }
                if !head {
                    a.body = self.body(&a).await;
                }
                return a;
            }
            assert!(self.more().await, "closed before an answer head");
        }
    }

    async fn body(&mut self, a: &Answer) -> Vec<u8> {
        if let Some(len) = a.header("content-length") {
            let len: usize = len.parse().expect("length");
            while self.buf.len() < len {
                assert!(self.more().await, "closed inside a body");
            }
            return self.buf.drain(..len).collect();
        }
        if a.header("transfer-encoding") == Some("chunked") {
            let mut out = Vec::new();
            loop {
                let line = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.more().await, "closed inside a chunk size");
                };
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.buf[..line]).expect("size"),
                    16,
                )
                .expect("hex size");
                self.buf.drain(..line + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.more().await, "closed inside a chunk");
                }
                out.extend(self.buf.drain(..size));
                if size == 0 {
                    // The final CRLF (no trailers are expected).
                    self.buf.drain(..2);
                    return out;
                }
                self.buf.drain(..2);
            }
        }
        while self.more().await {}
        std::mem::take(&mut self.buf)
    }

    /// Whether the waypoint closed the tunnel (after what was read).
    async fn closed(&mut self) -> bool {
        !self.more().await
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: reviews:9080\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = Raw::open(&mesh, REVIEWS_VIP).await;
    c.write(format!("{}{}{}", get("/a"), get("/b"), get("/c")).as_bytes())
        .await;
    for path in ["/a", "/b", "/c"] {
        let a = c.answer(false).await;
        assert_eq!((a.version, a.status), (1, 200), "{a:?}");
        assert_eq!(a.header("x-path"), Some(path));
        assert_eq!(a.body, b"v1");
        assert_eq!(a.header("content-length"), Some("2"));
        assert!(a.header("date").is_some(), "{a:?}");
        assert!(a.header("transfer-encoding").is_none());
    }
}

/// The body the pod received for `path`.
fn pod_body(mesh: &Mesh, path: &str) -> Option<String> {
    mesh.pod(0)
        .bodies
        .lock()
        .expect("lock")
        .iter()
        .find(|(p, _)| p == path)
        .and_then(|(_, b)| b.as_ref())
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_are_read_whole_and_retriable() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = Raw::open(&mesh, REVIEWS_VIP).await;
    // A body, and a request pipelined behind it in the same write.
    c.write(
        format!(
            "POST /upload HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 5\r\n\r\nhello{}",
            get("/after")
        )
        .as_bytes(),
    )
    .await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("x-path")), (200, Some("/upload")));
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("x-path")), (200, Some("/after")));
    // A body arriving in pieces after its head.
    c.write(b"PUT /pieces HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 10\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.write(b"01234").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.write(b"56789").await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("x-path")), (200, Some("/pieces")));
    // Read whole, the body can be sent again: `/flaky` fails once and the
    // route retries 5xx.
    c.write(b"POST /flaky/body HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 5\r\n\r\nagain")
        .await;
    let a = c.answer(false).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(pod_body(&mesh, "/upload").as_deref(), Some("hello"));
    assert_eq!(pod_body(&mesh, "/after").as_deref(), Some(""));
    assert_eq!(pod_body(&mesh, "/pieces").as_deref(), Some("0123456789"));
    let flaky: Vec<_> = mesh
        .pod(0)
        .bodies
        .lock()
        .expect("lock")
        .iter()
        .filter(|(p, _)| p == "/flaky/body")
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(flaky.len(), 2, "sent twice: {flaky:?}");
    assert!(flaky.iter().all(|b| b.as_deref() == Some(&b"again"[..])));

    // A client that goes away inside a body sends nothing upstream.
    let mut c = Raw::open(&mesh, REVIEWS_VIP).await;
    c.write(b"POST /cut HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 100\r\n\r\nonly-part")
        .await;
    c.s.shutdown().await.expect("shutdown");
    assert!(c.closed().await);
    assert_eq!(pod_body(&mesh, "/cut"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_bodies_hand_the_connection_to_hyper() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = Raw::open(&mesh, REVIEWS_VIP).await;
    c.write(get("/first").as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 200);
    // `expect: 100-continue` (hyper answers 100 when the body is read).
    c.write(b"PUT /expect HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
        .await;
    assert_eq!(c.answer(false).await.status, 100);
    c.write(b"abc").await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("x-path")), (200, Some("/expect")));
    // A chunked body, with a request pipelined behind it.
    c.write(
        format!(
            "POST /chunked HTTP/1.1\r\nhost: reviews:9080\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n{}",
            get("/after")
        )
        .as_bytes(),
    )
    .await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("x-path")), (200, Some("/chunked")));
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("x-path")), (200, Some("/after")));
    // A body over the loop's limit, on a new connection.
    let mut c = Raw::open(&mesh, REVIEWS_VIP).await;
    let big = "x".repeat(100 * 1024);
    c.write(
        format!(
            "POST /big-up HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: {}\r\n\r\n{big}",
            big.len()
        )
        .as_bytes(),
    )
    .await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("x-path")), (200, Some("/big-up")));
    assert_eq!(pod_body(&mesh, "/expect").as_deref(), Some("abc"));
    assert_eq!(pod_body(&mesh, "/chunked").as_deref(), Some("abcde"));
    assert_eq!(
        pod_body(&mesh, "/big-up").map(|b| b.len()),
        Some(100 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_and_http10_end_the_connection() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = Raw::open(&mesh, REVIEWS_VIP).await;
    c.write(b"GET /bye HTTP/1.1\r\nhost: reviews:9080\r\nconnection: close\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("connection")), (200, Some("close")));
    assert!(c.closed().await, "the waypoint closes after the answer");

    let mut c = Raw::open(&mesh, REVIEWS_VIP).await;
    c.write(b"GET /old HTTP/1.0\r\nhost: reviews:9080\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.header("x-path")), (200, Some("/old")));
    assert!(c.closed().await, "HTTP/1.0 without keep-alive closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_chunked_answers_keep_the_framing() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = Raw::open(&mesh, RAW_VIP).await;
    c.write(b"HEAD /raw/head HTTP/1.1\r\nhost: reviews:9090\r\n\r\n")
        .await;
    let a = c.answer(true).await;
    assert_eq!((a.status, a.header("content-length")), (200, Some("5")));
    c.write(b"GET /raw/chunked HTTP/1.1\r\nhost: reviews:9090\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{a:?}");
    assert!(a.header("content-length").is_none());
    assert_eq!(a.body, b"hello world");
    c.write(b"GET /raw/ok HTTP/1.1\r\nhost: reviews:9090\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"ok"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_oversized_heads_get_hyper_errors() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = Raw::open(&mesh, REVIEWS_VIP).await;
    c.write(get("/fine").as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 200);
    c.write(b"GET /bad HTTP/1.1\r\nhost: reviews:9080\r\nbad header\r\n\r\n")
        .await;
    assert_eq!(c.answer(false).await.status, 400);

    let mut c = Raw::open(&mesh, REVIEWS_VIP).await;
    let big = format!(
        "GET /big HTTP/1.1\r\nhost: reviews:9080\r\nx-big: {}\r\n\r\n",
        "b".repeat(600 * 1024)
    );
    c.write(big.as_bytes()).await;
    assert_eq!(c.answer(false).await.status, 431);

    // Framing the loop does not take: both lengths, a non-zero length
    // with a transfer coding. None reaches the pod as a bodiless request
    // followed by a second one.
    let mut c = Raw::open(&mesh, REVIEWS_VIP).await;
    c.write(b"POST /both HTTP/1.1\r\nhost: reviews:9080\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    assert!(a.status == 400 || a.status == 200, "{a:?}");
    let seen: Vec<String> = mesh
        .pod(0)
        .requests
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert!(
        seen.iter().all(|p| p == "/fine" || p == "/both"),
        "only whole requests reach the pod: {seen:?}"
    );
}

/// Bytes every 150 ms keep a stream open past a 400 ms idle timeout, HTTP
/// and opaque TCP alike; once they stop, the waypoint closes it, no sooner
/// than the timeout and well within a few.
#[tokio::test]
async fn streams_idle_past_the_idle_timeout_are_closed() {
    const IDLE_ROUTES: &str = r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http}
  routes:
  - name: v1
    backends: [{subset: {version: v1}}]
- host: echo.default.svc.cluster.local
  ports: {7000: tcp}
"#;
    let timeout = Duration::from_millis(400);
    let mut cfg = WaypointConfig::new(waypoint_id());
    cfg.idle_timeout = timeout;
    let mesh = Mesh::start_config(IDLE_ROUTES, cfg).await;
    let pause = || tokio::time::sleep(Duration::from_millis(150));

    // HTTP keep-alive: ten requests 150 ms apart on one connection.
    let mut http = Raw::open(&mesh, REVIEWS_VIP).await;
    for i in 0..10 {
        pause().await;
        http.write(b"GET /idle HTTP/1.1\r\nhost: reviews\r\n\r\n")
            .await;
        assert_eq!(http.answer(false).await.status, 200, "request {i}");
    }
    let quiet = tokio::time::Instant::now();
    assert!(!http.more().await, "the idle connection was closed");
    assert!(http.buf.is_empty(), "nothing but the close");
    let took = quiet.elapsed();
    assert!(took >= timeout, "closed {took:?} after the last answer");

    // Opaque TCP: a byte echoed every 150 ms, then silence.
    let mut tcp = mesh.tunnel(sleep_id(), ECHO_VIP).await;
    let mut one = [0u8; 1];
    for i in 0..10u8 {
        pause().await;
        tcp.write_all(&[i]).await.expect("write");
        tcp.flush().await.expect("flush");
        tcp.read_exact(&mut one).await.expect("echo");
        assert_eq!(one[0], i);
    }
    let quiet = tokio::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut one))
        .await
        .expect("the idle stream was closed within 5 s");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    let took = quiet.elapsed();
    assert!(took >= timeout, "closed {took:?} after the last echo");
    // The stream the timeout ended is counted closed, as well as opened.
    let text = mesh.waypoint.metrics().encode();
    let count = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains("echo.default"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(count("istio_tcp_connections_opened_total"), 1.0, "{text}");
    assert_eq!(count("istio_tcp_connections_closed_total"), 1.0, "{text}");
}
