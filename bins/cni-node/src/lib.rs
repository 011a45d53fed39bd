//! `cni-node`: Ambit's CNI plugin and node agent, one binary as Istio ships
//! it, as a library so its command line can be inspected (`Cli`, through
//! `clap::CommandFactory`) by the deployment checks. With `CNI_COMMAND` in
//! the environment it is the chained plugin (config on stdin, result or CNI
//! error object on stdout); otherwise it is the agent (`run`) or the
//! installer (`install`, `uninstall`).
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod plugin;

pub use self::cli::Cli;

/// Environment variables read outside clap: `CNI_COMMAND` (and the rest of
/// the CNI protocol's variables, read by the plugin), the log filter, and
/// `KUBERNETES_SERVICE_HOST` (the pod source's `auto` choice).
pub const EXTRA_ENV: [&str; 3] = ["CNI_COMMAND", "RUST_LOG", "KUBERNETES_SERVICE_HOST"];
