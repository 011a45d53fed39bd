//! What the caller provides: answers for mesh hostnames.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::rr::Name;

/// The address family a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// An `A` query: IPv4 addresses.
    V4,
    /// An `AAAA` query: IPv6 addresses.
    V6,
}

impl Family {
    /// Whether `ip` is of this family.
    pub fn matches(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// The answer for a mesh hostname.
///
/// An empty address list is a valid answer: the name exists in the mesh
/// but has no address of the asked family, and the client gets NOERROR
/// with no records (NODATA), never NXDOMAIN, as Istio does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshAnswer {
    /// The addresses. Those not of the asked family are left out of the
    /// reply; the order is kept (shuffle them if you want Istio's random
    /// order).
    pub addrs: Vec<IpAddr>,
    /// When the name was found under another name (Istio strips a search
    /// domain the client appended), that canonical name: the reply then
    /// carries a CNAME from the asked name to it, and the addresses under it.
    pub canonical_name: Option<Name>,
}

impl MeshAnswer {
    /// An answer with these addresses and no CNAME.
    pub fn addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            addrs: addrs.into_iter().collect(),
            canonical_name: None,
        }
    }

    /// The same answer, given under `name` with a CNAME to it.
    pub fn with_canonical_name(mut self, name: Name) -> Self {
        self.canonical_name = Some(name);
        self
    }
}

/// The metric labels of the client that sent a query (Istio's
/// `source_canonical_service` and `source_canonical_revision`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientLabels {
    /// The client workload's canonical service (its `app` label).
    pub canonical_service: String,
    /// The client workload's canonical revision (its `version` label).
    pub canonical_revision: String,
}

impl Default for ClientLabels {
    fn default() -> Self {
        Self {
            canonical_service: "unknown".to_owned(),
            canonical_revision: "unknown".to_owned(),
        }
    }
}

/// Answers for mesh hostnames from the caller's mesh state.
///
/// Called on the serving task for every `A`/`AAAA` query of class `IN`,
/// so it must not block: read a snapshot, do not do I/O. Every other
/// query type is forwarded without asking (as Istio does).
///
/// A closure `Fn(SocketAddr, &Name, Family) -> Option<MeshAnswer>`
/// implements it (with unknown client labels).
pub trait MeshResolver: Send + Sync {
    /// The answer for `name` (fully qualified, as the client spelled it;
    /// compare case-insensitively, e.g. on `name.to_lowercase()`) asked by
    /// `client` for `family`. `None` means "not a mesh name": the query is
    /// forwarded upstream.
    fn lookup(&self, client: SocketAddr, name: &Name, family: Family) -> Option<MeshAnswer>;

    /// The metric labels of `client`. Unknown by default.
    fn client_labels(&self, client: SocketAddr) -> ClientLabels {
        let _ = client;
        ClientLabels::default()
    }
}

impl<F> MeshResolver for F
where
    F: Fn(SocketAddr, &Name, Family) -> Option<MeshAnswer> + Send + Sync,
{
    fn lookup(&self, client: SocketAddr, name: &Name, family: Family) -> Option<MeshAnswer> {
        self(client, name, family)
    }
}

/// A resolver that knows no mesh name: the proxy then forwards everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMeshNames;

impl MeshResolver for NoMeshNames {
    fn lookup(&self, _: SocketAddr, _: &Name, _: Family) -> Option<MeshAnswer> {
        None
    }
}
