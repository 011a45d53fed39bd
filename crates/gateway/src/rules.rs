//! One route rule → the engine's routes: matches, filters, backends,
//! timeouts and retries, as the JSON the engine's YAML schema reads.
//!
//! A rule with several matches becomes one engine route per match, so
//! that the matches of every route attached to a service can be ordered
//! by the Gateway API's precedence ([`Rank`]); the engine then takes the
//! first that matches.

use std::cmp::Reverse;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::objects::{
    BackendRef, GATEWAY_GROUP, GrpcRouteMatch, HeaderModifier, HttpRouteFilter, HttpRouteMatch,
    HttpRouteRetry, HttpRouteTimeouts, ISTIO_NETWORKING_GROUP, ValueMatch,
};
use crate::translate::{RouteKind, Snapshot};

/// Why a rule does not translate; becomes a route condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RuleError {
    /// `Accepted=False`, reason `UnsupportedValue`.
    Unsupported(String),
    /// `ResolvedRefs=False` with this reason.
    Refs(&'static str, String),
}

/// The Gateway API's match precedence, smallest first: exact path, then
/// the longest prefix, then regular expressions; then a method; then more
/// headers; then more query parameters; then the oldest route; then
/// `namespace/name`; then rule and match order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rank {
    path_kind: u8,
    path_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query: Reverse<usize>,
    created: (bool, String),
    key: String,
    rule: usize,
    matched: usize,
}

/// Who a rule belongs to, for ranks, names and reference checks.
pub(crate) struct RouteCtx<'a> {
    pub(crate) snap: &'a Snapshot,
    pub(crate) kind: RouteKind,
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    /// RFC 3339 creation time (empty: unknown, sorts last).
    pub(crate) created: String,
    pub(crate) domain: &'a str,
}

/// One engine route with its rank.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) rank: Rank,
    pub(crate) route: Value,
}

impl RouteCtx<'_> {
    fn rank(
        &self,
        path: &PathKey,
        method: bool,
        headers: usize,
        query: usize,
        rule: usize,
        matched: usize,
    ) -> Rank {
        Rank {
            path_kind: path.kind,
            path_len: Reverse(path.len),
            no_method: !method,
            headers: Reverse(headers),
            query: Reverse(query),
            created: (self.created.is_empty(), self.created.clone()),
            key: format!("{}/{}", self.namespace, self.name),
            rule,
            matched,
        }
    }

    fn route_name(&self, rule: usize, rule_name: Option<&str>, matched: usize) -> String {
        let rule = rule_name.map_or_else(|| rule.to_string(), str::to_owned);
        format!(
            "{}/{}/{}.{rule}.{matched}",
            self.kind.as_str(),
            self.namespace,
            self.name
        )
    }

    /// Resolves a backend reference to `(host, port)`.
    pub(crate) fn backend(&self, b: &BackendRef) -> Result<(String, Option<u16>), RuleError> {
        let group = b.group.as_deref().unwrap_or("");
        let kind = b.kind.as_deref().unwrap_or("Service");
        let ns = b.namespace.as_deref().unwrap_or(self.namespace);
        let port = match b.port {
            Some(p) => Some(u16::try_from(p).map_err(|_| {
                RuleError::Unsupported(format!("backendRef {} port {p} is out of range", b.name))
            })?),
            None => None,
        };
        let what = format!("{kind} {ns}/{}", b.name);
        if !b.filters.is_empty() {
            return Err(RuleError::Unsupported(format!(
                "{what}: per-backend filters are not supported"
            )));
        }
        match (group, kind) {
            ("", "Service") => {
                if ns != self.namespace && !self.granted(ns, "", "Service", &b.name) {
                    return Err(RuleError::Refs(
                        "RefNotPermitted",
                        format!(
                            "{what} is in another namespace and no ReferenceGrant there allows it"
                        ),
                    ));
                }
                let svc = self.snap.services.iter().find(|s| {
                    s.metadata.namespace.as_deref() == Some(ns)
                        && s.metadata.name.as_deref() == Some(&b.name)
                });
                let Some(svc) = svc else {
                    return Err(RuleError::Refs(
                        "BackendNotFound",
                        format!("{what} not found"),
                    ));
                };
                let Some(port) = port else {
                    return Err(RuleError::Refs(
                        "BackendNotFound",
                        format!("{what}: port is required"),
                    ));
                };
                let has_port = svc
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.as_ref())
                    .is_some_and(|ps| ps.iter().any(|p| p.port == i32::from(port)));
                if !has_port {
                    return Err(RuleError::Refs(
                        "BackendNotFound",
                        format!("{what} has no port {port}"),
                    ));
                }
                Ok((format!("{}.{ns}.svc.{}", b.name, self.domain), Some(port)))
            }
            // Istio's extension: any hostname the mesh knows.
            (ISTIO_NETWORKING_GROUP, "Hostname") => {
                if port.is_none() {
                    return Err(RuleError::Refs(
                        "BackendNotFound",
                        format!("{what}: port is required"),
                    ));
                }
                Ok((b.name.clone(), port))
            }
            _ => Err(RuleError::Refs(
                "InvalidKind",
                format!(
                    "backendRef kind {kind} in group {group:?} is not supported (Service, or Hostname in {ISTIO_NETWORKING_GROUP})"
                ),
            )),
        }
    }

    /// Whether a ReferenceGrant in `ns` lets this route refer to `name`.
    fn granted(&self, ns: &str, group: &str, kind: &str, name: &str) -> bool {
        self.snap
            .reference_grants
            .iter()
            .filter(|g| g.namespace() == ns)
            .any(|g| {
                let Ok(spec) = g.spec() else { return false };
                spec.from.iter().any(|f| {
                    f.group == GATEWAY_GROUP
                        && f.kind == self.kind.as_str()
                        && f.namespace == self.namespace
                }) && spec.to.iter().any(|t| {
                    t.group == group
                        && t.kind == kind
                        && t.name.as_deref().is_none_or(|n| n == name)
                })
            })
    }
}

/// A path match's ranking facts.
struct PathKey {
    kind: u8,
    len: usize,
}

/// The engine's match list and ranking facts for one HTTPRoute path match.
fn http_path(m: &HttpRouteMatch) -> Result<(Vec<Value>, PathKey), RuleError> {
    let (kind, value) = match &m.path {
        Some(p) => (
            p.kind.as_deref().unwrap_or("PathPrefix"),
            p.value.as_deref().unwrap_or("/"),
        ),
        None => ("PathPrefix", "/"),
    };
    if !value.starts_with('/') && kind != "RegularExpression" {
        return Err(RuleError::Unsupported(format!(
            "path {value:?} must start with /"
        )));
    }
    Ok(match kind {
        "Exact" => (
            vec![json!({"exact": value})],
            PathKey {
                kind: 0,
                len: value.len(),
            },
        ),
        "PathPrefix" => {
            // Element-wise: `/foo` matches `/foo` and `/foo/…`, not `/foobar`;
            // a trailing slash is ignored.
            let trimmed = value.trim_end_matches('/');
            let paths = if trimmed.is_empty() {
                vec![json!({"prefix": "/"})]
            } else {
                vec![
                    json!({"exact": trimmed}),
                    json!({"prefix": format!("{trimmed}/")}),
                ]
            };
            (
                paths,
                PathKey {
                    kind: 1,
                    len: trimmed.len().max(1),
                },
            )
        }
        "RegularExpression" => (
            vec![json!({"regex": value})],
            PathKey {
                kind: 2,
                len: value.len(),
            },
        ),
        other => {
            return Err(RuleError::Unsupported(format!(
                "path match type {other:?} is not supported"
            )));
        }
    })
}

fn value_match(v: &ValueMatch, what: &str) -> Result<Value, RuleError> {
    match v.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Ok(json!({"exact": v.value})),
        "RegularExpression" => Ok(json!({"regex": v.value})),
        other => Err(RuleError::Unsupported(format!(
            "{what} match type {other:?} is not supported"
        ))),
    }
}

fn value_matches(
    list: &[ValueMatch],
    what: &str,
    lowercase: bool,
) -> Result<Map<String, Value>, RuleError> {
    let mut out = Map::new();
    for v in list {
        let name = if lowercase {
            v.name.to_ascii_lowercase()
        } else {
            v.name.clone()
        };
        if name.is_empty() {
            return Err(RuleError::Unsupported(format!(
                "{what} match without a name"
            )));
        }
        // The first match of a repeated name wins, as the spec says.
        if !out.contains_key(&name) {
            out.insert(name, value_match(v, what)?);
        }
    }
    Ok(out)
}

/// The engine routes of one HTTPRoute rule's matches, sharing `action`.
pub(crate) fn http_matches(
    ctx: &RouteCtx<'_>,
    rule: usize,
    rule_name: Option<&str>,
    matches: &[HttpRouteMatch],
    action: &Map<String, Value>,
) -> Result<Vec<Entry>, RuleError> {
    let default = [HttpRouteMatch::default()];
    let matches = if matches.is_empty() {
        &default[..]
    } else {
        matches
    };
    let mut out = Vec::new();
    for (i, m) in matches.iter().enumerate() {
        let (paths, key) = http_path(m)?;
        let headers = value_matches(&m.headers, "header", true)?;
        let query = value_matches(&m.query_params, "query parameter", false)?;
        let rank = ctx.rank(
            &key,
            m.method.is_some(),
            headers.len(),
            query.len(),
            rule,
            i,
        );
        let list: Vec<Value> = paths
            .into_iter()
            .map(|path| {
                let mut one = Map::new();
                one.insert("path".into(), path);
                if let Some(method) = &m.method {
                    one.insert("method".into(), json!(method));
                }
                if !headers.is_empty() {
                    one.insert("headers".into(), Value::Object(headers.clone()));
                }
                if !query.is_empty() {
                    one.insert("queryParams".into(), Value::Object(query.clone()));
                }
                Value::Object(one)
            })
            .collect();
        out.push(entry(
            ctx.route_name(rule, rule_name, i),
            list,
            action,
            rank,
        ));
    }
    Ok(out)
}

/// The engine routes of one GRPCRoute rule's matches: a method match is a
/// path match on `/service/method` (exact service and method: exact path;
/// service only: prefix `/service/`; otherwise a regular expression).
pub(crate) fn grpc_matches(
    ctx: &RouteCtx<'_>,
    rule: usize,
    rule_name: Option<&str>,
    matches: &[GrpcRouteMatch],
    action: &Map<String, Value>,
) -> Result<Vec<Entry>, RuleError> {
    let default = [GrpcRouteMatch::default()];
    let matches = if matches.is_empty() {
        &default[..]
    } else {
        matches
    };
    let mut out = Vec::new();
    for (i, m) in matches.iter().enumerate() {
        let (path, key) = match &m.method {
            None => (json!({"prefix": "/"}), PathKey { kind: 1, len: 1 }),
            Some(mm) => {
                let svc = mm.service.as_deref().filter(|s| !s.is_empty());
                let method = mm.method.as_deref().filter(|s| !s.is_empty());
                match (mm.kind.as_deref().unwrap_or("Exact"), svc, method) {
                    (_, None, None) => {
                        return Err(RuleError::Unsupported(
                            "a gRPC method match needs a service or a method".into(),
                        ));
                    }
                    ("Exact", Some(s), Some(m)) => {
                        let p = format!("/{s}/{m}");
                        let len = p.len();
                        (json!({"exact": p}), PathKey { kind: 0, len })
                    }
                    ("Exact", Some(s), None) => {
                        let p = format!("/{s}/");
                        let len = p.len();
                        (json!({"prefix": p}), PathKey { kind: 1, len })
                    }
                    ("Exact", None, Some(m)) => {
                        let p = format!("/[^/]+/{}", regex_escape(m));
                        (
                            json!({"regex": p}),
                            PathKey {
                                kind: 2,
                                len: m.len(),
                            },
                        )
                    }
                    ("RegularExpression", s, m) => {
                        let p = format!("/{}/{}", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+"));
                        let len = p.len();
                        (json!({"regex": p}), PathKey { kind: 2, len })
                    }
                    (other, _, _) => {
                        return Err(RuleError::Unsupported(format!(
                            "gRPC method match type {other:?} is not supported"
                        )));
                    }
                }
            }
        };
        let headers = value_matches(&m.headers, "header", true)?;
        let rank = ctx.rank(&key, false, headers.len(), 0, rule, i);
        let mut one = Map::new();
        one.insert("path".into(), path);
        if !headers.is_empty() {
            one.insert("headers".into(), Value::Object(headers));
        }
        out.push(entry(
            ctx.route_name(rule, rule_name, i),
            vec![Value::Object(one)],
            action,
            rank,
        ));
    }
    Ok(out)
}

fn entry(name: String, matches: Vec<Value>, action: &Map<String, Value>, rank: Rank) -> Entry {
    let mut route = action.clone();
    route.insert("name".into(), json!(name));
    route.insert("match".into(), Value::Array(matches));
    Entry {
        rank,
        route: Value::Object(route),
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What a rule does, whatever matched: backends or a redirect, filters,
/// timeouts, retries.
pub(crate) fn action(
    ctx: &RouteCtx<'_>,
    filters: &[HttpRouteFilter],
    backend_refs: &[BackendRef],
    timeouts: Option<&HttpRouteTimeouts>,
    retry: Option<&HttpRouteRetry>,
) -> Result<Map<String, Value>, RuleError> {
    let mut out = Map::new();
    let mut redirect = None;
    let mut mirrors = Vec::new();
    for f in filters {
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                let m = f
                    .request_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing(&f.kind))?;
                out.insert("requestHeaders".into(), header_ops(m)?);
            }
            "ResponseHeaderModifier" => {
                let m = f
                    .response_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing(&f.kind))?;
                out.insert("responseHeaders".into(), header_ops(m)?);
            }
            "RequestRedirect" if ctx.kind == RouteKind::Http => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or_else(|| missing(&f.kind))?;
                let mut v = Map::new();
                if let Some(s) = &r.scheme {
                    if s != "http" && s != "https" {
                        return Err(RuleError::Unsupported(format!("redirect scheme {s:?}")));
                    }
                    v.insert("scheme".into(), json!(s));
                }
                if let Some(h) = &r.hostname {
                    v.insert("host".into(), json!(h));
                }
                if let Some(p) = r.port {
                    let p = u16::try_from(p)
                        .map_err(|_| RuleError::Unsupported(format!("redirect port {p}")))?;
                    v.insert("port".into(), json!(p));
                }
                if let Some(p) = &r.path {
                    let (key, value) = path_modifier(p)?;
                    v.insert(
                        if key == "fullPath" {
                            "path".into()
                        } else {
                            "prefix".into()
                        },
                        json!(value),
                    );
                }
                let code = r.status_code.unwrap_or(301);
                if ![301, 302, 303, 307, 308].contains(&code) {
                    return Err(RuleError::Unsupported(format!(
                        "redirect status code {code}"
                    )));
                }
                v.insert("code".into(), json!(code));
                redirect = Some(Value::Object(v));
            }
            "URLRewrite" if ctx.kind == RouteKind::Http => {
                let r = f.url_rewrite.as_ref().ok_or_else(|| missing(&f.kind))?;
                let mut v = Map::new();
                if let Some(h) = &r.hostname {
                    v.insert("host".into(), json!(h));
                }
                if let Some(p) = &r.path {
                    let (key, value) = path_modifier(p)?;
                    v.insert(key.into(), json!(value));
                }
                out.insert("rewrite".into(), Value::Object(v));
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref().ok_or_else(|| missing(&f.kind))?;
                let (host, port) = ctx.backend(&m.backend_ref)?;
                let pct = match (&m.percent, &m.fraction) {
                    (Some(p), _) => f64::from(*p),
                    (None, Some(fr)) => {
                        let d = fr.denominator.unwrap_or(100);
                        if d == 0 || fr.numerator > d {
                            return Err(RuleError::Unsupported(
                                "mirror fraction must be at most 1 with a non-zero denominator"
                                    .into(),
                            ));
                        }
                        f64::from(fr.numerator) * 100.0 / f64::from(d)
                    }
                    (None, None) => 100.0,
                };
                if pct > 100.0 {
                    return Err(RuleError::Unsupported(format!(
                        "mirror percent {pct} is over 100"
                    )));
                }
                mirrors.push(json!({"host": host, "port": port, "percentage": pct}));
            }
            other => {
                return Err(RuleError::Unsupported(format!(
                    "filter {other:?} is not supported on {}",
                    ctx.kind.as_str()
                )));
            }
        }
    }
    if !mirrors.is_empty() {
        out.insert("mirrors".into(), Value::Array(mirrors));
    }
    if let Some(r) = redirect {
        if out.contains_key("rewrite") {
            return Err(RuleError::Unsupported(
                "RequestRedirect and URLRewrite cannot be combined".into(),
            ));
        }
        out.insert("redirect".into(), r);
    } else {
        let mut backends = Vec::new();
        for b in backend_refs {
            let (host, port) = ctx.backend(b)?;
            let weight = b.weight.unwrap_or(1);
            if weight > 0 {
                backends.push(json!({"host": host, "port": port, "weight": weight}));
            }
        }
        if backends.is_empty() {
            // No backend with a weight (or none at all): the spec's 500.
            out.insert(
                "fault".into(),
                json!({"abort": {"httpStatus": 500, "percentage": 100.0}}),
            );
        } else {
            out.insert("backends".into(), Value::Array(backends));
        }
    }
    if let Some(t) = timeouts {
        let request = t
            .request
            .as_deref()
            .map(|s| gateway_duration(s, "timeouts.request"))
            .transpose()?
            .flatten();
        let backend = t
            .backend_request
            .as_deref()
            .map(|s| gateway_duration(s, "timeouts.backendRequest"))
            .transpose()?
            .flatten();
        if let (Some(r), Some(b)) = (request, backend)
            && b > r
        {
            return Err(RuleError::Unsupported(
                "timeouts.backendRequest is longer than timeouts.request".into(),
            ));
        }
        if let Some(r) = request {
            out.insert("timeout".into(), json!(format!("{}ms", r.as_millis())));
        }
        if let Some(b) = backend {
            out.insert(
                "backendTimeout".into(),
                json!(format!("{}ms", b.as_millis())),
            );
        }
    }
    if let Some(r) = retry {
        for c in &r.codes {
            if !(400..=599).contains(c) {
                return Err(RuleError::Unsupported(format!(
                    "retry code {c} is outside 400-599"
                )));
            }
        }
        if let Some(b) = r.backoff.as_deref() {
            // The engine retries at once; a backoff is parsed so a typo is
            // still reported, then ignored.
            gateway_duration(b, "retry.backoff")?;
        }
        // Unset attempts: Istio's default of 2.
        out.insert(
            "retries".into(),
            json!({"attempts": r.attempts.unwrap_or(2), "retryOn": ["connect-failure", "reset"], "codes": r.codes}),
        );
    }
    Ok(out)
}

fn missing(kind: &str) -> RuleError {
    let mut field = kind.to_owned();
    if let Some(first) = field.get_mut(0..1) {
        first.make_ascii_lowercase();
    }
    RuleError::Unsupported(format!("filter {kind} without its {field} field"))
}

fn header_ops(m: &HeaderModifier) -> Result<Value, RuleError> {
    let pairs = |list: &[crate::objects::NameValue]| -> Result<Map<String, Value>, RuleError> {
        let mut out = Map::new();
        for nv in list {
            if nv.name.is_empty() {
                return Err(RuleError::Unsupported(
                    "header modifier entry without a name".into(),
                ));
            }
            out.insert(nv.name.to_ascii_lowercase(), json!(nv.value));
        }
        Ok(out)
    };
    let remove: Vec<String> = m.remove.iter().map(|n| n.to_ascii_lowercase()).collect();
    Ok(json!({"set": pairs(&m.set)?, "add": pairs(&m.add)?, "remove": remove}))
}

fn path_modifier(p: &crate::objects::PathModifier) -> Result<(&'static str, String), RuleError> {
    match (
        p.kind.as_str(),
        &p.replace_full_path,
        &p.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(v), _) => Ok(("fullPath", v.clone())),
        ("ReplacePrefixMatch", _, Some(v)) => Ok(("prefix", v.clone())),
        (other, _, _) => Err(RuleError::Unsupported(format!(
            "path modifier {other:?} without its value"
        ))),
    }
}

/// Parses a Gateway API duration (GEP-2257: up to four `<n><unit>` parts,
/// units `h`, `m`, `s`, `ms`); `Ok(None)` for zero (no timeout).
pub(crate) fn gateway_duration(s: &str, field: &str) -> Result<Option<Duration>, RuleError> {
    let bad = || {
        RuleError::Unsupported(format!(
            "{field} {s:?} is not a Gateway API duration (e.g. 1h30m, 500ms)"
        ))
    };
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n * 3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n * 60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok((!total.is_zero()).then_some(total))
}
