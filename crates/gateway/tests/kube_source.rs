//! The Kubernetes source against the testbed's fake API server: the first
//! listing produces a config, a modified route pushes a new one, a
//! deleted route goes away, a route with a bad backendRef gets
//! `ResolvedRefs=False` written to its status while the good route still
//! applies, and a kind whose CRD is missing counts as empty.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ambit_gateway::{
    CONTROLLER_NAME, GatewaySource, ServiceKind, SourceConfig, WaypointIdentity, WaypointPort,
    WaypointService,
};
use ambit_l7proxy::RouteConfig;
use ambit_testbed::kubeapi::FakeApi;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const G: &str = "gateway.networking.k8s.io";
const REVIEWS: &str = "reviews.shop.svc.cluster.local";

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"ports": [{"name": "http", "port": 9080, "appProtocol": "http"}]}})
}

fn split(name: &str, v1: u32, v2: u32) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
                    "rules": [{"backendRefs": [{"name": "v1", "port": 9080, "weight": v1},
                                               {"name": "v2", "port": 9080, "weight": v2}]}]}})
}

fn bad_route() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "bad", "namespace": "shop"},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/bad"}}],
                               "backendRefs": [{"name": "nowhere", "port": 9080}]}]}})
}

/// `reviews` as the mesh state names it, its port 9080 named `port_name`.
fn reviews_service(port_name: Option<&str>) -> WaypointService {
    WaypointService {
        hostname: REVIEWS.into(),
        namespace: "shop".into(),
        name: "reviews".into(),
        kind: ServiceKind::Service,
        ports: vec![WaypointPort {
            port: 9080,
            name: port_name.map(Into::into),
            app_protocol: None,
        }],
    }
}

/// The source for waypoint `shop/wp` whose mesh holds `reviews`
/// ([`reviews_service`]), quick to react; each config it applies arrives
/// on the receiver.
fn start(
    api: &FakeApi,
    port_name: Option<&'static str>,
) -> (GatewaySource, mpsc::UnboundedReceiver<RouteConfig>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut cfg = SourceConfig::new(WaypointIdentity::new("shop", "wp"));
    cfg.debounce = Duration::from_millis(20);
    cfg.mesh_poll = Duration::from_millis(100);
    let mesh = move || vec![reviews_service(port_name)];
    let source = GatewaySource::start(api.client().unwrap(), cfg, mesh, move |c| {
        let _ = tx.send(c);
    });
    (source, rx)
}

/// The weights of the first route of `reviews` (empty: no route).
fn weights(c: &RouteConfig) -> Vec<u32> {
    c.service(REVIEWS)
        .and_then(|s| s.routes.first())
        .map(|r| r.backends.iter().map(|b| b.weight).collect())
        .unwrap_or_default()
}

async fn next_config(
    rx: &mut mpsc::UnboundedReceiver<RouteConfig>,
    what: &str,
    want: impl Fn(&RouteConfig) -> bool,
) -> RouteConfig {
    let wait = async {
        loop {
            let c = rx.recv().await.expect("source running");
            if want(&c) {
                return c;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no config where {what} within 10s"))
}

/// The last status entry of ours for `route` once `want` holds for it.
async fn wait_status(api: &FakeApi, route: &str, want: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        if let Some(obj) = api.get(G, "v1", "httproutes", "shop", route) {
            let ours = obj["status"]["parents"].as_array().and_then(|l| {
                l.iter()
                    .find(|e| e["controllerName"] == CONTROLLER_NAME)
                    .cloned()
            });
            if let Some(entry) = ours
                && want(&entry)
            {
                return entry;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no status on {route} as wanted; patches: {:?}",
        api.patches()
    );
}

fn condition<'a>(entry: &'a Value, type_: &str) -> &'a Value {
    entry["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_the_api_server_and_status_is_written() {
    let api = FakeApi::start().await.unwrap();
    for (group, version, plural) in [
        (G, "v1", "gateways"),
        (G, "v1", "httproutes"),
        (G, "v1beta1", "referencegrants"),
        ("security.istio.io", "v1", "authorizationpolicies"),
        ("", "v1", "services"),
    ] {
        api.register(group, version, plural);
    }
    // GRPCRoute's CRD is not installed: that kind answers 404.
    api.apply(G, "v1", "gateways", json!({"metadata": {"name": "wp", "namespace": "shop",
        "labels": {"istio.io/waypoint-for": "service"}},
        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}));
    for s in ["reviews", "v1", "v2"] {
        api.apply("", "v1", "services", service(s));
    }
    api.apply(G, "v1", "httproutes", split("split", 90, 10));
    api.apply(
        "security.istio.io",
        "v1",
        "authorizationpolicies",
        json!({"metadata": {"name": "no-delete", "namespace": "shop"},
        "spec": {"targetRefs": [{"group": G, "kind": "Gateway", "name": "wp"}], "action": "DENY",
                 "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}}),
    );

    let (source, mut rx) = start(&api, None);
    source
        .wait_synced(Duration::from_secs(10))
        .await
        .expect("synced, grpcroutes missing or not");

    // The first listing.
    let c = next_config(&mut rx, "the split is 90/10", |c| weights(c) == [90, 10]).await;
    let svc = c.service(REVIEWS).expect("reviews");
    assert_eq!(
        svc.ports.get(&9080),
        Some(&ambit_l7proxy::config::Protocol::Http),
        "appProtocol from the Service"
    );
    assert_eq!(svc.policies.len(), 1, "the Gateway-wide DENY");
    let entry = wait_status(&api, "split", |e| {
        condition(e, "Accepted")["status"] == "True"
    })
    .await;
    assert_eq!(condition(&entry, "ResolvedRefs")["status"], "True");
    assert_eq!(condition(&entry, "Accepted")["observedGeneration"], 1);

    // MODIFIED: a weight change pushes a new config.
    api.apply(G, "v1", "httproutes", split("split", 50, 50));
    next_config(&mut rx, "the split is 50/50", |c| weights(c) == [50, 50]).await;
    wait_status(&api, "split", |e| {
        condition(e, "Accepted")["observedGeneration"] == 2
    })
    .await;

    // A bad backendRef: status says so, the good route still applies.
    api.apply(G, "v1", "httproutes", bad_route());
    let entry = wait_status(&api, "bad", |e| {
        condition(e, "ResolvedRefs")["status"] == "False"
    })
    .await;
    assert_eq!(
        condition(&entry, "ResolvedRefs")["reason"],
        "BackendNotFound"
    );
    assert_eq!(condition(&entry, "Accepted")["status"], "True");
    let t = source.last().expect("a translation");
    assert_eq!(weights(&t.config), [50, 50]);
    assert_eq!(
        t.config.service(REVIEWS).map(|s| s.routes.len()),
        Some(1),
        "nothing from the bad route"
    );
    let patches_before = api.patches().len();

    // DELETED: the route goes away.
    assert!(api.delete(G, "v1", "httproutes", "shop", "split"));
    next_config(&mut rx, "reviews has no routes", |c| {
        c.service(REVIEWS).is_some_and(|s| s.routes.is_empty())
    })
    .await;

    // Nothing changed for `bad`: no new patch of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later: Vec<_> = api
        .patches()
        .into_iter()
        .skip(patches_before)
        .filter(|p| p.name == "bad")
        .collect();
    assert!(later.is_empty(), "unchanged status re-sent: {later:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_crds_count_as_empty_kinds() {
    let api = FakeApi::start().await.unwrap();
    api.register("", "v1", "services");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut cfg = SourceConfig::new(WaypointIdentity::new("shop", "wp"));
    cfg.debounce = Duration::from_millis(10);
    let source = GatewaySource::start(
        api.client().unwrap(),
        cfg,
        Vec::<WaypointService>::new,
        move |c| {
            let _ = tx.send(c);
        },
    );
    // Every CRD missing: each counts as listed and empty.
    source
        .wait_synced(Duration::from_secs(10))
        .await
        .expect("synced");
    let c = next_config(&mut rx, "the first (empty) config", |_| true).await;
    assert!(c.services.is_empty());
    assert!(
        source
            .last()
            .is_some_and(|t| t.routes.is_empty() && t.error.is_none())
    );
}

/// A CRD installed after the waypoint started (GRPCRoute here) is picked
/// up by the watch's retries: its routes apply and get status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_installed_later_is_picked_up() {
    let api = FakeApi::start().await.unwrap();
    for (group, version, plural) in [(G, "v1", "gateways"), ("", "v1", "services")] {
        api.register(group, version, plural);
    }
    api.apply("", "v1", "services", service("reviews"));
    api.apply("", "v1", "services", service("v2"));
    let (source, mut rx) = start(&api, Some("grpc"));
    source
        .wait_synced(Duration::from_secs(10))
        .await
        .expect("synced with the Gateway API route CRDs missing");
    next_config(&mut rx, "no routes yet", |c| {
        c.service(REVIEWS).is_some_and(|s| s.routes.is_empty())
    })
    .await;

    // The GRPCRoute CRD arrives, then a route.
    api.register(G, "v1", "grpcroutes");
    api.apply(
        G,
        "v1",
        "grpcroutes",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
               "metadata": {"name": "by-method", "namespace": "shop"},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
                        "rules": [{"matches": [{"method": {"service": "shop.Reviews", "method": "Get"}}],
                                   "backendRefs": [{"name": "v2", "port": 9080}]}]}}),
    );
    let wait = async {
        loop {
            let c = rx.recv().await.expect("source running");
            if c.service(REVIEWS).is_some_and(|s| !s.routes.is_empty()) {
                return c;
            }
        }
    };
    // kube-runtime's watcher backs off between failed lists (up to ~30 s).
    let c = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("the GRPCRoute applied once its CRD exists");
    assert_eq!(c.service(REVIEWS).map(|s| s.routes.len()), Some(1));
    let status = api
        .get(G, "v1", "grpcroutes", "shop", "by-method")
        .map(|o| o["status"].clone());
    let t = source.last().expect("a translation");
    assert!(
        t.routes.iter().any(|r| r.name == "by-method"),
        "status computed for the late route: {status:?}"
    );
}
