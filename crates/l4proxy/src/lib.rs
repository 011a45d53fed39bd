//! The ztunnel engine.
//!
//! `ambit-l4proxy` carries a node's (or a pod's) captured TCP through the
//! mesh. Deciding is separate from moving:
//!
//! - [`plan`] and [`route`] decide, from the mesh state and a connection's
//!   facts alone (no I/O, tested as tables): an outbound connection's
//!   complete [`OutboundPlan`] (source workload, destination, the hop —
//!   HBONE as the source's SPIFFE identity to a remote ztunnel or a
//!   waypoint, double HBONE through the network gateway of a workload on
//!   another network ([`network`]), same-node with its inbound
//!   authorization, passthrough, or a refusal), and an inbound stream's
//!   verdict ([`route::inbound`]).
//! - `serve` binds and accepts: outbound capture (15001), plaintext
//!   inbound (15006), HBONE (15008, one server per local identity), the
//!   opt-in SOCKS5 front door (15080, [`socks5`]); every loop is
//!   [`ambit_server::run`] with its drain.
//! - `outbound` and `inbound` carry plans out: dial, copy both ways,
//!   spoof the original source where configured; one per-connection
//!   record writes Istio's metrics and the access log.
//! - [`admin`]: `/config_dump` and the admin/metrics responders (the HTTP
//!   server is [`ambit_server::admin`]); [`InPod`] serves pods handed over
//!   by the node agent through ZDS.
#![forbid(unsafe_code)]

pub mod admin;
mod collect;
mod conn;
pub mod dns;
mod inbound;
mod inpod;
pub mod metrics;
pub mod network;
mod outbound;
pub mod plan;
mod proxy;
pub mod route;
mod serve;
mod sockets;
pub mod socks5;
mod watch;

pub use self::{
    inpod::{INPOD_MARK, InPod},
    metrics::Metrics,
    plan::{Entry, Hop, Local, OutboundPlan, Refusal, plan_outbound},
    proxy::{Proxy, ProxyConfig},
    serve::{Capture, Listeners},
    sockets::{Keepalive, SocketOptions, Sockets, canonical, original_dst},
};
