//! Generated protobuf types: Istio's own packages, compiled by `build.rs`
//! from `proto/*.proto`, laid out as the proto packages are.
//!
//! `google.protobuf.Any` fields use [`envoy_types`]' `Any`, the same type
//! Envoy's `Resource` carries.

/// Istio's protobuf packages.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod istio {
    /// `istio.workload`: [`Address`](workload::Address) and its parts.
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));

        /// `istio.workload.zds`: the node agent ↔ ztunnel protocol.
        pub mod zds {
            include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
        }
    }

    /// `istio.security`: [`Authorization`](security::Authorization) and its parts.
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }
}

/// Envoy's discovery service messages and the ADS client and server stubs
/// (`envoy.service.discovery.v3`), from `envoy-types`.
pub use envoy_types::pb::envoy::service::discovery::v3 as discovery;

/// Envoy's `Node` and the other `envoy.config.core.v3` messages.
pub use envoy_types::pb::envoy::config::core::v3 as core;

/// `google.protobuf` well-known types as `envoy-types` generates them.
pub use envoy_types::pb::google::protobuf;

/// `google.rpc.Status`, carried by a NACK's `error_detail`.
pub use envoy_types::pb::google::rpc;
