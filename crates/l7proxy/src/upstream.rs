//! One upstream attempt: an HBONE stream (or plain TCP in benchmark mode)
//! to the endpoint, HTTP/1.1 on a pooled or new connection, or HTTP/2
//! (h2c inside the stream) on the key's shared connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use http::request::Parts;
use http_body_util::{BodyExt, Empty, Full};

use ambit_hbone::{ConnectHeaders, ConnectRequest, Forwarded, HboneStream};
use ambit_identity::Identity;
use ambit_mesh::Endpoint;
use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::forward::ep_ip;
use crate::h1::{self, H1Conn, Io, SendError};
use crate::pool::{H2Conn, H2Sender, HttpPool, PoolKey, PooledBody};
use crate::proxy::{Body, Waypoint};
use crate::route::Outcome;

/// The HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// HTTP/1.1, one request at a time per connection.
    Http1,
    /// HTTP/2 cleartext, many streams per connection.
    Http2,
}

/// A request body on its way upstream.
pub(crate) enum UpBody {
    /// All of it, at hand: none, or buffered for retries or mirrors.
    Whole(Bytes),
    /// Read from the client while it is sent.
    Streamed(Body),
}

impl UpBody {
    /// As a body for hyper's clients.
    fn into_body(self) -> Body {
        match self {
            UpBody::Whole(b) if b.is_empty() => Empty::new().map_err(|e| match e {}).boxed_unsync(),
            UpBody::Whole(b) => Full::new(b).map_err(|e| match e {}).boxed_unsync(),
            UpBody::Streamed(b) => b,
        }
    }
}

impl Waypoint {
    /// An HBONE stream to `ep`, as the waypoint, carrying `forwarded` for
    /// `client`.
    pub(crate) async fn connect(
        &self,
        ep: &Endpoint,
        client: SocketAddr,
    ) -> Result<HboneStream, ambit_hbone::ClientError> {
        let ip = ep_ip(ep, client);
        let routes = self.routes();
        let headers = ConnectHeaders {
            forwarded: Some(Forwarded::new(client)),
            ..ConnectHeaders::default()
        };
        let req = ConnectRequest::new(
            self.inner.cfg.identity.clone(),
            ep.workload.identity().into_iter().collect(),
            SocketAddr::new(ip, routes.hbone_port),
            SocketAddr::new(ip, ep.port),
        )
        .with_headers(headers);
        self.inner.client.connect(req).await
    }

    /// One attempt with `version`. HTTP/1.1: on a pooled connection to
    /// `ep` for `client`, or a new one; a request a pooled connection hands
    /// back unsent (it was closed while idle) moves on to the next, and
    /// that is not an attempt. A whole body goes by the lean client
    /// ([`crate::h1`]), a streamed one by hyper's. HTTP/2: on the key's
    /// shared connection, opened (once, whoever asks first) when there is
    /// none or it closed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send(
        &self,
        ep: &Endpoint,
        ep_key: &str,
        key: Arc<PoolKey>,
        client: SocketAddr,
        head: Parts,
        body: UpBody,
        version: Upstream,
    ) -> Result<Response<PooledBody>, Outcome> {
        match (version, body) {
            (Upstream::Http1, UpBody::Whole(b)) if head.method != Method::CONNECT => {
                let sent = self.send_lean(ep, ep_key, key, client, &head, b).await;
                // Encoded on the wire: the head's map serves the next one.
                h1::recycle(head.headers);
                sent
            }
            (Upstream::Http1, body) => {
                let req = Request::from_parts(head, body.into_body());
                self.send_h1(ep, ep_key, key, client, req).await
            }
            (Upstream::Http2, body) => {
                let req = Request::from_parts(head, body.into_body());
                self.send_h2(ep, ep_key, key, client, req).await
            }
        }
    }

    /// HTTP/1.1 with a whole body, by the lean client: on a pooled
    /// connection that is still idle, or a new one.
    async fn send_lean(
        &self,
        ep: &Endpoint,
        ep_key: &str,
        key: Arc<PoolKey>,
        client: SocketAddr,
        head: &Parts,
        body: Bytes,
    ) -> Result<Response<PooledBody>, Outcome> {
        let pool = &self.inner.pool;
        let req = h1::encode(head, body);
        while let Some(mut conn) = pool.checkout_h1(&key) {
            match conn.send(&req).await {
                Ok(answer) => {
                    pool.note_reused();
                    return Ok(pool.wrap_h1(key, conn, answer));
                }
                Err(SendError::Unsent) => {}
                Err(error) => {
                    tracing::debug!(%error, endpoint = %ep_key, "upstream request failed on a pooled connection");
                    return Err(Outcome::Reset);
                }
            }
        }
        // Boxed, as in `send_h1`.
        let io = Box::pin(self.open_io(ep, ep_key, &key, client)).await?;
        pool.note_opened();
        let mut conn = H1Conn::new(io);
        match conn.send(&req).await {
            Ok(answer) => Ok(pool.wrap_h1(key, conn, answer)),
            Err(error) => {
                tracing::debug!(%error, endpoint = %ep_key, "upstream request failed");
                Err(Outcome::Reset)
            }
        }
    }

    /// A new transport to `ep`: plain TCP in benchmark mode, else HBONE.
    async fn open_io(
        &self,
        ep: &Endpoint,
        ep_key: &str,
        key: &PoolKey,
        client: SocketAddr,
    ) -> Result<Io, Outcome> {
        Ok(if self.inner.cfg.plaintext_upstreams {
            Io::Tcp(self.dial_tcp(key, ep_key).await?)
        } else {
            Io::Hbone(self.dial_hbone(ep, ep_key, client).await?)
        })
    }

    async fn send_h1(
        &self,
        ep: &Endpoint,
        ep_key: &str,
        key: Arc<PoolKey>,
        client: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, Outcome> {
        let pool = &self.inner.pool;
        while let Some(mut sender) = pool.checkout(&key) {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    pool.note_reused();
                    return Ok(pool.wrap(key, sender, resp));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) => req = r,
                    None => {
                        tracing::debug!(error = %e.error(), endpoint = %ep_key, "upstream request failed on a pooled connection");
                        return Err(Outcome::Reset);
                    }
                },
            }
        }
        // Boxed: the dial's future is large and only needed when no pooled
        // connection is at hand; inline it would enlarge every request's.
        let mut sender = Box::pin(self.open_h1(ep, ep_key, &key, client)).await?;
        pool.note_opened();
        match sender.send_request(req).await {
            Ok(resp) => Ok(pool.wrap(key, sender, resp)),
            Err(error) => {
                tracing::debug!(%error, endpoint = %ep_key, "upstream request failed");
                Err(Outcome::Reset)
            }
        }
    }

    async fn send_h2(
        &self,
        ep: &Endpoint,
        ep_key: &str,
        key: Arc<PoolKey>,
        client: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, Outcome> {
        let pool = &self.inner.pool;
        let Some(slot) = pool.h2_slot(&key) else {
            // Pooling off: a connection per request.
            let mut sender = Box::pin(self.open_h2(ep, ep_key, &key, client)).await?;
            return finish_h2(sender.send_request(req).await, ep_key);
        };
        let mut conn = slot.lock().await;
        if let Some(c) = conn.as_mut().filter(|c| !c.sender.is_closed()) {
            c.last_used = Instant::now();
            let mut sender = c.sender.clone();
            drop(conn);
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    pool.note_reused();
                    return Ok(HttpPool::wrap_h2(resp));
                }
                Err(mut e) => match e.take_message() {
                    // Closed before the request went out: open another.
                    Some(r) => req = r,
                    None => {
                        tracing::debug!(error = %e.error(), endpoint = %ep_key, "upstream h2 request failed");
                        return Err(Outcome::Reset);
                    }
                },
            }
            conn = slot.lock().await;
            if let Some(c) = conn.as_mut().filter(|c| !c.sender.is_closed()) {
                // Another request reopened it meanwhile.
                c.last_used = Instant::now();
                let mut sender = c.sender.clone();
                drop(conn);
                return finish_h2(sender.send_request(req).await, ep_key);
            }
        }
        let sender = Box::pin(self.open_h2(ep, ep_key, &key, client)).await?;
        *conn = Some(H2Conn {
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        drop(conn);
        let mut sender = sender;
        finish_h2(sender.send_request(req).await, ep_key)
    }

    async fn open_h1(
        &self,
        ep: &Endpoint,
        ep_key: &str,
        key: &PoolKey,
        client: SocketAddr,
    ) -> Result<hyper::client::conn::http1::SendRequest<Body>, Outcome> {
        if self.inner.cfg.plaintext_upstreams {
            handshake_h1(self.dial_tcp(key, ep_key).await?).await
        } else {
            handshake_h1(self.dial_hbone(ep, ep_key, client).await?).await
        }
    }

    async fn open_h2(
        &self,
        ep: &Endpoint,
        ep_key: &str,
        key: &PoolKey,
        client: SocketAddr,
    ) -> Result<H2Sender, Outcome> {
        let sender = if self.inner.cfg.plaintext_upstreams {
            handshake_h2(self.dial_tcp(key, ep_key).await?).await?
        } else {
            handshake_h2(self.dial_hbone(ep, ep_key, client).await?).await?
        };
        self.inner.pool.note_h2_opened();
        Ok(sender)
    }

    async fn dial_tcp(&self, key: &PoolKey, ep_key: &str) -> Result<TcpStream, Outcome> {
        let tcp = TcpStream::connect(key.target).await.map_err(|error| {
            tracing::debug!(%error, endpoint = %ep_key, "upstream connect failed");
            Outcome::ConnectFailure
        })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn dial_hbone(
        &self,
        ep: &Endpoint,
        ep_key: &str,
        client: SocketAddr,
    ) -> Result<HboneStream, Outcome> {
        self.connect(ep, client).await.map_err(|error| {
            tracing::debug!(%error, endpoint = %ep_key, "upstream connect failed");
            Outcome::ConnectFailure
        })
    }

    /// The pool key of `ep` for `client`.
    pub(crate) fn pool_key(&self, ep: &Endpoint, client: SocketAddr, hbone_port: u16) -> PoolKey {
        let ip = ep_ip(ep, client);
        let (hbone, identities) = if self.inner.cfg.plaintext_upstreams {
            (None, Vec::new())
        } else {
            let mut ids: Vec<Identity> = ep.workload.identity().into_iter().collect();
            ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            (Some(SocketAddr::new(ip, hbone_port)), ids)
        };
        PoolKey {
            hbone,
            target: SocketAddr::new(ip, ep.port),
            identities,
            client_ip: client.ip(),
        }
    }
}

fn finish_h2(
    result: hyper::Result<Response<hyper::body::Incoming>>,
    ep_key: &str,
) -> Result<Response<PooledBody>, Outcome> {
    match result {
        Ok(resp) => Ok(HttpPool::wrap_h2(resp)),
        Err(error) => {
            tracing::debug!(%error, endpoint = %ep_key, "upstream h2 request failed");
            Err(Outcome::Reset)
        }
    }
}

/// An HTTP/1.1 client connection over `io`, its driver spawned.
async fn handshake_h1<IO>(io: IO) -> Result<hyper::client::conn::http1::SendRequest<Body>, Outcome>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|_| Outcome::ConnectFailure)?;
    tokio::spawn(async move {
        if let Err(error) = driver.await {
            tracing::debug!(%error, "upstream http connection failed");
        }
    });
    Ok(sender)
}

/// An HTTP/2 (prior knowledge, cleartext) client connection over `io`, its
/// driver spawned.
async fn handshake_h2<IO>(io: IO) -> Result<H2Sender, Outcome>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, driver) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|error| {
                tracing::debug!(%error, "upstream h2 handshake failed");
                Outcome::ConnectFailure
            })?;
    tokio::spawn(async move {
        if let Err(error) = driver.await {
            tracing::debug!(%error, "upstream h2 connection failed");
        }
    });
    Ok(sender)
}
