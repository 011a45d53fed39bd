//! Measures the compiled-in crypto provider over loopback TCP: full mTLS
//! handshakes per second (no resumption, as the mesh runs) and AES-GCM bulk
//! throughput on one TLS 1.3 stream, against plain TCP in the same run.
//!
//! ```sh
//! cargo run --release -p ambit-identity --no-default-features --features ring --example provider-bench
//! cargo run --release -p ambit-identity --no-default-features --features aws-lc-rs --example provider-bench
//! ```
//! Optional arguments: handshake count (default 1000), MiB to send (default 1024).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ambit_identity::{
    CertResolver, Identity, LocalCa, PROVIDER_NAME,
    tls::{self, placeholder_server_name},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Error = Box<dyn std::error::Error + Send + Sync>;

const CHUNK: usize = 64 * 1024;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let handshakes: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let mib: usize = args.next().map_or(Ok(1024), |s| s.parse())?;

    let ca = LocalCa::generate("cluster.local")?;
    let server_id: Identity = "spiffe://cluster.local/ns/bench/sa/server".parse()?;
    let client_id: Identity = "spiffe://cluster.local/ns/bench/sa/client".parse()?;
    let ttl = Duration::from_secs(3600);
    let server_cert = Arc::new(ca.issue_now(&server_id, ttl)?);
    let client_cert = Arc::new(ca.issue_now(&client_id, ttl)?);
    let roots = [ca.root().clone()];
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(
        CertResolver::fixed(server_cert),
        tls::root_store(&roots)?,
        "cluster.local",
    )?));
    let connector = TlsConnector::from(Arc::new(tls::client_config(
        CertResolver::fixed(client_cert),
        tls::root_store(&roots)?,
        vec![server_id],
    )?));

    println!("provider: {PROVIDER_NAME}");

    // Handshakes: sequential connect + full mTLS handshake + 1-byte echo.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hs_acceptor = acceptor.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = hs_acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut b = [0u8; 1];
                    if tls.read_exact(&mut b).await.is_ok() {
                        let _ = tls.write_all(&b).await;
                    }
                }
            });
        }
    });
    let start = Instant::now();
    for _ in 0..handshakes {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut tls = connector.connect(placeholder_server_name(), tcp).await?;
        tls.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "handshakes: {handshakes} in {secs:.2} s = {:.0} /s",
        handshakes as f64 / secs
    );

    // Bulk: plain TCP baseline, then TLS, each sending `mib` MiB one way.
    let bytes = mib * 1024 * 1024;
    let tcp_rate = bulk(bytes, None, None).await?;
    println!("bulk tcp:  {:.2} Gbit/s", tcp_rate);
    let tls_rate = bulk(bytes, Some(acceptor), Some(connector)).await?;
    println!(
        "bulk tls:  {:.2} Gbit/s ({:.0}% of tcp)",
        tls_rate,
        100.0 * tls_rate / tcp_rate
    );
    Ok(())
}

/// Sends `bytes` from client to server over one connection and returns the
/// rate in Gbit/s, measured at the receiver.
async fn bulk(
    bytes: usize,
    acceptor: Option<TlsAcceptor>,
    connector: Option<TlsConnector>,
) -> Result<f64, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        match acceptor {
            Some(a) => drain(a.accept(tcp).await?).await,
            None => drain(tcp).await,
        }
    });
    let tcp = TcpStream::connect(addr).await?;
    match connector {
        Some(c) => send(c.connect(placeholder_server_name(), tcp).await?, bytes).await?,
        None => send(tcp, bytes).await?,
    }
    let (got, elapsed) = receiver.await??;
    if got != bytes {
        return Err(format!("received {got} of {bytes} bytes").into());
    }
    Ok(got as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}

async fn send(mut s: impl AsyncWrite + Unpin, bytes: usize) -> Result<(), Error> {
    let buf = vec![0xa5u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        s.write_all(&buf[..n]).await?;
        left -= n;
    }
    s.shutdown().await?;
    Ok(())
}

/// Reads to EOF; the clock starts at the first byte.
async fn drain(mut s: impl AsyncRead + Unpin) -> Result<(usize, Duration), Error> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = s.read(&mut buf).await?;
    let start = Instant::now();
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, start.elapsed()));
        }
        total += n;
    }
}
