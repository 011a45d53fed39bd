//! The state of an Istio-compatible mesh, and the decisions made from it.
//!
//! `ambit-mesh` holds what a data-plane proxy knows about the mesh —
//! workloads by address and uid, services by VIP and hostname with their
//! endpoints, authorization policies, waypoints — in a [`MeshState`], fed by
//! xDS or by ztunnel's local YAML format ([`local::Config`], so existing
//! ztunnel `LOCAL_XDS_PATH` files load unchanged). It answers the proxies'
//! questions without doing any I/O: what is at this address ([`MeshState::lookup`]),
//! which endpoint serves this service port for this client ([`MeshState::select`],
//! ztunnel's load balancing: routing preferences, health policy, capacity,
//! address family, passthrough — see [`balance`]), what a DNS name means in the
//! mesh ([`MeshState::resolve_host`], see [`dns`]), and may this connection
//! proceed ([`authz::authorize`], Istio's DENY-then-ALLOW semantics with every
//! match field).
//!
//! The model carries every field of Istio's workload API that ztunnel keeps
//! (network mode, application tunnels, capacity, locality, load-balancing
//! settings, IP families, explicit service endpoints, ...), whether the
//! state came from xDS or a local file; [`dump::state`] renders it as
//! ztunnel's `/config_dump` does, and that output loads back as a local
//! config.
#![forbid(unsafe_code)]

pub mod authz;
pub mod balance;
pub mod dns;
pub mod dump;
pub mod local;
pub mod model;
mod state;
pub mod xds;

pub use self::{
    authz::{Connection, Decision, DenyReason},
    balance::{Client, Pick},
    dns::HostAnswer,
    local::{Config, ConfigError},
    model::{Policy, Service, Workload},
    state::{Endpoint, MeshState, Target},
};
