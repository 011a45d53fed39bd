//! Istio AuthorizationPolicy (`security.istio.io/v1`) spec types.

use serde::Deserialize;

/// AuthorizationPolicy `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// A workload selector (such policies are ztunnel's, not the waypoint's).
    #[serde(default)]
    pub selector: Option<serde_json::Value>,
    /// One target (deprecated by `targetRefs`).
    #[serde(default)]
    pub target_ref: Option<PolicyTargetRef>,
    /// Targets.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetRef>,
    /// `ALLOW` (default), `DENY`, `AUDIT`, `CUSTOM`.
    #[serde(default)]
    pub action: Option<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

/// A policy target.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// Group.
    #[serde(default)]
    pub group: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace (must be the policy's own when set).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A policy rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Sources.
    #[serde(default)]
    pub from: Vec<PolicyFrom>,
    /// Operations.
    #[serde(default)]
    pub to: Vec<PolicyTo>,
    /// Conditions.
    #[serde(default)]
    pub when: Vec<PolicyCondition>,
}

/// `from[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyFrom {
    /// The source.
    #[serde(default)]
    pub source: PolicySource,
}

/// `from[].source`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySource {
    /// Peer principals.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Not these principals.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// JWT principals.
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// Not these JWT principals.
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Not these namespaces.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Peer address blocks.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Not these peer address blocks.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// Original client blocks.
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// Not these original client blocks.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `to[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyTo {
    /// The operation.
    #[serde(default)]
    pub operation: PolicyOperation,
}

/// `to[].operation`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyOperation {
    /// Hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Not these hosts.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Ports (strings in Istio's API).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Not these ports.
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// Methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Not these methods.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Paths.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Not these paths.
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `when[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    /// The attribute.
    #[serde(default)]
    pub key: String,
    /// Any may match.
    #[serde(default)]
    pub values: Vec<String>,
    /// None may match.
    #[serde(default)]
    pub not_values: Vec<String>,
}
