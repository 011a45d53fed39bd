//! The lean HTTP/1.1 client against an upstream that writes raw bytes
//! ([`common::raw_answer`]): body framing, connection reuse, and answers
//! that break HTTP/1.1. Each upstream connection is one HBONE CONNECT the
//! pod accepted, so reuse is counted at the pod.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};

const ROUTES: &str = r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: http}
  routes:
  - name: buffered
    match: [{path: {prefix: /raw/post}}]
    backends: [{subset: {version: v1}}]
    retries: {attempts: 1, codes: [599]}
  - name: v1
    backends: [{subset: {version: v1}}]
"#;

/// Upstream connections pod 0 accepted on the raw port.
fn raw_connects(mesh: &Mesh) -> usize {
    mesh.pod(0)
        .authorities
        .lock()
        .expect("lock")
        .iter()
        .filter(|a| a.contains(":9090"))
        .count()
}

/// A request; the error when the response or its body failed.
async fn try_send(
    s: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: &'static str,
) -> Result<Got, String> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "reviews:9090")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    s.ready().await.map_err(|e| e.to_string())?;
    let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn get(
    s: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> (u16, String) {
    let got = try_send(s, "GET", path, "").await.expect(path);
    (got.status.as_u16(), got.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_answers_keep_their_connection() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), RAW_VIP).await;
    assert_eq!(get(&mut c, "/raw/ok").await, (200, "ok".into()));
    assert_eq!(
        get(&mut c, "/raw/chunked").await,
        (200, "hello world".into())
    );
    let head = try_send(&mut c, "HEAD", "/raw/head", "")
        .await
        .expect("HEAD");
    assert_eq!((head.status.as_u16(), head.body.as_str()), (200, ""));
    assert_eq!(head.header("content-length"), "5", "HEAD keeps the length");
    assert_eq!(
        get(&mut c, "/raw/continue").await,
        (200, "after-100".into()),
        "an interim 100 is skipped"
    );
    assert_eq!(get(&mut c, "/raw/ok").await, (200, "ok".into()));
    assert_eq!(raw_connects(&mesh), 1, "five answers on one connection");
    let stats = mesh.waypoint.pool_stats();
    assert_eq!((stats.opened, stats.reused), (1, 4), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_ended_by_the_connection_or_ambiguous_are_not_reused() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), RAW_VIP).await;
    // Read to the end of the connection.
    assert_eq!(get(&mut c, "/raw/eof").await, (200, "until-eof".into()));
    assert_eq!(raw_connects(&mesh), 1);
    // HTTP/1.0 without keep-alive.
    assert_eq!(get(&mut c, "/raw/http10").await, (200, "10".into()));
    assert_eq!(raw_connects(&mesh), 2);
    // transfer-encoding and content-length: chunked wins, no reuse.
    assert_eq!(get(&mut c, "/raw/te-cl").await, (200, "abc".into()));
    assert_eq!(raw_connects(&mesh), 3);
    // `connection: close` after the answer.
    assert_eq!(get(&mut c, "/raw/close-after").await, (200, "bye".into()));
    assert_eq!(get(&mut c, "/raw/ok").await, (200, "ok".into()));
    assert_eq!(raw_connects(&mesh), 5);
    assert_eq!(mesh.waypoint.pool_stats().reused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_behind_an_answer_never_answer_the_next_request() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), RAW_VIP).await;
    assert_eq!(get(&mut c, "/raw/extra").await, (200, "ok".into()));
    // The smuggled second answer must not be taken for this one.
    assert_eq!(get(&mut c, "/raw/ok").await, (200, "ok".into()));
    assert_eq!(get(&mut c, "/raw/ok").await, (200, "ok".into()));
    assert_eq!(raw_connects(&mesh), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_upstream_errors() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), RAW_VIP).await;
    for path in [
        "/raw/conflict",
        "/raw/bad-length",
        "/raw/big-head",
        "/raw/101",
        "/raw/garbage",
    ] {
        let got = try_send(&mut c, "GET", path, "").await.expect(path);
        assert_eq!(got.status, 503, "{path}: {}", got.body);
        assert_eq!(got.body, "upstream reset\n", "{path}");
    }
    // Each broke its connection; the next request still works.
    assert_eq!(get(&mut c, "/raw/ok").await, (200, "ok".into()));
    assert_eq!(raw_connects(&mesh), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_abort_the_downstream_answer() {
    let mesh = Mesh::start(ROUTES).await;
    for path in ["/raw/truncated", "/raw/bad-chunk"] {
        let mut c = mesh.http1(sleep_id(), RAW_VIP).await;
        let got = tokio::time::timeout(Duration::from_secs(5), try_send(&mut c, "GET", path, ""))
            .await
            .expect("no hang");
        assert!(got.is_err(), "{path}: a cut body must not end cleanly");
    }
    // The waypoint pooled neither connection.
    let mut c = mesh.http1(sleep_id(), RAW_VIP).await;
    assert_eq!(get(&mut c, "/raw/ok").await, (200, "ok".into()));
    assert_eq!(raw_connects(&mesh), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), RAW_VIP).await;
    // The answer carries no `connection: close`, so the waypoint pools the
    // connection; the pod then closes it.
    assert_eq!(get(&mut c, "/raw/close-after").await, (200, "bye".into()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        assert_eq!(get(&mut c, "/raw/ok").await, (200, "ok".into()));
    }
    assert_eq!(raw_connects(&mesh), 2);
    let stats = mesh.waypoint.pool_stats();
    assert_eq!((stats.opened, stats.reused), (2, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_and_bodies_on_the_wire() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), RAW_VIP).await;
    // Buffered (the route retries), so the lean client writes it whole.
    let got = try_send(&mut c, "POST", "/raw/post?q=1", "payload")
        .await
        .expect("post");
    assert_eq!(got.status, 200);
    let got = try_send(&mut c, "PUT", "/raw/post/empty", "")
        .await
        .expect("put");
    assert_eq!(got.status, 200);
    assert_eq!(get(&mut c, "/raw/ok").await, (200, "ok".into()));
    let heads = mesh.pod(0).raw_heads.lock().expect("lock").clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    let lines = |h: &str| -> Vec<String> { h.split("\r\n").map(str::to_owned).collect() };
    let post = lines(&heads[0]);
    assert_eq!(post[0], "POST /raw/post?q=1 HTTP/1.1");
    assert!(post.contains(&"host: reviews:9090".to_owned()), "{post:?}");
    assert_eq!(
        post.iter()
            .filter(|l| l.starts_with("content-length"))
            .count(),
        1,
        "{post:?}"
    );
    assert!(post.contains(&"content-length: 7".to_owned()), "{post:?}");
    assert!(!post.iter().any(|l| l.starts_with("transfer-encoding")));
    let put = lines(&heads[1]);
    assert!(put.contains(&"content-length: 0".to_owned()), "{put:?}");
    let get_head = lines(&heads[2]);
    assert!(
        !get_head.iter().any(|l| l.starts_with("content-length")),
        "a GET without a body carries no length: {get_head:?}"
    );
    let bodies = mesh.pod(0).bodies.lock().expect("lock").clone();
    assert_eq!(
        bodies[0],
        (
            "/raw/post?q=1".to_owned(),
            Some(Bytes::from_static(b"payload"))
        )
    );
    assert_eq!(raw_connects(&mesh), 1);
}
