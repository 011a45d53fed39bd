//! cni-node's command line: the agent (`run`), the installer (`install`,
//! `uninstall`), Istio's environment names where Istio has one.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ambit_app::LogArgs;
use ambit_cni::spec;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Capture mode (`AMBIENT_CAPTURE_MODE`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    /// Node-level capture: ipset, node rules, tunnels to ztunnel (Istio 1.16–1.20).
    Node,
    /// In-pod capture: rules inside each pod, netns handed to ztunnel over ZDS.
    Inpod,
}

/// `--backend` values.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BackendArg {
    /// nftables through `nft -f -`.
    Nft,
    /// iptables-restore and ipsets.
    Iptables,
    /// nftables in process through libnftnl (feature `nftnl`).
    #[cfg(feature = "nftnl")]
    Nftnl,
}

/// `--redirect` values: how in-pod capture redirects connections.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RedirectArg {
    /// NAT rules in each pod (nftables or iptables, per `--backend`), as
    /// Istio does.
    Netfilter,
    /// eBPF (feature `ebpf`): connect-time redirection in cgroup hooks and
    /// sk_lookup for inbound; `--backend` then only writes the return path
    /// and the host's probe rules. No DNS capture in this mode.
    Ebpf,
}

/// `--nft-set-updates` values.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SetUpdatesArg {
    /// In process, over nfnetlink.
    Netlink,
    /// One `nft -f -` process per update (the former path; a benchmark baseline).
    Nft,
}

/// `--tunnel` values.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TunnelArg {
    /// Geneve, as Istio uses.
    Geneve,
    /// VXLAN (kernels without Geneve).
    Vxlan,
}

/// Ambit's CNI plugin and node agent. Runs as the CNI plugin when
/// CNI_COMMAND is set.
#[derive(Debug, Parser)]
#[command(name = "cni-node", version, about)]
pub struct Cli {
    /// Logging (global: accepted before or after the subcommand).
    #[command(flatten)]
    pub log: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the node agent.
    Run(RunArgs),
    /// Chain the plugin into the host's CNI config and copy the binary.
    Install(InstallArgs),
    /// Remove exactly what `install` added.
    Uninstall(InstallArgs),
}

/// `cni-node run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Capture mode.
    #[arg(
        long,
        env = "AMBIENT_CAPTURE_MODE",
        value_enum,
        default_value = "inpod"
    )]
    pub mode: Mode,
    /// The node (host) network namespace to manage: a path such as
    /// /run/netns/NAME, a pid, or a name under /run/netns. Default: this
    /// process's namespace.
    #[arg(long)]
    pub netns: Option<String>,
    /// The agent's run directory (holds pluginevent.sock).
    #[arg(long, env = "CNI_AGENT_RUN_DIR", default_value = spec::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Where pods come from: `kubernetes` watches this node's pods and the
    /// namespaces through the API server (in-cluster service account, or
    /// KUBECONFIG); `dir` reads --pod-dir; `none` acts on plugin events
    /// only (pods are then unknown, hence never enrolled). `auto`:
    /// kubernetes inside a cluster (KUBERNETES_SERVICE_HOST set), else dir
    /// when --pod-dir is given, else none.
    #[arg(long, value_enum, default_value = "auto")]
    pub pod_source: PodSourceArg,
    /// Directory of pod records (YAML/JSON) to watch: the local pod source.
    #[arg(long, env = "POD_RECORDS_DIR")]
    pub pod_dir: Option<PathBuf>,
    /// This node's name: the Kubernetes watch asks for this node's pods;
    /// pod records for other nodes are ignored.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubernetes source: how long to wait for the first complete listing
    /// of pods and namespaces before giving up (seconds).
    #[arg(long, default_value_t = 60)]
    pub kube_sync_timeout: u64,
    /// Packet-filter backend.
    #[arg(long, value_enum, default_value = "nft")]
    pub backend: BackendArg,
    /// Node mode, nft backends: how pods' set entries are written. `nft`
    /// spawns `nft -f -` per update, as before; kept for benchmarks.
    #[arg(long, value_enum, default_value = "netlink", hide = true)]
    pub nft_set_updates: SetUpdatesArg,
    /// In-pod mode, nft backend: how the in-pod and probe tables are
    /// written and read back for verification. `nft` runs `nft -f -` and
    /// `nft list` processes, as before; kept for benchmarks.
    #[arg(long, value_enum, default_value = "netlink", hide = true)]
    pub nft_rule_writes: SetUpdatesArg,
    /// In-pod mode: how connections are redirected to ztunnel.
    #[arg(long, env = "AMBIT_REDIRECT", value_enum, default_value = "netfilter")]
    pub redirect: RedirectArg,
    /// `--redirect ebpf`: directory for the pinned programs and maps (on a
    /// bpf filesystem; one is mounted on its parent when there is none).
    #[arg(long, env = "AMBIT_EBPF_PIN_DIR", default_value = "/sys/fs/bpf/ambit")]
    pub ebpf_pin_dir: PathBuf,
    /// `--redirect ebpf`: the cgroup v2 directory the programs attach to
    /// (default: the root of the cgroup v2 hierarchy, covering every pod).
    #[arg(long, env = "AMBIT_EBPF_CGROUP")]
    pub ebpf_cgroup: Option<PathBuf>,
    /// `--redirect ebpf`: splice connections whose both ends are in one pod
    /// (the app and its ztunnel) with sockops + sk_msg, skipping TCP/IP on
    /// loopback.
    #[arg(long, env = "AMBIT_EBPF_SPLICE", default_value_t = false, action = clap::ArgAction::Set)]
    pub ebpf_splice: bool,
    /// Redirect pods' DNS to ztunnel's 15053. In-pod mode: a pod's
    /// `ambient.istio.io/dns-capture: "true"|"false"` annotation overrides
    /// this for that pod (other values are ignored with a warning); node
    /// mode has one node-wide rule, so the annotation does not apply there.
    #[arg(long, env = "AMBIENT_DNS_CAPTURE", default_value_t = false, action = clap::ArgAction::Set)]
    pub capture_dns: bool,
    /// In-pod mode: capture IPv6 too (Istio's `AMBIENT_IPV6`, default true
    /// as in Istio's chart): IPv6 rules and routes in every pod whose
    /// namespace has IPv6 (others get the IPv4 rules only), and kubelet
    /// probes to pods' IPv6 addresses SNATed to
    /// fd16:9254:7127:1337:ffff:ffff:ffff:ffff. Node mode is IPv4 only.
    #[arg(long, env = "AMBIENT_IPV6", default_value_t = true, action = clap::ArgAction::Set)]
    pub ipv6: bool,
    /// Node mode: tunnel kind (this repository's test kernels lack Geneve).
    #[arg(long, value_enum, default_value = "geneve")]
    pub tunnel: TunnelArg,
    /// Node mode: tunnel UDP port (default: the first free port ≥ 6081).
    #[arg(long)]
    pub tunnel_port: Option<u16>,
    /// Node mode: the ztunnel pod's netns (path, pid or name).
    #[arg(long)]
    pub ztunnel_netns: Option<String>,
    /// Node mode: the ztunnel pod's IP.
    #[arg(long)]
    pub ztunnel_ip: Option<Ipv4Addr>,
    /// Node mode: the ztunnel pod's host-side veth (default: from the route to it).
    #[arg(long)]
    pub ztunnel_veth: Option<String>,
    /// Node mode: the node's address inside its pod CIDR (Istio's HostIP).
    #[arg(long, env = "HOST_IP")]
    pub host_ip: Option<Ipv4Addr>,
    /// In-pod mode: the ZDS socket ztunnel connects to.
    #[arg(
        long,
        env = "ZTUNNEL_UDS_ADDRESS",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    pub zds_socket: PathBuf,
    /// Leave the host rules and enrolments in place on exit.
    #[arg(long, default_value_t = false)]
    pub keep_rules: bool,
    /// Prometheus endpoint (/metrics) and readiness (/healthz/ready, served
    /// once the agent has started and reconciled).
    #[arg(long, env = "METRICS_ADDRESS", default_value = "127.0.0.1:15014")]
    pub metrics_addr: SocketAddr,
    /// Pod source poll interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Full reconcile with the kernel every this many seconds: missing
    /// enrolments re-added, stale ones removed, in-pod rules verified and
    /// repaired inside every enrolled pod, and (in-pod) `/proc` scanned for
    /// ambient pods running before the agent.
    #[arg(long, default_value_t = 60)]
    pub resync_secs: u64,
}

/// `cni-node install` and `uninstall`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The host's CNI config directory.
    #[arg(long, env = "MOUNTED_CNI_NET_DIR", default_value = "/etc/cni/net.d")]
    pub cni_net_dir: PathBuf,
    /// The host's CNI binary directory.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The primary config file to chain into (default: the first by name).
    #[arg(long, env = "CNI_CONF_NAME")]
    pub cni_conf_name: Option<String>,
    /// The plugin's `type` (its file name in the bin dir).
    #[arg(long, default_value = "istio-cni")]
    pub plugin_type: String,
    /// `cni_agent_run_dir` written into the entry.
    #[arg(long, env = "CNI_AGENT_RUN_DIR", default_value = spec::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Namespaces whose pods are never enrolled (comma-separated).
    #[arg(
        long,
        env = "EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub exclude_namespaces: Vec<String>,
    /// Kubeconfig the plugin reads pods and namespaces with, to decide
    /// ambient membership before it asks the agent (written as the entry's
    /// `kubernetes.kubeconfig`, Istio's field). Without it (or
    /// --plugin-pod-records-dir) the plugin leaves the decision to the
    /// agent, so no pod starts while the agent is down.
    #[arg(long)]
    pub plugin_kubeconfig: Option<PathBuf>,
    /// Outside a cluster: the pod-record directory the plugin decides
    /// membership from (written as the entry's `pod_records_dir`).
    #[arg(long)]
    pub plugin_pod_records_dir: Option<PathBuf>,
}

/// `--pod-source` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodSourceArg {
    /// Kubernetes inside a cluster, else `dir` with `--pod-dir`, else none.
    Auto,
    /// Watch this node's pods through the API server.
    Kubernetes,
    /// Pod records in `--pod-dir`.
    Dir,
    /// Plugin events only.
    None,
}
