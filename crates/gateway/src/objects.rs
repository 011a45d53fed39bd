//! The Kubernetes objects the waypoint reads, written by hand with only
//! the fields it uses (unknown fields are ignored).
//!
//! Every kind is an [`Object`]: standard metadata, the `spec` kept as
//! JSON, and the `status`. The watch therefore never fails on one
//! malformed object; [`Object::spec`] parses the spec into the typed
//! structs below when the translation needs it, and a spec that does not
//! parse becomes that object's status (`Accepted=False`), not an outage.
//! Enumerations (`type`, `action`, …) are plain strings for the same
//! reason: a value this version does not know is reported, not fatal.

use std::fmt::Debug;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod authz;
pub use self::authz::{
    AuthorizationPolicySpec, PolicyCondition, PolicyFrom, PolicyOperation, PolicyRule,
    PolicySource, PolicyTargetRef, PolicyTo,
};

/// The API group of the Gateway API.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The API group of Istio's networking objects (ServiceEntry).
pub const ISTIO_NETWORKING_GROUP: &str = "networking.istio.io";
/// The API group of Istio's security objects (AuthorizationPolicy).
pub const ISTIO_SECURITY_GROUP: &str = "security.istio.io";
/// The label on a waypoint Gateway saying which traffic it handles
/// (`service`, `workload`, `all`, `none`; Istio's default is `service`).
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";

/// Compile-time facts about one kind.
pub trait Kind: Clone + Debug + Send + Sync + 'static {
    /// API group (`""` for core).
    const GROUP: &'static str;
    /// API version (`v1`).
    const VERSION: &'static str;
    /// `group/version`.
    const API_VERSION: &'static str;
    /// Kind (`HTTPRoute`).
    const KIND: &'static str;
    /// Plural, as in the URL (`httproutes`).
    const PLURAL: &'static str;
    /// The typed spec.
    type Spec: DeserializeOwned + Debug;
}

/// A namespaced object of kind `K`: metadata, the spec as JSON, the status.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(bound = "")]
pub struct Object<K: Kind> {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec, parsed on demand by [`Object::spec`].
    #[serde(default)]
    pub spec: serde_json::Value,
    /// The status as the API server holds it (other controllers' entries
    /// are kept when the waypoint writes its own).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub status: serde_json::Value,
    #[serde(skip)]
    kind: PhantomData<K>,
}

impl<K: Kind> Object<K> {
    /// An object from its parts.
    pub fn new(metadata: ObjectMeta, spec: serde_json::Value) -> Self {
        Self {
            metadata,
            spec,
            status: serde_json::Value::Null,
            kind: PhantomData,
        }
    }

    /// The typed spec, or why it does not parse.
    pub fn spec(&self) -> Result<K::Spec, serde_json::Error> {
        let spec = if self.spec.is_null() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            self.spec.clone()
        };
        serde_json::from_value(spec)
    }

    /// The namespace (`default` when missing).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The name (empty when missing).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }

    /// `metadata.generation` (0 when missing).
    pub fn generation(&self) -> i64 {
        self.metadata.generation.unwrap_or(0)
    }
}

impl<K: Kind> k8s_openapi::Resource for Object<K> {
    const API_VERSION: &'static str = K::API_VERSION;
    const GROUP: &'static str = K::GROUP;
    const KIND: &'static str = K::KIND;
    const VERSION: &'static str = K::VERSION;
    const URL_PATH_SEGMENT: &'static str = K::PLURAL;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl<K: Kind> k8s_openapi::ListableResource for Object<K> {
    const LIST_KIND: &'static str = "List";
}

impl<K: Kind> k8s_openapi::Metadata for Object<K> {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

macro_rules! kind {
    ($(#[$doc:meta])* $name:ident, $group:expr, $version:literal, $api:literal, $kind:literal, $plural:literal, $spec:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl Kind for $name {
            const GROUP: &'static str = $group;
            const VERSION: &'static str = $version;
            const API_VERSION: &'static str = $api;
            const KIND: &'static str = $kind;
            const PLURAL: &'static str = $plural;
            type Spec = $spec;
        }
    };
}

kind!(
    /// `gateway.networking.k8s.io/v1` Gateway.
    GatewayKind, GATEWAY_GROUP, "v1", "gateway.networking.k8s.io/v1", "Gateway", "gateways", GatewaySpec
);
kind!(
    /// `gateway.networking.k8s.io/v1` HTTPRoute.
    HttpRouteKind, GATEWAY_GROUP, "v1", "gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes", HttpRouteSpec
);
kind!(
    /// `gateway.networking.k8s.io/v1` GRPCRoute.
    GrpcRouteKind, GATEWAY_GROUP, "v1", "gateway.networking.k8s.io/v1", "GRPCRoute", "grpcroutes", GrpcRouteSpec
);
kind!(
    /// `gateway.networking.k8s.io/v1beta1` ReferenceGrant.
    ReferenceGrantKind, GATEWAY_GROUP, "v1beta1", "gateway.networking.k8s.io/v1beta1", "ReferenceGrant", "referencegrants", ReferenceGrantSpec
);
kind!(
    /// `security.istio.io/v1` AuthorizationPolicy.
    AuthorizationPolicyKind, ISTIO_SECURITY_GROUP, "v1", "security.istio.io/v1", "AuthorizationPolicy", "authorizationpolicies", AuthorizationPolicySpec
);

/// A Gateway.
pub type Gateway = Object<GatewayKind>;
/// An HTTPRoute.
pub type HttpRoute = Object<HttpRouteKind>;
/// A GRPCRoute.
pub type GrpcRoute = Object<GrpcRouteKind>;
/// A ReferenceGrant.
pub type ReferenceGrant = Object<ReferenceGrantKind>;
/// An Istio AuthorizationPolicy.
pub type AuthorizationPolicy = Object<AuthorizationPolicyKind>;

/// Gateway `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The class (`istio-waypoint` for Istio's waypoints).
    #[serde(default)]
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// A Gateway listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Its name (what a parentRef's `sectionName` names).
    #[serde(default)]
    pub name: String,
    /// Port.
    #[serde(default)]
    pub port: u32,
    /// Protocol (`HBONE` on a waypoint).
    #[serde(default)]
    pub protocol: String,
    /// Which routes may attach.
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// `listeners[].allowedRoutes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    /// Namespaces routes may come from.
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    /// Route kinds allowed (empty: the listener protocol's defaults).
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

/// `allowedRoutes.namespaces`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    #[serde(default)]
    pub from: Option<String>,
}

/// A group and kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    /// Group (default `gateway.networking.k8s.io`).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind.
    #[serde(default)]
    pub kind: String,
}

/// A route's `parentRefs[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Group (default `gateway.networking.k8s.io`; `""` for a Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind (default `Gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace (default: the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// A listener name (Gateway parents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A port (Service parents: that service port only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

impl ParentRef {
    /// The group, defaulted.
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(GATEWAY_GROUP)
    }

    /// The kind, defaulted.
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Gateway")
    }
}

/// HTTPRoute `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Parents.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Hostnames (Gateway parents only narrow by them).
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// An HTTPRoute rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Optional rule name.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches (none: `PathPrefix /`).
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Retries (Gateway API v1.2, GEP-1731).
    #[serde(default)]
    pub retry: Option<HttpRouteRetry>,
}

/// An HTTPRoute match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path match.
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// Header matches.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameter matches.
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    /// Method.
    #[serde(default)]
    pub method: Option<String>,
}

/// A path match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The value (default `/`).
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Header or parameter name.
    #[serde(default)]
    pub name: String,
    /// The value.
    #[serde(default)]
    pub value: String,
}

/// A route filter (HTTPRoute and GRPCRoute share the shape).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`,
    /// `RequestRedirect`, `URLRewrite`, `RequestMirror`, `ExtensionRef`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// For `RequestHeaderModifier`.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `RequestRedirect`.
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    /// For `URLRewrite`.
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
    /// For `RequestMirror`.
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
}

/// Header edits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Set, replacing.
    #[serde(default)]
    pub set: Vec<NameValue>,
    /// Append.
    #[serde(default)]
    pub add: Vec<NameValue>,
    /// Remove by name.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NameValue {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Value.
    #[serde(default)]
    pub value: String,
}

/// `RequestRedirect`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path modifier.
    #[serde(default)]
    pub path: Option<PathModifier>,
    /// Port.
    #[serde(default)]
    pub port: Option<u32>,
    /// 301 (default) or 302 (303, 307, 308 extended).
    #[serde(default)]
    pub status_code: Option<u32>,
}

/// `URLRewrite`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// Host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path modifier.
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// A path modifier.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// For `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// `RequestMirror`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    /// The mirror destination.
    #[serde(default)]
    pub backend_ref: BackendRef,
    /// Share of requests, 0–100.
    #[serde(default)]
    pub percent: Option<u32>,
    /// Share of requests as a fraction.
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

/// A fraction.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Fraction {
    /// Numerator.
    #[serde(default)]
    pub numerator: u32,
    /// Denominator (default 100).
    #[serde(default)]
    pub denominator: Option<u32>,
}

/// A backend reference.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Group (default `""`, core).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace (default: the route's; another needs a ReferenceGrant).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port (required for a Service).
    #[serde(default)]
    pub port: Option<u32>,
    /// Weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Per-backend filters (not supported: reported).
    #[serde(default)]
    pub filters: Vec<serde_json::Value>,
}

/// `rules[].timeouts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// The whole request (Gateway API duration, `0s`: none).
    #[serde(default)]
    pub request: Option<String>,
    /// Each backend attempt.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// `rules[].retry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRetry {
    /// Statuses retried.
    #[serde(default)]
    pub codes: Vec<u32>,
    /// Maximum retries.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Minimum wait between attempts (the engine has no backoff: ignored).
    #[serde(default)]
    pub backoff: Option<String>,
}

/// GRPCRoute `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// Parents.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Hostnames.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// A GRPCRoute rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// Optional rule name.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches (none: every call).
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Filters.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

/// A GRPCRoute match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    /// Method match.
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    /// Header matches.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

/// A gRPC method match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The fully qualified service (`pkg.Service`).
    #[serde(default)]
    pub service: Option<String>,
    /// The method.
    #[serde(default)]
    pub method: Option<String>,
}

/// ReferenceGrant `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceGrantSpec {
    /// Who may refer.
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    /// To what.
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

/// `from[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GrantFrom {
    /// Group.
    #[serde(default)]
    pub group: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
}

/// `to[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GrantTo {
    /// Group.
    #[serde(default)]
    pub group: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// One name (none: all of that kind).
    #[serde(default)]
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_leniently_and_report_bad_types() {
        let r: HttpRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "ns", "generation": 3},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "a"}],
                     "rules": [{"matches": [{"path": {"type": "Exact", "value": "/x"}}],
                                "someFutureField": true}]}
        }))
        .expect("object");
        assert_eq!(r.key(), "ns/r");
        assert_eq!(r.generation(), 3);
        let spec = r.spec().expect("spec");
        assert_eq!(spec.parent_refs[0].kind(), "Service");
        assert_eq!(
            spec.rules[0].matches[0]
                .path
                .as_ref()
                .map(|p| p.value.clone()),
            Some(Some("/x".into()))
        );

        let bad: HttpRoute = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b"}, "spec": {"rules": "not a list"}
        }))
        .expect("the envelope still parses");
        let e = bad.spec().expect_err("the spec does not");
        assert!(e.to_string().contains("invalid type"), "{e}");
        assert_eq!(bad.namespace(), "default");
    }

    #[test]
    fn kinds_name_their_urls() {
        use kube::Resource;
        assert_eq!(
            HttpRoute::url_path(&(), Some("ns")),
            "/apis/gateway.networking.k8s.io/v1/namespaces/ns/httproutes"
        );
        assert_eq!(
            AuthorizationPolicy::url_path(&(), None),
            "/apis/security.istio.io/v1/authorizationpolicies"
        );
        assert_eq!(
            ReferenceGrant::url_path(&(), None),
            "/apis/gateway.networking.k8s.io/v1beta1/referencegrants"
        );
    }
}
