//! The engine value: settings, mesh state, certificates, the HBONE client
//! and metrics, shared by every listener and connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use ambit_hbone::{Client, Server};
use ambit_identity::CertManager;
use ambit_mesh::MeshState;

use crate::inbound::InboundHandler;
use crate::metrics::Metrics;
use crate::route::Ports;
use crate::watch::Registry;

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
    /// ztunnel's own addresses: an outbound connection to one of them on
    /// a ztunnel port is a self-loop and refused (as is any loopback or
    /// unspecified destination). Empty: [`Proxy::new`] reads the
    /// addresses of the interfaces in the namespace it is created in.
    pub own_addresses: Vec<IpAddr>,
    /// Most connections served at once per listener (outbound, inbound
    /// plaintext, HBONE, SOCKS5); a connection beyond it is closed at once
    /// and a warning logged. `usize::MAX`: no cap.
    pub max_connections: usize,
    /// Keepalive, user timeout and port reuse of the sockets the proxy
    /// makes for pods (in-pod mode); node mode passes them to its own
    /// [`crate::Sockets`].
    pub socket: crate::sockets::SocketOptions,
    /// The DNS proxy (15053); `None`: off.
    pub dns: Option<crate::dns::DnsSettings>,
    /// IPv6 (Istio's `IPV6_ENABLED`): in-pod listeners bind `[::]`
    /// (dual-stack: IPv4 arrives as mapped addresses, which the proxy
    /// reads back as IPv4) and the DNS proxy also `[::1]`. A pod whose
    /// namespace has no IPv6 gets IPv4 listeners.
    pub ipv6: bool,
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
            own_addresses: Vec::new(),
            max_connections: usize::MAX,
            socket: crate::sockets::SocketOptions::default(),
            dns: None,
            ipv6: false,
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
    /// presents its own certificate; built on first use, dropped when its
    /// scope stops serving (in-pod: the pod is removed).
    servers: Mutex<HashMap<(String, u64), Server<InboundHandler>>>,
    /// Open inbound connections, re-authorized on every mesh change.
    pub(crate) registry: Arc<Registry>,
    /// In-pod mode: the pods served, by ZDS uid → (name, namespace);
    /// `None` in node mode.
    pub(crate) pods: Mutex<Option<std::collections::BTreeMap<String, (String, String)>>>,
}

impl Inner {
    /// The in-pod pods served (see the field).
    pub(crate) fn pods(
        &self,
    ) -> MutexGuard<'_, Option<std::collections::BTreeMap<String, (String, String)>>> {
        match self.pods.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The HBONE servers, by (identity, capture scope). Never held across
    /// an await.
    pub(crate) fn servers(&self) -> MutexGuard<'_, HashMap<(String, u64), Server<InboundHandler>>> {
        match self.servers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl Proxy {
    /// A proxy over `state`, with certificates from `certs`.
    pub fn new(
        mut cfg: ProxyConfig,
        state: Arc<RwLock<MeshState>>,
        certs: Arc<CertManager>,
    ) -> Self {
        if cfg.own_addresses.is_empty() {
            cfg.own_addresses = interface_addresses();
        }
        let client = Client::new(cfg.hbone_client.clone(), Arc::clone(&certs));
        let registry = Arc::new(Registry::default());
        tokio::spawn(crate::watch::run(
            Arc::downgrade(&registry),
            Arc::downgrade(&state),
        ));
        Self {
            inner: Arc::new(Inner {
                cfg,
                state,
                certs,
                client,
                metrics: Metrics::new(),
                servers: Mutex::new(HashMap::new()),
                registry,
                pods: Mutex::new(None),
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

/// The addresses of this namespace's interfaces (empty if they cannot be
/// read; loopback destinations are refused regardless).
fn interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        tracing::warn!("cannot list interface addresses: self-loop guard covers loopback only");
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
