//! How the plugin decides ambient membership before it talks to the agent,
//! as Istio's plugin does (it reads the pod and its namespace from the API
//! server and applies the enablement rules): a pod outside the mesh must
//! start even when the agent is down, and an ambient pod must not start
//! uncaptured.
//!
//! The network configuration names the source: `kubernetes.kubeconfig`
//! (Istio's field; feature `kube`) reads the pod and namespace from the
//! API server, `pod_records_dir` reads the same directory of pod records
//! the agent's `dir` source watches (clusterless runs and tests). Without
//! either, membership is unknown and the plugin leaves the decision to the
//! agent.

use std::path::PathBuf;

use crate::pod::PodRecord;
use crate::source::DirSource;
use crate::spec::NetConf;

/// Where the plugin learns a pod's labels, annotations and its
/// namespace's labels.
pub trait Membership {
    /// For messages: `dir /var/lib/pods`, `kubernetes /etc/cni/net.d/ztunnel-kubeconfig`.
    fn describe(&self) -> String;
    /// The pod's record, `Ok(None)` when the source does not know the pod;
    /// `Err` (with the reason) when the source could not be asked.
    fn lookup(&self, namespace: &str, name: &str) -> Result<Option<PodRecord>, String>;
}

/// The membership source a network configuration names, if any:
/// `kubernetes.kubeconfig` first (with the `kube` feature), then
/// `pod_records_dir`.
pub fn from_conf(conf: &NetConf) -> Option<Box<dyn Membership>> {
    #[cfg(feature = "kube")]
    if let Some(path) = conf.kubernetes.as_ref().and_then(|k| k.kubeconfig.clone()) {
        return Some(Box::new(crate::kube::KubeMembership::new(path)));
    }
    dir_from_conf(conf)
}

/// The `pod_records_dir` source alone: what a plugin built without the
/// API client reads (it hands ADDs that need the API server to the full
/// plugin, see [`crate::plugin::run_agent_first`]).
pub fn dir_from_conf(conf: &NetConf) -> Option<Box<dyn Membership>> {
    conf.pod_records_dir
        .clone()
        .map(|d| Box::new(DirMembership(d)) as Box<dyn Membership>)
}

/// Pod records in a directory (one per file, as [`DirSource`] reads them).
#[derive(Debug, Clone)]
pub struct DirMembership(pub PathBuf);

impl Membership for DirMembership {
    fn describe(&self) -> String {
        format!("dir {}", self.0.display())
    }

    fn lookup(&self, namespace: &str, name: &str) -> Result<Option<PodRecord>, String> {
        let scan = DirSource::new(self.0.clone(), None)
            .poll()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        Ok(scan
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_membership_finds_records_by_namespace_and_name() {
        let dir = std::env::temp_dir().join(format!("ambit-membership-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("a.yaml"),
            "name: web\nnamespace: shop\nuid: u1\nnamespace_labels: {istio.io/dataplane-mode: ambient}\n",
        )
        .expect("write");
        let m = DirMembership(dir.clone());
        let found = m.lookup("shop", "web");
        let missing = m.lookup("shop", "db");
        let gone = DirMembership(dir.join("nope")).lookup("shop", "web");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(found.expect("lookup").expect("record").wants_ambient());
        assert_eq!(missing.expect("lookup"), None);
        assert_eq!(gone, Ok(None), "a missing directory knows no pods");
    }
}
