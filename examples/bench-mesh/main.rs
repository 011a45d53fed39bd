//! The mesh benchmark: every figure through ztunnel against the same
//! traffic without it, in the same run, in alternating rounds.
//!
//! Default (loopback): a private network namespace (only `lo`) holds the
//! real `ztunnel` binary in local mode — `LOCAL_XDS_PATH` with one workload
//! on 127.0.0.1, a CA generated here (`LOCAL_CA_CERT`/`LOCAL_CA_KEY`),
//! `UNSTABLE_ENABLE_SOCKS5=true` — an echo server and a bulk server. Meshed
//! clients go through SOCKS5 on 127.0.0.1:15080; the destination is the
//! local workload, so each connection is outbound → HBONE (mTLS, HTTP/2)
//! to 127.0.0.1:15008 → inbound authorization → the server: both ends of
//! the tunnel run in the one ztunnel process. Direct clients connect to
//! the servers themselves.
//!
//! `--capture`: the same measurements over the two-node capture topology of
//! `ambit_testbed` (client pod → captured → ztunnel A → HBONE →
//! ztunnel B → server pod; direct: a pod outside the mesh to a server
//! outside the mesh on the other node). There the servers are the local
//! mesh's apps (a greeting line, then echo), so bulk is an echo: the
//! figure counts the bytes sent once.
//!
//! `--inpod`: the capture topology in in-pod mode (rules in each pod,
//! ztunnel's listeners inside the pods).
//!
//! Memory (meshed only, after the rounds): ztunnel RSS with 1,000 idle
//! proxied connections open against RSS before, per connection and per
//! tunnel end; and RSS with 10,000 concurrent streams open. Every figure is
//! printed beside the goal it is held against (issue 21).
//!
//! ```text
//! cargo build --release -p ztunnel
//! cargo run --release -p ambit-examples --example bench-mesh -- [--capture|--inpod] [--json FILE]
//! ```
//! Run as root (namespaces; it raises its open-files limit to hold 10,000
//! connections through the mesh). Prints a table and writes the same as
//! JSON. `ZTUNNEL_WORKER_THREADS` and `TOKIO_*` in the environment reach
//! every ztunnel it starts, in all three modes (runtime experiments).

mod goals;
mod memory;
mod report;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambit_netns::NetNs;
use ambit_testbed::serve::{accept_each, echo};
use ambit_testbed::{
    Binaries, DIRECT_SERVER, LocalMesh, Mode, Options, percentile, rss_kib, tcpapp,
};
use anyhow::{Context, bail};
use clap::Parser;

use report::{Results, print_table};

/// Mesh benchmark: ztunnel vs direct TCP, same run, alternating rounds.
#[derive(Debug, Parser)]
struct Args {
    /// Use the two-node netns capture topology instead of loopback SOCKS5.
    #[arg(long)]
    capture: bool,
    /// The capture topology in in-pod mode (implies `--capture`).
    #[arg(long)]
    inpod: bool,
    /// Idle connections held for the per-connection memory figure.
    #[arg(long, default_value_t = 1000)]
    idle_conns: usize,
    /// Concurrent streams held for the many-streams memory figure (0: skip).
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench-mesh.json")]
    json: PathBuf,
    /// Rounds of each measurement, direct and meshed alternating.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Bytes per bulk round, MiB.
    #[arg(long, default_value_t = 1024)]
    bulk_mib: usize,
    /// 1-byte round trips per round.
    #[arg(long, default_value_t = 5000)]
    round_trips: usize,
    /// Seconds per connection-rate round.
    #[arg(long, default_value_t = 1.5)]
    conn_secs: f64,
    /// The ztunnel binary (default: next to this example's directory,
    /// i.e. target/release/ztunnel; or $AMBIT_ZTUNNEL).
    #[arg(long)]
    ztunnel: Option<PathBuf>,
}

/// The loopback servers' ports.
const ECHO_PORT: u16 = 7000;
const BULK_PORT: u16 = 7001;
const SOCKS: &str = "127.0.0.1:15080";

/// The one workload of the loopback mesh.
const LOOPBACK_MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/bench
  name: bench
  namespace: default
  serviceAccount: bench
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: local
"#;

/// How clients reach the servers (direct or meshed).
trait Client {
    /// One connection, `bytes` one way; MB/s.
    fn bulk(&self, bytes: u64) -> anyhow::Result<f64>;
    /// `n` 1-byte round trips on one open connection, sorted, µs.
    fn rtt(&self, n: usize) -> anyhow::Result<Vec<f64>>;
    /// New connections per second with a 1-byte echo each, from
    /// `threads` clients for `secs`.
    fn conn_rate(&self, secs: f64, threads: usize) -> anyhow::Result<f64>;
    /// Opens `n` connections (each echoes a byte or reads the greeting,
    /// so its stream is set up) and keeps them open until the returned
    /// value is dropped.
    fn hold(&self, n: usize) -> anyhow::Result<Box<dyn std::any::Any>>;
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ambit_testbed::preflight()?;
    raise_open_files();
    let bin = ambit_testbed::ztunnel_binary(args.ztunnel.clone())?;
    let results = if args.capture || args.inpod {
        run_capture(&args, &bin)?
    } else {
        run_loopback(&args, &bin)?
    };
    print_table(&results, &args);
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&results.to_json(&args))?,
    )
    .with_context(|| format!("writing {}", args.json.display()))?;
    println!("JSON: {}", args.json.display());
    Ok(())
}

/// Enough descriptors for the many-streams figure: client and server
/// sockets in this process, and ztunnel (which inherits the limit) two
/// per connection. As root the hard limit may be raised too.
fn raise_open_files() {
    use nix::sys::resource::{Resource, setrlimit};
    const WANT: u64 = 65_536;
    if setrlimit(Resource::RLIMIT_NOFILE, WANT, WANT).is_err() {
        ambit_app::raise_open_files_limit();
    }
}

/// This process's open-files limit (ztunnel inherits it).
fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// Runs every measurement, alternating direct and meshed rounds; samples
/// the ztunnel processes' memory and CPU around the meshed bulk rounds.
fn measure(
    args: &Args,
    mode: &'static str,
    direct: &dyn Client,
    meshed: &dyn Client,
    pids: &[u32],
) -> anyhow::Result<Results> {
    let mut r = Results {
        mode,
        ..Results::default()
    };
    std::thread::sleep(Duration::from_millis(300));
    r.rss_idle_kib = pids.iter().filter_map(|p| rss_kib(*p)).sum();
    let bytes = (args.bulk_mib as u64) << 20;
    // Warm up: certificates, pooled HBONE connection, caches.
    meshed.rtt(100)?;
    direct.rtt(100)?;
    for round in 0..args.rounds {
        eprintln!("[bench] round {}/{}", round + 1, args.rounds);
        r.bulk.0.push(direct.bulk(bytes)?);
        let cpu0 = cpu_seconds(pids);
        let sampler = RssSampler::start(pids.to_vec());
        r.bulk.1.push(meshed.bulk(bytes)?);
        r.rss_bulk_kib = r.rss_bulk_kib.max(sampler.stop());
        let cpu = cpu_seconds(pids) - cpu0;
        r.cpu_s_per_gb.push(cpu / (bytes as f64 / 1e9));

        let d = direct.rtt(args.round_trips)?;
        let m = meshed.rtt(args.round_trips)?;
        r.rtt_p50.0.push(percentile(&d, 50));
        r.rtt_p99.0.push(percentile(&d, 99));
        r.rtt_p50.1.push(percentile(&m, 50));
        r.rtt_p99.1.push(percentile(&m, 99));

        r.conn_seq.0.push(direct.conn_rate(args.conn_secs, 1)?);
        r.conn_seq.1.push(meshed.conn_rate(args.conn_secs, 1)?);
        r.conn_par.0.push(direct.conn_rate(args.conn_secs, 4)?);
        let (cpu0, t) = (cpu_seconds(pids), Instant::now());
        let rate = meshed.conn_rate(args.conn_secs, 4)?;
        let conns = rate * t.elapsed().as_secs_f64();
        r.conn_par.1.push(rate);
        r.cpu_us_per_conn
            .push((cpu_seconds(pids) - cpu0) * 1e6 / conns.max(1.0));
    }
    r.procs = pids.len();
    if args.idle_conns > 0 && args.streams > 0 {
        eprintln!(
            "[bench] memory: {} idle connections, then {} concurrent streams",
            args.idle_conns, args.streams
        );
        let fit = (open_files_limit().saturating_sub(1000) / 2) as usize;
        r.memory = memory::measure(meshed, pids, 2.0, args.idle_conns, args.streams, fit)?;
    }
    Ok(r)
}

/// utime + stime of the processes, seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let tick = clock_ticks();
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may contain spaces).
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest[0] is field 3 (state); utime is field 14, stime 15.
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / tick)
        })
        .sum()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak RSS of some processes, sampled every 20 ms until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now: u64 = pids.iter().filter_map(|p| rss_kib(*p)).sum();
                p.fetch_max(now, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------- loopback

/// A client of the loopback servers, in the benchmark's namespace:
/// directly, or through SOCKS5 (greeting, request and first bytes sent in
/// one write, as optimistic SOCKS clients do).
struct Loopback {
    ns: Arc<NetNs>,
    socks: bool,
}

impl Loopback {
    /// A connection to `port` on 127.0.0.1 (call on a thread in the netns).
    fn open(&self, port: u16, first: &[u8]) -> std::io::Result<TcpStream> {
        let dst: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        if !self.socks {
            let mut s = TcpStream::connect(dst)?;
            s.set_nodelay(true)?;
            if !first.is_empty() {
                s.write_all(first)?;
            }
            return Ok(s);
        }
        let mut s = TcpStream::connect(SOCKS)?;
        s.set_nodelay(true)?;
        let mut hello = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1];
        hello.extend_from_slice(&port.to_be_bytes());
        hello.extend_from_slice(first);
        s.write_all(&hello)?;
        let mut reply = [0u8; 12];
        s.read_exact(&mut reply)?;
        if reply[..2] != [5, 0] || reply[3] != 0 {
            return Err(std::io::Error::other(format!(
                "socks5 refused: {:02x?}",
                &reply
            )));
        }
        Ok(s)
    }

    fn in_ns<T: Send>(&self, f: impl FnOnce() -> std::io::Result<T> + Send) -> anyhow::Result<T> {
        Ok(self.ns.run(f)??)
    }
}

impl Client for Loopback {
    fn bulk(&self, bytes: u64) -> anyhow::Result<f64> {
        self.in_ns(|| {
            let t = Instant::now();
            let mut s = self.open(BULK_PORT, &[])?;
            let chunk = vec![0x5au8; 256 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                s.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            s.shutdown(Shutdown::Write)?;
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack)?;
            let got = u64::from_be_bytes(ack);
            if got != bytes {
                return Err(std::io::Error::other(format!(
                    "bulk server got {got} of {bytes}"
                )));
            }
            Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e6)
        })
    }

    fn rtt(&self, n: usize) -> anyhow::Result<Vec<f64>> {
        self.in_ns(|| {
            let mut s = self.open(ECHO_PORT, &[])?;
            let mut v = Vec::with_capacity(n);
            let mut b = [0u8; 1];
            for _ in 0..n {
                let t = Instant::now();
                s.write_all(b"x")?;
                s.read_exact(&mut b)?;
                v.push(t.elapsed().as_secs_f64() * 1e6);
            }
            v.sort_by(f64::total_cmp);
            Ok(v)
        })
    }

    fn conn_rate(&self, secs: f64, threads: usize) -> anyhow::Result<f64> {
        self.in_ns(|| {
            let start = Instant::now();
            let total: std::io::Result<u64> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut n = 0u64;
                            while start.elapsed().as_secs_f64() < secs {
                                let mut s = self.open(ECHO_PORT, b"x")?;
                                let mut b = [0u8; 1];
                                s.read_exact(&mut b)?;
                                n += 1;
                            }
                            Ok::<u64, std::io::Error>(n)
                        })
                    })
                    .collect();
                let mut total = 0;
                for h in handles {
                    total += h
                        .join()
                        .map_err(|_| std::io::Error::other("client thread panicked"))??;
                }
                Ok(total)
            });
            Ok(total? as f64 / start.elapsed().as_secs_f64())
        })
    }

    fn hold(&self, n: usize) -> anyhow::Result<Box<dyn std::any::Any>> {
        self.hold_conns(n)
    }
}

impl Loopback {
    fn hold_conns(&self, n: usize) -> anyhow::Result<Box<dyn std::any::Any>> {
        let conns = self.in_ns(|| {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let mut s = self.open(ECHO_PORT, b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                v.push(s);
            }
            Ok(v)
        })?;
        Ok(Box::new(conns))
    }
}

/// Kills and reaps a child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_loopback(args: &Args, bin: &Path) -> anyhow::Result<Results> {
    let ns = Arc::new(NetNs::create_anonymous().context("creating a network namespace")?);
    let lo = ns.output(Command::new("ip").args(["link", "set", "lo", "up"]))?;
    if !lo.status.success() {
        bail!("ip link set lo up: {}", String::from_utf8_lossy(&lo.stderr));
    }
    // Connection-rate rounds open tens of thousands of connections (two
    // ports each when meshed): without these, a round can start with the
    // ephemeral ports still in TIME_WAIT from the one before and measure
    // the kernel's port search instead of the proxy.
    ns.set_sysctl("net/ipv4/ip_local_port_range", "1024 65535")?;
    ns.set_sysctl("net/ipv4/tcp_tw_reuse", "1")?;
    let dir = std::env::temp_dir().join(format!("ambit-bench-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let ca = ambit_identity::LocalCa::generate("cluster.local")?;
    std::fs::write(dir.join("ca.pem"), ca.root_pem())?;
    std::fs::write(dir.join("ca-key.pem"), ca.key_pem())?;
    std::fs::write(dir.join("mesh.yaml"), LOOPBACK_MESH)?;
    let log = std::fs::File::create(dir.join("ztunnel.log"))?;
    eprintln!(
        "[bench] starting {} in a private namespace (log {})",
        bin.display(),
        dir.join("ztunnel.log").display()
    );
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NODE_NAME", "local")
        .env("LOCAL_XDS_PATH", dir.join("mesh.yaml"))
        .env("LOCAL_CA_CERT", dir.join("ca.pem"))
        .env("LOCAL_CA_KEY", dir.join("ca-key.pem"))
        .env("UNSTABLE_ENABLE_SOCKS5", "true")
        .env("ZTUNNEL_LISTEN_IP", "127.0.0.1")
        .env("ZTUNNEL_SPOOF_SOURCE", "false")
        .env("DRAIN_DURATION", "1")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null());
    cmd.envs(ambit_testbed::runtime_env());
    let mut zt = Child(ns.spawn_command(&mut cmd)?);
    let pid = zt.0.id();
    let _servers = ns.spawn_async(|| async {
        let (Ok(echo), Ok(bulk)) = (
            tokio::net::TcpListener::bind(("127.0.0.1", ECHO_PORT)).await,
            tokio::net::TcpListener::bind(("127.0.0.1", BULK_PORT)).await,
        ) else {
            eprintln!("[bench] cannot bind the servers");
            return;
        };
        tokio::join!(serve_echo(echo), serve_bulk(bulk));
    })?;
    wait_ready(&ns, &mut zt)?;
    let direct = Loopback {
        ns: ns.clone(),
        socks: false,
    };
    let meshed = Loopback {
        ns: ns.clone(),
        socks: true,
    };
    let r = measure(
        args,
        "loopback: SOCKS5 → ztunnel → HBONE → same ztunnel → server",
        &direct,
        &meshed,
        &[pid],
    );
    drop(zt);
    r
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if std::env::var_os("AMBIT_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn wait_ready(ns: &NetNs, zt: &mut Child) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(status)) = zt.0.try_wait() {
            bail!("ztunnel exited: {status} (AMBIT_KEEP_LOGS=1 keeps its log)");
        }
        let ok = ns.run(|| {
            let mut s = TcpStream::connect("127.0.0.1:15021").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            r.starts_with("HTTP/1.1 200").then_some(())
        })?;
        if ok.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("ztunnel not ready after 20 s")
}

async fn serve_echo(l: tokio::net::TcpListener) {
    accept_each(l, |mut s, _| async move {
        let _ = s.set_nodelay(true);
        echo(&mut s, 16 * 1024).await;
    })
    .await;
}

/// Reads to EOF and answers the byte count (8 bytes, big endian).
async fn serve_bulk(l: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    accept_each(l, |mut s, _| async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(_) => return,
            }
        }
        let _ = s.write_all(&got.to_be_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await;
}

// ----------------------------------------------------------------- capture

/// A client pod of the local mesh and the server it talks to.
struct Captured<'a> {
    pod: &'a ambit_netns::harness::Pod,
    to: SocketAddr,
}

impl Client for Captured<'_> {
    fn bulk(&self, bytes: u64) -> anyhow::Result<f64> {
        let f = tcpapp::drive(self.pod, self.to, 0, bytes as usize)?;
        if f.errors > 0 {
            bail!("bulk echo to {} failed", self.to);
        }
        Ok(f.mbps)
    }

    fn rtt(&self, n: usize) -> anyhow::Result<Vec<f64>> {
        Ok(tcpapp::rtt_1byte(self.pod, self.to, n)?
            .iter()
            .map(|d| d.as_secs_f64() * 1e6)
            .collect())
    }

    fn conn_rate(&self, secs: f64, threads: usize) -> anyhow::Result<f64> {
        std::thread::scope(|scope| {
            let hs: Vec<_> = (0..threads)
                .map(|_| scope.spawn(|| tcpapp::conn_rate(self.pod, self.to, secs)))
                .collect();
            let mut total = 0.0;
            for h in hs {
                total += h
                    .join()
                    .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
            }
            Ok(total)
        })
    }

    fn hold(&self, n: usize) -> anyhow::Result<Box<dyn std::any::Any>> {
        let (stop, opened) = tcpapp::hold_idle(self.pod, self.to, n)?;
        if opened != n {
            bail!("opened {opened} of {n} connections to {}", self.to);
        }
        // Dropping the sender ends the task holding them.
        Ok(Box::new(stop))
    }
}

fn run_capture(args: &Args, bin: &Path) -> anyhow::Result<Results> {
    let opts = Options {
        mode: if args.inpod { Mode::InPod } else { Mode::Node },
        ..Options::default()
    };
    let mut mesh =
        LocalMesh::start_opts(&Binaries::beside(bin)?, opts, |s| eprintln!("[bench] {s}"))?;
    // The direct client's thousands of short connections per round would
    // exhaust its ports and slow its later rounds (the erratic direct
    // conn/s of earlier capture runs).
    tcpapp::reuse_ports(&mesh.cluster)?;
    let pids = mesh.ztunnel_pids();
    let direct = Captured {
        pod: mesh.direct_client(),
        to: DIRECT_SERVER.parse()?,
    };
    // productpage-v1 on node b: across both ztunnels.
    let meshed = Captured {
        pod: mesh.sleep(),
        to: "10.244.1.3:9080".parse()?,
    };
    measure(
        args,
        if args.inpod {
            "capture, in-pod: pod → ztunnel A (in the pod) → HBONE → ztunnel B (in the pod) → pod (bulk is an echo)"
        } else {
            "capture: pod → ztunnel A → HBONE → ztunnel B → pod (bulk is an echo)"
        },
        &direct,
        &meshed,
        &pids,
    )
}
