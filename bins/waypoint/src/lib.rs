//! `waypoint`: the L7 proxy of an Istio-compatible ambient mesh, as a
//! library so its command line can be inspected (`Args`, through
//! `clap::CommandFactory`) by the deployment checks.
//!
//! Configuration follows Istio's environment variables (each also a flag;
//! see `--help`). Routing and L7 policy come from the Kubernetes API —
//! Gateway API routes and AuthorizationPolicies for the waypoint's
//! Gateway (`WAYPOINT_ROUTES_FROM=kube`, through ambit-gateway) — or from
//! a YAML file (`WAYPOINT_CONFIG`, schema in ambit-l7proxy's README);
//! workloads and services from `LOCAL_XDS_PATH` or `XDS_ADDRESS`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod routes;
mod run;

pub use self::cli::{Args, RoutesFrom};
pub use self::run::{Setup, run, setup};

/// Environment variables read outside clap: the log filter, and the node
/// identity istiod is told ([`ambit_xds::NodeIdentity::ENV`], plus every
/// `ISTIO_META_*`).
/// `KUBERNETES_SERVICE_HOST` (in a cluster: `--routes-from auto` picks
/// kube; with `KUBERNETES_SERVICE_PORT` and `KUBECONFIG` it also tells the
/// Kubernetes client where the API server is).
pub const EXTRA_ENV: [&str; 4] = [
    "RUST_LOG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "KUBECONFIG",
];
