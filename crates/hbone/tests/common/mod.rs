//! Shared fixtures: a local CA and certificate manager, identities, an
//! HBONE server on a loopback port, and handlers.
#![allow(dead_code, unreachable_pub)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use ambit_hbone::{
    Client, ClientConfig, Decision, Handler, InboundRequest, Rejection, Server, ServerConfig,
    ServerError, copy_bidirectional,
};
use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

pub const TD: &str = "cluster.local";

pub fn id(s: &str) -> Identity {
    s.parse().expect("valid id")
}

pub fn server_id() -> Identity {
    id("spiffe://cluster.local/ns/default/sa/server")
}

pub fn client_id() -> Identity {
    id("spiffe://cluster.local/ns/default/sa/client")
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A CA, a manager over it, and the manager's configs.
pub struct Pki {
    pub ca: Arc<LocalCa>,
    pub manager: CertManager,
}

impl Pki {
    pub fn new() -> Self {
        Self::with_ttl(Duration::from_secs(3600))
    }

    pub fn with_ttl(ttl: Duration) -> Self {
        let ca = Arc::new(LocalCa::generate(TD).expect("ca"));
        let mut config = ManagerConfig::default();
        config.ttl = ttl;
        Self {
            manager: CertManager::new(ca.clone(), config),
            ca,
        }
    }

    pub async fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        Arc::new(
            self.manager
                .server_config(&server_id())
                .await
                .expect("server config"),
        )
    }

    pub fn client(&self) -> Client {
        Client::new(ClientConfig::default(), self.manager.clone())
    }
}

/// A running server: its address, a shutdown trigger, its task.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

pub async fn start<H: Handler>(
    tls: Arc<rustls::ServerConfig>,
    config: ServerConfig,
    handler: H,
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let server = Server::new(tls, config, handler);
    let task = tokio::spawn(async move {
        server
            .run(listener, async move {
                let _ = rx.await;
            })
            .await;
    });
    Running {
        addr,
        shutdown: Some(tx),
        task,
    }
}

/// Echoes every stream back (until the client half-closes), and records
/// what it saw.
#[derive(Default, Clone)]
pub struct Echo(pub Arc<EchoState>);

#[derive(Default)]
pub struct EchoState {
    pub seen: Mutex<Vec<InboundRequest>>,
    pub conn_errors: Mutex<Vec<String>>,
}

impl Echo {
    pub fn seen(&self) -> Vec<InboundRequest> {
        self.0.seen.lock().expect("lock").clone()
    }

    pub fn conn_errors(&self) -> Vec<String> {
        self.0.conn_errors.lock().expect("lock").clone()
    }
}

impl Handler for Echo {
    async fn handle(&self, request: InboundRequest) -> Decision {
        self.0.seen.lock().expect("lock").push(request);
        Decision::accept(|stream| async move {
            let (mut r, mut w) = tokio::io::split(stream);
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        })
    }

    fn on_connection_error(&self, _peer: SocketAddr, error: &ServerError) {
        let detail = match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source:?}"),
            None => error.to_string(),
        };
        self.0.conn_errors.lock().expect("lock").push(detail);
    }
}

/// A server-side proxy to a TCP upstream (like ztunnel's inbound): 503 if
/// the upstream cannot be reached, otherwise copy both ways.
pub struct ToUpstream {
    pub upstream: SocketAddr,
}

impl Handler for ToUpstream {
    async fn handle(&self, _request: InboundRequest) -> Decision {
        match TcpStream::connect(self.upstream).await {
            Ok(mut tcp) => Decision::accept(move |mut stream| async move {
                let _ = copy_bidirectional(&mut stream, &mut tcp).await;
            }),
            Err(_) => Decision::reject(Rejection::Unavailable),
        }
    }
}

/// Writes `data` and half-closes, then reads everything back.
pub async fn echo_round_trip<S>(stream: S, data: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let data_owned = data.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data_owned).await.expect("write");
        w.shutdown().await.expect("shutdown");
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.expect("read back");
    writer.await.expect("writer");
    back
}
