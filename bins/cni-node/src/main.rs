//! `cni-node`: Ambit's CNI plugin and node agent, one binary as Istio ships
//! it. With `CNI_COMMAND` in the environment it is the chained plugin
//! (config on stdin, result or CNI error object on stdout); otherwise it is
//! the agent (`run`) or the installer (`install`, `uninstall`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ambit_cni::agent::{self, Agent, AgentConfig, Dataplane, Metrics};
use ambit_cni::install::{self, InstallConfig};
use ambit_cni::node::{NodeDataplane, NodeSettings};
use ambit_cni::{DirSource, PodSource, UnixHttpSink, plugin, spec};
use ambit_netns::NetNs;
use ambit_redirect::Backend;
use ambit_tunnel::IstioTunnels;
use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

mod metrics;

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// Node-level capture: ipset, node rules, tunnels to ztunnel (Istio 1.16–1.20).
    Node,
    /// In-pod capture: rules inside each pod, netns handed to ztunnel over ZDS.
    Inpod,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum BackendArg {
    /// nftables through `nft -f -`.
    Nft,
    /// iptables-restore and ipsets.
    Iptables,
    /// nftables in process through libnftnl (feature `nftnl`).
    #[cfg(feature = "nftnl")]
    Nftnl,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum TunnelArg {
    Geneve,
    Vxlan,
}

/// Ambit's CNI plugin and node agent. Runs as the CNI plugin when
/// CNI_COMMAND is set.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the node agent.
    Run(RunArgs),
    /// Chain the plugin into the host's CNI config and copy the binary.
    Install(InstallArgs),
    /// Remove exactly what `install` added.
    Uninstall(InstallArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Capture mode.
    #[arg(
        long,
        env = "AMBIENT_CAPTURE_MODE",
        value_enum,
        default_value = "inpod"
    )]
    mode: Mode,
    /// The node (host) network namespace to manage: a path such as
    /// /run/netns/NAME, a pid, or a name under /run/netns. Default: this
    /// process's namespace.
    #[arg(long)]
    netns: Option<String>,
    /// The agent's run directory (holds pluginevent.sock).
    #[arg(long, env = "CNI_AGENT_RUN_DIR", default_value = spec::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Where pods come from: `kubernetes` watches this node's pods and the
    /// namespaces through the API server (in-cluster service account, or
    /// KUBECONFIG); `dir` reads --pod-dir; `none` acts on plugin events
    /// only (pods are then unknown, hence never enrolled). `auto`:
    /// kubernetes inside a cluster (KUBERNETES_SERVICE_HOST set), else dir
    /// when --pod-dir is given, else none.
    #[arg(long, value_enum, default_value = "auto")]
    pod_source: PodSourceArg,
    /// Directory of pod records (YAML/JSON) to watch: the local pod source.
    #[arg(long, env = "POD_RECORDS_DIR")]
    pod_dir: Option<PathBuf>,
    /// This node's name: the Kubernetes watch asks for this node's pods;
    /// pod records for other nodes are ignored.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Kubernetes source: how long to wait for the first complete listing
    /// of pods and namespaces before giving up (seconds).
    #[arg(long, default_value_t = 60)]
    kube_sync_timeout: u64,
    /// Packet-filter backend.
    #[arg(long, value_enum, default_value = "nft")]
    backend: BackendArg,
    /// Redirect pods' DNS to ztunnel's 15053.
    #[arg(long, env = "AMBIENT_DNS_CAPTURE", default_value_t = false, action = clap::ArgAction::Set)]
    capture_dns: bool,
    /// Node mode: tunnel kind (this repository's test kernels lack Geneve).
    #[arg(long, value_enum, default_value = "geneve")]
    tunnel: TunnelArg,
    /// Node mode: tunnel UDP port (default: the first free port ≥ 6081).
    #[arg(long)]
    tunnel_port: Option<u16>,
    /// Node mode: the ztunnel pod's netns (path, pid or name).
    #[arg(long)]
    ztunnel_netns: Option<String>,
    /// Node mode: the ztunnel pod's IP.
    #[arg(long)]
    ztunnel_ip: Option<Ipv4Addr>,
    /// Node mode: the ztunnel pod's host-side veth (default: from the route to it).
    #[arg(long)]
    ztunnel_veth: Option<String>,
    /// Node mode: the node's address inside its pod CIDR (Istio's HostIP).
    #[arg(long, env = "HOST_IP")]
    host_ip: Option<Ipv4Addr>,
    /// In-pod mode: the ZDS socket ztunnel connects to.
    #[arg(
        long,
        env = "ZTUNNEL_UDS_ADDRESS",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    zds_socket: PathBuf,
    /// Leave the host rules and enrolments in place on exit.
    #[arg(long, default_value_t = false)]
    keep_rules: bool,
    /// Prometheus endpoint (/metrics) and readiness (/healthz/ready, served
    /// once the agent has started and reconciled).
    #[arg(long, env = "METRICS_ADDRESS", default_value = "127.0.0.1:15014")]
    metrics_addr: SocketAddr,
    /// Pod source poll interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// Full reconcile with the kernel every this many seconds.
    #[arg(long, default_value_t = 60)]
    resync_secs: u64,
}

#[derive(Debug, Args)]
struct InstallArgs {
    /// The host's CNI config directory.
    #[arg(long, env = "MOUNTED_CNI_NET_DIR", default_value = "/etc/cni/net.d")]
    cni_net_dir: PathBuf,
    /// The host's CNI binary directory.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The primary config file to chain into (default: the first by name).
    #[arg(long, env = "CNI_CONF_NAME")]
    cni_conf_name: Option<String>,
    /// The plugin's `type` (its file name in the bin dir).
    #[arg(long, default_value = "istio-cni")]
    plugin_type: String,
    /// `cni_agent_run_dir` written into the entry.
    #[arg(long, env = "CNI_AGENT_RUN_DIR", default_value = spec::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Namespaces whose pods are never enrolled (comma-separated).
    #[arg(
        long,
        env = "EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    exclude_namespaces: Vec<String>,
}

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return plugin_main();
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Cmd::Run(a) => run_main(a),
        Cmd::Install(a) => install_main(&a, false),
        Cmd::Uninstall(a) => install_main(&a, true),
    }
}

/// The plugin: stdout carries only the CNI answer.
fn plugin_main() -> ExitCode {
    let mut stdin = Vec::new();
    let out = match std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin) {
        Ok(_) => plugin::run(|k| std::env::var(k).ok(), &stdin, &UnixHttpSink::default()),
        Err(e) => {
            let err =
                spec::CniError::new(spec::ErrorCode::IoFailure, "reading stdin", e.to_string());
            plugin::Outcome {
                stdout: err.to_json(),
                error: Some(err),
            }
        }
    };
    println!("{}", out.stdout);
    match out.error {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("cni-node plugin: {e}: {}", e.details);
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

fn install_main(a: &InstallArgs, remove: bool) -> ExitCode {
    let result = (|| -> anyhow::Result<()> {
        let cfg = InstallConfig {
            conf_dir: a.cni_net_dir.clone(),
            bin_dir: a.cni_bin_dir.clone(),
            plugin_binary: std::env::current_exe().context("finding this binary")?,
            conf_name: a.cni_conf_name.clone(),
            entry: install::plugin_entry(&a.plugin_type, &a.run_dir, &a.exclude_namespaces),
        };
        if remove {
            let touched = install::uninstall(&cfg)?;
            tracing::info!(?touched, "uninstalled");
        } else {
            let done = install::install(&cfg)?;
            tracing::info!(conflist = %done.conflist.display(), binary = %done.binary.display(), wrapped = ?done.wrapped, "installed");
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cni-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens a namespace given as a path, a pid or a name under /run/netns.
fn open_netns(spec: &str) -> anyhow::Result<NetNs> {
    let ns = if spec.contains('/') {
        NetNs::open(spec)
    } else if let Ok(pid) = spec.parse::<u32>() {
        NetNs::from_pid(pid)
    } else {
        NetNs::named(spec)
    };
    ns.with_context(|| format!("opening network namespace {spec:?}"))
}

fn backend(b: BackendArg) -> Backend {
    match b {
        BackendArg::Nft => Backend::Nft,
        BackendArg::Iptables => Backend::Iptables,
        #[cfg(feature = "nftnl")]
        BackendArg::Nftnl => Backend::Nftnl,
    }
}

/// Checks the flags and builds the data plane (before the runtime runs
/// anything). Errors here exit with 64.
fn dataplane(a: &RunArgs, rt: &tokio::runtime::Runtime) -> anyhow::Result<Box<dyn Dataplane>> {
    let host = match &a.netns {
        Some(s) => open_netns(s)?,
        None => NetNs::current().context("opening this process's network namespace")?,
    };
    match a.mode {
        Mode::Node => {
            let zt = a
                .ztunnel_netns
                .as_deref()
                .context("--mode node needs --ztunnel-netns")?;
            let mut tunnels = match a.tunnel {
                TunnelArg::Geneve => IstioTunnels::default(),
                TunnelArg::Vxlan => IstioTunnels::vxlan(),
            };
            tunnels.port = a.tunnel_port;
            Ok(Box::new(NodeDataplane::new(NodeSettings {
                host,
                ztunnel: open_netns(zt)?,
                host_ip: a
                    .host_ip
                    .context("--mode node needs --host-ip (or HOST_IP)")?,
                ztunnel_ip: a.ztunnel_ip.context("--mode node needs --ztunnel-ip")?,
                ztunnel_veth: a.ztunnel_veth.clone(),
                tunnels,
                backend: backend(a.backend),
                capture_dns: a.capture_dns,
            })))
        }
        #[cfg(feature = "inpod")]
        Mode::Inpod => {
            let config = ambit_redirect::profiles::InpodConfig {
                capture_dns: a.capture_dns,
                ..Default::default()
            };
            Ok(Box::new(ambit_cni::inpod::InpodDataplane::new(
                ambit_cni::inpod::InpodSettings {
                    host,
                    backend: backend(a.backend),
                    config,
                    zds_socket: a.zds_socket.clone(),
                    runtime: rt.handle().clone(),
                },
            )?))
        }
        #[cfg(not(feature = "inpod"))]
        Mode::Inpod => {
            let _ = rt;
            anyhow::bail!("this build has no in-pod mode (feature `inpod`)")
        }
    }
}

fn run_main(a: RunArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cni-node: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dp = match dataplane(&a, &rt) {
        Ok(dp) => dp,
        Err(e) => {
            eprintln!("cni-node: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match rt.block_on(run(a, dp)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cni-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--pod-source` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PodSourceArg {
    Auto,
    Kubernetes,
    Dir,
    None,
}

async fn pod_source(a: &RunArgs) -> anyhow::Result<Option<Box<dyn PodSource>>> {
    let kind = match a.pod_source {
        PodSourceArg::Auto if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            PodSourceArg::Kubernetes
        }
        PodSourceArg::Auto if a.pod_dir.is_some() => PodSourceArg::Dir,
        PodSourceArg::Auto => PodSourceArg::None,
        k => k,
    };
    match kind {
        PodSourceArg::Dir => {
            let dir = a
                .pod_dir
                .clone()
                .context("--pod-source dir needs --pod-dir (POD_RECORDS_DIR)")?;
            Ok(Some(Box::new(DirSource::new(dir, a.node_name.clone()))))
        }
        PodSourceArg::Kubernetes => kube_source(a).await,
        PodSourceArg::None | PodSourceArg::Auto => Ok(None),
    }
}

#[cfg(feature = "kube")]
async fn kube_source(a: &RunArgs) -> anyhow::Result<Option<Box<dyn PodSource>>> {
    let node = a
        .node_name
        .clone()
        .context("the kubernetes pod source needs --node-name (NODE_NAME, from the downward API spec.nodeName)")?;
    let src = ambit_cni::kube::KubeSource::connect(node, Duration::from_secs(a.kube_sync_timeout))
        .await
        .context("starting the kubernetes pod source")?;
    Ok(Some(Box::new(src)))
}

#[cfg(not(feature = "kube"))]
async fn kube_source(_: &RunArgs) -> anyhow::Result<Option<Box<dyn PodSource>>> {
    anyhow::bail!("this cni-node was built without the `kube` feature: use --pod-source dir")
}

async fn run(a: RunArgs, dp: Box<dyn Dataplane>) -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let stats = tokio::net::TcpListener::bind(a.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {}", a.metrics_addr))?;
    let stats_addr = stats.local_addr()?;
    let source = pod_source(&a).await?;
    let cfg = AgentConfig {
        dataplane: dp,
        source,
        sandbox_dir: Some(a.run_dir.join("sandboxes")),
        metrics,
    };
    let agent: Arc<Agent> = tokio::task::spawn_blocking(move || Agent::start(cfg))
        .await
        .context("starting the agent")??;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(metrics::serve(stats, Arc::new(registry), stop_rx.clone()));
    tracing::info!(
        mode = ?a.mode,
        run_dir = %a.run_dir.display(),
        metrics = %stats_addr,
        pod_source = ?a.pod_source,
        "cni-node agent ready"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signal = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        }
    };
    let served = agent::serve(
        agent.clone(),
        a.run_dir.join(spec::EVENT_SOCKET),
        Duration::from_millis(a.poll_ms.max(10)),
        Duration::from_secs(a.resync_secs.max(1)),
        signal,
    )
    .await;
    let _ = stop_tx.send(true);
    let keep = a.keep_rules;
    let stopped = tokio::task::spawn_blocking(move || agent.shutdown(keep))
        .await
        .context("stopping the agent")?;
    served?;
    stopped?;
    Ok(())
}
