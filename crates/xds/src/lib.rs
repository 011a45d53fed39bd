//! Istio's xDS and ZDS wire protocols for an ambient data plane.
//!
//! `ambit-xds` owns the bytes and streams between a ztunnel-like proxy and
//! its control plane and node agent:
//!
//! - [`proto`]: Istio's `istio.workload`, `istio.security` and
//!   `istio.workload.zds` messages (written from the wire facts, compiled
//!   at build time with protox), plus Envoy's discovery messages re-exported
//!   from `envoy-types`.
//! - [`resource`]: the two type URLs ztunnel subscribes to and helpers that
//!   decode an `Any` with an error naming the resource.
//! - [`ads`]: a delta ADS client (ACK/NACK, readiness, reconnect with
//!   `initial_resource_versions`, ztunnel's node identity, bearer token,
//!   TLS) and a delta ADS server over an in-memory versioned [`Store`].
//! - [`zds`]: the SOCK_SEQPACKET protocol through which the node agent hands
//!   ztunnel each pod's network namespace: a codec, the agent side
//!   ([`ZdsListener`]) and ztunnel's side ([`ZdsClient`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ambit_xds::{
//!     AdsClient, AdsConfig, Handler, HandlerError, NodeIdentity, Subscription, XdsResource,
//!     proto::istio::workload::Address,
//! };
//!
//! struct Print;
//! impl Handler<Address> for Print {
//!     fn apply(
//!         &mut self,
//!         update: Vec<XdsResource<Address>>,
//!         removed: Vec<String>,
//!     ) -> Result<(), HandlerError> {
//!         println!("{} updated, {} removed", update.len(), removed.len());
//!         Ok(())
//!     }
//! }
//!
//! let node = NodeIdentity::from_env();
//! let client = AdsClient::builder(AdsConfig::new("http://127.0.0.1:15010", node))
//!     .watch::<Address, _>(Subscription::Wildcard, Print)
//!     .build()?;
//! let mut ready = client.ready();
//! tokio::spawn(client.run(std::future::pending()));
//! ready.wait_for(|r| *r).await?;
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

pub mod ads;
pub mod proto;
pub mod resource;
pub mod zds;

pub use self::{
    ads::{
        AdsClient, AdsClientBuilder, AdsConfig, AdsError, AdsServer, Backoff, Handler,
        HandlerError, ISTIO_META_PREFIX, NodeIdentity, ServerStats, Store, Subscription,
        XdsResource,
    },
    resource::{
        ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, DecodeError, decode_address, decode_any,
        decode_authorization, to_any,
    },
    zds::{
        DEFAULT_ZDS_PATH, ZdsClient, ZdsConnection, ZdsError, ZdsHandler, ZdsListener, ZdsMessage,
    },
};
