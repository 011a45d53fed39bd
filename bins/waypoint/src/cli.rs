//! The waypoint's command line: Istio's environment names, each also a flag.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ambit_app::{AdminArgs, CaArgs, LogArgs, MeshSourceArgs};
use clap::Parser;

/// The waypoint L7 proxy.
#[derive(Debug, Parser)]
#[command(name = "waypoint", version, about)]
pub struct Args {
    /// Routing and L7 policy (YAML; see ambit-l7proxy's README).
    #[arg(long, env = "WAYPOINT_CONFIG")]
    pub config: Option<PathBuf>,
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
