//! A whole ambient mesh on one machine: nodes and pods in network
//! namespaces wired by a real CNI chain (Debian's `ptp` + `static`, then
//! Ambit's `istio-cni` plugin), a `cni-node` agent per node capturing
//! enrolled pods (node or in-pod mode), a `ztunnel` per node, a `waypoint`,
//! an in-process control plane, and apps. Backs the `local-mesh` example
//! and the end-to-end tests.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_identity::LocalCa;
use ambit_netns::harness::{ChildGuard, Cluster, Pod};
use ambit_netns::{NetNs, NsTask};
use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The default mesh: `sleep` on node a; `productpage` v1 on node b and v2
/// on node a behind one VIP (L4 only); `reviews` v1 on node b and v2 on
/// node a behind another VIP, with a waypoint (node b) in front. Pod
/// addresses follow the harness plan (pod j of node i is 10.244.i.(j+2)):
/// node a: ztunnel .0.2, sleep .0.3, productpage-v2 .0.4, a client
/// outside the mesh .0.5, reviews-v2 .0.6;
/// node b: ztunnel .1.2, productpage-v1 .1.3, reviews-v1 .1.4, a server
/// outside the mesh .1.5, the waypoint .1.6 (not captured, as Istio's
/// waypoints are not).
pub const DEFAULT_MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/sleep
  name: sleep
  namespace: default
  serviceAccount: sleep
  workloadIps: ["10.244.0.3"]
  protocol: HBONE
  node: node-a
  canonicalName: sleep
- uid: cluster1//v1/Pod/default/productpage-v2
  name: productpage-v2
  namespace: default
  serviceAccount: productpage
  workloadIps: ["10.244.0.4"]
  protocol: HBONE
  node: node-a
  canonicalName: productpage
  canonicalRevision: v2
  services: {"default/productpage.default.svc.cluster.local": {9080: 9080}}
- uid: cluster1//v1/Pod/default/productpage-v1
  name: productpage-v1
  namespace: default
  serviceAccount: productpage
  workloadIps: ["10.244.1.3"]
  protocol: HBONE
  node: node-b
  canonicalName: productpage
  canonicalRevision: v1
  services: {"default/productpage.default.svc.cluster.local": {9080: 9080}}
- uid: cluster1//v1/Pod/default/reviews-v1
  name: reviews-v1
  namespace: default
  serviceAccount: reviews
  workloadIps: ["10.244.1.4"]
  protocol: HBONE
  node: node-b
  canonicalName: reviews
  canonicalRevision: v1
  services: {"default/reviews.default.svc.cluster.local": {9080: 9080}}
- uid: cluster1//v1/Pod/default/reviews-v2
  name: reviews-v2
  namespace: default
  serviceAccount: reviews
  workloadIps: ["10.244.0.6"]
  protocol: HBONE
  node: node-a
  canonicalName: reviews
  canonicalRevision: v2
  services: {"default/reviews.default.svc.cluster.local": {9080: 9080}}
- uid: cluster1//v1/Pod/default/waypoint
  name: waypoint
  namespace: default
  serviceAccount: waypoint
  workloadIps: ["10.244.1.6"]
  protocol: HBONE
  node: node-b
  canonicalName: waypoint
services:
- name: productpage
  namespace: default
  hostname: productpage.default.svc.cluster.local
  vips: ["/10.96.0.20"]
  ports: {9080: 9080}
- name: reviews
  namespace: default
  hostname: reviews.default.svc.cluster.local
  vips: ["/10.96.0.30"]
  ports: {9080: 9080}
  waypoint: {destination: "/10.244.1.6", hboneMtlsPort: 15008}
"#;

/// The waypoint's routing and L7 policy for `reviews` (ambit-l7proxy's
/// YAML): `x-version: v2` → v2; `/v1…` → v1, `/v2…` → v2; `/split…` 90/10
/// between v1 and v2; `/flaky…` retried on 5xx; `/hang…` times out after
/// 500 ms; anything else round robin; `DELETE /admin…` denied.
pub const DEFAULT_ROUTES: &str = r#"
outlierDetection: {consecutiveErrors: 0}
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http}
  routes:
  - name: header-v2
    match: [{headers: {x-version: {exact: v2}}}]
    backends: [{subset: {version: v2}}]
  - name: v1
    match: [{path: {prefix: /v1}}]
    backends: [{subset: {version: v1}}]
  - name: v2
    match: [{path: {prefix: /v2}}]
    backends: [{subset: {version: v2}}]
  - name: split
    match: [{path: {prefix: /split}}]
    backends:
    - {subset: {version: v1}, weight: 90}
    - {subset: {version: v2}, weight: 10}
  - name: flaky
    match: [{path: {prefix: /flaky}}]
    retries: {attempts: 2, retryOn: [5xx]}
  - name: hang
    match: [{path: {prefix: /hang}}]
    timeout: 500ms
  - name: default
  policies:
  - name: deny-admin-delete
    action: DENY
    rules: [{to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]}]
"#;

/// The `reviews` service VIP (behind the waypoint) of the default mesh.
pub const REVIEWS_VIP: &str = "10.96.0.30:9080";

/// The service VIP of the default mesh.
pub const VIP: &str = "10.96.0.20:9080";

/// A server outside the mesh (node b, pod 3), for the no-mesh baseline.
pub const DIRECT_SERVER: &str = "10.244.1.5:9080";

/// The control plane: a delta ADS server and an Istio CA server, in
/// process, listening on node a's underlay address (reachable from every
/// ztunnel netns through the nodes' routes).
pub struct ControlPlane {
    /// The xDS resources; change them to push updates.
    pub store: ambit_xds::Store,
    /// `http://ip:15010`.
    pub xds_address: String,
    /// `http://ip:15012`.
    pub ca_address: String,
    stop: Arc<tokio::sync::Notify>,
    task: Option<NsTask<()>>,
}

impl ControlPlane {
    /// Starts both servers inside `ns`, bound to `ip`.
    pub fn start(
        ns: &NetNs,
        ip: IpAddr,
        ca: Arc<LocalCa>,
        config: &ambit_mesh::Config,
    ) -> anyhow::Result<Self> {
        let store = ambit_xds::Store::new();
        publish(&store, config);
        let xds_l = ns.tcp_listener(SocketAddr::new(ip, 15010))?;
        let ca_l = ns.tcp_listener(SocketAddr::new(ip, 15012))?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let (st, sp) = (store.clone(), stop.clone());
        let task = ns.spawn_async(move || async move {
            let listen = |l: std::net::TcpListener| {
                let _ = l.set_nonblocking(true);
                tokio::net::TcpListener::from_std(l)
            };
            let (Ok(xl), Ok(cl)) = (listen(xds_l), listen(ca_l)) else {
                return;
            };
            let stop = tokio::sync::watch::channel(false);
            let (tx, rx) = stop;
            let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let ads = tokio::spawn(ambit_xds::AdsServer::new(st).serve(xl, wait(rx.clone())));
            let ca = tokio::spawn(ambit_identity::CaServer::new(ca).serve(cl, wait(rx)));
            sp.notified().await;
            let _ = tx.send(true);
            let _ = ads.await;
            let _ = ca.await;
        })?;
        Ok(Self {
            store,
            xds_address: format!("http://{}", SocketAddr::new(ip, 15010)),
            ca_address: format!("http://{}", SocketAddr::new(ip, 15012)),
            stop,
            task: Some(task),
        })
    }

    /// Stops both servers (connected clients see their streams end).
    pub fn stop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.task.take() {
            t.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Puts every workload, service and policy of `config` in the store.
pub fn publish(store: &ambit_xds::Store, config: &ambit_mesh::Config) {
    use ambit_mesh::xds::encode;
    for w in &config.workloads {
        store.insert_message(w.uid.clone(), &encode::workload(w));
    }
    for svc in &config.services {
        store.insert_message(svc.key(), &encode::service(svc));
    }
    for p in &config.policies {
        store.insert_message(p.key(), &encode::policy(p));
    }
}

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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mesh_yaml: DEFAULT_MESH.into(),
            routes_yaml: DEFAULT_ROUTES.into(),
            secret_ttl: 86400,
            mode: Mode::Node,
        }
    }
}

/// The binaries the mesh runs: `ztunnel`, and beside it `cni-node` and
/// `waypoint` (same build directory).
#[derive(Debug, Clone)]
pub struct Binaries {
    /// ztunnel.
    pub ztunnel: PathBuf,
    /// cni-node (the CNI plugin and node agent).
    pub cni_node: PathBuf,
    /// waypoint.
    pub waypoint: PathBuf,
}

impl Binaries {
    /// `ztunnel` and its siblings; fails naming what to build if one is
    /// missing.
    pub fn beside(ztunnel: &Path) -> anyhow::Result<Self> {
        let dir = ztunnel.parent().unwrap_or(Path::new("."));
        let b = Self {
            ztunnel: ztunnel.to_path_buf(),
            cni_node: dir.join("cni-node"),
            waypoint: dir.join("waypoint"),
        };
        for p in [&b.ztunnel, &b.cni_node, &b.waypoint] {
            if !p.is_file() {
                bail!(
                    "{} not found: build it first (cargo build -p ztunnel -p cni-node -p waypoint, with --release if the others are)",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

/// One node's CNI setup: the chained conflist `cni-node install` wrote and
/// where plugins are found.
struct NodeCni {
    conflist: serde_json::Value,
    cni_path: String,
    run_dir: PathBuf,
    pod_dir: PathBuf,
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

/// Node names, in cluster order.
pub const NODES: [&str; 2] = ["node-a", "node-b"];

/// Pods per node in the harness plan.
const PODS: usize = 5;

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
        progress(&format!(
            "building 2 nodes x {PODS} bare pod namespaces (pod 3 of each stays outside the mesh)"
        ));
        let cluster = Cluster::builder()
            .nodes(2)
            .pods_per_node(PODS)
            .wire_pods(false)
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
        let cp_ip = IpAddr::V4(mesh.cluster.node(0).underlay_ip());
        progress(&format!(
            "control plane in process: delta ADS on {cp_ip}:15010, Istio CA on {cp_ip}:15012 (trust domain cluster.local)"
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
            .push(app_server(direct, 9080, "direct-server".into())?);
        for w in &config.workloads {
            let Some((i, j)) = mesh.locate(w.addresses.first().copied()) else {
                continue;
            };
            let pod = mesh.cluster.pod(i, j);
            match w.canonical_name.as_str() {
                "productpage" => mesh.apps.push(app_server(pod, 9080, w.name.clone())?),
                "reviews" => mesh
                    .apps
                    .push(crate::httpapp::serve(pod, 9080, w.name.clone())?),
                _ => {}
            }
        }
        Ok(mesh)
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

    /// The waypoint's log.
    pub fn waypoint_log_path(&self) -> PathBuf {
        self.dir.join("waypoint.log")
    }

    /// The waypoint process's pid.
    pub fn waypoint_pid(&mut self) -> Option<u32> {
        self.waypoint.as_mut().map(|w| w.child().id())
    }

    /// Pods of node `i` the agent should enrol.
    fn expected_enrolled(&self, i: usize) -> usize {
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
    fn install_cni(&self, i: usize) -> anyhow::Result<NodeCni> {
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
        let gw = self.cluster.node(i).pod_gateway();
        let primary = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "localmesh",
            "type": "ptp",
            "ipMasq": false,
            "ipam": {"type": "static", "routes": [{"dst": "0.0.0.0/0", "gw": gw.to_string()}]},
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
    fn write_records(&self, i: usize) -> anyhow::Result<()> {
        let wp = waypoint_ips(&self.config);
        for j in 0..PODS {
            let pod = self.cluster.pod(i, j);
            let ip = IpAddr::V4(pod.ip());
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
                "ips": [ip], "node": NODES[i], "labels": labels,
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
    fn wire(&self, i: usize, j: usize) -> anyhow::Result<()> {
        let pod = self.cluster.pod(i, j);
        let cni = self.cni.get(i).context("cni not installed")?;
        let gw = self.cluster.node(i).pod_gateway();
        let mut conflist = cni.conflist.clone();
        conflist["plugins"][0]["ipam"]["addresses"] =
            serde_json::json!([{"address": format!("{}/24", pod.ip()), "gateway": gw.to_string()}]);
        let rt = ambit_cni::runtime::Runtime {
            cni_path: cni.cni_path.clone(),
            netns: Some(self.cluster.node(i).ns()),
        };
        rt.add(&conflist, &self.sandbox(i, j)?)
            .with_context(|| format!("CNI ADD for {}", pod.name()))?;
        Ok(())
    }

    fn spawn_agent(&self, i: usize) -> anyhow::Result<ChildGuard> {
        let cni = self.cni.get(i).context("cni not installed")?;
        let node = self.cluster.node(i);
        let zt = self.cluster.pod(i, 0);
        let log = std::fs::File::create(self.agent_log_path(i))?;
        let mut cmd = Command::new(&self.bins.cni_node);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .args(["run", "--mode", self.opts.mode.flag()])
            .args(["--pod-source", "dir", "--node-name", NODES[i]])
            .arg("--pod-dir")
            .arg(&cni.pod_dir)
            .arg("--run-dir")
            .arg(&cni.run_dir)
            .args(["--poll-ms", "100", "--metrics-addr", "127.0.0.1:15014"]);
        match self.opts.mode {
            Mode::Node => {
                cmd.args(["--tunnel", "vxlan"])
                    .arg("--ztunnel-netns")
                    .arg(format!("/run/netns/{}", zt.name()))
                    .args(["--ztunnel-ip", &zt.ip().to_string()])
                    .args(["--host-ip", &node.pod_gateway().to_string()]);
            }
            Mode::InPod => {
                cmd.arg("--zds-socket").arg(self.zds_socket(i));
            }
        }
        cmd.stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        Ok(ChildGuard::new(node.ns().spawn_command(&mut cmd)?))
    }

    fn wait_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let socket = self.cni[i].run_dir.join("pluginevent.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Some(Some(a)) = self.agents.get_mut(i)
                && let Ok(Some(status)) = a.child().try_wait()
            {
                bail!(
                    "cni-node on {} exited ({status}); see {}",
                    NODES[i],
                    self.agent_log_path(i).display()
                );
            }
            if Instant::now() > deadline {
                bail!("cni-node on {} did not start", NODES[i]);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The cni-node agent log of node `i`.
    pub fn agent_log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("cni-node-{}.log", NODES[i]))
    }

    fn zds_socket(&self, i: usize) -> PathBuf {
        self.dir.join(NODES[i]).join("ztunnel.sock")
    }

    /// Kills node `i`'s cni-node agent (SIGKILL: no cleanup) and starts a
    /// new one, returning once it has reconciled every pod again.
    pub fn restart_agent(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_agent(i);
        self.start_agent(i)?;
        let want = self.expected_enrolled(i);
        wait_metric(
            self.cluster.node(i).ns(),
            "ambit_cni_pods_enrolled",
            want as f64,
        )
        .with_context(|| format!("restarted cni-node on {} did not reconcile", NODES[i]))
    }

    /// Kills node `i`'s cni-node agent with SIGKILL (what it applied stays).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(a) = self.agents.get_mut(i) {
            *a = None;
        }
        let _ = std::fs::remove_file(self.cni[i].run_dir.join("pluginevent.sock"));
    }

    /// Starts node `i`'s cni-node agent; returns once it accepts plugin
    /// events (its start-up reconcile is done by then).
    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let agent = self.spawn_agent(i)?;
        self.agents[i] = Some(agent);
        self.wait_agent(i)
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
            .find(|&(i, j)| IpAddr::V4(self.cluster.pod(i, j).ip()) == ip)
    }

    /// The ztunnel log of node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("ztunnel-{}.log", NODES[i]))
    }

    fn spawn_ztunnel(&self, i: usize, node: &str) -> anyhow::Result<ChildGuard> {
        let log = std::fs::File::create(self.log_path(i))?;
        let pod = self.cluster.pod(i, 0);
        let mut cmd = self.proxy_command(&self.bins.ztunnel, pod)?;
        cmd.env("NODE_NAME", node)
            .env("POD_NAME", format!("ztunnel-{node}"))
            .env("POD_NAMESPACE", "istio-system")
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.opts.mode == Mode::InPod {
            cmd.env("INPOD_ENABLED", "true")
                .env("INPOD_UDS", self.zds_socket(i));
        }
        Ok(pod.spawn(&mut cmd)?)
    }

    fn spawn_waypoint(&self, i: usize, j: usize) -> anyhow::Result<ChildGuard> {
        let log = std::fs::File::create(self.waypoint_log_path())?;
        let pod = self.cluster.pod(i, j);
        let w = self
            .config
            .workloads
            .iter()
            .find(|w| w.addresses.contains(&IpAddr::V4(pod.ip())))
            .context("the waypoint has no workload entry")?;
        let mut cmd = self.proxy_command(&self.bins.waypoint, pod)?;
        cmd.env("NODE_NAME", NODES[i])
            .env("POD_NAME", &w.name)
            .env("POD_NAMESPACE", &w.namespace)
            .env("SERVICE_ACCOUNT", &w.service_account)
            .env("WAYPOINT_CONFIG", self.dir.join("waypoint.yaml"))
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(pod.spawn(&mut cmd)?)
    }

    /// The environment both proxies share: control plane, identity, logs.
    fn proxy_command(&self, bin: &Path, pod: &Pod) -> anyhow::Result<Command> {
        let cp = self
            .control_plane
            .as_ref()
            .context("control plane not started")?;
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("INSTANCE_IP", pod.ip().to_string())
            .env("XDS_ADDRESS", &cp.xds_address)
            .env("CA_ADDRESS", &cp.ca_address)
            .env("LOG_FORMAT", "json")
            .env("DRAIN_DURATION", "1")
            .env("RUST_LOG", "info")
            .env("SECRET_TTL", self.opts.secret_ttl.to_string())
            .stdin(Stdio::null());
        Ok(cmd)
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

    /// Kills node `i`'s ztunnel (SIGKILL: no drain) and starts a new one,
    /// returning once it is ready again.
    pub fn restart_ztunnel(&mut self, i: usize) -> anyhow::Result<()> {
        // The old process goes first: the new one binds the same ports.
        drop(self.ztunnels.remove(i));
        let new = self.spawn_ztunnel(i, NODES[i])?;
        self.ztunnels.insert(i, new);
        wait_ready(self.cluster.pod(i, 0).ns(), Duration::from_secs(20))
            .with_context(|| format!("restarted ztunnel on {} did not become ready", NODES[i]))
    }

    /// The ztunnel processes' pids, in node order.
    pub fn ztunnel_pids(&mut self) -> Vec<u32> {
        self.ztunnels.iter_mut().map(|z| z.child().id()).collect()
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

/// Addresses of the waypoints services name.
fn waypoint_ips(config: &ambit_mesh::Config) -> Vec<IpAddr> {
    config
        .services
        .iter()
        .filter_map(|s| s.waypoint.as_ref())
        .filter_map(|g| match g {
            ambit_mesh::model::GatewayAddress::Address { ip, .. } => Some(*ip),
            ambit_mesh::model::GatewayAddress::Hostname { .. } => None,
        })
        .collect()
}

/// A pod's uid in the local mesh (its namespace name).
fn pod_uid(pod: &Pod) -> String {
    format!("uid-{}", pod.name())
}

/// The waypoint rejects a bad routes file at start; checking that it is
/// YAML here gives a clearer error before anything is built.
fn check_routes_yaml(yaml: &str) -> anyhow::Result<()> {
    serde_yaml_ng::from_str::<serde_json::Value>(yaml).context("the waypoint routes YAML")?;
    Ok(())
}

/// Reads one metric sample from `127.0.0.1:15014/metrics` in `ns`.
fn read_metric(ns: &NetNs, name: &str) -> Option<f64> {
    let mut s = ns.tcp_connect("127.0.0.1:15014".parse().ok()?).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

/// Waits until the agent in `ns` reports `want` for metric `name`.
fn wait_metric(ns: &NetNs, name: &str, want: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        last = read_metric(ns, name);
        if last == Some(want) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{name} is {last:?}, want {want}")
}

/// Polls ztunnel's readiness endpoint from inside its namespace.
fn wait_ready(ns: &NetNs, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(mut s) = ns.tcp_connect("127.0.0.1:15021".parse()?) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ =
                s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            if r.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("not ready after {timeout:?}")
}

/// A request/response server: for each connection, reads requests of the
/// form `<len>\n<bytes>` and answers `<name> <len>\n<len bytes>`; a `0`
/// request starts a bulk echo until EOF.
fn app_server(pod: &Pod, port: u16, name: String) -> anyhow::Result<NsTask<()>> {
    let listener = pod
        .ns()
        .tcp_listener(SocketAddr::new(IpAddr::V4(pod.ip()), port))?;
    let name = Arc::new(name);
    Ok(pod.spawn_async(move || async move {
        let _ = listener.set_nonblocking(true);
        let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        while let Ok((mut s, peer)) = l.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 64 * 1024];
                // Greeting: who answered and who it saw (the original source?).
                let hello = format!("{name} saw source {}\n", peer.ip());
                if s.write_all(hello.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    })?)
}

/// Figures for one way of reaching the service.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Median round trip.
    pub p50: Duration,
    /// 99th percentile round trip.
    pub p99: Duration,
    /// Bulk throughput, MB/s.
    pub mbps: f64,
    /// Greetings seen (which backend answered, and the source it saw).
    pub greetings: Vec<String>,
}

/// From `pod`: `n` new connections to `to`, each reading the greeting and
/// echoing 1 KiB (latency per connection), then one bulk transfer of
/// `bulk` bytes (throughput).
pub fn drive(pod: &Pod, to: SocketAddr, n: usize, bulk: usize) -> anyhow::Result<Figures> {
    let task = pod.spawn_async(move || async move {
        let mut f = Figures::default();
        let mut lat = Vec::with_capacity(n);
        let msg = vec![7u8; 1024];
        for _ in 0..n {
            f.requests += 1;
            let t = Instant::now();
            let r: std::io::Result<String> = async {
                let mut s = tokio::net::TcpStream::connect(to).await?;
                s.set_nodelay(true)?;
                let greeting = read_line(&mut s).await?;
                s.write_all(&msg).await?;
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).await?;
                if back != msg {
                    return Err(std::io::Error::other("echo differs"));
                }
                Ok(greeting)
            }
            .await;
            match tokio::time::timeout(Duration::from_secs(5), async { r }).await {
                Ok(Ok(g)) => {
                    lat.push(t.elapsed());
                    if !f.greetings.contains(&g) {
                        f.greetings.push(g);
                    }
                }
                _ => f.errors += 1,
            }
        }
        lat.sort();
        if !lat.is_empty() {
            f.p50 = lat[lat.len() / 2];
            f.p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
        }
        if bulk > 0 {
            let t = Instant::now();
            let r: std::io::Result<()> = async {
                let s = tokio::net::TcpStream::connect(to).await?;
                let (mut rd, mut wr) = s.into_split();
                let _ = read_line(&mut rd).await?;
                let writer = tokio::spawn(async move {
                    let chunk = vec![1u8; 256 * 1024];
                    let mut left = bulk;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        wr.write_all(&chunk[..n]).await?;
                        left -= n;
                    }
                    wr.shutdown().await
                });
                let mut got = 0usize;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let k = rd.read(&mut buf).await?;
                    if k == 0 {
                        break;
                    }
                    got += k;
                }
                writer.await.map_err(std::io::Error::other)??;
                if got != bulk {
                    return Err(std::io::Error::other(format!(
                        "echoed {got} of {bulk} bytes"
                    )));
                }
                Ok(())
            }
            .await;
            match r {
                Ok(()) => f.mbps = bulk as f64 / t.elapsed().as_secs_f64() / 1e6,
                Err(_) => f.errors += 1,
            }
        }
        f
    })?;
    Ok(task.join())
}

async fn read_line<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if r.read(&mut b).await? == 0 {
            return Err(std::io::Error::other("closed before greeting"));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 256 {
            return Err(std::io::Error::other("greeting too long"));
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Sanity check for callers: root, and the tools the mesh needs.
pub fn preflight() -> anyhow::Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|r| r.split_whitespace().next().unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!("run as root: the local mesh builds network namespaces and kernel rules");
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            bail!("`{tool}` is missing: install iproute2 and nftables (make deps)");
        }
    }
    Ok(())
}

/// Resident memory of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// 1-byte request/response round trips on one open connection: sorted.
pub fn rtt_1byte(pod: &Pod, to: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    let task = pod.spawn_async(move || async move {
        let mut s = tokio::net::TcpStream::connect(to).await?;
        s.set_nodelay(true)?;
        read_line(&mut s).await?;
        let mut v = Vec::with_capacity(n);
        let mut b = [0u8; 1];
        for _ in 0..n {
            let t = Instant::now();
            s.write_all(b"x").await?;
            s.read_exact(&mut b).await?;
            v.push(t.elapsed());
        }
        v.sort();
        std::io::Result::Ok(v)
    })?;
    Ok(task.join()?)
}

/// New connections per second, each with a greeting read and a 1-byte echo,
/// for `secs` seconds from one client.
pub fn conn_rate(pod: &Pod, to: SocketAddr, secs: f64) -> anyhow::Result<f64> {
    let task = pod.spawn_async(move || async move {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            let mut s = tokio::net::TcpStream::connect(to).await?;
            s.set_nodelay(true)?;
            read_line(&mut s).await?;
            s.write_all(b"x").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            n += 1;
        }
        std::io::Result::Ok(n as f64 / start.elapsed().as_secs_f64())
    })?;
    Ok(task.join()?)
}

/// Opens `n` connections from `pod` to `to` that stay idle until the
/// returned sender is dropped.
pub fn hold_idle(
    pod: &Pod,
    to: SocketAddr,
    n: usize,
) -> anyhow::Result<(std::sync::mpsc::Sender<()>, usize)> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (otx, orx) = std::sync::mpsc::channel::<usize>();
    let task = pod.spawn_async(move || async move {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            if let Ok(mut s) = tokio::net::TcpStream::connect(to).await
                && read_line(&mut s).await.is_ok()
            {
                conns.push(s);
            }
        }
        let _ = otx.send(conns.len());
        // Idle until told to stop (this thread runs only this task).
        let _ = rx.recv();
        drop(conns);
    })?;
    std::mem::forget(task);
    let opened = orx
        .recv_timeout(Duration::from_secs(60))
        .context("opening idle connections")?;
    Ok((tx, opened))
}
