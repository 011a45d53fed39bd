//! `ztunnel`: the per-node L4 proxy of an Istio-compatible ambient mesh.
//!
//! Configuration follows Istio's environment variables (each also a flag;
//! see `--help`). Local mode needs no istiod: mesh config from
//! `LOCAL_XDS_PATH` and certificates from a local CA's PEM files.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_identity::{
    CertManager, CertificateAuthority, IstioCaClient, IstioCaConfig, LocalCa, ManagerConfig,
};
use ambit_l4proxy::{Capture, Listeners, Local, Proxy, ProxyConfig, Sockets, admin};
use ambit_mesh::xds::MeshSource;
use ambit_mesh::{Config, MeshState};

use anyhow::Context;
use clap::{Parser, ValueEnum};

mod privileges;

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// The ztunnel L4 proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Mesh configuration file in ztunnel's local YAML format (no xDS).
    #[arg(long, env = "LOCAL_XDS_PATH")]
    local_xds_path: Option<PathBuf>,
    /// The xDS server (istiod), e.g. `https://istiod.istio-system.svc:15012`;
    /// delta ADS for Address and Authorization. Ignored when LOCAL_XDS_PATH is set.
    #[arg(long, env = "XDS_ADDRESS")]
    xds_address: Option<String>,
    /// PEM roots for the xDS server's TLS certificate.
    #[arg(long, env = "XDS_ROOT_CA")]
    xds_root_cert: Option<PathBuf>,
    /// Istio CA address (`https://istiod.istio-system.svc:15012`).
    #[arg(long, env = "CA_ADDRESS")]
    ca_address: Option<String>,
    /// PEM roots for the CA's TLS certificate.
    #[arg(long, env = "CA_ROOT_CA")]
    ca_root_cert: Option<PathBuf>,
    /// Bearer token file sent to the CA.
    #[arg(
        long,
        env = "AUTH_TOKEN_PATH",
        default_value = "/var/run/secrets/tokens/istio-token"
    )]
    auth_token_path: PathBuf,
    /// Local CA certificate (PEM), to issue certificates without istiod.
    #[arg(long, env = "LOCAL_CA_CERT", requires = "local_ca_key")]
    local_ca_cert: Option<PathBuf>,
    /// Local CA private key (PEM).
    #[arg(long, env = "LOCAL_CA_KEY", requires = "local_ca_cert")]
    local_ca_key: Option<PathBuf>,
    /// SPIFFE trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Cluster id (sent to the CA as `clusterid`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// This node's name: workloads with this `node` are served inbound.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// This pod's name (logs and xDS node id).
    #[arg(long, env = "POD_NAME", default_value = "ztunnel")]
    pod_name: String,
    /// This pod's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pod_namespace: String,
    /// This pod's IP.
    #[arg(long, env = "INSTANCE_IP")]
    instance_ip: Option<IpAddr>,
    /// The network this node's addresses belong to.
    #[arg(long, env = "NETWORK", default_value = "")]
    network: String,
    /// Certificate lifetime requested from the CA (seconds).
    #[arg(long, env = "SECRET_TTL", default_value_t = 86400)]
    secret_ttl: u64,
    /// Address the capture listeners (15001, 15006, 15008) bind.
    #[arg(long, env = "ZTUNNEL_LISTEN_IP", default_value = "0.0.0.0")]
    listen_ip: IpAddr,
    /// Admin endpoint (config_dump, quitquitquit).
    #[arg(long, env = "ADMIN_ADDRESS", default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Prometheus metrics endpoint.
    #[arg(long, env = "STATS_ADDRESS", default_value = "0.0.0.0:15020")]
    stats_addr: SocketAddr,
    /// Readiness endpoint (/healthz/ready).
    #[arg(long, env = "READINESS_ADDRESS", default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// How long connections may continue after SIGTERM (seconds).
    #[arg(long, env = "DRAIN_DURATION", default_value_t = 5)]
    drain_seconds: u64,
    /// Connect to local pods with the original source address (node mode).
    #[arg(long, env = "ZTUNNEL_SPOOF_SOURCE", default_value_t = true, action = clap::ArgAction::Set)]
    spoof_source: bool,
    /// In-pod mode: pods' network namespaces arrive over ZDS and each pod
    /// gets its own listeners inside its netns (Istio 1.21+). Off: node mode.
    #[arg(long, env = "INPOD_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    inpod: bool,
    /// The node agent's ZDS socket (in-pod mode).
    #[arg(
        long,
        env = "INPOD_UDS",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    inpod_uds: PathBuf,
    /// SO_MARK of every in-pod socket, so the pod's rules let it pass.
    #[arg(long, env = "INPOD_MARK", default_value_t = ambit_l4proxy::INPOD_MARK)]
    inpod_mark: u32,
    /// Open istio/ztunnel's SOCKS5 listener (RFC 1928, no authentication,
    /// CONNECT): local apps reach the mesh without capture (node mode).
    #[arg(long, env = "UNSTABLE_ENABLE_SOCKS5", default_value_t = false, action = clap::ArgAction::Set)]
    enable_socks5: bool,
    /// Where the SOCKS5 listener binds (keep it on localhost: it has no
    /// authentication).
    #[arg(long, default_value = "127.0.0.1:15080")]
    socks5_address: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// Everything read and checked before the runtime starts.
struct Setup {
    source: MeshSource,
    ca: Arc<dyn CertificateAuthority>,
}

fn setup(a: &Args) -> anyhow::Result<Setup> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let source = match (&a.local_xds_path, &a.xds_address) {
        (Some(path), _) => MeshSource::Local(Config::from_file(path)?),
        (None, Some(addr)) => {
            let node = ambit_xds::NodeIdentity::from_env();
            let mut c = ambit_xds::AdsConfig::new(addr.clone(), node);
            c.token_path = a
                .auth_token_path
                .exists()
                .then(|| a.auth_token_path.clone());
            c.cluster_id = Some(a.cluster_id.clone());
            c.root_certs_pem = a.xds_root_cert.as_ref().map(read).transpose()?;
            MeshSource::Xds(Box::new(c))
        }
        (None, None) => anyhow::bail!("no mesh configuration: set XDS_ADDRESS or LOCAL_XDS_PATH"),
    };
    let ca: Arc<dyn CertificateAuthority> = match (&a.ca_address, &a.local_ca_cert, &a.local_ca_key)
    {
        (_, Some(cert), Some(key)) => Arc::new(LocalCa::from_pem(
            &read(cert)?,
            &read(key)?,
            &a.trust_domain,
        )?),
        (Some(addr), _, _) => {
            let mut c = IstioCaConfig::default();
            c.address = addr.clone();
            c.token_path = a
                .auth_token_path
                .exists()
                .then(|| a.auth_token_path.clone());
            c.cluster_id = Some(a.cluster_id.clone());
            c.root_certs_pem = a.ca_root_cert.as_ref().map(read).transpose()?;
            Arc::new(IstioCaClient::new(c)?)
        }
        _ => anyhow::bail!(
            "no certificate authority: set CA_ADDRESS, or LOCAL_CA_CERT and LOCAL_CA_KEY"
        ),
    };
    Ok(Setup { source, ca })
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    // Before any thread exists: threads inherit their creator's capabilities.
    let binds = [
        args.admin_addr,
        args.stats_addr,
        args.readiness_addr,
        args.socks5_address,
    ];
    match privileges::drop_all_but(&privileges::needed(args.inpod, &binds)) {
        Ok(kept) => tracing::info!(?kept, "dropped every other capability"),
        Err(e) => {
            eprintln!("ztunnel: dropping capabilities: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ztunnel: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Clients (CA, xDS) are built inside the runtime they will run on.
    let setup = {
        let _enter = rt.enter();
        setup(&args)
    };
    let setup = match setup {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ztunnel: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match rt.block_on(run(args, setup)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ztunnel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: Args, s: Setup) -> anyhow::Result<()> {
    let state = Arc::new(RwLock::new(MeshState::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let from_xds = matches!(s.source, MeshSource::Xds(_));
    s.source
        .start(state.clone(), stopped(stop_rx.clone()))
        .await
        .context("loading the mesh configuration")?;
    if from_xds {
        let (w, sv, p) = state
            .read()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?
            .counts();
        tracing::info!(workloads = w, services = sv, policies = p, "xDS ready");
    }
    let mut mc = ManagerConfig::default();
    mc.ttl = Duration::from_secs(a.secret_ttl);
    let certs = Arc::new(CertManager::new(s.ca, mc));
    let proxy = Proxy::new(
        ProxyConfig {
            network: a.network.clone(),
            node_name: a.node_name.clone(),
            spoof_source: a.spoof_source,
            drain_deadline: Duration::from_secs(a.drain_seconds),
            ..ProxyConfig::default()
        },
        state.clone(),
        certs.clone(),
    );
    // Node mode binds the capture listeners now (fail fast on privileges).
    let sockets = Sockets::new();
    let listeners = if a.inpod {
        None
    } else {
        Some(
            Listeners::bind(&sockets, a.listen_ip, Default::default(), Capture::Tproxy)
                .with_context(|| {
                    format!(
                        "binding 15001/15006/15008 on {} (needs CAP_NET_ADMIN for IP_TRANSPARENT)",
                        a.listen_ip
                    )
                })?,
        )
    };
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    let (admin_l, stats_l, ready_l) = (
        bind(a.admin_addr).await?,
        bind(a.stats_addr).await?,
        bind(a.readiness_addr).await?,
    );
    let socks5 = match (a.enable_socks5, a.inpod) {
        (false, _) => None,
        (true, true) => {
            tracing::warn!("UNSTABLE_ENABLE_SOCKS5 is ignored in in-pod mode");
            None
        }
        (true, false) => {
            let l = bind(a.socks5_address).await?;
            Some(tokio::spawn({
                let (proxy, sockets) = (proxy.clone(), sockets.clone());
                let local = Local::Node(a.node_name.clone());
                let stop = stopped(stop_rx.clone());
                async move { proxy.serve_socks5(l, local, sockets, stop).await }
            }))
        }
    };
    let quit = Arc::new(tokio::sync::Notify::new());
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(admin::serve(
        admin_l,
        proxy.admin_responder(quit.clone()),
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(admin::serve(
        stats_l,
        proxy.metrics_responder(),
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(admin::serve(
        ready_l,
        Proxy::readiness_responder(ready.clone()),
        stopped(stop_rx.clone()),
    ));

    // Certificates for every local workload before declaring readiness.
    let local: Vec<_> = {
        let st = state
            .read()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?;
        st.workloads()
            .filter(|w| w.node == a.node_name)
            .filter_map(|w| w.identity())
            .collect()
    };
    for id in &local {
        certs
            .fetch(id)
            .await
            .with_context(|| format!("certificate for {id}"))?;
    }
    ready.store(true, Ordering::Release);
    tracing::info!(
        node = %a.node_name,
        local_workloads = local.len(),
        listen = %a.listen_ip,
        admin = %a.admin_addr,
        stats = %a.stats_addr,
        readiness = %a.readiness_addr,
        socks5 = %if a.enable_socks5 { a.socks5_address.to_string() } else { "off".into() },
        "ztunnel ready"
    );

    let serve: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match listeners {
        Some(l) => Box::pin(proxy.serve(
            l,
            Capture::Tproxy,
            Local::Node(a.node_name.clone()),
            sockets,
            stopped(stop_rx.clone()),
        )),
        None => Box::pin(serve_inpod(
            proxy.clone(),
            a.inpod_uds.clone(),
            a.inpod_mark,
            stopped(stop_rx.clone()),
        )),
    };
    tokio::pin!(serve);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = quit.notified() => tracing::info!("/quitquitquit: draining"),
        _ = &mut serve => {}
    }
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    serve.await;
    if let Some(s) = socks5 {
        let _ = s.await;
    }
    tracing::info!("ztunnel stopped");
    Ok(())
}

/// In-pod mode: keeps a ZDS connection to the node agent (reconnecting
/// with backoff while it is away) and serves the pods it hands over. Each
/// new connection starts with a snapshot, so pods are never lost.
async fn serve_inpod(
    proxy: Proxy,
    uds: PathBuf,
    mark: u32,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut inpod = ambit_l4proxy::InPod::new(proxy, mark);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        let conn = tokio::select! {
            _ = &mut shutdown => return,
            c = ambit_xds::ZdsClient::connect(&uds) => c,
        };
        match conn {
            Ok(client) => {
                tracing::info!(socket = %uds.display(), "connected to the node agent");
                backoff = Duration::from_millis(100);
                inpod.new_connection();
                tokio::select! {
                    _ = &mut shutdown => return,
                    r = client.run(&mut inpod) => match r {
                        Ok(()) => tracing::warn!("node agent closed the ZDS connection"),
                        Err(e) => tracing::warn!(error = %e, "ZDS connection failed"),
                    },
                }
            }
            Err(e) => tracing::debug!(error = %e, "node agent not reachable yet"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
