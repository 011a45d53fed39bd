//! The in-process control plane: a delta ADS server and an Istio CA
//! server, as istiod would serve them to the ztunnels and the waypoint.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_identity::LocalCa;
use ambit_netns::{NetNs, NsTask};

use crate::serve::tokio_listener;

/// The control plane: a delta ADS server and an Istio CA server, in
/// process, listening on node a's underlay address (reachable from every
/// ztunnel netns through the nodes' routes).
pub struct ControlPlane {
    /// The xDS resources; change them to push updates.
    pub store: ambit_xds::Store,
    /// `http://ip:15010`.
    pub xds_address: String,
    /// `http://ip:15012`.
    pub ca_address: String,
    stop: Arc<tokio::sync::Notify>,
    task: Option<NsTask<()>>,
}

impl ControlPlane {
    /// Starts both servers inside `ns`, bound to `ip`.
    pub fn start(
        ns: &NetNs,
        ip: IpAddr,
        ca: Arc<LocalCa>,
        config: &ambit_mesh::Config,
    ) -> anyhow::Result<Self> {
        let store = ambit_xds::Store::new();
        publish(&store, config);
        let xds_l = ns.tcp_listener(SocketAddr::new(ip, 15010))?;
        let ca_l = ns.tcp_listener(SocketAddr::new(ip, 15012))?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let (st, sp) = (store.clone(), stop.clone());
        let task = ns.spawn_async(move || async move {
            let (Ok(xl), Ok(cl)) = (tokio_listener(xds_l), tokio_listener(ca_l)) else {
                return;
            };
            let stop = tokio::sync::watch::channel(false);
            let (tx, rx) = stop;
            let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let ads = tokio::spawn(ambit_xds::AdsServer::new(st).serve(xl, wait(rx.clone())));
            let ca = tokio::spawn(ambit_identity::CaServer::new(ca).serve(cl, wait(rx)));
            sp.notified().await;
            let _ = tx.send(true);
            let _ = ads.await;
            let _ = ca.await;
        })?;
        Ok(Self {
            store,
            xds_address: format!("http://{}", SocketAddr::new(ip, 15010)),
            ca_address: format!("http://{}", SocketAddr::new(ip, 15012)),
            stop,
            task: Some(task),
        })
    }

    /// Stops both servers (connected clients see their streams end).
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
