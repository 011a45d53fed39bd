//! What Ambit's binaries share.
//!
//! `cni-node`, `ztunnel` and `waypoint` are thin wiring of configuration to
//! the library crates. This crate holds what the three would otherwise each
//! write again:
//!
//! - clap argument groups with Istio's environment names, flattened into
//!   each binary's `Args` ([`LogArgs`], [`AdminArgs`], and with the `mesh`
//!   feature [`MeshSourceArgs`] and [`CaArgs`], which also turn the flags
//!   into a mesh source and a certificate authority);
//! - [`init_tracing`]: text or JSON logs filtered by `RUST_LOG`;
//! - [`run_main`]: the main skeleton — build the runtime, check the
//!   configuration inside it (a bad one exits 64, `EX_USAGE`), run, and map
//!   the outcome to an exit code; [`Stop`] fans one stop signal out to
//!   every server, and [`Signals`] waits for SIGINT, SIGTERM or an
//!   admin `/quitquitquit`.
#![forbid(unsafe_code)]

mod args;
mod duration;
#[cfg(feature = "mesh")]
mod mesh;
mod quantity;
mod skeleton;

pub use self::args::{AdminArgs, LogArgs, LogFormat, init_tracing, logging};
pub use self::duration::parse_duration;
#[cfg(feature = "mesh")]
pub use self::mesh::{
    CaArgs, DEFAULT_ROOT_CERT, MeshSourceArgs, default_istiod_address, istio_address,
    prefixed_headers, root_pem,
};
pub use self::quantity::{cpu_quantity, host_cpus};
pub use self::skeleton::{
    EXIT_CONFIG, Signals, Stop, bind, raise_open_files_limit, run_main, run_main_threads,
};
