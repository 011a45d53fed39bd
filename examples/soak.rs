//! Soak: connection churn plus long-lived streams through two ztunnels for
//! a long time (30 minutes by default), sampling each ztunnel's resident
//! memory and open descriptors every minute; then the load stops and the
//! descriptors are sampled again. Verdicts: RSS flat over the last two
//! thirds of the run (max within 10 % of min), descriptors back to the
//! pre-load baseline (± 2) once the load is gone.
//!
//! Not a CI test (it takes half an hour): run it as root after
//! `cargo build --release -p ztunnel -p cni-node -p waypoint`:
//!
//! ```sh
//! cargo run --release -p ambit-examples --example soak -- --minutes 30
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambit_testbed::{DEFAULT_MESH, LocalMesh, rss_kib};
use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connection churn and long-lived streams through two ztunnels; RSS and
/// descriptors sampled over time.
#[derive(Debug, Parser)]
struct Args {
    /// How long the load runs.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60)]
    sample_secs: u64,
    /// Long-lived echo streams held for the whole run (a message each
    /// second on every one).
    #[arg(long, default_value_t = 32)]
    long_lived: usize,
    /// Concurrent churn clients (new connection, greeting, close; again).
    #[arg(long, default_value_t = 2)]
    churners: usize,
    /// New connections per second per churn client. Kept under the
    /// ephemeral-port budget: each closed connection holds its port in
    /// TIME_WAIT for 60 s (28k ports / 60 s ≈ 470 connections/s at most).
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// The ztunnel binary (default: beside this example, then $AMBIT_ZTUNNEL).
    #[arg(long)]
    ztunnel: Option<PathBuf>,
    /// Where the samples go as JSON.
    #[arg(long, default_value = "target/soak.json")]
    json: PathBuf,
}

/// One sample of both ztunnels.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    minute: f64,
    rss_kib: [u64; 2],
    fds: [usize; 2],
    churned: u64,
    churn_failed: u64,
    echoes: u64,
    echo_failed: u64,
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ambit_testbed::preflight()?;
    let bin = ambit_testbed::ztunnel_binary(args.ztunnel.clone())?;
    let mut mesh = LocalMesh::start(&bin, DEFAULT_MESH, |s| eprintln!("[soak] {s}"))?;
    let pids = mesh.ztunnel_pids();
    let pids = [pids[0], pids[1]];
    let sample_now = |minute: f64, c: &Counters| Sample {
        minute,
        rss_kib: pids.map(|p| rss_kib(p).unwrap_or(0)),
        fds: pids.map(open_fds),
        churned: c.churned.load(Ordering::Relaxed),
        churn_failed: c.churn_failed.load(Ordering::Relaxed),
        echoes: c.echoes.load(Ordering::Relaxed),
        echo_failed: c.echo_failed.load(Ordering::Relaxed),
    };
    let counters = Arc::new(Counters::default());
    let baseline = sample_now(0.0, &counters);
    println!(
        "baseline: rss {:?} KiB, fds {:?} (ztunnel a, b)",
        baseline.rss_kib, baseline.fds
    );

    // productpage-v1 on node b: every connection crosses both ztunnels.
    let to: SocketAddr = "10.244.1.3:9080".parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..args.churners {
        let (stop, c) = (stop.clone(), counters.clone());
        let every = Duration::from_secs(1) / args.rate.max(1);
        tasks.push(
            mesh.sleep()
                .spawn_async(move || churn(to, every, stop, c))?,
        );
    }
    let (stop_ll, c) = (stop.clone(), counters.clone());
    let n = args.long_lived;
    tasks.push(
        mesh.sleep()
            .spawn_async(move || long_lived(to, n, stop_ll, c))?,
    );

    let started = Instant::now();
    let total = Duration::from_secs(args.minutes * 60);
    let every = Duration::from_secs(args.sample_secs.max(1));
    let mut samples = Vec::new();
    println!(
        "{:>7} {:>10} {:>10} {:>6} {:>6} {:>9} {:>6} {:>9} {:>6}",
        "minute", "rss a KiB", "rss b KiB", "fds a", "fds b", "churned", "fail", "echoes", "fail"
    );
    while started.elapsed() < total {
        std::thread::sleep(every.min(total.saturating_sub(started.elapsed())));
        let s = sample_now(started.elapsed().as_secs_f64() / 60.0, &counters);
        println!(
            "{:>7.1} {:>10} {:>10} {:>6} {:>6} {:>9} {:>6} {:>9} {:>6}",
            s.minute,
            s.rss_kib[0],
            s.rss_kib[1],
            s.fds[0],
            s.fds[1],
            s.churned,
            s.churn_failed,
            s.echoes,
            s.echo_failed
        );
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.join();
    }
    // Connections close; the pools' idle connections are evicted.
    std::thread::sleep(Duration::from_secs(15));
    let after = sample_now(started.elapsed().as_secs_f64() / 60.0, &counters);

    // Verdicts.
    let tail_from = args.minutes as f64 / 3.0;
    let tail: Vec<&Sample> = samples.iter().filter(|s| s.minute >= tail_from).collect();
    let mut flat = [true; 2];
    let mut spread = [0.0f64; 2];
    for z in 0..2 {
        let min = tail.iter().map(|s| s.rss_kib[z]).min().unwrap_or(0) as f64;
        let max = tail.iter().map(|s| s.rss_kib[z]).max().unwrap_or(0) as f64;
        spread[z] = if min > 0.0 { (max - min) / min } else { 0.0 };
        flat[z] = min > 0.0 && spread[z] <= 0.10;
    }
    let fds_back = (0..2).all(|z| after.fds[z] <= baseline.fds[z] + 2);
    println!(
        "after the load: fds {:?} (baseline {:?}), rss {:?} KiB",
        after.fds, baseline.fds, after.rss_kib
    );
    println!(
        "RSS over the last {:.0} min: spread a {:.1} %, b {:.1} % -> {}",
        args.minutes as f64 - tail_from,
        spread[0] * 100.0,
        spread[1] * 100.0,
        if flat.iter().all(|f| *f) {
            "flat (≤ 10 %)"
        } else {
            "NOT flat"
        }
    );
    println!(
        "descriptors after the load: {}",
        if fds_back {
            "back to baseline"
        } else {
            "NOT back to baseline"
        }
    );
    let json = serde_json::json!({
        "minutes": args.minutes,
        "long_lived": args.long_lived,
        "churners": args.churners,
        "rate_per_churner": args.rate,
        "baseline": baseline,
        "samples": samples,
        "after": after,
        "rss_spread_last_two_thirds": spread,
        "rss_flat": flat,
        "fds_back_to_baseline": fds_back,
    });
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("JSON: {}", args.json.display());
    mesh.stop();
    Ok(())
}

#[derive(Debug, Default)]
struct Counters {
    churned: AtomicU64,
    churn_failed: AtomicU64,
    echoes: AtomicU64,
    echo_failed: AtomicU64,
}

/// New connections one after another (one per `every`), each reading the
/// greeting.
async fn churn(to: SocketAddr, every: Duration, stop: Arc<AtomicBool>, c: Arc<Counters>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let one = async {
            let mut s = tokio::net::TcpStream::connect(to).await?;
            greeting(&mut s).await
        };
        match tokio::time::timeout(Duration::from_secs(5), one).await {
            Ok(Ok(())) => c.churned.fetch_add(1, Ordering::Relaxed),
            _ => c.churn_failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

async fn greeting(s: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if b[0] == b'\n' {
            return Ok(());
        }
    }
}

/// `n` streams held open, each echoing 1 KiB every second; a stream that
/// fails is replaced.
async fn long_lived(to: SocketAddr, n: usize, stop: Arc<AtomicBool>, c: Arc<Counters>) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (stop, c) = (stop.clone(), c.clone());
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = tokio::net::TcpStream::connect(to).await else {
                    c.echo_failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                if greeting(&mut s).await.is_err() {
                    c.echo_failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let msg = vec![7u8; 1024];
                let mut back = vec![0u8; 1024];
                while !stop.load(Ordering::Relaxed) {
                    let ok = s.write_all(&msg).await.is_ok()
                        && s.read_exact(&mut back).await.is_ok()
                        && back == msg;
                    if !ok {
                        c.echo_failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    c.echoes.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}
