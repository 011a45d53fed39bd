//! A whole ambient mesh on one machine: nodes and pods in network
//! namespaces, node-level capture, a ztunnel process per node, and apps.
//! Backs the `local-mesh` example and the end-to-end tests.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_identity::LocalCa;
use ambit_netns::harness::{ChildGuard, Cluster, Pod};
use ambit_netns::{NetNs, NsTask};
use ambit_redirect::Backend;
use ambit_redirect::profiles::{self, NodeConfig, PodRef, ZtunnelConfig};
use ambit_tunnel::IstioTunnels;
use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The default mesh: `sleep` on node a; `productpage` v1 on node b and v2
/// on node a behind one VIP. Pod addresses follow the harness plan:
/// node a: ztunnel 10.244.0.2, sleep .0.3, productpage-v2 .0.4;
/// node b: ztunnel 10.244.1.2, productpage-v1 .1.3.
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
services:
- name: productpage
  namespace: default
  hostname: productpage.default.svc.cluster.local
  vips: ["/10.96.0.20"]
  ports: {9080: 9080}
"#;

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

/// A running local mesh. Dropping it stops everything and removes every
/// namespace, link and rule it made.
pub struct LocalMesh {
    /// Stops the apps and ztunnels before the namespaces go.
    ztunnels: Vec<ChildGuard>,
    apps: Vec<NsTask<()>>,
    /// The in-process control plane (xDS and CA).
    pub control_plane: Option<ControlPlane>,
    /// The CA behind the control plane (kept to restart it).
    ca: Arc<LocalCa>,
    /// The mesh config the control plane serves.
    config: ambit_mesh::Config,
    /// Certificate lifetime the ztunnels ask for, seconds.
    secret_ttl: u64,
    /// The ztunnel binary.
    bin: PathBuf,
    /// Where configs and logs live.
    pub dir: PathBuf,
    /// The namespaces.
    pub cluster: Cluster,
}

/// Node names, in cluster order.
pub const NODES: [&str; 2] = ["node-a", "node-b"];

impl LocalMesh {
    /// Builds the cluster, applies capture, starts a ztunnel per node and
    /// the app servers. `ztunnel` is the binary; `progress` gets a line per step.
    pub fn start(
        ztunnel: &Path,
        mesh_yaml: &str,
        progress: impl FnMut(&str),
    ) -> anyhow::Result<Self> {
        Self::start_with(ztunnel, mesh_yaml, 86400, progress)
    }

    /// [`LocalMesh::start`] with the certificate lifetime the ztunnels
    /// request (short lifetimes exercise rotation under traffic).
    pub fn start_with(
        ztunnel: &Path,
        mesh_yaml: &str,
        secret_ttl: u64,
        mut progress: impl FnMut(&str),
    ) -> anyhow::Result<Self> {
        let config = ambit_mesh::Config::parse(mesh_yaml, "mesh config")?;
        progress(
            "building 2 nodes x 4 pods in network namespaces (pod 3 of each stays outside the mesh)",
        );
        let cluster = Cluster::builder().nodes(2).pods_per_node(4).build()?;
        // Unique per cluster (several meshes may run in one test process).
        let dir = std::env::temp_dir().join(format!("ambit-local-mesh-{}", cluster.id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = Arc::new(LocalCa::generate("cluster.local")?);
        let mut mesh = LocalMesh {
            ztunnels: Vec::new(),
            apps: Vec::new(),
            control_plane: None,
            ca: ca.clone(),
            config: config.clone(),
            secret_ttl,
            bin: ztunnel.to_path_buf(),
            dir,
            cluster,
        };
        std::fs::write(mesh.dir.join("ca.pem"), ca.root_pem())?;
        std::fs::write(mesh.dir.join("ca-key.pem"), ca.key_pem())?;
        std::fs::write(mesh.dir.join("mesh.yaml"), mesh_yaml)?;
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
                "{name}: Geneve-style tunnels (VXLAN here), node-level capture, enrol pods"
            ));
            let enrol: Vec<usize> = config
                .workloads
                .iter()
                .filter(|w| w.node == *name)
                .filter_map(|w| {
                    (1..3).find(|&j| {
                        w.addresses
                            .contains(&IpAddr::V4(mesh.cluster.pod(i, j).ip()))
                    })
                })
                .collect();
            capture(&mesh.cluster, i, &enrol)?;
            progress(&format!(
                "{name}: starting ztunnel in {}",
                mesh.cluster.pod(i, 0).name()
            ));
            let zt = mesh.spawn_ztunnel(ztunnel, i, name)?;
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
        progress(
            "starting apps: productpage-v1 (node-b), productpage-v2 (node-a), a no-mesh baseline server (node-b)",
        );
        let direct = mesh.cluster.pod(1, 3);
        mesh.apps
            .push(app_server(direct, 9080, "direct-server".into())?);
        for w in &config.workloads {
            if w.canonical_name != "productpage" {
                continue;
            }
            if let Some((i, j)) = mesh.locate(w.addresses.first().copied()) {
                let name = w.name.clone();
                let pod = mesh.cluster.pod(i, j);
                mesh.apps.push(app_server(pod, 9080, name)?);
            }
        }
        Ok(mesh)
    }

    fn locate(&self, ip: Option<IpAddr>) -> Option<(usize, usize)> {
        let ip = ip?;
        (0..2)
            .flat_map(|i| (0..3).map(move |j| (i, j)))
            .find(|&(i, j)| IpAddr::V4(self.cluster.pod(i, j).ip()) == ip)
    }

    /// The ztunnel log of node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("ztunnel-{}.log", NODES[i]))
    }

    fn spawn_ztunnel(&self, bin: &Path, i: usize, node: &str) -> anyhow::Result<ChildGuard> {
        let log = std::fs::File::create(self.log_path(i))?;
        let pod = self.cluster.pod(i, 0);
        let cp = self
            .control_plane
            .as_ref()
            .context("control plane not started")?;
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NODE_NAME", node)
            .env("POD_NAME", format!("ztunnel-{node}"))
            .env("POD_NAMESPACE", "istio-system")
            .env("INSTANCE_IP", pod.ip().to_string())
            .env("XDS_ADDRESS", &cp.xds_address)
            .env("CA_ADDRESS", &cp.ca_address)
            .env("LOG_FORMAT", "json")
            .env("DRAIN_DURATION", "1")
            .env("RUST_LOG", "info")
            .env("SECRET_TTL", self.secret_ttl.to_string())
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        Ok(pod.spawn(&mut cmd)?)
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
        let bin = self.bin.clone();
        // The old process goes first: the new one binds the same ports.
        drop(self.ztunnels.remove(i));
        let new = self.spawn_ztunnel(&bin, i, NODES[i])?;
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

    /// Access-log lines of every ztunnel, as JSON values.
    pub fn access_logs(&self) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        for (i, node) in NODES.iter().enumerate() {
            let Ok(text) = std::fs::read_to_string(self.log_path(i)) else {
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

    /// Stops ztunnels (SIGTERM, then kill), apps and the control plane.
    pub fn stop(&mut self) {
        for z in &mut self.ztunnels {
            let pid = z.child().id();
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for z in &mut self.ztunnels {
            while Instant::now() < deadline && matches!(z.child().try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.ztunnels.clear();
        self.apps.clear();
        self.control_plane = None;
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

/// Node-level capture on node `i`: tunnels, host and ztunnel rules, pods.
fn capture(cluster: &Cluster, i: usize, pods: &[usize]) -> anyhow::Result<()> {
    let node = cluster.node(i);
    let zt = cluster.pod(i, 0);
    let tunnels = IstioTunnels::vxlan();
    let port = tunnels
        .apply_host_side(node.ns(), IpAddr::V4(zt.ip()))?
        .port;
    tunnels.apply_ztunnel_side(zt.ns(), IpAddr::V4(node.pod_gateway()), port)?;
    let mut cfg = NodeConfig::new(node.pod_gateway(), zt.host_veth(), zt.ip());
    cfg.tunnel_port = port;
    let plan = profiles::node_host(&cfg)?;
    plan.apply(node.ns(), Backend::Nft)?;
    profiles::ztunnel_ns(&ZtunnelConfig::new(node.pod_gateway(), zt.ip()))?
        .apply(zt.ns(), Backend::Nft)?;
    let refs: Vec<PodRef> = pods
        .iter()
        .map(|&j| {
            let p = cluster.pod(i, j);
            PodRef {
                ip: p.ip(),
                uid: p.name().into(),
                host_veth: Some(p.host_veth()),
            }
        })
        .collect();
    profiles::enrol(node.ns(), Backend::Nft, &plan, &cfg, &refs)?;
    Ok(())
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
