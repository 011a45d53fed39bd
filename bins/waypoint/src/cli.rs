//! The waypoint's command line: Istio's environment names, each also a flag.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ambit_app::{AdminArgs, CaArgs, LogArgs, MeshSourceArgs};
use clap::{Parser, ValueEnum};

/// Where the waypoint's routes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoutesFrom {
    /// `kube` inside a cluster (`KUBERNETES_SERVICE_HOST` set) when no
    /// `--config` is given, else `file`.
    Auto,
    /// The local YAML file.
    File,
    /// The Kubernetes API.
    Kube,
}

/// The waypoint L7 proxy.
#[derive(Debug, Parser)]
#[command(name = "waypoint", version, about)]
pub struct Args {
    /// Routing and L7 policy (YAML; see ambit-l7proxy's README), for
    /// `--routes-from file`.
    #[arg(long, env = "WAYPOINT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where routing and L7 policy come from: `file` (--config; none means
    /// every service is proxied as is), `kube` (Gateway API HTTPRoute and
    /// GRPCRoute, ReferenceGrant and AuthorizationPolicy from the
    /// Kubernetes API, route status written back), `auto` (kube when
    /// running in a cluster without --config, else file).
    #[arg(long, env = "WAYPOINT_ROUTES_FROM", value_enum, default_value = "auto")]
    pub routes_from: RoutesFrom,
    /// This waypoint's Gateway (kube routes). Default: the pod label
    /// `gateway.networking.k8s.io/gateway-name` read from --pod-labels.
    #[arg(long, env = "GATEWAY_NAME")]
    pub gateway_name: Option<String>,
    /// This pod's labels as the downward API writes them (Istio's
    /// waypoint pods mount them at /etc/istio/pod/labels).
    #[arg(long, env = "POD_LABELS_PATH", default_value = "/etc/istio/pod/labels")]
    pub pod_labels: PathBuf,
    /// The cluster's DNS domain (service hostnames end in
    /// `.svc.<domain>`).
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Seconds to wait at start for the Kubernetes watches' first listing.
    #[arg(long, env = "WAYPOINT_KUBE_SYNC_TIMEOUT", default_value_t = 30)]
    pub kube_sync_timeout: u64,
    /// Write HTTPRoute/GRPCRoute status (needs `patch` on their `status`
    /// subresources).
    #[arg(long, env = "WAYPOINT_WRITE_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub write_status: bool,
    /// Where the mesh state comes from.
    #[command(flatten)]
    pub mesh: MeshSourceArgs,
    /// Where certificates come from.
    #[command(flatten)]
    pub ca: CaArgs,
    /// Admin, metrics and readiness endpoints.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// This pod's name.
    #[arg(long, env = "POD_NAME", default_value = "waypoint")]
    pub pod_name: String,
    /// This pod's namespace (the identity's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub pod_namespace: String,
    /// This pod's service account (the identity's service account).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "waypoint")]
    pub service_account: String,
    /// This pod's IP (logs).
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<IpAddr>,
    /// The network VIPs and workload addresses belong to.
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,
    /// The HBONE listener.
    #[arg(long, env = "WAYPOINT_HBONE_ADDRESS", default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,
}
