//! An HBONE echo server and a client that sends a file through it.
//!
//! ```sh
//! cargo run --release -p ambit-hbone --example hbone-echo -- [FILE]
//! ```
//!
//! Without FILE, 256 MiB of generated data are sent. Both ends run in
//! this process on loopback, with certificates from an in-process CA:
//! the server echoes each CONNECT stream back until the client's FIN;
//! the client checks that what came back is what it sent (length and
//! SHA-256) and prints the throughput.

use std::{sync::Arc, time::Instant};

use ambit_hbone::{
    Authority, Client, ClientConfig, ConnectRequest, Decision, InboundRequest, Server,
    ServerConfig, handler_fn,
};
use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig};
use aws_lc_rs::digest::{Context, SHA256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const GENERATED: usize = 256 << 20;
const CHUNK: usize = 256 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let data: Vec<u8> = match std::env::args_os().nth(1) {
        Some(path) => std::fs::read(&path)?,
        None => (0..GENERATED).map(|i| (i % 251) as u8).collect(),
    };

    let ca = LocalCa::generate("cluster.local")?;
    let manager = CertManager::new(ca, ManagerConfig::default());
    let server_id: Identity = "spiffe://cluster.local/ns/default/sa/echo".parse()?;
    let client_id: Identity = "spiffe://cluster.local/ns/default/sa/sender".parse()?;

    // The echo server.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let tls = Arc::new(manager.server_config(&server_id).await?);
    let handler = handler_fn(|request: InboundRequest| async move {
        println!(
            "server: CONNECT {} from {} ({})",
            request.authority, request.peer_identity, request.peer_addr
        );
        Decision::accept(|stream| async move {
            let (mut r, mut w) = tokio::io::split(stream);
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        })
    });
    let server = Server::new(tls, ServerConfig::default(), handler);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(async move {
        server
            .run(listener, async move {
                let _ = stop_rx.await;
            })
            .await;
    });
    println!("server: listening on {addr} as {server_id}");

    // The client.
    let client = Client::new(ClientConfig::default(), manager.clone());
    let started = Instant::now();
    let stream = client
        .connect(ConnectRequest::new(
            client_id,
            vec![server_id],
            addr,
            Authority::Addr("127.0.0.1:7".parse()?),
        ))
        .await?;
    let (mut r, mut w) = tokio::io::split(stream);
    let to_send = Arc::new(data);
    let sending = to_send.clone();
    let writer = tokio::spawn(async move {
        for chunk in sending.chunks(CHUNK) {
            w.write_all(chunk).await?;
        }
        w.shutdown().await
    });
    let mut digest = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0usize;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        received += n;
    }
    writer.await??;
    let elapsed = started.elapsed().as_secs_f64();

    let mut expected = Context::new(&SHA256);
    expected.update(&to_send);
    let ok = received == to_send.len() && digest.finish().as_ref() == expected.finish().as_ref();
    let mib = to_send.len() as f64 / (1 << 20) as f64;
    println!(
        "client: sent {mib:.1} MiB and got it back in {elapsed:.3} s: {:.0} MiB/s each way ({:.2} Gbit/s)",
        mib / elapsed,
        mib * 8.0 * 1.048_576 / 1000.0 / elapsed
    );
    println!(
        "client: echo {}",
        if ok {
            "verified (length and sha-256)"
        } else {
            "MISMATCH"
        }
    );
    let _ = stop_tx.send(());
    server_task.await?;
    if ok {
        Ok(())
    } else {
        Err("echo mismatch".into())
    }
}
