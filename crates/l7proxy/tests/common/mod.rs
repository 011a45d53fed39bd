//! A loopback mesh: a local CA, "pods" as HBONE servers (standing in for
//! ztunnel + pod) on distinct 127.x addresses sharing one HBONE port, a
//! waypoint, and an HBONE client acting as the source ztunnel.
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ambit_hbone::{
    Client, ClientConfig, ConnectRequest, Decision, Handler, HboneStream, InboundRequest, Server,
    ServerConfig,
};
use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig};
use ambit_l7proxy::{RouteConfig, Waypoint, WaypointConfig};
use ambit_mesh::MeshState;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

pub const REVIEWS: &str = "reviews.default.svc.cluster.local";
pub const REVIEWS_VIP: &str = "10.96.0.10:9080";
pub const RATINGS_VIP: &str = "10.96.0.11:9080";
pub const ECHO_VIP: &str = "10.96.0.12:7000";
pub const SNIFF_VIP: &str = "10.96.0.12:7001";
/// reviews' port whose pods answer with scripted raw HTTP/1.1 ([`raw_answer`]).
pub const RAW_VIP: &str = "10.96.0.10:9090";

pub fn id(s: &str) -> Identity {
    s.parse().expect("identity")
}

pub fn sleep_id() -> Identity {
    id("spiffe://cluster.local/ns/default/sa/sleep")
}

pub fn waypoint_id() -> Identity {
    id("spiffe://cluster.local/ns/default/sa/waypoint")
}

/// What a pod does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Healthy,
    /// Every HTTP answer is 503.
    Failing,
}

/// One pod: version, behaviour, counters.
pub struct Pod {
    pub version: String,
    pub behaviour: Behaviour,
    pub hits: AtomicU32,
    /// `:authority` values of the CONNECTs received.
    pub authorities: Mutex<Vec<String>>,
    /// `forwarded` of the CONNECTs received.
    pub forwarded: Mutex<Vec<String>>,
    /// Shared across pods: `/flaky` fails the first time mesh-wide.
    pub flaky: Arc<AtomicU32>,
    /// Shared across pods: `/once409` answers 409 the first time.
    pub once: Arc<AtomicU32>,
    /// `host` (or `:authority`) and path of every HTTP request received.
    pub requests: Mutex<Vec<(String, String)>>,
    /// Path and body received (or `None` when reading it failed), per
    /// HTTP request.
    pub bodies: Mutex<Vec<(String, Option<Bytes>)>>,
    /// Every request head received on the raw port, as it came.
    pub raw_heads: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct PodHandler(Arc<Pod>);

impl Handler for PodHandler {
    async fn handle(&self, request: InboundRequest) -> Decision {
        let pod = self.0.clone();
        if let Ok(mut a) = pod.authorities.lock() {
            a.push(format!("{:?}", request.authority));
        }
        if let Some(f) = request
            .headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            && let Ok(mut v) = pod.forwarded.lock()
        {
            v.push(f.to_owned());
        }
        let port = request.authority.port();
        Decision::accept(move |stream| async move {
            if port == 7000 || port == 7001 {
                echo(stream).await;
            } else if port == 9090 {
                raw_http(pod, stream).await;
            } else {
                serve_http(pod, stream).await;
            }
        })
    }
}

async fn echo(stream: HboneStream) {
    let (mut r, mut w) = tokio::io::split(stream);
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

/// The scripted answer to a request for `path` on the raw port, and
/// whether the connection ends after it.
pub fn raw_answer(path: &str) -> (Vec<u8>, bool) {
    let ok = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (text, close) = match path {
        "/raw/chunked" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n".to_owned(),
            false,
        ),
        "/raw/head" => ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_owned(), false),
        "/raw/continue" => (
            format!("HTTP/1.1 100 Continue\r\n\r\n{}", ok("after-100")),
            false,
        ),
        "/raw/eof" => ("HTTP/1.1 200 OK\r\n\r\nuntil-eof".to_owned(), true),
        "/raw/http10" => ("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n10".to_owned(), false),
        "/raw/te-cl" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_owned(),
            false,
        ),
        "/raw/extra" => (
            format!("{}HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nsmugl", ok("ok")),
            false,
        ),
        "/raw/conflict" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_owned(),
            false,
        ),
        "/raw/bad-length" => ("HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\na".to_owned(), false),
        "/raw/big-head" => (
            format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n", "b".repeat(70 * 1024)),
            false,
        ),
        "/raw/101" => ("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n".to_owned(), false),
        "/raw/garbage" => ("HTTP/1.1 2OO OK\r\n\r\n".to_owned(), false),
        "/raw/truncated" => ("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_owned(), true),
        "/raw/bad-chunk" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n".to_owned(),
            false,
        ),
        "/raw/close-after" => (ok("bye"), true),
        _ => (ok("ok"), false),
    };
    (text.into_bytes(), close)
}

/// Serves raw HTTP/1.1 on one stream: reads request heads (and bodies by
/// `content-length`), answers each with [`raw_answer`].
async fn raw_http(pod: Arc<Pod>, mut stream: HboneStream) {
    use tokio::io::AsyncReadExt;
    let mut buf: Vec<u8> = Vec::new();
    let more = async |stream: &mut HboneStream, buf: &mut Vec<u8>| -> bool {
        let mut tmp = [0u8; 8192];
        match stream.read(&mut tmp).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    };
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !more(&mut stream, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let len = head
            .lines()
            .find_map(|l| {
                let l = l.to_ascii_lowercase();
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            })
            .unwrap_or(0);
        while buf.len() < len {
            if !more(&mut stream, &mut buf).await {
                return;
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        pod.hits.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = pod.raw_heads.lock() {
            h.push(head);
        }
        if let Ok(mut b) = pod.bodies.lock() {
            b.push((path.clone(), Some(Bytes::from(body))));
        }
        let (answer, close) = raw_answer(&path);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

async fn serve_http(pod: Arc<Pod>, stream: HboneStream) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let pod = pod.clone();
        async move {
            pod.hits.fetch_add(1, Ordering::Relaxed);
            let version = format!("{:?}", req.version());
            // Origin-form for HTTP/1.1, the path and query for HTTP/2.
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| req.uri().to_string());
            let host = req
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default();
            if let Ok(mut r) = pod.requests.lock() {
                r.push((host.clone(), path.clone()));
            }
            let header = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let rewritten = header("x-rewritten");
            let debug = header("x-debug");
            let hang_on = header("x-hang-on");
            let grpc_status = header("x-grpc-status");
            let grpc = header("content-type").starts_with("application/grpc");
            let te = header("te");
            let body = req.into_body().collect().await.ok().map(|b| b.to_bytes());
            if let Ok(mut b) = pod.bodies.lock() {
                b.push((path.clone(), body));
            }
            if !hang_on.is_empty() && hang_on == pod.version {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            if grpc {
                // A gRPC answer: grpc-status in the trailers, or in the
                // headers (trailers-only) for `/trailers.only/*`.
                let status = if grpc_status.is_empty() {
                    "0".to_owned()
                } else {
                    grpc_status
                };
                let mut resp = Response::builder()
                    .header("content-type", "application/grpc")
                    .header("x-version", pod.version.as_str())
                    .header("x-proto", version)
                    .header("x-saw-te", te);
                let body = if path.starts_with("/trailers.only/") {
                    resp = resp.header("grpc-status", status);
                    Full::new(Bytes::new())
                        .map_err(|e| -> std::io::Error { match e {} })
                        .boxed_unsync()
                } else {
                    let mut trailers = http::HeaderMap::new();
                    if let Ok(v) = http::HeaderValue::from_str(&status) {
                        trailers.insert("grpc-status", v);
                    }
                    Full::new(Bytes::from_static(b"\0\0\0\0\0"))
                        .map_err(|e| -> std::io::Error { match e {} })
                        .with_trailers(async move { Some(Ok(trailers)) })
                        .boxed_unsync()
                };
                return Ok(resp.body(body).expect("response"));
            }
            let mut status = StatusCode::OK;
            if pod.behaviour == Behaviour::Failing {
                status = StatusCode::SERVICE_UNAVAILABLE;
            }
            if path.starts_with("/hang") {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            if path.starts_with("/flaky") && pod.flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                status = StatusCode::SERVICE_UNAVAILABLE;
            }
            if path.starts_with("/once409") && pod.once.fetch_add(1, Ordering::SeqCst) == 0 {
                status = StatusCode::CONFLICT;
            }
            if path.starts_with("/partial") {
                // Promises 100 bytes, sends 3, then fails the body: hyper
                // aborts the connection mid-response.
                let body = CutBody(None).boxed_unsync();
                let resp = Response::builder()
                    .header("content-length", "100")
                    .body(body)
                    .expect("response");
                return Ok(resp);
            }
            let big = path.starts_with("/big");
            let mut resp = Response::builder();
            if path.starts_with("/close") {
                resp = resp.header("connection", "close");
            }
            let body = if big {
                Bytes::from(vec![b'x'; 32 << 20])
            } else {
                Bytes::from(pod.version.clone())
            };
            let resp = resp
                .status(status)
                .header("x-version", pod.version.as_str())
                .header("x-path", path)
                .header("x-host", host)
                .header("x-saw-rewritten", rewritten)
                .header("x-saw-debug", debug)
                .header("x-proto", version)
                .body(
                    Full::new(body)
                        .map_err(|e| -> std::io::Error { match e {} })
                        .boxed_unsync(),
                )
                .expect("response");
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    // HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

/// A body that yields `abc`, waits 50 ms (so the head and those bytes are
/// flushed), and then fails.
struct CutBody(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl hyper::body::Body for CutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        use std::future::Future;
        match self.0.as_mut() {
            None => {
                self.0 = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"abc")))))
            }
            Some(sleep) => match sleep.as_mut().poll(cx) {
                std::task::Poll::Pending => std::task::Poll::Pending,
                std::task::Poll::Ready(()) => {
                    std::task::Poll::Ready(Some(Err(std::io::Error::other("cut"))))
                }
            },
        }
    }
}

pub struct Mesh {
    pub certs: Arc<CertManager>,
    pub waypoint: Waypoint,
    pub waypoint_addr: SocketAddr,
    pub pods: Vec<Arc<Pod>>,
    pub pod_ips: Vec<IpAddr>,
    pub hbone_port: u16,
    pub flaky: Arc<AtomicU32>,
    /// Stops the waypoint's per-core workers ([`Mesh::start_workers`]).
    pub stop: tokio::sync::watch::Sender<bool>,
    /// The per-core workers' `serve_workers`, when started that way.
    pub served: Option<tokio::task::JoinHandle<Result<(), ambit_l7proxy::Error>>>,
}

/// Pods: (name, service, version, behaviour).
pub struct PodSpec {
    pub name: &'static str,
    pub service: &'static str,
    pub version: &'static str,
    pub behaviour: Behaviour,
}

pub fn pod(name: &'static str, service: &'static str, version: &'static str) -> PodSpec {
    PodSpec {
        name,
        service,
        version,
        behaviour: Behaviour::Healthy,
    }
}

pub fn default_pods() -> Vec<PodSpec> {
    vec![
        pod("reviews-v1", "reviews", "v1"),
        pod("reviews-v2", "reviews", "v2"),
        PodSpec {
            name: "ratings-bad",
            service: "ratings",
            version: "v1",
            behaviour: Behaviour::Failing,
        },
        pod("ratings-good", "ratings", "v1"),
        pod("echo", "echo", "v1"),
    ]
}

/// Binds one listener per IP, all on the same port.
async fn bind_pods(n: usize) -> (Vec<IpAddr>, Vec<TcpListener>, u16) {
    for _ in 0..50 {
        let (b, c) = (fastrand::u8(1..=254), fastrand::u8(0..=254));
        let ips: Vec<IpAddr> = (0..n)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, b, c, (i + 1) as u8)))
            .collect();
        let Ok(first) = TcpListener::bind(SocketAddr::new(ips[0], 0)).await else {
            continue;
        };
        let port = first.local_addr().expect("addr").port();
        let mut ls = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind(SocketAddr::new(*ip, port)).await {
                Ok(l) => ls.push(l),
                Err(_) => break,
            }
        }
        if ls.len() == n {
            return (ips, ls, port);
        }
    }
    panic!("could not bind pod listeners");
}

impl Mesh {
    pub async fn start(routes_yaml: &str) -> Self {
        Self::start_with(routes_yaml, default_pods()).await
    }

    pub async fn start_with(routes_yaml: &str, specs: Vec<PodSpec>) -> Self {
        Self::start_inner(routes_yaml, specs, None, WaypointConfig::new(waypoint_id())).await
    }

    /// The default pods, the waypoint with `cfg`.
    pub async fn start_config(routes_yaml: &str, cfg: WaypointConfig) -> Self {
        Self::start_inner(routes_yaml, default_pods(), None, cfg).await
    }

    /// The default pods, the waypoint served by `n` per-core workers
    /// ([`Waypoint::serve_workers`]) until `stop` is set.
    pub async fn start_workers(routes_yaml: &str, n: usize) -> Self {
        Self::start_inner(
            routes_yaml,
            default_pods(),
            Some(n),
            WaypointConfig::new(waypoint_id()),
        )
        .await
    }

    async fn start_inner(
        routes_yaml: &str,
        specs: Vec<PodSpec>,
        workers: Option<usize>,
        cfg: WaypointConfig,
    ) -> Self {
        let ca = Arc::new(LocalCa::generate("cluster.local").expect("ca"));
        let certs = Arc::new(CertManager::new(ca, ManagerConfig::default()));
        let (ips, listeners, hbone_port) = bind_pods(specs.len()).await;
        let flaky = Arc::new(AtomicU32::new(0));
        let once = Arc::new(AtomicU32::new(0));
        let mut workloads = String::new();
        let mut pods = Vec::new();
        for ((spec, ip), listener) in specs.iter().zip(&ips).zip(listeners) {
            let sa = spec.service;
            workloads.push_str(&format!(
                "- uid: cluster1//v1/Pod/default/{name}\n  name: {name}\n  namespace: default\n  serviceAccount: {sa}\n  workloadIps: [\"{ip}\"]\n  protocol: HBONE\n  node: n1\n  canonicalName: {sa}\n  canonicalRevision: {ver}\n  workloadName: {sa}-{ver}\n  services: {{\"default/{sa}.default.svc.cluster.local\": {{9080: 9080, 9090: 9090, 7000: 7000, 7001: 7001}}}}\n",
                name = spec.name,
                ver = spec.version,
            ));
            let pod = Arc::new(Pod {
                version: spec.version.to_owned(),
                behaviour: spec.behaviour,
                hits: AtomicU32::new(0),
                authorities: Mutex::new(Vec::new()),
                forwarded: Mutex::new(Vec::new()),
                flaky: flaky.clone(),
                once: once.clone(),
                requests: Mutex::new(Vec::new()),
                bodies: Mutex::new(Vec::new()),
                raw_heads: Mutex::new(Vec::new()),
            });
            let pod_id = id(&format!("spiffe://cluster.local/ns/default/sa/{sa}"));
            let tls = Arc::new(certs.server_config(&pod_id).await.expect("pod tls"));
            let server = Server::new(tls, ServerConfig::default(), PodHandler(pod.clone()));
            tokio::spawn(async move { server.run(listener, std::future::pending()).await });
            pods.push(pod);
        }
        let mesh_yaml = format!(
            "workloads:\n{workloads}services:\n\
- name: reviews\n  namespace: default\n  hostname: reviews.default.svc.cluster.local\n  vips: [\"/10.96.0.10\"]\n  ports: {{9080: 9080, 9090: 9090}}\n\
- name: ratings\n  namespace: default\n  hostname: ratings.default.svc.cluster.local\n  vips: [\"/10.96.0.11\"]\n  ports: {{9080: 9080}}\n\
- name: echo\n  namespace: default\n  hostname: echo.default.svc.cluster.local\n  vips: [\"/10.96.0.12\"]\n  ports: {{7000: 7000, 7001: 7001}}\n"
        );
        let mesh = ambit_mesh::Config::parse(&mesh_yaml, "test").expect("mesh config");
        let state = Arc::new(RwLock::new(MeshState::from_config(mesh)));
        let yaml = format!("hbonePort: {hbone_port}\n{routes_yaml}");
        let routes = RouteConfig::parse(&yaml, "test").expect("routes");
        let waypoint = Waypoint::new(cfg, state, routes, certs.clone());
        let (stop, _) = tokio::sync::watch::channel(false);
        let w = waypoint.clone();
        let (waypoint_addr, served) = match workers {
            None => {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let waypoint_addr = listener.local_addr().expect("addr");
                tokio::spawn(async move { w.serve(listener, std::future::pending()).await });
                (waypoint_addr, None)
            }
            Some(n) => {
                let ls = ambit_server::reuseport_listeners("127.0.0.1:0".parse().expect("addr"), n)
                    .expect("bind");
                let waypoint_addr = ls[0].local_addr().expect("addr");
                let stop = stop.clone();
                let served = w
                    .serve_workers(ls, move || {
                        let mut rx = stop.subscribe();
                        async move {
                            let _ = rx.wait_for(|s| *s).await;
                        }
                    })
                    .expect("workers");
                let served = tokio::spawn(served);
                (waypoint_addr, Some(served))
            }
        };
        Self {
            stop,
            served,
            certs,
            waypoint,
            waypoint_addr,
            pods,
            pod_ips: ips,
            hbone_port,
            flaky,
        }
    }

    pub fn pod(&self, version_or_index: usize) -> &Arc<Pod> {
        &self.pods[version_or_index]
    }

    /// An HBONE stream to the waypoint for `vip`, as `source`.
    pub async fn tunnel(&self, source: Identity, vip: &str) -> HboneStream {
        let client = Client::new(ClientConfig::default(), self.certs.as_ref().clone());
        let vip: SocketAddr = vip.parse().expect("vip");
        let mut req = ConnectRequest::new(source, vec![waypoint_id()], self.waypoint_addr, vip);
        let h = ambit_hbone::ConnectHeaders {
            forwarded: Some(ambit_hbone::Forwarded::new(
                "10.1.2.3:40000".parse().expect("addr"),
            )),
            ..Default::default()
        };
        req = req.with_headers(h);
        client.connect(req).await.expect("connect to the waypoint")
    }

    /// An HTTP/1.1 client over one tunnel.
    pub async fn http1(
        &self,
        source: Identity,
        vip: &str,
    ) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let stream = self.tunnel(source, vip).await;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http1 handshake");
        tokio::spawn(conn);
        sender
    }
}

/// Waits until the waypoint (all its workers) holds `n` idle upstream
/// connections (a returned connection goes back once hyper has seen the
/// response end).
pub async fn wait_idle(mesh: &Mesh, n: usize) {
    let t = std::time::Instant::now();
    while mesh.waypoint.pool_stats().idle < n {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{:?}",
            mesh.waypoint.pool_stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Mesh {
    /// An HTTP/2 (prior knowledge) client over one tunnel.
    pub async fn http2(
        &self,
        source: Identity,
        vip: &str,
    ) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let stream = self.tunnel(source, vip).await;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .expect("http2 handshake");
        tokio::spawn(conn);
        sender
    }
}

/// A response's status, headers and body.
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, n: &str) -> &str {
        self.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn send(
    s: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "reviews:9080");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).expect("request");
    s.ready().await.expect("ready");
    let resp = s.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
