//! Serving gRPC over TLS on one port, as istiod serves xDS and its CA on
//! 15012: a serving certificate for istiod's names
//! ([`ISTIOD_DNS_NAMES`], issued by
//! [`LocalCa::issue_serving_cert`](crate::LocalCa::issue_serving_cert)), a
//! rustls [`server_config`] (ALPN `h2`, client certificates of the mesh
//! optional), a [`TlsIncoming`] stream of accepted TLS connections, and
//! [`serve_tls`], which runs a tonic router (several services) on it until
//! a shutdown future completes.
//!
//! ```no_run
//! # async fn demo(
//! #     ca: std::sync::Arc<ambit_identity::LocalCa>,
//! #     listener: tokio::net::TcpListener,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use ambit_identity::{CaServer, ca::authn::Authn, grpc};
//! use std::{sync::Arc, time::Duration};
//!
//! let authn = Authn::none();
//! let cert = ca.issue_serving_cert(grpc::ISTIOD_DNS_NAMES, &[], Duration::from_secs(86400))?;
//! let tls = grpc::server_config(&cert, &authn, &[ca.root().clone()])?;
//! let router = tonic::transport::Server::builder()
//!     .add_service(CaServer::new(ca).with_authn(authn).into_service());
//! grpc::serve_tls(router, listener, Arc::new(tls), std::future::pending()).await?;
//! # Ok(()) }
//! ```

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::CertificateDer,
    server::{NoServerSessionStorage, WebPkiClientVerifier},
    version::TLS13,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::server::Router;

use crate::{
    ca::{ServingCert, authn::Authn},
    provider::provider,
    tls::{ALPN_H2, TlsConfigError, root_store},
};

/// The name a proxy verifies istiod's certificate against by default
/// (`istiod.istio-system.svc`, the host of Istio's default address).
pub const ISTIOD_SERVER_NAME: &str = "istiod.istio-system.svc";

/// The DNS names of istiod's serving certificate.
pub const ISTIOD_DNS_NAMES: &[&str] = &[
    "istiod.istio-system.svc",
    "istiod.istio-system.svc.cluster.local",
    "istiod",
    "istiod.istio-system",
];

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors serving gRPC over TLS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The serving certificate or key was refused by rustls.
    #[error("the serving certificate or its key is unusable")]
    Certificate(#[source] rustls::Error),
    /// The gRPC server failed.
    #[error("failed to serve grpc over tls on {}", addr.map_or_else(|| "?".to_owned(), |a| a.to_string()))]
    Serve {
        /// The listening address, when known.
        addr: Option<SocketAddr>,
        /// The underlying error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// A rustls server config for a control plane's gRPC port: present `cert`,
/// TLS 1.3, ALPN `h2`. When `authn` accepts client certificates, clients
/// are asked for one (optional) that must chain to `client_roots`; a
/// certificate that does not is refused at the handshake.
pub fn server_config(
    cert: &ServingCert,
    authn: &Authn,
    client_roots: &[CertificateDer<'static>],
) -> Result<ServerConfig, ServeError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&TLS13])
        .map_err(|source| TlsConfigError::Rustls {
            side: "server",
            source,
        })?;
    let builder = if authn.accepts_client_certs() {
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(root_store(client_roots)?),
            provider,
        )
        .allow_unauthenticated()
        .build()
        .map_err(TlsConfigError::Verifier)?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(ServeError::Certificate)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The TLS connections accepted on a listener, handshakes done, as a
/// stream for tonic's `serve_with_incoming_shutdown`. Handshakes run
/// concurrently (a slow client does not hold up others) and are bounded by
/// [`HANDSHAKE_TIMEOUT`]; failed ones are logged and dropped. Dropping the
/// stream stops accepting.
#[derive(Debug)]
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsStream<TcpStream>>,
    task: JoinHandle<()>,
}

impl TlsIncoming {
    /// Starts accepting on `listener`. Must be called within a tokio
    /// runtime.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Self { rx, task }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
) {
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "grpc tls listener failed to accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(tls).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "grpc tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "grpc tls handshake timed out"),
            }
        });
    }
}

impl futures_util::Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|s| s.map(Ok))
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` over TLS with `config` on `listener` until `shutdown`
/// completes, then stops accepting and waits for open requests (end
/// endless streams, e.g. xDS, from `shutdown` itself: see
/// `AdsServer::close_streams` in ambit-xds). Requests carry the client's
/// verified certificates (`tonic::Request::peer_certs`). Must be called
/// within a tokio runtime.
pub async fn serve_tls(
    router: Router,
    listener: TcpListener,
    config: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "grpc tls server listening");
    router
        .serve_with_incoming_shutdown(TlsIncoming::new(listener, config), shutdown)
        .await
        .map_err(|source| ServeError::Serve { addr, source })
}

#[cfg(test)]
mod tests;
