//! Geneve and VXLAN tunnel links over rtnetlink.
//!
//! `ambit-tunnel` owns the point-to-point UDP tunnels of Istio's node-level
//! ambient design: `istioin`/`istioout` in the node and `pistioin`/
//! `pistioout` in the ztunnel pod. A [`Tunnel`] describes one link as plain
//! data; [`reconcile`] makes the kernel match it (create, keep, update in
//! place, or replace) and [`delete`] removes it. [`IstioTunnels`] builds
//! and applies Istio's four links, parameterised. VXLAN carries the same
//! tunnel on kernels built without `CONFIG_GENEVE`.
//!
//! The layers are separate: [`codec`] builds and parses the rtnetlink
//! messages (tested against iproute2's bytes, no root needed); the shared
//! synchronous transport of [`ambit_netlink`] sends them on a socket opened
//! inside the target namespace through [`ambit_netns::NetNs::run`]; [`Links`]
//! and [`reconcile`] carry out a plan. No `ip` subprocess is run.
//!
//! ```no_run
//! use ambit_netns::NetNs;
//! use ambit_tunnel::{IstioTunnels, reconcile, Tunnel, TunnelKind, IfAddr};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let node = NetNs::named("node")?;
//! let ztunnel = NetNs::named("ztunnel")?;
//! let istio = IstioTunnels::vxlan();
//! let host = istio.apply_host_side(&node, "10.244.0.2".parse()?)?;
//! istio.apply_ztunnel_side(&ztunnel, "10.244.0.1".parse()?, host.port)?;
//!
//! // Or one link at a time:
//! let t = Tunnel::new("tun0", TunnelKind::Vxlan, 42, "10.0.0.2".parse()?)
//!     .mtu(1410)
//!     .address(IfAddr::new(std::net::Ipv4Addr::new(192, 168, 9, 1), 30));
//! let outcome = reconcile(&node, &t)?;
//! println!("tun0 is ifindex {}: {:?}", outcome.index, outcome.action);
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

pub mod codec;
mod error;
mod istio;
mod links;
mod spec;

pub use self::{
    codec::LinkState,
    error::{Error, Result},
    istio::{IstioTunnels, PairOutcome, TunnelPairSide},
    links::{Action, Links, Outcome, delete, list, reconcile, reconcile_from},
    spec::{
        Checksums, GENEVE_PORT, IfAddr, MAX_NAME_LEN, MAX_VNI, Ttl, Tunnel, TunnelKind,
        TunnelParams, VXLAN_PORT, validate_name,
    },
};
