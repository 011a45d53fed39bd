//! The policy watcher: every connection this proxy delivers to a local
//! workload is registered with the facts it was authorized on, and when
//! the mesh state changes (a new DENY, a removed ALLOW, a workload gone)
//! each is authorized again; those no longer allowed are closed, as
//! istio/ztunnel's policy watcher does.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use ambit_identity::Identity;
use ambit_mesh::MeshState;
use ambit_mesh::authz::{Connection, Decision};
use tokio::sync::Notify;

/// How often the watcher looks for a new mesh-state revision.
const POLL: Duration = Duration::from_millis(200);

/// What an open inbound connection was authorized on.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    /// The destination workload's uid.
    pub(crate) workload: String,
    /// The peer's verified identity (None for plaintext).
    pub(crate) src_identity: Option<Identity>,
    /// The source address authorization saw.
    pub(crate) src_ip: IpAddr,
    /// The destination (workload address and port).
    pub(crate) dst: SocketAddr,
}

struct Entry {
    facts: Facts,
    close: Arc<Notify>,
}

/// The open connections, by id.
#[derive(Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

/// Removes its connection from the registry when dropped.
pub(crate) struct Tracked {
    registry: Weak<Registry>,
    id: u64,
    close: Arc<Notify>,
}

impl Tracked {
    /// Resolves when a policy change no longer allows the connection.
    pub(crate) async fn revoked(&self) {
        self.close.notified().await;
    }
}

/// The access-log reason of a connection closed by a policy change.
pub(crate) const REVOKED: &str = "closed: a policy change no longer allows this connection";

/// Runs `f` (a connection's copy loop) unless the connection is revoked
/// first: `None` then, and `f` is dropped, closing both sides.
pub(crate) async fn until_revoked<F: std::future::Future>(
    tracked: &Tracked,
    f: F,
) -> Option<F::Output> {
    tokio::select! {
        r = f => Some(r),
        () = tracked.revoked() => None,
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.lock().remove(&self.id);
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        match self.open.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Registers an authorized connection.
    pub(crate) fn track(self: &Arc<Self>, facts: Facts) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Entry {
                facts,
                close: close.clone(),
            },
        );
        Tracked {
            registry: Arc::downgrade(self),
            id,
            close,
        }
    }

    /// What each open connection was authorized on.
    pub(crate) fn snapshot(&self) -> Vec<Facts> {
        self.lock().values().map(|e| e.facts.clone()).collect()
    }

    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Authorizes every open connection again against `state`; closes
    /// (and forgets) those it no longer allows. Returns how many.
    pub(crate) fn sweep(&self, state: &MeshState) -> usize {
        let mut open = self.lock();
        let mut revoked = Vec::new();
        for (id, e) in open.iter() {
            let f = &e.facts;
            let allowed = state.workload(&f.workload).is_some_and(|w| {
                let conn = Connection {
                    src_identity: f.src_identity.as_ref(),
                    src_ip: f.src_ip,
                    dst_ip: f.dst.ip(),
                    dst_port: f.dst.port(),
                };
                matches!(state.authorize(&w, &conn), Decision::Allow(_))
            });
            if !allowed {
                revoked.push(*id);
            }
        }
        for id in &revoked {
            if let Some(e) = open.remove(id) {
                // `notify_one` stores a permit: the connection sees it even
                // if it is not waiting yet.
                e.close.notify_one();
            }
        }
        revoked.len()
    }
}

/// Sweeps `registry` whenever `state`'s revision moves, until either is
/// dropped.
pub(crate) async fn run(registry: Weak<Registry>, state: Weak<RwLock<MeshState>>) {
    let mut seen = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let (Some(registry), Some(state)) = (registry.upgrade(), state.upgrade()) else {
            return;
        };
        let Ok(st) = state.read() else {
            return;
        };
        let rev = st.revision();
        if seen == Some(rev) {
            continue;
        }
        seen = Some(rev);
        let closed = registry.sweep(&st);
        if closed > 0 {
            tracing::info!(
                closed,
                open = registry.len(),
                "closed connections the new policy no longer allows"
            );
        }
    }
}
