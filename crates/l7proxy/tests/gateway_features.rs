//! The Gateway API / GAMMA features of the engine, end to end on loopback:
//! h2c and gRPC upstreams, mirrors, backend timeouts, full-path rewrites,
//! redirects with prefix and port, retries on status codes, L4
//! authorization of TCP connections and IP-block policies.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ambit_l7proxy::RouteConfig;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Replaces the mesh's routes with `yaml`.
fn set_routes(mesh: &Mesh, yaml: &str) {
    let text = format!("hbonePort: {}\n{yaml}", mesh.hbone_port);
    mesh.waypoint
        .set_routes(RouteConfig::parse(&text, "test").expect("routes"));
}

/// Waits until `cond` holds on the metrics text.
async fn wait_metrics(mesh: &Mesh, what: &str, cond: impl Fn(&str) -> bool) {
    let t = Instant::now();
    loop {
        let text = mesh.waypoint.metrics().encode();
        if cond(&text) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct GrpcGot {
    status: u16,
    headers: http::HeaderMap,
    trailers: Option<http::HeaderMap>,
}

async fn grpc_call(
    c: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
    grpc_status: &str,
) -> GrpcGot {
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://reviews:9080{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-grpc-status", grpc_status)
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    c.ready().await.expect("ready");
    let resp = c.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("body");
    GrpcGot {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
    }
}

fn grpc_status_of(h: Option<&http::HeaderMap>) -> &str {
    h.and_then(|h| h.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

const GRPC_ROUTES: &str = r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: grpc}
  routes:
  - backends: [{subset: {version: v1}}]
  policies:
  - name: deny-denied
    action: DENY
    rules: [{to: [{operation: {paths: ["/denied*"]}}]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_upstream_with_grpc_status_in_metrics() {
    let mesh = Mesh::start(GRPC_ROUTES).await;
    let c = mesh.http2(sleep_id(), REVIEWS_VIP).await;
    // Concurrent calls share one upstream HTTP/2 connection.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            grpc_call(&mut c, "/pkg.Svc/Call", "5").await
        }));
    }
    for t in tasks {
        let got = t.await.expect("task");
        assert_eq!(got.status, 200);
        assert_eq!(grpc_status_of(got.trailers.as_ref()), "5");
        assert_eq!(
            got.headers.get("x-proto").map(|v| v.as_bytes()),
            Some(&b"HTTP/2.0"[..])
        );
        assert_eq!(
            got.headers.get("x-saw-te").map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
    }
    let mut c = c;
    // Trailers-only answer: the status is in the headers.
    let got = grpc_call(&mut c, "/trailers.only/x", "3").await;
    assert_eq!(grpc_status_of(Some(&got.headers)), "3");
    // The waypoint's own answer to a gRPC request: 403 → PERMISSION_DENIED.
    let got = grpc_call(&mut c, "/denied/x", "0").await;
    assert_eq!(got.status, 403);
    assert_eq!(grpc_status_of(Some(&got.headers)), "7");
    let stats = mesh.waypoint.pool_stats();
    assert_eq!(stats.h2_opened, 1, "{stats:?}");
    assert_eq!(stats.h2, 1, "{stats:?}");
    // A plain HTTP/1.1 request to a `grpc` port also goes upstream as h2c.
    let mut h1 = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    let got = send(&mut h1, "GET", "/plain", &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.header("x-proto")),
        (200, "HTTP/2.0")
    );
    assert_eq!(got.header("x-host"), "reviews:9080");
    wait_metrics(&mesh, "grpc statuses", |t| {
        t.contains("grpc_response_status=\"5\"")
            && t.contains("grpc_response_status=\"3\"")
            && t.contains("grpc_response_status=\"7\"")
            && t.contains("request_protocol=\"grpc\"")
    })
    .await;
    let text = mesh.waypoint.metrics().encode();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{") && l.contains("grpc_response_status=\"5\"")
        })
        .unwrap_or_default();
    assert!(line.ends_with(" 8"), "{line}");
    // The plain request carries no gRPC status.
    assert!(
        text.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("request_protocol=\"http\"")
            && l.contains("grpc_response_status=\"\"")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_http2_goes_upstream_as_h2c_on_an_http_port() {
    let mesh = Mesh::start(
        "services:\n- host: reviews.default.svc.cluster.local\n  ports: {9080: http}\n",
    )
    .await;
    let mut c = mesh.http2(sleep_id(), REVIEWS_VIP).await;
    let got = grpc_call(&mut c, "/pkg.Svc/Call", "0").await;
    assert_eq!(got.status, 200);
    assert_eq!(grpc_status_of(got.trailers.as_ref()), "0");
    assert_eq!(
        got.headers.get("x-proto").map(|v| v.as_bytes()),
        Some(&b"HTTP/2.0"[..])
    );
    // Plain HTTP/2 on an `http` port: HTTP/1.1 upstream, as before.
    let req = Request::builder()
        .uri("http://reviews:9080/plain")
        .body(Full::new(Bytes::new()))
        .expect("request");
    c.ready().await.expect("ready");
    let resp = c.send_request(req).await.expect("response");
    assert_eq!(
        resp.headers().get("x-proto").map(|v| v.as_bytes()),
        Some(&b"HTTP/1.1"[..])
    );
    let stats = mesh.waypoint.pool_stats();
    assert_eq!((stats.h2_opened, stats.opened), (1, 2), "{stats:?}");
}

const ROUTES: &str = r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http}
  routes:
  - name: mirrored
    match: [{path: {prefix: /m}}]
    backends: [{subset: {version: v1}}]
    mirrors: [{subset: {version: v2}}]
  - name: never-mirrored
    match: [{path: {prefix: /half}}]
    backends: [{subset: {version: v1}}]
    mirrors: [{subset: {version: v2}, percentage: 0}]
  - name: backend-timeout
    match: [{path: {prefix: /hang}}]
    backends: [{subset: {version: v1}}]
    backendTimeout: 200ms
    timeout: 10s
  - name: full-path
    match: [{path: {prefix: /fp}}]
    backends: [{subset: {version: v1}}]
    rewrite: {fullPath: /replaced}
  - name: redirect-prefix-port
    match: [{path: {prefix: /oldapp}}]
    redirect: {prefix: /newapp, port: 8443, scheme: https, code: 302}
  - name: redirect-default-port
    match: [{path: {prefix: /p80}}]
    redirect: {port: 80}
  - name: retry-other-code
    match: [{path: {prefix: /once409/wrong}}]
    backends: [{subset: {version: v1}}]
    retries: {attempts: 2, codes: [500]}
  - name: retry-409
    match: [{path: {prefix: /once409}}]
    backends: [{subset: {version: v1}}]
    retries: {attempts: 2, codes: [409]}
  - backends: [{subset: {version: v1}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_gets_a_shadow_copy_and_never_delays_the_request() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    // The mirror (v2) hangs on this one; the request is not held up.
    let t = Instant::now();
    let got = send(&mut c, "GET", "/m/1", &[("x-hang-on", "v2")]).await;
    assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "v1"));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let got = send(&mut c, "GET", "/m/2?a=b", &[]).await;
    assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "v1"));
    let t = Instant::now();
    while mesh.waypoint.metrics().mirrors("sent") < 1 {
        assert!(t.elapsed() < Duration::from_secs(5), "no mirror sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v2 = mesh.pod(1).requests.lock().expect("lock").clone();
    assert!(
        v2.contains(&("reviews-shadow:9080".to_owned(), "/m/1".to_owned()))
            && v2.contains(&("reviews-shadow:9080".to_owned(), "/m/2?a=b".to_owned())),
        "{v2:?}"
    );
    let v1 = mesh.pod(0).requests.lock().expect("lock").clone();
    assert!(v1.iter().all(|(h, _)| h == "reviews:9080"), "{v1:?}");
    // Percentage 0: never mirrored.
    for _ in 0..5 {
        assert_eq!(send(&mut c, "GET", "/half", &[]).await.status, 200);
    }
    // A body over the mirror cap: the request goes through, the mirror is
    // skipped and counted.
    let req = Request::builder()
        .method("POST")
        .uri("/m/big")
        .header("host", "reviews:9080")
        .body(Full::new(Bytes::from(vec![b'x'; 100 * 1024])))
        .expect("request");
    c.ready().await.expect("ready");
    let resp = c.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    assert_eq!(mesh.waypoint.metrics().mirrors("skipped_body"), 1);
    let v2 = mesh.pod(1).requests.lock().expect("lock").clone();
    assert!(
        v2.iter()
            .all(|(_, p)| !p.starts_with("/half") && p != "/m/big"),
        "{v2:?}"
    );
    let text = mesh.waypoint.metrics().encode();
    assert!(
        text.contains("ambit_waypoint_mirror_requests_total{outcome=\"sent\"}"),
        "{text}"
    );
}

/// Sends a chunked (unknown-length) HTTP/1.1 POST of `body` on a raw
/// tunnel and returns the response's text.
async fn post_chunked(mesh: &Mesh, path: &str, body: &[u8]) -> String {
    let mut s = mesh.tunnel(sleep_id(), REVIEWS_VIP).await;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: reviews:9080\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_tees_bodies_of_unknown_length() {
    let mesh = Mesh::start(ROUTES).await;
    let small: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let resp = post_chunked(&mesh, "/m/chunked", &small).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let t = Instant::now();
    while mesh.waypoint.metrics().mirrors("sent") < 1 {
        assert!(t.elapsed() < Duration::from_secs(5), "no mirror sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v2 = mesh.pod(1).bodies.lock().expect("lock").clone();
    assert_eq!(
        v2,
        vec![("/m/chunked".to_owned(), Some(Bytes::from(small.clone())))]
    );
    let v1 = mesh.pod(0).bodies.lock().expect("lock").clone();
    assert_eq!(
        v1,
        vec![("/m/chunked".to_owned(), Some(Bytes::from(small)))]
    );
    // Past the cap (64 KiB): the request gets it all, the mirror is cut
    // off and counted as skipped.
    let big = vec![b'z'; 100 * 1024];
    let resp = post_chunked(&mesh, "/m/chunked-big", &big).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let t = Instant::now();
    while mesh.waypoint.metrics().mirrors("skipped_body") < 1 {
        assert!(t.elapsed() < Duration::from_secs(5), "no skipped mirror");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v1 = mesh.pod(0).bodies.lock().expect("lock").clone();
    assert!(
        v1.iter()
            .any(|(p, b)| p == "/m/chunked-big" && b.as_ref().map(Bytes::len) == Some(big.len())),
        "{:?}",
        v1.iter()
            .map(|(p, b)| (p, b.as_ref().map(Bytes::len)))
            .collect::<Vec<_>>()
    );
    let v2 = mesh.pod(1).bodies.lock().expect("lock").clone();
    assert!(
        v2.iter().all(|(p, b)| p != "/m/chunked-big" || b.is_none()),
        "a truncated copy reached the mirror as complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_timeout_rewrite_redirect_and_retry_codes() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    // backendTimeout: 504 after the attempt's 200 ms, not the 10 s route
    // timeout.
    let t = Instant::now();
    let got = send(&mut c, "GET", "/hang", &[]).await;
    assert_eq!(got.status, 504);
    assert!(
        t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
    wait_metrics(&mesh, "UT", |t| {
        t.contains("response_code=\"504\"") && t.contains("response_flags=\"UT\"")
    })
    .await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    // ReplaceFullPath keeps the query.
    let got = send(&mut c, "GET", "/fp/a/b?q=1", &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.header("x-path")),
        (200, "/replaced?q=1")
    );
    // ReplacePrefixMatch + port + scheme.
    let got = send(&mut c, "GET", "/oldapp/x?y=1", &[]).await;
    assert_eq!(got.status, 302);
    assert_eq!(got.header("location"), "https://reviews:8443/newapp/x?y=1");
    // The scheme's default port is left out.
    let got = send(&mut c, "GET", "/p80/z", &[]).await;
    assert_eq!(got.status, 301);
    assert_eq!(got.header("location"), "http://reviews/p80/z");
    // Codes-only retries: 409 is not in [500], so it is answered as is.
    let got = send(&mut c, "GET", "/once409/wrong", &[]).await;
    assert_eq!(got.status, 409);
    let hits = mesh.pod(0).hits.load(Ordering::Relaxed);
    mesh.pod(0).once.store(0, Ordering::SeqCst);
    let got = send(&mut c, "GET", "/once409/right", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(mesh.pod(0).hits.load(Ordering::Relaxed), hits + 2);
}

/// Writes `hello` on a tunnel to `vip` and returns what comes back before
/// the end (empty when the waypoint closed the connection).
async fn echo_once(mesh: &Mesh, vip: &str) -> Vec<u8> {
    let mut s = mesh.tunnel(sleep_id(), vip).await;
    let _ = s.write_all(b"hello").await;
    let _ = s.flush().await;
    let mut buf = vec![0u8; 5];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => buf,
        Ok(Err(_)) => Vec::new(),
        Err(_) => panic!("neither an echo nor a close within 5 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_authorization_on_tcp_connections() {
    // DENY with a path and a port: on TCP the path is ignored, so port
    // 7000 is denied and 7001 (sniffed TCP) is not.
    let mesh = Mesh::start(
        r#"
services:
- host: echo.default.svc.cluster.local
  ports: {7000: tcp}
  policies:
  - name: deny-7000
    action: DENY
    rules: [{to: [{operation: {paths: ["/x*"], ports: [7000]}}]}]
"#,
    )
    .await;
    assert_eq!(echo_once(&mesh, ECHO_VIP).await, Vec::<u8>::new());
    assert_eq!(echo_once(&mesh, SNIFF_VIP).await, b"hello");
    wait_metrics(&mesh, "tcp deny", |t| {
        t.lines().any(|l| {
            l.starts_with("istio_tcp_connections_closed_total{")
                && l.contains("response_flags=\"DENY\"")
                && l.contains("destination_service=\"echo.default.svc.cluster.local\"")
        })
    })
    .await;
    // An ALLOW whose rule needs HTTP never matches TCP: both denied.
    set_routes(
        &mesh,
        r#"
services:
- host: echo.default.svc.cluster.local
  ports: {7000: tcp}
  policies:
  - name: allow-get
    rules: [{to: [{operation: {methods: [GET]}}]}]
"#,
    );
    assert_eq!(echo_once(&mesh, ECHO_VIP).await, Vec::<u8>::new());
    assert_eq!(echo_once(&mesh, SNIFF_VIP).await, Vec::<u8>::new());
    // L4 fields only: principal and port.
    set_routes(
        &mesh,
        r#"
services:
- host: echo.default.svc.cluster.local
  ports: {7000: tcp}
  policies:
  - name: allow-sleep-7001
    rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
      to: [{operation: {ports: [7001]}}]
"#,
    );
    assert_eq!(echo_once(&mesh, ECHO_VIP).await, Vec::<u8>::new());
    assert_eq!(echo_once(&mesh, SNIFF_VIP).await, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_block_policies() {
    // The waypoint sees the HBONE peer at 127.0.0.1.
    let mesh = Mesh::start(
        r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http}
  policies:
  - name: deny-loopback-blocked
    action: DENY
    rules:
    - from: [{source: {ipBlocks: ["127.0.0.0/8"]}}]
      to: [{operation: {paths: ["/blocked*"]}}]
  - name: deny-remote
    action: DENY
    rules: [{from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]}]
"#,
    )
    .await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    assert_eq!(send(&mut c, "GET", "/blocked/1", &[]).await.status, 403);
    assert_eq!(send(&mut c, "GET", "/ok", &[]).await.status, 200);
    let xff = [("x-forwarded-for", "203.0.113.5, 10.0.0.1")];
    assert_eq!(send(&mut c, "GET", "/ok", &xff).await.status, 403);
    let xff = [("x-forwarded-for", "198.51.100.1")];
    assert_eq!(send(&mut c, "GET", "/ok", &xff).await.status, 200);
    // ALLOW by block: 127.0.0.1 is not in 10/8, then is outside it.
    set_routes(
        &mesh,
        r#"
services:
- host: reviews.default.svc.cluster.local
  policies:
  - name: allow-ten
    rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}]
"#,
    );
    assert_eq!(send(&mut c, "GET", "/ok", &[]).await.status, 403);
    set_routes(
        &mesh,
        r#"
services:
- host: reviews.default.svc.cluster.local
  policies:
  - name: allow-not-ten
    rules:
    - from: [{source: {notIpBlocks: ["10.0.0.0/8"]}}]
      when: [{key: source.ip, values: ["127.0.0.1"]}, {key: destination.port, values: ["9080"]}]
"#,
    );
    assert_eq!(send(&mut c, "GET", "/ok", &[]).await.status, 200);
}
