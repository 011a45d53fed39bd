//! Requests/s and p50/p99 latency through the waypoint versus direct HTTP
//! to the same upstream, measured in the same run.
//!
//! `cargo run --release -p ambit-l7proxy --example bench [-- SECONDS CONCURRENCY]`
//!
//! - direct: HTTP/1.1 keep-alive over plain TCP to the upstream server.
//! - waypoint: HTTP/1.1 keep-alive inside one HBONE stream per client to
//!   the waypoint, which routes (one prefix route, L7 policy evaluated) and
//!   forwards on pooled HTTP/1.1 connections, each over its own HBONE
//!   stream, to the upstream's HBONE terminator (standing in for ztunnel),
//!   which serves the same HTTP handler. `vs-nginx` compares with nginx.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ambit_hbone::{
    Client, ClientConfig, ConnectRequest, Decision, HboneStream, InboundRequest, Server,
    ServerConfig, handler_fn,
};
use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig};
use ambit_l7proxy::{RouteConfig, Waypoint, WaypointConfig};
use ambit_mesh::MeshState;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve_app<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO) {
    let svc = service_fn(|req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(&[b'x'; 1024]))))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn load<IO, F, Fut>(
    seconds: u64,
    concurrency: usize,
    connect: F,
) -> Result<(f64, Vec<Duration>), BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<IO, BoxError>>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let io = connect().await?;
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let req = Request::builder()
                    .uri("/api/bench")
                    .header("host", "bench:8080")
                    .body(Full::new(Bytes::new()))?;
                let t = Instant::now();
                s.ready().await?;
                let resp = s.send_request(req).await?;
                let ok = resp.status().is_success();
                resp.into_body().collect().await?;
                if !ok {
                    return Err::<Vec<Duration>, BoxError>("non-2xx answer".into());
                }
                lat.push(t.elapsed());
            }
            Ok(lat)
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rps = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    Ok((rps, all))
}

fn pct(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 * p) as usize).min(v.len() - 1);
    v[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let concurrency: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(16);

    let ca = Arc::new(LocalCa::generate("cluster.local")?);
    let certs = Arc::new(CertManager::new(ca, ManagerConfig::default()));
    let app_id: Identity = "spiffe://cluster.local/ns/default/sa/app".parse()?;
    let wp_id: Identity = "spiffe://cluster.local/ns/default/sa/waypoint".parse()?;
    let client_id: Identity = "spiffe://cluster.local/ns/default/sa/client".parse()?;

    // Upstream: plain HTTP, and an HBONE terminator serving the same app.
    let plain = TcpListener::bind("127.0.0.1:0").await?;
    let plain_addr = plain.local_addr()?;
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
        handler_fn(|_r: InboundRequest| async { Decision::accept(|s: HboneStream| serve_app(s)) }),
    );
    tokio::spawn(async move { server.run(hbone, std::future::pending()).await });

    let mesh = ambit_mesh::Config::parse(
        "workloads:\n- uid: app\n  name: app\n  namespace: default\n  serviceAccount: app\n  workloadIps: [\"127.0.0.1\"]\n  protocol: HBONE\n  services: {\"default/bench.default.svc.cluster.local\": {8080: 8080}}\nservices:\n- name: bench\n  namespace: default\n  hostname: bench.default.svc.cluster.local\n  vips: [\"/10.96.0.50\"]\n  ports: {8080: 8080}\n",
        "bench",
    )?;
    let routes = RouteConfig::parse(
        &format!(
            "hbonePort: {hbone_port}\nservices:\n- host: bench.default.svc.cluster.local\n  ports: {{8080: http}}\n  routes:\n  - match: [{{path: {{prefix: /api}}}}]\n    backends: [{{weight: 1}}]\n  policies:\n  - name: deny-delete\n    action: DENY\n    rules: [{{to: [{{operation: {{methods: [DELETE]}}}}]}}]\n"
        ),
        "bench",
    )?;
    let state = Arc::new(RwLock::new(MeshState::from_config(mesh)));
    let waypoint = Waypoint::new(
        WaypointConfig::new(wp_id.clone()),
        state,
        routes,
        certs.clone(),
    );
    let wl = TcpListener::bind("127.0.0.1:0").await?;
    let wp_addr = wl.local_addr()?;
    let w = waypoint.clone();
    tokio::spawn(async move { w.serve(wl, std::future::pending()).await });

    println!("{seconds} s per run, {concurrency} keep-alive connections, 1 KiB responses");
    let (d_rps, d_lat) = load(seconds, concurrency, || async move {
        let s = TcpStream::connect(plain_addr).await?;
        s.set_nodelay(true)?;
        Ok::<_, BoxError>(s)
    })
    .await?;
    let client = Arc::new(Client::new(ClientConfig::default(), certs.as_ref().clone()));
    let vip: SocketAddr = "10.96.0.50:8080".parse()?;
    let (w_rps, w_lat) = load(seconds, concurrency, || {
        let client = client.clone();
        let (src, wp) = (client_id.clone(), wp_id.clone());
        async move {
            let s = client
                .connect(ConnectRequest::new(src, vec![wp], wp_addr, vip))
                .await?;
            Ok::<_, BoxError>(s)
        }
    })
    .await?;
    println!(
        "direct HTTP      : {d_rps:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
        pct(&d_lat, 0.50),
        pct(&d_lat, 0.99)
    );
    println!(
        "through waypoint : {w_rps:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
        pct(&w_lat, 0.50),
        pct(&w_lat, 0.99)
    );
    println!(
        "waypoint/direct  : {:.2}x requests/s",
        w_rps / d_rps.max(1.0)
    );
    Ok(())
}
