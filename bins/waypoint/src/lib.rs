//! `waypoint`: the L7 proxy of an Istio-compatible ambient mesh, as a
//! library so its command line can be inspected (`Args`, through
//! `clap::CommandFactory`) by the deployment checks.
//!
//! Configuration follows Istio's environment variables (each also a flag;
//! see `--help`). Routing and L7 policy come from a YAML file
//! (`WAYPOINT_CONFIG`, schema in ambit-l7proxy's README); workloads and
//! services from `LOCAL_XDS_PATH` or `XDS_ADDRESS`.
#![forbid(unsafe_code)]

pub mod cli;
mod run;

pub use self::cli::Args;
pub use self::run::{Setup, run, setup};

/// Environment variables read outside clap: the log filter, and the node
/// identity istiod is told ([`ambit_xds::NodeIdentity::ENV`], plus every
/// `ISTIO_META_*`).
pub const EXTRA_ENV: [&str; 1] = ["RUST_LOG"];
