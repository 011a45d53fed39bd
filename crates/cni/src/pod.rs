//! Pods as the agent sees them, and Istio's ambient enrolment rules.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Namespace label that puts a namespace's pods in the ambient mesh.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Its ambient value.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// Annotation injected sidecars carry; such pods are never ambient.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Pod annotation that opts a pod out (`disabled`).
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// Pod annotation that overrides the agent's DNS capture setting
/// (`AMBIENT_DNS_CAPTURE`) for one pod: `true` or `false` (Istio 1.25+).
pub const DNS_CAPTURE_ANNOTATION: &str = "ambient.istio.io/dns-capture";

/// A pod record, as the local pod source reads it (YAML or JSON) and as a
/// Kubernetes watch would produce it.
///
/// ```yaml
/// name: web-0
/// namespace: default
/// uid: 5b8f...
/// ips: [10.244.0.7]
/// netns: /var/run/netns/cni-1234   # optional; plugin events supply it too
/// node: node-a                      # optional; other nodes' pods are ignored
/// labels: {app: web}
/// annotations: {}
/// namespace_labels: {istio.io/dataplane-mode: ambient}
/// service_account: web
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRecord {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// Pod addresses.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// The pod's network namespace path.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The node the pod runs on.
    #[serde(default)]
    pub node: Option<String>,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Pod annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The namespace's labels.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// The pod's service account.
    #[serde(default)]
    pub service_account: String,
}

/// `(namespace, name)`.
pub type PodKey = (String, String);

impl PodRecord {
    /// `(namespace, name)`.
    pub fn key(&self) -> PodKey {
        (self.namespace.clone(), self.name.clone())
    }

    /// Istio's ambient rule: the pod's own `istio.io/dataplane-mode` label
    /// if it has one (`ambient` opts in, `none` or anything else out —
    /// waypoints carry `none`), else the namespace's label must be
    /// `ambient`; and the pod has no sidecar (`sidecar.istio.io/status`)
    /// and has not opted out with `ambient.istio.io/redirection: disabled`.
    pub fn wants_ambient(&self) -> bool {
        self.labels
            .get(DATAPLANE_MODE_LABEL)
            .or_else(|| self.namespace_labels.get(DATAPLANE_MODE_LABEL))
            .is_some_and(|v| v == DATAPLANE_MODE_AMBIENT)
            && !self.annotations.contains_key(SIDECAR_STATUS_ANNOTATION)
            && self
                .annotations
                .get(REDIRECTION_ANNOTATION)
                .is_none_or(|v| v != "disabled")
    }

    /// The pod's DNS capture override ([`DNS_CAPTURE_ANNOTATION`]):
    /// `Ok(None)` when unset, `Err(value)` when set to something that is
    /// not a boolean. Booleans are spelled as Istio (Go's
    /// `strconv.ParseBool`) accepts them: `1 t T TRUE true True` and
    /// `0 f F FALSE false False`; Istio ignores any other value with a
    /// warning, and so does the agent.
    pub fn dns_capture(&self) -> Result<Option<bool>, &str> {
        match self
            .annotations
            .get(DNS_CAPTURE_ANNOTATION)
            .map(String::as_str)
        {
            None => Ok(None),
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(Some(true)),
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(Some(false)),
            Some(other) => Err(other),
        }
    }
}

/// A network namespace's identity: the device and inode of its nsfs file.
/// Two paths (a bind mount under `/run/netns`, `/proc/PID/ns/net`) name
/// the same namespace exactly when their identities are equal; a sandbox
/// recreated at the same path has a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetnsId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl NetnsId {
    /// The identity of the namespace at `path` (following the bind mount
    /// or the `/proc` magic link).
    pub fn of_path(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

impl std::fmt::Display for NetnsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

/// A pod the agent has decided to enrol, with everything a data plane
/// needs: addresses for node-level capture, the netns for in-pod capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledPod {
    /// Pod UID (the set entry's comment; the ZDS workload uid).
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// Network namespace path.
    pub netns: Option<PathBuf>,
    /// The identity of that namespace when the agent last saw it (from the
    /// sandbox's ADD or the `/proc` scan); a data plane refuses to act on a
    /// different namespace found at the same path.
    pub netns_id: Option<NetnsId>,
    /// The pod's own DNS capture choice ([`DNS_CAPTURE_ANNOTATION`]);
    /// `None` follows the agent's setting.
    pub dns_capture: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRecord {
        PodRecord {
            name: "a".into(),
            namespace: "ns".into(),
            uid: "u".into(),
            ips: vec![],
            netns: None,
            node: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            namespace_labels: [(DATAPLANE_MODE_LABEL.to_owned(), "ambient".to_owned())].into(),
            service_account: String::new(),
        }
    }

    #[test]
    fn enrolment_rules() {
        assert!(pod().wants_ambient());
        let mut p = pod();
        p.namespace_labels.clear();
        assert!(!p.wants_ambient(), "namespace not labelled");
        let mut p = pod();
        p.namespace_labels
            .insert(DATAPLANE_MODE_LABEL.into(), "none".into());
        assert!(!p.wants_ambient(), "other mode");
        let mut p = pod();
        p.annotations
            .insert(SIDECAR_STATUS_ANNOTATION.into(), "{}".into());
        assert!(!p.wants_ambient(), "sidecar");
        let mut p = pod();
        p.annotations
            .insert(REDIRECTION_ANNOTATION.into(), "disabled".into());
        assert!(!p.wants_ambient(), "opted out");
        let mut p = pod();
        p.annotations
            .insert(REDIRECTION_ANNOTATION.into(), "enabled".into());
        assert!(p.wants_ambient(), "explicitly enabled");
        // The pod's own label overrides the namespace's, both ways.
        let mut p = pod();
        p.namespace_labels.clear();
        p.labels
            .insert(DATAPLANE_MODE_LABEL.into(), "ambient".into());
        assert!(p.wants_ambient(), "pod opted in");
        let mut p = pod();
        p.labels.insert(DATAPLANE_MODE_LABEL.into(), "none".into());
        assert!(!p.wants_ambient(), "pod opted out (waypoints)");
    }

    #[test]
    fn dns_capture_annotation() {
        let mut p = pod();
        assert_eq!(p.dns_capture(), Ok(None));
        for (v, want) in [
            ("true", Ok(Some(true))),
            ("False", Ok(Some(false))),
            ("1", Ok(Some(true))),
            ("f", Ok(Some(false))),
            ("yes", Err("yes")),
            ("", Err("")),
        ] {
            p.annotations
                .insert(DNS_CAPTURE_ANNOTATION.into(), v.into());
            assert_eq!(p.dns_capture(), want, "{v:?}");
        }
    }

    #[test]
    fn records_parse_from_yaml_and_reject_typos() {
        let y = "name: web-0\nnamespace: default\nuid: u1\nips: [10.244.0.7]\nnamespace_labels:\n  istio.io/dataplane-mode: ambient\n";
        let p: PodRecord = serde_yaml_ng::from_str(y).expect("yaml");
        assert!(p.wants_ambient());
        assert_eq!(p.ips.len(), 1);
        assert!(
            serde_yaml_ng::from_str::<PodRecord>(&format!("{y}namespce_labels: {{}}\n")).is_err()
        );
    }
}
