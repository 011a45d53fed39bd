//! The engine value: settings, mesh state, certificates, the HBONE client
//! and metrics, shared by every listener and connection.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_hbone::{Client, Server};
use ambit_identity::CertManager;
use ambit_mesh::MeshState;

use crate::inbound::InboundHandler;
use crate::metrics::Metrics;
use crate::route::Ports;

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The network this proxy's addresses live on ("" by default).
    pub network: String,
    /// The node name (workloads with this `node` are local).
    pub node_name: String,
    /// ztunnel's ports.
    pub ports: Ports,
    /// Connect to local workloads with the original source address.
    pub spoof_source: bool,
    /// How long connections may go on after shutdown starts.
    pub drain_deadline: Duration,
    /// HBONE client settings.
    pub hbone_client: ambit_hbone::ClientConfig,
    /// HBONE server settings.
    pub hbone_server: ambit_hbone::ServerConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            network: String::new(),
            node_name: String::new(),
            ports: Ports::default(),
            spoof_source: true,
            drain_deadline: Duration::from_secs(5),
            hbone_client: ambit_hbone::ClientConfig::default(),
            hbone_server: ambit_hbone::ServerConfig::default(),
        }
    }
}

/// The ztunnel engine. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("node", &self.inner.cfg.node_name)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) cfg: ProxyConfig,
    /// The mesh, written by the config source, read per connection.
    pub(crate) state: Arc<RwLock<MeshState>>,
    pub(crate) certs: Arc<CertManager>,
    pub(crate) client: Client,
    pub(crate) metrics: Metrics,
    /// One HBONE server per local identity and capture scope, so each
    /// presents its own certificate; built on first use and kept for the
    /// process.
    pub(crate) servers: tokio::sync::Mutex<HashMap<String, Server<InboundHandler>>>,
}

impl Proxy {
    /// A proxy over `state`, with certificates from `certs`.
    pub fn new(cfg: ProxyConfig, state: Arc<RwLock<MeshState>>, certs: Arc<CertManager>) -> Self {
        let client = Client::new(cfg.hbone_client.clone(), Arc::clone(&certs));
        Self {
            inner: Arc::new(Inner {
                cfg,
                state,
                certs,
                client,
                metrics: Metrics::new(),
                servers: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The mesh state.
    pub fn state(&self) -> &Arc<RwLock<MeshState>> {
        &self.inner.state
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The HBONE client (pooled connections).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}
