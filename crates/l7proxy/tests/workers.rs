//! The waypoint on per-core workers (`Waypoint::serve_workers`): the kernel
//! spreads tunnels over the workers' `SO_REUSEPORT` listeners, each worker
//! pools its own upstream connections, routes set on the waypoint reach
//! every worker, and a stop drains them all.

mod common;

use std::time::Duration;

use common::*;

const V1: &str = r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http}
  routes:
  - backends: [{subset: {version: v1}}]
"#;

const V2: &str = r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http}
  routes:
  - backends: [{subset: {version: v2}}]
"#;

/// CONNECTs a pod has accepted (= upstream HTTP connections to it).
fn connects(mesh: &Mesh, pod: usize) -> usize {
    mesh.pod(pod).authorities.lock().expect("lock").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_pool_their_own_connections_and_share_routes() {
    let mesh = Mesh::start_workers(V1, 2).await;
    // 24 tunnels (24 TCP connections to the waypoint: the kernel hashes
    // them over both workers), one request at a time.
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(mesh.http1(sleep_id(), REVIEWS_VIP).await);
    }
    for round in 0..3 {
        for c in &mut clients {
            let got = send(c, "GET", "/", &[]).await;
            assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "v1"));
        }
        if round == 0 {
            // Each worker has dialled v1 once and pooled it.
            wait_idle(&mesh, 2).await;
        }
    }
    // One shared pool would need one upstream connection for requests sent
    // one at a time; per-worker pools need one per worker. (A request can
    // race its predecessor's connection back into the pool, hence the
    // margin.)
    let opened = connects(&mesh, 0);
    let stats = mesh.waypoint.pool_stats();
    assert!(
        (2..=4).contains(&opened),
        "72 sequential requests on 2 workers opened {opened}: {stats:?}"
    );
    assert_eq!(stats.opened as usize, opened, "{stats:?}");
    assert_eq!(stats.reused as usize + opened, 72, "{stats:?}");

    // New routes on the waypoint reach both workers' connections.
    let v2 = format!("hbonePort: {}\n{V2}", mesh.hbone_port);
    mesh.waypoint
        .set_routes(ambit_l7proxy::RouteConfig::parse(&v2, "test").expect("routes"));
    for c in &mut clients {
        let got = send(c, "GET", "/", &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "v2"));
    }
    assert!((2..=4).contains(&connects(&mesh, 1)));
    // The metrics are shared too: every request counted once.
    let text = mesh.waypoint.metrics().encode();
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 96.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_drains_every_worker() {
    let mut mesh = Mesh::start_workers(V1, 3).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    assert_eq!(send(&mut c, "GET", "/", &[]).await.status, 200);
    drop(c);
    let _ = mesh.stop.send(true);
    let served = mesh.served.take().expect("workers");
    let r = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the workers stop")
        .expect("no panic");
    assert!(r.is_ok(), "{r:?}");
    // Every listener of the group is closed.
    let refused = tokio::net::TcpStream::connect(mesh.waypoint_addr).await;
    assert!(refused.is_err(), "a worker still listens");
}
