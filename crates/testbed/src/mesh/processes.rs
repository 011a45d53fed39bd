//! The child processes: the `cni-node` agents, the `ztunnel`s and the
//! `waypoint`, each started with its log in the mesh's directory and
//! stopped or restarted on demand.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_netns::harness::{ChildGuard, Pod};
use anyhow::{Context, bail};

use super::{LocalMesh, Mode};
use crate::config::NODES;
use crate::probe::{wait_metric, wait_ready, wait_ready_at};

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

impl LocalMesh {
    /// The waypoint's log.
    pub fn waypoint_log_path(&self) -> PathBuf {
        self.dir.join("waypoint.log")
    }

    /// The waypoint's Prometheus metrics (`:15020/metrics` in its pod),
    /// as text.
    pub fn waypoint_metrics(&self) -> Option<String> {
        let (i, j) = self.waypoint_pod()?;
        crate::probe::get(
            self.cluster.pod(i, j).ns(),
            std::net::SocketAddr::from(([127, 0, 0, 1], 15020)),
            "/metrics",
        )
    }

    /// The waypoint process's pid.
    pub fn waypoint_pid(&mut self) -> Option<u32> {
        self.waypoint.as_mut().map(|w| w.child().id())
    }

    pub(super) fn spawn_agent(&self, i: usize) -> anyhow::Result<ChildGuard> {
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
        if self.opts.dns_capture {
            cmd.env("AMBIENT_DNS_CAPTURE", "true");
        }
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
                if self.opts.ebpf {
                    cmd.args(["--redirect", "ebpf", "--ebpf-pin-dir"])
                        .arg(self.bpf_dir(i).join("ambit"));
                    if self.opts.ebpf_splice {
                        cmd.args(["--ebpf-splice", "true"]);
                    }
                }
            }
        }
        cmd.stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        Ok(ChildGuard::new(node.ns().spawn_command(&mut cmd)?))
    }

    pub(super) fn wait_agent(&mut self, i: usize) -> anyhow::Result<()> {
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

    /// The ztunnel log of node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("ztunnel-{}.log", NODES[i]))
    }

    pub(super) fn spawn_ztunnel(&self, i: usize, node: &str) -> anyhow::Result<ChildGuard> {
        let log = std::fs::File::create(self.log_path(i))?;
        let pod = self.cluster.pod(i, 0);
        let mut cmd = self.proxy_command(&self.bins.ztunnel, pod)?;
        // Istio's chart's command line.
        cmd.args(["proxy", "ztunnel"])
            .env("NODE_NAME", node)
            .env("POD_NAME", format!("ztunnel-{node}"))
            .env("POD_NAMESPACE", "istio-system")
            // Forwarded names go to the harness's resolver, never the host's.
            .env("DNS_RESOLV_CONF", self.dir.join("resolv.conf"))
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.opts.mode == Mode::InPod {
            cmd.env("INPOD_ENABLED", "true")
                .env("INPOD_UDS", self.zds_socket(i));
        }
        Ok(pod.spawn(&mut cmd)?)
    }

    pub(super) fn spawn_waypoint(&self, i: usize, j: usize) -> anyhow::Result<ChildGuard> {
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
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.opts.kube_routes {
            cmd.env("WAYPOINT_ROUTES_FROM", "kube")
                .env("KUBECONFIG", self.dir.join("kubeconfig"))
                .env("GATEWAY_NAME", super::kube::GATEWAY_NAME);
        } else {
            cmd.env("WAYPOINT_CONFIG", self.dir.join("waypoint.yaml"));
        }
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
            // As istiod is given to Istio's proxies: one TLS port, the
            // mesh root (written at start), istiod's name to verify.
            .env("XDS_ADDRESS", &cp.xds_address)
            .env("CA_ADDRESS", &cp.ca_address)
            .env("XDS_ROOT_CA", self.root_cert_path())
            .env("CA_ROOT_CA", self.root_cert_path())
            .env("ALT_XDS_HOSTNAME", cp.tls_server_name)
            .env("ALT_CA_HOSTNAME", cp.tls_server_name)
            .env("LOG_FORMAT", "json")
            .env("DRAIN_DURATION", "1")
            .env("RUST_LOG", "info")
            .env("SECRET_TTL", self.opts.secret_ttl.to_string())
            .stdin(Stdio::null());
        cmd.envs(crate::runtime_env());
        Ok(cmd)
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

    /// Replaces node `i`'s ztunnel as a rolling upgrade does: the new
    /// process starts beside the old one (its admin, metrics and readiness
    /// ports moved up by 100; the capture listeners shared through
    /// `SO_REUSEPORT`; in-pod, it takes the pods over ZDS), and only once it
    /// is ready does the old one get SIGTERM; this returns when the old one
    /// has drained and exited. The new process logs to
    /// `ztunnel-<node>.upgraded.log`.
    pub fn upgrade_ztunnel(&mut self, i: usize) -> anyhow::Result<()> {
        let node = NODES[i];
        let log = std::fs::File::create(self.dir.join(format!("ztunnel-{node}.upgraded.log")))?;
        let pod = self.cluster.pod(i, 0);
        let mut cmd = self.proxy_command(&self.bins.ztunnel, pod)?;
        // Istio's chart's command line.
        cmd.args(["proxy", "ztunnel"])
            .env("NODE_NAME", node)
            .env("POD_NAME", format!("ztunnel-{node}-next"))
            .env("POD_NAMESPACE", "istio-system")
            .env("ADMIN_ADDRESS", "127.0.0.1:15100")
            .env("STATS_ADDRESS", "0.0.0.0:15120")
            .env("READINESS_ADDRESS", "0.0.0.0:15121")
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.opts.mode == Mode::InPod {
            cmd.env("INPOD_ENABLED", "true")
                .env("INPOD_UDS", self.zds_socket(i));
        }
        let new = pod.spawn(&mut cmd)?;
        wait_ready_at(pod.ns(), 15121, Duration::from_secs(20))
            .with_context(|| format!("the new ztunnel on {node} did not become ready"))?;
        let mut old = self.ztunnels.remove(i);
        self.ztunnels.insert(i, new);
        let pid = old.child().id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if old.child().try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("the old ztunnel on {node} did not exit after SIGTERM")
    }

    /// Connection churn from sleep to productpage-v1 (on node b) across
    /// [`LocalMesh::upgrade_ztunnel`] of node `i`: the counts of
    /// connections that got their greeting and of those that failed.
    pub fn churn_across_upgrade(&mut self, i: usize) -> anyhow::Result<crate::tcpapp::Churn> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let pp = std::net::SocketAddr::from(([10, 244, 1, 3], 9080));
        let stop = Arc::new(AtomicBool::new(false));
        let load = crate::tcpapp::churn(self.sleep(), pp, stop.clone())?;
        std::thread::sleep(Duration::from_millis(300));
        let upgraded = self.upgrade_ztunnel(i);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let counts = load.join();
        upgraded.map(|()| counts)
    }

    /// The ztunnel processes' pids, in node order.
    pub fn ztunnel_pids(&mut self) -> Vec<u32> {
        self.ztunnels.iter_mut().map(|z| z.child().id()).collect()
    }
}
