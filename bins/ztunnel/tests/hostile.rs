//! Hostile input against the real `ztunnel` binary, each attack in a fresh
//! network namespace of its own (loopback only): 10,000 HBONE streams at
//! once on one connection, slowloris TLS handshakes on 15008, CONNECT floods
//! to closed ports, oversized headers and frames, and a control plane that
//! pushes 100 MB of garbage. In every case the proxy must keep serving a
//! legitimate HBONE client during and after the attack, must not exit, and
//! its RSS (`VmRSS`) must stay under [`RSS_BOUND_KB`]; the figures are
//! printed (`cargo test -p ztunnel --test hostile -- --nocapture`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ambit_hbone::{Client, ClientConfig, ConnectRequest};
use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig};
use ambit_netns::NetNs;
use ambit_netns::harness::ChildGuard;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bound on ztunnel's resident memory, in kB, at any sample during or
/// after an attack. An idle ztunnel here is ~13 MB; the largest legitimate
/// load below, 10,000 open HBONE streams each dialled upstream, peaks at
/// ~225 MB (debug build), about 21 kB per stream.
const RSS_BOUND_KB: u64 = 384 * 1024;
const ECHO: u16 = 7000;
const CLOSED: u16 = 7001;
const HBONE: &str = "127.0.0.1:15008";

const MESH: &str = r#"
workloads:
- {uid: local, name: local, namespace: default, serviceAccount: local, workloadIps: ["127.0.0.1"],
   protocol: HBONE, node: local}
"#;

/// A ztunnel in its own namespace, with an echo server on 127.0.0.1:7000.
struct Proxy {
    ns: NetNs,
    dir: PathBuf,
    _child: ChildGuard,
    pid: u32,
    ca: Arc<LocalCa>,
    _echo: ambit_netns::NsTask<()>,
}

impl Proxy {
    /// Starts ztunnel with `env` added to a local-CA setup; with no
    /// `XDS_ADDRESS` in `env` the mesh comes from [`MESH`].
    fn start(name: &str, env: &[(&str, String)], ns: NetNs) -> Self {
        ns.output(Command::new("ip").args(["link", "set", "lo", "up"]))
            .expect("lo up");
        let dir = std::env::temp_dir().join(format!("ambit-hostile-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = Arc::new(LocalCa::generate("cluster.local").expect("ca"));
        std::fs::write(dir.join("ca.pem"), ca.root_pem()).expect("ca.pem");
        std::fs::write(dir.join("ca-key.pem"), ca.key_pem()).expect("key");
        std::fs::write(dir.join("mesh.yaml"), MESH).expect("mesh");
        let echo_l = ns
            .tcp_listener(format!("127.0.0.1:{ECHO}").parse().expect("addr"))
            .expect("echo");
        let echo = ns
            .spawn_async(move || async move {
                let _ = echo_l.set_nonblocking(true);
                let Ok(l) = tokio::net::TcpListener::from_std(echo_l) else {
                    return;
                };
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            })
            .expect("echo task");
        let log = std::fs::File::create(dir.join("ztunnel.log")).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ztunnel"));
        cmd.env_clear()
            .env("NODE_NAME", "local")
            .env("LOCAL_CA_CERT", dir.join("ca.pem"))
            .env("LOCAL_CA_KEY", dir.join("ca-key.pem"))
            .env("ZTUNNEL_SPOOF_SOURCE", "false")
            .env("DRAIN_DURATION", "1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if !env.iter().any(|(k, _)| *k == "XDS_ADDRESS") {
            cmd.env("LOCAL_XDS_PATH", dir.join("mesh.yaml"));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = ns.spawn_command(&mut cmd).expect("spawn ztunnel");
        let pid = child.id();
        let p = Self {
            ns,
            dir,
            _child: ChildGuard::new(child),
            pid,
            ca,
            _echo: echo,
        };
        p.wait_ready();
        p
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut s) = self.ns.tcp_connect("127.0.0.1:15021".parse().expect("a")) {
                let _ = s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n");
                let mut buf = [0u8; 12];
                if std::io::Read::read(&mut s, &mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
                {
                    return;
                }
            }
            assert!(self.alive(), "ztunnel exited:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("ztunnel not ready:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ztunnel.log")).unwrap_or_default()
    }

    fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .is_ok_and(|s| !s.contains("State:\tZ"))
    }

    fn rss_kb(&self) -> u64 {
        rss_kb(self.pid)
    }

    /// Runs `attack` inside the namespace while a legitimate client keeps
    /// echoing through HBONE and RSS is sampled; then checks the proxy.
    fn survive<F, Fut>(&self, name: &str, attack: F)
    where
        F: FnOnce(Arc<rustls_config::Tls>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = String> + 'static,
    {
        let before = self.rss_kb();
        let ca = self.ca.clone();
        let pid = self.pid;
        let (summary, legit_ok, legit_total, peak) = self
            .ns
            .spawn_async(move || async move {
                let tls = Arc::new(rustls_config::Tls::new(ca).await);
                // Set once the attack is over; both loops below check it.
                let stop = Arc::new(AtomicBool::new(false));
                let legit = tokio::spawn({
                    let (tls, stop) = (tls.clone(), stop.clone());
                    async move {
                        let (mut ok, mut total) = (0u32, 0u32);
                        while !stop.load(Ordering::Acquire) {
                            total += 1;
                            if legit_echo(&tls).await {
                                ok += 1;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        (ok, total)
                    }
                });
                let sampler = tokio::spawn({
                    let stop = stop.clone();
                    async move {
                        let mut peak = 0;
                        while !stop.load(Ordering::Acquire) {
                            peak = peak.max(rss_kb(pid));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        peak
                    }
                });
                let summary = attack(tls.clone()).await;
                // Let the proxy settle, still serving, then stop sampling.
                tokio::time::sleep(Duration::from_secs(2)).await;
                stop.store(true, Ordering::Release);
                let (ok, total) = legit.await.unwrap_or((0, 0));
                let peak = sampler.await.unwrap_or(0);
                (summary, ok, total, peak)
            })
            .expect("attack task")
            .join();
        let after = self.rss_kb();
        // A fresh legitimate connection after the attack.
        let ca = self.ca.clone();
        let after_ok = self
            .ns
            .spawn_async(move || async move {
                let tls = rustls_config::Tls::new(ca).await;
                legit_echo(&tls).await
            })
            .expect("task")
            .join();
        println!(
            "{name}: {summary}; legit echoes during the attack {legit_ok}/{legit_total}, \
             after: {after_ok}; VmRSS before {before} kB, peak {peak} kB, after {after} kB \
             (bound {RSS_BOUND_KB} kB)"
        );
        assert!(self.alive(), "{name}: ztunnel exited:\n{}", self.log());
        assert!(
            !self.log().contains("panicked"),
            "{name}: panic:\n{}",
            self.log()
        );
        assert!(after_ok, "{name}: no legitimate echo after the attack");
        assert!(
            legit_total > 0 && legit_ok * 10 >= legit_total * 9,
            "{name}: legitimate echoes {legit_ok}/{legit_total} during the attack"
        );
        assert!(peak.max(after) < RSS_BOUND_KB, "{name}: VmRSS {peak} kB");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The child guard kills and reaps the process.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The client side: identities, a certificate for `sleep`, and a TLS
/// config that presents it to ztunnel's 15008.
mod rustls_config {
    use super::*;

    pub(crate) struct Tls {
        pub(crate) certs: CertManager,
        pub(crate) config: Arc<rustls::ClientConfig>,
        pub(crate) source: Identity,
        pub(crate) dest: Identity,
    }

    impl Tls {
        pub(crate) async fn new(ca: Arc<LocalCa>) -> Self {
            let source: Identity = "spiffe://cluster.local/ns/default/sa/sleep"
                .parse()
                .expect("id");
            let dest: Identity = "spiffe://cluster.local/ns/default/sa/local"
                .parse()
                .expect("id");
            let certs = CertManager::new(ca, ManagerConfig::default());
            let config = Arc::new(
                certs
                    .client_config(&source, vec![dest.clone()])
                    .await
                    .expect("client config"),
            );
            Self {
                certs,
                config,
                source,
                dest,
            }
        }
    }
}

/// One fresh HBONE connection to the echo server: true if 4 bytes come back
/// within 5 s.
async fn legit_echo(tls: &rustls_config::Tls) -> bool {
    let client = Client::new(ClientConfig::default(), tls.certs.clone());
    let req = ConnectRequest::new(
        tls.source.clone(),
        vec![tls.dest.clone()],
        HBONE.parse().expect("addr"),
        format!("127.0.0.1:{ECHO}")
            .parse::<SocketAddr>()
            .expect("a"),
    );
    let work = async {
        let mut s = client.connect(req).await.ok()?;
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"ping").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), work).await,
        Ok(Some(()))
    )
}

/// A TLS connection to 15008 as `sleep`, not yet speaking HTTP/2.
async fn tls_connect(
    tls: &rustls_config::Tls,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let handshake = async {
        let tcp = TcpStream::connect(HBONE).await?;
        tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(ambit_identity::tls::placeholder_server_name(), tcp)
            .await
    };
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("len").to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_HEADERS: u8 = 0x4;

/// HPACK for `:method CONNECT` and `:authority`: literals without
/// indexing, with indexed names from the static table (2 and 1).
fn connect_block(authority: &str) -> Vec<u8> {
    let mut b = vec![0x02, 7];
    b.extend_from_slice(b"CONNECT");
    b.push(0x01);
    b.push(u8::try_from(authority.len()).expect("short"));
    b.extend_from_slice(authority.as_bytes());
    b
}

/// Preface and empty SETTINGS, then the server's SETTINGS is acked.
async fn h2_start<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(SETTINGS, 1, 0, &[]));
    send(s, &out).await;
}

/// Writes `bytes`, giving up after 10 s: a server that stops reading (after
/// a GOAWAY, say) must not hang the attacker.
async fn send<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(10), s.write_all(bytes)).await;
}

/// Frame counts read from the server until it closes or `limit` passes.
#[derive(Debug, Default)]
struct Seen {
    headers: u32,
    resets: u32,
    goaway: Option<u32>,
    closed: bool,
}

async fn read_frames<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Seen {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, s.read_exact(&mut head)).await {
            Err(_) => return seen,
            Ok(Err(_)) => {
                seen.closed = true;
                return seen;
            }
            Ok(Ok(_)) => {}
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut body = vec![0u8; len];
        if tokio::time::timeout_at(deadline, s.read_exact(&mut body))
            .await
            .map_or(true, |r| r.is_err())
        {
            seen.closed = true;
            return seen;
        }
        match head[3] {
            HEADERS => seen.headers += 1,
            RST_STREAM => seen.resets += 1,
            GOAWAY if body.len() >= 8 => {
                seen.goaway = Some(u32::from_be_bytes([body[4], body[5], body[6], body[7]]));
            }
            _ => {}
        }
    }
}

fn proxy(name: &str) -> Proxy {
    Proxy::start(name, &[], NetNs::create_anonymous().expect("netns"))
}

#[test]
fn ten_thousand_streams_at_once() {
    let p = proxy("streams");
    p.survive("10,000 streams on one connection", |tls| async move {
        let Ok(mut s) = tls_connect(&tls).await else {
            return "tls refused".into();
        };
        h2_start(&mut s).await;
        let mut out = Vec::new();
        for i in 0..10_000u32 {
            out.extend(frame(
                HEADERS,
                END_HEADERS,
                2 * i + 1,
                &connect_block(&format!("127.0.0.1:{ECHO}")),
            ));
        }
        let started = Instant::now();
        send(&mut s, &out).await;
        let seen = read_frames(&mut s, Duration::from_secs(10)).await;
        assert!(
            seen.headers <= 200,
            "more streams accepted at once than the limit: {seen:?}"
        );
        let one = format!(
            "one connection: {} responses, {} resets, goaway {:?}, closed {} ({} ms)",
            seen.headers,
            seen.resets,
            seen.goaway,
            seen.closed,
            started.elapsed().as_millis()
        );
        // The same 10,000 within the limit: 50 connections × 200 streams,
        // every one dialled to the echo server and held open together.
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let tls = tls.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(mut s) = tls_connect(&tls).await else {
                    return (Seen::default(), None);
                };
                h2_start(&mut s).await;
                let mut out = Vec::new();
                for i in 0..200u32 {
                    out.extend(frame(
                        HEADERS,
                        END_HEADERS,
                        2 * i + 1,
                        &connect_block(&format!("127.0.0.1:{ECHO}")),
                    ));
                }
                send(&mut s, &out).await;
                let seen = read_frames(&mut s, Duration::from_secs(8)).await;
                (seen, Some(s))
            }));
        }
        let (mut responses, mut resets, mut held) = (0, 0, Vec::new());
        for t in tasks {
            if let Ok((seen, s)) = t.await {
                responses += seen.headers;
                resets += seen.resets;
                held.extend(s);
            }
        }
        format!("{one}; 50 × 200: {responses} responses, {resets} resets")
    });
}

#[test]
fn slowloris_handshakes() {
    let p = proxy("slowloris");
    p.survive(
        "slowloris: 3,000 unfinished TLS handshakes",
        |_tls| async move {
            // A TLS record header announcing a 512-byte ClientHello, and then
            // nothing: the server must give up on them (handshake timeout).
            let mut held = Vec::new();
            for _ in 0..3_000 {
                if let Ok(mut s) = TcpStream::connect(HBONE).await {
                    let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
                    held.push(s);
                }
            }
            let opened = held.len();
            tokio::time::sleep(Duration::from_secs(12)).await;
            let mut closed = 0;
            for s in &mut held {
                let mut b = [0u8; 64];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await
                {
                    closed += 1;
                }
            }
            assert_eq!(closed, opened, "handshakes still held after 12 s");
            format!("{opened} held, {closed} closed by the proxy within 12 s")
        },
    );
}

#[test]
fn connect_flood_to_closed_ports() {
    let p = proxy("closed");
    p.survive("CONNECT flood to closed ports", |tls| async move {
        // 50 connections × 100 CONNECTs to a closed port, pipelined.
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let tls = tls.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(mut s) = tls_connect(&tls).await else {
                    return Seen::default();
                };
                h2_start(&mut s).await;
                let mut out = Vec::new();
                for i in 0..100u32 {
                    out.extend(frame(
                        HEADERS,
                        END_HEADERS,
                        2 * i + 1,
                        &connect_block(&format!("127.0.0.1:{CLOSED}")),
                    ));
                }
                send(&mut s, &out).await;
                read_frames(&mut s, Duration::from_secs(8)).await
            }));
        }
        let (mut responses, mut resets) = (0, 0);
        for t in tasks {
            if let Ok(seen) = t.await {
                responses += seen.headers;
                resets += seen.resets;
            }
        }
        format!("5,000 CONNECTs: {responses} responses (503 expected), {resets} resets")
    });
}

#[test]
fn oversized_headers_and_frames() {
    let p = proxy("oversized");
    p.survive("oversized headers and frames", |tls| async move {
        let mut report = Vec::new();
        // 1. A 4 MiB header block in CONTINUATION frames (limit: header list size).
        // 2. A frame announcing 16 MiB - 1 (limit: max frame size).
        // 3. A CONTINUATION flood that never ends the header block.
        // 4. A 64 MiB DATA body on a stream to the echo server never read back.
        for case in 0..4 {
            let Ok(mut s) = tls_connect(&tls).await else {
                report.push(format!("case {case}: tls refused"));
                continue;
            };
            h2_start(&mut s).await;
            let started = Instant::now();
            let written = match case {
                0 => {
                    let mut block = connect_block(&format!("127.0.0.1:{ECHO}"));
                    block.extend_from_slice(&[0x00, 0x01, b'x', 0x7f]);
                    // Value length 4 MiB in HPACK's 7-bit prefix integer.
                    let mut n = (4usize << 20) - 127;
                    while n >= 128 {
                        block.push(u8::try_from(n % 128).expect("b") | 0x80);
                        n /= 128;
                    }
                    block.push(u8::try_from(n).expect("b"));
                    block.resize(block.len() + (4 << 20), b'a');
                    let mut out = Vec::new();
                    let mut chunks = block.chunks(16 * 1024).peekable();
                    let mut first = true;
                    while let Some(c) = chunks.next() {
                        let last = chunks.peek().is_none();
                        let flags = if last { END_HEADERS } else { 0 };
                        out.extend(frame(
                            if first { HEADERS } else { CONTINUATION },
                            flags,
                            1,
                            c,
                        ));
                        first = false;
                    }
                    write_some(&mut s, &out).await
                }
                1 => {
                    let mut out = vec![0xff, 0xff, 0xff, DATA, 0, 0, 0, 0, 1];
                    out.resize(out.len() + (1 << 20), 0);
                    write_some(&mut s, &out).await
                }
                2 => {
                    let mut out = frame(HEADERS, 0, 1, &connect_block("127.0.0.1:7000"));
                    for _ in 0..10_000 {
                        out.extend(frame(CONTINUATION, 0, 1, &[0u8; 1024]));
                    }
                    write_some(&mut s, &out).await
                }
                _ => {
                    let mut out = frame(
                        HEADERS,
                        END_HEADERS,
                        1,
                        &connect_block(&format!("127.0.0.1:{ECHO}")),
                    );
                    for _ in 0..4096 {
                        out.extend(frame(DATA, 0, 1, &[7u8; 16 * 1024]));
                    }
                    write_some(&mut s, &out).await
                }
            };
            let seen = read_frames(&mut s, Duration::from_secs(5)).await;
            eprintln!("oversized case {case} done");
            report.push(format!(
                "case {case}: wrote {} KiB, {seen:?} after {} ms",
                written >> 10,
                started.elapsed().as_millis()
            ));
        }
        report.join("; ")
    });
}

/// Writes as much of `out` as the peer takes within 10 s; returns the bytes written.
async fn write_some<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, out: &[u8]) -> usize {
    let mut written = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for c in out.chunks(64 * 1024) {
        match tokio::time::timeout_at(deadline, s.write_all(c)).await {
            Ok(Ok(())) => written += c.len(),
            _ => break,
        }
    }
    written
}

/// xorshift: cheap garbage.
fn garbage(seed: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 24) as u8
        })
        .collect()
}

#[test]
fn control_plane_sends_100_mb_of_garbage() {
    use ambit_xds::{ADDRESS_TYPE_URL, AdsServer, Store, proto::protobuf::Any};

    let ns = NetNs::create_anonymous().expect("netns");
    ns.output(Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("lo up");
    let config = ambit_mesh::Config::parse(MESH, "mesh").expect("mesh");
    let store = Store::new();
    ambit_testbed::publish(&store, &config);
    let xds_l = ns
        .tcp_listener("127.0.0.1:15010".parse().expect("a"))
        .expect("xds listener");
    let stop = Arc::new(tokio::sync::Notify::new());
    let server = ns
        .spawn_async({
            let (store, stop) = (store.clone(), stop.clone());
            move || async move {
                let _ = xds_l.set_nonblocking(true);
                let Ok(l) = tokio::net::TcpListener::from_std(xds_l) else {
                    return;
                };
                let _ = AdsServer::new(store).serve(l, stop.notified()).await;
            }
        })
        .expect("xds server");
    let p = Proxy::start(
        "xds",
        &[("XDS_ADDRESS", "http://127.0.0.1:15010".to_owned())],
        ns,
    );
    let store2 = store.clone();
    p.survive(
        "control plane: 100 MB of garbage (resources, then raw bytes)",
        move |_tls| async move {
            // 1. 92 MiB as 92 Address resources of 1 MiB random bytes each.
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            for i in 0..92 {
                store2.insert(
                    ADDRESS_TYPE_URL,
                    format!("garbage-{i}"),
                    Any {
                        type_url: ADDRESS_TYPE_URL.to_owned(),
                        value: garbage(&mut seed, 1 << 20),
                    },
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            // 2. The server goes away; a garbage speaker takes its port and
            //    writes random bytes to every connection ztunnel makes.
            stop.notify_one();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:15010").await else {
                return "could not take over the xDS port".into();
            };
            let (mut sent, mut conns) = (0usize, 0u32);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while sent < 20 << 20 {
                let Ok(Ok((mut s, _))) = tokio::time::timeout_at(deadline, l.accept()).await else {
                    break;
                };
                conns += 1;
                let chunk = garbage(&mut seed, 1 << 20);
                while sent < 20 << 20 {
                    match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
                        Ok(Ok(())) => sent += chunk.len(),
                        _ => break,
                    }
                }
            }
            format!(
                "92 MiB of garbage resources; then {} MiB of raw garbage over {conns} connections",
                sent >> 20
            )
        },
    );
    // Garbage was rejected: the last good config still serves (checked
    // above by the legitimate echoes through the workload it defines).
    drop(p);
    drop(server);
}
