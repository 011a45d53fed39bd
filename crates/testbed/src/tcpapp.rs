//! The TCP side of the local mesh: the request/response app the
//! `productpage` pods and the no-mesh baseline server run, and the clients
//! that measure through it from a pod (round trips, bulk throughput,
//! connection rate, idle connections).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_netns::NsTask;
use ambit_netns::harness::Pod;
use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::Figures;
use crate::serve::{echo, serve_in_pod};

/// A request/response server: each connection gets a greeting line
/// `<name> saw source <peer ip>` (who answered, and whether the original
/// source survived the mesh), then an echo of whatever it sends until EOF.
pub fn app_server(pod: &Pod, port: u16, name: String) -> anyhow::Result<NsTask<()>> {
    let name = Arc::new(name);
    serve_in_pod(pod, port, move |mut s, peer| {
        let name = name.clone();
        async move {
            let _ = s.set_nodelay(true);
            // Greeting: who answered and who it saw (the original source?).
            let hello = format!("{name} saw source {}\n", peer.ip());
            if s.write_all(hello.as_bytes()).await.is_err() {
                return;
            }
            echo(&mut s, 64 * 1024).await;
        }
    })
}

/// Lets every pod of `cluster` reuse TIME_WAIT ports for new connections
/// and use the whole ephemeral range (`tcp_tw_reuse=1`,
/// `ip_local_port_range=1024 65535`): a benchmark client making thousands
/// of short connections per round would otherwise run out of ports and slow
/// down in later rounds, whichever path it measures.
pub fn reuse_ports(cluster: &ambit_netns::harness::Cluster) -> anyhow::Result<()> {
    for pod in cluster.nodes().iter().flat_map(|n| n.pods()) {
        for (key, value) in [
            ("net/ipv4/tcp_tw_reuse", "1"),
            ("net/ipv4/ip_local_port_range", "1024 65535"),
        ] {
            pod.ns()
                .set_sysctl(key, value)
                .map_err(|e| anyhow::anyhow!("{key} in {}: {e}", pod.name()))?;
        }
    }
    Ok(())
}

/// From `pod`: `n` new connections to `to`, each reading the greeting and
/// echoing 1 KiB (latency per connection), then one bulk transfer of
/// `bulk` bytes (throughput).
pub fn drive(pod: &Pod, to: SocketAddr, n: usize, bulk: usize) -> anyhow::Result<Figures> {
    let task = pod.spawn_async(move || async move {
        let mut f = Figures::default();
        let mut lat = Vec::with_capacity(n);
        let msg = vec![7u8; 1024];
        for _ in 0..n {
            f.requests += 1;
            let t = Instant::now();
            let r: std::io::Result<String> = async {
                let mut s = tokio::net::TcpStream::connect(to).await?;
                s.set_nodelay(true)?;
                let greeting = read_line(&mut s).await?;
                s.write_all(&msg).await?;
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).await?;
                if back != msg {
                    return Err(std::io::Error::other("echo differs"));
                }
                Ok(greeting)
            }
            .await;
            match tokio::time::timeout(Duration::from_secs(5), async { r }).await {
                Ok(Ok(g)) => {
                    lat.push(t.elapsed());
                    if !f.greetings.contains(&g) {
                        f.greetings.push(g);
                    }
                }
                _ => f.errors += 1,
            }
        }
        lat.sort();
        if !lat.is_empty() {
            f.p50 = lat[lat.len() / 2];
            f.p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
        }
        if bulk > 0 {
            let t = Instant::now();
            let r: std::io::Result<()> = async {
                let s = tokio::net::TcpStream::connect(to).await?;
                let (mut rd, mut wr) = s.into_split();
                let _ = read_line(&mut rd).await?;
                let writer = tokio::spawn(async move {
                    let chunk = vec![1u8; 256 * 1024];
                    let mut left = bulk;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        wr.write_all(&chunk[..n]).await?;
                        left -= n;
                    }
                    wr.shutdown().await
                });
                let mut got = 0usize;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let k = rd.read(&mut buf).await?;
                    if k == 0 {
                        break;
                    }
                    got += k;
                }
                writer.await.map_err(std::io::Error::other)??;
                if got != bulk {
                    return Err(std::io::Error::other(format!(
                        "echoed {got} of {bulk} bytes"
                    )));
                }
                Ok(())
            }
            .await;
            match r {
                Ok(()) => f.mbps = bulk as f64 / t.elapsed().as_secs_f64() / 1e6,
                Err(_) => f.errors += 1,
            }
        }
        f
    })?;
    Ok(task.join())
}

async fn read_line<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if r.read(&mut b).await? == 0 {
            return Err(std::io::Error::other("closed before greeting"));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 256 {
            return Err(std::io::Error::other("greeting too long"));
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// 1-byte request/response round trips on one open connection: sorted.
pub fn rtt_1byte(pod: &Pod, to: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    let task = pod.spawn_async(move || async move {
        let mut s = tokio::net::TcpStream::connect(to).await?;
        s.set_nodelay(true)?;
        read_line(&mut s).await?;
        let mut v = Vec::with_capacity(n);
        let mut b = [0u8; 1];
        for _ in 0..n {
            let t = Instant::now();
            s.write_all(b"x").await?;
            s.read_exact(&mut b).await?;
            v.push(t.elapsed());
        }
        v.sort();
        std::io::Result::Ok(v)
    })?;
    Ok(task.join()?)
}

/// New connections per second, each with a greeting read and a 1-byte echo,
/// for `secs` seconds from one client.
pub fn conn_rate(pod: &Pod, to: SocketAddr, secs: f64) -> anyhow::Result<f64> {
    let task = pod.spawn_async(move || async move {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            let mut s = tokio::net::TcpStream::connect(to).await?;
            s.set_nodelay(true)?;
            read_line(&mut s).await?;
            s.write_all(b"x").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            n += 1;
        }
        std::io::Result::Ok(n as f64 / start.elapsed().as_secs_f64())
    })?;
    Ok(task.join()?)
}

/// Opens `n` connections from `pod` to `to` that stay idle until the
/// returned sender is dropped.
pub fn hold_idle(
    pod: &Pod,
    to: SocketAddr,
    n: usize,
) -> anyhow::Result<(std::sync::mpsc::Sender<()>, usize)> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (otx, orx) = std::sync::mpsc::channel::<usize>();
    let task = pod.spawn_async(move || async move {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            if let Ok(mut s) = tokio::net::TcpStream::connect(to).await
                && read_line(&mut s).await.is_ok()
            {
                conns.push(s);
            }
        }
        let _ = otx.send(conns.len());
        // Idle until told to stop (this thread runs only this task).
        let _ = rx.recv();
        drop(conns);
    })?;
    std::mem::forget(task);
    let opened = orx
        .recv_timeout(Duration::from_secs(60))
        .context("opening idle connections")?;
    Ok((tx, opened))
}

/// Counts of a [`churn`] run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Churn {
    /// Connections that got their greeting.
    pub ok: u64,
    /// Connections refused, reset, or closed before the greeting.
    pub failed: u64,
    /// The first failure, for the report.
    pub first_failure: Option<String>,
}

/// From `pod`: new connections to `to`, one after another (each reads the
/// app's greeting line), until `stop` is set. Returns the counts.
pub fn churn(
    pod: &Pod,
    to: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<NsTask<Churn>> {
    use std::sync::atomic::Ordering;
    Ok(pod.spawn_async(move || async move {
        let mut c = Churn::default();
        while !stop.load(Ordering::Relaxed) {
            let greeted = async {
                let mut s = tokio::net::TcpStream::connect(to).await?;
                let mut b = [0u8; 1];
                loop {
                    match s.read(&mut b).await? {
                        0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                        _ if b[0] == b'\n' => return Ok::<_, std::io::Error>(()),
                        _ => {}
                    }
                }
            };
            match tokio::time::timeout(Duration::from_secs(5), greeted).await {
                Ok(Ok(())) => c.ok += 1,
                other => {
                    c.failed += 1;
                    if c.first_failure.is_none() {
                        c.first_failure = Some(match other {
                            Ok(Err(e)) => format!("after {} ok: {e}", c.ok),
                            _ => format!("after {} ok: no greeting within 5 s", c.ok),
                        });
                    }
                }
            }
        }
        c
    })?)
}
