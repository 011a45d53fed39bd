//! Loopback benchmark: direct TCP vs TLS-only (the same mTLS configs) vs
//! HBONE, measured in the same run and reported as ratios to direct TCP.
//!
//! ```sh
//! cargo bench -p ambit-hbone --bench hbone            # full run
//! HBONE_BENCH_QUICK=1 cargo bench -p ambit-hbone      # smaller sizes
//! ```
//!
//! A plain `harness = false` runner rather than criterion: every figure is
//! a ratio against direct TCP taken in the same process and moment, which
//! criterion cannot express, and each measurement is the best of
//! [`ROUNDS`] runs to damp noise from other work on the machine.
//!
//! - single-stream throughput: one stream sends `BULK` bytes to a sink
//!   that answers one byte at EOF;
//! - 8-stream throughput: 8 concurrent streams (8 TCP/TLS connections;
//!   for HBONE, 8 streams on one pooled connection, as ztunnel does);
//! - latency: 1-byte request/response round trips on an open stream;
//! - new-connection rate: connect + 1-byte echo + close, sequentially (for
//!   HBONE a fresh pool each time, so every stream pays TCP+TLS+HTTP/2).

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use ambit_hbone::{
    Authority, Client, ClientConfig, ConnectRequest, Decision, InboundRequest, Server,
    ServerConfig, handler_fn,
};
use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig, tls::placeholder_server_name};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const ROUNDS: usize = 3;
const CHUNK: usize = 256 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// What a stream asks of the server with its first byte.
const ECHO: u8 = b'E';
const SINK: u8 = b'S';

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut mode = [0u8; 1];
    if s.read_exact(&mut mode).await.is_err() {
        return;
    }
    if mode[0] == ECHO {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    } else {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        let _ = s.write_all(b"k").await;
    }
    let _ = s.shutdown().await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Tls,
    Hbone,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "direct TCP",
            Self::Tls => "TLS only",
            Self::Hbone => "HBONE",
        }
    }
}

struct Setup {
    tcp: SocketAddr,
    tls: SocketAddr,
    hbone: SocketAddr,
    tls_client: Arc<rustls::ClientConfig>,
    manager: CertManager,
    client: Client,
    src: Identity,
    dst: Identity,
}

impl Setup {
    async fn new() -> Self {
        let ca = LocalCa::generate("cluster.local").expect("ca");
        let manager = CertManager::new(ca, ManagerConfig::default());
        let src: Identity = "spiffe://cluster.local/ns/default/sa/client"
            .parse()
            .expect("id");
        let dst: Identity = "spiffe://cluster.local/ns/default/sa/server"
            .parse()
            .expect("id");
        let server_tls = Arc::new(manager.server_config(&dst).await.expect("server tls"));
        let tls_client = Arc::new(
            manager
                .client_config(&src, vec![dst.clone()])
                .await
                .expect("client tls"),
        );

        let tcp_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tcp = tcp_l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = tcp_l.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve(s));
            }
        });

        let tls_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tls = tls_l.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(server_tls.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = tls_l.accept().await {
                let _ = s.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(s) = acceptor.accept(s).await {
                        serve(s).await;
                    }
                });
            }
        });

        let hbone_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hbone = hbone_l.local_addr().expect("addr");
        let handler = handler_fn(|_req: InboundRequest| async {
            Decision::accept(|stream| async move { serve(stream).await })
        });
        let server = Server::new(server_tls, ServerConfig::default(), handler);
        tokio::spawn(async move { server.run(hbone_l, std::future::pending()).await });

        let client = Client::new(ClientConfig::default(), manager.clone());
        Self {
            tcp,
            tls,
            hbone,
            tls_client,
            manager,
            client,
            src,
            dst,
        }
    }

    /// Opens a stream; for HBONE with `fresh`, on a pool of its own (so a
    /// new connection).
    async fn open(&self, kind: Kind, fresh: bool) -> BoxIo {
        match kind {
            Kind::Tcp => {
                let s = TcpStream::connect(self.tcp).await.expect("tcp");
                s.set_nodelay(true).expect("nodelay");
                Box::new(s)
            }
            Kind::Tls => {
                let s = TcpStream::connect(self.tls).await.expect("tcp");
                s.set_nodelay(true).expect("nodelay");
                let s = TlsConnector::from(self.tls_client.clone())
                    .connect(placeholder_server_name(), s)
                    .await
                    .expect("tls");
                Box::new(s)
            }
            Kind::Hbone => {
                let req = ConnectRequest::new(
                    self.src.clone(),
                    vec![self.dst.clone()],
                    self.hbone,
                    Authority::Addr("127.0.0.1:8080".parse().expect("addr")),
                );
                let stream = if fresh {
                    Client::new(ClientConfig::default(), self.manager.clone())
                        .connect(req)
                        .await
                } else {
                    self.client.connect(req).await
                };
                Box::new(stream.expect("hbone"))
            }
        }
    }
}

/// Sends `bytes` to the sink and waits for its answer.
async fn bulk(mut s: BoxIo, bytes: usize) {
    let chunk = vec![0x5au8; CHUNK];
    s.write_all(&[SINK]).await.expect("mode");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        s.write_all(&chunk[..n]).await.expect("write");
        left -= n;
    }
    s.shutdown().await.expect("shutdown");
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.expect("ack");
}

async fn best<F, Fut>(mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        best = best.min(f().await);
    }
    best
}

async fn single_stream(setup: &Setup, kind: Kind, bytes: usize) -> f64 {
    let t = best(|| async {
        let s = setup.open(kind, false).await;
        let start = Instant::now();
        bulk(s, bytes).await;
        start.elapsed()
    })
    .await;
    bytes as f64 / t.as_secs_f64()
}

async fn multi_stream(setup: &Setup, kind: Kind, streams: usize, bytes: usize) -> f64 {
    let t = best(|| async {
        let mut opened = Vec::new();
        for _ in 0..streams {
            opened.push(setup.open(kind, false).await);
        }
        let start = Instant::now();
        let tasks: Vec<_> = opened
            .into_iter()
            .map(|s| tokio::spawn(bulk(s, bytes)))
            .collect();
        for t in tasks {
            t.await.expect("stream");
        }
        start.elapsed()
    })
    .await;
    (streams * bytes) as f64 / t.as_secs_f64()
}

async fn latency(setup: &Setup, kind: Kind, round_trips: usize) -> Duration {
    best(|| async {
        let mut s = setup.open(kind, false).await;
        s.write_all(&[ECHO]).await.expect("mode");
        let mut b = [0u8; 1];
        for _ in 0..100 {
            s.write_all(b"x").await.expect("write");
            s.read_exact(&mut b).await.expect("read");
        }
        let start = Instant::now();
        for _ in 0..round_trips {
            s.write_all(b"x").await.expect("write");
            s.read_exact(&mut b).await.expect("read");
        }
        start.elapsed() / round_trips as u32
    })
    .await
}

async fn connection_rate(setup: &Setup, kind: Kind, conns: usize) -> f64 {
    let t = best(|| async {
        let start = Instant::now();
        for _ in 0..conns {
            let mut s = setup.open(kind, true).await;
            s.write_all(&[ECHO, b'x']).await.expect("write");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("read");
            s.shutdown().await.expect("shutdown");
        }
        start.elapsed()
    })
    .await;
    conns as f64 / t.as_secs_f64()
}

type Row = (String, [f64; 3], bool);

fn gbps(bytes_per_sec: f64) -> String {
    format!("{:.2} Gbit/s", bytes_per_sec * 8.0 / 1e9)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let quick = std::env::var_os("HBONE_BENCH_QUICK").is_some();
    let (bulk_bytes, multi_bytes, rtts, conns) = if quick {
        (64 << 20, 16 << 20, 2_000, 50)
    } else {
        (512 << 20, 128 << 20, 10_000, 200)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let setup = Setup::new().await;
        let kinds = [Kind::Tcp, Kind::Tls, Kind::Hbone];
        let mut rows: Vec<Row> = Vec::new();
        let run = |name: &str| eprintln!("measuring {name}...");

        run("single-stream throughput");
        let mut v = [0.0; 3];
        for (i, k) in kinds.iter().enumerate() {
            v[i] = single_stream(&setup, *k, bulk_bytes).await;
        }
        rows.push(("single-stream throughput".into(), v, true));

        run("8-stream throughput");
        let mut v = [0.0; 3];
        for (i, k) in kinds.iter().enumerate() {
            v[i] = multi_stream(&setup, *k, 8, multi_bytes).await;
        }
        rows.push(("8-stream throughput".into(), v, true));

        run("1-byte echo latency");
        let mut v = [0.0; 3];
        for (i, k) in kinds.iter().enumerate() {
            v[i] = latency(&setup, *k, rtts).await.as_secs_f64() * 1e6;
        }
        rows.push(("1-byte echo latency (µs)".into(), v, false));

        run("new-connection rate");
        let mut v = [0.0; 3];
        for (i, k) in kinds.iter().enumerate() {
            v[i] = connection_rate(&setup, *k, conns).await;
        }
        rows.push(("new connections per second".into(), v, false));

        println!();
        println!(
            "| measurement | {} | {} | {} | TLS / TCP | HBONE / TCP |",
            kinds[0].name(),
            kinds[1].name(),
            kinds[2].name()
        );
        println!("|---|---|---|---|---|---|");
        for (name, v, throughput) in rows {
            let show = |x: f64| {
                if throughput {
                    gbps(x)
                } else if name.contains("latency") {
                    format!("{x:.1} µs")
                } else {
                    format!("{x:.0}/s")
                }
            };
            println!(
                "| {name} | {} | {} | {} | {:.2}x | {:.2}x |",
                show(v[0]),
                show(v[1]),
                show(v[2]),
                v[1] / v[0],
                v[2] / v[0]
            );
        }
    });
}
