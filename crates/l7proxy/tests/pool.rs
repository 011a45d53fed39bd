//! Upstream connection pooling, counted at the pods: every upstream HTTP
//! connection is one HBONE CONNECT the pod's server accepted.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};

/// Everything for reviews goes to v1 (pod 0); `/hang` has a 300 ms timeout.
const ROUTES: &str = r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http}
  routes:
  - name: hang
    match: [{path: {prefix: /hang}}]
    timeout: 300ms
    backends: [{subset: {version: v1}}]
  - name: v1
    backends: [{subset: {version: v1}}]
"#;

/// CONNECTs pod 0 has accepted (= upstream HTTP connections to it).
fn connects(mesh: &Mesh) -> usize {
    mesh.pod(0).authorities.lock().expect("lock").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_and_concurrent_requests_reuse_connections() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    for _ in 0..200 {
        let got = send(&mut c, "GET", "/productpage", &[]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "v1"));
    }
    let sequential = connects(&mesh);
    assert!(
        sequential <= 3,
        "200 sequential requests used {sequential} upstream connections"
    );

    // 8 downstream connections × 50 requests at once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                assert_eq!(send(&mut c, "GET", "/", &[]).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let total = connects(&mesh);
    assert!(
        total <= sequential + 16,
        "400 concurrent requests used {} more upstream connections",
        total - sequential
    );
    let stats = mesh.waypoint.pool_stats();
    assert_eq!(stats.opened as usize, total, "{stats:?}");
    assert_eq!(stats.reused as usize + total, 600, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_never_reused() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    for i in 1..=20 {
        let got = send(&mut c, "GET", "/close", &[]).await;
        assert_eq!(got.status, 200);
        // hop-by-hop: not passed on to the client.
        assert!(got.headers.get("connection").is_none());
        assert_eq!(
            connects(&mesh),
            i,
            "request {i} reused a closing connection"
        );
    }
    assert_eq!(mesh.waypoint.pool_stats().reused, 0);
    assert_eq!(mesh.waypoint.pool_stats().idle, 0);
    // A keep-alive answer pools again.
    send(&mut c, "GET", "/", &[]).await;
    wait_idle(&mesh, 1).await;
    send(&mut c, "GET", "/", &[]).await;
    assert_eq!(connects(&mesh), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_or_unread_responses_are_not_reused() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    send(&mut c, "GET", "/", &[]).await;
    wait_idle(&mesh, 1).await;
    assert_eq!(connects(&mesh), 1);

    // The upstream cuts its body short: the client sees the error, and the
    // connection is gone.
    let req = http::Request::builder()
        .uri("/partial")
        .header("host", "reviews:9080")
        .body(Full::new(Bytes::new()))
        .expect("request");
    c.ready().await.expect("ready");
    let resp = c.send_request(req).await.expect("head");
    assert_eq!(resp.status(), 200);
    assert!(resp.into_body().collect().await.is_err(), "cut body");
    assert_eq!(
        connects(&mesh),
        1,
        "the partial response reused the idle one"
    );
    assert_eq!(mesh.waypoint.pool_stats().idle, 0);

    // The client goes away after the head of a 32 MiB response (more than the HBONE windows and socket buffers hold): the
    // upstream connection, its body unread, is dropped, not pooled.
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    let req = http::Request::builder()
        .uri("/big")
        .header("host", "reviews:9080")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = c.send_request(req).await.expect("head");
    assert_eq!(resp.status(), 200);
    assert_eq!(connects(&mesh), 2);
    drop(resp);
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mesh.waypoint.pool_stats().idle, 0, "unread body pooled");

    // A request cancelled by the route timeout closes its connection too.
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    assert_eq!(send(&mut c, "GET", "/hang", &[]).await.status, 504);
    assert_eq!(connects(&mesh), 3);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        mesh.waypoint.pool_stats().idle,
        0,
        "timed-out request pooled"
    );

    // And the next request is served on a fresh connection.
    let t = Instant::now();
    let got = send(&mut c, "GET", "/", &[]).await;
    assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "v1"));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(connects(&mesh), 4);
    assert_eq!(mesh.waypoint.pool_stats().reused, 1, "only /partial reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_spreads_concurrent_load() {
    let routes = r#"
loadBalancer: LEAST_REQUEST
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http}
"#;
    let mesh = Mesh::start(routes).await;
    // One slow request pins v1 or v2; the next ones go to the other pod
    // while it is in flight.
    let mut slow = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    let hang = tokio::spawn(async move {
        let req = http::Request::builder()
            .uri("/hang")
            .header("host", "reviews:9080")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let _ = slow.send_request(req).await;
    });
    let t = Instant::now();
    while mesh.pod(0).hits.load(std::sync::atomic::Ordering::Relaxed)
        + mesh.pod(1).hits.load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = if mesh.pod(0).hits.load(std::sync::atomic::Ordering::Relaxed) == 1 {
        "v1"
    } else {
        "v2"
    };
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    for _ in 0..20 {
        let got = send(&mut c, "GET", "/", &[]).await;
        assert_eq!(got.status, 200);
        assert_ne!(got.body, busy, "least request chose the busy endpoint");
    }
    hang.abort();
}
