//! The local ambient mesh the `local-mesh` example runs and the end-to-end
//! tests drive: two nodes and their pods in network namespaces, wired by a
//! real CNI chain (Debian's `ptp` + `static`, then Ambit's `istio-cni`
//! plugin), a `cni-node` agent per node capturing the enrolled pods (node
//! or in-pod mode), a `ztunnel` per node and a `waypoint` as child
//! processes, an in-process control plane (delta ADS + Istio CA on one TLS
//! port, as istiod's 15012), and the
//! TCP and HTTP apps the pods serve, with the clients that measure them.
//! Dropping a [`LocalMesh`] removes all of it; [`HostSnapshot`] checks
//! that the host is as it was.
//!
//! Test support only (`publish = false`): running a mesh needs root and
//! the `ztunnel`, `cni-node` and `waypoint` binaries built.

#![forbid(unsafe_code)]

mod config;
mod control_plane;
pub mod dns;
mod host;
pub mod httpapp;
pub mod kubeapi;
mod mesh;
mod probe;
mod report;
pub mod serve;
pub mod tcpapp;

pub use self::config::{
    DEFAULT_KUBE_ROUTES, DEFAULT_MESH, DEFAULT_ROUTES, DIRECT_SERVER, DIRECT_SERVER_IP, NODES,
    REVIEWS_VIP, VIP, WAYPOINT_VIP, dual_stack, ipv6_twin, kube_mesh,
};
pub use self::control_plane::{ControlPlane, PORT as CONTROL_PLANE_PORT, publish};
pub use self::host::{HostSnapshot, preflight, rss_kib, runtime_env, ztunnel_binary};
pub use self::mesh::{Binaries, LocalMesh, Mode, Options};
pub use self::report::{Figures, median, percentile, table};
