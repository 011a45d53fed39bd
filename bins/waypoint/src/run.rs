//! The wiring: configuration to a running waypoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_app::{Signals, Stop, bind};
use ambit_identity::{CertificateAuthority, Identity};
use ambit_l7proxy::{RouteConfig, Waypoint, WaypointConfig};
use ambit_mesh::MeshState;
use ambit_mesh::xds::MeshSource;
use ambit_server::admin::{self, Responder, not_found, reply};
use anyhow::Context;
use http::{Method, StatusCode};

use crate::Args;
use crate::routes::{self, Plan};

/// Everything read and checked before serving.
pub struct Setup {
    source: MeshSource,
    routes: Plan,
    ca: Arc<dyn CertificateAuthority>,
    identity: Identity,
    workers: usize,
}

/// Reads and checks the configuration (inside the runtime: the xDS and CA
/// clients are built here).
pub fn setup(a: &Args) -> anyhow::Result<Setup> {
    a.ca.apply_tls_settings()?;
    let routes = routes::plan(a, std::env::var_os("KUBERNETES_SERVICE_HOST").is_some())?;
    // istiod knows waypoints as Envoy routers, not as ztunnels.
    let node = ambit_xds::NodeIdentity::from_env().with_proxy_type("router");
    let identity = Identity::new(&a.ca.trust_domain, &a.pod_namespace, &a.service_account)
        .context("the waypoint's identity (TRUST_DOMAIN, POD_NAMESPACE, SERVICE_ACCOUNT)")?;
    Ok(Setup {
        workers: a.workers()?,
        source: a.mesh.source(&a.ca, node)?,
        routes,
        // The waypoint asks for its own identity (the token's service
        // account); only node proxies impersonate workloads.
        ca: a.ca.authority(false)?,
        identity,
    })
}

/// Runs the waypoint until a signal or `/quitquitquit`, then drains.
pub async fn run(a: Args, s: Setup) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    let state = Arc::new(RwLock::new(MeshState::new()));
    let stop = Stop::new();
    s.source
        .start(state.clone(), stop.wait())
        .await
        .context("loading the mesh configuration")?;
    let certs = a.ca.manager(s.ca);
    certs
        .fetch(&s.identity)
        .await
        .with_context(|| format!("certificate for {}", s.identity))?;
    let mut wc = WaypointConfig::new(s.identity.clone());
    wc.network = a.network.clone();
    wc.idle_timeout = a.idle_timeout;
    let routes_from = s.routes.name();
    let (initial, kube) = match s.routes {
        Plan::File(r) => (r, None),
        Plan::Kube(id) => (RouteConfig::parse("", "<kube>")?, Some(id)),
    };
    let waypoint = Waypoint::new(wc, state.clone(), initial, certs);
    // Kept for the process's life: dropping it stops the watches.
    let _gateway = match kube {
        Some(id) => {
            tracing::info!(gateway = %format!("{}/{}", id.namespace, id.name), "routes from the Kubernetes API");
            Some(routes::start_kube(&a, id, state.clone(), waypoint.clone()).await?)
        }
        None => None,
    };

    // One HBONE listener per worker, in one SO_REUSEPORT group.
    let hbone_ls = ambit_server::reuseport_listeners(a.hbone_addr, s.workers)?;
    let (admin_l, stats_l, ready_l) = (
        bind(a.admin.admin_addr).await?,
        bind(a.admin.stats_addr).await?,
        bind(a.admin.readiness_addr).await?,
    );
    let quit = Arc::new(tokio::sync::Notify::new());
    let ready = Arc::new(AtomicBool::new(false));
    let admin = admin::with_route(
        admin_responder(waypoint.clone(), routes_from, s.workers, quit.clone()),
        "/logging",
        |m, q| {
            let (status, body) = ambit_app::logging(m.as_str(), q);
            admin::text(status, body)
        },
    );
    tokio::spawn(admin::serve(admin_l, admin, stop.wait()));
    let metrics = waypoint.metrics().clone();
    let stats = admin::prometheus(move || metrics.encode());
    tokio::spawn(admin::serve(stats_l, stats, stop.wait()));
    let readiness = admin::readiness(ready.clone());
    tokio::spawn(admin::serve(ready_l, readiness, stop.wait()));

    let serve = waypoint
        .serve_workers(hbone_ls, {
            let stop = stop.clone();
            move || stop.wait()
        })
        .context("hbone server")?;
    tokio::pin!(serve);
    ready.store(true, Ordering::Release);
    tracing::info!(
        identity = %s.identity,
        pod = %a.pod_name,
        instance_ip = ?a.instance_ip,
        hbone = %a.hbone_addr,
        workers = s.workers,
        routes_from,
        admin = %a.admin.admin_addr,
        stats = %a.admin.stats_addr,
        readiness = %a.admin.readiness_addr,
        "waypoint ready"
    );
    tokio::select! {
        () = signals.wait(Some(&quit), "draining") => {}
        r = &mut serve => return r.context("hbone server"),
    }
    ready.store(false, Ordering::Release);
    stop.trigger();
    let deadline = Duration::from_secs(a.admin.drain_seconds + 1);
    match tokio::time::timeout(deadline, serve).await {
        Ok(r) => r.context("hbone server")?,
        Err(_) => tracing::warn!("drain deadline passed"),
    }
    tracing::info!("waypoint stopped");
    Ok(())
}

/// The admin endpoint (15000): `/config_dump` (the routes' source, the
/// worker count, counts and routing per host), `/quitquitquit`.
fn admin_responder(
    w: Waypoint,
    routes_from: &'static str,
    workers: usize,
    quit: Arc<tokio::sync::Notify>,
) -> Responder {
    Arc::new(
        move |method: &Method, path: &str, _: &str| match (method, path) {
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
                    "{{\"routesFrom\":{routes_from:?},\"workers\":{workers},\"workloads\":{},\"services\":{},\"policies\":{},\"routing\":[{}]}}\n",
                    counts.0,
                    counts.1,
                    counts.2,
                    hosts.join(",")
                );
                reply(StatusCode::OK, "application/json", body)
            }
            _ => not_found(),
        },
    )
}
