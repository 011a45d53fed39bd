//! Istio AuthorizationPolicies that target the waypoint → the engine's
//! per-service L7 policies.
//!
//! A policy applies here when its `targetRefs` (or the older `targetRef`)
//! name the waypoint's Gateway (group `gateway.networking.k8s.io`): then
//! every service of the waypoint gets it; or a Service (group `""`) or
//! ServiceEntry (group `networking.istio.io`) in the policy's namespace
//! that uses the waypoint. Policies with a workload `selector` are
//! ztunnel's and ignored here.
//!
//! Actions `ALLOW` and `DENY` translate; `AUDIT` and `CUSTOM` are reported
//! and skipped. What the engine cannot evaluate fails closed, as Istio
//! does with fields a proxy does not support: an `ALLOW` rule using it is
//! dropped (allowing less), a `DENY` rule loses that field (denying
//! more). A policy the engine's validator still refuses becomes "deny
//! everything" (`DENY`) or "allow nothing" (`ALLOW`) on its targets.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::objects::{
    AuthorizationPolicy, GATEWAY_GROUP, ISTIO_NETWORKING_GROUP, PolicyCondition, PolicyRule,
    PolicyTargetRef,
};
use crate::services::{ServiceKind, WaypointIdentity, WaypointService};
use crate::translate::Snapshot;

/// What became of one AuthorizationPolicy aimed at this waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The service hostnames it was applied to (empty: skipped).
    pub applied_to: Vec<String>,
    /// What was dropped, narrowed or refused, and why.
    pub problems: Vec<String>,
}

/// The `when` keys the engine evaluates.
fn supported_key(key: &str) -> bool {
    matches!(
        key,
        "source.principal" | "source.namespace" | "source.ip" | "remote.ip" | "destination.port"
    ) || (key.starts_with("request.headers[") && key.ends_with(']'))
}

/// Policies by service hostname, and a report per policy that targets
/// this waypoint.
pub(crate) fn translate(
    snap: &Snapshot,
    id: &WaypointIdentity,
    services: &[WaypointService],
) -> (BTreeMap<String, Vec<Value>>, Vec<PolicyReport>) {
    let mut by_host: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut reports = Vec::new();
    let mut sorted: Vec<&AuthorizationPolicy> = snap.policies.iter().collect();
    sorted.sort_by_key(|p| p.key());
    for p in sorted {
        let ns = p.namespace();
        let targets = lenient_targets(&p.spec);
        let hosts = target_hosts(ns, &targets, id, services);
        if hosts.is_empty() {
            continue;
        }
        let mut report = PolicyReport {
            namespace: ns.to_owned(),
            name: p.name().to_owned(),
            applied_to: Vec::new(),
            problems: Vec::new(),
        };
        let policy = match p.spec() {
            Err(e) => {
                // The action is unknown: refuse everything on the targets.
                report.problems.push(format!(
                    "spec does not parse ({e}); denying every request to its targets"
                ));
                deny_all(&p.key())
            }
            Ok(spec) => {
                let action = spec.action.as_deref().unwrap_or("ALLOW");
                if action != "ALLOW" && action != "DENY" {
                    report.problems.push(format!(
                        "action {action} is not supported by the waypoint; skipped"
                    ));
                    reports.push(report);
                    continue;
                }
                let deny = action == "DENY";
                let mut rules = Vec::new();
                for (i, r) in spec.rules.iter().enumerate() {
                    let mut problems = Vec::new();
                    let rule = rule(r, deny, &mut problems);
                    for m in &problems {
                        report.problems.push(format!("rule {i}: {m}"));
                    }
                    match rule {
                        Some(rule) => rules.push(rule),
                        None => report.problems.push(format!(
                            "rule {i}: dropped (ALLOW rules with unsupported fields allow nothing)"
                        )),
                    }
                }
                let policy = json!({"name": p.key(), "action": action, "rules": rules});
                match validate(&policy) {
                    Ok(()) => policy,
                    Err(e) => {
                        report.problems.push(format!(
                            "the engine refuses it ({e}); {}",
                            if deny {
                                "denying every request to its targets"
                            } else {
                                "it allows nothing"
                            }
                        ));
                        if deny {
                            deny_all(&p.key())
                        } else {
                            json!({"name": p.key(), "action": "ALLOW", "rules": []})
                        }
                    }
                }
            }
        };
        for h in &hosts {
            by_host.entry(h.clone()).or_default().push(policy.clone());
        }
        report.applied_to = hosts;
        reports.push(report);
    }
    (by_host, reports)
}

fn deny_all(name: &str) -> Value {
    json!({"name": name, "action": "DENY", "rules": [{}]})
}

/// `targetRefs`, else `targetRef`, from a spec that may not parse whole.
fn lenient_targets(spec: &Value) -> Vec<PolicyTargetRef> {
    let parse = |v: &Value| serde_json::from_value::<PolicyTargetRef>(v.clone()).ok();
    let mut out: Vec<PolicyTargetRef> = spec
        .get("targetRefs")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(parse).collect())
        .unwrap_or_default();
    if out.is_empty()
        && let Some(t) = spec.get("targetRef").and_then(parse)
    {
        out.push(t);
    }
    out
}

fn target_hosts(
    ns: &str,
    targets: &[PolicyTargetRef],
    id: &WaypointIdentity,
    services: &[WaypointService],
) -> Vec<String> {
    let mut hosts = Vec::new();
    for t in targets {
        if t.namespace.as_deref().is_some_and(|n| n != ns) {
            continue;
        }
        let matching: Vec<&WaypointService> = match (t.group.as_str(), t.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") if ns == id.namespace && t.name == id.name => {
                services.iter().collect()
            }
            ("", "Service") => services
                .iter()
                .filter(|s| s.kind == ServiceKind::Service && s.namespace == ns && s.name == t.name)
                .collect(),
            (ISTIO_NETWORKING_GROUP, "ServiceEntry") => services
                .iter()
                .filter(|s| {
                    s.kind == ServiceKind::ServiceEntry && s.namespace == ns && s.name == t.name
                })
                .collect(),
            _ => Vec::new(),
        };
        hosts.extend(matching.into_iter().map(|s| s.hostname.clone()));
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// One rule; `None` when an ALLOW rule must be dropped.
fn rule(r: &PolicyRule, deny: bool, problems: &mut Vec<String>) -> Option<Value> {
    let mut unsupported = false;
    let mut note = |what: String, problems: &mut Vec<String>| {
        unsupported = true;
        problems.push(if deny {
            format!("{what}: ignored, so the DENY rule matches more")
        } else {
            what
        });
    };
    let mut from = Vec::new();
    for f in &r.from {
        let s = &f.source;
        if !s.request_principals.is_empty() || !s.not_request_principals.is_empty() {
            note(
                "requestPrincipals/notRequestPrincipals (JWT) are not supported".into(),
                problems,
            );
        }
        let mut src = Map::new();
        for (key, list) in [
            ("principals", &s.principals),
            ("notPrincipals", &s.not_principals),
            ("namespaces", &s.namespaces),
            ("notNamespaces", &s.not_namespaces),
            ("ipBlocks", &s.ip_blocks),
            ("notIpBlocks", &s.not_ip_blocks),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            if !list.is_empty() {
                src.insert(key.into(), json!(list));
            }
        }
        from.push(json!({"source": src}));
    }
    let mut to = Vec::new();
    for t in &r.to {
        let o = &t.operation;
        let mut op = Map::new();
        for (key, list) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ] {
            if !list.is_empty() {
                op.insert(key.into(), json!(list));
            }
        }
        for (key, list) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
            let mut ports = Vec::new();
            for p in list {
                match p.parse::<u16>() {
                    Ok(n) => ports.push(n),
                    Err(_) => note(format!("{key} value {p:?} is not a port"), problems),
                }
            }
            if !ports.is_empty() {
                op.insert(key.into(), json!(ports));
            }
        }
        to.push(json!({"operation": op}));
    }
    let mut when = Vec::new();
    for c in &r.when {
        match condition(c) {
            Some(v) => when.push(v),
            None => note(format!("when key {:?} is not supported", c.key), problems),
        }
    }
    if unsupported && !deny {
        return None;
    }
    let mut out = Map::new();
    if !from.is_empty() {
        out.insert("from".into(), Value::Array(from));
    }
    if !to.is_empty() {
        out.insert("to".into(), Value::Array(to));
    }
    if !when.is_empty() {
        out.insert("when".into(), Value::Array(when));
    }
    Some(Value::Object(out))
}

fn condition(c: &PolicyCondition) -> Option<Value> {
    supported_key(&c.key)
        .then(|| json!({"key": c.key, "values": c.values, "notValues": c.not_values}))
}

fn validate(policy: &Value) -> Result<(), String> {
    let doc = json!({"services": [{"host": "validate", "policies": [policy]}]});
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| e.to_string())?;
    ambit_l7proxy::RouteConfig::parse(&text, "policy")
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
