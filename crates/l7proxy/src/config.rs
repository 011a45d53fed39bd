//! The waypoint's routing and policy configuration, as loaded from YAML.
//!
//! The types here are the schema (camelCase keys, unknown keys rejected
//! with their line and column) and, once parsed, the plain data that
//! [`route`](crate::route) and [`authz`](crate::authz) evaluate. The
//! crate README documents the schema with an example.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

mod policy;

pub use self::policy::{
    Action, Cidr, CidrError, Condition, ConditionKey, From, L7Policy, L7Rule, Operation, Source, To,
};

/// Why a routing config did not load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading waypoint config {path}")]
    Read {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse, has unknown keys or bad values (the message
    /// carries the line and column).
    #[error("waypoint config {path}: {error}")]
    Parse {
        /// The path, or `<inline>`.
        path: String,
        /// The parser's error, with location.
        error: serde_yaml_ng::Error,
    },
    /// A value is invalid.
    #[error("waypoint config {path}: {item}: {reason}")]
    Invalid {
        /// The path.
        path: String,
        /// The offending item.
        item: String,
        /// Why.
        reason: String,
    },
}

/// The whole routing and policy config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// The port upstream ztunnels (or pods) accept HBONE on (15008).
    #[serde(default = "default_hbone_port")]
    pub hbone_port: u16,
    /// Outlier detection for every endpoint.
    #[serde(default)]
    pub outlier_detection: OutlierConfig,
    /// How endpoints are chosen, unless a service says otherwise.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Per-service routing and policy, by service hostname.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

fn default_hbone_port() -> u16 {
    15008
}

impl RouteConfig {
    /// Reads and parses a config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self {
                hbone_port: default_hbone_port(),
                ..Self::default()
            });
        }
        let c: Self = serde_yaml_ng::from_str(text).map_err(|error| ConfigError::Parse {
            path: origin.to_owned(),
            error,
        })?;
        c.validate(origin)?;
        Ok(c)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |item: String, reason: &str| ConfigError::Invalid {
            path: origin.to_owned(),
            item,
            reason: reason.to_owned(),
        };
        for s in &self.services {
            for p in &s.policies {
                p.check()
                    .map_err(|reason| invalid(format!("{} policy {}", s.host, p.name), &reason))?;
            }
            for (i, r) in s.routes.iter().enumerate() {
                let item = format!(
                    "{} route {}",
                    s.host,
                    r.name.as_deref().unwrap_or(&i.to_string())
                );
                if r.redirect.is_none()
                    && r.backends.iter().all(|b| b.weight == 0)
                    && !r.backends.is_empty()
                {
                    return Err(invalid(item, "backend weights sum to zero"));
                }
                if r.backends
                    .iter()
                    .try_fold(0u32, |acc, b| acc.checked_add(b.weight))
                    .is_none()
                {
                    return Err(invalid(item, "backend weights sum past 4294967295"));
                }
                if r.redirect.is_some() && !r.backends.is_empty() {
                    return Err(invalid(item, "a route has either a redirect or backends"));
                }
                if let Some(f) = &r.fault
                    && let Some(a) = &f.abort
                    && http::StatusCode::from_u16(a.http_status).is_err()
                {
                    return Err(invalid(item, "abort status is not an HTTP status"));
                }
                if r.redirect
                    .as_ref()
                    .is_some_and(|d| d.path.is_some() && d.prefix.is_some())
                {
                    return Err(invalid(item, "a redirect has either path or prefix"));
                }
                if r.rewrite
                    .as_ref()
                    .is_some_and(|w| w.full_path.is_some() && w.prefix.is_some())
                {
                    return Err(invalid(item, "a rewrite has either fullPath or prefix"));
                }
                if let Some(rt) = &r.retries
                    && rt.codes.iter().any(|c| !(100..=599).contains(c))
                {
                    return Err(invalid(item, "a retry code is not an HTTP status"));
                }
                if r.mirrors
                    .iter()
                    .any(|m| !(0.0..=100.0).contains(&m.percentage))
                {
                    return Err(invalid(item, "a mirror percentage is outside 0-100"));
                }
                for h in r
                    .request_headers
                    .add
                    .keys()
                    .chain(r.response_headers.add.keys())
                {
                    if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                        return Err(invalid(item, "invalid header name"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The config of the service with `hostname`.
    pub fn service(&self, hostname: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.host == hostname)
    }

    /// The balancing policy for the service with `hostname`.
    pub fn load_balancer(&self, hostname: &str) -> LoadBalancer {
        self.service(hostname)
            .and_then(|s| s.load_balancer)
            .unwrap_or(self.load_balancer)
    }
}

/// Outlier detection: eject an endpoint after consecutive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive 5xx or connect failures that eject (0 disables).
    #[serde(default = "default_consecutive")]
    pub consecutive_errors: u32,
    /// How long an ejected endpoint is skipped.
    #[serde(default = "default_ejection", deserialize_with = "duration")]
    pub base_ejection_time: Duration,
}

fn default_consecutive() -> u32 {
    5
}

fn default_ejection() -> Duration {
    Duration::from_secs(30)
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_errors: default_consecutive(),
            base_ejection_time: default_ejection(),
        }
    }
}

/// How an endpoint is chosen among the healthy ones (Istio
/// DestinationRule `loadBalancer.simple` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    /// In turn.
    #[default]
    RoundRobin,
    /// The fewer in-flight requests of two random candidates (Envoy's
    /// power of two choices; with two candidates, the less loaded one).
    LeastRequest,
}

/// How a service port's traffic is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Sniff the first bytes: an HTTP/1 method or the HTTP/2 preface is
    /// HTTP, anything else is TCP.
    #[default]
    Auto,
    /// HTTP/1.1 or HTTP/2.
    Http,
    /// Opaque bytes (an L4 hop).
    Tcp,
    /// HTTP whose upstream leg is HTTP/2 cleartext (h2c) inside the HBONE
    /// stream (appProtocol `http2`, `kubernetes.io/h2c`).
    Http2,
    /// gRPC: HTTP/2 upstream like `http2`, with gRPC status in metrics and
    /// logs (appProtocol `grpc`).
    Grpc,
}

/// Routing and policy for one service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service hostname (`reviews.default.svc.cluster.local`).
    pub host: String,
    /// Protocol per service port (default `auto`).
    #[serde(default)]
    pub ports: BTreeMap<u16, Protocol>,
    /// Routes, first match wins. None: everything goes to the service.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// L7 authorization policies (Istio AuthorizationPolicy shape).
    #[serde(default)]
    pub policies: Vec<L7Policy>,
    /// This service's endpoint choice (default: the top-level one).
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
}

/// One HTTP route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// A name for logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Alternatives; the route applies when any matches (none: always).
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations.
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Rewrite the path prefix or authority before forwarding.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Request header edits.
    #[serde(default)]
    pub request_headers: HeaderOps,
    /// Response header edits.
    #[serde(default)]
    pub response_headers: HeaderOps,
    /// The whole request's deadline, retries included (504 after).
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Fault injection.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Copies of each request sent to other destinations; their answers
    /// are dropped and never delay or fail the request.
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
    /// Each attempt's deadline when the retry policy sets none (Gateway
    /// API `timeouts.backendRequest`; 504 after).
    #[serde(default, deserialize_with = "opt_duration")]
    pub backend_timeout: Option<Duration>,
}

/// A mirror destination (Gateway API `RequestMirror`, Istio `mirror`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Another service's hostname (default: the service being routed).
    #[serde(default)]
    pub host: Option<String>,
    /// Another service port (default: the port the request came to).
    #[serde(default)]
    pub port: Option<u16>,
    /// Endpoint selection.
    #[serde(default)]
    pub subset: Subset,
    /// Share of requests copied, 0–100 (default 100).
    #[serde(default = "hundred")]
    pub percentage: f64,
}

/// A request match: every field given must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    /// The path (without the query).
    #[serde(default)]
    pub path: Option<StrMatch>,
    /// The method, e.g. `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// Header values by (lowercase) name.
    #[serde(default)]
    pub headers: BTreeMap<String, StrMatch>,
    /// Query parameters by name.
    #[serde(default)]
    pub query_params: BTreeMap<String, StrMatch>,
}

/// A string match: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawStrMatch")]
pub enum StrMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches the whole value (RE2 syntax, anchored).
    Regex(regex::Regex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawStrMatch {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    regex: Option<String>,
}

impl TryFrom<RawStrMatch> for StrMatch {
    type Error = String;

    fn try_from(r: RawStrMatch) -> Result<Self, String> {
        match (r.exact, r.prefix, r.regex) {
            (Some(e), None, None) => Ok(Self::Exact(e)),
            (None, Some(p), None) => Ok(Self::Prefix(p)),
            // Anchored like Envoy's safe_regex: the whole value must match.
            (None, None, Some(x)) => regex::Regex::new(&format!("^(?:{x})$"))
                .map(Self::Regex)
                .map_err(|e| e.to_string()),
            _ => Err("a string match needs exactly one of exact, prefix, regex".into()),
        }
    }
}

impl StrMatch {
    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Self::Exact(x) => s == x,
            Self::Prefix(x) => s.starts_with(x.as_str()),
            Self::Regex(r) => r.is_match(s),
        }
    }
}

/// A weighted destination: a service (this one by default) narrowed to a
/// subset of its endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// Another service's hostname (default: the service being routed).
    #[serde(default)]
    pub host: Option<String>,
    /// Another service port (default: the port the request came to).
    #[serde(default)]
    pub port: Option<u16>,
    /// Endpoint selection.
    #[serde(default)]
    pub subset: Subset,
    /// Relative weight (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Endpoints of a service narrowed by their workload's fields (the mesh
/// model carries no labels: `version` is the workload's
/// `canonicalRevision`, `name` its `canonicalName`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// `canonicalRevision` (the `version` label), e.g. `v1`.
    #[serde(default)]
    pub version: Option<String>,
    /// `canonicalName` (the `app` label).
    #[serde(default)]
    pub name: Option<String>,
}

impl Subset {
    /// Whether a workload belongs to the subset.
    pub fn contains(&self, w: &ambit_mesh::Workload) -> bool {
        self.version
            .as_ref()
            .is_none_or(|v| *v == w.canonical_revision)
            && self.name.as_ref().is_none_or(|n| *n == w.canonical_name)
    }
}

/// A redirect answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    /// Replace the path (the query is kept).
    #[serde(default)]
    pub path: Option<String>,
    /// Replace the authority.
    #[serde(default)]
    pub host: Option<String>,
    /// Replace the scheme (default `http`).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Replace the port (default: none in the `Location`).
    #[serde(default)]
    pub port: Option<u16>,
    /// Replace the matched path prefix (Gateway API
    /// `ReplacePrefixMatch`); `path` replaces the whole path.
    #[serde(default)]
    pub prefix: Option<String>,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default = "moved")]
    pub code: u16,
}

fn moved() -> u16 {
    301
}

/// A rewrite before forwarding.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched path prefix (or the whole path for an exact or
    /// regex match).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Replaces the whole path (Gateway API `ReplaceFullPath`); the query
    /// is kept.
    #[serde(default)]
    pub full_path: Option<String>,
    /// Replaces the `host`/`:authority`.
    #[serde(default)]
    pub host: Option<String>,
}

/// Header edits: `set` overwrites, `add` appends, `remove` deletes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOps {
    /// Set (replacing any value).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// Applies the edits to `headers` (invalid names or values are skipped;
    /// names were validated at load).
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name.as_str());
        }
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter()
                .filter_map(|(k, v)| {
                    Some((
                        http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                        http::HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect::<Vec<_>>()
        };
        for (k, v) in pairs(&self.set) {
            headers.insert(k, v);
        }
        for (k, v) in pairs(&self.add) {
            headers.append(k, v);
        }
    }
}

/// When a failed attempt is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RetryOn {
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    Status5xx,
    /// 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// The upstream could not be reached.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The upstream reset or closed before answering.
    #[serde(rename = "reset")]
    Reset,
}

/// A retry policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawRetries")]
pub struct Retries {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Conditions (default: connect-failure, reset, 503 via gateway-error;
    /// none when only `codes` are given).
    pub retry_on: Vec<RetryOn>,
    /// Each attempt's deadline.
    pub per_try_timeout: Option<Duration>,
    /// Response statuses that are also retried (Gateway API
    /// `retry.codes`, Envoy `retriable-status-codes`).
    pub codes: Vec<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRetries {
    attempts: u32,
    #[serde(default)]
    retry_on: Option<Vec<RetryOn>>,
    #[serde(default, deserialize_with = "opt_duration")]
    per_try_timeout: Option<Duration>,
    #[serde(default)]
    codes: Vec<u16>,
}

impl std::convert::From<RawRetries> for Retries {
    fn from(r: RawRetries) -> Self {
        let retry_on = match r.retry_on {
            Some(on) => on,
            // A codes-only policy retries on those codes alone.
            None if !r.codes.is_empty() => Vec::new(),
            None => default_retry_on(),
        };
        Self {
            attempts: r.attempts,
            retry_on,
            per_try_timeout: r.per_try_timeout,
            codes: r.codes,
        }
    }
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ]
}

/// Fault injection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Delay before forwarding.
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// Answer without forwarding.
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

/// A fixed delay for a percentage of requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// The delay.
    #[serde(deserialize_with = "duration")]
    pub fixed_delay: Duration,
    /// Share of requests delayed, 0–100 (default 100).
    #[serde(default = "hundred")]
    pub percentage: f64,
}

/// An abort for a percentage of requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// The status answered.
    pub http_status: u16,
    /// Share of requests aborted, 0–100 (default 100).
    #[serde(default = "hundred")]
    pub percentage: f64,
}

fn hundred() -> f64 {
    100.0
}

/// Parses `250ms`, `2s`, `1.5s`, `1m` or `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {s:?} (e.g. 250ms, 2s)")))
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("xs"), None);
    }

    #[test]
    fn unknown_key_reports_line() {
        let text = "services:\n- host: a\n  routes:\n  - name: r\n    bogus: 1\n";
        let e = RouteConfig::parse(text, "t.yaml")
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("bogus") && e.contains("line 5"), "{e}");
    }

    #[test]
    fn full_example_parses() {
        let text = include_str!("../examples/waypoint.yaml");
        let c = RouteConfig::parse(text, "example").map_err(|e| e.to_string());
        let c = c.as_ref().map_err(String::as_str);
        assert!(c.is_ok(), "{c:?}");
        if let Ok(c) = c {
            assert!(c.service("reviews.default.svc.cluster.local").is_some());
            assert_eq!(
                c.load_balancer("reviews.default.svc.cluster.local"),
                LoadBalancer::LeastRequest
            );
            assert_eq!(c.load_balancer("other"), LoadBalancer::RoundRobin);
        }
    }

    #[test]
    fn invalid_values() {
        for text in [
            "services:\n- host: a\n  routes:\n  - backends: [{weight: 0}]\n",
            "services:\n- host: a\n  routes:\n  - fault: {abort: {httpStatus: 42}}\n",
            "services:\n- host: a\n  routes:\n  - timeout: soon\n",
            "services:\n- host: a\n  routes:\n  - match: [{path: {regex: '('}}]\n",
            "loadBalancer: RANDOM\n",
            "services:\n- host: a\n  routes:\n  - redirect: {path: /a, prefix: /b}\n",
            "services:\n- host: a\n  routes:\n  - rewrite: {fullPath: /a, prefix: /b}\n",
            "services:\n- host: a\n  routes:\n  - retries: {attempts: 1, codes: [42]}\n",
            "services:\n- host: a\n  routes:\n  - mirrors: [{percentage: 101}]\n",
            "services:\n- host: a\n  routes:\n  - backendTimeout: soon\n",
            "services:\n- host: a\n  ports: {80: http3}\n",
        ] {
            assert!(RouteConfig::parse(text, "t").is_err(), "{text}");
        }
    }

    #[test]
    fn gateway_route_fields() {
        let c = RouteConfig::parse(
            r#"
services:
- host: a
  ports: {80: http2, 81: grpc}
  routes:
  - retries: {attempts: 2, codes: [409]}
    backendTimeout: 250ms
    mirrors: [{host: b, port: 8080, subset: {version: v2}}]
  - retries: {attempts: 2}
  - retries: {attempts: 2, retryOn: [reset], codes: [409]}
    redirect: {prefix: /p, port: 8443}
    rewrite: {fullPath: /f}
"#,
            "t",
        )
        .expect("parses");
        let s = c.service("a").expect("service");
        assert_eq!(s.ports.get(&80), Some(&Protocol::Http2));
        assert_eq!(s.ports.get(&81), Some(&Protocol::Grpc));
        let retry_on = |i: usize| {
            s.routes
                .get(i)
                .and_then(|r| r.retries.as_ref())
                .map(|r| (r.retry_on.clone(), r.codes.clone()))
        };
        // Codes only: nothing else is retried.
        assert_eq!(retry_on(0), Some((vec![], vec![409])));
        assert_eq!(retry_on(1), Some((default_retry_on(), vec![])));
        assert_eq!(retry_on(2), Some((vec![RetryOn::Reset], vec![409])));
        let r = &s.routes[0];
        assert_eq!(r.backend_timeout, Some(Duration::from_millis(250)));
        assert_eq!(r.mirrors.first().map(|m| m.percentage), Some(100.0));
        assert_eq!(r.mirrors.first().and_then(|m| m.port), Some(8080));
        let r = &s.routes[2];
        assert_eq!(r.redirect.as_ref().and_then(|d| d.port), Some(8443));
        assert_eq!(
            r.rewrite.as_ref().and_then(|w| w.full_path.as_deref()),
            Some("/f")
        );
    }

    #[test]
    fn weights_that_overflow_are_refused() {
        let e = RouteConfig::parse(
            "services: [{host: a, routes: [{backends: [{weight: 4294967295}, {weight: 1}]}]}]\n",
            "t",
        )
        .expect_err("must be refused");
        assert!(e.to_string().contains("sum past"), "{e}");
    }
}
