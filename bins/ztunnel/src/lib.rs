//! `ztunnel`: the per-node L4 proxy of an Istio-compatible ambient mesh,
//! as a library so its command line can be inspected (`Args`, through
//! `clap::CommandFactory`) by the deployment checks.
//!
//! Configuration follows Istio's environment variables (each also a flag;
//! see `--help`). Local mode needs no istiod: mesh config from
//! `LOCAL_XDS_PATH` and certificates from a local CA's PEM files.
#![forbid(unsafe_code)]

pub mod cli;
pub mod dump;
pub mod privileges;
mod run;
pub mod settings;

pub use self::cli::Args;
pub use self::run::{Setup, run, setup};

/// Environment variables read outside clap: the log filter, the Rust
/// runtime's backtrace switch (set by Istio's chart), the cluster id
/// istiod's CA is told, and the node identity istiod is told
/// ([`ambit_xds::NodeIdentity::ENV`], plus every `ISTIO_META_*`).
pub const EXTRA_ENV: [&str; 3] = ["RUST_LOG", "RUST_BACKTRACE", "ISTIO_META_CLUSTER_ID"];
