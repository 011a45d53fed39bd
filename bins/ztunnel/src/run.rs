//! The wiring: configuration to a running proxy.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_app::{Signals, Stop, bind};
use ambit_identity::CertificateAuthority;
use ambit_l4proxy::{Capture, InPod, Listeners, Local, Proxy, ProxyConfig, Sockets};
use ambit_mesh::MeshState;
use ambit_mesh::xds::MeshSource;
use ambit_server::admin;
use anyhow::Context;

use crate::Args;

/// Everything read and checked before serving.
pub struct Setup {
    source: MeshSource,
    ca: Arc<dyn CertificateAuthority>,
}

/// Reads and checks the configuration (inside the runtime: the xDS and CA
/// clients are built here).
pub fn setup(a: &Args) -> anyhow::Result<Setup> {
    a.ca.apply_tls_settings()?;
    Ok(Setup {
        source: a.mesh.source(&a.ca, ambit_xds::NodeIdentity::from_env())?,
        ca: a.ca.authority(true)?,
    })
}

/// Runs ztunnel until a signal or `/quitquitquit`, then drains.
pub async fn run(a: Args, s: Setup) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    let state = Arc::new(RwLock::new(MeshState::new()));
    let stop = Stop::new();
    let from_xds = matches!(s.source, MeshSource::Xds(_));
    s.source
        .start(state.clone(), stop.wait())
        .await
        .context("loading the mesh configuration")?;
    if from_xds {
        let (w, sv, p) = state
            .read()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?
            .counts();
        tracing::info!(workloads = w, services = sv, policies = p, "xDS ready");
    }
    let certs = a.ca.manager(s.ca);
    let mut hbone_client = ambit_hbone::ClientConfig::default();
    let mut hbone_server = ambit_hbone::ServerConfig::default();
    a.hbone.apply(&mut hbone_client, &mut hbone_server);
    let r = &a.resolved;
    // KEEPALIVE_*: the HBONE connections' own sockets too.
    let idle = r.socket.keepalive.map(|k| k.time);
    hbone_client.tcp_keepalive = idle;
    hbone_server.tcp_keepalive = idle;
    notes(&a);
    // Dedicated mode serves one workload from its own netns (captured by
    // REDIRECT there, as a pod's); shared mode the node's pods.
    let (local, capture) = match &r.dedicated {
        Some(w) => (
            Local::Pod {
                uid: String::new(),
                name: w.name.clone(),
                namespace: w.namespace.clone(),
            },
            Capture::Redirect,
        ),
        None => (Local::Node(a.node_name.clone()), Capture::Tproxy),
    };
    let proxy = Proxy::new(
        ProxyConfig {
            hbone_client,
            hbone_server,
            network: a.network.clone(),
            node_name: a.node_name.clone(),
            spoof_source: a.spoof_source,
            drain_deadline: r.drain,
            socket: r.socket,
            dns: dns_settings(&a)?,
            ipv6: a.istio.ipv6_enabled,
            max_connections: match a.max_connections {
                0 => usize::MAX,
                n => n,
            },
            ..ProxyConfig::default()
        },
        state.clone(),
        certs.clone(),
    );
    // Node mode binds the capture listeners now (fail fast on privileges).
    let mut sockets = Sockets::new().with_options(r.socket);
    if r.dedicated.is_some() {
        sockets = sockets.with_mark(a.istio.packet_mark);
    }
    if !a.inpod {
        // A replacement ztunnel takes over the listeners (SO_REUSEPORT)
        // without resetting connections queued on this one's.
        sockets.enable_request_migration();
    }
    let listeners = if a.inpod {
        None
    } else {
        let l = Listeners::bind(&sockets, a.listen_ip, Default::default(), capture);
        Some(l.with_context(|| {
            format!(
                "binding 15001/15006/15008 on {} (needs CAP_NET_ADMIN for IP_TRANSPARENT)",
                a.listen_ip
            )
        })?)
    };
    // Node mode's DNS proxy, in ztunnel's namespace (the node's DNAT of
    // pods' port 53 lands here); in-pod mode opens one in each pod.
    let dns = if a.inpod {
        None
    } else {
        proxy
            .bind_dns(&sockets, a.listen_ip)
            .with_context(|| format!("binding the DNS proxy on {}", a.listen_ip))?
    };
    let (admin_l, stats_l, ready_l) = (
        bind(a.admin.admin_addr).await?,
        bind(a.admin.stats_addr).await?,
        bind(a.admin.readiness_addr).await?,
    );
    let socks5 = match (a.enable_socks5, a.inpod) {
        (false, _) => None,
        (true, true) => {
            tracing::warn!("UNSTABLE_ENABLE_SOCKS5 is ignored in in-pod mode");
            None
        }
        (true, false) => {
            let l = bind(a.socks5_address).await?;
            let (proxy, sockets, local) = (proxy.clone(), sockets.clone(), local.clone());
            let stopped = stop.wait();
            Some(tokio::spawn(async move {
                proxy.serve_socks5(l, local, sockets, stopped).await
            }))
        }
    };
    if let Some((udp, tcp)) = dns {
        let (proxy, local, stopped) = (proxy.clone(), local.clone(), stop.wait());
        tokio::spawn(async move { proxy.serve_dns(udp, tcp, &local, stopped).await });
    }
    let quit = Arc::new(tokio::sync::Notify::new());
    let ready = Arc::new(AtomicBool::new(false));
    let dump_config = crate::dump::config(&a);
    let admin = admin::with_route(
        proxy.admin_responder(quit.clone(), dump_config),
        "/logging",
        |m, q| {
            let (status, body) = ambit_app::logging(m.as_str(), q);
            admin::text(status, body)
        },
    );
    tokio::spawn(admin::serve(admin_l, admin, stop.wait()));
    tokio::spawn(admin::serve(
        stats_l,
        proxy.metrics_responder(),
        stop.wait(),
    ));
    let readiness = admin::readiness(ready.clone());
    tokio::spawn(admin::serve(ready_l, readiness, stop.wait()));

    // Certificates for every local workload before declaring readiness.
    let local_ids: Vec<_> = {
        let st = state
            .read()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?;
        st.workloads()
            .filter(|w| local.contains(w))
            .filter_map(|w| w.identity())
            .collect()
    };
    for id in &local_ids {
        certs
            .fetch(id)
            .await
            .with_context(|| format!("certificate for {id}"))?;
    }
    ready.store(true, Ordering::Release);
    tracing::info!(
        node = %a.node_name,
        local_workloads = local_ids.len(),
        listen = %a.listen_ip,
        admin = %a.admin.admin_addr,
        stats = %a.admin.stats_addr,
        readiness = %a.admin.readiness_addr,
        socks5 = %if a.enable_socks5 { a.socks5_address.to_string() } else { "off".into() },
        "ztunnel ready"
    );

    let serve: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match listeners {
        Some(l) => Box::pin(proxy.serve(l, capture, local, sockets, stop.wait())),
        None => Box::pin(serve_inpod(
            proxy.clone(),
            a.inpod_uds.clone(),
            a.inpod_mark,
            stop.wait(),
        )),
    };
    tokio::pin!(serve);
    tokio::select! {
        () = signals.wait(Some(&quit), "draining") => {}
        () = &mut serve => {}
    }
    ready.store(false, Ordering::Release);
    stop.trigger();
    serve.await;
    if let Some(s) = socks5 {
        let _ = s.await;
    }
    tracing::info!("ztunnel stopped");
    Ok(())
}

/// The DNS proxy's settings: upstreams from DNS_RESOLV_CONF (a missing
/// file leaves no upstream: only mesh names are answered).
fn dns_settings(a: &Args) -> anyhow::Result<Option<ambit_l4proxy::dns::DnsSettings>> {
    let Some(port) = a.resolved.dns_port else {
        return Ok(None);
    };
    let path = &a.istio.dns_resolv_conf;
    let conf = match ambit_dns::ResolvConf::read(path) {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "no upstream resolvers: the DNS proxy answers mesh names only");
            ambit_dns::ResolvConf::parse("")
        }
    };
    Ok(Some(ambit_l4proxy::dns::DnsSettings {
        config: ambit_dns::Config::from_resolv_conf(&conf),
        cluster_domain: a.istio.cluster_domain.clone(),
        preferred_namespace: a.istio.prefered_service_namespace.clone(),
        port,
    }))
}

/// Logs the settings that are read but change nothing in Ambit yet, so a
/// user sees that they were not silently dropped.
fn notes(a: &Args) {
    let i = &a.istio;
    ambit_l4proxy::route::set_authz_info_logging(i.authz_policy_info_logging);
    if i.xds_on_demand {
        tracing::info!(
            "XDS_ON_DEMAND=true: Ambit subscribes to every address; on-demand lookups are not needed"
        );
    }
    if let Some(ns) = &i.prefered_service_namespace {
        tracing::info!(namespace = %ns, "PREFERED_SERVICE_NAMESPACE applies to hostname resolution (SOCKS5 hostnames)");
    }
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
    let mut inpod = InPod::new(proxy, mark);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        let conn = tokio::select! {
            _ = &mut shutdown => break,
            c = ambit_xds::ZdsClient::connect(&uds) => c,
        };
        match conn {
            Ok(client) => {
                tracing::info!(socket = %uds.display(), "connected to the node agent");
                backoff = Duration::from_millis(100);
                inpod.new_connection();
                tokio::select! {
                    _ = &mut shutdown => break,
                    r = client.run(&mut inpod) => match r {
                        Ok(()) => tracing::warn!("node agent closed the ZDS connection"),
                        Err(e) => tracing::warn!(error = %e, "ZDS connection failed"),
                    },
                }
            }
            Err(e) => tracing::debug!(error = %e, "node agent not reachable yet"),
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    // Every pod's listeners close; their connections get the drain
    // deadline before the process exits.
    inpod.drain().await;
}
