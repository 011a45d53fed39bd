//! ztunnel's command line: Istio's environment names, each also a flag.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ambit_app::{AdminArgs, CaArgs, LogArgs, MeshSourceArgs};

use crate::settings::{IstioArgs, Resolved};
use clap::{Parser, ValueEnum};

/// What to do: Istio's ztunnel reads its first argument as the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Command {
    /// Run the proxy (the default).
    Proxy,
    /// Print the version and exit.
    Version,
}

/// The word Istio's chart passes after `proxy` (`ztunnel proxy ztunnel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyKind {
    /// The node proxy.
    Ztunnel,
}

/// The ztunnel L4 proxy.
#[derive(Debug, Parser)]
#[command(name = "ztunnel", version, about)]
pub struct Args {
    /// `proxy` (the default) or `version`, as Istio's ztunnel takes them;
    /// Istio's chart runs `ztunnel proxy ztunnel`.
    #[arg(value_enum, default_value = "proxy")]
    pub command: Command,
    /// The proxy kind after `proxy` (only `ztunnel`).
    #[arg(value_enum, requires = "command")]
    pub kind: Option<ProxyKind>,
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
    /// This node's name: workloads with this `node` are served inbound.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// This pod's name (logs and xDS node id).
    #[arg(long, env = "POD_NAME", default_value = "ztunnel")]
    pub pod_name: String,
    /// This pod's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub pod_namespace: String,
    /// This pod's IP.
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<IpAddr>,
    /// The network this node's addresses belong to.
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,
    /// Address the capture listeners (15001, 15006, 15008) bind.
    #[arg(long, env = "ZTUNNEL_LISTEN_IP", default_value = "0.0.0.0")]
    pub listen_ip: IpAddr,
    /// Connect to local pods with the original source address (node mode).
    #[arg(long, env = "ZTUNNEL_SPOOF_SOURCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub spoof_source: bool,
    /// In-pod mode: pods' network namespaces arrive over ZDS and each pod
    /// gets its own listeners inside its netns (Istio 1.21+). Off: node mode.
    #[arg(long, env = "INPOD_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub inpod: bool,
    /// The node agent's ZDS socket (in-pod mode).
    #[arg(
        long,
        env = "INPOD_UDS",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    pub inpod_uds: PathBuf,
    /// SO_MARK of every in-pod socket, so the pod's rules let it pass.
    #[arg(long, env = "INPOD_MARK", default_value_t = ambit_l4proxy::INPOD_MARK)]
    pub inpod_mark: u32,
    /// Open istio/ztunnel's SOCKS5 listener (RFC 1928, no authentication,
    /// CONNECT): local apps reach the mesh without capture (node mode).
    #[arg(long, env = "UNSTABLE_ENABLE_SOCKS5", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_socks5: bool,
    /// Most connections served at once on each capture listener (15001,
    /// 15006, 15008, SOCKS5); one beyond it is closed at once and a warning
    /// logged. 0: no cap.
    #[arg(long, env = "ZTUNNEL_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// HBONE connection pool and HTTP/2 settings (Istio's names).
    #[command(flatten)]
    pub hbone: HboneArgs,
    /// Where the SOCKS5 listener binds (keep it on localhost: it has no
    /// authentication).
    #[arg(long, default_value = "127.0.0.1:15080")]
    pub socks5_address: SocketAddr,
    /// istio/ztunnel's other settings.
    #[command(flatten)]
    pub istio: IstioArgs,
    /// What the settings come to ([`Args::resolve`]).
    #[arg(skip)]
    pub resolved: Resolved,
}

impl Args {
    /// Resolves Istio's settings against Ambit's names for the same things
    /// and applies the proxy config: `ISTIO_META_CLUSTER_ID` over
    /// CLUSTER_ID, `discoveryAddress` when XDS_ADDRESS is unset, the
    /// proxy config's admin and stats ports over the default ones, and
    /// `host:port` addresses read as `https://host:port`. Errors name the
    /// settings at fault.
    pub fn resolve(mut self) -> anyhow::Result<Self> {
        let r = self.istio.resolve(
            self.inpod,
            self.inpod_mark,
            self.spoof_source,
            self.admin.drain_seconds,
        )?;
        if let Ok(id) = std::env::var("ISTIO_META_CLUSTER_ID")
            && !id.is_empty()
        {
            self.ca.cluster_id = id;
        }
        let pc = &r.proxy_config;
        if self.mesh.xds_address.is_none() {
            self.mesh.xds_address = pc.discovery_address.clone();
        }
        self.mesh.xds_address = ambit_app::istio_address(self.mesh.xds_address.take());
        self.ca.ca_address = ambit_app::istio_address(self.ca.ca_address.take());
        if let Some(p) = pc.proxy_admin_port
            && self.admin.admin_addr == SocketAddr::from(([127, 0, 0, 1], 15000))
        {
            self.admin.admin_addr.set_port(p);
        }
        if let Some(p) = pc.stats_port
            && self.admin.stats_addr == SocketAddr::from(([0, 0, 0, 0], 15020))
        {
            self.admin.stats_addr.set_port(p);
        }
        self.inpod_mark = r.packet_mark;
        self.spoof_source = r.spoof_source;
        self.resolved = r;
        Ok(self)
    }
}

/// istio/ztunnel's HBONE pool and HTTP/2 settings. Unset, Ambit's tuned
/// defaults apply (see `ambit_hbone::ClientConfig`); Istio's are 100
/// streams per connection, 5 min idle release, 4 MiB stream and 16 MiB
/// connection windows, 1 MiB frames.
#[derive(Debug, Clone, clap::Args)]
pub struct HboneArgs {
    /// Most streams per pooled HBONE connection.
    #[arg(long, env = "POOL_MAX_STREAMS_PER_CONNECTION", value_parser = clap::value_parser!(u16).range(1..))]
    pub pool_max_streams_per_connection: Option<u16>,
    /// How long an unused pooled connection stays open (`5m`, `300s`).
    #[arg(long, env = "POOL_UNUSED_RELEASE_TIMEOUT", value_parser = ambit_app::parse_duration)]
    pub pool_unused_release_timeout: Option<std::time::Duration>,
    /// HTTP/2 stream flow-control window (bytes, at most 2^31-1).
    #[arg(long, env = "HTTP2_STREAM_WINDOW_SIZE", value_parser = clap::value_parser!(u32).range(65_535..=2_147_483_647))]
    pub http2_stream_window_size: Option<u32>,
    /// HTTP/2 connection flow-control window (bytes, at most 2^31-1).
    #[arg(long, env = "HTTP2_CONNECTION_WINDOW_SIZE", value_parser = clap::value_parser!(u32).range(65_535..=2_147_483_647))]
    pub http2_connection_window_size: Option<u32>,
    /// HTTP/2 maximum frame size (16384..=16777215, RFC 9113).
    #[arg(long, env = "HTTP2_FRAME_SIZE", value_parser = clap::value_parser!(u32).range(16_384..=16_777_215))]
    pub http2_frame_size: Option<u32>,
}

impl HboneArgs {
    /// Applies the settings that are set to both sides' configs.
    pub fn apply(
        &self,
        client: &mut ambit_hbone::ClientConfig,
        server: &mut ambit_hbone::ServerConfig,
    ) {
        if let Some(n) = self.pool_max_streams_per_connection {
            client.max_streams_per_connection = usize::from(n);
        }
        if let Some(t) = self.pool_unused_release_timeout {
            client.idle_timeout = t;
        }
        for h2 in [&mut client.h2, &mut server.h2] {
            if let Some(w) = self.http2_stream_window_size {
                h2.stream_window = w;
            }
            if let Some(w) = self.http2_connection_window_size {
                h2.connection_window = w;
            }
            if let Some(f) = self.http2_frame_size {
                h2.max_frame_size = f;
            }
        }
    }
}

impl Args {
    /// Every address ztunnel binds outside the capture listeners.
    pub fn binds(&self) -> [SocketAddr; 4] {
        [
            self.admin.admin_addr,
            self.admin.stats_addr,
            self.admin.readiness_addr,
            self.socks5_address,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Istio's chart runs `ztunnel proxy ztunnel`; Istio's value formats
    /// (`plain`, `12h`) are accepted.
    #[test]
    fn istio_command_line_and_value_formats() {
        let a = Args::try_parse_from([
            "ztunnel",
            "proxy",
            "ztunnel",
            "--node-name",
            "n1",
            "--log-format",
            "plain",
            "--secret-ttl",
            "12h",
        ])
        .expect("parses");
        assert_eq!(a.command, Command::Proxy);
        assert_eq!(a.kind, Some(ProxyKind::Ztunnel));
        assert_eq!(a.log.log_format, ambit_app::LogFormat::Text);
        assert_eq!(a.ca.secret_ttl, std::time::Duration::from_secs(12 * 3600));
        let a = Args::try_parse_from(["ztunnel", "--node-name", "n1"]).expect("no command");
        assert_eq!(a.command, Command::Proxy);
        assert!(Args::try_parse_from(["ztunnel", "proxy", "sidecar", "--node-name", "n"]).is_err());
        assert!(
            Args::try_parse_from(["ztunnel", "--node-name", "n", "--secret-ttl", "1x"]).is_err()
        );
        // Istio's pool and HTTP/2 settings reach both HBONE configs.
        let a = Args::try_parse_from([
            "ztunnel",
            "--node-name",
            "n",
            "--pool-max-streams-per-connection",
            "100",
            "--pool-unused-release-timeout",
            "5m",
            "--http2-frame-size",
            "1048576",
        ])
        .expect("parses");
        let (mut c, mut sv) = (
            ambit_hbone::ClientConfig::default(),
            ambit_hbone::ServerConfig::default(),
        );
        a.hbone.apply(&mut c, &mut sv);
        assert_eq!(c.max_streams_per_connection, 100);
        assert_eq!(c.idle_timeout, std::time::Duration::from_secs(300));
        assert_eq!(
            (c.h2.max_frame_size, sv.h2.max_frame_size),
            (1 << 20, 1 << 20)
        );
        assert!(
            Args::try_parse_from(["ztunnel", "--node-name", "n", "--http2-frame-size", "10"])
                .is_err()
        );
    }
}
