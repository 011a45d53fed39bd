//! Kubernetes objects → the waypoint engine's [`RouteConfig`], with the
//! status of every route towards this waypoint.
//!
//! [`translate`] is pure: it builds the YAML document the local config
//! file would hold and parses it with [`RouteConfig::parse`], so both
//! sources share one validator. [`Translator`] adds memory: a route that
//! stops translating (a bad backendRef, an unsupported value) keeps
//! serving its last good routing instead of vanishing, and the rest of the
//! routes still apply.

use std::collections::{BTreeMap, BTreeSet};

use ambit_l7proxy::RouteConfig;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Map, Value, json};

use crate::objects::{
    AuthorizationPolicy, GATEWAY_GROUP, Gateway, GrpcRoute, HttpRoute, ISTIO_NETWORKING_GROUP,
    Object, ParentRef, ReferenceGrant,
};
use crate::policy::{self, PolicyReport};
use crate::rules::{self, Entry, RouteCtx, RuleError};
use crate::services::{ServiceKind, WaypointIdentity, WaypointService};

/// Everything the translation reads, as last listed and watched.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Gateways (the waypoint's own is looked up by identity).
    pub gateways: Vec<Gateway>,
    /// HTTPRoutes.
    pub http_routes: Vec<HttpRoute>,
    /// GRPCRoutes.
    pub grpc_routes: Vec<GrpcRoute>,
    /// ReferenceGrants.
    pub reference_grants: Vec<ReferenceGrant>,
    /// Istio AuthorizationPolicies.
    pub policies: Vec<AuthorizationPolicy>,
    /// Kubernetes Services (backend existence and ports, appProtocol).
    pub services: Vec<Service>,
}

/// The route kinds translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// HTTPRoute.
    Http,
    /// GRPCRoute.
    Grpc,
}

impl RouteKind {
    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
        }
    }
}

/// A route status condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted` or `ResolvedRefs`.
    pub type_: String,
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason (`Accepted`, `NoMatchingParent`, `BackendNotFound`, …).
    pub reason: String,
    /// For humans.
    pub message: String,
}

impl Condition {
    fn new(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.into(),
            status: ok,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// A route's status towards one of its parents that this waypoint owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentStatus {
    /// The parentRef as written.
    pub parent_ref: ParentRef,
    /// `Accepted` and `ResolvedRefs`.
    pub conditions: Vec<Condition>,
}

impl ParentStatus {
    /// The condition of `type_`.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// One route's status: only its parentRefs that name this waypoint or a
/// service using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The generation the status describes.
    pub generation: i64,
    /// Per parentRef.
    pub parents: Vec<ParentStatus>,
}

impl RouteStatus {
    /// The status towards the parent named `name`.
    pub fn parent(&self, name: &str) -> Option<&ParentStatus> {
        self.parents.iter().find(|p| p.parent_ref.name == name)
    }
}

/// What [`translate`] produced.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The engine's config.
    pub config: RouteConfig,
    /// The YAML it was parsed from (what a local file would hold).
    pub yaml: String,
    /// Statuses of the routes that name this waypoint or its services.
    pub routes: Vec<RouteStatus>,
    /// What became of each AuthorizationPolicy that targets the waypoint.
    pub policies: Vec<PolicyReport>,
    /// Set when the assembled document did not validate; `config` is then
    /// empty and must not be applied.
    pub error: Option<String>,
}

/// A route's key: kind and `namespace/name`.
type RouteKey = (RouteKind, String);

/// Engine routes by service hostname.
type Contributions = Vec<(String, Entry)>;

struct Outcome {
    key: RouteKey,
    status: RouteStatus,
    /// `Err`: the route's rules do not translate (use the last good).
    result: Result<Contributions, ()>,
}

/// Translates without memory: a route that does not translate is absent.
pub fn translate(
    snap: &Snapshot,
    id: &WaypointIdentity,
    services: &[WaypointService],
) -> Translation {
    let outcomes = routes(snap, id, services);
    let good: Vec<Contributions> = outcomes
        .iter()
        .filter_map(|o| o.result.clone().ok())
        .collect();
    assemble(
        snap,
        id,
        services,
        outcomes.into_iter().map(|o| o.status).collect(),
        good,
    )
}

/// Translates keeping each route's last good routing.
#[derive(Debug, Default)]
pub struct Translator {
    last_good: BTreeMap<RouteKey, Contributions>,
}

impl Translator {
    /// A translator with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Like [`translate`], but a route whose rules no longer translate
    /// keeps the routing it last had (a route never seen good is absent).
    pub fn translate(
        &mut self,
        snap: &Snapshot,
        id: &WaypointIdentity,
        services: &[WaypointService],
    ) -> Translation {
        let outcomes = routes(snap, id, services);
        let present: BTreeSet<RouteKey> = outcomes.iter().map(|o| o.key.clone()).collect();
        self.last_good.retain(|k, _| present.contains(k));
        let mut contributions = Vec::new();
        let mut statuses = Vec::new();
        for o in outcomes {
            match o.result {
                Ok(c) => {
                    self.last_good.insert(o.key, c.clone());
                    contributions.push(c);
                }
                Err(()) => {
                    if let Some(c) = self.last_good.get(&o.key) {
                        contributions.push(c.clone());
                    }
                }
            }
            statuses.push(o.status);
        }
        assemble(snap, id, services, statuses, contributions)
    }
}

/// Where a parentRef leads.
enum Attach {
    /// Another controller's parent: no status from us.
    NotOurs,
    /// Ours, not accepted: (reason, message).
    Rejected(&'static str, String),
    /// Ours, accepted: these services (indices).
    Services(Vec<usize>),
}

fn attach(
    kind: RouteKind,
    route_ns: &str,
    hostnames: &[String],
    p: &ParentRef,
    snap: &Snapshot,
    id: &WaypointIdentity,
    services: &[WaypointService],
) -> Attach {
    let ns = p.namespace.as_deref().unwrap_or(route_ns);
    match (p.group(), p.kind()) {
        (GATEWAY_GROUP, "Gateway") => {
            if ns != id.namespace || p.name != id.name {
                return Attach::NotOurs;
            }
            let Some(gw) = snap
                .gateways
                .iter()
                .find(|g| g.namespace() == ns && g.name() == p.name)
            else {
                return Attach::Rejected(
                    "NoMatchingParent",
                    format!("Gateway {ns}/{} not found", p.name),
                );
            };
            let spec = match gw.spec() {
                Ok(s) => s,
                Err(e) => {
                    return Attach::Rejected(
                        "NoMatchingParent",
                        format!("Gateway {ns}/{} does not parse: {e}", p.name),
                    );
                }
            };
            let listeners: Vec<_> = spec
                .listeners
                .iter()
                .filter(|l| p.section_name.as_ref().is_none_or(|s| *s == l.name))
                .filter(|l| p.port.is_none_or(|port| port == l.port))
                .collect();
            if listeners.is_empty() {
                return Attach::Rejected(
                    "NoMatchingParent",
                    "no listener matches the parentRef's sectionName and port".into(),
                );
            }
            let allowed = listeners.iter().any(|l| {
                let ar = l.allowed_routes.as_ref();
                let from = ar
                    .and_then(|a| a.namespaces.as_ref())
                    .and_then(|n| n.from.as_deref())
                    .unwrap_or("Same");
                let ns_ok = match from {
                    "All" => true,
                    "Same" => route_ns == id.namespace,
                    _ => false,
                };
                let kinds = ar.map(|a| a.kinds.as_slice()).unwrap_or_default();
                let kind_ok = kinds.is_empty()
                    || kinds.iter().any(|k| {
                        k.kind == kind.as_str()
                            && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                    });
                ns_ok && kind_ok
            });
            if !allowed {
                return Attach::Rejected(
                    "NotAllowedByListeners",
                    format!(
                        "no listener of {ns}/{} allows {} from namespace {route_ns} (namespace selectors are not supported)",
                        p.name,
                        kind.as_str()
                    ),
                );
            }
            let matching = services
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    hostnames.is_empty() || hostnames.iter().any(|h| host_matches(h, &s.hostname))
                })
                .map(|(i, _)| i)
                .collect();
            Attach::Services(matching)
        }
        ("", "Service") | (ISTIO_NETWORKING_GROUP, "ServiceEntry") => {
            let want = if p.kind() == "Service" {
                ServiceKind::Service
            } else {
                ServiceKind::ServiceEntry
            };
            let found: Vec<usize> = services
                .iter()
                .enumerate()
                .filter(|(_, s)| s.kind == want && s.namespace == ns && s.name == p.name)
                .map(|(i, _)| i)
                .collect();
            if found.is_empty() {
                return Attach::NotOurs;
            }
            if ns != route_ns {
                return Attach::Rejected(
                    "UnsupportedValue",
                    format!(
                        "consumer routes (a parent {} in another namespace) are not supported by this waypoint",
                        p.kind()
                    ),
                );
            }
            if let Some(port) = p.port {
                let ports: BTreeSet<u16> = found
                    .iter()
                    .flat_map(|&i| services[i].ports.iter().map(|x| x.port))
                    .collect();
                if !ports.iter().any(|&x| u32::from(x) == port) {
                    return Attach::Rejected(
                        "NoMatchingParent",
                        format!("{} {ns}/{} has no port {port}", p.kind(), p.name),
                    );
                }
                if ports.len() > 1 {
                    return Attach::Rejected(
                        "UnsupportedValue",
                        format!(
                            "routes for one port of a multi-port {} are not supported; omit the parentRef port",
                            p.kind()
                        ),
                    );
                }
            }
            Attach::Services(found)
        }
        _ => Attach::NotOurs,
    }
}

/// Whether a route hostname (`*.example.com` allowed) covers `host`.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host
                    .to_ascii_lowercase()
                    .ends_with(&suffix.to_ascii_lowercase())
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// The parentRefs of a spec that may not parse as a whole.
fn lenient_parents(spec: &Value) -> Vec<ParentRef> {
    spec.get("parentRefs")
        .and_then(|v| v.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|p| serde_json::from_value(p.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn routes(snap: &Snapshot, id: &WaypointIdentity, services: &[WaypointService]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for r in &snap.http_routes {
        out.push(route(snap, id, services, RouteKind::Http, r, |ctx| {
            let spec = r
                .spec()
                .map_err(|e| RuleError::Unsupported(format!("spec does not parse: {e}")))?;
            let mut entries = Vec::new();
            for (i, rule) in spec.rules.iter().enumerate() {
                let action = rules::action(
                    ctx,
                    &rule.filters,
                    &rule.backend_refs,
                    rule.timeouts.as_ref(),
                    rule.retry.as_ref(),
                )?;
                entries.extend(rules::http_matches(
                    ctx,
                    i,
                    rule.name.as_deref(),
                    &rule.matches,
                    &action,
                )?);
            }
            Ok((spec.parent_refs, spec.hostnames, entries))
        }));
    }
    for r in &snap.grpc_routes {
        out.push(route(snap, id, services, RouteKind::Grpc, r, |ctx| {
            let spec = r
                .spec()
                .map_err(|e| RuleError::Unsupported(format!("spec does not parse: {e}")))?;
            let mut entries = Vec::new();
            for (i, rule) in spec.rules.iter().enumerate() {
                let action = rules::action(ctx, &rule.filters, &rule.backend_refs, None, None)?;
                entries.extend(rules::grpc_matches(
                    ctx,
                    i,
                    rule.name.as_deref(),
                    &rule.matches,
                    &action,
                )?);
            }
            Ok((spec.parent_refs, spec.hostnames, entries))
        }));
    }
    out.retain(|o| !o.status.parents.is_empty());
    out
}

type Rules = (Vec<ParentRef>, Vec<String>, Vec<Entry>);

fn route<K: crate::objects::Kind>(
    snap: &Snapshot,
    id: &WaypointIdentity,
    services: &[WaypointService],
    kind: RouteKind,
    obj: &Object<K>,
    build: impl FnOnce(&RouteCtx<'_>) -> Result<Rules, RuleError>,
) -> Outcome {
    let ctx = RouteCtx {
        snap,
        kind,
        namespace: obj.namespace(),
        name: obj.name(),
        created: obj
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        domain: &id.domain,
    };
    let built = build(&ctx).and_then(|(parents, hostnames, entries)| {
        validate(&entries).map(|()| (parents, hostnames, entries))
    });
    let (parents, hostnames) = match &built {
        Ok((p, h, _)) => (p.clone(), h.clone()),
        Err(_) => (lenient_parents(&obj.spec), Vec::new()),
    };
    let (accepted_rules, resolved) = match &built {
        Ok(_) => (
            Ok(()),
            Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved",
            ),
        ),
        Err(RuleError::Refs(reason, msg)) => (
            Ok(()),
            Condition::new("ResolvedRefs", false, reason, msg.clone()),
        ),
        Err(RuleError::Unsupported(msg)) => (
            Err(msg.clone()),
            Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "references not checked past the unsupported value",
            ),
        ),
    };
    let mut status = RouteStatus {
        kind,
        namespace: obj.namespace().to_owned(),
        name: obj.name().to_owned(),
        generation: obj.generation(),
        parents: Vec::new(),
    };
    let mut hosts: BTreeSet<String> = BTreeSet::new();
    for p in &parents {
        let accepted = match attach(kind, obj.namespace(), &hostnames, p, snap, id, services) {
            Attach::NotOurs => continue,
            Attach::Rejected(reason, msg) => Condition::new("Accepted", false, reason, msg),
            Attach::Services(found) => match &accepted_rules {
                Ok(()) => {
                    hosts.extend(found.iter().map(|&i| services[i].hostname.clone()));
                    Condition::new(
                        "Accepted",
                        true,
                        "Accepted",
                        "route accepted by the waypoint",
                    )
                }
                Err(msg) => Condition::new("Accepted", false, "UnsupportedValue", msg.clone()),
            },
        };
        status.parents.push(ParentStatus {
            parent_ref: p.clone(),
            conditions: vec![accepted, resolved.clone()],
        });
    }
    let result = match built {
        Ok((_, _, entries)) => Ok(hosts
            .iter()
            .flat_map(|h| entries.iter().map(move |e| (h.clone(), e.clone())))
            .collect()),
        Err(_) => Err(()),
    };
    Outcome {
        key: (kind, obj.key()),
        status,
        result,
    }
}

/// Runs one route's engine routes through the engine's validator.
fn validate(entries: &[Entry]) -> Result<(), RuleError> {
    let routes: Vec<Value> = entries.iter().map(|e| e.route.clone()).collect();
    let doc = json!({"services": [{"host": "validate", "routes": routes}]});
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| RuleError::Unsupported(e.to_string()))?;
    RouteConfig::parse(&text, "route")
        .map(|_| ())
        .map_err(|e| RuleError::Unsupported(e.to_string()))
}

fn assemble(
    snap: &Snapshot,
    id: &WaypointIdentity,
    services: &[WaypointService],
    routes: Vec<RouteStatus>,
    contributions: Vec<Contributions>,
) -> Translation {
    let mut by_host: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for (host, e) in contributions.into_iter().flatten() {
        by_host.entry(host).or_default().push(e);
    }
    let (policies_by_host, policies) = policy::translate(snap, id, services);
    let mut docs = Vec::new();
    let mut seen = BTreeSet::new();
    for s in services {
        if !seen.insert(s.hostname.clone()) {
            continue;
        }
        let mut svc = Map::new();
        svc.insert("host".into(), json!(s.hostname));
        let ports: Map<String, Value> = s
            .ports
            .iter()
            .filter_map(|p| Some((p.port.to_string(), json!(p.protocol()?))))
            .collect();
        if !ports.is_empty() {
            svc.insert("ports".into(), Value::Object(ports));
        }
        if let Some(mut entries) = by_host.remove(&s.hostname) {
            entries.sort_by(|a, b| a.rank.cmp(&b.rank));
            svc.insert(
                "routes".into(),
                Value::Array(entries.into_iter().map(|e| e.route).collect()),
            );
        }
        if let Some(p) = policies_by_host.get(&s.hostname) {
            svc.insert("policies".into(), Value::Array(p.clone()));
        }
        if svc.len() > 1 {
            docs.push(Value::Object(svc));
        }
    }
    let doc = json!({"services": docs});
    let (config, yaml, error) = match to_yaml(&doc) {
        Ok(yaml) => match RouteConfig::parse(&yaml, "kubernetes") {
            Ok(c) => (c, yaml, None),
            Err(e) => (RouteConfig::default(), yaml, Some(e.to_string())),
        },
        Err(e) => (RouteConfig::default(), String::new(), Some(e.to_string())),
    };
    Translation {
        config,
        yaml,
        routes,
        policies,
        error,
    }
}

/// The document as YAML, with the services' port keys as numbers (JSON
/// object keys are strings; the schema wants integers).
fn to_yaml(doc: &Value) -> Result<String, serde_yaml_ng::Error> {
    use serde_yaml_ng::Value as Y;
    let mut y = serde_yaml_ng::to_value(doc)?;
    if let Some(Y::Sequence(list)) = y.get_mut("services") {
        for svc in list {
            if let Some(Y::Mapping(ports)) = svc.get_mut("ports") {
                let numeric = std::mem::take(ports)
                    .into_iter()
                    .map(
                        |(k, v)| match k.as_str().and_then(|s| s.parse::<u16>().ok()) {
                            Some(n) => (Y::from(n), v),
                            None => (k, v),
                        },
                    )
                    .collect();
                *ports = numeric;
            }
        }
    }
    serde_yaml_ng::to_string(&y)
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
