//! Issue 22: the local YAML and the Kubernetes source produce the same
//! routing for the same intent.
//!
//! One table of cases. Each case states one intent twice: as the local
//! `RouteConfig` YAML a waypoint outside Kubernetes would load, and as
//! Gateway API routes and Istio AuthorizationPolicies that go through the
//! [`Translator`] with a fixed set of waypoint services. Every probe request
//! of the case is then decided against both configs by the engine's own
//! public decision functions (`authz::authorize`, `route::select`,
//! `route::redirect`, `route::rewrite_path`, `route::replace_full_path`,
//! `route::pick_backend`, `route::retriable`, `HeaderOps::apply`), composed
//! in the order the waypoint's request path applies them (authorization,
//! route selection, redirect, fault, rewrite, header edits, backend,
//! timeouts, retries, mirrors). The two decisions must be equal, and equal
//! to what the case expects.
//!
//! Where the two formats spell one intent differently, the local YAML says
//! it the engine's way:
//! - a Gateway API `PathPrefix: /api` matches whole path segments, so the
//!   local route lists `exact: /api` and `prefix: /api/`;
//! - Kubernetes routes are ordered by the Gateway API's precedence, the
//!   local ones are written in that order (first match wins);
//! - backends are Services (`reviews-v1`), not subsets;
//! - an HTTPRoute `retry` also retries connect failures and resets, so the
//!   local `retries` lists `retryOn: [connect-failure, reset]`;
//! - local policy names are the Kubernetes `namespace/name`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ambit_gateway::{
    ServiceKind, Snapshot, Translation, Translator, WaypointIdentity, WaypointPort, WaypointService,
};
use ambit_l7proxy::RouteConfig;
use ambit_l7proxy::authz::{self, AuthzFacts, HttpFacts, Verdict};
use ambit_l7proxy::config::{Protocol, Route, ServiceConfig, parse_duration};
use ambit_l7proxy::route::{self, Outcome, RequestFacts};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

const NS: &str = "default";
const DOMAIN_SUFFIX: &str = ".default.svc.cluster.local";

// ---------------------------------------------------------------------------
// The fixed world: the waypoint `default/waypoint` and its services.
// ---------------------------------------------------------------------------

/// Services using the waypoint: name, then (port, appProtocol).
const SERVICES: &[(&str, &[(u16, &str)])] = &[
    ("reviews", &[(9080, "http"), (9090, "tcp")]),
    ("reviews-v1", &[(9080, "http")]),
    ("reviews-v2", &[(9080, "http")]),
    ("reviews-v3", &[(9080, "http")]),
    ("ratings", &[(50051, "grpc")]),
    ("ratings-v1", &[(50051, "grpc")]),
    ("ratings-v2", &[(50051, "grpc")]),
];

fn host(short: &str) -> String {
    format!("{short}{DOMAIN_SUFFIX}")
}

fn short(host: &str) -> String {
    host.strip_suffix(DOMAIN_SUFFIX).unwrap_or(host).to_owned()
}

fn waypoint() -> WaypointIdentity {
    WaypointIdentity::new(NS, "waypoint")
}

fn waypoint_services() -> Vec<WaypointService> {
    SERVICES
        .iter()
        .map(|(name, ports)| WaypointService {
            hostname: host(name),
            namespace: NS.into(),
            name: (*name).into(),
            kind: ServiceKind::Service,
            ports: ports
                .iter()
                .map(|(port, app)| WaypointPort {
                    port: *port,
                    name: None,
                    app_protocol: Some((*app).into()),
                })
                .collect(),
        })
        .collect()
}

/// The waypoint's Gateway and the Kubernetes Services, before a case's
/// routes and policies are added.
fn base_snapshot() -> Snapshot {
    let gateway = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": NS,
                     "labels": {"istio.io/waypoint-for": "service"}},
        "spec": {"gatewayClassName": "istio-waypoint",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
    });
    Snapshot {
        gateways: vec![serde_json::from_value(gateway).expect("gateway")],
        services: SERVICES
            .iter()
            .map(|(name, ports)| {
                let ports: Vec<Value> = ports
                    .iter()
                    .map(|(p, a)| json!({"name": format!("{a}-{p}"), "port": p, "appProtocol": a}))
                    .collect();
                serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {"ports": ports}
                }))
                .expect("service")
            })
            .collect(),
        ..Snapshot::default()
    }
}

/// The base snapshot plus the case's objects (multi-document YAML).
fn snapshot(case: &str, kube: &str) -> Snapshot {
    let mut snap = base_snapshot();
    for doc in serde_yaml_ng::Deserializer::from_str(kube) {
        let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{case}: kube YAML: {e}"));
        let kind = v["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "HTTPRoute" => snap.http_routes.push(object(case, v)),
            "GRPCRoute" => snap.grpc_routes.push(object(case, v)),
            "AuthorizationPolicy" => snap.policies.push(object(case, v)),
            other => panic!("{case}: unexpected kind {other:?}"),
        }
    }
    snap
}

fn object<T: serde::de::DeserializeOwned>(case: &str, v: Value) -> T {
    let kind = v["kind"].clone();
    serde_json::from_value(v).unwrap_or_else(|e| panic!("{case}: {kind}: {e}"))
}

/// Translates a case's objects and checks that all of it was taken: no
/// validation error, every route `Accepted` with `ResolvedRefs`, every
/// policy applied without problems.
fn kube_config(case: &str, kube: &str) -> Translation {
    let snap = snapshot(case, kube);
    let t = Translator::new().translate(&snap, &waypoint(), &waypoint_services());
    assert!(t.error.is_none(), "{case}: {:?}\n{}", t.error, t.yaml);
    assert_eq!(
        t.routes.len(),
        snap.http_routes.len() + snap.grpc_routes.len(),
        "{case}: every route names this waypoint"
    );
    for r in &t.routes {
        for p in &r.parents {
            for c in &p.conditions {
                assert!(c.status, "{case}: {}/{}: {c:?}", r.kind.as_str(), r.name);
            }
        }
    }
    assert_eq!(
        t.policies.len(),
        snap.policies.len(),
        "{case}: {:?}",
        t.policies
    );
    for p in &t.policies {
        assert!(
            p.problems.is_empty() && !p.applied_to.is_empty(),
            "{case}: {p:?}"
        );
    }
    t
}

// ---------------------------------------------------------------------------
// Probes and decisions.
// ---------------------------------------------------------------------------

/// One request (or, with `tcp`, one opaque connection) to a service.
#[derive(Debug, Clone)]
struct Probe {
    service: &'static str,
    port: u16,
    tcp: bool,
    method: &'static str,
    uri: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    /// The HBONE peer: namespace and service account.
    peer: (&'static str, &'static str),
    want: Vec<Want>,
}

fn req(method: &'static str, uri: &'static str) -> Probe {
    Probe {
        service: "reviews",
        port: 9080,
        tcp: false,
        method,
        uri,
        headers: Vec::new(),
        peer: ("default", "productpage"),
        want: Vec::new(),
    }
}

fn get(uri: &'static str) -> Probe {
    req("GET", uri)
}

/// A gRPC call (HTTP/2 POST, `content-type: application/grpc`) to `ratings`.
fn grpc(path: &'static str) -> Probe {
    req("POST", path)
        .on("ratings", 50051)
        .header("content-type", "application/grpc")
}

/// An opaque TCP connection to `reviews:port`.
fn tcp(port: u16) -> Probe {
    Probe {
        tcp: true,
        port,
        ..get("/")
    }
}

impl Probe {
    fn on(mut self, service: &'static str, port: u16) -> Self {
        self.service = service;
        self.port = port;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn from(mut self, ns: &'static str, sa: &'static str) -> Self {
        self.peer = (ns, sa);
        self
    }

    fn want(mut self, want: impl IntoIterator<Item = Want>) -> Self {
        self.want.extend(want);
        self
    }

    fn describe(&self) -> String {
        let what = if self.tcp {
            "TCP".to_owned()
        } else {
            format!("{} {}", self.method, self.uri)
        };
        format!(
            "{what} to {}:{} {:?} from {}/{}",
            self.service, self.port, self.headers, self.peer.0, self.peer.1
        )
    }
}

/// What the waypoint does with a probe.
#[derive(Debug, Clone, PartialEq)]
struct Decision {
    /// The port's protocol (`auto` when unset).
    protocol: Protocol,
    /// The authorization verdict (policy names included).
    verdict: Verdict,
    action: Action,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    /// Denied: 403, or the TCP connection closed.
    Refused,
    /// An allowed TCP connection: an L4 hop to the service.
    Tcp,
    /// No route matched: 404.
    NoRoute,
    /// Answered with a redirect.
    Redirect {
        status: u16,
        location: String,
        response_headers: Vec<(String, String)>,
    },
    /// A fault abort answers.
    Abort { status: u16, percentage: f64 },
    /// Forwarded.
    Forward(Box<Forward>),
}

#[derive(Debug, Clone, PartialEq)]
struct Forward {
    /// (service, port, version subset, share of requests in ‰), by key.
    backends: Vec<(String, u16, Option<String>, u32)>,
    /// Path and query sent upstream.
    uri: String,
    /// `host` / `:authority` sent upstream.
    authority: String,
    /// Request headers after the route's edits (without `host`).
    request_headers: Vec<(String, String)>,
    /// [`UPSTREAM_RESPONSE`] after the route's edits.
    response_headers: Vec<(String, String)>,
    timeout: Option<Duration>,
    /// Each attempt's deadline (`perTryTimeout`, else `backendTimeout`).
    per_try_timeout: Option<Duration>,
    /// Retries after the first attempt.
    attempts: u32,
    /// Which of [`OUTCOMES`] are retried.
    retried: Vec<&'static str>,
    /// (service, port, version subset, percentage).
    mirrors: Vec<(String, u16, Option<String>, f64)>,
    /// A fault delay: (delay, percentage).
    delay: Option<(Duration, f64)>,
}

/// The response headers an upstream answers with, before the route's
/// response edits.
const UPSTREAM_RESPONSE: &[(&str, &str)] = &[("server", "upstream"), ("x-upstream", "1")];

/// Attempt outcomes checked against the retry policy.
const OUTCOMES: &[(&str, Outcome)] = &[
    ("409", Outcome::Status(StatusCode::CONFLICT)),
    ("500", Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR)),
    ("502", Outcome::Status(StatusCode::BAD_GATEWAY)),
    ("503", Outcome::Status(StatusCode::SERVICE_UNAVAILABLE)),
    ("504", Outcome::Status(StatusCode::GATEWAY_TIMEOUT)),
    ("connect-failure", Outcome::ConnectFailure),
    ("reset", Outcome::Reset),
    ("per-try-timeout", Outcome::Timeout),
];

fn header_list(h: &HeaderMap) -> Vec<(String, String)> {
    let mut names: Vec<&HeaderName> = h.keys().collect();
    names.sort_by_key(|n| n.as_str());
    names
        .into_iter()
        .map(|n| {
            let values: Vec<&str> = h
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap_or("<binary>"))
                .collect();
            (n.as_str().to_owned(), values.join(","))
        })
        .collect()
}

fn peer_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, 0, 7))
}

/// Decides `p` against `cfg` the way the waypoint's request path does.
fn decide(cfg: &RouteConfig, p: &Probe) -> Decision {
    let svc_host = host(p.service);
    let svc: Option<&ServiceConfig> = cfg.service(&svc_host);
    let protocol = svc
        .and_then(|s| s.ports.get(&p.port).copied())
        .unwrap_or_default();
    let peer = ambit_mesh::model::Workload {
        namespace: p.peer.0.into(),
        service_account: p.peer.1.into(),
        ..Default::default()
    }
    .identity()
    .expect("identity");
    let authority = format!("{svc_host}:{}", p.port);
    let mut b = http::Request::builder()
        .method(p.method)
        .uri(p.uri)
        .header(http::header::HOST, &authority);
    for (k, v) in &p.headers {
        b = b.header(*k, *v);
    }
    let req = b.body(()).expect("request");
    let policies = svc.map_or(&[][..], |s| s.policies.as_slice());
    let source_ip = Some(peer_ip());
    let facts = AuthzFacts {
        peer: Some(&peer),
        source_ip,
        remote_ip: if p.tcp {
            source_ip
        } else {
            authz::remote_ip(req.headers(), source_ip)
        },
        port: p.port,
        http: (!p.tcp).then(|| HttpFacts {
            method: req.method().as_str(),
            path: req.uri().path(),
            host: &authority,
            headers: req.headers(),
        }),
    };
    let verdict = authz::authorize(policies, &facts);
    let decision = |action| Decision {
        protocol,
        verdict: verdict.clone(),
        action,
    };
    if !verdict.allowed() {
        return decision(Action::Refused);
    }
    if p.tcp {
        return decision(Action::Tcp);
    }
    // Route selection: no routes → the whole service.
    let default_route = Route::default();
    let routes = svc.map_or(&[][..], |s| s.routes.as_slice());
    let (route, matched) = if routes.is_empty() {
        (&default_route, None)
    } else {
        match route::select(routes, &RequestFacts::of(&req)) {
            Some(x) => x,
            None => return decision(Action::NoRoute),
        }
    };
    let (path, query) = (req.uri().path(), req.uri().query());
    if let Some(r) = &route.redirect {
        let (status, location) = route::redirect(r, &authority, path, query, matched);
        let mut h = HeaderMap::new();
        route.response_headers.apply(&mut h);
        return decision(Action::Redirect {
            status: status.as_u16(),
            location,
            response_headers: header_list(&h),
        });
    }
    let fault = route.fault.as_ref();
    if let Some(a) = fault.and_then(|f| f.abort.as_ref()) {
        return decision(Action::Abort {
            status: a.http_status,
            percentage: a.percentage,
        });
    }
    // Rewrite.
    let mut uri = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let mut upstream_authority = authority.clone();
    if let Some(rw) = &route.rewrite {
        match (&rw.full_path, &rw.prefix) {
            (Some(full), _) => uri = route::replace_full_path(full, query),
            (None, Some(prefix)) => uri = route::rewrite_path(path, query, matched, prefix),
            (None, None) => {}
        }
        if let Some(h) = &rw.host {
            upstream_authority = h.clone();
        }
    }
    // Header edits.
    let mut request_headers = req.headers().clone();
    request_headers.remove(http::header::HOST);
    route.request_headers.apply(&mut request_headers);
    let mut response_headers = HeaderMap::new();
    for (k, v) in UPSTREAM_RESPONSE {
        response_headers.append(*k, HeaderValue::from_static(v));
    }
    route.response_headers.apply(&mut response_headers);
    // Backends, as shares of every roll the engine may draw.
    let mut shares: BTreeMap<(String, u16, Option<String>), u32> = BTreeMap::new();
    if route.backends.is_empty() {
        shares.insert((p.service.to_owned(), p.port, None), 1000);
    } else {
        let total = route::total_weight(&route.backends);
        assert!(total <= 1_000_000, "weights too large to enumerate");
        let mut counts: BTreeMap<(String, u16, Option<String>), u64> = BTreeMap::new();
        for roll in 0..total {
            let b = route::pick_backend(&route.backends, roll).expect("a roll lands");
            let key = (
                short(b.host.as_deref().unwrap_or(&svc_host)),
                b.port.unwrap_or(p.port),
                b.subset.version.clone(),
            );
            *counts.entry(key).or_default() += 1;
        }
        for (k, n) in counts {
            let permille = u32::try_from(n * 1000 / u64::from(total)).expect("≤ 1000");
            shares.insert(k, permille);
        }
    }
    let retries = route.retries.as_ref();
    let retry_on = retries.map_or(&[][..], |r| r.retry_on.as_slice());
    let codes = retries.map_or(&[][..], |r| r.codes.as_slice());
    let forward = Forward {
        backends: shares
            .into_iter()
            .map(|((h, port, v), s)| (h, port, v, s))
            .collect(),
        uri,
        authority: upstream_authority,
        request_headers: header_list(&request_headers),
        response_headers: header_list(&response_headers),
        timeout: route.timeout,
        per_try_timeout: retries
            .and_then(|r| r.per_try_timeout)
            .or(route.backend_timeout),
        attempts: retries.map_or(0, |r| r.attempts),
        retried: OUTCOMES
            .iter()
            .filter(|(_, o)| retries.is_some() && route::retriable(retry_on, codes, *o))
            .map(|(n, _)| *n)
            .collect(),
        mirrors: {
            let mut m: Vec<_> = route
                .mirrors
                .iter()
                .map(|m| {
                    (
                        short(m.host.as_deref().unwrap_or(&svc_host)),
                        m.port.unwrap_or(p.port),
                        m.subset.version.clone(),
                        m.percentage,
                    )
                })
                .collect();
            m.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
            m
        },
        delay: fault
            .and_then(|f| f.delay.as_ref())
            .map(|d| (d.fixed_delay, d.percentage)),
    };
    decision(Action::Forward(Box::new(forward)))
}

// ---------------------------------------------------------------------------
// Expectations.
// ---------------------------------------------------------------------------

/// One expected fact of a decision.
#[derive(Debug, Clone)]
enum Want {
    /// Allowed with no ALLOW policy in force.
    Allowed,
    /// Allowed by this ALLOW policy (`namespace/name`).
    AllowedBy(&'static str),
    /// Denied by this DENY policy.
    DeniedBy(&'static str),
    /// ALLOW policies exist and none matched.
    NoAllowMatched,
    /// An allowed TCP connection.
    Connected,
    /// 404: no route.
    NoRoute,
    /// Forwarded to these services, in percent of requests.
    To(&'static [(&'static str, u32)]),
    /// A redirect: status and `location`.
    Redirect(u16, &'static str),
    /// A fault abort at 100 %.
    Abort(u16),
    /// The path and query sent upstream.
    Uri(&'static str),
    /// The authority sent upstream.
    Authority(&'static str),
    /// A request header upstream (values joined by `,`; `None`: absent).
    ReqHeader(&'static str, Option<&'static str>),
    /// A response header to the client (after [`UPSTREAM_RESPONSE`]).
    RespHeader(&'static str, Option<&'static str>),
    /// The route timeout.
    Timeout(Option<&'static str>),
    /// Each attempt's timeout.
    PerTry(Option<&'static str>),
    /// Retries after the first attempt, and the outcomes retried.
    Retries(u32, &'static [&'static str]),
    /// Mirrors: service and percentage.
    Mirrors(&'static [(&'static str, f64)]),
    /// The port's protocol.
    Proto(Protocol),
}

fn dur(s: Option<&str>) -> Option<Duration> {
    s.map(|s| parse_duration(s).expect("duration"))
}

fn header<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Whether `d` has the fact `w` (`Err`: what it has instead).
fn check(w: &Want, d: &Decision) -> Result<(), String> {
    let fwd = || match &d.action {
        Action::Forward(f) => Ok(f.as_ref()),
        other => Err(format!("not forwarded: {other:?}")),
    };
    let same = |ok: bool, have: &dyn std::fmt::Debug| {
        if ok {
            Ok(())
        } else {
            Err(format!("have {have:?}"))
        }
    };
    match w {
        Want::Allowed => same(d.verdict == Verdict::Allow(None), &d.verdict),
        Want::AllowedBy(p) => same(d.verdict == Verdict::Allow(Some((*p).into())), &d.verdict),
        Want::DeniedBy(p) => same(
            d.verdict == Verdict::DeniedBy((*p).into()) && d.action == Action::Refused,
            d,
        ),
        Want::NoAllowMatched => same(
            d.verdict == Verdict::NoAllowMatched && d.action == Action::Refused,
            d,
        ),
        Want::Connected => same(d.action == Action::Tcp, d),
        Want::NoRoute => same(d.action == Action::NoRoute, d),
        Want::To(want) => {
            let f = fwd()?;
            let have: Vec<(String, u32)> = f
                .backends
                .iter()
                .map(|(h, _, _, s)| (h.clone(), *s))
                .collect();
            let mut want: Vec<(String, u32)> = want
                .iter()
                .map(|(h, pct)| ((*h).into(), pct * 10))
                .collect();
            want.sort();
            same(have == want, &have)
        }
        Want::Redirect(status, location) => match &d.action {
            Action::Redirect {
                status: s,
                location: l,
                ..
            } => same(s == status && l == location, &(s, l)),
            other => Err(format!("no redirect: {other:?}")),
        },
        Want::Abort(status) => same(
            d.action
                == Action::Abort {
                    status: *status,
                    percentage: 100.0,
                },
            &d.action,
        ),
        Want::Uri(u) => {
            let f = fwd()?;
            same(f.uri == *u, &f.uri)
        }
        Want::Authority(a) => {
            let f = fwd()?;
            same(f.authority == *a, &f.authority)
        }
        Want::ReqHeader(n, v) => {
            let f = fwd()?;
            let have = header(&f.request_headers, n);
            same(have == *v, &have)
        }
        Want::RespHeader(n, v) => {
            let list = match &d.action {
                Action::Forward(f) => &f.response_headers,
                Action::Redirect {
                    response_headers, ..
                } => response_headers,
                other => return Err(format!("no response headers: {other:?}")),
            };
            let have = header(list, n);
            same(have == *v, &have)
        }
        Want::Timeout(t) => {
            let f = fwd()?;
            same(f.timeout == dur(*t), &f.timeout)
        }
        Want::PerTry(t) => {
            let f = fwd()?;
            same(f.per_try_timeout == dur(*t), &f.per_try_timeout)
        }
        Want::Retries(n, on) => {
            let f = fwd()?;
            same(
                f.attempts == *n && f.retried == *on,
                &(f.attempts, &f.retried),
            )
        }
        Want::Mirrors(want) => {
            let f = fwd()?;
            let have: Vec<(String, f64)> = f.mirrors.iter().map(|m| (m.0.clone(), m.3)).collect();
            let want: Vec<(String, f64)> = want.iter().map(|(h, p)| ((*h).into(), *p)).collect();
            same(have == want, &have)
        }
        Want::Proto(p) => same(d.protocol == *p, &d.protocol),
    }
}

// ---------------------------------------------------------------------------
// The table.
// ---------------------------------------------------------------------------

struct Case {
    name: &'static str,
    /// The local `RouteConfig` YAML.
    local: &'static str,
    /// Gateway API routes and AuthorizationPolicies, multi-document YAML.
    kube: &'static str,
    probes: Vec<Probe>,
}

fn to(backends: &'static [(&'static str, u32)]) -> Want {
    Want::To(backends)
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    use Want::*;
    vec![
        Case {
            name: "exact path beats prefixes, the longest prefix wins, prefixes match whole segments",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - name: health
    match: [{path: {exact: /api/health}}]
    backends: [{host: reviews-v2.default.svc.cluster.local, port: 9080}]
  - name: api-v2
    match: [{path: {exact: /api/v2}}, {path: {prefix: /api/v2/}}]
    backends: [{host: reviews-v3.default.svc.cluster.local, port: 9080}]
  - name: api
    match: [{path: {exact: /api}}, {path: {prefix: /api/}}]
    backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: Exact, value: /api/health}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-v2, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api/v2/}}]
    backendRefs: [{name: reviews-v3, port: 9080}]
"#,
            probes: vec![
                get("/api/health").want([to(&[("reviews-v2", 100)]), Proto(Protocol::Http)]),
                get("/api/health/x").want([to(&[("reviews-v1", 100)])]),
                get("/api/v2").want([to(&[("reviews-v3", 100)])]),
                get("/api/v2/list?page=2").want([to(&[("reviews-v3", 100)])]),
                get("/api/v2x").want([to(&[("reviews-v1", 100)])]),
                get("/api").want([to(&[("reviews-v1", 100)]), Uri("/api")]),
                get("/apix").want([NoRoute]),
                get("/").want([NoRoute]),
            ],
        },
        Case {
            name: "header matches: more headers first, exact values are case-sensitive, regex",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{headers: {end-user: {exact: jason}, x-debug: {exact: "1"}}}]
    backends: [{host: reviews-v3.default.svc.cluster.local}]
  - match: [{headers: {end-user: {exact: jason}}}]
    backends: [{host: reviews-v2.default.svc.cluster.local}]
  - match: [{headers: {x-canary: {regex: "yes|true"}}}]
    backends: [{host: reviews-v3.default.svc.cluster.local}]
  - backends: [{host: reviews-v1.default.svc.cluster.local}]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: by-header, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{headers: [{name: End-User, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{headers: [{name: end-user, value: jason}, {name: X-Debug, value: "1"}]}]
    backendRefs: [{name: reviews-v3, port: 9080}]
  - matches: [{headers: [{type: RegularExpression, name: x-canary, value: "yes|true"}]}]
    backendRefs: [{name: reviews-v3, port: 9080}]
  - backendRefs: [{name: reviews-v1, port: 9080}]
"#,
            probes: vec![
                get("/")
                    .header("end-user", "jason")
                    .want([to(&[("reviews-v2", 100)])]),
                get("/p")
                    .header("end-user", "jason")
                    .header("x-debug", "1")
                    .want([to(&[("reviews-v3", 100)])]),
                get("/")
                    .header("end-user", "Jason")
                    .want([to(&[("reviews-v1", 100)])]),
                get("/")
                    .header("x-canary", "true")
                    .want([to(&[("reviews-v3", 100)])]),
                get("/")
                    .header("x-canary", "truex")
                    .want([to(&[("reviews-v1", 100)])]),
                get("/").want([to(&[("reviews-v1", 100)])]),
            ],
        },
        Case {
            name: "query parameter matches: exact and regex, names case-sensitive",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{queryParams: {debug: {exact: "1"}}}]
    backends: [{host: reviews-v2.default.svc.cluster.local, port: 9080}]
  - match: [{queryParams: {user: {regex: "a.*"}}}]
    backends: [{host: reviews-v3.default.svc.cluster.local, port: 9080}]
  - backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: by-query, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{queryParams: [{name: debug, value: "1"}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{queryParams: [{type: RegularExpression, name: user, value: "a.*"}]}]
    backendRefs: [{name: reviews-v3, port: 9080}]
  - backendRefs: [{name: reviews-v1, port: 9080}]
"#,
            probes: vec![
                get("/?debug=1").want([to(&[("reviews-v2", 100)]), Uri("/?debug=1")]),
                get("/p?a=b&debug=1").want([to(&[("reviews-v2", 100)])]),
                get("/?debug=10").want([to(&[("reviews-v1", 100)])]),
                get("/?Debug=1").want([to(&[("reviews-v1", 100)])]),
                get("/?user=alice").want([to(&[("reviews-v3", 100)])]),
                get("/?user=bob").want([to(&[("reviews-v1", 100)])]),
            ],
        },
        Case {
            name: "method match: on the same path, the match with a method comes first",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{path: {exact: /admin}, method: DELETE}, {path: {prefix: /admin/}, method: DELETE}]
    backends: [{host: reviews-v3.default.svc.cluster.local, port: 9080}]
  - match: [{path: {exact: /admin}}, {path: {prefix: /admin/}}]
    backends: [{host: reviews-v2.default.svc.cluster.local, port: 9080}]
  - backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: by-method, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /admin}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /admin}, method: DELETE}]
    backendRefs: [{name: reviews-v3, port: 9080}]
  - backendRefs: [{name: reviews-v1, port: 9080}]
"#,
            probes: vec![
                req("DELETE", "/admin/users/7").want([to(&[("reviews-v3", 100)])]),
                req("DELETE", "/admin").want([to(&[("reviews-v3", 100)])]),
                get("/admin/users/7").want([to(&[("reviews-v2", 100)])]),
                req("DELETE", "/users/7").want([to(&[("reviews-v1", 100)])]),
                req("POST", "/").want([to(&[("reviews-v1", 100)])]),
            ],
        },
        Case {
            name: "weighted split: 90/10, weight 0 left out; unweighted backends share equally",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{path: {exact: /even}}]
    backends:
    - {host: reviews-v1.default.svc.cluster.local}
    - {host: reviews-v2.default.svc.cluster.local}
  - backends:
    - {host: reviews-v1.default.svc.cluster.local, port: 9080, weight: 9}
    - {host: reviews-v2.default.svc.cluster.local, port: 9080, weight: 1}
    - {host: reviews-v3.default.svc.cluster.local, port: 9080, weight: 0}
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
    - {name: reviews-v3, port: 9080, weight: 0}
  - matches: [{path: {type: Exact, value: /even}}]
    backendRefs: [{name: reviews-v1, port: 9080}, {name: reviews-v2, port: 9080}]
"#,
            probes: vec![
                get("/").want([to(&[("reviews-v1", 90), ("reviews-v2", 10)])]),
                get("/even").want([to(&[("reviews-v1", 50), ("reviews-v2", 50)])]),
                get("/even/not").want([to(&[("reviews-v1", 90), ("reviews-v2", 10)])]),
            ],
        },
        Case {
            name: "request header modifier: set, add, remove (names case-insensitive)",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
    requestHeaders:
      set: {x-a: "1"}
      add: {x-b: "2"}
      remove: [x-c]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: req-headers, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-A, value: "1"}]
        add: [{name: x-b, value: "2"}]
        remove: [X-C]
    backendRefs: [{name: reviews-v1, port: 9080}]
"#,
            probes: vec![
                get("/")
                    .header("x-a", "old")
                    .header("x-b", "first")
                    .header("x-c", "gone")
                    .header("x-keep", "k")
                    .want([
                        to(&[("reviews-v1", 100)]),
                        ReqHeader("x-a", Some("1")),
                        ReqHeader("x-b", Some("first,2")),
                        ReqHeader("x-c", None),
                        ReqHeader("x-keep", Some("k")),
                    ]),
                get("/").want([ReqHeader("x-a", Some("1")), ReqHeader("x-b", Some("2"))]),
            ],
        },
        Case {
            name: "response header modifier; a route without backends goes to the service itself",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - responseHeaders:
      set: {x-served-by: waypoint}
      add: {x-upstream: "2"}
      remove: [server]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: resp-headers, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Served-By, value: waypoint}]
        add: [{name: x-upstream, value: "2"}]
        remove: [Server]
    backendRefs: [{name: reviews, port: 9080}]
"#,
            probes: vec![get("/anything?x=1").want([
                to(&[("reviews", 100)]),
                RespHeader("x-served-by", Some("waypoint")),
                RespHeader("x-upstream", Some("1,2")),
                RespHeader("server", None),
                Uri("/anything?x=1"),
            ])],
        },
        Case {
            name: "redirects: prefix replacement with scheme and host, full path with port",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{path: {exact: /login}}]
    redirect: {path: /v2/login, port: 8443, code: 301}
  - match: [{path: {exact: /moved}}, {path: {prefix: /moved/}}]
    redirect: {host: reviews.example.com}
  - match: [{path: {exact: /old}}, {path: {prefix: /old/}}]
    redirect: {scheme: https, host: reviews.example.com, prefix: /new, code: 302}
  - backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: redirects, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        scheme: https
        hostname: reviews.example.com
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
        statusCode: 302
  - matches: [{path: {type: Exact, value: /login}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        path: {type: ReplaceFullPath, replaceFullPath: /v2/login}
        port: 8443
  - matches: [{path: {type: PathPrefix, value: /moved}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: reviews.example.com}
  - backendRefs: [{name: reviews-v1, port: 9080}]
"#,
            probes: vec![
                get("/old/a/b?q=1")
                    .want([Redirect(302, "https://reviews.example.com/new/a/b?q=1")]),
                get("/old").want([Redirect(302, "https://reviews.example.com/new")]),
                get("/login?next=%2F").want([Redirect(
                    301,
                    "http://reviews.default.svc.cluster.local:8443/v2/login?next=%2F",
                )]),
                get("/older").want([to(&[("reviews-v1", 100)])]),
                // With neither scheme nor port, the Gateway API keeps the
                // listener's port: the request's (`:9080`).
                get("/moved/x").want([Redirect(301, "http://reviews.example.com:9080/moved/x")]),
            ],
        },
        Case {
            name: "URL rewrite: prefix replacement with host, full path, prefix to /",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{path: {exact: /status}}]
    rewrite: {fullPath: /healthz}
    backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
  - match: [{path: {exact: /v1/api}}, {path: {prefix: /v1/api/}}]
    rewrite: {prefix: /api, host: reviews-internal}
    backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
  - match: [{path: {exact: /strip}}, {path: {prefix: /strip/}}]
    rewrite: {prefix: /}
    backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rewrites, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1/api}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: reviews-internal
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: Exact, value: /status}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplaceFullPath, replaceFullPath: /healthz}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /strip/}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /}
    backendRefs: [{name: reviews-v1, port: 9080}]
"#,
            probes: vec![
                get("/v1/api/items?x=1").want([
                    to(&[("reviews-v1", 100)]),
                    Uri("/api/items?x=1"),
                    Authority("reviews-internal"),
                ]),
                get("/v1/api").want([Uri("/api"), Authority("reviews-internal")]),
                get("/status?verbose=1").want([
                    Uri("/healthz?verbose=1"),
                    Authority("reviews.default.svc.cluster.local:9080"),
                ]),
                get("/strip/a/b").want([Uri("/a/b")]),
                get("/strip").want([Uri("/")]),
                get("/v1/apis").want([NoRoute]),
            ],
        },
        Case {
            name: "timeouts: request and backendRequest; 0s is no timeout",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{path: {exact: /stream}}]
    backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
  - match: [{path: {exact: /slow}}, {path: {prefix: /slow/}}]
    backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
    timeout: 10s
    backendTimeout: 2s
  - backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
    timeout: 1.5s
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: timeouts, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 10s, backendRequest: 2s}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: Exact, value: /stream}}]
    timeouts: {request: 0s}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - timeouts: {request: 1500ms}
    backendRefs: [{name: reviews-v1, port: 9080}]
"#,
            probes: vec![
                get("/slow/report").want([Timeout(Some("10s")), PerTry(Some("2s"))]),
                get("/stream").want([Timeout(None), PerTry(None)]),
                get("/").want([Timeout(Some("1500ms")), PerTry(None)]),
            ],
        },
        Case {
            name: "retries: attempts and codes (also connect failures and resets); unset attempts is 2",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{path: {exact: /once}}]
    backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
    retries: {attempts: 2, retryOn: [connect-failure, reset], codes: [502]}
  - backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
    backendTimeout: 500ms
    retries: {attempts: 3, retryOn: [connect-failure, reset], codes: [409, 503]}
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: retries, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - retry: {attempts: 3, codes: [503, 409], backoff: 100ms}
    timeouts: {backendRequest: 500ms}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: Exact, value: /once}}]
    retry: {codes: [502]}
    backendRefs: [{name: reviews-v1, port: 9080}]
"#,
            probes: vec![
                get("/").want([
                    Retries(3, &["409", "503", "connect-failure", "reset"]),
                    PerTry(Some("500ms")),
                    Timeout(None),
                ]),
                get("/once").want([
                    Retries(2, &["502", "connect-failure", "reset"]),
                    PerTry(None),
                ]),
            ],
        },
        Case {
            name: "request mirror: percent, fraction, whole",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{path: {exact: /all}}]
    backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
    mirrors: [{host: reviews-v2.default.svc.cluster.local, port: 9080}]
  - match: [{path: {exact: /quarter}}, {path: {prefix: /quarter/}}]
    backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
    mirrors: [{host: reviews-v3.default.svc.cluster.local, port: 9080, percentage: 25}]
  - backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
    mirrors: [{host: reviews-v3.default.svc.cluster.local, port: 9080, percentage: 10}]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirrors, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: reviews-v3, port: 9080}, percent: 10}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /quarter}}]
    filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: reviews-v3, port: 9080}
        fraction: {numerator: 1, denominator: 4}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: Exact, value: /all}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: reviews-v2, port: 9080}}
    backendRefs: [{name: reviews-v1, port: 9080}]
"#,
            probes: vec![
                get("/").want([to(&[("reviews-v1", 100)]), Mirrors(&[("reviews-v3", 10.0)])]),
                get("/quarter/x").want([Mirrors(&[("reviews-v3", 25.0)])]),
                get("/all").want([Mirrors(&[("reviews-v2", 100.0)])]),
            ],
        },
        Case {
            name: "GRPCRoute: exact service+method, service only (headers first), method only",
            local: r#"
services:
- host: ratings.default.svc.cluster.local
  ports: {50051: grpc}
  routes:
  - match: [{path: {exact: /ratings.Ratings/Get}}]
    backends: [{host: ratings-v2.default.svc.cluster.local, port: 50051}]
  - match: [{path: {prefix: /ratings.Ratings/}, headers: {x-tenant: {exact: gold}}}]
    backends: [{host: ratings-v2.default.svc.cluster.local, port: 50051}]
  - match: [{path: {prefix: /ratings.Ratings/}}]
    backends: [{host: ratings-v1.default.svc.cluster.local, port: 50051}]
  - match: [{path: {regex: "/[^/]+/Check"}}]
    requestHeaders: {set: {x-health: "1"}}
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: ratings, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings}]
  rules:
  - matches: [{method: {service: ratings.Ratings}}]
    backendRefs: [{name: ratings-v1, port: 50051}]
  - matches: [{method: {service: ratings.Ratings, method: Get}}]
    backendRefs: [{name: ratings-v2, port: 50051}]
  - matches: [{method: {method: Check}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-health, value: "1"}]}
    backendRefs: [{name: ratings, port: 50051}]
  - matches: [{method: {service: ratings.Ratings}, headers: [{name: X-Tenant, value: gold}]}]
    backendRefs: [{name: ratings-v2, port: 50051}]
"#,
            probes: vec![
                grpc("/ratings.Ratings/Get")
                    .want([to(&[("ratings-v2", 100)]), Proto(Protocol::Grpc)]),
                grpc("/ratings.Ratings/List").want([to(&[("ratings-v1", 100)])]),
                grpc("/ratings.Ratings/List")
                    .header("x-tenant", "gold")
                    .want([to(&[("ratings-v2", 100)])]),
                grpc("/grpc.health.v1.Health/Check")
                    .want([to(&[("ratings", 100)]), ReqHeader("x-health", Some("1"))]),
                grpc("/ratings.Ratings/Check").want([to(&[("ratings-v1", 100)])]),
                grpc("/other.Svc/Get").want([NoRoute]),
            ],
        },
        Case {
            name: "AuthorizationPolicy DENY by path on the waypoint; on TCP its path rule denies every connection",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  policies:
  - name: default/deny-admin
    action: DENY
    rules:
    - to: [{operation: {paths: [/admin, /admin/*]}}]
    - to: [{operation: {paths: [/debug*], methods: [POST]}}]
"#,
            kube: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin, /admin/*]}}]
  - to: [{operation: {paths: [/debug*], methods: [POST]}}]
"#,
            probes: vec![
                get("/admin").want([DeniedBy("default/deny-admin")]),
                get("/admin/users?all=1").want([DeniedBy("default/deny-admin")]),
                get("/administrator").want([Allowed, to(&[("reviews", 100)])]),
                req("POST", "/debug/vars").want([DeniedBy("default/deny-admin")]),
                get("/debug/vars").want([Allowed]),
                tcp(9090).want([DeniedBy("default/deny-admin"), Proto(Protocol::Tcp)]),
            ],
        },
        Case {
            name: "AuthorizationPolicy DENY by source principal and by namespace + method, on the Service",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  policies:
  - name: default/deny-evil
    action: DENY
    rules:
    - from: [{source: {principals: ["cluster.local/ns/evil/*"]}}]
    - from: [{source: {namespaces: [sandbox]}}]
      to: [{operation: {methods: [DELETE]}}]
"#,
            kube: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: default}
spec:
  targetRefs: [{group: "", kind: Service, name: reviews}]
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/evil/*"]}}]
  - from: [{source: {namespaces: [sandbox]}}]
    to: [{operation: {methods: [DELETE]}}]
"#,
            probes: vec![
                get("/")
                    .from("evil", "bad")
                    .want([DeniedBy("default/deny-evil")]),
                get("/").want([Allowed, to(&[("reviews", 100)])]),
                req("DELETE", "/r/1")
                    .from("sandbox", "x")
                    .want([DeniedBy("default/deny-evil")]),
                get("/r/1").from("sandbox", "x").want([Allowed]),
                tcp(9090)
                    .from("evil", "bad")
                    .want([DeniedBy("default/deny-evil")]),
                tcp(9090).want([Allowed, Connected]),
                // The DENY rule's method is HTTP-only: on TCP it is ignored.
                tcp(9090)
                    .from("sandbox", "x")
                    .want([DeniedBy("default/deny-evil")]),
            ],
        },
        Case {
            name: "AuthorizationPolicy ALLOW with notPaths; HTTP-only ALLOW rules never match TCP",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  policies:
  - name: default/allow-reads
    action: ALLOW
    rules:
    - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
      to: [{operation: {notPaths: [/internal/*]}}]
    - from: [{source: {namespaces: [ops]}}]
"#,
            kube: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-reads, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
    to: [{operation: {notPaths: [/internal/*]}}]
  - from: [{source: {namespaces: [ops]}}]
"#,
            probes: vec![
                get("/reviews/1").want([AllowedBy("default/allow-reads"), to(&[("reviews", 100)])]),
                get("/internal/keys").want([NoAllowMatched]),
                get("/reviews/1")
                    .from("default", "ratings")
                    .want([NoAllowMatched]),
                get("/internal/keys")
                    .from("ops", "admin")
                    .want([AllowedBy("default/allow-reads")]),
                tcp(9090).want([NoAllowMatched]),
                tcp(9090)
                    .from("ops", "admin")
                    .want([AllowedBy("default/allow-reads"), Connected]),
            ],
        },
        Case {
            name: "L4 DENY by port",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  policies:
  - name: default/deny-9090
    action: DENY
    rules:
    - to: [{operation: {ports: [9090]}}]
"#,
            kube: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-9090, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {ports: ["9090"]}}]
"#,
            probes: vec![
                tcp(9090).want([DeniedBy("default/deny-9090"), Proto(Protocol::Tcp)]),
                tcp(9080).want([Allowed, Connected]),
                get("/").want([Allowed, to(&[("reviews", 100)]), Proto(Protocol::Http)]),
            ],
        },
        Case {
            name: "a route on the waypoint Gateway applies to the services its hostnames name",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - backends: [{host: reviews-v3.default.svc.cluster.local, port: 9080}]
    responseHeaders: {set: {x-via: waypoint}}
- host: reviews-v1.default.svc.cluster.local
  ports: {9080: http}
- host: reviews-v2.default.svc.cluster.local
  ports: {9080: http}
  routes:
  - backends: [{host: reviews-v3.default.svc.cluster.local, port: 9080}]
    responseHeaders: {set: {x-via: waypoint}}
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: on-gateway, namespace: default}
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  hostnames: [reviews.default.svc.cluster.local, reviews-v2.default.svc.cluster.local]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-via, value: waypoint}]}
    backendRefs: [{name: reviews-v3, port: 9080}]
"#,
            probes: vec![
                get("/").want([
                    to(&[("reviews-v3", 100)]),
                    RespHeader("x-via", Some("waypoint")),
                ]),
                get("/").on("reviews-v2", 9080).want([
                    to(&[("reviews-v3", 100)]),
                    RespHeader("x-via", Some("waypoint")),
                ]),
                get("/")
                    .on("reviews-v1", 9080)
                    .want([to(&[("reviews-v1", 100)]), RespHeader("x-via", None)]),
            ],
        },
        Case {
            name: "no backend with a weight: 500",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{path: {exact: /broken}}]
    fault: {abort: {httpStatus: 500}}
  - backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: zero, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: Exact, value: /broken}}]
    backendRefs: [{name: reviews-v1, port: 9080, weight: 0}]
  - backendRefs: [{name: reviews-v1, port: 9080}]
"#,
            probes: vec![
                get("/broken").want([Abort(500)]),
                get("/").want([to(&[("reviews-v1", 100)])]),
            ],
        },
        Case {
            name: "equal matches in two routes: the older route wins",
            local: r#"
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http, 9090: tcp}
  routes:
  - match: [{path: {prefix: /}}]
    backends: [{host: reviews-v2.default.svc.cluster.local, port: 9080}]
  - match: [{path: {prefix: /}}]
    backends: [{host: reviews-v1.default.svc.cluster.local, port: 9080}]
"#,
            kube: r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-newer, namespace: default, creationTimestamp: "2024-05-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: z-older, namespace: default, creationTimestamp: "2023-05-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - backendRefs: [{name: reviews-v2, port: 9080}]
"#,
            probes: vec![get("/x").want([to(&[("reviews-v2", 100)])])],
        },
    ]
}

#[test]
fn local_yaml_and_kubernetes_decide_every_probe_alike() {
    let cases = cases();
    assert!(cases.len() >= 12, "the table has {} cases", cases.len());
    let mut failures = String::new();
    let mut probes = 0;
    for case in &cases {
        assert!(!case.probes.is_empty(), "{}: no probes", case.name);
        let local = RouteConfig::parse(case.local, case.name)
            .unwrap_or_else(|e| panic!("{}: local YAML: {e}", case.name));
        let kube = kube_config(case.name, case.kube);
        for p in &case.probes {
            probes += 1;
            assert!(
                !p.want.is_empty(),
                "{}: {}: no expectation",
                case.name,
                p.describe()
            );
            let dl = decide(&local, p);
            let dk = decide(&kube.config, p);
            if dl != dk {
                let _ = writeln!(
                    failures,
                    "\n[{}] {}: the sources disagree\n  local:      {dl:?}\n  kubernetes: {dk:?}\n  translated YAML:\n{}",
                    case.name,
                    p.describe(),
                    kube.yaml
                );
            }
            for (label, d) in [("local", &dl), ("kubernetes", &dk)] {
                for w in &p.want {
                    if let Err(have) = check(w, d) {
                        let _ = writeln!(
                            failures,
                            "\n[{}] {} ({label}): want {w:?}, {have}",
                            case.name,
                            p.describe()
                        );
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures}");
    assert!(probes >= 60, "{probes} probes");
}

/// The decision itself is not vacuous: two configs that differ in one
/// respect each give different decisions.
#[test]
fn decisions_tell_configs_apart() {
    let base = "services:\n- host: reviews.default.svc.cluster.local\n  ports: {9080: http}\n  routes:\n  - backends: [{host: reviews-v1.default.svc.cluster.local}]\n";
    let parse = |extra: &str| RouteConfig::parse(&format!("{base}{extra}"), "t").expect("parses");
    let probe = get("/a?b=1").header("x-a", "1");
    let plain = decide(&parse(""), &probe);
    for extra in [
        "    timeout: 1s\n",
        "    backendTimeout: 1s\n",
        "    retries: {attempts: 1}\n",
        "    rewrite: {prefix: /z}\n",
        "    rewrite: {host: other}\n",
        "    requestHeaders: {remove: [x-a]}\n",
        "    responseHeaders: {set: {x-b: '2'}}\n",
        "    mirrors: [{host: reviews-v2.default.svc.cluster.local}]\n",
        "    fault: {delay: {fixedDelay: 1s}}\n",
        "    fault: {abort: {httpStatus: 503}}\n",
        "    match: [{path: {prefix: /b}}]\n",
        "  policies: [{name: p, action: DENY, rules: [{}]}]\n",
        "  - backends: [{host: reviews-v2.default.svc.cluster.local}]\n",
    ] {
        let changed = decide(&parse(extra), &probe);
        if !extra.starts_with("  - ") {
            assert_ne!(plain, changed, "{extra}");
        } else {
            // A second route after a catch-all changes nothing.
            assert_eq!(plain, changed, "{extra}");
        }
    }
}
