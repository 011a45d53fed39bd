//! The in-process control plane: a delta ADS server and an Istio CA
//! server on one TLS port, as istiod serves them on 15012 to the ztunnels
//! and the waypoint.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_identity::{Authn, CaServer, LocalCa, ca::MAX_LEAF_TTL, grpc};
use ambit_netns::{NetNs, NsTask};
use anyhow::Context;

use crate::serve::tokio_listener;

/// istiod's xDS and CA port.
pub const PORT: u16 = 15012;

/// The control plane: delta ADS and the Istio CA, in process, on one TLS
/// port (15012) of node a's underlay address (reachable from every ztunnel
/// netns through the nodes' routes). Its certificate, issued by the mesh
/// CA, names istiod (`istiod.istio-system.svc`, ...) and the address, so a
/// proxy configured as for istiod (`XDS_ADDRESS`/`CA_ADDRESS` this
/// address, `XDS_ROOT_CA`/`CA_ROOT_CA` the mesh root, `ALT_XDS_HOSTNAME`/
/// `ALT_CA_HOSTNAME` [`Self::tls_server_name`]) takes config and
/// certificates from it unchanged.
pub struct ControlPlane {
    /// The xDS resources; change them to push updates.
    pub store: ambit_xds::Store,
    /// The ADS server (its [`stats`](ambit_xds::AdsServer::stats) record
    /// each stream's headers).
    pub ads: ambit_xds::AdsServer,
    /// `https://ip:15012`.
    pub xds_address: String,
    /// `https://ip:15012` (the same port).
    pub ca_address: String,
    /// The root the serving certificate chains to (the mesh CA's), PEM.
    pub root_pem: String,
    /// The name to verify the server as: `istiod.istio-system.svc`.
    pub tls_server_name: &'static str,
    stop: Arc<tokio::sync::Notify>,
    task: Option<NsTask<()>>,
}

impl ControlPlane {
    /// Starts the server inside `ns`, bound to `ip`, admitting every caller.
    pub fn start(
        ns: &NetNs,
        ip: IpAddr,
        ca: Arc<LocalCa>,
        config: &ambit_mesh::Config,
    ) -> anyhow::Result<Self> {
        Self::start_with(ns, ip, ca, config, Authn::none())
    }

    /// [`start`](Self::start) with the callers authenticated by `authn`
    /// (on the xDS stream and the CA alike).
    pub fn start_with(
        ns: &NetNs,
        ip: IpAddr,
        ca: Arc<LocalCa>,
        config: &ambit_mesh::Config,
        authn: Authn,
    ) -> anyhow::Result<Self> {
        let store = ambit_xds::Store::new();
        publish(&store, config);
        let cert = ca
            .issue_serving_cert(grpc::ISTIOD_DNS_NAMES, &[ip], MAX_LEAF_TTL)
            .context("issuing the control plane's serving certificate")?;
        let tls = Arc::new(
            grpc::server_config(&cert, &authn, &[ca.root().clone()])
                .context("building the control plane's tls config")?,
        );
        let listener = ns.tcp_listener(SocketAddr::new(ip, PORT))?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let ads = ambit_xds::AdsServer::new(store.clone());
        let root_pem = ca.root_pem();
        let (sp, server) = (stop.clone(), ads.clone());
        let task = ns.spawn_async(move || async move {
            let Ok(listener) = tokio_listener(listener) else {
                return;
            };
            let closer = server.clone();
            let router = tonic::transport::Server::builder()
                .add_service(authn.intercept(server.into_service()))
                .add_service(CaServer::new(ca).with_authn(authn).into_service());
            let shutdown = async move {
                sp.notified().await;
                // xDS streams never end by themselves.
                closer.close_streams();
            };
            if let Err(e) = grpc::serve_tls(router, listener, tls, shutdown).await {
                eprintln!("control plane: {e:#}");
            }
        })?;
        let address = format!("https://{}", SocketAddr::new(ip, PORT));
        Ok(Self {
            store,
            ads,
            xds_address: address.clone(),
            ca_address: address,
            root_pem,
            tls_server_name: grpc::ISTIOD_SERVER_NAME,
            stop,
            task: Some(task),
        })
    }

    /// Stops the server (connected clients see their streams end).
    pub fn stop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.task.take() {
            t.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Puts every workload, service and policy of `config` in the store.
pub fn publish(store: &ambit_xds::Store, config: &ambit_mesh::Config) {
    use ambit_mesh::xds::encode;
    for w in &config.workloads {
        store.insert_message(w.uid.clone(), &encode::workload(w));
    }
    for svc in &config.services {
        store.insert_message(svc.key(), &encode::service(svc));
    }
    for p in &config.policies {
        store.insert_message(p.key(), &encode::policy(p));
    }
}
