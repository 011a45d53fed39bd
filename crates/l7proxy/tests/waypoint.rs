//! End-to-end on loopback: source HBONE client → waypoint → pod HBONE
//! servers, with every certificate from one LocalCa.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = r#"
outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 30s}
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http}
  routes:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    backends: [{subset: {version: v2}}]
  - name: rewrite
    match: [{path: {prefix: /old}}]
    rewrite: {prefix: /new, host: reviews-internal}
    backends: [{subset: {version: v1}}]
    requestHeaders: {set: {x-rewritten: "yes"}, remove: [x-debug]}
    responseHeaders: {add: {x-route: rewrite}, remove: [x-saw-debug]}
  - name: redirect
    match: [{path: {exact: /login}}]
    redirect: {path: /v2/login, code: 302}
  - name: abort
    match: [{path: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: 100}}
  - name: delay
    match: [{path: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 300ms, percentage: 100}}
  - name: flaky
    match: [{path: {prefix: /flaky}}]
    retries: {attempts: 2, retryOn: [5xx]}
  - name: hang
    match: [{path: {prefix: /hang}}]
    timeout: 300ms
  - name: split
    backends:
    - {subset: {version: v1}, weight: 90}
    - {subset: {version: v2}, weight: 10}
  policies:
  - name: deny-admin-delete
    action: DENY
    rules: [{to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]}]
  - name: allow-sleep
    action: ALLOW
    rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]}]
- host: echo.default.svc.cluster.local
  ports: {7000: tcp}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_90_10_over_1000_requests() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    let mut v1 = 0;
    for _ in 0..1000 {
        let got = send(&mut c, "GET", "/productpage", &[]).await;
        assert_eq!(got.status, 200);
        if got.body == "v1" {
            v1 += 1;
        }
    }
    assert!(
        (870..=930).contains(&v1),
        "v1 got {v1} of 1000 (want 900 ± 30)"
    );
    // Upstream CONNECTs carry `:authority podIP:targetPort` and `forwarded`
    // with the client as the waypoint saw it: the TCP peer. The test client
    // claims `forwarded: for="10.1.2.3:40000"`, which a waypoint must never
    // believe (any workload could claim any address).
    let auth = mesh.pod(0).authorities.lock().expect("lock").clone();
    assert!(
        auth.iter()
            .all(|a| a.contains(&format!("{}:9080", mesh.pod_ips[0]))),
        "{auth:?}"
    );
    let fwd = mesh.pod(0).forwarded.lock().expect("lock").clone();
    assert!(
        !fwd.is_empty()
            && fwd
                .iter()
                .all(|f| f.contains("127.0.0.1:") && !f.contains("10.1.2.3")),
        "{fwd:?}"
    );
    // Istio's metric names and labels.
    let text = mesh.waypoint.metrics().encode();
    assert!(text.contains("istio_requests_total{"), "{text}");
    assert!(text.contains("response_code=\"200\""), "{text}");
    assert!(text.contains("destination_service=\"reviews.default.svc.cluster.local\""));
    assert!(text.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\""));
    assert!(text.contains("istio_request_duration_milliseconds_bucket"));
    // Every label Istio's dashboards and Kiali group by.
    for label in [
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_service",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_service_name",
        "destination_service_namespace",
        "destination_cluster",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ] {
        assert!(
            text.contains(&format!(",{label}=\"")) || text.contains(&format!("{{{label}=\"")),
            "{label} missing: {text}"
        );
    }
    assert!(
        text.contains("destination_service_namespace=\"default\""),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_routes_to_v2() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    for _ in 0..50 {
        let got = send(&mut c, "GET", "/", &[("end-user", "jason")]).await;
        assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "v2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_and_header_edits() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    let got = send(&mut c, "GET", "/old/items?q=1", &[("x-debug", "1")]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-path"), "/new/items?q=1");
    assert_eq!(got.header("x-host"), "reviews-internal");
    assert_eq!(got.header("x-saw-rewritten"), "yes");
    assert_eq!(got.header("x-route"), "rewrite");
    assert!(
        got.headers.get("x-saw-debug").is_none(),
        "removed from the response"
    );
    assert_eq!(got.body, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_abort_and_delay() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    let got = send(&mut c, "GET", "/login?u=1", &[]).await;
    assert_eq!(got.status, 302);
    assert_eq!(got.header("location"), "http://reviews:9080/v2/login?u=1");

    let got = send(&mut c, "GET", "/abort", &[]).await;
    assert_eq!(got.status, 418);
    assert_eq!(
        mesh.pod(0).hits.load(Ordering::Relaxed) + mesh.pod(1).hits.load(Ordering::Relaxed),
        0
    );

    let t = Instant::now();
    let got = send(&mut c, "GET", "/slow", &[]).await;
    assert_eq!(got.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_503_succeeds_on_second_attempt() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    let got = send(&mut c, "GET", "/flaky", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(mesh.flaky.load(Ordering::SeqCst), 2, "exactly two attempts");
    // The retry went to the other endpoint (previous hosts are avoided).
    assert_eq!(mesh.pod(0).hits.load(Ordering::Relaxed), 1);
    assert_eq!(mesh.pod(1).hits.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_returns_504() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    let t = Instant::now();
    let got = send(&mut c, "GET", "/hang", &[]).await;
    assert_eq!(got.status, 504);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_deny_and_allow_by_principal() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    assert_eq!(
        send(&mut c, "DELETE", "/admin/users", &[]).await.status,
        403
    );
    assert_eq!(send(&mut c, "GET", "/admin/users", &[]).await.status, 200);
    assert_eq!(send(&mut c, "DELETE", "/items/1", &[]).await.status, 200);
    // Another identity matches no ALLOW policy.
    let intruder = id("spiffe://cluster.local/ns/other/sa/intruder");
    let mut c = mesh.http1(intruder, REVIEWS_VIP).await;
    let got = send(&mut c, "GET", "/", &[]).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.body, "RBAC: access denied\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_failing_endpoint() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), RATINGS_VIP).await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(send(&mut c, "GET", "/ratings", &[]).await.status.as_u16());
    }
    let bad = mesh.pod(2).hits.load(Ordering::Relaxed);
    assert_eq!(bad, 3, "ejected after 3 consecutive 503s: {statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(mesh.pod(3).hits.load(Ordering::Relaxed), 37);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_passthrough_echoes_bytes() {
    let mesh = Mesh::start(ROUTES).await;
    for vip in [ECHO_VIP, SNIFF_VIP] {
        // 7000 is configured `tcp`; 7001 is sniffed (not HTTP).
        let mut s = mesh.tunnel(sleep_id(), vip).await;
        let msg = b"\x00\x01 not http at all \xff".repeat(1000);
        s.write_all(&msg).await.expect("write");
        s.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, msg, "{vip}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_inside_the_tunnel() {
    let mesh = Mesh::start(ROUTES).await;
    let stream = mesh.tunnel(sleep_id(), REVIEWS_VIP).await;
    let (mut s, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    for _ in 0..5 {
        let req = http::Request::builder()
            .uri("http://reviews:9080/")
            .header("end-user", "jason")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let resp = s.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get("x-version").map(|v| v.as_bytes()),
            Some(&b"v2"[..])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vip_is_rejected() {
    let mesh = Mesh::start(ROUTES).await;
    let client = ambit_hbone::Client::new(Default::default(), mesh.certs.as_ref().clone());
    let req = ambit_hbone::ConnectRequest::new(
        sleep_id(),
        vec![waypoint_id()],
        mesh.waypoint_addr,
        "10.99.99.99:80"
            .parse::<std::net::SocketAddr>()
            .expect("addr"),
    );
    match client.connect(req).await {
        Ok(_) => panic!("an unknown VIP was accepted"),
        Err(err) => assert_eq!(err.status().map(|s| s.as_u16()), Some(400)),
    }
}

/// Policy is not only checked when a connection opens: every request is
/// authorized against the policy in force when it arrives, so a DENY pushed
/// while an HTTP connection is open applies to its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_deny_applies_to_the_next_request_on_an_open_connection() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    assert_eq!(send(&mut c, "GET", "/productpage", &[]).await.status, 200);
    let old = r#"  - name: deny-admin-delete
    action: DENY
    rules: [{to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]}]"#;
    let new = r#"  - name: deny-get
    action: DENY
    rules: [{to: [{operation: {methods: [GET]}}]}]"#;
    assert!(ROUTES.contains(old));
    let yaml = format!(
        "hbonePort: {}\n{}",
        mesh.hbone_port,
        ROUTES.replace(old, new)
    );
    mesh.waypoint
        .set_routes(ambit_l7proxy::RouteConfig::parse(&yaml, "test").expect("routes"));
    let got = send(&mut c, "GET", "/productpage", &[]).await;
    assert_eq!(got.status, 403, "same connection, after the push");
}

/// Endpoints are cached per connection for one mesh revision: a workload
/// removed while an HTTP connection is open is no longer used by that
/// connection's next request, and one added back is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_change_applies_to_the_next_request_on_an_open_connection() {
    let mesh = Mesh::start(ROUTES).await;
    let mut c = mesh.http1(sleep_id(), REVIEWS_VIP).await;
    let jason = [("end-user", "jason")];
    let got = send(&mut c, "GET", "/productpage", &jason).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "v2");
    let uid = "cluster1//v1/Pod/default/reviews-v2";
    let v2 = {
        let mut state = mesh.waypoint.state().write().expect("state");
        let w = state.workload(uid).expect("v2 workload");
        assert!(state.remove_workload(uid));
        w
    };
    let got = send(&mut c, "GET", "/productpage", &jason).await;
    assert_eq!(got.status, 503, "v2 gone: no healthy upstream");
    mesh.waypoint
        .state()
        .write()
        .expect("state")
        .insert_workload(v2.as_ref().clone());
    let got = send(&mut c, "GET", "/productpage", &jason).await;
    assert_eq!(got.status, 200, "v2 back");
    assert_eq!(got.body, "v2");
}
