//! The waypoint configured from the Kubernetes API, end to end through
//! the local mesh: `sleep` → ztunnel A → the waypoint (routes and
//! policies from an in-process API server) → ztunnel → the reviews pods.
//! Each change is applied to the API server and must take effect on push:
//! an HTTPRoute attached to the `reviews` Service reroutes its traffic;
//! a weight change, a response header filter, a timeout and a mirror act;
//! a bad backendRef gets `ResolvedRefs=False` and changes nothing; a
//! GRPCRoute routes by method; AuthorizationPolicies targeting the
//! waypoint's Gateway deny by path, by source principal and (L4) by port.
//!
//! Needs root and the `cni-node` and `waypoint` binaries beside this
//! crate's ztunnel (`cargo test --workspace` builds them).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ambit_testbed::httpapp::{self, Req, Resp, Version};
use ambit_testbed::kubeapi::FakeApi;
use ambit_testbed::{Binaries, LocalMesh, Options, REVIEWS_VIP, kube_mesh};
use serde_json::{Value, json};

const G: &str = "gateway.networking.k8s.io";
const SECURITY: &str = "security.istio.io";
const CONTROLLER: &str = "ambit.dev/waypoint";

fn reviews() -> SocketAddr {
    REVIEWS_VIP.parse().expect("vip")
}

fn send(m: &LocalMesh, v: Version, reqs: Vec<Req>) -> Vec<Resp> {
    httpapp::send(m.sleep(), reviews(), v, reqs, Duration::from_secs(10)).expect("send")
}

fn gets(m: &LocalMesh, path: &str, n: usize) -> Vec<Resp> {
    send(m, Version::Http1, (0..n).map(|_| Req::get(path)).collect())
}

fn served(rs: &[Resp]) -> Vec<String> {
    rs.iter()
        .map(|r| {
            r.served_by
                .clone()
                .unwrap_or_else(|| format!("{}", r.status))
        })
        .collect()
}

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Polls `probe` until `ok` accepts its result (15 s), for changes that
/// reach the waypoint through the watch, debounce and translation.
fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = probe();
        if ok(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: last saw {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn api(m: &LocalMesh) -> &FakeApi {
    m.kube().expect("kube routes")
}

fn backend(name: &str, weight: u32) -> Value {
    json!({"name": name, "port": 9080, "weight": weight})
}

/// The `reviews` HTTPRoute: `/hang` times out after 500 ms, `/mirror`
/// copies to reviews-v1, anything else goes to `default_backends` with a
/// response header `x-route: <tag>`.
fn reviews_route(default_backends: Vec<Value>, tag: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "reviews", "namespace": "default"},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
        "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/hang"}}],
             "timeouts": {"request": "500ms"},
             "backendRefs": [backend("reviews-v2", 1)]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/mirror"}}],
             "filters": [{"type": "RequestMirror",
                          "requestMirror": {"backendRef": {"name": "reviews-v1", "port": 9080}}}],
             "backendRefs": [backend("reviews-v2", 1)]},
            {"filters": [{"type": "ResponseHeaderModifier",
                          "responseHeaderModifier": {"set": [{"name": "x-route", "value": tag}]}}],
             "backendRefs": default_backends}
        ]}})
}

/// Our status entry on HTTPRoute `name`, if written.
fn route_status(m: &LocalMesh, plural: &str, name: &str) -> Option<Value> {
    let obj = api(m).get(G, "v1", plural, "default", name)?;
    obj["status"]["parents"]
        .as_array()?
        .iter()
        .find(|e| e["controllerName"] == CONTROLLER)
        .cloned()
}

fn condition(entry: &Option<Value>, type_: &str) -> (String, String) {
    let c = entry
        .as_ref()
        .and_then(|e| e["conditions"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(Value::Null);
    (
        c["status"].as_str().unwrap_or("").to_owned(),
        c["reason"].as_str().unwrap_or("").to_owned(),
    )
}

fn mirror_sent(m: &LocalMesh) -> f64 {
    m.waypoint_metrics()
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("ambit_waypoint_mirror_requests_total{outcome=\"sent\"}")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn policy(name: &str, rules: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"targetRefs": [{"group": G, "kind": "Gateway", "name": "waypoint"}],
                 "action": "DENY", "rules": rules}})
}

fn grpc(m: &LocalMesh, method: &str) -> Resp {
    let r = Req::get(&format!("/reviews.Reviews/{method}"))
        .method("POST")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    send(m, Version::Http2, vec![r]).remove(0)
}

#[test]
fn routes_and_policies_from_the_api_server_take_effect_on_push() {
    let bins = Binaries::beside(Path::new(env!("CARGO_BIN_EXE_ztunnel"))).expect("binaries");
    let opts = Options {
        mesh_yaml: kube_mesh(),
        kube_routes: true,
        ..Options::default()
    };
    let m = LocalMesh::start_opts(&bins, opts, |_| {}).expect("local mesh");

    // No route yet: reviews round robin over both versions, through the
    // waypoint.
    let before = eventually(
        "both versions behind the waypoint",
        || served(&gets(&m, "/", 10)),
        |s| s.iter().any(|x| x == "reviews-v1") && s.iter().any(|x| x == "reviews-v2"),
    );
    eprintln!("no route: {before:?}");

    // An HTTPRoute attached to the Service: everything to v2.
    api(&m).apply(
        G,
        "v1",
        "httproutes",
        reviews_route(vec![backend("reviews-v2", 1)], "kube"),
    );
    let rs = eventually(
        "the HTTPRoute sends everything to reviews-v2 with x-route: kube",
        || gets(&m, "/", 10),
        |rs| {
            rs.iter().all(|r| {
                r.served_by.as_deref() == Some("reviews-v2") && header(r, "x-route") == Some("kube")
            })
        },
    );
    assert_eq!(rs.len(), 10);
    let st = eventually(
        "Accepted and ResolvedRefs on the route",
        || route_status(&m, "httproutes", "reviews"),
        |s| condition(s, "Accepted").0 == "True" && condition(s, "ResolvedRefs").0 == "True",
    );
    assert_eq!(
        st.as_ref().map(|s| s["parentRef"]["name"].clone()),
        Some(json!("reviews"))
    );

    // The route's timeout: the app never answers /hang.
    let t = Instant::now();
    let hang = gets(&m, "/hang", 1).remove(0);
    assert_eq!(hang.status, 504, "{hang:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // The mirror: /mirror answered by v2, a copy sent to v1.
    let sent = mirror_sent(&m);
    let r = gets(&m, "/mirror/x", 1).remove(0);
    assert_eq!(r.served_by.as_deref(), Some("reviews-v2"), "{r:?}");
    eventually(
        "the mirror copy counted as sent",
        || mirror_sent(&m),
        |n| *n >= sent + 1.0,
    );

    // A weight change and a new header value, on push.
    api(&m).apply(
        G,
        "v1",
        "httproutes",
        reviews_route(
            vec![backend("reviews-v1", 100), backend("reviews-v2", 0)],
            "weighted",
        ),
    );
    eventually(
        "weights 100/0 send everything to reviews-v1",
        || gets(&m, "/", 10),
        |rs| {
            rs.iter().all(|r| {
                r.served_by.as_deref() == Some("reviews-v1")
                    && header(r, "x-route") == Some("weighted")
            })
        },
    );

    // A bad backendRef: ResolvedRefs=False, and traffic stays as it was.
    api(&m).apply(
        G,
        "v1",
        "httproutes",
        reviews_route(vec![backend("no-such-service", 1)], "bad"),
    );
    let st = eventually(
        "ResolvedRefs=False on the bad route",
        || route_status(&m, "httproutes", "reviews"),
        |s| condition(s, "ResolvedRefs").0 == "False",
    );
    assert_eq!(
        condition(&st, "ResolvedRefs").1,
        "BackendNotFound",
        "{st:?}"
    );
    // Give the waypoint time to (not) act on it, then check nothing moved.
    std::thread::sleep(Duration::from_millis(500));
    for r in gets(&m, "/", 10) {
        assert_eq!(r.served_by.as_deref(), Some("reviews-v1"), "{r:?}");
        assert_eq!(header(&r, "x-route"), Some("weighted"), "{r:?}");
    }

    // A GRPCRoute by method: Get → v1, List → v2 (h2c to the pods).
    api(&m).apply(
        G,
        "v1",
        "grpcroutes",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "reviews-grpc", "namespace": "default"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
            "rules": [
                {"matches": [{"method": {"service": "reviews.Reviews", "method": "Get"}}],
                 "backendRefs": [backend("reviews-v1", 1)]},
                {"matches": [{"method": {"service": "reviews.Reviews", "method": "List"}}],
                 "backendRefs": [backend("reviews-v2", 1)]}
            ]}}),
    );
    eventually(
        "the GRPCRoute routes Get to v1 and List to v2",
        || (grpc(&m, "Get"), grpc(&m, "List")),
        |(get, list)| {
            get.served_by.as_deref() == Some("reviews-v1")
                && list.served_by.as_deref() == Some("reviews-v2")
        },
    );
    let st = eventually(
        "the GRPCRoute accepted",
        || route_status(&m, "grpcroutes", "reviews-grpc"),
        |s| condition(s, "Accepted").0 == "True",
    );
    assert_eq!(condition(&st, "ResolvedRefs").0, "True");

    // AuthorizationPolicy on the waypoint: DENY by path.
    api(&m).apply(
        SECURITY,
        "v1",
        "authorizationpolicies",
        policy(
            "deny-admin",
            json!([{"to": [{"operation": {"paths": ["/admin*"]}}]}]),
        ),
    );
    eventually(
        "DENY /admin* answers 403",
        || gets(&m, "/admin/users", 1).remove(0).status,
        |s| *s == 403,
    );
    assert_eq!(gets(&m, "/public", 1).remove(0).status, 200);

    // DENY by source principal: sleep's identity.
    api(&m).apply(
        SECURITY,
        "v1",
        "authorizationpolicies",
        policy(
            "deny-sleep",
            json!([{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]}]),
        ),
    );
    eventually(
        "DENY from sleep's principal answers 403",
        || gets(&m, "/public", 1).remove(0).status,
        |s| *s == 403,
    );
    api(&m).delete(
        SECURITY,
        "v1",
        "authorizationpolicies",
        "default",
        "deny-sleep",
    );
    eventually(
        "the deleted policy allows again",
        || gets(&m, "/public", 1).remove(0).status,
        |s| *s == 200,
    );

    // An L4 rule (ports only) denies the connection's port.
    api(&m).apply(
        SECURITY,
        "v1",
        "authorizationpolicies",
        policy(
            "deny-port",
            json!([{"to": [{"operation": {"ports": ["9080"]}}]}]),
        ),
    );
    let denied = eventually(
        "an L4 DENY on port 9080 refuses the request",
        || gets(&m, "/public", 1).remove(0),
        |r| r.status != 200,
    );
    eprintln!("L4 deny: status {} {:?}", denied.status, denied.error);
    api(&m).delete(
        SECURITY,
        "v1",
        "authorizationpolicies",
        "default",
        "deny-port",
    );
    eventually(
        "without the L4 rule the request passes",
        || gets(&m, "/public", 1).remove(0).status,
        |s| *s == 200,
    );

    // The waypoint wrote status only through patches (no other writes),
    // and its log says where its routes come from.
    assert!(!api(&m).patches().is_empty());
    let log = std::fs::read_to_string(m.waypoint_log_path()).unwrap_or_default();
    assert!(log.contains("routes from the Kubernetes API"), "{log}");
}
