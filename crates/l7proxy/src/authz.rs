//! Authorization with Istio's AuthorizationPolicy semantics: any matching
//! DENY denies; otherwise, if any ALLOW policy exists, one must match; with
//! none, allow. Pure: the connection's and (for HTTP) the request's facts
//! in, a decision out.
//!
//! On an opaque TCP connection only L4 facts exist (peer identity and
//! address, destination port). As Istio does for a waypoint's TCP chain:
//! an ALLOW rule with any HTTP-only field (methods, paths, hosts,
//! `request.headers[...]` conditions) never matches there, and a DENY
//! rule's HTTP-only fields are ignored (so a DENY of `paths` + `ports`
//! denies the port).

use std::net::IpAddr;

use ambit_identity::Identity;

use crate::config::{Action, Cidr, Condition, ConditionKey, L7Policy, L7Rule, Operation, Source};

/// The facts a policy can match on.
#[derive(Debug, Clone, Copy)]
pub struct AuthzFacts<'a> {
    /// The HBONE peer's verified identity.
    pub peer: Option<&'a Identity>,
    /// The peer's address as the waypoint sees it (the HBONE connection's
    /// source): `source.ip`, `ipBlocks`.
    pub source_ip: Option<IpAddr>,
    /// The original client's address (see [`remote_ip`]): `remote.ip`,
    /// `remoteIpBlocks`.
    pub remote_ip: Option<IpAddr>,
    /// The destination (service) port.
    pub port: u16,
    /// The request, or `None` on an opaque TCP connection.
    pub http: Option<HttpFacts<'a>>,
}

/// The HTTP request's facts.
#[derive(Debug, Clone, Copy)]
pub struct HttpFacts<'a> {
    /// The method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The request's authority (`host` or `:authority`).
    pub host: &'a str,
    /// The headers.
    pub headers: &'a http::HeaderMap,
}

/// The original client's address: the first (leftmost) address of the
/// request's `x-forwarded-for` when it parses, else `source`.
pub fn remote_ip(headers: &http::HeaderMap, source: Option<IpAddr>) -> Option<IpAddr> {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse::<IpAddr>().ok())
        .or(source)
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed (by the named ALLOW policy, if ALLOW policies exist).
    Allow(Option<String>),
    /// Denied by the named DENY policy.
    DeniedBy(String),
    /// ALLOW policies exist and none matched.
    NoAllowMatched,
}

impl Verdict {
    /// Whether the request proceeds.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }
}

/// Evaluates `policies` for a request or (with `http: None`) a TCP
/// connection.
pub fn authorize(policies: &[L7Policy], f: &AuthzFacts<'_>) -> Verdict {
    if let Some(p) = policies
        .iter()
        .filter(|p| p.action == Action::Deny)
        .find(|p| policy_matches(p, f))
    {
        return Verdict::DeniedBy(p.name.clone());
    }
    let mut allows = policies
        .iter()
        .filter(|p| p.action == Action::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Verdict::Allow(None);
    }
    match allows.find(|p| policy_matches(p, f)) {
        Some(p) => Verdict::Allow(Some(p.name.clone())),
        None => Verdict::NoAllowMatched,
    }
}

fn policy_matches(p: &L7Policy, f: &AuthzFacts<'_>) -> bool {
    p.rules.iter().any(|r| {
        // On TCP an ALLOW rule that needs HTTP facts cannot be satisfied;
        // a DENY rule's HTTP-only parts are skipped below instead.
        !(f.http.is_none() && p.action == Action::Allow && rule_needs_http(r)) && rule_matches(r, f)
    })
}

/// Whether a rule has any HTTP-only field.
pub fn rule_needs_http(r: &L7Rule) -> bool {
    r.to.iter().any(|t| t.operation.has_http_fields())
        || r.when
            .iter()
            .any(|c| c.parsed_key().is_ok_and(|k| k.is_http_only()))
}

fn rule_matches(r: &L7Rule, f: &AuthzFacts<'_>) -> bool {
    (r.from.is_empty() || r.from.iter().any(|s| source_matches(&s.source, f)))
        && (r.to.is_empty() || r.to.iter().any(|t| operation_matches(&t.operation, f)))
        && r.when.iter().all(|c| condition_matches(c, f))
}

/// Istio's string patterns: exact, `prefix*`, `*suffix`, or `*`.
pub fn glob(pattern: &str, s: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(p) = pattern.strip_suffix('*') {
        s.starts_with(p)
    } else if let Some(p) = pattern.strip_prefix('*') {
        s.ends_with(p)
    } else {
        pattern == s
    }
}

/// A positive field (empty: any) and a negative field (empty: none).
fn field<P, V: Copy>(pos: &[P], neg: &[P], value: Option<V>, eq: impl Fn(&P, V) -> bool) -> bool {
    let pos_ok = pos.is_empty() || value.is_some_and(|v| pos.iter().any(|p| eq(p, v)));
    let neg_ok = neg.is_empty() || value.is_none_or(|v| !neg.iter().any(|p| eq(p, v)));
    pos_ok && neg_ok
}

fn principal(id: &Identity) -> &str {
    id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str())
}

/// Istio's string patterns, as a field comparison.
const STR_GLOB: fn(&String, &str) -> bool = |p, v| glob(p, v);

fn in_block(c: &Cidr, ip: IpAddr) -> bool {
    c.contains(ip)
}

fn source_matches(s: &Source, f: &AuthzFacts<'_>) -> bool {
    let pr = f.peer.map(principal);
    let ns = f.peer.map(|i| i.namespace());
    field(&s.principals, &s.not_principals, pr, STR_GLOB)
        && field(&s.namespaces, &s.not_namespaces, ns, STR_GLOB)
        && field(&s.ip_blocks, &s.not_ip_blocks, f.source_ip, in_block)
        && field(
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            f.remote_ip,
            in_block,
        )
}

fn operation_matches(o: &Operation, f: &AuthzFacts<'_>) -> bool {
    let host_eq = |p: &String, v: &str| {
        // `host` matches with or without the port, case-insensitively.
        let v = v.to_ascii_lowercase();
        let p = p.to_ascii_lowercase();
        glob(&p, &v) || v.rsplit_once(':').is_some_and(|(h, _)| glob(&p, h))
    };
    // Without a request (TCP, DENY only) the HTTP fields are skipped.
    let http_ok = f.http.is_none_or(|h| {
        field(&o.methods, &o.not_methods, Some(h.method), |p, v| p == v)
            && field(&o.paths, &o.not_paths, Some(h.path), STR_GLOB)
            && field(&o.hosts, &o.not_hosts, Some(h.host), host_eq)
    });
    http_ok && field(&o.ports, &o.not_ports, Some(f.port), |p, v| *p == v)
}

fn condition_matches(c: &Condition, f: &AuthzFacts<'_>) -> bool {
    let key = match c.parsed_key() {
        Ok(k) => k,
        // Refused at load; a config that skipped validation fails closed
        // for ALLOW and open for DENY, as before.
        Err(_) => return false,
    };
    let ip_cond = |ip: Option<IpAddr>| {
        let hit = |vals: &[String]| {
            ip.is_some_and(|ip| {
                vals.iter()
                    .any(|v| v.parse::<Cidr>().is_ok_and(|c| c.contains(ip)))
            })
        };
        (c.values.is_empty() || hit(&c.values)) && !hit(&c.not_values)
    };
    let values: Vec<&str> = match key {
        ConditionKey::RequestHeader(name) => match f.http {
            Some(h) => h
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect(),
            // Only a DENY rule gets here on TCP: its HTTP parts are skipped.
            None => return true,
        },
        ConditionKey::SourcePrincipal => f.peer.map(principal).into_iter().collect(),
        ConditionKey::SourceNamespace => f.peer.map(|i| i.namespace()).into_iter().collect(),
        ConditionKey::SourceIp => return ip_cond(f.source_ip),
        ConditionKey::RemoteIp => return ip_cond(f.remote_ip),
        ConditionKey::DestinationPort => {
            let is = |v: &String| v.parse::<u16>().is_ok_and(|p| p == f.port);
            return (c.values.is_empty() || c.values.iter().any(is))
                && !c.not_values.iter().any(is);
        }
    };
    let pos = c.values.is_empty() || values.iter().any(|v| c.values.iter().any(|p| glob(p, v)));
    let neg = !values
        .iter()
        .any(|v| c.not_values.iter().any(|p| glob(p, v)));
    pos && neg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    fn policies() -> Vec<L7Policy> {
        let yaml = r#"
services:
- host: h
  policies:
  - name: deny-admin-delete
    action: DENY
    rules: [{to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]}]
  - name: allow-sleep
    action: ALLOW
    rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
  - name: allow-ops-header
    action: ALLOW
    rules:
    - from: [{source: {namespaces: ["ops"]}}]
      to: [{operation: {hosts: ["reviews*"], notPaths: ["/private*"]}}]
      when: [{key: "request.headers[x-team]", values: ["sre"]}]
"#;
        RouteConfig::parse(yaml, "t")
            .ok()
            .and_then(|c| c.services.into_iter().next())
            .map(|s| s.policies)
            .unwrap_or_default()
    }

    #[test]
    fn verdict_table() {
        let sleep: Identity = "spiffe://cluster.local/ns/default/sa/sleep"
            .parse()
            .expect("id");
        let ops: Identity = "spiffe://cluster.local/ns/ops/sa/bot".parse().expect("id");
        let other: Identity = "spiffe://cluster.local/ns/default/sa/other"
            .parse()
            .expect("id");
        let mut sre = http::HeaderMap::new();
        sre.insert("x-team", http::HeaderValue::from_static("sre"));
        let none = http::HeaderMap::new();
        let ps = policies();
        type Case<'a> = (
            Option<&'a Identity>,
            &'a str,
            &'a str,
            &'a str,
            &'a http::HeaderMap,
            Verdict,
        );
        let cases: [Case<'_>; 8] = [
            (
                Some(&sleep),
                "GET",
                "/admin",
                "reviews",
                &none,
                Verdict::Allow(Some("allow-sleep".into())),
            ),
            (
                Some(&sleep),
                "DELETE",
                "/admin/x",
                "reviews",
                &none,
                Verdict::DeniedBy("deny-admin-delete".into()),
            ),
            (
                Some(&sleep),
                "DELETE",
                "/other",
                "reviews",
                &none,
                Verdict::Allow(Some("allow-sleep".into())),
            ),
            (
                Some(&other),
                "GET",
                "/",
                "reviews",
                &none,
                Verdict::NoAllowMatched,
            ),
            (None, "GET", "/", "reviews", &none, Verdict::NoAllowMatched),
            (
                Some(&ops),
                "GET",
                "/",
                "reviews:9080",
                &sre,
                Verdict::Allow(Some("allow-ops-header".into())),
            ),
            (
                Some(&ops),
                "GET",
                "/private/x",
                "reviews",
                &sre,
                Verdict::NoAllowMatched,
            ),
            (
                Some(&ops),
                "GET",
                "/",
                "reviews",
                &none,
                Verdict::NoAllowMatched,
            ),
        ];
        for (peer, method, path, host, headers, want) in cases {
            let f = AuthzFacts {
                peer,
                source_ip: None,
                remote_ip: None,
                port: 9080,
                http: Some(HttpFacts {
                    method,
                    path,
                    host,
                    headers,
                }),
            };
            assert_eq!(authorize(&ps, &f), want, "{peer:?} {method} {path} {host}");
        }
        let f = AuthzFacts {
            peer: None,
            source_ip: None,
            remote_ip: None,
            port: 1,
            http: Some(HttpFacts {
                method: "GET",
                path: "/",
                host: "x",
                headers: &none,
            }),
        };
        assert_eq!(authorize(&[], &f), Verdict::Allow(None));
    }

    fn parse_policies(yaml: &str) -> Vec<L7Policy> {
        match RouteConfig::parse(yaml, "t") {
            Ok(c) => c
                .services
                .into_iter()
                .next()
                .map(|s| s.policies)
                .unwrap_or_default(),
            Err(e) => panic!("{e}"),
        }
    }

    fn l4(source: &str, port: u16) -> AuthzFacts<'static> {
        let ip = source.parse().ok();
        AuthzFacts {
            peer: None,
            source_ip: ip,
            remote_ip: ip,
            port,
            http: None,
        }
    }

    #[test]
    fn tcp_deny_ignores_http_fields_and_allow_with_http_fields_never_matches() {
        let deny = parse_policies(
            r#"
services:
- host: h
  policies:
  - name: deny-admin-on-7000
    action: DENY
    rules: [{to: [{operation: {paths: ["/admin*"], ports: [7000]}}]}]
"#,
        );
        assert_eq!(
            authorize(&deny, &l4("10.0.0.1", 7000)),
            Verdict::DeniedBy("deny-admin-on-7000".into())
        );
        assert_eq!(
            authorize(&deny, &l4("10.0.0.1", 7001)),
            Verdict::Allow(None)
        );
        let allow = parse_policies(
            r#"
services:
- host: h
  policies:
  - name: allow-get
    rules: [{to: [{operation: {methods: [GET]}}]}]
  - name: allow-header
    rules: [{when: [{key: "request.headers[x-a]", values: ["1"]}]}]
"#,
        );
        assert_eq!(
            authorize(&allow, &l4("10.0.0.1", 7000)),
            Verdict::NoAllowMatched
        );
        let h = http::HeaderMap::new();
        let mut get = l4("10.0.0.1", 7000);
        get.http = Some(HttpFacts {
            method: "GET",
            path: "/",
            host: "h",
            headers: &h,
        });
        assert_eq!(
            authorize(&allow, &get),
            Verdict::Allow(Some("allow-get".into()))
        );
        // L4-only ALLOW fields do match on TCP.
        let ports = parse_policies(
            "services: [{host: h, policies: [{name: p, rules: [{to: [{operation: {ports: [7000], notPorts: [7001]}}]}]}]}]\n",
        );
        assert!(authorize(&ports, &l4("10.0.0.1", 7000)).allowed());
        assert!(!authorize(&ports, &l4("10.0.0.1", 7001)).allowed());
    }

    #[test]
    fn ip_blocks_and_ip_conditions() {
        let ps = parse_policies(
            r#"
services:
- host: h
  policies:
  - name: deny-bad
    action: DENY
    rules: [{from: [{source: {ipBlocks: ["10.9.0.0/16"], notIpBlocks: ["10.9.9.9"]}}]}]
  - name: deny-remote
    action: DENY
    rules: [{from: [{source: {remoteIpBlocks: ["203.0.113.0/24"]}}]}]
  - name: allow-lan
    rules:
    - from: [{source: {ipBlocks: ["10.0.0.0/8", "fd00::/8"]}}]
      when: [{key: source.ip, notValues: ["10.1.1.1"]}, {key: destination.port, values: ["80", "7000"]}]
  - name: allow-remote
    rules: [{when: [{key: remote.ip, values: ["198.51.100.7"]}]}]
"#,
        );
        let allow = |n: &str| Verdict::Allow(Some(n.into()));
        assert_eq!(authorize(&ps, &l4("10.2.3.4", 80)), allow("allow-lan"));
        assert_eq!(authorize(&ps, &l4("fd00::5", 7000)), allow("allow-lan"));
        assert_eq!(authorize(&ps, &l4("10.2.3.4", 81)), Verdict::NoAllowMatched);
        assert_eq!(authorize(&ps, &l4("10.1.1.1", 80)), Verdict::NoAllowMatched);
        assert_eq!(
            authorize(&ps, &l4("10.9.1.1", 80)),
            Verdict::DeniedBy("deny-bad".into())
        );
        assert_eq!(authorize(&ps, &l4("10.9.9.9", 80)), allow("allow-lan"));
        assert_eq!(
            authorize(&ps, &l4("192.0.2.1", 80)),
            Verdict::NoAllowMatched
        );
        // remote.ip follows x-forwarded-for's first entry on HTTP.
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("198.51.100.7, 10.0.0.1"),
        );
        let src: Option<IpAddr> = "192.0.2.1".parse().ok();
        let f = AuthzFacts {
            peer: None,
            source_ip: src,
            remote_ip: remote_ip(&h, src),
            port: 80,
            http: Some(HttpFacts {
                method: "GET",
                path: "/",
                host: "h",
                headers: &h,
            }),
        };
        assert_eq!(authorize(&ps, &f), allow("allow-remote"));
        let mut h2 = http::HeaderMap::new();
        h2.insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("203.0.113.9"),
        );
        let f = AuthzFacts {
            remote_ip: remote_ip(&h2, src),
            http: Some(HttpFacts {
                method: "GET",
                path: "/",
                host: "h",
                headers: &h2,
            }),
            ..f
        };
        assert_eq!(authorize(&ps, &f), Verdict::DeniedBy("deny-remote".into()));
        assert_eq!(remote_ip(&http::HeaderMap::new(), src), src);
    }

    #[test]
    fn bad_policy_values_are_config_errors_naming_the_item() {
        for (yaml, want) in [
            (
                "services: [{host: h, policies: [{name: p, rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}]}]\n",
                "10.0.0.0/40",
            ),
            (
                "services: [{host: h, policies: [{name: p, rules: [{when: [{key: source.ip, values: [nope]}]}]}]}]\n",
                "h policy p",
            ),
            (
                "services: [{host: h, policies: [{name: p, rules: [{when: [{key: \"request.auth.claims[x]\"}]}]}]}]\n",
                "unsupported key",
            ),
            (
                "services: [{host: h, policies: [{name: p, rules: [{when: [{key: destination.port, values: [http]}]}]}]}]\n",
                "not a port",
            ),
        ] {
            let e = RouteConfig::parse(yaml, "t").expect_err(yaml);
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn glob_table() {
        for (p, s, want) in [
            ("*", "", true),
            ("/a*", "/abc", true),
            ("/a*", "/b", false),
            ("*.svc", "x.svc", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob(p, s), want, "{p} {s}");
        }
    }
}
