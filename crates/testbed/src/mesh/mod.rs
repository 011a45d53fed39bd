//! The local mesh: two nodes and their pods in network namespaces, the
//! CNI chain and a `cni-node` agent per node, a `ztunnel` per node, the
//! `waypoint`, the in-process control plane and the apps, started in that
//! order and torn down in reverse. The CNI wiring is in `cni.rs`, the
//! child processes in `processes.rs`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_identity::LocalCa;
use ambit_netns::NsTask;
use ambit_netns::harness::{ChildGuard, Cluster, Pod};
use anyhow::Context;

use crate::config::{NODES, PODS, check_routes_yaml, waypoint_ips};
use crate::control_plane::ControlPlane;
use crate::probe::{read_metric, wait_metric, wait_ready};
use crate::{DEFAULT_MESH, DEFAULT_ROUTES, httpapp, tcpapp};

mod cni;
mod kube;
mod processes;

use self::cni::NodeCni;
use self::kube::MeshKube;
pub use self::processes::Binaries;

/// How pods' traffic is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Node-level capture (Istio 1.16–1.20 design): sets, rules and
    /// tunnels in the node, ztunnel in its own pod.
    #[default]
    Node,
    /// In-pod capture (current Istio): rules inside each pod's netns, the
    /// netns handed to ztunnel over ZDS.
    InPod,
}

impl Mode {
    /// `cni-node --mode` value.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::InPod => "inpod",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The mesh config (ztunnel local YAML format) the control plane serves.
    pub mesh_yaml: String,
    /// The waypoint's routes (ambit-l7proxy YAML).
    pub routes_yaml: String,
    /// Certificate lifetime the proxies ask for, seconds.
    pub secret_ttl: u64,
    /// Capture mode.
    pub mode: Mode,
    /// The node agents capture pods' DNS (port 53) into ztunnel's DNS
    /// proxy (cni-node's `AMBIENT_DNS_CAPTURE`).
    pub dns_capture: bool,
    /// The upstream resolver ztunnels forward non-mesh names to (written
    /// to the mesh's `resolv.conf`, their `DNS_RESOLV_CONF`). Default: the
    /// no-mesh server pod's address on port 53, where nothing answers —
    /// test traffic never leaves the harness.
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// Dual-stack: the harness gives every node and pod IPv6 addresses as
    /// well (see `ambit_netns::harness`), the CNI chain assigns both, and
    /// the pod records carry both. Give the workloads IPv6 addresses too
    /// ([`crate::config::dual_stack`]). IPv6 is captured in in-pod mode;
    /// node mode stays IPv4-only.
    pub dual_stack: bool,
    /// The waypoint takes its routes from the Kubernetes API
    /// (`WAYPOINT_ROUTES_FROM=kube`): a fake API server in process
    /// ([`LocalMesh::kube`]) holding the waypoint's Gateway and the mesh's
    /// Services; tests add routes and policies to it. `routes_yaml` is
    /// then unused. Use a mesh whose services name the waypoint by its
    /// Service's VIP ([`crate::config::kube_mesh`]).
    pub kube_routes: bool,
    /// With `kube_routes`: objects (YAML documents with `apiVersion` and
    /// `kind`, e.g. [`crate::config::DEFAULT_KUBE_ROUTES`]) the API server
    /// holds before the waypoint starts.
    pub kube_objects: String,
    /// In-pod mode: the agents capture with eBPF (`cni-node --redirect
    /// ebpf`) instead of NAT rules; each agent pins its programs on a bpf
    /// filesystem mounted under the mesh's directory. No DNS capture.
    pub ebpf: bool,
    /// With `ebpf`: splice app ↔ ztunnel connections inside each pod with
    /// sk_msg (`cni-node --ebpf-splice true`).
    pub ebpf_splice: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mesh_yaml: DEFAULT_MESH.into(),
            routes_yaml: DEFAULT_ROUTES.into(),
            secret_ttl: 86400,
            mode: Mode::Node,
            dns_capture: false,
            dns_upstream: None,
            dual_stack: false,
            kube_routes: false,
            kube_objects: String::new(),
            ebpf: false,
            ebpf_splice: false,
        }
    }
}

/// A running local mesh. Dropping it stops everything and removes every
/// namespace, link and rule it made.
pub struct LocalMesh {
    /// Stops the apps and proxies before the agents and namespaces go.
    ztunnels: Vec<ChildGuard>,
    waypoint: Option<ChildGuard>,
    apps: Vec<NsTask<()>>,
    agents: Vec<Option<ChildGuard>>,
    /// The in-process control plane (xDS and CA).
    pub control_plane: Option<ControlPlane>,
    /// The fake Kubernetes API server (with [`Options::kube_routes`]).
    kube: Option<MeshKube>,
    /// The CA behind the control plane (kept to restart it).
    ca: Arc<LocalCa>,
    /// The mesh config the control plane serves.
    config: ambit_mesh::Config,
    opts: Options,
    bins: Binaries,
    cni: Vec<NodeCni>,
    /// Where configs and logs live.
    pub dir: PathBuf,
    /// The namespaces.
    pub cluster: Cluster,
}

impl LocalMesh {
    /// Builds the cluster, wires every pod through the CNI chain with
    /// cni-node enrolling them (node mode), starts a ztunnel per node, the
    /// waypoint and the app servers. `ztunnel` is the binary (`cni-node`
    /// and `waypoint` are taken from the same directory); `progress` gets
    /// a line per step.
    pub fn start(
        ztunnel: &Path,
        mesh_yaml: &str,
        progress: impl FnMut(&str),
    ) -> anyhow::Result<Self> {
        Self::start_with(ztunnel, mesh_yaml, 86400, progress)
    }

    /// [`LocalMesh::start`] with the certificate lifetime the proxies
    /// request (short lifetimes exercise rotation under traffic).
    pub fn start_with(
        ztunnel: &Path,
        mesh_yaml: &str,
        secret_ttl: u64,
        progress: impl FnMut(&str),
    ) -> anyhow::Result<Self> {
        let opts = Options {
            mesh_yaml: mesh_yaml.into(),
            secret_ttl,
            ..Options::default()
        };
        Self::start_opts(&Binaries::beside(ztunnel)?, opts, progress)
    }

    /// The general form.
    pub fn start_opts(
        bins: &Binaries,
        opts: Options,
        mut progress: impl FnMut(&str),
    ) -> anyhow::Result<Self> {
        let config = ambit_mesh::Config::parse(&opts.mesh_yaml, "mesh config")?;
        check_routes_yaml(&opts.routes_yaml)?;
        if opts.ebpf && (opts.mode != Mode::InPod || opts.dns_capture) {
            anyhow::bail!("eBPF capture needs in-pod mode and no DNS capture");
        }
        progress(&format!(
            "building 2 nodes x {PODS} bare pod namespaces (pod 3 of each stays outside the mesh)"
        ));
        let cluster = Cluster::builder()
            .nodes(2)
            .pods_per_node(PODS)
            .wire_pods(false)
            .ipv6(opts.dual_stack)
            .build()?;
        // Unique per cluster (several meshes may run in one test process).
        let dir = std::env::temp_dir().join(format!("ambit-local-mesh-{}", cluster.id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = Arc::new(LocalCa::generate("cluster.local")?);
        let mut mesh = LocalMesh {
            ztunnels: Vec::new(),
            waypoint: None,
            apps: Vec::new(),
            agents: Vec::new(),
            control_plane: None,
            kube: None,
            ca: ca.clone(),
            config: config.clone(),
            opts: opts.clone(),
            bins: bins.clone(),
            cni: Vec::new(),
            dir,
            cluster,
        };
        std::fs::write(mesh.dir.join("ca.pem"), ca.root_pem())?;
        std::fs::write(mesh.dir.join("ca-key.pem"), ca.key_pem())?;
        std::fs::write(mesh.dir.join("mesh.yaml"), &opts.mesh_yaml)?;
        std::fs::write(mesh.dir.join("waypoint.yaml"), &opts.routes_yaml)?;
        let upstream = opts.dns_upstream.map_or_else(
            || crate::config::DIRECT_SERVER_IP.to_owned(),
            |a| a.ip().to_string(),
        );
        std::fs::write(
            mesh.dir.join("resolv.conf"),
            format!("nameserver {upstream}\noptions timeout:1 attempts:1\n"),
        )?;
        let cp_ip = IpAddr::V4(mesh.cluster.node(0).underlay_ip());
        progress(&format!(
            "control plane in process: delta ADS and the Istio CA on https://{cp_ip}:15012 (tls as istiod.istio-system.svc, trust domain cluster.local)"
        ));
        mesh.control_plane = Some(ControlPlane::start(
            mesh.cluster.node(0).ns(),
            cp_ip,
            ca,
            &config,
        )?);

        for (i, name) in NODES.iter().enumerate() {
            progress(&format!(
                "{name}: `cni-node install` chains istio-cni after ptp + static IPAM; pod records written"
            ));
            let cni = mesh.install_cni(i)?;
            mesh.cni.push(cni);
            mesh.write_records(i)?;
            // ztunnel's own pod first: the plugin skips it, and node mode
            // needs its address and veth before the agent starts.
            mesh.wire(i, 0)?;
        }
        for (i, name) in NODES.iter().enumerate() {
            progress(&format!(
                "{name}: starting cni-node run --mode {} in the node namespace",
                opts.mode.flag()
            ));
            let agent = mesh.spawn_agent(i)?;
            mesh.agents.push(Some(agent));
            mesh.wait_agent(i)?;
        }
        for (i, name) in NODES.iter().enumerate() {
            progress(&format!(
                "{name}: CNI ADD for pods 1-{} (ptp, static, istio-cni), as a runtime would",
                PODS - 1
            ));
            for j in 1..PODS {
                mesh.wire(i, j)?;
            }
        }
        for (i, name) in NODES.iter().enumerate() {
            let want = mesh.expected_enrolled(i);
            wait_metric(
                mesh.cluster.node(i).ns(),
                "ambit_cni_pods_enrolled",
                want as f64,
            )
            .with_context(|| format!("{name}: cni-node did not enrol {want} pods"))?;
            progress(&format!("{name}: cni-node enrolled {want} pods"));
        }
        for (i, name) in NODES.iter().enumerate() {
            progress(&format!(
                "{name}: starting ztunnel in {}",
                mesh.cluster.pod(i, 0).name()
            ));
            let zt = mesh.spawn_ztunnel(i, name)?;
            mesh.ztunnels.push(zt);
        }
        for (i, _) in NODES.iter().enumerate() {
            wait_ready(mesh.cluster.pod(i, 0).ns(), Duration::from_secs(20)).with_context(
                || {
                    format!(
                        "ztunnel on {} did not become ready; see {}",
                        NODES[i],
                        mesh.log_path(i).display()
                    )
                },
            )?;
        }
        if opts.kube_routes {
            progress(&format!(
                "a Kubernetes API server in process on http://{cp_ip}:{}: Gateway default/{}, the mesh's Services",
                kube::PORT,
                kube::GATEWAY_NAME
            ));
            let k = MeshKube::start(
                mesh.cluster.node(0).ns(),
                cp_ip,
                &config,
                &opts.kube_objects,
            )?;
            if let Some(api) = k.api() {
                std::fs::write(mesh.dir.join("kubeconfig"), api.kubeconfig())?;
            }
            mesh.kube = Some(k);
        }
        if let Some((i, j)) = mesh.waypoint_pod() {
            progress(&format!(
                "starting the waypoint in {} ({})",
                mesh.cluster.pod(i, j).name(),
                mesh.cluster.pod(i, j).ip()
            ));
            mesh.waypoint = Some(mesh.spawn_waypoint(i, j)?);
            wait_ready(mesh.cluster.pod(i, j).ns(), Duration::from_secs(20)).with_context(
                || {
                    format!(
                        "the waypoint did not become ready; see {}",
                        mesh.waypoint_log_path().display()
                    )
                },
            )?;
        }
        progress(
            "starting apps: productpage v1/v2 (TCP), reviews v1/v2 (HTTP), a no-mesh baseline server (node-b)",
        );
        let direct = mesh.cluster.pod(1, 3);
        mesh.apps
            .push(tcpapp::app_server(direct, 9080, "direct-server".into())?);
        for w in &config.workloads {
            let Some((i, j)) = mesh.locate(w.addresses.first().copied()) else {
                continue;
            };
            let pod = mesh.cluster.pod(i, j);
            match w.canonical_name.as_str() {
                "productpage" => mesh
                    .apps
                    .push(tcpapp::app_server(pod, 9080, w.name.clone())?),
                "reviews" => mesh.apps.push(httpapp::serve(pod, 9080, w.name.clone())?),
                _ => {}
            }
        }
        Ok(mesh)
    }

    /// The mesh CA's root certificate file (`ca.pem` in [`dir`](Self::dir)):
    /// what the proxies get as `XDS_ROOT_CA` and `CA_ROOT_CA`.
    pub fn root_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The fake Kubernetes API server the waypoint watches (with
    /// [`Options::kube_routes`]).
    pub fn kube(&self) -> Option<&crate::kubeapi::FakeApi> {
        self.kube.as_ref().and_then(MeshKube::api)
    }

    /// The capture mode.
    pub fn mode(&self) -> Mode {
        self.opts.mode
    }

    /// `(node, pod)` of the first waypoint a service names, if any.
    pub fn waypoint_pod(&self) -> Option<(usize, usize)> {
        let ips = waypoint_ips(&self.config);
        ips.into_iter().find_map(|ip| self.locate(Some(ip)))
    }

    /// The pod-record directory of node `i`'s agent (edit it to change
    /// what the agent enrols).
    pub fn pod_dir(&self, i: usize) -> &Path {
        &self.cni[i].pod_dir
    }

    /// Reads one sample of a Prometheus metric from node `i`'s agent.
    pub fn agent_metric(&self, i: usize, name: &str) -> Option<f64> {
        read_metric(self.cluster.node(i).ns(), name)
    }

    fn locate(&self, ip: Option<IpAddr>) -> Option<(usize, usize)> {
        let ip = ip?;
        (0..2)
            .flat_map(|i| (0..PODS).map(move |j| (i, j)))
            .find(|&(i, j)| {
                let pod = self.cluster.pod(i, j);
                IpAddr::V4(pod.ip()) == ip || pod.ip6().map(IpAddr::V6) == Some(ip)
            })
    }

    /// Stops the control plane and starts a fresh one on the same address
    /// with the same CA and config: its store starts empty of history, so
    /// the ztunnels reconnect and resync.
    pub fn restart_control_plane(&mut self) -> anyhow::Result<()> {
        self.control_plane = None;
        let ip = IpAddr::V4(self.cluster.node(0).underlay_ip());
        self.control_plane = Some(ControlPlane::start(
            self.cluster.node(0).ns(),
            ip,
            self.ca.clone(),
            &self.config,
        )?);
        Ok(())
    }

    /// Stops the control plane (the ztunnels keep their last state).
    pub fn stop_control_plane(&mut self) {
        self.control_plane = None;
    }

    /// The pod running `sleep` (node a, pod 1).
    pub fn sleep(&self) -> &Pod {
        self.cluster.pod(0, 1)
    }

    /// A client outside the mesh (node a, pod 3), for the no-mesh baseline.
    pub fn direct_client(&self) -> &Pod {
        self.cluster.pod(0, 3)
    }

    /// The first access-log line `found` accepts (node name, line),
    /// waiting up to 4 s: lines are written when connections end.
    pub fn wait_access_log(
        &self,
        found: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> Option<(String, serde_json::Value)> {
        for _ in 0..40 {
            let hit = self.access_logs().into_iter().find(|(n, v)| found(n, v));
            if hit.is_some() {
                return hit;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Access-log lines of every ztunnel (by node name) and of the
    /// waypoint (`waypoint`), as JSON values.
    pub fn access_logs(&self) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        let logs = NODES
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), self.log_path(i)))
            .chain([("waypoint".to_string(), self.waypoint_log_path())]);
        for (node, path) in logs {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                    && v["target"] == "access"
                {
                    out.push((node.to_string(), v));
                }
            }
        }
        out
    }

    /// Stops the proxies (SIGTERM, then kill), apps, the control plane,
    /// then the agents (SIGTERM: they remove what they applied).
    pub fn stop(&mut self) {
        for z in self.ztunnels.iter_mut().chain(self.waypoint.as_mut()) {
            let pid = z.child().id();
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for z in self.ztunnels.iter_mut().chain(self.waypoint.as_mut()) {
            while Instant::now() < deadline && matches!(z.child().try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.ztunnels.clear();
        self.waypoint = None;
        self.apps.clear();
        self.control_plane = None;
        self.kube = None;
        for a in self.agents.iter_mut().flatten() {
            let pid = a.child().id();
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for a in self.agents.iter_mut().flatten() {
            while Instant::now() < deadline && matches!(a.child().try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.agents.clear();
        if self.opts.ebpf {
            for i in 0..self.cni.len() {
                // The agents removed their pins; the mounts go too.
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(self.bpf_dir(i))
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }

    /// Node `i`'s bpf filesystem (with [`Options::ebpf`]); the agent pins
    /// under `ambit/` in it.
    pub fn bpf_dir(&self, i: usize) -> PathBuf {
        self.dir
            .join(format!("bpf-{}", NODES.get(i).copied().unwrap_or("x")))
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("AMBIT_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
