//! The HTTP side of the local mesh: a small app server that pods behind
//! the waypoint run, and a client that sends requests from a pod over one
//! keep-alive connection (HTTP/1.1) or one HTTP/2 connection (prior
//! knowledge), streaming request bodies without holding them in memory.
//!
//! The app answers every request with `200` and a body
//! `<name> <METHOD> <path> <request-body-bytes>`, and an `x-served-by`
//! header, except (HTTP/1.1, or HTTP/2 with prior knowledge):
//! - `x-fail-on: <name>` naming this app → `503` (an endpoint failing,
//!   for retries);
//! - a path starting with `/hang` → no answer until the client gives up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_netns::NsTask;
use ambit_netns::harness::Pod;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::serve::serve_in_pod;

/// Header naming the app that answered.
pub const SERVED_BY: &str = "x-served-by";

/// Serves HTTP/1.1 on `pod`'s address, `port`, as `name`.
pub fn serve(pod: &Pod, port: u16, name: String) -> anyhow::Result<NsTask<()>> {
    let name = Arc::new(name);
    serve_in_pod(pod, port, move |s, _| {
        let name = name.clone();
        async move {
            let svc = hyper::service::service_fn(move |req| answer(name.clone(), req));
            if is_h2c(&s).await {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            }
        }
    })
}

/// Whether the client opened with HTTP/2's connection preface (prior
/// knowledge, as a waypoint's h2c upstream does), peeked, not consumed.
async fn is_h2c(s: &tokio::net::TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut buf = [0u8; 14];
    for _ in 0..50 {
        let Ok(n) = s.peek(&mut buf).await else {
            return false;
        };
        if n == 0 || !PREFACE.starts_with(&buf[..n]) {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

async fn answer(
    name: Arc<String>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let fail = req
        .headers()
        .get("x-fail-on")
        .is_some_and(|v| v.as_bytes() == name.as_bytes());
    if path.starts_with("/hang") {
        std::future::pending::<()>().await;
    }
    // Count the body as it streams past; nothing is kept.
    let mut body = req.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => received += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let status = if fail { 503 } else { 200 };
    let text = format!("{name} {method} {path} {received}\n");
    let mut r = hyper::Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&name) {
        r.headers_mut().insert(SERVED_BY, v);
    }
    Ok(r)
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Req {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Bytes of request body to stream (zeros), 0 for none.
    pub body_len: u64,
}

impl Req {
    /// A GET of `path`.
    pub fn get(path: &str) -> Self {
        Self {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body_len: 0,
        }
    }

    /// The same request with `method`.
    pub fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }

    /// The same request with a header added.
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    /// The same request with a streamed body of `n` bytes.
    pub fn body(mut self, n: u64) -> Self {
        self.body_len = n;
        self
    }
}

/// One response, or the failure to get one.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code; 0 when the request failed (see `error`).
    pub status: u16,
    /// The `x-served-by` header.
    pub served_by: Option<String>,
    /// The body, as text.
    pub body: String,
    /// The response headers (lower-case names), in order.
    pub headers: Vec<(String, String)>,
    /// Time to the whole response.
    pub elapsed: Duration,
    /// Why there is no response.
    pub error: Option<String>,
}

/// Which HTTP version the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1, one keep-alive connection.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), one connection.
    Http2,
}

type ReqBody = BoxBody<Bytes, Infallible>;

fn body_of(len: u64) -> ReqBody {
    if len == 0 {
        return Empty::new().boxed();
    }
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![0u8; CHUNK]);
    let stream = futures_util::stream::unfold(len, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64);
            // `n` ≤ CHUNK, so the cast is exact.
            let frame = Frame::data(chunk.slice(..n as usize));
            Some((Ok::<_, Infallible>(frame), left - n))
        }
    });
    StreamBody::new(stream).boxed()
}

/// Sends `reqs` in order from `pod` to `to` over one connection (a new
/// connection replaces a closed one), each under `timeout`.
pub fn send(
    pod: &Pod,
    to: SocketAddr,
    version: Version,
    reqs: Vec<Req>,
    timeout: Duration,
) -> anyhow::Result<Vec<Resp>> {
    let task = pod.spawn_async(move || async move {
        let mut out = Vec::with_capacity(reqs.len());
        let mut conn: Option<Sender> = None;
        for r in reqs {
            let t = Instant::now();
            let res = tokio::time::timeout(timeout, async {
                if conn.as_ref().is_none_or(Sender::closed) {
                    conn = Some(Sender::connect(to, version).await?);
                }
                let sender = conn.as_mut().context("no connection")?;
                sender.send(&r, to).await
            })
            .await;
            let resp = match res {
                Ok(Ok((status, served_by, body, headers))) => Resp {
                    status,
                    served_by,
                    body,
                    headers,
                    elapsed: t.elapsed(),
                    error: None,
                },
                Ok(Err(e)) => {
                    conn = None;
                    failed(t, format!("{e:#}"))
                }
                Err(_) => {
                    conn = None;
                    failed(t, format!("no response within {timeout:?}"))
                }
            };
            out.push(resp);
        }
        out
    })?;
    Ok(task.join())
}

fn failed(t: Instant, error: String) -> Resp {
    Resp {
        status: 0,
        served_by: None,
        body: String::new(),
        headers: Vec::new(),
        elapsed: t.elapsed(),
        error: Some(error),
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

impl Sender {
    async fn connect(to: SocketAddr, version: Version) -> anyhow::Result<Self> {
        let s = tokio::net::TcpStream::connect(to)
            .await
            .with_context(|| format!("connecting to {to}"))?;
        s.set_nodelay(true)?;
        let io = TokioIo::new(s);
        Ok(match version {
            Version::Http1 => {
                let (tx, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Self::H1(tx)
            }
            Version::Http2 => {
                let (tx, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Self::H2(tx)
            }
        })
    }

    fn closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }

    async fn send(
        &mut self,
        r: &Req,
        to: SocketAddr,
    ) -> anyhow::Result<(u16, Option<String>, String, Vec<(String, String)>)> {
        let mut b = hyper::Request::builder().method(r.method.as_str());
        b = match self {
            Self::H1(_) => b.uri(r.path.as_str()).header("host", to.to_string()),
            Self::H2(_) => b.uri(format!("http://{to}{}", r.path)),
        };
        for (k, v) in &r.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        if r.body_len > 0 {
            b = b.header("content-length", r.body_len.to_string());
        }
        let req = b.body(body_of(r.body_len))?;
        let resp = match self {
            Self::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Self::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status().as_u16();
        let served_by = resp
            .headers()
            .get(SERVED_BY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((
            status,
            served_by,
            String::from_utf8_lossy(&body).into_owned(),
            headers,
        ))
    }
}
