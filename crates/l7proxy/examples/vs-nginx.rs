//! The waypoint's HTTP engine versus nginx as a plain reverse proxy, with
//! `wrk`, in one run: requests/s, p50 and p99 at fixed concurrency.
//!
//! `cargo run --release -p ambit-l7proxy --example vs-nginx [-- --rounds 3
//! --seconds 5 --connections 64 --threads 2 --only plaintext]`
//!
//! `--only WORD` (repeatable) keeps the paths whose label contains one of
//! the words, plus nginx (the ratio's baseline): quicker runs while
//! working on one path, and a single path to profile.
//!
//! `VS_NGINX_RAW=1` also prints each wrk run's whole output (latency
//! distribution, per-thread spread, maximum) to stderr.
//!
//! Needs `wrk` and `nginx` (Debian: `apt-get install -y wrk nginx-light`);
//! when either is missing and this runs as root, it tries that line once,
//! and otherwise fails saying so. Nothing else leaves the machine.
//!
//! What runs, all on loopback: a backend (hyper HTTP/1.1, 1 KiB answers)
//! on plain TCP, and an HBONE terminator in front of the same handler
//! (standing in for the destination ztunnel); nginx (generated config in a
//! temp dir, `-p` prefix, `daemon off`, 2 workers, upstream keep-alive,
//! killed at exit); waypoint engines with the same route table as nginx
//! (prefix `/api` → backend, everything else 404, `DELETE` denied with 403);
//! a forwarder standing in for the source ztunnel. Each path gets the same
//! wrk command (`-t THREADS -c CONNECTIONS -d SECONDS --latency GET
//! /api/bench`), paths alternate round by round, and the table shows the
//! median of the rounds. The paths:
//!
//! - `backend direct`: wrk → backend.
//! - `nginx`: wrk → nginx → backend (plain HTTP/1.1 both sides).
//! - `waypoint plaintext`: wrk → [`Waypoint::serve_plaintext`] → backend
//!   over plain TCP (`plaintext_upstreams`): the same work as nginx.
//! - `waypoint plaintext, one shared runtime`: the same, not per core.
//! - `waypoint plain→HBONE`: wrk → `serve_plaintext` → HBONE (mTLS,
//!   HTTP/2 CONNECT) → terminator → handler: the engine as deployed
//!   upstream-side.
//! - `waypoint HBONE`: wrk → forwarder (plain TCP in, one HBONE CONNECT per
//!   wrk connection to the waypoint, like a source ztunnel) → waypoint
//!   15008 → HBONE → terminator → handler: the full mesh path.
//! - `... unpooled`: the last two with pooling off
//!   (`max_idle_per_endpoint: 0`: one upstream connection per request, as
//!   before pooling).
//!
//! The waypoints run as the binary does: two per-core workers
//! ([`Waypoint::serve_workers`]; a current-thread runtime, an
//! `SO_REUSEPORT` listener and upstream pools per worker), as nginx has
//! two worker processes. `waypoint plaintext, one shared runtime` is the
//! same engine on one 2-thread work-stealing runtime with one listener
//! and one pool, for comparison. Backend and forwarder have their own
//! 2-thread runtimes; everything shares the machine's cores with wrk, so
//! absolute figures depend on the host: compare rows.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ambit_hbone::{
    Client, ClientConfig, ConnectHeaders, ConnectRequest, Decision, Forwarded, HboneStream,
    InboundRequest, Server, ServerConfig, copy_bidirectional, handler_fn,
};
use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig};
use ambit_l7proxy::{PoolConfig, RouteConfig, Waypoint, WaypointConfig};
use ambit_mesh::MeshState;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const VIP: &str = "10.96.0.50:8080";
const INSTALL: &str = "apt-get install -y wrk nginx-light";
/// Per-core workers of each waypoint (nginx has as many worker processes).
const WORKERS: usize = 2;

struct Opts {
    rounds: usize,
    seconds: u64,
    connections: usize,
    threads: usize,
    /// Label substrings of the paths to run (all when empty; nginx always).
    only: Vec<String>,
}

fn opts() -> Result<Opts, BoxError> {
    let mut o = Opts {
        rounds: 3,
        seconds: 5,
        connections: 64,
        threads: 2,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || -> Result<usize, BoxError> {
            let v = args.next().ok_or(format!("{a} needs a value"))?;
            Ok(v.parse().map_err(|e| format!("{a} {v}: {e}"))?)
        };
        match a.as_str() {
            "--rounds" => o.rounds = val()?.max(1),
            "--seconds" => o.seconds = val()? as u64,
            "--connections" => o.connections = val()?,
            "--threads" => o.threads = val()?,
            "--only" => o
                .only
                .push(args.next().ok_or("--only needs a value")?.to_string()),
            "-h" | "--help" => {
                println!(
                    "vs-nginx [--rounds N] [--seconds S] [--connections C] [--threads T] [--only WORD]...\n\
                     needs wrk and nginx ({INSTALL})"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (see --help)").into()),
        }
    }
    Ok(o)
}

async fn serve_app<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO) {
    let svc = service_fn(|req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(&[b'x'; 1024]))))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

fn runtime(name: &str) -> Result<Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()?)
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// wrk and nginx, installed from Debian when missing and possible.
fn tools() -> Result<(), BoxError> {
    if have("wrk") && have("nginx") {
        return Ok(());
    }
    eprintln!("wrk or nginx missing; trying `{INSTALL}`");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "wrk", "nginx-light"])
        .stdout(Stdio::null())
        .status();
    if have("wrk") && have("nginx") {
        Ok(())
    } else {
        Err(format!(
            "this benchmark needs wrk and nginx on PATH; install them with `{INSTALL}` (as root)"
        )
        .into())
    }
}

/// A free loopback port (bound, then released for nginx to take).
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// nginx as a child process, killed on drop, with its prefix directory.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and exits (SIGKILL would
        // orphan the workers). SIGKILL only if it has not exited in 3 s.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_conf(dir: &Path, port: u16, backend: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    upstream backend {{
        server {backend};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        # The waypoint's policy: DENY DELETE (403).
        if ($request_method = DELETE) {{ return 403 "RBAC: access denied\n"; }}
        # The waypoint's route table: prefix /api -> backend; else 404.
        location /api {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header Forwarded "for=\"$remote_addr:$remote_port\"";
        }}
        location / {{ return 404 "no route\n"; }}
    }}
}}
"#
    )
}

fn start_nginx(backend: SocketAddr) -> Result<(Nginx, SocketAddr), BoxError> {
    let dir = std::env::temp_dir().join(format!("ambit-vs-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir, port, backend))?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting nginx: {e}"))?;
    let mut n = Nginx { child, dir };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let t = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = n.child.try_wait()? {
            let log = std::fs::read_to_string(n.dir.join("error.log")).unwrap_or_default();
            return Err(format!("nginx exited ({status}): {log}").into());
        }
        if t.elapsed() > Duration::from_secs(5) {
            return Err("nginx did not listen within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((n, addr))
}

/// One wrk run's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `123.45us` / `1.2ms` / `2.00s` → milliseconds.
fn parse_ms(s: &str) -> Option<f64> {
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

fn parse_wrk(out: &str) -> Option<Run> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    for line in out.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse().ok(),
            (Some("50%"), Some(v)) => p50 = parse_ms(v),
            (Some("99%"), Some(v)) => p99 = parse_ms(v),
            _ => {}
        }
    }
    Some(Run {
        rps: rps?,
        p50_ms: p50?,
        p99_ms: p99?,
    })
}

fn wrk(o: &Opts, addr: SocketAddr, seconds: u64) -> Result<Run, BoxError> {
    let out = Command::new("wrk")
        .arg(format!("-t{}", o.threads))
        .arg(format!("-c{}", o.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg(format!("http://{addr}/api/bench"))
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("VS_NGINX_RAW").is_some() {
        eprintln!("{text}");
    }
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(format!("wrk against {addr} saw errors:\n{text}").into());
    }
    parse_wrk(&text).ok_or_else(|| format!("could not read wrk's output:\n{text}").into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), BoxError> {
    let o = opts()?;
    tools()?;
    let backend_rt = runtime("backend")?;
    let waypoint_rt = runtime("waypoint")?;
    let forwarder_rt = runtime("forwarder")?;

    let ca = Arc::new(LocalCa::generate("cluster.local")?);
    let certs = Arc::new(CertManager::new(ca, ManagerConfig::default()));
    let app_id: Identity = "spiffe://cluster.local/ns/default/sa/app".parse()?;
    let wp_id: Identity = "spiffe://cluster.local/ns/default/sa/waypoint".parse()?;
    let client_id: Identity = "spiffe://cluster.local/ns/default/sa/client".parse()?;
    let vip: SocketAddr = VIP.parse()?;

    // The backend: plain HTTP, and an HBONE terminator in front of the
    // same handler.
    let (backend, hbone_port) = backend_rt.block_on(async {
        let plain = TcpListener::bind("127.0.0.1:0").await?;
        let backend = plain.local_addr()?;
        tokio::spawn(async move {
            while let Ok((s, _)) = plain.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve_app(s));
            }
        });
        let hbone = TcpListener::bind("127.0.0.1:0").await?;
        let hbone_port = hbone.local_addr()?.port();
        let tls = Arc::new(certs.server_config(&app_id).await?);
        let server = Server::new(
            tls,
            ServerConfig::default(),
            handler_fn(|_r: InboundRequest| async {
                Decision::accept(|s: HboneStream| serve_app(s))
            }),
        );
        tokio::spawn(async move { server.run(hbone, std::future::pending()).await });
        Ok::<_, BoxError>((backend, hbone_port))
    })?;

    let (_nginx, nginx_addr) = start_nginx(backend)?;

    // Waypoints: same mesh and routes; the app's target port is the plain
    // backend's, its HBONE port the terminator's.
    let mesh_yaml = format!(
        "workloads:\n- uid: app\n  name: app\n  namespace: default\n  serviceAccount: app\n  workloadIps: [\"127.0.0.1\"]\n  protocol: HBONE\n  services: {{\"default/bench.default.svc.cluster.local\": {{8080: {port}}}}}\nservices:\n- name: bench\n  namespace: default\n  hostname: bench.default.svc.cluster.local\n  vips: [\"/10.96.0.50\"]\n  ports: {{8080: {port}}}\n",
        port = backend.port()
    );
    let routes_yaml = format!(
        "hbonePort: {hbone_port}\nservices:\n- host: bench.default.svc.cluster.local\n  ports: {{8080: http}}\n  routes:\n  - match: [{{path: {{prefix: /api}}}}]\n    backends: [{{weight: 1}}]\n  policies:\n  - name: deny-delete\n    action: DENY\n    rules: [{{to: [{{operation: {{methods: [DELETE]}}}}]}}]\n"
    );
    // (label, pooled, plaintext upstreams, per-core workers)
    let variants = [
        ("waypoint plaintext", true, true, true),
        ("waypoint plaintext, one shared runtime", true, true, false),
        ("waypoint plain→HBONE", true, false, true),
        ("waypoint plain→HBONE unpooled", false, false, true),
    ];
    let mut waypoints = Vec::new();
    for (label, pooled, plain_up, per_core) in variants {
        let (plain_addr, hbone_addr) = waypoint_rt.block_on(async {
            let mesh = ambit_mesh::Config::parse(&mesh_yaml, "bench")?;
            let routes = RouteConfig::parse(&routes_yaml, "bench")?;
            let mut cfg = WaypointConfig::new(wp_id.clone());
            cfg.plaintext_upstreams = plain_up;
            if !pooled {
                cfg.pool = PoolConfig {
                    max_idle_per_endpoint: 0,
                    ..PoolConfig::default()
                };
            }
            let state = Arc::new(RwLock::new(MeshState::from_config(mesh)));
            let w = Waypoint::new(cfg, state, routes, certs.clone());
            let any: SocketAddr = "127.0.0.1:0".parse()?;
            let peer = client_id.clone();
            if !per_core {
                let pl = TcpListener::bind(any).await?;
                let plain_addr = pl.local_addr()?;
                tokio::spawn(async move {
                    if let Err(e) = w
                        .serve_plaintext(pl, vip, peer, std::future::pending())
                        .await
                    {
                        eprintln!("plaintext listener: {e}");
                    }
                });
                return Ok::<_, BoxError>((plain_addr, None));
            }
            // As the waypoint binary runs: a worker per core, each with its
            // own runtime, listener and upstream pool.
            let pls = ambit_server::reuseport_listeners(any, WORKERS)?;
            let plain_addr = pls[0].local_addr()?;
            let w2 = w.clone();
            let plain = ambit_server::Workers::start("wp-plain", pls, move |_, l| {
                let (w, peer) = (w2.worker(), peer.clone());
                async move {
                    let l = TcpListener::from_std(l)?;
                    w.serve_plaintext(l, vip, peer, std::future::pending())
                        .await
                        .map_err(|e| io::Error::other(e.to_string()))
                }
            })?;
            // The workers run for the process's life.
            drop(plain);
            // 15008 too, for the full-HBONE rows, when the upstreams are
            // HBONE as in the mesh.
            if plain_up {
                return Ok((plain_addr, None));
            }
            let hls = ambit_server::reuseport_listeners(any, WORKERS)?;
            let hbone_addr = hls[0].local_addr()?;
            let served = w.serve_workers(hls, std::future::pending)?;
            tokio::spawn(async move {
                if let Err(e) = served.await {
                    eprintln!("HBONE listener: {e}");
                }
            });
            Ok::<_, BoxError>((plain_addr, Some(hbone_addr)))
        })?;
        waypoints.push((label, plain_addr, hbone_addr));
    }

    // The forwarder (source ztunnel stand-in): plain TCP in, one HBONE
    // CONNECT per connection to a waypoint's 15008.
    let mut forwarders = Vec::new();
    for (label, _, hbone_addr) in waypoints.iter().filter_map(|(l, p, h)| Some((l, p, (*h)?))) {
        let addr = forwarder_rt.block_on(async {
            let client = Client::new(ClientConfig::default(), certs.as_ref().clone());
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?;
            let (src, wp, to) = (client_id.clone(), wp_id.clone(), hbone_addr);
            tokio::spawn(async move {
                while let Ok((mut tcp, peer)) = l.accept().await {
                    let _ = tcp.set_nodelay(true);
                    let req = ConnectRequest::new(src.clone(), vec![wp.clone()], to, vip)
                        .with_headers(ConnectHeaders {
                            forwarded: Some(Forwarded::new(peer)),
                            ..ConnectHeaders::default()
                        });
                    let client = client.clone();
                    tokio::spawn(async move {
                        match client.connect(req).await {
                            Ok(mut up) => {
                                let _ = copy_bidirectional(&mut tcp, &mut up).await;
                            }
                            Err(e) => eprintln!("forwarder: {e}"),
                        }
                    });
                }
            });
            Ok::<_, BoxError>(addr)
        })?;
        let label = label.replace("plain→HBONE", "HBONE");
        forwarders.push((label, addr));
    }

    let mut targets: Vec<(String, SocketAddr)> = vec![
        ("backend direct".into(), backend),
        ("nginx".into(), nginx_addr),
    ];
    for (label, plain, _) in &waypoints {
        targets.push(((*label).into(), *plain));
    }
    targets.extend(forwarders);
    if !o.only.is_empty() {
        targets.retain(|(label, _)| {
            label == "nginx" || o.only.iter().any(|w| label.contains(w.as_str()))
        });
    }
    let Some(nginx_i) = targets.iter().position(|(l, _)| l == "nginx") else {
        return Err("nginx is not among the paths".into());
    };

    println!(
        "wrk -t{} -c{} -d{}s --latency, GET /api/bench (1 KiB answers), {} rounds, alternating; medians",
        o.threads, o.connections, o.seconds, o.rounds
    );
    for (label, addr) in &targets {
        wrk(&o, *addr, 1).map_err(|e| format!("warm-up of {label}: {e}"))?;
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    for round in 0..o.rounds {
        for (i, (label, addr)) in targets.iter().enumerate() {
            let r = wrk(&o, *addr, o.seconds)?;
            // Against nginx's figure of this round, once it has run.
            let ratio = runs[nginx_i].get(round).map_or(String::new(), |n| {
                format!("  {:.2}x nginx", r.rps / n.rps.max(1.0))
            });
            eprintln!(
                "round {} {label:<32} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms{ratio}",
                round + 1,
                r.rps,
                r.p50_ms,
                r.p99_ms
            );
            runs[i].push(r);
        }
    }
    let med: Vec<Run> = runs
        .iter()
        .map(|v| Run {
            rps: median(v.iter().map(|r| r.rps).collect()),
            p50_ms: median(v.iter().map(|r| r.p50_ms).collect()),
            p99_ms: median(v.iter().map(|r| r.p99_ms).collect()),
        })
        .collect();
    let nginx_rps = med[nginx_i].rps.max(1.0);
    println!();
    println!("| path | requests/s | p50 | p99 | vs nginx |");
    println!("|---|---|---|---|---|");
    for ((label, _), r) in targets.iter().zip(&med) {
        println!(
            "| {label} | {:.0} | {:.3} ms | {:.3} ms | {:.2}x |",
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.rps / nginx_rps
        );
    }
    if let Some(wp_i) = targets.iter().position(|(l, _)| l == "waypoint plaintext") {
        let (wp, ng) = (med[wp_i], med[nginx_i]);
        let met = wp.rps >= ng.rps && wp.p99_ms <= ng.p99_ms;
        println!(
            "\ngoal (waypoint plaintext >= 1.0x nginx requests/s at equal or lower p99): {}",
            if met { "met" } else { "not met" }
        );
    }
    drop(forwarder_rt);
    drop(waypoint_rt);
    drop(backend_rt);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:1/api/bench\n  Latency Distribution\n     50%  412.00us\n     75%    1.20ms\n     90%    2.00ms\n     99%    1.50s\n  100 requests in 5.00s, 1.00MB read\nRequests/sec:  20000.50\nTransfer/sec:      2.00MB\n";
        let r = parse_wrk(out).expect("parsed");
        assert!((r.rps - 20000.5).abs() < 1e-6);
        assert!((r.p50_ms - 0.412).abs() < 1e-9);
        assert!((r.p99_ms - 1500.0).abs() < 1e-6);
        assert!(parse_wrk("garbage").is_none());
    }
}
