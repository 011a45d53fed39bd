//! Workload identity for the mesh: SPIFFE ids, certificates, the CA, and
//! the mTLS configs HBONE runs on.
//!
//! `ambit-identity` owns everything between "this workload is
//! `spiffe://cluster.local/ns/default/sa/web`" and a rustls config that
//! proves it to a peer and checks the peer in turn:
//!
//! - [`Identity`]: strict parsing and display of Istio-shaped SPIFFE ids.
//! - [`WorkloadCertificate`], [`generate_csr`] and PEM loading ([`cert`]).
//! - Certificate authorities ([`ca`]): the [`CertificateAuthority`] trait,
//!   an in-process [`LocalCa`], and (feature `istio-ca`) a gRPC client for
//!   Istio's `IstioCertificateService` plus a matching server, with the
//!   authentication choices istiod offers ([`ca::authn`]).
//! - [`grpc`] (feature `istio-ca`): serving several gRPC services (xDS and
//!   the CA) over TLS on one port with istiod's serving certificate.
//! - [`CertManager`]: one certificate per identity on demand, refreshed at
//!   half life with backoff, concurrent requests coalesced.
//! - [`tls`]: server and client configs for SPIFFE mTLS (TLS 1.3, ALPN
//!   `h2`), the [`CertResolver`] that makes rotation seamless,
//!   [`peer_identity`], and [`HandshakeError`] to tell rejections apart.
//!
//! Exactly one crypto provider is compiled in (feature `ring`, the default,
//! or `aws-lc-rs`); see [`provider()`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig};
//!
//! let ca = LocalCa::generate("cluster.local")?;
//! let manager = CertManager::new(ca, ManagerConfig::default());
//! let me: Identity = "spiffe://cluster.local/ns/default/sa/web".parse()?;
//! let peer: Identity = "spiffe://cluster.local/ns/default/sa/db".parse()?;
//! let server = manager.server_config(&me).await?; // for accepting HBONE
//! let client = manager.client_config(&me, vec![peer]).await?; // for dialing `db`
//! # drop((server, client)); Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod ca;
pub mod cert;
#[cfg(feature = "istio-ca")]
pub mod grpc;
mod identity;
mod manager;
mod provider;
pub mod tls;

#[cfg(feature = "istio-ca")]
pub use self::ca::{
    authn::{Authn, Caller, ServiceAccount, TokenSet},
    istio::{IstioCaClient, IstioCaConfig},
    server::CaServer,
};
pub use self::{
    ca::{CaError, CertificateAuthority, LocalCa, ServingCert},
    cert::{CertError, CertificateRequest, WorkloadCertificate, generate_csr},
    identity::{
        DEFAULT_TRUST_DOMAIN, Identity, IdentityError, MAX_ID_LEN, MAX_SEGMENT_LEN,
        MAX_TRUST_DOMAIN_LEN, SPIFFE_PREFIX,
    },
    manager::{CertManager, ManagerConfig, ManagerError},
    provider::{PROVIDER_NAME, provider},
    tls::{CertResolver, HandshakeError, PeerVerifyError, peer_identity},
};
