//! The node agent (`cni-node run`): the data plane the flags describe, the
//! pod source, the agent's loop, metrics and readiness.

use std::sync::Arc;
use std::time::Duration;

use ambit_app::{Signals, Stop};
use ambit_cni::agent::{self, Agent, AgentConfig, Dataplane, EventThread, Metrics};
use ambit_cni::node::{NodeDataplane, NodeSettings};
use ambit_cni::{DirSource, PodSource, spec};
use ambit_netns::NetNs;
use ambit_redirect::Backend;
use ambit_server::admin::{self, OPENMETRICS, not_found, reply};
use ambit_tunnel::IstioTunnels;
use anyhow::Context;
use http::StatusCode;

use crate::cli::{BackendArg, Mode, PodSourceArg, RedirectArg, RunArgs, SetUpdatesArg, TunnelArg};

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

/// What [`run`] starts from: the data plane, and the thread that serves
/// plugin events (the in-pod ZDS loop runs there too, beside them).
pub struct Prepared {
    dataplane: Box<dyn Dataplane>,
    events: EventThread,
}

/// Checks the flags and builds the data plane (before the runtime runs
/// anything; called inside it). Errors here exit with 64.
pub fn dataplane(a: &RunArgs) -> anyhow::Result<Prepared> {
    let events = EventThread::new().context("starting the plugin-event runtime")?;
    let dataplane = build_dataplane(a, &events)?;
    Ok(Prepared { dataplane, events })
}

// `events` carries the in-pod ZDS loop; node mode has none.
#[cfg_attr(not(feature = "inpod"), allow(unused_variables))]
fn build_dataplane(a: &RunArgs, events: &EventThread) -> anyhow::Result<Box<dyn Dataplane>> {
    let host = match &a.netns {
        Some(s) => open_netns(s)?,
        None => NetNs::current().context("opening this process's network namespace")?,
    };
    match a.mode {
        Mode::Node if a.redirect == RedirectArg::Ebpf => {
            anyhow::bail!("--redirect ebpf needs --mode inpod (node mode captures on the host)")
        }
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
                set_updates: match a.nft_set_updates {
                    SetUpdatesArg::Netlink => ambit_redirect::SetUpdates::Netlink,
                    SetUpdatesArg::Nft => ambit_redirect::SetUpdates::NftCommand,
                },
            })))
        }
        #[cfg(feature = "inpod")]
        Mode::Inpod => {
            let config = ambit_redirect::profiles::InpodConfig {
                capture_dns: a.capture_dns,
                ipv6: a.ipv6,
                ..Default::default()
            };
            let dp = ambit_cni::inpod::InpodDataplane::new(ambit_cni::inpod::InpodSettings {
                host,
                backend: backend(a.backend),
                config,
                zds_socket: a.zds_socket.clone(),
                runtime: events.handle(),
                rule_writes: match a.nft_rule_writes {
                    SetUpdatesArg::Netlink => ambit_redirect::RuleWrites::Netlink,
                    SetUpdatesArg::Nft => ambit_redirect::RuleWrites::NftCommand,
                },
            })?;
            match a.redirect {
                RedirectArg::Netfilter => Ok(Box::new(dp)),
                RedirectArg::Ebpf => ebpf_dataplane(a, dp),
            }
        }
        #[cfg(not(feature = "inpod"))]
        Mode::Inpod => {
            anyhow::bail!("this build has no in-pod mode (feature `inpod`)")
        }
    }
}

/// The in-pod data plane with eBPF capture attached.
#[cfg(all(feature = "inpod", feature = "ebpf"))]
fn ebpf_dataplane(
    a: &RunArgs,
    dp: ambit_cni::inpod::InpodDataplane,
) -> anyhow::Result<Box<dyn ambit_cni::agent::Dataplane>> {
    use ambit_redirect::ebpf;
    if a.capture_dns {
        tracing::warn!("--redirect ebpf does not capture DNS; AMBIENT_DNS_CAPTURE is ignored");
    }
    let dir = &a.ebpf_pin_dir;
    let parent = dir
        .parent()
        .context("--ebpf-pin-dir needs a parent directory on a bpf filesystem")?;
    ebpf::ensure_bpffs(parent)?;
    let cap = ebpf::EbpfCapture::start(ebpf::EbpfConfig {
        pin_dir: dir.clone(),
        cgroup: a.ebpf_cgroup.clone(),
        splice_local: a.ebpf_splice,
        ..ebpf::EbpfConfig::default()
    })?;
    let pods = cap.enrolled()?.len();
    tracing::info!(pin_dir = %dir.display(), pods, "eBPF capture attached");
    Ok(Box::new(dp.with_ebpf(cap)?))
}

#[cfg(all(feature = "inpod", not(feature = "ebpf")))]
fn ebpf_dataplane(
    _a: &RunArgs,
    _dp: ambit_cni::inpod::InpodDataplane,
) -> anyhow::Result<Box<dyn ambit_cni::agent::Dataplane>> {
    anyhow::bail!("this build has no eBPF capture (feature `ebpf`)")
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

/// Runs the agent until SIGINT or SIGTERM, then stops it (removing its
/// rules unless `--keep-rules`).
pub async fn run(a: RunArgs, prepared: Prepared) -> anyhow::Result<()> {
    let Prepared {
        dataplane: dp,
        events,
    } = prepared;
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
    let stop = Stop::new();
    tokio::spawn(admin::serve(
        stats,
        metrics_responder(registry),
        stop.wait(),
    ));
    tracing::info!(
        mode = ?a.mode,
        run_dir = %a.run_dir.display(),
        metrics = %stats_addr,
        pod_source = ?a.pod_source,
        "cni-node agent ready"
    );
    let signal = Signals::install()?.wait(None, "stopping");
    let served = agent::serve_on(
        events,
        agent.clone(),
        a.run_dir.join(spec::EVENT_SOCKET),
        Duration::from_millis(a.poll_ms.max(10)),
        Duration::from_secs(a.resync_secs.max(1)),
        signal,
    )
    .await;
    stop.trigger();
    let keep = a.keep_rules;
    let stopped = tokio::task::spawn_blocking(move || agent.shutdown(keep))
        .await
        .context("stopping the agent")?;
    served?;
    stopped?;
    Ok(())
}

/// `/metrics` (the agent's registry) and `/healthz/ready`: this server
/// starts once the agent has applied the host half and reconciled, so
/// answering at all means ready.
fn metrics_responder(registry: prometheus_client::registry::Registry) -> admin::Responder {
    Arc::new(move |_, path, _| match path {
        "/healthz/ready" => reply(StatusCode::OK, "text/plain", "ready\n"),
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                Ok(()) => reply(StatusCode::OK, OPENMETRICS, text),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n",
                ),
            }
        }
        _ => not_found(),
    })
}
