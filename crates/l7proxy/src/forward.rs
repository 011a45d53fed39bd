//! The request path: per HTTP request, L7 authorization, route choice,
//! redirects and faults, backend and endpoint choice, then attempts under
//! the route's timeout and retries on pooled upstream connections
//! (HTTP/1.1, or HTTP/2 for `http2`/`grpc` ports and gRPC over HTTP/2), and
//! copies to the route's mirrors.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ambit_mesh::{Endpoint, MeshState, Workload};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as HttpBody;

use crate::authz::{self, AuthzFacts, HttpFacts};
use crate::config::{Backend, LoadBalancer, Protocol, Route, RouteConfig, ServiceConfig, Subset};
use crate::grpc::{self, LocalReply};
use crate::head;
use crate::mirror::MirrorBody;
use crate::pool::PoolKey;
use crate::proxy::{Body, BoxError, Conn, Meta, Waypoint};
use crate::record::Finish;
use crate::route::{self, Outcome, RequestFacts};
use crate::upstream::{UpBody, Upstream};

/// One endpoint a backend may use, with what every request to it needs:
/// its balancer key (`uid:port`) and its upstream pool key.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) endpoint: Endpoint,
    pub(crate) key: Arc<str>,
    pub(crate) pool: Arc<PoolKey>,
}

impl AsRef<str> for Candidate {
    fn as_ref(&self) -> &str {
        &self.key
    }
}

/// Per connection: the client's workload and the candidate endpoints of
/// each backend it has routed to, valid for one mesh revision (and HBONE
/// port). Invariant: an entry is used only while
/// [`MeshState::revision`](ambit_mesh::MeshState::revision) is the one it
/// was built at, so any mesh change (workloads, services, health) is seen
/// by the next request exactly as before; the lists are built by the same
/// code as before, once per connection, backend and revision instead of
/// once per request.
#[derive(Debug, Default)]
pub(crate) struct EndpointCache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    revision: Option<u64>,
    source: Option<Arc<Workload>>,
    lists: Vec<CachedList>,
}

#[derive(Debug)]
struct CachedList {
    host: Option<String>,
    port: Option<u16>,
    subset: Subset,
    hbone_port: u16,
    candidates: Arc<[Candidate]>,
}

/// Backends one connection keeps lists for; more are rebuilt per request.
const LISTS_MAX: usize = 8;

impl EndpointCache {
    fn lock(&self) -> MutexGuard<'_, CacheInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// What the engine knows of a request before routing it.
#[derive(Debug, Clone, Copy)]
struct Traits {
    /// A gRPC request.
    grpc: bool,
    /// The lean loop read its body whole already.
    whole: bool,
}

impl Waypoint {
    /// The workload of the connection's client (by its address), as of
    /// the current mesh revision.
    pub(crate) fn source(&self, conn: &Conn) -> Option<Arc<Workload>> {
        let state = self.inner.state.read().ok()?;
        self.cache_at(conn, &state).source.clone()
    }

    /// The connection's cache, emptied first (and its client's workload
    /// looked up again) when `state` has moved to another revision.
    fn cache_at<'c>(&self, conn: &'c Conn, state: &MeshState) -> MutexGuard<'c, CacheInner> {
        let mut c = conn.endpoints.lock();
        if c.revision != Some(state.revision()) {
            *c = CacheInner {
                revision: Some(state.revision()),
                source: state.workload_by_ip(&self.inner.cfg.network, conn.client.ip()),
                lists: Vec::new(),
            };
        }
        c
    }

    /// The candidate endpoints of `backend` (relative to the connection's
    /// service): those the mesh prefers for the client's workload (its
    /// routing preferences, health policy and capacity, see
    /// [`ambit_mesh::MeshState::preferred`]) in the backend's subset, with
    /// an address.
    fn candidates(
        &self,
        conn: &Conn,
        routes: &RouteConfig,
        backend: &Backend,
    ) -> Option<Arc<[Candidate]>> {
        let state = self.inner.state.read().ok()?;
        let hbone_port = routes.hbone_port;
        let mut c = self.cache_at(conn, &state);
        if let Some(l) = c.lists.iter().find(|l| {
            l.hbone_port == hbone_port
                && l.port == backend.port
                && l.host == backend.host
                && l.subset == backend.subset
        }) {
            return Some(Arc::clone(&l.candidates));
        }
        let svc = &conn.service;
        let target = match &backend.host {
            Some(h) if *h != svc.hostname => {
                state.services().find(|s| s.hostname == *h).cloned()?
            }
            _ => state.service(&svc.key())?,
        };
        let network = &self.inner.cfg.network;
        let who = ambit_mesh::Client::new(network).with_source(c.source.as_deref());
        let eps = state.preferred(&target, backend.port.unwrap_or(conn.port), &who);
        drop(state);
        let candidates: Arc<[Candidate]> = eps
            .into_iter()
            .filter(|e| backend.subset.contains(&e.workload))
            .filter(|e| !e.workload.addresses.is_empty())
            .map(|e| Candidate {
                key: ep_key(&e).into(),
                pool: Arc::new(self.pool_key(&e, conn.client, hbone_port)),
                endpoint: e,
            })
            .collect();
        if c.lists.len() < LISTS_MAX {
            c.lists.push(CachedList {
                host: backend.host.clone(),
                port: backend.port,
                subset: backend.subset.clone(),
                hbone_port,
                candidates: Arc::clone(&candidates),
            });
        }
        Some(candidates)
    }

    /// One healthy endpoint of `backend`, picked by the balancer under
    /// `policy`, preferring endpoints not in `tried`.
    pub(crate) fn pick(
        &self,
        conn: &Conn,
        routes: &RouteConfig,
        backend: &Backend,
        tried: &[Arc<str>],
        policy: LoadBalancer,
    ) -> Option<Candidate> {
        let all = self.candidates(conn, routes, backend)?;
        let now = Instant::now();
        let untried = |c: &Candidate| !tried.contains(&c.key);
        if !tried.is_empty() && all.iter().any(untried) && !all.iter().all(untried) {
            let rest: Vec<&Candidate> = all.iter().filter(|c| untried(c)).collect();
            let i = self.inner.balancer.pick(&rest, policy, now)?;
            return rest.get(i).map(|c| (*c).clone());
        }
        let i = self.inner.balancer.pick(&all, policy, now)?;
        all.get(i).cloned()
    }

    /// Serves one request. `whole`: the lean loop read its body whole
    /// already; the engine treats it as buffered (retriable, mirrored
    /// whole, one upstream write) whatever its size up to the loop's limit.
    pub(crate) async fn handle_request<B>(
        &self,
        conn: &Arc<Conn>,
        req: Request<B>,
        whole: bool,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let routes = self.routes();
        let svc_cfg = routes.service(&conn.service.hostname);
        let source = self.source(conn);
        let grpc = grpc::is_grpc(&req);
        // Copied for the access log only when it is on.
        let access = tracing::enabled!(target: "access", tracing::Level::INFO)
            .then(|| (req.method().clone(), req.uri().path().to_owned()));
        let mut meta = Meta {
            flags: "-",
            destination: None,
        };
        let (resp, route_name) = self
            .route_request(
                conn,
                &routes,
                svc_cfg,
                req,
                Traits { grpc, whole },
                &mut meta,
            )
            .await;
        let done = Finish {
            waypoint: self.clone(),
            conn: Arc::clone(conn),
            start,
            source,
            destination: meta.destination,
            code: resp.status().as_u16(),
            flags: meta.flags,
            grpc,
            access: access.map(|(m, p)| (m, p, route_name.map(str::to_owned))),
        };
        done.attach(resp)
    }

    async fn route_request<'r, B>(
        &self,
        conn: &Arc<Conn>,
        routes: &RouteConfig,
        svc_cfg: Option<&'r ServiceConfig>,
        mut req: Request<B>,
        Traits { grpc, whole }: Traits,
        meta: &mut Meta,
    ) -> (Response<Body>, Option<&'r str>)
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // A clone of the header value is a reference count, not a copy.
        let host = req.headers().get(header::HOST).cloned();
        let authority: Cow<'_, str> = match host.as_ref().and_then(|h| h.to_str().ok()) {
            Some(h) => Cow::Borrowed(h),
            None => Cow::Owned(
                req.uri()
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| format!("{}:{}", conn.service.hostname, conn.port)),
            ),
        };
        // L7 authorization.
        if let Some(cfg) = svc_cfg {
            let source_ip = Some(conn.client.ip());
            let facts = AuthzFacts {
                peer: Some(&conn.peer),
                source_ip,
                remote_ip: authz::remote_ip(req.headers(), source_ip),
                port: conn.port,
                http: Some(HttpFacts {
                    method: req.method().as_str(),
                    path: req.uri().path(),
                    host: &authority,
                    headers: req.headers(),
                }),
            };
            let verdict = authz::authorize(&cfg.policies, &facts);
            if !verdict.allowed() {
                tracing::debug!(?verdict, "request denied");
                meta.flags = "DENY";
                return (local(StatusCode::FORBIDDEN, "RBAC: access denied\n"), None);
            }
        }
        // Route selection.
        let default_route = Route::default();
        let (route, matched, name) = match svc_cfg.filter(|c| !c.routes.is_empty()) {
            Some(cfg) => match route::select(&cfg.routes, &RequestFacts::of(&req)) {
                Some((r, m)) => (r, m, r.name.as_deref()),
                None => {
                    meta.flags = "NR";
                    return (local(StatusCode::NOT_FOUND, "no route\n"), None);
                }
            },
            None => (&default_route, None, None),
        };
        if let Some(r) = &route.redirect {
            let (status, location) =
                route::redirect(r, &authority, req.uri().path(), req.uri().query(), matched);
            let mut resp = local(status, "");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            route.response_headers.apply(resp.headers_mut());
            return (resp, name);
        }
        // Faults.
        if let Some(f) = &route.fault {
            if let Some(d) = &f.delay
                && route::fires(d.percentage, fastrand::f64() * 100.0)
            {
                tokio::time::sleep(d.fixed_delay).await;
            }
            if let Some(a) = &f.abort
                && route::fires(a.percentage, fastrand::f64() * 100.0)
            {
                meta.flags = "FI";
                let status =
                    StatusCode::from_u16(a.http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return (local(status, "fault filter abort\n"), name);
            }
        }
        // Request edits.
        if let Some(rw) = &route.rewrite {
            let path = match (&rw.full_path, &rw.prefix) {
                (Some(full), _) => Some(route::replace_full_path(full, req.uri().query())),
                (None, Some(prefix)) => Some(route::rewrite_path(
                    req.uri().path(),
                    req.uri().query(),
                    matched,
                    prefix,
                )),
                (None, None) => None,
            };
            if let Some(uri) = path.and_then(|p| p.parse().ok()) {
                *req.uri_mut() = uri;
            }
            if let Some(h) = &rw.host
                && let Ok(v) = HeaderValue::from_str(h)
            {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        let protocol = svc_cfg
            .and_then(|c| c.ports.get(&conn.port).copied())
            .unwrap_or_default();
        let version = if matches!(protocol, Protocol::Http2 | Protocol::Grpc)
            || (grpc && req.version() == http::Version::HTTP_2)
        {
            Upstream::Http2
        } else {
            Upstream::Http1
        };
        let (mut parts, body) = req.into_parts();
        head::prepare(&mut parts, &authority, version);
        route.request_headers.apply(&mut parts.headers);
        if let Some(v) = &conn.forwarded {
            parts.headers.append(header::FORWARDED, v.clone());
        }
        // Body: buffered (retriable, mirrored) when small and of known
        // length, else streamed once.
        let retries = route.retries.as_ref();
        let known = if body.is_end_stream() {
            Some(0)
        } else {
            body.size_hint().upper()
        };
        let cfg = &self.inner.cfg;
        let fits = |cap: usize| known.is_some_and(|n| n <= cap as u64);
        let buffer_retry = retries.is_some() && fits(cfg.max_retry_body);
        let buffer_mirror = !route.mirrors.is_empty() && fits(cfg.max_mirror_body);
        let mut streamed = None;
        let mut buffered = Bytes::new();
        if buffer_retry || buffer_mirror || whole {
            let mut cap = cfg.max_retry_body.max(cfg.max_mirror_body);
            if whole {
                cap = cap.max(known.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)));
            }
            match http_body_util::Limited::new(body, cap).collect().await {
                Ok(b) => buffered = b.to_bytes(),
                Err(_) => return (local(StatusCode::BAD_REQUEST, "bad request body\n"), name),
            }
        } else {
            streamed = Some(body);
        }
        let attempts = if streamed.is_some() {
            1
        } else {
            1 + retries.map_or(0, |r| r.attempts)
        };
        let per_try = retries
            .and_then(|r| r.per_try_timeout)
            .or(route.backend_timeout);
        let retry_on = retries.map_or(&[][..], |r| r.retry_on.as_slice());
        let codes = retries.map_or(&[][..], |r| r.codes.as_slice());
        let policy = routes_load_balancer(svc_cfg, routes, &conn.service.hostname);
        let mut taps = None;
        if !route.mirrors.is_empty() {
            let body = if buffer_mirror {
                MirrorBody::Buffered(&buffered)
            } else if known.is_none() {
                MirrorBody::Streamed
            } else {
                MirrorBody::TooLarge
            };
            taps = self.mirror(conn, route, &parts, body, version, policy);
        }
        // Backend.
        let default_backend;
        let backend = match (!route.backends.is_empty())
            .then(|| {
                let total = route::total_weight(&route.backends);
                route::pick_backend(&route.backends, fastrand::u32(0..total.max(1)))
            })
            .flatten()
        {
            Some(b) => b,
            None => {
                default_backend = Backend::default_for();
                &default_backend
            }
        };
        // Set when the client's own body turns out malformed mid-stream
        // (bad chunking, early EOF): that is the client's fault (400), not
        // the upstream's.
        // Made only when a body is streamed.
        let mut client_body_failed: Option<Arc<std::sync::atomic::AtomicBool>> = None;
        let mut parts = Some(parts);
        let work = async {
            let mut tried: Vec<Arc<str>> = Vec::new();
            let mut last = Outcome::ConnectFailure;
            for attempt in 0..attempts {
                let Some(Candidate {
                    endpoint: ep,
                    key,
                    pool: pool_key,
                }) = self.pick(conn, routes, backend, &tried, policy)
                else {
                    meta.flags = "UH";
                    return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
                };
                // In-flight counts only matter to least request.
                let in_flight =
                    (policy == LoadBalancer::LeastRequest).then(|| self.inner.balancer.begin(&key));
                meta.destination = Some(Arc::clone(&ep.workload));
                let body = match streamed.take() {
                    // Nothing to stream, fail or copy to mirrors: no body
                    // (nothing allocated, the same request on the wire).
                    Some(b) if b.is_end_stream() && taps.is_none() => UpBody::Whole(Bytes::new()),
                    Some(b) => {
                        let failed = Arc::clone(client_body_failed.get_or_insert_default());
                        let b = b
                            .map_err(move |e| {
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                e.into()
                            })
                            .boxed_unsync();
                        UpBody::Streamed(match taps.take() {
                            Some(t) => t.wrap(b),
                            None => b,
                        })
                    }
                    None => UpBody::Whole(buffered.clone()),
                };
                // The last attempt takes the head; earlier ones copy it.
                let head = if attempt + 1 == attempts {
                    parts.take()
                } else {
                    parts.clone()
                };
                let Some(head) = head else { break };
                let send = self.send(&ep, &key, pool_key, conn.client, head, body, version);
                // Pinned and awaited through a reference: one slot in this
                // future's state whether or not a timeout wraps it (awaited
                // by value, each arm held its own copy).
                let result = {
                    let mut send = std::pin::pin!(send);
                    match per_try {
                        Some(t) => tokio::time::timeout(t, send.as_mut())
                            .await
                            .unwrap_or(Err(Outcome::Timeout)),
                        None => send.as_mut().await,
                    }
                };
                let outcome = match &result {
                    Ok(r) => Outcome::Status(r.status()),
                    Err(o) => *o,
                };
                self.inner
                    .balancer
                    .report(&key, outcome.is_failure(), Instant::now());
                let more = attempt + 1 < attempts && route::retriable(retry_on, codes, outcome);
                // Only a next attempt looks at `tried`.
                if more {
                    tried.push(key);
                }
                match result {
                    Ok(resp) if !more => {
                        let (mut rp, body) = resp.into_parts();
                        head::strip_hop_by_hop(&mut rp.headers);
                        route.response_headers.apply(&mut rp.headers);
                        return Response::from_parts(
                            rp,
                            body.with_in_flight(in_flight)
                                .map_err(BoxError::from)
                                .boxed_unsync(),
                        );
                    }
                    _ if more => {
                        tracing::debug!(attempt, ?outcome, "retrying");
                        last = outcome;
                    }
                    _ => {
                        last = outcome;
                        break;
                    }
                }
            }
            if client_body_failed
                .as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
            {
                meta.flags = "DPE";
                let mut r = local(StatusCode::BAD_REQUEST, "bad request body\n");
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            let (status, flags, msg) = match last {
                Outcome::Timeout => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "UT",
                    "upstream request timeout\n",
                ),
                Outcome::Reset => (StatusCode::SERVICE_UNAVAILABLE, "UC", "upstream reset\n"),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UF",
                    "upstream connect error\n",
                ),
            };
            meta.flags = flags;
            local(status, msg)
        };
        // Pinned, as `send` above.
        let resp = {
            let mut work = std::pin::pin!(work);
            match route.timeout {
                Some(t) => tokio::time::timeout(t, work.as_mut()).await.ok(),
                None => Some(work.as_mut().await),
            }
        };
        let resp = resp.unwrap_or_else(|| {
            meta.flags = "UT";
            local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n")
        });
        (resp, name)
    }
}

/// The balancing policy of the service being routed.
fn routes_load_balancer(
    svc_cfg: Option<&ServiceConfig>,
    routes: &RouteConfig,
    hostname: &str,
) -> LoadBalancer {
    svc_cfg
        .and_then(|c| c.load_balancer)
        .unwrap_or_else(|| routes.load_balancer(hostname))
}

/// The endpoint's first address (the client's when it has none, which
/// `pick` rules out).
pub(crate) fn ep_ip(ep: &Endpoint, client: SocketAddr) -> IpAddr {
    ep.workload
        .addresses
        .first()
        .copied()
        .unwrap_or(client.ip())
}

impl Backend {
    /// The service being routed, every endpoint, weight 1.
    pub fn default_for() -> Self {
        Self {
            host: None,
            port: None,
            subset: Default::default(),
            weight: 1,
        }
    }
}

/// The name a workload's metrics and logs use.
pub(crate) fn workload_name(w: &Workload) -> &str {
    if w.workload_name.is_empty() {
        &w.name
    } else {
        &w.workload_name
    }
}

fn ep_key(e: &Endpoint) -> String {
    format!("{}:{}", e.workload.uid, e.port)
}

pub(crate) fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.extensions_mut().insert(LocalReply(body));
    if !body.is_empty() {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r
}
