//! Certificate authorities: the [`CertificateAuthority`] trait the
//! certificate manager calls, a [`LocalCa`] that signs in process, and (with
//! the `istio-ca` feature) a gRPC client for Istio's CA and the matching
//! server backed by a [`LocalCa`].

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::{WorkloadCertificate, cert::CertError, identity::Identity};

#[cfg(feature = "istio-ca")]
pub mod authn;
#[cfg(feature = "istio-ca")]
pub mod istio;
mod local;
#[cfg(feature = "istio-ca")]
pub mod proto;
#[cfg(feature = "istio-ca")]
pub mod server;

pub use self::local::{LocalCa, MAX_LEAF_TTL, ServingCert};

/// A boxed, sendable future, as returned by [`CertificateAuthority::issue`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can issue a workload certificate for an identity.
///
/// Implemented by [`LocalCa`] (signs in process) and, with the `istio-ca`
/// feature, by [`istio::IstioCaClient`] (a CSR sent to istiod). Tests
/// implement it to inject delays and failures.
pub trait CertificateAuthority: Send + Sync + 'static {
    /// Obtains a fresh certificate (and a fresh private key) for `identity`,
    /// valid for about `ttl`.
    fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<WorkloadCertificate, CaError>>;
}

impl<T: CertificateAuthority + ?Sized> CertificateAuthority for Arc<T> {
    fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<WorkloadCertificate, CaError>> {
        (**self).issue(identity, ttl)
    }
}

/// Why a certificate authority did not issue a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Building, signing or parsing a certificate failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The CA's address or TLS settings are unusable.
    #[error("invalid ca client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The bearer token file could not be read.
    #[error("failed to read the ca token from {}", path.display())]
    Token {
        /// The token file.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The CA could not be reached.
    #[error("failed to connect to the ca at {address}")]
    Connect {
        /// The CA's address.
        address: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The CA answered with a gRPC error.
    #[error("the ca at {address} refused the request: {code}: {message}")]
    Rejected {
        /// The CA's address.
        address: String,
        /// The gRPC status code, e.g. `PermissionDenied`.
        code: String,
        /// The status message.
        message: String,
    },
    /// The CA's answer is unusable (empty chain, wrong identity, ...).
    #[error("the ca returned an unusable certificate chain: {reason}")]
    BadResponse {
        /// What is wrong.
        reason: String,
    },
    /// A failure injected or reported by another implementation.
    #[error("{0}")]
    Other(String),
}
