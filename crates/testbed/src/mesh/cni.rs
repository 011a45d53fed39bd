//! Wiring pods as a container runtime would: `cni-node install` chains
//! `istio-cni` after `ptp` + `static`, pod records feed the agent's
//! directory pod source, and CNI ADD runs the chain for each pod.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use ambit_netns::harness::Pod;
use anyhow::{Context, bail};

use super::LocalMesh;
use crate::config::{NODES, PODS, waypoint_ips};

/// One node's CNI setup: the chained conflist `cni-node install` wrote and
/// where plugins are found.
pub(super) struct NodeCni {
    pub(super) conflist: serde_json::Value,
    pub(super) cni_path: String,
    pub(super) run_dir: PathBuf,
    pub(super) pod_dir: PathBuf,
}

impl LocalMesh {
    /// Pods of node `i` the agent should enrol.
    pub(super) fn expected_enrolled(&self, i: usize) -> usize {
        let wp = waypoint_ips(&self.config);
        self.config
            .workloads
            .iter()
            .filter(|w| w.node == NODES[i])
            .filter(|w| !w.addresses.iter().any(|a| wp.contains(a)))
            .filter(|w| {
                self.locate(w.addresses.first().copied())
                    .is_some_and(|(_, j)| j > 0)
            })
            .count()
    }

    /// Writes `cni-node`'s primary config and runs `cni-node install`.
    pub(super) fn install_cni(&self, i: usize) -> anyhow::Result<NodeCni> {
        let base = self.dir.join(NODES[i]);
        let (net_d, bin, run, pods) = (
            base.join("net.d"),
            base.join("bin"),
            base.join("run"),
            base.join("pods"),
        );
        for d in [&net_d, &bin, &run, &pods] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let node = self.cluster.node(i);
        let mut routes =
            vec![serde_json::json!({"dst": "0.0.0.0/0", "gw": node.pod_gateway().to_string()})];
        if let Some(gw6) = node.pod_gateway6() {
            routes.push(serde_json::json!({"dst": "::/0", "gw": gw6.to_string()}));
        }
        let primary = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "localmesh",
            "type": "ptp",
            "ipMasq": false,
            "ipam": {"type": "static", "routes": routes},
        });
        std::fs::write(net_d.join("10-localmesh.conf"), primary.to_string())?;
        let out = Command::new(&self.bins.cni_node)
            .arg("install")
            .arg("--cni-net-dir")
            .arg(&net_d)
            .arg("--cni-bin-dir")
            .arg(&bin)
            .arg("--run-dir")
            .arg(&run)
            .output()
            .context("running cni-node install")?;
        if !out.status.success() {
            bail!(
                "cni-node install failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let conflist: serde_json::Value = serde_json::from_slice(
            &std::fs::read(net_d.join("10-localmesh.conflist"))
                .context("reading the chained conflist")?,
        )?;
        Ok(NodeCni {
            conflist,
            cni_path: format!("{}:/usr/lib/cni", bin.display()),
            run_dir: run,
            pod_dir: pods,
        })
    }

    /// Pod records for the agent's directory pod source: mesh workloads in
    /// the ambient-labelled `default` namespace (waypoints opted out with
    /// the pod label `istio.io/dataplane-mode: none`), ztunnel in
    /// `istio-system`, the baseline pods in an unlabelled namespace.
    pub(super) fn write_records(&self, i: usize) -> anyhow::Result<()> {
        let wp = waypoint_ips(&self.config);
        for j in 0..PODS {
            let pod = self.cluster.pod(i, j);
            let ip = IpAddr::V4(pod.ip());
            let ips: Vec<IpAddr> = std::iter::once(ip)
                .chain(pod.ip6().map(IpAddr::V6))
                .collect();
            let w = self
                .config
                .workloads
                .iter()
                .find(|w| w.addresses.contains(&ip));
            let (name, ns, sa, ambient) = match (j, w) {
                (0, _) => (
                    format!("ztunnel-{}", NODES[i]),
                    "istio-system",
                    "ztunnel".to_owned(),
                    false,
                ),
                (_, Some(w)) => (
                    w.name.clone(),
                    w.namespace.as_str(),
                    w.service_account.clone(),
                    true,
                ),
                (_, None) => (
                    format!("outside-{}-{j}", NODES[i]),
                    "outside",
                    "default".to_owned(),
                    false,
                ),
            };
            let mut labels = serde_json::Map::new();
            if wp.contains(&ip) {
                labels.insert("istio.io/dataplane-mode".into(), "none".into());
            }
            let ns_labels = if ambient {
                serde_json::json!({"istio.io/dataplane-mode": "ambient"})
            } else {
                serde_json::json!({})
            };
            let rec = serde_json::json!({
                "name": name, "namespace": ns, "uid": pod_uid(pod),
                "ips": ips, "node": NODES[i], "labels": labels,
                "namespace_labels": ns_labels, "service_account": sa,
            });
            let cni = self.cni.get(i).context("cni not installed")?;
            std::fs::write(
                cni.pod_dir.join(format!("{ns}-{name}.json")),
                rec.to_string(),
            )?;
        }
        Ok(())
    }

    fn sandbox(&self, i: usize, j: usize) -> anyhow::Result<ambit_cni::runtime::Sandbox> {
        let pod = self.cluster.pod(i, j);
        let cni = self.cni.get(i).context("cni not installed")?;
        let file = std::fs::read_dir(&cni.pod_dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                std::fs::read_to_string(p)
                    .is_ok_and(|t| t.contains(&format!("\"{}\"", pod_uid(pod))))
            })
            .context("no pod record")?;
        let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(file)?)?;
        Ok(ambit_cni::runtime::Sandbox {
            container_id: format!("c-{}", pod.name()),
            netns: PathBuf::from(format!("/run/netns/{}", pod.name())),
            ifname: "eth0".into(),
            pod_namespace: rec["namespace"].as_str().unwrap_or_default().into(),
            pod_name: rec["name"].as_str().unwrap_or_default().into(),
            pod_uid: pod_uid(pod),
        })
    }

    /// CNI ADD for pod `j` of node `i`, as a container runtime does it:
    /// the chain runs in the node namespace; the static IPAM gets the
    /// pod's planned address.
    pub(super) fn wire(&self, i: usize, j: usize) -> anyhow::Result<()> {
        let pod = self.cluster.pod(i, j);
        let cni = self.cni.get(i).context("cni not installed")?;
        let node = self.cluster.node(i);
        let mut conflist = cni.conflist.clone();
        let mut addresses = vec![serde_json::json!({
            "address": format!("{}/24", pod.ip()),
            "gateway": node.pod_gateway().to_string(),
        })];
        if let (Some(ip6), Some(gw6)) = (pod.ip6(), node.pod_gateway6()) {
            addresses.push(serde_json::json!({
                "address": format!("{ip6}/64"),
                "gateway": gw6.to_string(),
            }));
        }
        conflist["plugins"][0]["ipam"]["addresses"] = serde_json::json!(addresses);
        let rt = ambit_cni::runtime::Runtime {
            cni_path: cni.cni_path.clone(),
            netns: Some(self.cluster.node(i).ns()),
        };
        rt.add(&conflist, &self.sandbox(i, j)?)
            .with_context(|| format!("CNI ADD for {}", pod.name()))?;
        Ok(())
    }
}

/// A pod's uid in the local mesh (its namespace name).
fn pod_uid(pod: &Pod) -> String {
    format!("uid-{}", pod.name())
}
