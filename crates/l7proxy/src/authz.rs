//! L7 authorization with Istio's AuthorizationPolicy semantics: any
//! matching DENY denies; otherwise, if any ALLOW policy exists, one must
//! match; with none, allow. Pure: the request facts and the HBONE peer's
//! identity in, a decision out.

use ambit_identity::Identity;

use crate::config::{Action, Condition, L7Policy, L7Rule, Operation, Source};

/// The facts a policy can match on.
#[derive(Debug, Clone, Copy)]
pub struct AuthzFacts<'a> {
    /// The HBONE peer's verified identity.
    pub peer: Option<&'a Identity>,
    /// The method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The request's authority (`host` or `:authority`).
    pub host: &'a str,
    /// The destination (service) port.
    pub port: u16,
    /// The headers.
    pub headers: &'a http::HeaderMap,
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

/// Evaluates `policies` for a request.
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
    p.rules.iter().any(|r| rule_matches(r, f))
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
fn field(pos: &[String], neg: &[String], value: Option<&str>, eq: fn(&str, &str) -> bool) -> bool {
    let pos_ok = pos.is_empty() || value.is_some_and(|v| pos.iter().any(|p| eq(p, v)));
    let neg_ok = neg.is_empty() || value.is_none_or(|v| !neg.iter().any(|p| eq(p, v)));
    pos_ok && neg_ok
}

fn principal(id: &Identity) -> &str {
    id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str())
}

fn source_matches(s: &Source, f: &AuthzFacts<'_>) -> bool {
    let pr = f.peer.map(principal);
    let ns = f.peer.map(|i| i.namespace());
    field(&s.principals, &s.not_principals, pr, glob)
        && field(&s.namespaces, &s.not_namespaces, ns, glob)
}

fn operation_matches(o: &Operation, f: &AuthzFacts<'_>) -> bool {
    let host_eq = |p: &str, v: &str| {
        // `host` matches with or without the port, case-insensitively.
        let v = v.to_ascii_lowercase();
        let p = p.to_ascii_lowercase();
        glob(&p, &v) || v.rsplit_once(':').is_some_and(|(h, _)| glob(&p, h))
    };
    field(&o.methods, &o.not_methods, Some(f.method), |p, v| p == v)
        && field(&o.paths, &o.not_paths, Some(f.path), glob)
        && field(&o.hosts, &o.not_hosts, Some(f.host), host_eq)
        && (o.ports.is_empty() || o.ports.contains(&f.port))
}

fn condition_matches(c: &Condition, f: &AuthzFacts<'_>) -> bool {
    let values: Vec<&str> = if let Some(name) = c
        .key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        f.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        match c.key.as_str() {
            "source.principal" => f.peer.map(principal).into_iter().collect(),
            "source.namespace" => f.peer.map(|i| i.namespace()).into_iter().collect(),
            // Unknown keys never match (fail closed for ALLOW, open for DENY),
            // as Istio rejects them at admission.
            _ => return false,
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
                method,
                path,
                host,
                port: 9080,
                headers,
            };
            assert_eq!(authorize(&ps, &f), want, "{peer:?} {method} {path} {host}");
        }
        let f = AuthzFacts {
            peer: None,
            method: "GET",
            path: "/",
            host: "x",
            port: 1,
            headers: &none,
        };
        assert_eq!(authorize(&[], &f), Verdict::Allow(None));
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
