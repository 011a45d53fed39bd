//! The waypoint engine.
//!
//! `ambit-l7proxy` is the L7 proxy of an Istio-compatible ambient mesh: it
//! terminates HBONE addressed to a service VIP, serves HTTP/1.1 and HTTP/2
//! inside the tunnel (or hops bytes for non-HTTP ports), and for each
//! request applies L7 authorization ([`authz`], Istio's DENY-then-ALLOW),
//! routing with VirtualService/HTTPRoute semantics ([`route`]: matches,
//! weighted subsets, redirects, rewrites, header edits, timeouts, retries,
//! faults), then forwards over HBONE to a pod chosen by a round-robin or
//! least-request balancer with outlier detection ([`balance`]), on pooled
//! upstream HTTP/1.1 connections or shared HTTP/2 (h2c) ones for `http2` /
//! `grpc` ports and gRPC ([`pool`]), with request mirrors. Opaque TCP
//! connections get L4 authorization and a byte hop. Decisions are plain
//! functions of the [`config`] and the request, tested without sockets;
//! [`Waypoint`] carries them out. Metrics use Istio's HTTP names
//! ([`metrics`]); [`admin`] serves the admin, metrics and readiness ports.
#![forbid(unsafe_code)]

/// The small HTTP/1 server behind the admin, metrics and readiness ports,
/// shared with ztunnel.
pub use ambit_server::admin;
pub mod authz;
pub mod balance;
pub mod config;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
mod grpc;
mod h1;
mod h1srv;
mod head;
mod idle;
pub mod metrics;
mod mirror;
pub mod pool;
mod proxy;
mod record;
pub mod route;
pub mod sniff;
mod tcp;
mod upstream;

pub use self::{
    config::{ConfigError, LoadBalancer, RouteConfig},
    grpc::http_to_grpc_status,
    metrics::Metrics,
    pool::{PoolConfig, PoolStats},
    proxy::{Body, BoxError, Error, Waypoint, WaypointConfig},
};
