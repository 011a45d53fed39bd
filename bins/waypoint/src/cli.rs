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
    /// Close a downstream connection (HTTP or TCP) on which no byte has
    /// moved for this long (`1h`, `30m`, `0s` for never), as Envoy's idle
    /// timeout that Istio sets from this proxy metadata.
    #[arg(long, env = "ISTIO_META_IDLE_TIMEOUT", default_value = "1h", value_parser = ambit_app::parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Worker threads, as Envoy's `--concurrency`: each runs its own
    /// runtime with its own HBONE listener (`SO_REUSEPORT`) and upstream
    /// pools. Default: PROXY_CONFIG's `concurrency` (0: one per CPU), else
    /// ISTIO_CPU_LIMIT, else one per CPU — as Istio's agent sizes Envoy.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The pod's ProxyConfig as JSON or YAML, as istiod's waypoint template
    /// sets it (`proxy.istio.io/config` annotations merged in); the
    /// waypoint reads its `concurrency`.
    #[arg(long, env = "PROXY_CONFIG")]
    pub proxy_config: Option<String>,
    /// The pod's CPU limit (`2`, `1500m`), as istiod's waypoint template
    /// sets it from `limits.cpu`.
    #[arg(long, env = "ISTIO_CPU_LIMIT")]
    pub cpu_limit: Option<String>,
}

impl Args {
    /// How many workers serve HBONE: `--concurrency`, else PROXY_CONFIG's
    /// `concurrency` (0 meaning one per CPU, as for Envoy), else
    /// ISTIO_CPU_LIMIT rounded up, else one per CPU.
    pub fn workers(&self) -> anyhow::Result<usize> {
        let from_proxy_config = match self.proxy_config.as_deref().map(str::trim) {
            Some(text) if !text.is_empty() => proxy_config_concurrency(text)?,
            _ => None,
        };
        let n = match (self.concurrency, from_proxy_config) {
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => match self.cpu_limit.as_deref().map(str::trim) {
                Some(v) if !v.is_empty() => ambit_app::cpu_quantity("ISTIO_CPU_LIMIT", v)?,
                _ => 0,
            },
        };
        Ok(match n {
            0 => ambit_app::host_cpus(),
            n => n,
        })
    }
}

/// The `concurrency` of a ProxyConfig in JSON or YAML; `None` when unset.
fn proxy_config_concurrency(text: &str) -> anyhow::Result<Option<usize>> {
    use anyhow::Context;
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).context("PROXY_CONFIG is not JSON or YAML")?;
    if !(v.is_mapping() || v.is_null()) {
        anyhow::bail!("PROXY_CONFIG must be a ProxyConfig object");
    }
    match v.get("concurrency") {
        None | Some(serde_yaml_ng::Value::Null) => Ok(None),
        // protobuf's JSON writes an Int32Value as a number; take a string
        // of digits too.
        Some(c) => c
            .as_u64()
            .or_else(|| c.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|n| *n <= 1024)
            .map(|n| Some(n as usize))
            .with_context(|| {
                format!("PROXY_CONFIG concurrency {c:?} is not a thread count (0-1024)")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["waypoint"];
        v.extend_from_slice(extra);
        Args::parse_from(v)
    }

    #[test]
    fn workers_sized_as_istio_sizes_envoy() {
        let host = ambit_app::host_cpus();
        // Nothing set: one per CPU.
        let mut a = args(&[]);
        (a.proxy_config, a.cpu_limit) = (None, None);
        assert_eq!(a.workers().expect("ok"), host);
        // The CPU limit, rounded up.
        a.cpu_limit = Some("1500m".into());
        assert_eq!(a.workers().expect("ok"), 2);
        // ProxyConfig's concurrency over the limit; 0 is one per CPU.
        a.proxy_config = Some(r#"{"concurrency": 3, "discoveryAddress": "x:15012"}"#.into());
        assert_eq!(a.workers().expect("ok"), 3);
        a.proxy_config = Some("concurrency: 0\n".into());
        assert_eq!(a.workers().expect("ok"), host);
        // ProxyConfig without concurrency (istiod's `{}`): the limit.
        a.proxy_config = Some("{}".into());
        assert_eq!(a.workers().expect("ok"), 2);
        // The flag over everything.
        a.concurrency = Some(5);
        assert_eq!(a.workers().expect("ok"), 5);
    }

    #[test]
    fn idle_timeout_in_go_durations() {
        use std::time::Duration;
        if std::env::var_os("ISTIO_META_IDLE_TIMEOUT").is_none() {
            assert_eq!(args(&[]).idle_timeout, Duration::from_secs(3600));
        }
        let t = |v: &str| args(&["--idle-timeout", v]).idle_timeout;
        assert_eq!(t("30m"), Duration::from_secs(1800));
        assert_eq!(t("1h30m"), Duration::from_secs(5400));
        assert_eq!(t("0s"), Duration::ZERO);
        let e = Args::try_parse_from(["waypoint", "--idle-timeout", "soon"])
            .expect_err("not a duration")
            .to_string();
        assert!(e.contains("--idle-timeout") && e.contains("soon"), "{e}");
    }

    #[test]
    fn bad_worker_settings_are_named() {
        let mut a = args(&[]);
        a.cpu_limit = None;
        for (pc, want) in [
            ("[1, 2]", "ProxyConfig object"),
            ("{\"concurrency\": -1}", "concurrency"),
            ("{\"concurrency\": \"lots\"}", "concurrency"),
            ("{\"concurrency\": 100000}", "concurrency"),
            ("{: nope", "not JSON or YAML"),
        ] {
            a.proxy_config = Some(pc.into());
            let e = format!("{:#}", a.workers().expect_err(pc));
            assert!(e.contains(want), "{pc}: {e}");
        }
        a.proxy_config = None;
        a.cpu_limit = Some("many".into());
        let e = a.workers().expect_err("bad limit").to_string();
        assert!(e.contains("ISTIO_CPU_LIMIT"), "{e}");
    }
}
