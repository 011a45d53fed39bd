//! The ztunnel engine.
//!
//! `ambit-l4proxy` carries a node's (or a pod's) captured TCP through the
//! mesh: outbound connections on 15001 are resolved against the mesh state
//! ([`route::outbound`]: workload, service VIP → endpoint, or waypoint) and
//! tunnelled over HBONE as the source workload's SPIFFE identity, or passed
//! through; inbound HBONE on 15008 is terminated with the destination
//! workload's certificate, authorized ([`route::inbound`]) and connected to
//! the pod, spoofing the original source; plaintext on 15006 from outside
//! the mesh is authorized the same way. Decisions are plain values made
//! without I/O; [`Proxy`] carries them out. Admin (15000), metrics (15020,
//! Istio's metric names) and readiness (15021) are in [`admin`]. The
//! opt-in SOCKS5 front door (15080, [`socks5`]) feeds the same outbound
//! path as capture.
#![forbid(unsafe_code)]

pub mod admin;
mod inpod;
pub mod metrics;
mod proxy;
pub mod route;
mod sockets;
pub mod socks5;

pub use self::{
    inpod::{INPOD_MARK, InPod},
    metrics::Metrics,
    proxy::{Capture, Listeners, Local, Proxy, ProxyConfig},
    sockets::{Sockets, original_dst},
};
