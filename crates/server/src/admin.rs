//! A small HTTP/1 server for admin (15000), metrics (15020) and readiness
//! (15021) endpoints: each request is answered by a [`Responder`] from its
//! method and path alone.
//!
//! The endpoints face the node (metrics and readiness bind `0.0.0.0`), so
//! the server bounds what a client can hold: a header timeout, a time limit
//! per connection and a connection cap ([`AdminConfig`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::{Limits, run};

/// Answers a request: method, path, query (`""` when there is none) →
/// response.
pub type Responder = Arc<dyn Fn(&Method, &str, &str) -> Response<Full<Bytes>> + Send + Sync>;

/// The Prometheus text exposition content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A response with a body and content type.
pub fn reply(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// 404 with a short text body.
pub fn not_found() -> Response<Full<Bytes>> {
    reply(StatusCode::NOT_FOUND, "text/plain", "not found\n")
}

/// `base`, with `path` answered by `handler(method, query)` instead.
pub fn with_route(
    base: Responder,
    path: &'static str,
    handler: impl Fn(&Method, &str) -> Response<Full<Bytes>> + Send + Sync + 'static,
) -> Responder {
    Arc::new(move |method, p, query| {
        if p == path {
            handler(method, query)
        } else {
            base(method, p, query)
        }
    })
}

/// A text reply with a numeric status (500 if `status` is not one).
pub fn text(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    reply(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "text/plain",
        body,
    )
}

/// `/healthz/ready`: 200 once `ready` is true, 503 before.
pub fn readiness(ready: Arc<AtomicBool>) -> Responder {
    Arc::new(move |_, path, _| match path {
        "/healthz/ready" if ready.load(Ordering::Acquire) => {
            reply(StatusCode::OK, "text/plain", "ready\n")
        }
        "/healthz/ready" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        _ => not_found(),
    })
}

/// `/metrics` and `/stats/prometheus` (Istio's two scrape paths): the text
/// `encode` returns at each scrape.
pub fn prometheus(encode: impl Fn() -> String + Send + Sync + 'static) -> Responder {
    Arc::new(move |_, path, _| match path {
        "/metrics" | "/stats/prometheus" => reply(StatusCode::OK, OPENMETRICS, encode()),
        _ => not_found(),
    })
}

/// Bounds of the admin server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminConfig {
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long one connection may stay open, requests included.
    pub connection_timeout: Duration,
    /// Most connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// How long open connections may finish after shutdown.
    pub drain_deadline: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(60),
            max_connections: 64,
            drain_deadline: Duration::from_secs(1),
        }
    }
}

/// Serves `responder` on `listener` with the default bounds until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    responder: Responder,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, responder, AdminConfig::default(), shutdown).await;
}

/// Serves `responder` on `listener` with `config` until `shutdown`.
pub async fn serve_with(
    listener: TcpListener,
    responder: Responder,
    config: AdminConfig,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Limits {
        drain_deadline: config.drain_deadline,
        max_connections: config.max_connections,
    };
    run(listener, shutdown, limits, move |stream, _peer, drain| {
        let responder = responder.clone();
        async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = responder(
                    req.method(),
                    req.uri().path(),
                    req.uri().query().unwrap_or(""),
                );
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(config.header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let limited = tokio::time::timeout(config.connection_timeout, async {
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = drain.signaled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.as_mut().await;
                    }
                }
            });
            if limited.await.is_err() {
                tracing::debug!("admin connection reached its time limit");
            }
        }
    })
    .await;
}
