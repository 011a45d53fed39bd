//! Keeps `deploy/` honest. This crate holds tests only (`publish = false`);
//! its library is the checker those tests run, so that a test can also feed
//! it broken copies of the manifests and see it fail.
//!
//! Three layers, each usable alone:
//! - [`Binaries`] reads the three binaries' clap definitions through
//!   `clap::CommandFactory` (every argument: flag, environment name,
//!   default, whether it is required) and the environment variables they
//!   read outside clap, so the manifests are compared with the code, not
//!   with a copy of it.
//! - [`parse_files`] splits every YAML file into documents and deserializes
//!   each into its typed Kubernetes struct from k8s-openapi by `apiVersion`
//!   and `kind`; since k8s-openapi ignores unknown fields, the typed object
//!   is serialized again and compared with the document: whatever was
//!   dropped is an unknown field or a typo, reported with its path.
//! - [`check`] runs both and then the invariants the binaries rely on
//!   (see `checks.rs`: env names, flags, ports, probes, mounts,
//!   capabilities, cross-object references, the kustomizations).

#![forbid(unsafe_code)]

mod binaries;
mod checks;
mod manifest;

pub use self::binaries::{ArgDef, BINARY_NAMES, Binaries, Binary};
pub use self::checks::{Problem, RunAs, SECURITY, check, check_objects};
pub use self::manifest::{
    Gateway, GatewayAddress, GatewayListener, GatewaySpec, Kustomization, KustomizeImage, Object,
    Parsed, SourceFile, load_dir, parse_files,
};
