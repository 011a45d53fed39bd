//! Builds a two-node cluster of network namespaces, prints its topology,
//! echoes 1 MiB from a pod on node 0 to a pod on node 1 across the underlay,
//! and tears everything down. Run as root:
//!
//! ```text
//! cargo run -p ambit-examples --example cluster-demo
//! ```
//!
//! This is the project's main job until the local mesh lands.

use std::net::SocketAddr;
use std::time::Instant;

use ambit_netns::harness::Cluster;
use anyhow::{Context, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEN: usize = 1 << 20;

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = Cluster::builder()
        .nodes(2)
        .pods_per_node(2)
        .build()
        .context("building the namespace cluster (are you root, is iproute2 installed?)")?;
    println!("built in {:?}:\n{}", started.elapsed(), cluster.describe());

    let (a, b) = (cluster.pod(0, 0), cluster.pod(1, 1));
    let addr = SocketAddr::from((b.ip(), 7000));
    let listener = b.ns().tcp_listener(addr)?;
    let server = b.spawn_async(move || async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (mut conn, peer) = listener.accept().await?;
        let (mut r, mut w) = conn.split();
        let n = tokio::io::copy(&mut r, &mut w).await?;
        w.shutdown().await?;
        anyhow::Ok((peer, n))
    })?;

    let payload: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let t = Instant::now();
    let client = a.spawn_async(move || async move {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        let (mut r, mut w) = conn.split();
        let mut got = Vec::with_capacity(LEN);
        let write = async {
            w.write_all(&payload).await?;
            w.shutdown().await
        };
        let (wr, rd) = tokio::join!(write, r.read_to_end(&mut got));
        wr?;
        rd?;
        anyhow::Ok(got)
    })?;
    let got = client.join()?;
    let elapsed = t.elapsed();
    let (peer, echoed) = server.join()?;
    ensure!(got == sent, "echoed bytes differ from what was sent");
    println!(
        "echo: pod {} -> {} ({} bytes each way, {:?}); server saw client {peer}, echoed {echoed} bytes intact",
        a.ip(),
        addr,
        LEN,
        elapsed
    );
    drop(cluster);
    println!("cleaned up: every namespace and link removed");
    Ok(())
}
