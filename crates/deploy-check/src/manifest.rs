//! Reading manifests: YAML files split into documents, each deserialized
//! into its typed Kubernetes object and compared with what that object
//! serializes back to, so that fields k8s-openapi silently ignored are
//! reported as unknown.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checks::Problem;

/// A file under `deploy/`: its path relative to `deploy/` (with `/`) and
/// its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// e.g. `waypoint/waypoint.yaml`.
    pub path: String,
    /// The file's contents.
    pub text: String,
}

impl SourceFile {
    /// The directory part of [`SourceFile::path`] (`""` for the top).
    pub fn dir(&self) -> &str {
        self.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
    }

    /// Whether this file is a kustomization.
    pub fn is_kustomization(&self) -> bool {
        let name = self.path.rsplit('/').next().unwrap_or(&self.path);
        matches!(
            name,
            "kustomization.yaml" | "kustomization.yml" | "Kustomization"
        )
    }
}

/// Every `.yaml`/`.yml` file under `dir`, recursively, sorted by path.
pub fn load_dir(dir: &Path) -> Result<Vec<SourceFile>, String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) -> Result<(), String> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("reading {}: {e}", dir.display()))?
                .path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                let rel = path
                    .strip_prefix(root)
                    .map_err(|e| e.to_string())?
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push(SourceFile { path: rel, text });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A Gateway API `Gateway` (gateway.networking.k8s.io/v1), only the fields
/// an Istio waypoint uses; anything else is an unknown field.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gateway {
    /// `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// `Gateway`.
    pub kind: String,
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: GatewaySpec,
}

/// `Gateway.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    /// `istio-waypoint` for a waypoint.
    pub gateway_class_name: String,
    /// With one `Hostname` address Istio treats the gateway as deployed by
    /// hand and does not create its own Deployment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    /// Listeners (a waypoint: one, `HBONE` on 15008).
    pub listeners: Vec<GatewayListener>,
    /// What istiod deploys for it: labels, annotations and the ConfigMap
    /// patching its Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<GatewayInfrastructure>,
}

/// `Gateway.spec.infrastructure`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayInfrastructure {
    /// Labels for the objects istiod creates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations for the objects istiod creates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The ConfigMap whose `deployment` (and `service`, ...) keys patch
    /// what istiod creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<ParametersRef>,
}

/// `Gateway.spec.infrastructure.parametersRef`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParametersRef {
    /// API group (`""` for a ConfigMap).
    #[serde(default)]
    pub group: String,
    /// `ConfigMap`.
    pub kind: String,
    /// Its name, in the Gateway's namespace.
    pub name: String,
}

/// `Gateway.spec.addresses[]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `Hostname` or `IPAddress`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The address.
    pub value: String,
}

/// `Gateway.spec.listeners[]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayListener {
    /// Listener name.
    pub name: String,
    /// Port.
    pub port: u16,
    /// Protocol (`HBONE`).
    pub protocol: String,
    /// Route attachment rules, kept as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<Value>,
}

/// A `kustomization.yaml` (kustomize.config.k8s.io/v1beta1), only the
/// fields these manifests use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kustomization {
    /// `kustomize.config.k8s.io/v1beta1`.
    pub api_version: String,
    /// `Kustomization`.
    pub kind: String,
    /// Namespace given to every namespaced object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Files (or directories) included.
    pub resources: Vec<String>,
    /// Image overrides (`kustomize edit set image`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<KustomizeImage>,
}

/// `images[]` of a kustomization.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizeImage {
    /// The image name as written in the manifests.
    pub name: String,
    /// Replacement name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_name: Option<String>,
    /// Replacement tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tag: Option<String>,
    /// Replacement digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// One typed object.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum Object {
    DaemonSet(Box<DaemonSet>),
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ServiceAccount(Box<ServiceAccount>),
    ConfigMap(Box<ConfigMap>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    HorizontalPodAutoscaler(Box<HorizontalPodAutoscaler>),
    Gateway(Box<Gateway>),
    Kustomization(Box<Kustomization>),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::DaemonSet(_) => DaemonSet::KIND,
            Self::Deployment(_) => Deployment::KIND,
            Self::Service(_) => Service::KIND,
            Self::ServiceAccount(_) => ServiceAccount::KIND,
            Self::ConfigMap(_) => ConfigMap::KIND,
            Self::ClusterRole(_) => ClusterRole::KIND,
            Self::ClusterRoleBinding(_) => ClusterRoleBinding::KIND,
            Self::Role(_) => Role::KIND,
            Self::RoleBinding(_) => RoleBinding::KIND,
            Self::PodDisruptionBudget(_) => PodDisruptionBudget::KIND,
            Self::HorizontalPodAutoscaler(_) => HorizontalPodAutoscaler::KIND,
            Self::Gateway(_) => "Gateway",
            Self::Kustomization(_) => "Kustomization",
        }
    }

    /// The object's metadata (`None` for a kustomization).
    pub fn metadata(&self) -> Option<&ObjectMeta> {
        Some(match self {
            Self::DaemonSet(o) => &o.metadata,
            Self::Deployment(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::ServiceAccount(o) => &o.metadata,
            Self::ConfigMap(o) => &o.metadata,
            Self::ClusterRole(o) => &o.metadata,
            Self::ClusterRoleBinding(o) => &o.metadata,
            Self::Role(o) => &o.metadata,
            Self::RoleBinding(o) => &o.metadata,
            Self::PodDisruptionBudget(o) => &o.metadata,
            Self::HorizontalPodAutoscaler(o) => &o.metadata,
            Self::Gateway(o) => &o.metadata,
            Self::Kustomization(_) => return None,
        })
    }

    /// `metadata.name`, or `""`.
    pub fn name(&self) -> &str {
        self.metadata()
            .and_then(|m| m.name.as_deref())
            .unwrap_or("")
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(&self) -> bool {
        !matches!(
            self,
            Self::ClusterRole(_) | Self::ClusterRoleBinding(_) | Self::Kustomization(_)
        )
    }
}

/// A typed object and where it came from.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The file, relative to `deploy/`.
    pub file: String,
    /// Its document number in the file, from 1.
    pub doc: usize,
    /// The object.
    pub object: Object,
    /// The namespace it will be created in: `metadata.namespace`, else the
    /// kustomization's `namespace` for its directory; `None` for
    /// cluster-scoped objects.
    pub namespace: Option<String>,
}

impl Parsed {
    /// `Kind/name`, for messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.object.kind(), self.object.name())
    }

    /// A problem located at this object.
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        Problem {
            file: self.file.clone(),
            doc: Some(self.doc),
            object: Some(self.label()),
            message: message.into(),
        }
    }
}

/// Splits `text` into YAML documents, skipping empty ones; each as JSON.
fn documents(text: &str) -> Result<Vec<(usize, Value)>, String> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(de).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !v.is_null() {
            out.push((i + 1, v));
        }
    }
    Ok(out)
}

/// Deserializes `doc` as `T` and serializes it back: every path present in
/// `doc` but missing or different afterwards is reported.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(T, Vec<String>), String> {
    let t: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    let mut dropped = Vec::new();
    diff("", doc, &back, &mut dropped);
    Ok((t, dropped))
}

fn diff(path: &str, orig: &Value, back: &Value, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(vb) => diff(&p, va, vb, out),
                    None if va.is_null() => out.push(format!("{p}: null (remove the key)")),
                    None => out.push(format!("{p}: unknown field")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} reads back as {b}")),
    }
}

/// Parses every file: each document into its typed object. Problems are
/// YAML errors, unknown `apiVersion`/`kind`, values of the wrong type and
/// unknown fields.
pub fn parse_files(files: &[SourceFile]) -> (Vec<Parsed>, Vec<Problem>) {
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        let docs = match documents(&f.text) {
            Ok(d) => d,
            Err(e) => {
                problems.push(Problem::file(&f.path, format!("not valid YAML: {e}")));
                continue;
            }
        };
        if docs.is_empty() {
            problems.push(Problem::file(&f.path, "no documents"));
        }
        for (index, doc) in docs {
            let at = |msg: String| Problem {
                file: f.path.clone(),
                doc: Some(index),
                object: Some(describe(&doc)),
                message: msg,
            };
            match parse_one(&doc, f.is_kustomization()) {
                Ok((object, dropped)) => {
                    for d in dropped {
                        problems.push(at(format!(
                            "{d} (not part of the typed {} object: a typo or an unknown field)",
                            object.kind()
                        )));
                    }
                    parsed.push(Parsed {
                        file: f.path.clone(),
                        doc: index,
                        namespace: object.metadata().and_then(|m| m.namespace.clone()),
                        object,
                    });
                }
                Err(e) => problems.push(at(e)),
            }
        }
    }
    // Fill in namespaces from each directory's kustomization.
    let ns_of_dir: Vec<(String, Option<String>)> = parsed
        .iter()
        .filter_map(|p| match &p.object {
            Object::Kustomization(k) => Some((dir_of(&p.file).to_owned(), k.namespace.clone())),
            _ => None,
        })
        .collect();
    for p in &mut parsed {
        if !p.object.namespaced() {
            p.namespace = None;
        } else if p.namespace.is_none() {
            p.namespace = ns_of_dir
                .iter()
                .find(|(d, _)| d == dir_of(&p.file))
                .and_then(|(_, n)| n.clone());
        }
    }
    (parsed, problems)
}

pub(crate) fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

fn describe(doc: &Value) -> String {
    let s = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("{} {name}", s("kind"))
}

fn parse_one(doc: &Value, kustomization: bool) -> Result<(Object, Vec<String>), String> {
    let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    if kustomization != (kind == "Kustomization") {
        return Err(if kustomization {
            format!("a kustomization file must hold one Kustomization, not {kind:?}")
        } else {
            "a Kustomization belongs in kustomization.yaml".into()
        });
    }
    macro_rules! kinds {
        ($($ty:ident),*) => {
            $(
                if api == <$ty as Resource>::API_VERSION && kind == <$ty as Resource>::KIND {
                    let (t, d) = typed::<$ty>(doc)?;
                    return Ok((Object::$ty(Box::new(t)), d));
                }
            )*
        };
    }
    kinds!(
        DaemonSet,
        Deployment,
        Service,
        ServiceAccount,
        ConfigMap,
        ClusterRole,
        ClusterRoleBinding,
        Role,
        RoleBinding,
        PodDisruptionBudget,
        HorizontalPodAutoscaler
    );
    match (api, kind) {
        ("gateway.networking.k8s.io/v1", "Gateway") => {
            let (t, d) = typed::<Gateway>(doc)?;
            Ok((Object::Gateway(Box::new(t)), d))
        }
        ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
            let (t, d) = typed::<Kustomization>(doc)?;
            Ok((Object::Kustomization(Box::new(t)), d))
        }
        _ => Err(format!(
            "unknown kind {api:?} {kind:?}: not one this checker types (DaemonSet, Deployment, \
             Service, ServiceAccount, ConfigMap, ClusterRole(Binding), Role(Binding), \
             PodDisruptionBudget policy/v1, HorizontalPodAutoscaler autoscaling/v2, Gateway, \
             Kustomization)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> (Vec<Parsed>, Vec<Problem>) {
        parse_files(&[SourceFile {
            path: "x.yaml".into(),
            text: text.into(),
        }])
    }

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let (p, problems) = one(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  lables: {x: y}\n---\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports:\n  - port: 1\n    targetPrt: 2\n",
        );
        assert_eq!(p.len(), 2);
        let msgs: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:#?}");
        assert!(
            msgs[0].contains("metadata.lables: unknown field"),
            "{msgs:#?}"
        );
        assert!(msgs[0].contains("document 1"), "{msgs:#?}");
        assert!(msgs[1].contains("spec.ports[0].targetPrt"), "{msgs:#?}");
        assert!(msgs[1].contains("document 3"), "{msgs:#?}");
    }

    #[test]
    fn unknown_kind_and_wrong_types_fail() {
        let (_, problems) = one("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n");
        assert!(problems[0].message.contains("unknown kind"), "{problems:?}");
        let (_, problems) =
            one("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {a: 1}\n");
        assert!(problems[0].message.contains("invalid type"), "{problems:?}");
    }
}
