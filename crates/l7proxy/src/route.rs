//! Routing decisions as pure functions of the config and the request: which
//! route, which backend, the rewritten path, the redirect target, whether a
//! fault fires, whether an outcome is retried. No I/O; randomness is passed
//! in so that tables of cases test every branch.

use http::{HeaderMap, Method, StatusCode};

use crate::config::{Backend, HttpMatch, Redirect, RetryOn, Route, StrMatch};

/// The facts of a request that routes match on.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestFacts<'a> {
    /// The facts of `req`.
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        Self {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        }
    }
}

/// Whether one match holds for the request.
pub fn matches(m: &HttpMatch, req: &RequestFacts<'_>) -> bool {
    m.path.as_ref().is_none_or(|p| p.matches(req.path))
        && m.method
            .as_ref()
            .is_none_or(|x| x.eq_ignore_ascii_case(req.method.as_str()))
        && m.headers.iter().all(|(name, want)| {
            req.headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| want.matches(v))
        })
        && m.query_params.iter().all(|(name, want)| {
            query_pairs(req.query.unwrap_or(""))
                .filter(|(k, _)| k == name)
                .any(|(_, v)| want.matches(v))
        })
}

fn query_pairs(q: &str) -> impl Iterator<Item = (&str, &str)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The first route that matches, with the match that selected it (`None`
/// for a route without matches).
pub fn select<'r>(
    routes: &'r [Route],
    req: &RequestFacts<'_>,
) -> Option<(&'r Route, Option<&'r HttpMatch>)> {
    routes.iter().find_map(|r| {
        if r.matches.is_empty() {
            return Some((r, None));
        }
        r.matches
            .iter()
            .find(|m| matches(m, req))
            .map(|m| (r, Some(m)))
    })
}

/// The total weight of `backends`.
pub fn total_weight(backends: &[Backend]) -> u32 {
    // Saturating: weights are validated to fit, but this must not panic
    // on a config that skipped validation.
    backends
        .iter()
        .fold(0u32, |acc, b| acc.saturating_add(b.weight))
}

/// The backend that `roll` (in `0..total_weight`) lands on.
pub fn pick_backend(backends: &[Backend], roll: u32) -> Option<&Backend> {
    let mut acc = 0u32;
    backends.iter().find(|b| {
        acc = acc.saturating_add(b.weight);
        roll < acc
    })
}

/// The path (and query) after a prefix rewrite. For a prefix match the
/// matched prefix is replaced; otherwise the whole path is.
pub fn rewrite_path(
    path: &str,
    query: Option<&str>,
    matched: Option<&HttpMatch>,
    to: &str,
) -> String {
    let rest = match matched.and_then(|m| m.path.as_ref()) {
        Some(StrMatch::Prefix(p)) => path.strip_prefix(p.as_str()).unwrap_or(path),
        Some(_) => "",
        None => path,
    };
    let mut out = if rest.is_empty() {
        to.to_owned()
    } else if to.ends_with('/') && rest.starts_with('/') {
        format!("{}{}", to.trim_end_matches('/'), rest)
    } else if !to.ends_with('/') && !rest.starts_with('/') && matched.is_some() && !to.is_empty() {
        // `/api` + `v1` after stripping `/old/`: keep a separator.
        format!("{to}/{rest}")
    } else {
        format!("{to}{rest}")
    };
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The status and `location` of a redirect. `matched` is the match that
/// selected the route (for `prefix`, which replaces the matched path
/// prefix like a prefix rewrite). The port is `port` when set (left out
/// when it is the scheme's default), else the request authority's unless
/// the scheme changes (then the new scheme's default, i.e. none).
pub fn redirect(
    r: &Redirect,
    authority: &str,
    path: &str,
    query: Option<&str>,
    matched: Option<&HttpMatch>,
) -> (StatusCode, String) {
    let status = match r.code {
        302 => StatusCode::FOUND,
        303 => StatusCode::SEE_OTHER,
        307 => StatusCode::TEMPORARY_REDIRECT,
        308 => StatusCode::PERMANENT_REDIRECT,
        _ => StatusCode::MOVED_PERMANENTLY,
    };
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let host = r.host.as_deref().unwrap_or(authority);
    let host: std::borrow::Cow<'_, str> = match (r.port, r.scheme.is_some()) {
        (Some(port), _) if default_port(scheme) == Some(port) => strip_port(host).into(),
        (Some(port), _) => format!("{}:{port}", strip_port(host)).into(),
        (None, true) => strip_port(host).into(),
        // A new host without a port or scheme keeps the request's port
        // (the Gateway API's "listener port").
        (None, false) => match (&r.host, port_of(authority)) {
            (Some(h), Some(p)) => format!("{}:{p}", strip_port(h)).into(),
            _ => host.into(),
        },
    };
    let path: std::borrow::Cow<'_, str> = match (&r.path, &r.prefix) {
        (Some(p), _) => p.as_str().into(),
        (None, Some(prefix)) => rewrite_path(path, None, matched, prefix).into(),
        (None, None) => path.into(),
    };
    let mut location = format!("{scheme}://{host}{path}");
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    (status, location)
}

/// The well-known port of `scheme`.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The `:port` of an authority, if it has one.
fn port_of(authority: &str) -> Option<&str> {
    let bare = strip_port(authority);
    (bare.len() < authority.len()).then(|| &authority[bare.len() + 1..])
}

/// `host` without a `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') =>
        {
            if h.starts_with('[') && !h.ends_with(']') {
                host
            } else {
                h
            }
        }
        _ => host,
    }
}

/// The path (and query) after a full-path replacement (Gateway API
/// `ReplaceFullPath`): `to`, with the request's query kept.
pub fn replace_full_path(to: &str, query: Option<&str>) -> String {
    let mut out = if to.is_empty() {
        "/".to_owned()
    } else {
        to.to_owned()
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Whether a fault with `percentage` (0–100) fires for `roll` in `0..100`.
pub fn fires(percentage: f64, roll: f64) -> bool {
    roll < percentage
}

/// How one upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(StatusCode),
    /// The upstream (HBONE or TCP) could not be reached.
    ConnectFailure,
    /// The upstream reset or closed before a response.
    Reset,
    /// The per-try timeout elapsed.
    Timeout,
}

impl Outcome {
    /// Whether outlier detection counts this as a failure (5xx, connect
    /// failure, reset, timeout).
    pub fn is_failure(&self) -> bool {
        match self {
            Self::Status(s) => s.is_server_error(),
            _ => true,
        }
    }
}

/// Whether `outcome` is retried under `retry_on`, or (a response) has one
/// of the status `codes`.
pub fn retriable(retry_on: &[RetryOn], codes: &[u16], outcome: Outcome) -> bool {
    if let Outcome::Status(s) = outcome
        && codes.contains(&s.as_u16())
    {
        return true;
    }
    retry_on.iter().any(|r| match (r, outcome) {
        (RetryOn::Status5xx, Outcome::Status(s)) => s.is_server_error(),
        (RetryOn::Status5xx, Outcome::Timeout | Outcome::Reset) => true,
        (RetryOn::GatewayError, Outcome::Status(s)) => matches!(s.as_u16(), 502..=504),
        (RetryOn::GatewayError, Outcome::Timeout) => true,
        (RetryOn::ConnectFailure, Outcome::ConnectFailure) => true,
        (RetryOn::Reset, Outcome::Reset) => true,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    fn routes() -> Vec<Route> {
        let yaml = r#"
services:
- host: reviews
  routes:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    backends: [{subset: {version: v2}}]
  - name: admin-delete
    match: [{path: {prefix: /admin}, method: DELETE}]
    backends: [{subset: {version: v1}}]
  - name: regex
    match: [{path: {regex: "/items/[0-9]+"}}]
  - name: debug
    match: [{queryParams: {debug: {exact: "1"}}}]
  - name: exact
    match: [{path: {exact: /health}}]
  - name: default
    backends: [{subset: {version: v1}, weight: 90}, {subset: {version: v2}, weight: 10}]
"#;
        RouteConfig::parse(yaml, "t")
            .ok()
            .and_then(|c| c.services.into_iter().next())
            .map(|s| s.routes)
            .unwrap_or_default()
    }

    fn pick(method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(()).ok()?;
        let routes = routes();
        select(&routes, &RequestFacts::of(&req)).and_then(|(r, _)| r.name.clone())
    }

    #[test]
    fn route_selection_table() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("GET", "/", &[("end-user", "jason")], "jason"),
            ("GET", "/", &[("end-user", "Jason")], "default"),
            ("DELETE", "/admin/x", &[], "admin-delete"),
            ("GET", "/admin/x", &[], "default"),
            ("GET", "/items/42", &[], "regex"),
            ("GET", "/items/42/x", &[], "default"),
            ("GET", "/x?a=b&debug=1", &[], "debug"),
            ("GET", "/x?debug=10", &[], "default"),
            ("GET", "/health", &[], "exact"),
            ("GET", "/healthz", &[], "default"),
        ];
        for (m, u, h, want) in cases {
            assert_eq!(pick(m, u, h).as_deref(), Some(*want), "{m} {u} {h:?}");
        }
    }

    #[test]
    fn weighted_pick_covers_ranges() {
        let routes = routes();
        let Some(default) = routes.last() else {
            panic!("no routes");
        };
        assert_eq!(total_weight(&default.backends), 100);
        let version =
            |roll| pick_backend(&default.backends, roll).and_then(|b| b.subset.version.clone());
        assert_eq!(version(0).as_deref(), Some("v1"));
        assert_eq!(version(89).as_deref(), Some("v1"));
        assert_eq!(version(90).as_deref(), Some("v2"));
        assert_eq!(version(99).as_deref(), Some("v2"));
        assert_eq!(version(100), None);
    }

    #[test]
    fn rewrite_table() {
        let prefix = HttpMatch {
            path: Some(StrMatch::Prefix("/old".into())),
            ..HttpMatch::default()
        };
        let exact = HttpMatch {
            path: Some(StrMatch::Exact("/a".into())),
            ..HttpMatch::default()
        };
        let cases = [
            ("/old/x", None, Some(&prefix), "/new", "/new/x"),
            ("/old/x", Some("q=1"), Some(&prefix), "/new/", "/new/x?q=1"),
            ("/old", None, Some(&prefix), "/", "/"),
            ("/oldx", None, Some(&prefix), "/new", "/new/x"),
            ("/a", None, Some(&exact), "/b", "/b"),
            ("/p", None, None, "/z", "/z/p"),
        ];
        for (path, q, m, to, want) in cases {
            assert_eq!(rewrite_path(path, q, m, to), want, "{path} -> {to}");
        }
    }

    #[test]
    fn redirect_table() {
        let r = Redirect {
            path: Some("/v2/login".into()),
            code: 302,
            ..Redirect::default()
        };
        assert_eq!(
            redirect(&r, "reviews:9080", "/login", Some("u=1"), None),
            (StatusCode::FOUND, "http://reviews:9080/v2/login?u=1".into())
        );
        let r = Redirect {
            host: Some("new.example".into()),
            code: 301,
            ..Redirect::default()
        };
        assert_eq!(
            redirect(&r, "old", "/p", None, None),
            (StatusCode::MOVED_PERMANENTLY, "http://new.example/p".into())
        );
        // A new host keeps the request's port (Gateway API: the listener's).
        assert_eq!(
            redirect(&r, "old:9080", "/p", None, None).1,
            "http://new.example:9080/p"
        );
        assert_eq!(
            redirect(&r, "[::1]:9080", "/p", None, None).1,
            "http://new.example:9080/p"
        );
        let prefix = HttpMatch {
            path: Some(StrMatch::Prefix("/old".into())),
            ..HttpMatch::default()
        };
        let r = |port, scheme: Option<&str>, prefix_to: Option<&str>| Redirect {
            port,
            scheme: scheme.map(Into::into),
            prefix: prefix_to.map(Into::into),
            code: 302,
            ..Redirect::default()
        };
        for (redir, authority, want) in [
            (
                r(Some(8080), None, Some("/new")),
                "a:9080",
                "http://a:8080/new/x?q",
            ),
            (r(Some(80), None, None), "a:9080", "http://a/old/x?q"),
            (
                r(Some(443), Some("https"), None),
                "a:9080",
                "https://a/old/x?q",
            ),
            (
                r(Some(80), Some("https"), None),
                "a",
                "https://a:80/old/x?q",
            ),
            (r(None, Some("https"), Some("/")), "a:9080", "https://a/x?q"),
            (
                r(None, None, Some("/v2")),
                "[::1]:9080",
                "http://[::1]:9080/v2/x?q",
            ),
            (
                r(Some(81), None, None),
                "[::1]:9080",
                "http://[::1]:81/old/x?q",
            ),
        ] {
            assert_eq!(
                redirect(&redir, authority, "/old/x", Some("q"), Some(&prefix)).1,
                want,
                "{redir:?} {authority}"
            );
        }
        assert_eq!(replace_full_path("/p", Some("a=1")), "/p?a=1");
        assert_eq!(replace_full_path("", None), "/");
    }

    #[test]
    fn retry_table() {
        use RetryOn::*;
        let s = |c| Outcome::Status(StatusCode::from_u16(c).unwrap_or(StatusCode::OK));
        let cases = [
            (vec![Status5xx], s(500), true),
            (vec![Status5xx], s(404), false),
            (vec![GatewayError], s(500), false),
            (vec![GatewayError], s(503), true),
            (vec![ConnectFailure], Outcome::ConnectFailure, true),
            (vec![ConnectFailure], s(503), false),
            (vec![Reset], Outcome::Reset, true),
            (vec![], Outcome::Reset, false),
        ];
        for (on, outcome, want) in cases {
            assert_eq!(retriable(&on, &[], outcome), want, "{on:?} {outcome:?}");
        }
        // Codes, alone or with kinds.
        assert!(retriable(&[], &[409, 503], s(409)));
        assert!(!retriable(&[], &[409], s(503)));
        assert!(!retriable(&[], &[409], Outcome::Reset));
        assert!(retriable(&[Reset], &[409], Outcome::Reset));
        assert!(s(503).is_failure() && !s(404).is_failure() && Outcome::Reset.is_failure());
    }

    #[test]
    fn fault_percentages() {
        assert!(fires(100.0, 99.9));
        assert!(!fires(0.0, 0.0));
        assert!(fires(50.0, 49.0) && !fires(50.0, 50.0));
    }
}
