//! istio/ztunnel's own settings, read with its names, defaults and value
//! formats, and resolved against Ambit's older names for the same things
//! (which stay as aliases; two names set to different values is an error
//! naming both).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ambit_l4proxy::{Keepalive, SocketOptions};
use anyhow::{Context, bail};
use clap::ValueEnum;
use serde::Deserialize;

/// istio/ztunnel's `PROXY_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ProxyMode {
    /// One ztunnel serves every pod of its node (the DaemonSet).
    #[default]
    Shared,
    /// A ztunnel dedicated to one workload (`PROXY_WORKLOAD_INFO`),
    /// listening in that workload's own network namespace.
    Dedicated,
}

/// `PROXY_WORKLOAD_INFO`: `namespace/name/service-account`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadInfo {
    /// Namespace.
    pub namespace: String,
    /// Pod (workload) name.
    pub name: String,
    /// Service account.
    pub service_account: String,
}

fn workload_info(s: &str) -> Result<WorkloadInfo, String> {
    let parts: Vec<&str> = s.splitn(3, '/').collect();
    match parts[..] {
        [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
            Ok(WorkloadInfo {
                namespace: ns.into(),
                name: name.into(),
                service_account: sa.into(),
            })
        }
        _ => Err(format!(
            "must be namespace/name/service-account (got {s:?})"
        )),
    }
}

/// The settings istio/ztunnel reads that Ambit's argument groups do not
/// already cover. Each is an environment variable (Istio's name) and a flag.
#[derive(Debug, Clone, clap::Args)]
pub struct IstioArgs {
    /// `shared` (serve the node's pods) or `dedicated` (serve one workload).
    #[arg(long, env = "PROXY_MODE", value_enum, default_value = "shared")]
    pub proxy_mode: ProxyMode,
    /// The workload a dedicated proxy serves: `namespace/name/service-account`.
    #[arg(long, env = "PROXY_WORKLOAD_INFO", value_parser = workload_info)]
    pub proxy_workload_info: Option<WorkloadInfo>,
    /// Run the HBONE proxy. Without it istio/ztunnel runs only its DNS
    /// proxy, which Ambit does not have yet: `false` is refused.
    #[arg(long, env = "ENABLE_PROXY", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_proxy: bool,
    /// The cluster's DNS domain (service hostnames end in `svc.<domain>`).
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// ztunnel's own service account (the chart passes it from the pod
    /// spec); with POD_NAMESPACE it is ztunnel's own identity.
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// SO_MARK on every socket ztunnel opens for a pod (Istio's name for
    /// INPOD_MARK; default 1337).
    #[arg(long, env = "PACKET_MARK")]
    pub packet_mark: Option<u32>,
    /// Connect to local workloads from the client's address (Istio's name
    /// for ZTUNNEL_SPOOF_SOURCE). Unset: on.
    #[arg(long, env = "ENABLE_ORIG_SRC", action = clap::ArgAction::Set)]
    pub enable_orig_src: Option<bool>,
    /// SO_REUSEPORT on the listeners, so an upgraded ztunnel takes them over
    /// before the old one drains.
    #[arg(long, env = "INPOD_PORT_REUSE", default_value_t = true, action = clap::ArgAction::Set)]
    pub inpod_port_reuse: bool,
    /// Whether IPv6 is used: in-pod listeners bind `[::]` (dual-stack)
    /// and the DNS proxy also `[::1]`. Node mode captures IPv4 only.
    #[arg(long, env = "IPV6_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub ipv6_enabled: bool,
    /// Tunnel to a workload's application tunnel over localhost.
    #[arg(long, env = "LOCALHOST_APP_TUNNEL", default_value_t = true, action = clap::ArgAction::Set)]
    pub localhost_app_tunnel: bool,
    /// Send `baggage` with the local workload's metadata on HBONE
    /// responses.
    #[arg(long, env = "ENABLE_RESPONSE_BAGGAGE", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_response_baggage: bool,
    /// The namespace preferred after the client's own when a hostname
    /// names services in several namespaces.
    #[arg(long, env = "PREFERED_SERVICE_NAMESPACE")]
    pub prefered_service_namespace: Option<String>,
    /// Ask istiod for addresses on demand instead of all of them. Ambit
    /// subscribes to everything; `true` is accepted and logged.
    #[arg(long, env = "XDS_ON_DEMAND", default_value_t = false, action = clap::ArgAction::Set)]
    pub xds_on_demand: bool,
    /// Log authorization decisions at info instead of debug.
    #[arg(long, env = "AUTHZ_POLICY_INFO_LOGGING", default_value_t = false, action = clap::ArgAction::Set)]
    pub authz_policy_info_logging: bool,
    /// TCP keepalive idle time (`180s`).
    #[arg(long, env = "KEEPALIVE_TIME", default_value = "180s", value_parser = ambit_app::parse_duration)]
    pub keepalive_time: Duration,
    /// TCP keepalive probe interval (`180s`).
    #[arg(long, env = "KEEPALIVE_INTERVAL", default_value = "180s", value_parser = ambit_app::parse_duration)]
    pub keepalive_interval: Duration,
    /// Unanswered keepalive probes before a connection is dropped.
    #[arg(long, env = "KEEPALIVE_RETRIES", default_value_t = 9)]
    pub keepalive_retries: u32,
    /// TCP keepalive on ztunnel's connections.
    #[arg(long, env = "KEEPALIVE_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub keepalive_enabled: bool,
    /// TCP_USER_TIMEOUT set to the keepalive budget.
    #[arg(long, env = "USER_TIMEOUT_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub user_timeout_enabled: bool,
    /// Runtime worker threads: a number, or a percentage of the CPU count
    /// (`50%`, rounded up, at least 1). Default 2 (or the proxy config's
    /// `concurrency`).
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS")]
    pub worker_threads: Option<String>,
    /// The CPU count percentages are taken of (the chart passes the pod's
    /// CPU limit); default: the machine's.
    #[arg(long, env = "ZTUNNEL_CPU_LIMIT")]
    pub cpu_limit: Option<String>,
    /// The pod's CPU limit as the chart writes it (`2`, `1500m`); used when
    /// ZTUNNEL_CPU_LIMIT is unset.
    #[arg(long, env = "ZTUNNEL_RESOURCE_CPU_LIMIT")]
    pub resource_cpu_limit: Option<String>,
    /// The pod's CPU request; used when no limit is known.
    #[arg(long, env = "ZTUNNEL_RESOURCE_CPU_REQUEST")]
    pub resource_cpu_request: Option<String>,
    /// How long connections may continue after a stop (`5s`). Istio's name
    /// for DRAIN_DURATION.
    #[arg(long, env = "CONNECTION_TERMINATION_DEADLINE", value_parser = ambit_app::parse_duration)]
    pub connection_termination_deadline: Option<Duration>,
    /// The pod's terminationGracePeriodSeconds: the drain deadline is 5 s
    /// less (1 s less when it is 10 s or under) when nothing else sets it.
    #[arg(long, env = "TERMINATION_GRACE_PERIOD_SECONDS")]
    pub termination_grace_period_seconds: Option<u64>,
    /// Where the DNS proxy's upstream resolvers are read from (Ambit's
    /// setting; istio/ztunnel reads the system's).
    #[arg(long, env = "DNS_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub dns_resolv_conf: std::path::PathBuf,
    /// ProxyConfig as YAML or JSON (`discoveryAddress`, `proxyAdminPort`,
    /// `statsPort`, `concurrency`, `proxyMetadata`), over the mesh config
    /// file's `defaultConfig` (`./etc/istio/config/mesh`).
    #[arg(long, env = "PROXY_CONFIG")]
    pub proxy_config: Option<String>,
}

/// Where istio/ztunnel reads the mesh config (relative to the working
/// directory, `/` in the image).
pub const MESH_CONFIG_FILE: &str = "./etc/istio/config/mesh";

/// The ProxyConfig fields ztunnel uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// The xDS address, when XDS_ADDRESS is unset.
    #[serde(default)]
    pub discovery_address: Option<String>,
    /// The admin port (15000).
    #[serde(default)]
    pub proxy_admin_port: Option<u16>,
    /// The metrics port (15020).
    #[serde(default)]
    pub stats_port: Option<u16>,
    /// Worker threads, when ZTUNNEL_WORKER_THREADS is unset.
    #[serde(default)]
    pub concurrency: Option<u16>,
    /// Proxy metadata (`ISTIO_META_` prefixes stripped).
    #[serde(default)]
    pub proxy_metadata: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfig {
    #[serde(default)]
    default_config: Option<ProxyConfig>,
}

impl ProxyConfig {
    fn merge(mut self, over: Self) -> Self {
        self.discovery_address = over.discovery_address.or(self.discovery_address);
        self.proxy_admin_port = over.proxy_admin_port.or(self.proxy_admin_port);
        self.stats_port = over.stats_port.or(self.stats_port);
        self.concurrency = over.concurrency.or(self.concurrency);
        self.proxy_metadata.extend(over.proxy_metadata);
        self
    }

    /// The mesh config file's `defaultConfig` (if the file exists), then
    /// `PROXY_CONFIG` over it; metadata keys lose an `ISTIO_META_` prefix.
    pub fn load(mesh_file: &Path, env: Option<&str>) -> anyhow::Result<Self> {
        let from_file = match std::fs::read_to_string(mesh_file) {
            Ok(text) => {
                let m: MeshConfig = serde_yaml_ng::from_str(&text)
                    .with_context(|| format!("mesh config {}", mesh_file.display()))?;
                m.default_config.unwrap_or_default()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", mesh_file.display()));
            }
        };
        let from_env = match env.map(str::trim).filter(|s| !s.is_empty()) {
            Some(text) => serde_yaml_ng::from_str(text).context("PROXY_CONFIG")?,
            None => Self::default(),
        };
        let mut pc = from_file.merge(from_env);
        // Every ISTIO_META_* variable is proxy metadata too (over both).
        pc.proxy_metadata.extend(
            std::env::vars()
                .filter_map(|(k, v)| k.strip_prefix("ISTIO_META_").map(|k| (k.to_owned(), v)))
                .filter(|(k, _)| !k.is_empty()),
        );
        pc.proxy_metadata = pc
            .proxy_metadata
            .into_iter()
            .map(|(k, v)| match k.strip_prefix("ISTIO_META_") {
                Some(short) => (short.to_owned(), v),
                None => (k, v),
            })
            .collect();
        Ok(pc)
    }
}

/// What the settings come to, after defaults, aliases and checks.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Runtime worker threads.
    pub worker_threads: usize,
    /// The drain deadline.
    pub drain: Duration,
    /// SO_MARK for pods' sockets.
    pub packet_mark: u32,
    /// Connect to local workloads from the client's address.
    pub spoof_source: bool,
    /// Socket options.
    pub socket: SocketOptions,
    /// The workload a dedicated proxy serves.
    pub dedicated: Option<WorkloadInfo>,
    /// The DNS proxy's port (15053, or DNS_PROXY_ADDR's); `None`: off
    /// (DNS_CAPTURE=false).
    pub dns_port: Option<u16>,
    /// The merged ProxyConfig.
    pub proxy_config: ProxyConfig,
}

/// Whether `name` is set in the environment (flags are Ambit's own, so an
/// alias conflict is only checked between environment variables).
fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

impl IstioArgs {
    /// The CPU count `ZTUNNEL_WORKER_THREADS` percentages refer to.
    fn cpus(&self) -> anyhow::Result<usize> {
        for (name, v) in [
            ("ZTUNNEL_CPU_LIMIT", &self.cpu_limit),
            ("ZTUNNEL_RESOURCE_CPU_LIMIT", &self.resource_cpu_limit),
            ("ZTUNNEL_RESOURCE_CPU_REQUEST", &self.resource_cpu_request),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                return ambit_app::cpu_quantity(name, v);
            }
        }
        Ok(ambit_app::host_cpus())
    }

    fn worker_threads(&self, default: usize) -> anyhow::Result<usize> {
        let Some(v) = self.worker_threads.as_deref() else {
            return Ok(default);
        };
        let bad = |why: &str| anyhow::anyhow!("ZTUNNEL_WORKER_THREADS={v:?}: {why}");
        if let Some(p) = v.strip_suffix('%') {
            let pct: f64 = p.parse().map_err(|_| bad("not a percentage"))?;
            if !(pct > 0.0 && pct <= 100.0) {
                return Err(bad("the percentage must be in (0, 100]"));
            }
            let n = (self.cpus()? as f64 * pct / 100.0).ceil() as usize;
            return Ok(n.max(1));
        }
        match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad("not a positive number or a percentage")),
        }
    }

    /// Checks the settings against each other and against Ambit's names
    /// for the same things; `inpod`, `inpod_mark`, `spoof_source` and
    /// `drain_seconds` are those names' values.
    pub fn resolve(
        &self,
        inpod: bool,
        inpod_mark: u32,
        spoof_source: bool,
        drain_seconds: u64,
    ) -> anyhow::Result<Resolved> {
        if !self.enable_proxy {
            bail!(
                "ENABLE_PROXY=false (istio/ztunnel's DNS-proxy-only mode) is not supported by \
                 Ambit's ztunnel yet"
            );
        }
        let dedicated = match (self.proxy_mode, &self.proxy_workload_info) {
            (ProxyMode::Dedicated, None) => {
                bail!(
                    "PROXY_MODE=dedicated requires PROXY_WORKLOAD_INFO (namespace/name/service-account)"
                )
            }
            (ProxyMode::Dedicated, Some(_)) if inpod => {
                bail!(
                    "PROXY_MODE=dedicated and INPOD_ENABLED=true contradict each other: a dedicated proxy serves one workload from its own network namespace"
                )
            }
            (ProxyMode::Dedicated, Some(w)) => Some(w.clone()),
            (ProxyMode::Shared, _) => None,
        };
        if let Some(m) = self.packet_mark
            && env_set("INPOD_MARK")
            && m != inpod_mark
        {
            bail!(
                "PACKET_MARK={m} and INPOD_MARK={inpod_mark} name the same mark differently: set one"
            );
        }
        if let Some(o) = self.enable_orig_src
            && env_set("ZTUNNEL_SPOOF_SOURCE")
            && o != spoof_source
        {
            bail!(
                "ENABLE_ORIG_SRC={o} and ZTUNNEL_SPOOF_SOURCE={spoof_source} contradict each other: set one"
            );
        }
        let drain = match (
            self.connection_termination_deadline,
            env_set("DRAIN_DURATION"),
        ) {
            (Some(d), true) if d != Duration::from_secs(drain_seconds) => bail!(
                "CONNECTION_TERMINATION_DEADLINE={d:?} and DRAIN_DURATION={drain_seconds} name the same deadline differently: set one"
            ),
            (Some(d), _) => d,
            (None, true) => Duration::from_secs(drain_seconds),
            (None, false) => match self.termination_grace_period_seconds {
                Some(secs) => {
                    let margin = if secs > 10 { 5 } else { 1 };
                    Duration::from_secs(secs.saturating_sub(margin).max(1))
                }
                None => Duration::from_secs(drain_seconds),
            },
        };
        let proxy_config =
            ProxyConfig::load(Path::new(MESH_CONFIG_FILE), self.proxy_config.as_deref())?;
        let dns_proxy = proxy_config
            .proxy_metadata
            .get("DNS_CAPTURE")
            .is_none_or(|v| v.eq_ignore_ascii_case("true"));
        if dns_proxy && self.xds_on_demand {
            bail!(
                "the DNS proxy (on unless ISTIO_META_DNS_CAPTURE / proxyMetadata DNS_CAPTURE is false) and XDS_ON_DEMAND=true cannot be combined, as in istio/ztunnel"
            );
        }
        let dns_port = match proxy_config.proxy_metadata.get("DNS_PROXY_ADDR") {
            None => 15053,
            Some(a) => a
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .with_context(|| format!("DNS_PROXY_ADDR={a:?} is not host:port"))?,
        };
        let default_threads = usize::from(proxy_config.concurrency.unwrap_or(2)).max(1);
        Ok(Resolved {
            worker_threads: self.worker_threads(default_threads)?,
            drain,
            packet_mark: self.packet_mark.unwrap_or(inpod_mark),
            spoof_source: self.enable_orig_src.unwrap_or(spoof_source),
            socket: SocketOptions {
                keepalive: self.keepalive_enabled.then_some(Keepalive {
                    time: self.keepalive_time,
                    interval: self.keepalive_interval,
                    retries: self.keepalive_retries,
                }),
                user_timeout: self.user_timeout_enabled,
                port_reuse: self.inpod_port_reuse,
            },
            dedicated,
            dns_port: dns_proxy.then_some(dns_port),
            proxy_config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        i: IstioArgs,
    }

    fn parse(args: &[&str]) -> IstioArgs {
        let mut v = vec!["t"];
        v.extend_from_slice(args);
        T::try_parse_from(v).expect("parses").i
    }

    #[test]
    fn worker_threads_as_istio_sizes_them() {
        let a = parse(&["--worker-threads", "50%", "--cpu-limit", "8"]);
        assert_eq!(a.worker_threads(2).expect("ok"), 4);
        let a = parse(&["--worker-threads", "30%", "--cpu-limit", "16"]);
        assert_eq!(a.worker_threads(2).expect("ok"), 5);
        let a = parse(&["--worker-threads", "10%", "--resource-cpu-limit", "4"]);
        assert_eq!(a.worker_threads(2).expect("ok"), 1);
        let a = parse(&[
            "--worker-threads",
            "100%",
            "--resource-cpu-request",
            "1500m",
        ]);
        assert_eq!(a.worker_threads(2).expect("ok"), 2);
        assert_eq!(
            parse(&["--worker-threads", "3"])
                .worker_threads(2)
                .expect("ok"),
            3
        );
        assert_eq!(parse(&[]).worker_threads(2).expect("ok"), 2);
        for bad in ["0", "x", "0%", "101%"] {
            let e = parse(&["--worker-threads", bad]).worker_threads(2);
            assert!(
                e.expect_err(bad)
                    .to_string()
                    .contains("ZTUNNEL_WORKER_THREADS")
            );
        }
        let e = parse(&["--worker-threads", "50%", "--cpu-limit", "lots"]).worker_threads(2);
        assert!(
            e.expect_err("bad cpu")
                .to_string()
                .contains("ZTUNNEL_CPU_LIMIT")
        );
    }

    #[test]
    fn dedicated_mode_needs_its_workload() {
        let a = parse(&["--proxy-mode", "dedicated"]);
        let e = a.resolve(false, 1337, true, 5).expect_err("no workload");
        assert!(e.to_string().contains("PROXY_WORKLOAD_INFO"), "{e}");
        let a = parse(&[
            "--proxy-mode",
            "dedicated",
            "--proxy-workload-info",
            "ns/pod/sa",
        ]);
        let e = a.resolve(true, 1337, true, 5).expect_err("inpod");
        assert!(e.to_string().contains("INPOD_ENABLED"), "{e}");
        let r = a.resolve(false, 1337, true, 5).expect("ok");
        assert_eq!(
            r.dedicated,
            Some(WorkloadInfo {
                namespace: "ns".into(),
                name: "pod".into(),
                service_account: "sa".into()
            })
        );
        let mut v = vec!["t", "--proxy-workload-info", "ns/pod"];
        assert!(T::try_parse_from(&v).is_err());
        v[2] = "ns//sa";
        assert!(T::try_parse_from(&v).is_err());
        assert!(T::try_parse_from(["t", "--proxy-mode", "sidecar"]).is_err());
    }

    #[test]
    fn drain_deadline_from_grace_period() {
        let r = parse(&["--termination-grace-period-seconds", "30"])
            .resolve(false, 1337, true, 5)
            .expect("ok");
        assert_eq!(r.drain, Duration::from_secs(25));
        let r = parse(&["--termination-grace-period-seconds", "5"])
            .resolve(false, 1337, true, 5)
            .expect("ok");
        assert_eq!(r.drain, Duration::from_secs(4));
        let r = parse(&[
            "--connection-termination-deadline",
            "2s",
            "--termination-grace-period-seconds",
            "30",
        ])
        .resolve(false, 1337, true, 5)
        .expect("ok");
        assert_eq!(r.drain, Duration::from_secs(2));
        let r = parse(&[]).resolve(false, 1337, true, 7).expect("ok");
        assert_eq!(r.drain, Duration::from_secs(7));
    }

    #[test]
    fn sockets_and_aliases() {
        let r = parse(&[
            "--keepalive-time",
            "10s",
            "--keepalive-retries",
            "3",
            "--inpod-port-reuse",
            "false",
            "--packet-mark",
            "7",
            "--enable-orig-src",
            "false",
        ])
        .resolve(false, 1337, true, 5)
        .expect("ok");
        assert_eq!(r.packet_mark, 7);
        assert!(!r.spoof_source);
        assert!(!r.socket.port_reuse);
        let k = r.socket.keepalive.expect("keepalive on");
        assert_eq!(
            (k.time, k.interval, k.retries),
            (Duration::from_secs(10), Duration::from_secs(180), 3)
        );
        let r = parse(&["--keepalive-enabled", "false"])
            .resolve(false, 1337, true, 5)
            .expect("ok");
        assert_eq!(r.socket.keepalive, None);
        assert!(
            parse(&["--enable-proxy", "false"])
                .resolve(false, 1337, true, 5)
                .is_err()
        );
        assert!(T::try_parse_from(["t", "--keepalive-time", "soon"]).is_err());
    }

    #[test]
    fn proxy_config_merges_file_then_env() {
        let dir = std::env::temp_dir().join(format!("ztunnel-meshcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("mesh");
        std::fs::write(
            &file,
            "defaultConfig:\n  discoveryAddress: istiod-a:15012\n  proxyAdminPort: 15099\n  proxyMetadata:\n    ISTIO_META_FOO: foo\n    DNS_CAPTURE: \"false\"\n",
        )
        .expect("write");
        let pc = ProxyConfig::load(
            &file,
            Some(
                r#"{"discoveryAddress": "istiod-b:15012", "concurrency": 4, "proxyMetadata": {"BAR": "bar"}}"#,
            ),
        );
        let missing = ProxyConfig::load(&dir.join("nope"), None);
        let bad = ProxyConfig::load(&dir.join("nope"), Some("concurrency: [1]"));
        let _ = std::fs::remove_dir_all(&dir);
        let pc = pc.expect("loads");
        assert_eq!(pc.discovery_address.as_deref(), Some("istiod-b:15012"));
        assert_eq!(pc.proxy_admin_port, Some(15099));
        assert_eq!(pc.concurrency, Some(4));
        assert_eq!(pc.proxy_metadata["FOO"], "foo");
        assert_eq!(pc.proxy_metadata["BAR"], "bar");
        assert_eq!(missing.expect("no file"), ProxyConfig::default());
        assert!(bad.expect_err("bad").to_string().contains("PROXY_CONFIG"));
    }
}
