//! Delta ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService/
//! DeltaAggregatedResources`): a client as ztunnel runs it, and a server
//! over an in-memory [`Store`].

mod client;
mod node;
mod server;
mod stats;
mod store;

use std::path::PathBuf;

pub use self::{
    client::{
        AdsClient, AdsClientBuilder, AdsConfig, Backoff, Handler, HandlerError, Subscription,
        XdsResource,
    },
    node::{ISTIO_META_PREFIX, NodeIdentity},
    server::{AdsServer, Nack, Resume, ServerStats, StreamHeaders},
    stats::{ClientStats, Termination, client_stats},
    store::Store,
};

/// istiod's xDS address, as ztunnel defaults to it.
pub const DEFAULT_XDS_ADDRESS: &str = "https://istiod.istio-system.svc:15012";

/// Errors of the ADS client and server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdsError {
    /// The configuration cannot work.
    #[error("bad xds configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The bearer token file could not be read.
    #[error("reading the xds token {path:?}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// No connection to the control plane.
    #[error("connecting to {address}")]
    Connect {
        /// The control plane address.
        address: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The stream failed or was refused.
    #[error("xds stream to {address} failed")]
    Stream {
        /// The control plane address.
        address: String,
        /// The gRPC status.
        #[source]
        source: Box<tonic::Status>,
    },
    /// The server could not run.
    #[error("xds server failed")]
    Serve {
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}
