//! The waypoint configured from the Kubernetes API.
//!
//! `ambit-gateway` turns Gateway API (GAMMA) routes — HTTPRoute and
//! GRPCRoute attached to the waypoint's Gateway or to a Service that uses
//! the waypoint — plus ReferenceGrants and Istio AuthorizationPolicies
//! into the waypoint engine's [`RouteConfig`](ambit_l7proxy::RouteConfig),
//! and writes each route's `Accepted` / `ResolvedRefs` status back.
//!
//! - [`objects`]: the Kubernetes objects, hand-written, only the fields used.
//! - [`translate()`] / [`Translator`]: objects → config + route statuses.
//! - [`services`]: which services use this waypoint (from the mesh state)
//!   and their ports' protocols.
//! - [`policy`]: AuthorizationPolicy → the engine's L7 policies.
//! - [`status`]: route status entries and their merge patches.
//! - [`GatewaySource`]: the watches, the translation loop, status writes.
#![forbid(unsafe_code)]

pub mod objects;
pub mod policy;
mod rules;
pub mod services;
pub mod source;
pub mod status;
pub mod translate;

pub use self::policy::PolicyReport;
pub use self::services::{
    ServiceKind, WaypointIdentity, WaypointPort, WaypointService, fill_ports, waypoint_services,
};
pub use self::source::{Error, GatewaySource, MeshServices, MeshStateServices, SourceConfig};
pub use self::status::CONTROLLER_NAME;
pub use self::translate::{
    Condition, ParentStatus, RouteKind, RouteStatus, Snapshot, Translation, Translator, translate,
};
