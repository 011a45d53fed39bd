//! The HBONE server: TLS (from ambit-identity), HTTP/2, and one handler
//! call per valid CONNECT stream.
//!
//! Bytes → connection → stream → decision:
//! 1. [`Server::run`] accepts TCP connections until `shutdown` resolves,
//!    then drains them (GOAWAY, open streams finish, at most
//!    [`ServerConfig::drain_timeout`]).
//! 2. Each connection: TLS handshake (client certificate required), the
//!    peer's SPIFFE identity, the HTTP/2 handshake with the configured
//!    settings, then one task per stream.
//! 3. Each stream: not `CONNECT`, or an `:authority` that is missing or
//!    malformed → 400 without calling the handler. Otherwise the
//!    [`Handler`] decides: [`Decision::Accept`] → 200 and the handler's
//!    task gets the [`HboneStream`]; [`Decision::Reject`] → 400/401/503.
//!
//! h2 itself refuses requests whose `:authority` is not a valid URI
//! authority at all (such as `a:b:c`): those streams are reset with
//! PROTOCOL_ERROR, as RFC 9113 §8.1.1 prescribes for malformed requests,
//! before this code sees them.

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::Arc,
};

use ambit_identity::{CertError, HandshakeError, Identity, peer_identity};
use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::{ServerConfig, tune_tcp},
    headers::{Authority, ConnectHeaders, HeaderError},
    stream::HboneStream,
};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One CONNECT request, as the handler sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InboundRequest {
    /// The client's SPIFFE identity, from its verified certificate.
    pub peer_identity: Identity,
    /// The target, from `:authority` (an address unless the server allows
    /// hostnames).
    pub authority: Authority,
    /// The typed HBONE headers (malformed ones are left out).
    pub connect_headers: ConnectHeaders,
    /// All request headers as received.
    pub headers: http::HeaderMap,
    /// The address the connection arrived on.
    pub local_addr: SocketAddr,
    /// The client's address.
    pub peer_addr: SocketAddr,
}

/// Why the handler refuses a stream, and the status the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the request is invalid (for example the target is not served
    /// here).
    BadRequest,
    /// 401: authorization policy denies it.
    Unauthorized,
    /// 503: the target workload is unknown or could not be reached.
    Unavailable,
}

impl Rejection {
    /// The HTTP status sent.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What to do with the stream once 200 has been sent.
pub type StreamTask = Box<dyn FnOnce(HboneStream) -> BoxFuture<'static, ()> + Send>;

/// A handler's answer to a CONNECT.
pub enum Decision {
    /// Answer 200 and run the task on the stream.
    Accept(StreamTask),
    /// Answer with the rejection's status and end the stream.
    Reject(Rejection),
}

impl Decision {
    /// Accept, and run `task` on the stream.
    pub fn accept<F, Fut>(task: F) -> Self
    where
        F: FnOnce(HboneStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::Accept(Box::new(move |stream| Box::pin(task(stream))))
    }

    /// Reject with `rejection`.
    pub fn reject(rejection: Rejection) -> Self {
        Self::Reject(rejection)
    }
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accept(_) => f.write_str("Accept(..)"),
            Self::Reject(r) => f.debug_tuple("Reject").field(r).finish(),
        }
    }
}

/// Decides what happens to each valid CONNECT stream.
///
/// Typical work before deciding: authorization (401), finding the local
/// workload and connecting to it (503 when that fails); the accepted task
/// then copies bytes with [`copy_bidirectional`](crate::copy_bidirectional).
pub trait Handler: Send + Sync + 'static {
    /// Decides on one stream.
    fn handle(&self, request: InboundRequest) -> impl Future<Output = Decision> + Send;

    /// Called when a connection fails before or outside any stream (TLS
    /// refusals, HTTP/2 errors); for logs and metrics. Default: nothing.
    fn on_connection_error(&self, peer_addr: SocketAddr, error: &ServerError) {
        let _ = (peer_addr, error);
    }
}

/// A [`Handler`] from an async closure.
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(InboundRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Decision> + Send,
{
    HandlerFn(f)
}

/// See [`handler_fn`].
#[derive(Debug, Clone)]
pub struct HandlerFn<F>(F);

impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(InboundRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Decision> + Send,
{
    fn handle(&self, request: InboundRequest) -> impl Future<Output = Decision> + Send {
        (self.0)(request)
    }
}

/// Why a server connection ended in failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The TLS and HTTP/2 handshakes took longer than allowed.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The TLS handshake failed; the variant says why (wrong trust domain,
    /// missing client certificate, expired, unknown root, ...).
    #[error("tls handshake failed")]
    Tls(#[source] HandshakeError),
    /// The client's certificate has no usable identity.
    #[error("failed to read the client's identity")]
    PeerIdentity(#[source] CertError),
    /// HTTP/2 failed (handshake or connection).
    #[error("http/2 connection failed")]
    Http2(#[source] h2::Error),
}

/// An HBONE server. Cheap to clone.
pub struct Server<H> {
    inner: Arc<Inner<H>>,
}

impl<H> Clone for Server<H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<H> fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner<H> {
    acceptor: TlsAcceptor,
    config: ServerConfig,
    h2: h2::server::Builder,
    handler: H,
}

impl<H: Handler> Server<H> {
    /// A server presenting `tls` (use
    /// [`CertManager::server_config`](ambit_identity::CertManager::server_config)
    /// or [`ambit_identity::tls::server_config`]: they require a client
    /// certificate in the trust domain and negotiate `h2`).
    pub fn new(tls: Arc<rustls::ServerConfig>, config: ServerConfig, handler: H) -> Self {
        let mut h2 = h2::server::Builder::new();
        h2.initial_window_size(config.h2.stream_window)
            .initial_connection_window_size(config.h2.connection_window)
            .max_frame_size(config.h2.max_frame_size)
            .max_header_list_size(config.h2.max_header_list_size)
            .max_send_buffer_size(config.h2.max_send_buffer)
            .max_concurrent_streams(config.max_concurrent_streams);
        // A server never pushes; h2 has no push on the server side to turn
        // off, and the client announces ENABLE_PUSH=0.
        Self {
            inner: Arc::new(Inner {
                acceptor: TlsAcceptor::from(tls),
                config,
                h2,
                handler,
            }),
        }
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.inner.handler
    }

    /// Serves `listener` until `shutdown` resolves, then stops accepting,
    /// sends GOAWAY on every connection and waits for open streams to
    /// finish (at most [`ServerConfig::drain_timeout`], after which the
    /// remaining connections are closed).
    pub async fn run(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let limits = ambit_server::Limits {
            drain_deadline: self.inner.config.drain_timeout,
            max_connections: usize::MAX,
        };
        ambit_server::run(listener, shutdown, limits, |tcp, peer_addr, drain| {
            let server = self.clone();
            async move {
                tune_tcp(&tcp, server.inner.config.tcp_keepalive);
                let local_addr = match tcp.local_addr() {
                    Ok(addr) => addr,
                    Err(error) => {
                        tracing::debug!(%peer_addr, %error, "dropping a connection without a local address");
                        return;
                    }
                };
                server
                    .serve_connection(tcp, local_addr, peer_addr, drain.signaled())
                    .await;
            }
        })
        .await;
    }

    /// Serves one connection that has already been accepted: TLS, HTTP/2
    /// and its streams, until the client closes it or `shutdown` resolves
    /// and its streams are done. Failures go to
    /// [`Handler::on_connection_error`].
    ///
    /// `io` may be any byte stream — a TCP connection, or an
    /// [`HboneStream`] when this server terminates the inner layer of
    /// double HBONE.
    pub async fn serve_connection<IO>(
        &self,
        io: IO,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if let Err(error) = self
            .serve_connection_inner(io, local_addr, peer_addr, shutdown)
            .await
        {
            tracing::debug!(%peer_addr, %error, cause = ?std::error::Error::source(&error), "hbone connection failed");
            self.inner.handler.on_connection_error(peer_addr, &error);
        }
    }

    async fn serve_connection_inner<IO>(
        &self,
        io: IO,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = &self.inner;
        let handshake = async {
            let tls = inner
                .acceptor
                .accept(io)
                .await
                .map_err(|e| ServerError::Tls(HandshakeError::from_io(e)))?;
            let identity = peer_identity(tls.get_ref().1).map_err(ServerError::PeerIdentity)?;
            let conn = inner.h2.handshake(tls).await.map_err(ServerError::Http2)?;
            Ok::<_, ServerError>((identity, conn))
        };
        let mut shutdown = pin!(shutdown);
        // A connection still handshaking when shutdown begins has no
        // streams to drain: drop it.
        let (peer_identity, mut conn) = tokio::select! {
            result = tokio::time::timeout(inner.config.handshake_timeout, handshake) => {
                result.map_err(|_| ServerError::HandshakeTimeout)??
            }
            () = &mut shutdown => return Ok(()),
        };
        tracing::debug!(%peer_addr, %peer_identity, "hbone connection established");
        let mut draining = false;
        loop {
            tokio::select! {
                () = &mut shutdown, if !draining => {
                    tracing::debug!(%peer_addr, "sending goaway");
                    conn.graceful_shutdown();
                    draining = true;
                }
                next = conn.accept() => match next {
                    None => return Ok(()),
                    Some(Ok((request, respond))) => {
                        let server = self.clone();
                        let peer_identity = peer_identity.clone();
                        tokio::spawn(async move {
                            server
                                .serve_stream(request, respond, peer_identity, local_addr, peer_addr)
                                .await;
                        });
                    }
                    Some(Err(e)) => {
                        // A peer that simply went away is not a failure.
                        if e.is_io() || e.is_go_away() && e.is_remote() {
                            tracing::debug!(%peer_addr, error = %e, "hbone connection closed");
                            return Ok(());
                        }
                        return Err(ServerError::Http2(e));
                    }
                },
            }
        }
    }

    async fn serve_stream(
        &self,
        request: Request<h2::RecvStream>,
        mut respond: SendResponse<Bytes>,
        peer_identity: Identity,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
    ) {
        let config = &self.inner.config;
        let authority = match check_request(&request, config, local_addr) {
            Ok(authority) => authority,
            Err(reason) => {
                tracing::debug!(%peer_addr, %peer_identity, %reason, "bad hbone request");
                send_status(&mut respond, StatusCode::BAD_REQUEST);
                return;
            }
        };
        let (parts, body) = request.into_parts();
        let inbound = InboundRequest {
            peer_identity,
            authority,
            connect_headers: ConnectHeaders::from_map(&parts.headers),
            headers: parts.headers,
            local_addr,
            peer_addr,
        };
        match self.inner.handler.handle(inbound).await {
            Decision::Reject(rejection) => send_status(&mut respond, rejection.status()),
            Decision::Accept(task) => {
                let response = Response::builder().status(StatusCode::OK).body(());
                let sent = match response {
                    Ok(response) => respond.send_response(response, false),
                    Err(_) => return,
                };
                match sent {
                    Ok(send) => task(HboneStream::new(send, body)).await,
                    Err(error) => {
                        tracing::debug!(%peer_addr, %error, "stream gone before 200");
                    }
                }
            }
        }
    }
}

/// Why a request gets 400 before the handler sees it.
#[derive(Debug)]
enum BadRequest {
    Method(Method),
    NoAuthority,
    Authority(HeaderError),
    NotLocal { authority: SocketAddr },
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Method(m) => write!(f, "method {m} is not CONNECT"),
            Self::NoAuthority => f.write_str("no :authority"),
            Self::Authority(e) => e.fmt(f),
            Self::NotLocal { authority } => {
                write!(f, "authority {authority} is not the connection's address")
            }
        }
    }
}

fn check_request<B>(
    request: &Request<B>,
    config: &ServerConfig,
    local_addr: SocketAddr,
) -> Result<Authority, BadRequest> {
    if request.method() != Method::CONNECT {
        return Err(BadRequest::Method(request.method().clone()));
    }
    let raw = request
        .uri()
        .authority()
        .ok_or(BadRequest::NoAuthority)?
        .as_str();
    let authority =
        Authority::parse(raw.as_bytes(), config.authority).map_err(BadRequest::Authority)?;
    if config.require_authority_ip_is_local
        && let Authority::Addr(addr) = authority
        && addr.ip() != local_addr.ip()
    {
        return Err(BadRequest::NotLocal { authority: addr });
    }
    Ok(authority)
}

fn send_status(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let Ok(response) = Response::builder().status(status).body(()) else {
        return;
    };
    if let Err(error) = respond.send_response(response, true) {
        tracing::debug!(%error, %status, "failed to send an hbone error status");
    }
}
