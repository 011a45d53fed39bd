//! Where an HBONE connection is dialled from: the TCP socket under it is
//! opened by a [`Dialer`] (from a source address, inside a namespace), and
//! the [`Origin`] is part of the pool key.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::net::TcpStream;

use crate::server::BoxFuture;

/// Opens the TCP connection under an HBONE connection. ztunnel dials
/// from the source workload's own address (node mode: a transparent socket
/// bound to the pod IP) or from inside the pod's network namespace (in-pod
/// mode), so the peer sees the real source and NetworkPolicy applies.
pub trait Dialer: Send + Sync + 'static {
    /// Connects to `address`, from `source` when given.
    fn dial(
        &self,
        source: Option<IpAddr>,
        address: SocketAddr,
    ) -> BoxFuture<'static, io::Result<TcpStream>>;
}

/// Where an HBONE connection is dialled from. Part of the pool key: two
/// requests share a connection only if they have the same origin scope and
/// source address.
#[derive(Clone)]
pub struct Origin {
    /// Distinguishes dialers (a pod's network namespace, say); `0` is the
    /// process's own namespace. Callers choose it, and must not reuse one
    /// for a different dialer.
    pub scope: u64,
    /// The source address to dial from, if any.
    pub source: Option<IpAddr>,
    /// What opens the socket.
    pub dialer: Arc<dyn Dialer>,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin")
            .field("scope", &self.scope)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}
