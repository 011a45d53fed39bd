use serde_json::json;

use super::*;
use crate::services::WaypointPort;

fn obj<K: crate::objects::Kind>(v: Value) -> Object<K> {
    serde_json::from_value(v).expect("object")
}

fn svc_obj(ns: &str, name: &str, ports: &[u16]) -> Service {
    let ports: Vec<Value> = ports.iter().map(|p| json!({"port": p})).collect();
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": ns}, "spec": {"ports": ports}}),
    )
    .expect("service")
}

fn wsvc(ns: &str, name: &str, ports: &[(u16, Option<&str>)]) -> WaypointService {
    WaypointService {
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        namespace: ns.into(),
        name: name.into(),
        kind: ServiceKind::Service,
        ports: ports
            .iter()
            .map(|(p, a)| WaypointPort {
                port: *p,
                name: None,
                app_protocol: a.map(str::to_owned),
            })
            .collect(),
    }
}

fn route(ns: &str, name: &str, created: &str, spec: Value) -> HttpRoute {
    let mut meta = json!({"name": name, "namespace": ns, "generation": 2});
    if !created.is_empty() {
        meta["creationTimestamp"] = json!(created);
    }
    obj(json!({"metadata": meta, "spec": spec}))
}

fn to_service(name: &str) -> Value {
    json!([{"group": "", "kind": "Service", "name": name}])
}

fn id() -> WaypointIdentity {
    WaypointIdentity::new("ns", "wp")
}

/// A snapshot with Services `reviews` (9080) and `v2` (9080) in `ns`, and
/// the waypoint Gateway.
fn base() -> Snapshot {
    Snapshot {
        gateways: vec![obj(json!({
            "metadata": {"name": "wp", "namespace": "ns", "labels": {"istio.io/waypoint-for": "service"}},
            "spec": {"gatewayClassName": "istio-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
        }))],
        services: vec![
            svc_obj("ns", "reviews", &[9080]),
            svc_obj("ns", "v2", &[9080]),
            svc_obj("other", "far", &[80]),
        ],
        ..Default::default()
    }
}

fn services() -> Vec<WaypointService> {
    vec![wsvc("ns", "reviews", &[(9080, Some("http"))])]
}

fn routes_of<'a>(t: &'a Translation, host: &str) -> Vec<&'a str> {
    t.config
        .service(host)
        .map(|s| s.routes.iter().filter_map(|r| r.name.as_deref()).collect())
        .unwrap_or_default()
}

const REVIEWS: &str = "reviews.ns.svc.cluster.local";

#[test]
fn precedence_exact_then_longest_prefix_then_regex_then_method_headers_age_name() {
    let mut snap = base();
    let backend = json!([{"name": "reviews", "port": 9080}]);
    snap.http_routes = vec![
        route(
            "ns",
            "b-regex",
            "2020-01-01T00:00:00Z",
            json!({"parentRefs": to_service("reviews"), "rules": [
            {"matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}], "backendRefs": backend}]}),
        ),
        route(
            "ns",
            "c-short",
            "2020-01-01T00:00:00Z",
            json!({"parentRefs": to_service("reviews"), "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "backendRefs": backend}]}),
        ),
        route(
            "ns",
            "d-long",
            "2021-01-01T00:00:00Z",
            json!({"parentRefs": to_service("reviews"), "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a/b"}},
                         {"path": {"type": "PathPrefix", "value": "/a/b"}, "method": "GET"},
                         {"path": {"type": "PathPrefix", "value": "/a/b"}, "method": "GET",
                          "headers": [{"name": "X-A", "value": "1"}]}],
             "backendRefs": backend}]}),
        ),
        route(
            "ns",
            "e-exact",
            "2022-01-01T00:00:00Z",
            json!({"parentRefs": to_service("reviews"), "rules": [
            {"matches": [{"path": {"type": "Exact", "value": "/a"}}], "backendRefs": backend}]}),
        ),
        // Same match as c-short, but newer: after it.
        route(
            "ns",
            "a-newer",
            "2023-01-01T00:00:00Z",
            json!({"parentRefs": to_service("reviews"), "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "backendRefs": backend}]}),
        ),
        // Same age as c-short: alphabetical by namespace/name.
        route(
            "ns",
            "c-alpha",
            "2020-01-01T00:00:00Z",
            json!({"parentRefs": to_service("reviews"), "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "backendRefs": backend}]}),
        ),
    ];
    let t = translate(&snap, &id(), &services());
    assert!(t.error.is_none(), "{:?}\n{}", t.error, t.yaml);
    assert_eq!(
        routes_of(&t, REVIEWS),
        [
            "HTTPRoute/ns/e-exact.0.0",
            "HTTPRoute/ns/d-long.0.2",
            "HTTPRoute/ns/d-long.0.1",
            "HTTPRoute/ns/d-long.0.0",
            "HTTPRoute/ns/c-alpha.0.0",
            "HTTPRoute/ns/c-short.0.0",
            "HTTPRoute/ns/a-newer.0.0",
            "HTTPRoute/ns/b-regex.0.0",
        ]
    );
    let s = t.config.service(REVIEWS).expect("service");
    assert_eq!(
        s.ports.get(&9080),
        Some(&ambit_l7proxy::config::Protocol::Http)
    );
    // PathPrefix is element-wise: `/a` exactly, or under `/a/`.
    let c = &s.routes[4];
    assert_eq!(c.matches.len(), 2);
    assert!(c.matches.iter().any(|m| {
        m.path
            .as_ref()
            .is_some_and(|p| p.matches("/a") && !p.matches("/ab"))
    }));
    assert!(
        c.matches
            .iter()
            .any(|m| m.path.as_ref().is_some_and(|p| p.matches("/a/x")))
    );
    let d = &s.routes[1];
    assert_eq!(d.matches[0].method.as_deref(), Some("GET"));
    assert!(
        d.matches[0].headers.contains_key("x-a"),
        "header names lowercased"
    );
    for r in &t.routes {
        let p = r.parent("reviews").expect("parent status");
        assert_eq!(p.condition("Accepted").map(|c| c.status), Some(true));
        assert_eq!(
            p.condition("ResolvedRefs").map(|c| c.reason.as_str()),
            Some("ResolvedRefs")
        );
        assert_eq!(r.generation, 2);
    }
}

#[test]
fn filters_translate() {
    let mut snap = base();
    snap.http_routes = vec![route(
        "ns",
        "f",
        "",
        json!({"parentRefs": to_service("reviews"), "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Set", "value": "1"}], "add": [{"name": "x-add", "value": "2"}], "remove": ["X-Gone"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-resp", "value": "3"}]}},
                {"type": "URLRewrite", "urlRewrite": {"hostname": "internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}},
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "v2", "port": 9080}, "percent": 25}}],
             "backendRefs": [{"name": "reviews", "port": 9080}],
             "timeouts": {"request": "1m30s", "backendRequest": "500ms"},
             "retry": {"attempts": 3, "codes": [503, 429], "backoff": "100ms"}},
            {"matches": [{"path": {"type": "Exact", "value": "/moved"}}],
             "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "hostname": "h", "port": 8443, "statusCode": 302,
                          "path": {"type": "ReplaceFullPath", "replaceFullPath": "/here"}}}]},
            {"matches": [{"path": {"type": "Exact", "value": "/full"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}}}],
             "backendRefs": [{"name": "reviews", "port": 9080}]}
        ]}),
    )];
    let t = translate(&snap, &id(), &services());
    assert!(t.error.is_none(), "{:?}", t.error);
    let s = t.config.service(REVIEWS).expect("service");
    let by = |n: &str| {
        s.routes
            .iter()
            .find(|r| r.name.as_deref() == Some(n))
            .expect(n)
    };
    let r = by("HTTPRoute/ns/f.0.0");
    assert_eq!(
        r.request_headers.set.get("x-set").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        r.request_headers.add.get("x-add").map(String::as_str),
        Some("2")
    );
    assert_eq!(r.request_headers.remove, ["x-gone"]);
    assert_eq!(
        r.response_headers.set.get("x-resp").map(String::as_str),
        Some("3")
    );
    let rw = r.rewrite.as_ref().expect("rewrite");
    assert_eq!(
        (rw.prefix.as_deref(), rw.host.as_deref()),
        (Some("/new"), Some("internal"))
    );
    assert_eq!(r.mirrors.len(), 1);
    assert_eq!(
        r.mirrors[0].host.as_deref(),
        Some("v2.ns.svc.cluster.local")
    );
    assert!((r.mirrors[0].percentage - 25.0).abs() < f64::EPSILON);
    assert_eq!(r.timeout, Some(std::time::Duration::from_secs(90)));
    assert_eq!(
        r.backend_timeout,
        Some(std::time::Duration::from_millis(500))
    );
    let retries = r.retries.as_ref().expect("retries");
    assert_eq!(
        (retries.attempts, retries.codes.clone()),
        (3, vec![503, 429])
    );
    let red = by("HTTPRoute/ns/f.1.0")
        .redirect
        .as_ref()
        .expect("redirect");
    assert_eq!(
        (
            red.scheme.as_deref(),
            red.host.as_deref(),
            red.port,
            red.path.as_deref(),
            red.code
        ),
        (Some("https"), Some("h"), Some(8443), Some("/here"), 302)
    );
    assert!(by("HTTPRoute/ns/f.1.0").backends.is_empty());
    let full = by("HTTPRoute/ns/f.2.0").rewrite.as_ref().expect("rewrite");
    assert_eq!(full.full_path.as_deref(), Some("/x"));
}

#[test]
fn weights_zero_excluded_and_all_zero_answers_500() {
    let mut snap = base();
    snap.http_routes = vec![route(
        "ns",
        "w",
        "",
        json!({"parentRefs": to_service("reviews"), "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/split"}}],
             "backendRefs": [{"name": "reviews", "port": 9080, "weight": 90}, {"name": "v2", "port": 9080, "weight": 10},
                             {"name": "v2", "port": 9080, "weight": 0}]},
            {"backendRefs": [{"name": "reviews", "port": 9080, "weight": 0}]}
        ]}),
    )];
    let t = translate(&snap, &id(), &services());
    let s = t.config.service(REVIEWS).expect("service");
    let split = &s.routes[0];
    let weights: Vec<(Option<&str>, u32)> = split
        .backends
        .iter()
        .map(|b| (b.host.as_deref(), b.weight))
        .collect();
    assert_eq!(
        weights,
        [(Some(REVIEWS), 90), (Some("v2.ns.svc.cluster.local"), 10)]
    );
    let zero = &s.routes[1];
    assert!(zero.backends.is_empty());
    let abort = zero
        .fault
        .as_ref()
        .and_then(|f| f.abort.as_ref())
        .expect("abort");
    assert_eq!(abort.http_status, 500);
}

#[test]
fn bad_backend_reports_backend_not_found_and_keeps_last_good() {
    let mut snap = base();
    let good = route(
        "ns",
        "r",
        "",
        json!({"parentRefs": to_service("reviews"), "rules": [
        {"backendRefs": [{"name": "v2", "port": 9080}]}]}),
    );
    let other = route(
        "ns",
        "s",
        "",
        json!({"parentRefs": to_service("reviews"), "rules": [
        {"matches": [{"path": {"type": "Exact", "value": "/s"}}], "backendRefs": [{"name": "reviews", "port": 9080}]}]}),
    );
    snap.http_routes = vec![good, other.clone()];
    let mut tr = Translator::new();
    let t = tr.translate(&snap, &id(), &services());
    assert_eq!(routes_of(&t, REVIEWS).len(), 2);

    let bad = route(
        "ns",
        "r",
        "",
        json!({"parentRefs": to_service("reviews"), "rules": [
        {"backendRefs": [{"name": "missing", "port": 9080}]}]}),
    );
    snap.http_routes = vec![bad.clone(), other.clone()];
    let t = tr.translate(&snap, &id(), &services());
    let st = t.routes.iter().find(|r| r.name == "r").expect("status");
    let p = st.parent("reviews").expect("parent");
    let rr = p.condition("ResolvedRefs").expect("ResolvedRefs");
    assert_eq!(
        (rr.status, rr.reason.as_str()),
        (false, "BackendNotFound"),
        "{rr:?}"
    );
    assert_eq!(p.condition("Accepted").map(|c| c.status), Some(true));
    // The last good routing of `r` stays; `s` still applies.
    let s = t.config.service(REVIEWS).expect("service");
    assert_eq!(s.routes.len(), 2);
    assert!(
        s.routes
            .iter()
            .any(|r| r.backends.first().and_then(|b| b.host.as_deref())
                == Some("v2.ns.svc.cluster.local"))
    );

    // Without history the bad route is absent.
    let t = translate(&snap, &id(), &services());
    assert_eq!(routes_of(&t, REVIEWS), ["HTTPRoute/ns/s.0.0"]);

    // Missing port and unknown kinds.
    snap.http_routes = vec![route(
        "ns",
        "k",
        "",
        json!({"parentRefs": to_service("reviews"), "rules": [
        {"backendRefs": [{"kind": "Bucket", "group": "storage.example", "name": "x"}]}]}),
    )];
    let t = translate(&snap, &id(), &services());
    let c = t.routes[0].parents[0]
        .condition("ResolvedRefs")
        .expect("cond")
        .clone();
    assert_eq!(c.reason, "InvalidKind");
}

#[test]
fn cross_namespace_backend_needs_a_reference_grant() {
    let mut snap = base();
    snap.http_routes = vec![route(
        "ns",
        "x",
        "",
        json!({"parentRefs": to_service("reviews"), "rules": [
        {"backendRefs": [{"name": "far", "namespace": "other", "port": 80}]}]}),
    )];
    let t = translate(&snap, &id(), &services());
    let c = t.routes[0].parents[0]
        .condition("ResolvedRefs")
        .expect("cond")
        .clone();
    assert_eq!((c.status, c.reason.as_str()), (false, "RefNotPermitted"));
    assert!(
        t.config
            .service(REVIEWS)
            .is_some_and(|s| s.routes.is_empty())
    );

    snap.reference_grants = vec![obj(json!({
        "metadata": {"name": "g", "namespace": "other"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "ns"}],
                 "to": [{"group": "", "kind": "Service"}]}
    }))];
    let t = translate(&snap, &id(), &services());
    assert_eq!(
        t.routes[0].parents[0]
            .condition("ResolvedRefs")
            .map(|c| c.status),
        Some(true)
    );
    assert_eq!(
        t.config
            .service(REVIEWS)
            .and_then(|s| s.routes[0].backends[0].host.clone())
            .as_deref(),
        Some("far.other.svc.cluster.local")
    );
}

#[test]
fn grpc_methods_become_paths_and_app_protocol_sets_the_port() {
    let mut snap = base();
    snap.grpc_routes = vec![obj(json!({
        "metadata": {"name": "g", "namespace": "ns"},
        "spec": {"parentRefs": to_service("reviews"), "rules": [
            {"matches": [{"method": {"service": "pkg.Svc", "method": "Get"}}], "backendRefs": [{"name": "v2", "port": 9080}]},
            {"matches": [{"method": {"service": "pkg.Svc"}}], "backendRefs": [{"name": "reviews", "port": 9080}]},
            {"matches": [{"method": {"type": "RegularExpression", "method": "List.*"}, "headers": [{"name": "x-t", "value": "1"}]}],
             "backendRefs": [{"name": "reviews", "port": 9080}]}
        ]}
    }))];
    let svcs = vec![wsvc(
        "ns",
        "reviews",
        &[(9080, Some("grpc")), (9081, Some("kubernetes.io/h2c"))],
    )];
    let t = translate(&snap, &id(), &svcs);
    assert!(t.error.is_none(), "{:?}", t.error);
    let s = t.config.service(REVIEWS).expect("service");
    use ambit_l7proxy::config::Protocol;
    assert_eq!(s.ports.get(&9080), Some(&Protocol::Grpc));
    assert_eq!(s.ports.get(&9081), Some(&Protocol::Http2));
    let path = |i: usize, p: &str| {
        s.routes[i].matches[0]
            .path
            .as_ref()
            .is_some_and(|m| m.matches(p))
    };
    assert!(path(0, "/pkg.Svc/Get") && !path(0, "/pkg.Svc/Put"));
    assert!(path(1, "/pkg.Svc/Put"));
    assert!(path(2, "/other.S/ListAll") && !path(2, "/other.S/Get"));
    assert_eq!(t.routes[0].kind, RouteKind::Grpc);
}

#[test]
fn attachment_to_gateway_and_rejections() {
    let mut snap = base();
    let gw = json!([{"name": "wp"}]);
    snap.http_routes = vec![
        // Same namespace as the Gateway: allowed by default, every service.
        route(
            "ns",
            "via-gw",
            "",
            json!({"parentRefs": gw, "rules": [{"backendRefs": [{"name": "v2", "port": 9080}]}]}),
        ),
        // Another namespace: `from: Same` refuses it.
        route(
            "elsewhere",
            "far",
            "",
            json!({"parentRefs": [{"name": "wp", "namespace": "ns"}], "rules": []}),
        ),
        // A listener that does not exist.
        route(
            "ns",
            "section",
            "",
            json!({"parentRefs": [{"name": "wp", "sectionName": "nope"}]}),
        ),
        // Someone else's Gateway and a service not behind this waypoint: no status.
        route(
            "ns",
            "foreign",
            "",
            json!({"parentRefs": [{"name": "other-gw"}, {"group": "", "kind": "Service", "name": "v2"}]}),
        ),
        // An unsupported filter.
        route(
            "ns",
            "ext",
            "",
            json!({"parentRefs": to_service("reviews"), "rules": [
            {"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}]}]}),
        ),
        // A spec that does not parse.
        route(
            "ns",
            "broken",
            "",
            json!({"parentRefs": to_service("reviews"), "rules": 7}),
        ),
    ];
    let svcs = vec![
        wsvc("ns", "reviews", &[(9080, None)]),
        wsvc("ns", "ratings", &[(9080, None)]),
    ];
    let t = translate(&snap, &id(), &svcs);
    assert!(t.error.is_none(), "{:?}", t.error);
    assert_eq!(routes_of(&t, REVIEWS), ["HTTPRoute/ns/via-gw.0.0"]);
    assert_eq!(
        routes_of(&t, "ratings.ns.svc.cluster.local"),
        ["HTTPRoute/ns/via-gw.0.0"]
    );
    let reason = |name: &str| {
        let r = t.routes.iter().find(|r| r.name == name).expect(name);
        r.parents[0]
            .condition("Accepted")
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    };
    assert_eq!(reason("via-gw"), "Accepted");
    assert_eq!(reason("far"), "NotAllowedByListeners");
    assert_eq!(reason("section"), "NoMatchingParent");
    assert_eq!(reason("ext"), "UnsupportedValue");
    assert_eq!(reason("broken"), "UnsupportedValue");
    assert!(t.routes.iter().all(|r| r.name != "foreign"));
}

#[test]
fn durations_follow_gep_2257() {
    use crate::rules::gateway_duration;
    assert_eq!(
        gateway_duration("1h30m", "t").ok().flatten(),
        Some(std::time::Duration::from_secs(5400))
    );
    assert_eq!(
        gateway_duration("250ms", "t").ok().flatten(),
        Some(std::time::Duration::from_millis(250))
    );
    assert_eq!(gateway_duration("0s", "t").ok(), Some(None));
    for bad in ["", "1", "1d", "1.5s", "123456s", "1h1h1h1h1h", "s"] {
        assert!(gateway_duration(bad, "t").is_err(), "{bad}");
    }
}
