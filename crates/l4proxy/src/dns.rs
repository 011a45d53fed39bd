//! ztunnel's DNS proxy (15053, UDP and TCP): [`ambit_dns::DnsProxy`]
//! answering mesh hostnames from the mesh state
//! ([`ambit_mesh::MeshState::resolve_host`]: service hostnames and their
//! Kubernetes short forms in the client's namespace, ServiceEntry hosts,
//! workload hostnames) and forwarding every other name upstream. In-pod
//! mode serves it inside each pod (127.0.0.1:15053, where the pod's
//! REDIRECT of port 53 lands); node mode in ztunnel's own namespace.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use ambit_dns::{ClientLabels, DnsProxy, Family, MeshAnswer, MeshResolver, Name};
use ambit_mesh::{MeshState, Workload};
use tokio::net::{TcpListener, UdpSocket};

use crate::plan::{Local, captured_source};
use crate::proxy::Proxy;
use crate::sockets::Sockets;

/// The DNS proxy's settings.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Upstreams, timeouts and caps.
    pub config: ambit_dns::Config,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// istio/ztunnel's `PREFERED_SERVICE_NAMESPACE`: the namespace whose
    /// service wins, after the client's own, when several define a name.
    pub preferred_namespace: Option<String>,
    /// The port (15053).
    pub port: u16,
}

/// Mesh names for the clients of one capture scope: the client workload
/// is found by its address, or is the scope's pod (in-pod mode, for a
/// query from 127.0.0.1).
struct MeshNames {
    state: Arc<RwLock<MeshState>>,
    network: String,
    local: Local,
    cluster_domain: String,
    preferred_namespace: Option<String>,
}

impl MeshNames {
    /// The client workload as a captured connection's source is found
    /// ([`captured_source`]); in-pod, a query from loopback whose ZDS uid
    /// is not the workload's uid is still the pod's (by name/namespace).
    fn client(&self, st: &MeshState, client: SocketAddr) -> Option<Arc<Workload>> {
        // Node mode: a query from loopback is ztunnel's own netns, no workload.
        if client.ip().is_loopback() && matches!(self.local, Local::Node(_)) {
            return None;
        }
        captured_source(st, &self.network, &self.local, client.ip()).or_else(|| match &self.local {
            Local::Pod { .. } => st.workloads().find(|w| self.local.contains(w)).cloned(),
            Local::Node(_) => None,
        })
    }
}

impl MeshResolver for MeshNames {
    fn lookup(&self, client: SocketAddr, name: &Name, family: Family) -> Option<MeshAnswer> {
        let st = self.state.read().ok()?;
        let src = self.client(&st, client);
        let asked = name.to_ascii();
        let answer = st.resolve_host(
            &asked,
            src.as_deref(),
            &self.cluster_domain,
            self.preferred_namespace.as_deref(),
        )?;
        let addrs: Vec<IpAddr> = match family {
            Family::V4 => answer.ipv4().map(IpAddr::V4).collect(),
            Family::V6 => answer.ipv6().map(IpAddr::V6).collect(),
        };
        let out = MeshAnswer::addrs(addrs);
        Some(
            match answer
                .cname
                .as_deref()
                .and_then(|c| Name::from_ascii(format!("{}.", c.trim_end_matches('.'))).ok())
            {
                Some(c) => out.with_canonical_name(c),
                None => out,
            },
        )
    }

    fn client_labels(&self, client: SocketAddr) -> ClientLabels {
        let Ok(st) = self.state.read() else {
            return ClientLabels::default();
        };
        let or_unknown = |v: &str| {
            if v.is_empty() {
                "unknown".to_owned()
            } else {
                v.to_owned()
            }
        };
        match self.client(&st, client) {
            Some(w) => ClientLabels {
                canonical_service: or_unknown(&w.canonical_name),
                canonical_revision: or_unknown(&w.canonical_revision),
            },
            None => ClientLabels::default(),
        }
    }
}

impl Proxy {
    /// The DNS proxy for `local`'s clients, if DNS is enabled.
    pub(crate) fn dns_for(&self, local: &Local) -> Option<DnsProxy> {
        let s = self.inner.cfg.dns.as_ref()?;
        let names = MeshNames {
            state: self.inner.state.clone(),
            network: self.inner.cfg.network.clone(),
            local: local.clone(),
            cluster_domain: s.cluster_domain.clone(),
            preferred_namespace: s.preferred_namespace.clone(),
        };
        Some(DnsProxy::new(
            s.config.clone(),
            Arc::new(names),
            self.inner.metrics.dns().clone(),
        ))
    }

    /// Binds the DNS proxy's UDP socket and TCP listener on `ip` (port
    /// from the settings) with `sockets`; `None` if DNS is disabled.
    pub fn bind_dns(
        &self,
        sockets: &Sockets,
        ip: IpAddr,
    ) -> std::io::Result<Option<(UdpSocket, TcpListener)>> {
        let Some(s) = self.inner.cfg.dns.as_ref() else {
            return Ok(None);
        };
        let addr = SocketAddr::new(ip, s.port);
        Ok(Some((
            sockets.udp_bind(addr)?,
            sockets.listen(addr, false)?,
        )))
    }

    /// Serves DNS for `local`'s clients on `udp` and `tcp` until
    /// `shutdown` (no-op if DNS is disabled).
    pub async fn serve_dns(
        &self,
        udp: UdpSocket,
        tcp: TcpListener,
        local: &Local,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        if let Some(dns) = self.dns_for(local) {
            dns.serve(udp, tcp, shutdown).await;
        }
    }
}
