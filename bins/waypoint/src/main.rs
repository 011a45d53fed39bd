//! `waypoint`: the L7 proxy of an Istio-compatible ambient mesh.
//!
//! Configuration follows Istio's environment variables (each also a flag;
//! see `--help`). Routing and L7 policy come from a YAML file
//! (`WAYPOINT_CONFIG`, schema in ambit-l7proxy's README); workloads and
//! services from `LOCAL_XDS_PATH` or `XDS_ADDRESS`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_identity::{
    CertManager, CertificateAuthority, Identity, IstioCaClient, IstioCaConfig, LocalCa,
    ManagerConfig,
};
use ambit_l7proxy::admin::{self, Responder, reply};
use ambit_l7proxy::{RouteConfig, Waypoint, WaypointConfig};
use ambit_mesh::xds::MeshSource;
use ambit_mesh::{Config, MeshState};
use anyhow::Context;
use clap::{Parser, ValueEnum};
use http::{Method, StatusCode};

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// The waypoint L7 proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Routing and L7 policy (YAML; see ambit-l7proxy's README).
    #[arg(long, env = "WAYPOINT_CONFIG")]
    config: Option<PathBuf>,
    /// Mesh configuration in ztunnel's local YAML format (no xDS).
    #[arg(long, env = "LOCAL_XDS_PATH")]
    local_xds_path: Option<PathBuf>,
    /// The xDS server (istiod); delta ADS for Address and Authorization.
    #[arg(long, env = "XDS_ADDRESS")]
    xds_address: Option<String>,
    /// PEM roots for the xDS server's TLS certificate.
    #[arg(long, env = "XDS_ROOT_CA")]
    xds_root_cert: Option<PathBuf>,
    /// Istio CA address.
    #[arg(long, env = "CA_ADDRESS")]
    ca_address: Option<String>,
    /// PEM roots for the CA's TLS certificate.
    #[arg(long, env = "CA_ROOT_CA")]
    ca_root_cert: Option<PathBuf>,
    /// Bearer token file sent to the CA and xDS server.
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
    /// Cluster id (sent to the CA and xDS server as `clusterid`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// This pod's name.
    #[arg(long, env = "POD_NAME", default_value = "waypoint")]
    pod_name: String,
    /// This pod's namespace (the identity's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pod_namespace: String,
    /// This pod's service account (the identity's service account).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "waypoint")]
    service_account: String,
    /// This pod's IP (logs).
    #[arg(long, env = "INSTANCE_IP")]
    instance_ip: Option<IpAddr>,
    /// The network VIPs and workload addresses belong to.
    #[arg(long, env = "NETWORK", default_value = "")]
    network: String,
    /// Certificate lifetime requested from the CA (seconds).
    #[arg(long, env = "SECRET_TTL", default_value_t = 86400)]
    secret_ttl: u64,
    /// The HBONE listener.
    #[arg(long, env = "WAYPOINT_HBONE_ADDRESS", default_value = "0.0.0.0:15008")]
    hbone_addr: SocketAddr,
    /// Admin endpoint (config_dump, quitquitquit).
    #[arg(long, env = "ADMIN_ADDRESS", default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Prometheus metrics endpoint.
    #[arg(long, env = "STATS_ADDRESS", default_value = "0.0.0.0:15020")]
    stats_addr: SocketAddr,
    /// Readiness endpoint (/healthz/ready).
    #[arg(long, env = "READINESS_ADDRESS", default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// How long requests may continue after SIGTERM (seconds).
    #[arg(long, env = "DRAIN_DURATION", default_value_t = 5)]
    drain_seconds: u64,
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

/// Everything read and checked before serving.
struct Setup {
    source: MeshSource,
    routes: RouteConfig,
    ca: Arc<dyn CertificateAuthority>,
    identity: Identity,
}

fn setup(a: &Args) -> anyhow::Result<Setup> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let routes = match &a.config {
        Some(path) => RouteConfig::from_file(path)?,
        None => RouteConfig::parse("", "<none>")?,
    };
    let source = match (&a.local_xds_path, &a.xds_address) {
        (Some(path), _) => MeshSource::Local(Config::from_file(path)?),
        (None, Some(addr)) => {
            // istiod knows waypoints as Envoy routers, not as ztunnels.
            let node = ambit_xds::NodeIdentity::from_env().with_proxy_type("router");
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
            // The waypoint asks for its own identity (the token's service
            // account); only node proxies impersonate workloads.
            c.impersonate = false;
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
    let identity = Identity::new(&a.trust_domain, &a.pod_namespace, &a.service_account)
        .context("the waypoint's identity (TRUST_DOMAIN, POD_NAMESPACE, SERVICE_ACCOUNT)")?;
    Ok(Setup {
        source,
        routes,
        ca,
        identity,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("waypoint: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let setup = {
        let _enter = rt.enter();
        setup(&args)
    };
    let setup = match setup {
        Ok(s) => s,
        Err(e) => {
            eprintln!("waypoint: invalid configuration: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match rt.block_on(run(args, setup)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("waypoint: {e:#}");
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
    s.source
        .start(state.clone(), stopped(stop_rx.clone()))
        .await
        .context("loading the mesh configuration")?;
    let mut mc = ManagerConfig::default();
    mc.ttl = Duration::from_secs(a.secret_ttl);
    let certs = Arc::new(CertManager::new(s.ca, mc));
    certs
        .fetch(&s.identity)
        .await
        .with_context(|| format!("certificate for {}", s.identity))?;
    let mut wc = WaypointConfig::new(s.identity.clone());
    wc.network = a.network.clone();
    let waypoint = Waypoint::new(wc, state.clone(), s.routes, certs);

    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    let (hbone_l, admin_l, stats_l, ready_l) = (
        bind(a.hbone_addr).await?,
        bind(a.admin_addr).await?,
        bind(a.stats_addr).await?,
        bind(a.readiness_addr).await?,
    );
    let quit = Arc::new(tokio::sync::Notify::new());
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(admin::serve(
        admin_l,
        admin_responder(waypoint.clone(), quit.clone()),
        stopped(stop_rx.clone()),
    ));
    let metrics = waypoint.metrics().clone();
    let stats: Responder = Arc::new(move |_: &Method, path: &str| match path {
        "/metrics" | "/stats/prometheus" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    });
    tokio::spawn(admin::serve(stats_l, stats, stopped(stop_rx.clone())));
    let r = ready.clone();
    let readiness: Responder =
        Arc::new(
            move |_: &Method, path: &str| match (path, r.load(Ordering::Acquire)) {
                ("/healthz/ready", true) => reply(StatusCode::OK, "text/plain", "ready\n"),
                ("/healthz/ready", false) => {
                    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
                }
                _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
            },
        );
    tokio::spawn(admin::serve(ready_l, readiness, stopped(stop_rx.clone())));

    let serve = waypoint.serve(hbone_l, stopped(stop_rx.clone()));
    tokio::pin!(serve);
    ready.store(true, Ordering::Release);
    tracing::info!(
        identity = %s.identity,
        pod = %a.pod_name,
        instance_ip = ?a.instance_ip,
        hbone = %a.hbone_addr,
        admin = %a.admin_addr,
        stats = %a.stats_addr,
        readiness = %a.readiness_addr,
        "waypoint ready"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = quit.notified() => tracing::info!("/quitquitquit: draining"),
        r = &mut serve => return r.context("hbone server"),
    }
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(a.drain_seconds + 1), serve).await {
        Ok(r) => r.context("hbone server")?,
        Err(_) => tracing::warn!("drain deadline passed"),
    }
    tracing::info!("waypoint stopped");
    Ok(())
}

fn admin_responder(w: Waypoint, quit: Arc<tokio::sync::Notify>) -> Responder {
    Arc::new(move |method: &Method, path: &str| match (method, path) {
        (&Method::POST, "/quitquitquit") => {
            quit.notify_one();
            reply(StatusCode::OK, "text/plain", "OK\n")
        }
        (_, "/config_dump") => {
            let routes = w.routes();
            let counts = w.state().read().map(|s| s.counts()).unwrap_or((0, 0, 0));
            let hosts: Vec<String> = routes
                .services
                .iter()
                .map(|s| {
                    format!(
                        "{{\"host\":{:?},\"routes\":{},\"policies\":{}}}",
                        s.host,
                        s.routes.len(),
                        s.policies.len()
                    )
                })
                .collect();
            let body = format!(
                "{{\"workloads\":{},\"services\":{},\"policies\":{},\"routing\":[{}]}}\n",
                counts.0,
                counts.1,
                counts.2,
                hosts.join(",")
            );
            reply(StatusCode::OK, "application/json", body)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}
