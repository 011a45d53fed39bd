//! The proxy: serving UDP and TCP until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::request::{self, Context, Forward, MAX_MESSAGE, Outcome, Protocol};
use crate::resolver::MeshResolver;

/// A DNS proxy: answers mesh names from a [`MeshResolver`], forwards the
/// rest. Cheap to clone; clones share the in-flight cap and the metrics.
#[derive(Clone)]
pub struct DnsProxy {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    resolver: Arc<dyn MeshResolver>,
    metrics: Metrics,
    forwarder: Forwarder,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for DnsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsProxy")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl DnsProxy {
    /// A proxy with this configuration, answering mesh names from
    /// `resolver` and counting into `metrics`. Needs no runtime.
    pub fn new(config: Config, resolver: Arc<dyn MeshResolver>, metrics: Metrics) -> Self {
        let forwarder = Forwarder {
            upstreams: config.upstreams.clone(),
            timeout: config.timeout,
            attempts: config.attempts,
        };
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
        Self {
            inner: Arc::new(Inner {
                config,
                resolver,
                metrics,
                forwarder,
                in_flight,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The request path without the network: parses `packet`, answers it
    /// when it asks for a mesh name (or is malformed), or says it must be
    /// forwarded. Counts `istio_dns_requests_total`.
    pub fn handle_local(&self, packet: &[u8], client: SocketAddr, protocol: Protocol) -> Outcome {
        let ctx = Context {
            resolver: self.inner.resolver.as_ref(),
            ttl: self.inner.config.ttl,
            max_udp_payload: self.inner.config.max_udp_payload,
        };
        let metrics = &self.inner.metrics;
        request::handle(&ctx, packet, client, protocol, &|l| metrics.request(l))
    }

    /// Forwards a query upstream and returns the reply for the client
    /// (the upstream's, relayed with the client's id and fitted to its
    /// size; SERVFAIL if no upstream answered in time). Does not take an
    /// in-flight permit: [`handle`](Self::handle) and the serving loops do.
    pub async fn forward(&self, query: &Forward) -> Vec<u8> {
        let metrics = &self.inner.metrics;
        metrics.upstream_request(&query.labels);
        let started = Instant::now();
        let result = self
            .inner
            .forwarder
            .forward(&query.packet, &query.request)
            .await;
        metrics.upstream_done(&query.labels, started.elapsed(), result.is_err());
        match result {
            Ok(reply) => request::fit_relayed(reply, query.max_reply, &query.request),
            Err(error) => {
                let name = query.query().map(|q| q.name().to_string());
                tracing::debug!(%error, ?name, "forwarding failed");
                self.servfail(query)
            }
        }
    }

    /// The whole request path for one message: the reply to send, if any.
    /// Forwards (within the in-flight cap) when needed.
    pub async fn handle(
        &self,
        packet: &[u8],
        client: SocketAddr,
        protocol: Protocol,
    ) -> Option<Vec<u8>> {
        match self.handle_local(packet, client, protocol) {
            Outcome::Reply(reply) => Some(reply),
            Outcome::Drop => None,
            Outcome::Forward(query) => match self.inner.in_flight.clone().try_acquire_owned() {
                Ok(_permit) => Some(self.forward(&query).await),
                Err(_) => Some(self.servfail(&query)),
            },
        }
    }

    fn servfail(&self, query: &Forward) -> Vec<u8> {
        request::error_reply(
            &query.request,
            ResponseCode::ServFail,
            self.inner.config.max_udp_payload,
        )
    }

    /// Serves DNS on `udp` and `tcp` until `shutdown` completes, then
    /// stops reading, lets forwards and TCP connections finish for up to
    /// [`Config::drain_deadline`], and returns.
    pub async fn serve(
        &self,
        udp: UdpSocket,
        tcp: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let limits = ambit_server::Limits {
            drain_deadline: self.inner.config.drain_deadline,
            max_connections: self.inner.config.max_tcp_connections,
        };
        let tcp_loop = ambit_server::run(
            tcp,
            stopped(stop_rx.clone()),
            limits,
            |stream, peer, drain| {
                let proxy = self.clone();
                async move { proxy.serve_tcp_connection(stream, peer, drain).await }
            },
        );
        tokio::join!(signal, self.serve_udp(udp, stopped(stop_rx)), tcp_loop);
    }

    /// Serves one UDP socket until `shutdown`.
    async fn serve_udp(&self, socket: UdpSocket, shutdown: impl Future<Output = ()>) {
        let socket = Arc::new(socket);
        let mut forwards = JoinSet::new();
        let mut buf = vec![0u8; MAX_MESSAGE];
        tokio::pin!(shutdown);
        loop {
            while forwards.try_join_next().is_some() {}
            let (n, client) = tokio::select! {
                () = &mut shutdown => break,
                received = socket.recv_from(&mut buf) => match received {
                    Ok(r) => r,
                    Err(error) => {
                        // Usually an ICMP error surfacing; never fatal.
                        tracing::debug!(%error, "DNS UDP receive failed");
                        tokio::task::yield_now().await;
                        continue;
                    }
                },
            };
            let reply = match self.handle_local(&buf[..n], client, Protocol::Udp) {
                Outcome::Reply(reply) => reply,
                Outcome::Drop => continue,
                Outcome::Forward(query) => match self.inner.in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let proxy = self.clone();
                        let socket = socket.clone();
                        forwards.spawn(async move {
                            let reply = proxy.forward(&query).await;
                            drop(permit);
                            send_udp(&socket, &reply, client).await;
                        });
                        continue;
                    }
                    Err(_) => self.servfail(&query),
                },
            };
            send_udp(&socket, &reply, client).await;
        }
        let deadline = self.inner.config.drain_deadline;
        if tokio::time::timeout(deadline, async {
            while forwards.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            forwards.abort_all();
        }
    }

    /// Serves one TCP client: length-framed queries, several per
    /// connection and answered as they complete, until the client closes,
    /// idles, stalls, or the server drains.
    async fn serve_tcp_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        drain: ambit_server::Drain,
    ) {
        let config = &self.inner.config;
        let (mut reader, writer) = stream.into_split();
        let writer = Arc::new(Mutex::new(writer));
        let mut forwards = JoinSet::new();
        loop {
            while forwards.try_join_next().is_some() {}
            if forwards.len() >= config.max_in_flight_per_connection.max(1) {
                forwards.join_next().await;
                continue;
            }
            let mut len = [0u8; 2];
            let started = tokio::select! {
                () = drain.clone().signaled() => break,
                read = tokio::time::timeout(config.tcp_idle_timeout, reader.read_exact(&mut len)) => read,
            };
            if !matches!(started, Ok(Ok(_))) {
                break; // idle, closed, or reset
            }
            let len = usize::from(u16::from_be_bytes(len));
            if len == 0 {
                break;
            }
            let mut packet = vec![0u8; len];
            let read =
                tokio::time::timeout(config.tcp_request_timeout, reader.read_exact(&mut packet))
                    .await;
            if !matches!(read, Ok(Ok(_))) {
                tracing::debug!(%peer, "DNS TCP client too slow or gone mid-query");
                break;
            }
            let reply = match self.handle_local(&packet, peer, Protocol::Tcp) {
                Outcome::Reply(reply) => reply,
                Outcome::Drop => continue,
                Outcome::Forward(query) => match self.inner.in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let proxy = self.clone();
                        let writer = writer.clone();
                        forwards.spawn(async move {
                            let reply = proxy.forward(&query).await;
                            drop(permit);
                            proxy.write_tcp(&writer, &reply).await
                        });
                        continue;
                    }
                    Err(_) => self.servfail(&query),
                },
            };
            if !self.write_tcp(&writer, &reply).await {
                break;
            }
        }
        // Replies to queries already read still go out (bounded by the
        // forward timeout, and by the drain deadline on shutdown).
        while forwards.join_next().await.is_some() {}
        let _ = writer.lock().await.shutdown().await;
    }

    /// Writes one framed reply; false if the client is gone or too slow.
    async fn write_tcp(&self, writer: &Mutex<OwnedWriteHalf>, reply: &[u8]) -> bool {
        let Ok(len) = u16::try_from(reply.len()) else {
            return false;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(reply);
        let mut writer = writer.lock().await;
        matches!(
            tokio::time::timeout(
                self.inner.config.tcp_request_timeout,
                writer.write_all(&framed)
            )
            .await,
            Ok(Ok(()))
        )
    }
}

async fn send_udp(socket: &UdpSocket, reply: &[u8], client: SocketAddr) {
    if let Err(error) = socket.send_to(reply, client).await {
        tracing::debug!(%error, %client, "DNS UDP reply not sent");
    }
}
