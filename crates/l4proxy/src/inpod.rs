//! In-pod mode: the node agent hands ztunnel each pod's network namespace
//! over ZDS, and ztunnel opens the pod's 15001/15006/15008 listeners inside
//! it, with every socket marked (1337) so the pod's REDIRECT rules let
//! ztunnel's own traffic pass.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use ambit_netns::NetNs;
use ambit_xds::{HandlerError, ZdsHandler, ZdsMessage};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::sockets::Sockets;
use crate::{Capture, Listeners, Local, Proxy};

/// ztunnel's mark in in-pod mode (Istio's 1337).
pub const INPOD_MARK: u32 = 1337;

struct PodServer {
    stop: Arc<Notify>,
    task: JoinHandle<()>,
    /// The pod's network namespace (device, inode): an Add for the same
    /// pod and namespace is a keep; a new namespace (the sandbox was
    /// recreated) gets fresh listeners.
    netns: (u64, u64),
}

/// The identity of a network namespace file descriptor.
fn netns_id(fd: &std::os::fd::OwnedFd) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::from(fd.try_clone()?);
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// Serves pods as ZDS adds and removes them.
pub struct InPod {
    proxy: Proxy,
    mark: u32,
    pods: HashMap<String, PodServer>,
    /// Pods added or kept since the last (re)connection, for the snapshot.
    seen: HashSet<String>,
}

impl std::fmt::Debug for InPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPod")
            .field("pods", &self.pods.len())
            .finish()
    }
}

impl InPod {
    /// In-pod serving for `proxy`, marking sockets with `mark`.
    pub fn new(proxy: Proxy, mark: u32) -> Self {
        proxy.inner.pods().get_or_insert_with(Default::default);
        Self {
            proxy,
            mark,
            pods: HashMap::new(),
            seen: HashSet::new(),
        }
    }

    /// The pods being served.
    pub fn pods(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// Call when a new ZDS connection starts: its snapshot decides which
    /// pods stay.
    pub fn new_connection(&mut self) {
        self.seen.clear();
    }

    fn stop_pod(&mut self, uid: &str) {
        if let Some(p) = self.pods.remove(uid) {
            if let Some(pods) = self.proxy.inner.pods().as_mut() {
                pods.remove(uid);
            }
            let m = self.proxy.metrics().inpod();
            m.stopped.inc();
            m.active.set(self.pods.len() as i64);
            p.stop.notify_one();
            // The pod's listeners drain in the background.
            drop(p.task);
        }
    }

    fn add(
        &mut self,
        uid: String,
        info: Option<ambit_xds::proto::istio::workload::zds::WorkloadInfo>,
        fd: std::os::fd::OwnedFd,
    ) -> Result<(), String> {
        let netns = netns_id(&fd).map_err(|e| format!("reading pod {uid}'s netns: {e}"))?;
        if let Some(p) = self.pods.get(&uid)
            && p.netns == netns
            && !p.task.is_finished()
        {
            // A restarted node agent re-announces pods ztunnel already
            // serves: keep the listeners (binding again would fail).
            tracing::info!(%uid, "already serving this pod in this netns: kept");
            self.seen.insert(uid);
            return Ok(());
        }
        let ns = NetNs::from_fd(fd, format!("pod {uid}")).map_err(|e| e.to_string())?;
        let sockets = Sockets::new()
            .in_netns(Arc::new(ns))
            .with_mark(Some(self.mark))
            .with_options(self.proxy.inner.cfg.socket);
        sockets.enable_request_migration();
        let ipv6 = self.proxy.inner.cfg.ipv6;
        let bind =
            |ip: IpAddr| Listeners::bind(&sockets, ip, Default::default(), Capture::Redirect);
        let listeners = match bind(if ipv6 { ANY6 } else { ANY4 }) {
            Err(e) if ipv6 && no_ipv6(&e) => {
                tracing::info!(%uid, error = %e, "no IPv6 in this pod: IPv4 listeners");
                bind(ANY4)
            }
            r => r,
        }
        .map_err(|e| format!("opening listeners in pod {uid}: {e}"))?;
        // The pod's REDIRECT of port 53 lands on 127.0.0.1:15053, over
        // IPv6 on [::1]:15053.
        let mut dns = Vec::new();
        dns.extend(
            self.proxy
                .bind_dns(&sockets, IpAddr::from([127, 0, 0, 1]))
                .map_err(|e| format!("opening the DNS proxy in pod {uid}: {e}"))?,
        );
        if ipv6 {
            match self
                .proxy
                .bind_dns(&sockets, IpAddr::from(Ipv6Addr::LOCALHOST))
            {
                Ok(d) => dns.extend(d),
                Err(e) if no_ipv6(&e) => {
                    tracing::debug!(%uid, error = %e, "no IPv6 loopback in this pod: DNS on IPv4 only");
                }
                Err(e) => return Err(format!("opening the DNS proxy in pod {uid}: {e}")),
            }
        }
        let (name, namespace) = info.map(|i| (i.name, i.namespace)).unwrap_or_default();
        self.stop_pod(&uid);
        let stop = Arc::new(Notify::new());
        let s = stop.clone();
        let proxy = self.proxy.clone();
        let (local_name, local_namespace) = (name.clone(), namespace.clone());
        let local = Local::Pod {
            uid: uid.clone(),
            name,
            namespace,
        };
        let task = tokio::spawn(async move {
            // One stop for the TCP listeners and the DNS proxy.
            let (tx, rx) = tokio::sync::watch::channel(false);
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let mut dns = dns.into_iter();
            let serve_dns = |d: Option<(tokio::net::UdpSocket, tokio::net::TcpListener)>| {
                let (proxy, local, rx) = (&proxy, &local, rx.clone());
                async move {
                    if let Some((udp, tcp)) = d {
                        proxy.serve_dns(udp, tcp, local, stopped(rx)).await;
                    }
                }
            };
            let (dns4, dns6) = (serve_dns(dns.next()), serve_dns(dns.next()));
            let tcp = proxy.serve(
                listeners,
                Capture::Redirect,
                local.clone(),
                sockets,
                async move {
                    s.notified().await;
                    let _ = tx.send(true);
                },
            );
            tokio::join!(tcp, dns4, dns6);
        });
        tracing::info!(%uid, "serving pod");
        self.pods
            .insert(uid.clone(), PodServer { stop, task, netns });
        if let Some(pods) = self.proxy.inner.pods().as_mut() {
            pods.insert(uid.clone(), (local_name, local_namespace));
        }
        let m = self.proxy.metrics().inpod();
        m.started.inc();
        m.active.set(self.pods.len() as i64);
        self.seen.insert(uid);
        Ok(())
    }
}

impl ZdsHandler for InPod {
    fn handle(
        &mut self,
        message: ZdsMessage,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let r = match message {
            ZdsMessage::Add { uid, info, netns } => self.add(uid, info, netns),
            ZdsMessage::Keep { uid } => {
                if self.pods.contains_key(&uid) {
                    self.seen.insert(uid);
                    Ok(())
                } else {
                    Err(format!("keep for unknown pod {uid}"))
                }
            }
            ZdsMessage::Del { uid } => {
                self.stop_pod(&uid);
                self.seen.remove(&uid);
                tracing::info!(%uid, "stopped serving pod");
                Ok(())
            }
            ZdsMessage::SnapshotSent => {
                let stale: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|u| !self.seen.contains(*u))
                    .cloned()
                    .collect();
                for uid in stale {
                    tracing::info!(%uid, "not in the snapshot: stopped serving pod");
                    self.stop_pod(&uid);
                }
                Ok(())
            }
        };
        async move { r.map_err(HandlerError::from) }
    }
}

impl InPod {
    /// Stops serving every pod and waits until each pod's connections have
    /// drained (up to the proxy's drain deadline): call on shutdown, so
    /// the process does not exit under open connections.
    pub async fn drain(mut self) {
        let pods: Vec<PodServer> = self.pods.drain().map(|(_, p)| p).collect();
        for p in &pods {
            p.stop.notify_one();
        }
        for p in pods {
            let _ = p.task.await;
        }
    }
}

impl Drop for InPod {
    fn drop(&mut self) {
        for (_, p) in self.pods.drain() {
            p.stop.notify_one();
        }
    }
}

const ANY4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
const ANY6: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Whether binding failed because the namespace has no IPv6 (the protocol
/// is off, or the address is not there: `disable_ipv6` on loopback).
fn no_ipv6(e: &std::io::Error) -> bool {
    const EAFNOSUPPORT: i32 = 97;
    e.raw_os_error() == Some(EAFNOSUPPORT) || e.kind() == std::io::ErrorKind::AddrNotAvailable
}
