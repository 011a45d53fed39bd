//! rustls configurations for SPIFFE mTLS as HBONE uses it.
//!
//! Both sides: TLS 1.3 only (TLS 1.2 too after [`set_tls12_enabled`]), the
//! suites of [`provider()`](crate::provider),
//! ALPN `h2`, no session resumption (every connection is fully
//! authenticated), and the local certificate taken from a [`CertResolver`]
//! at each handshake.
//!
//! - [`server_config`]: a client certificate is required; it must chain to
//!   the roots and carry a SPIFFE id in the server's trust domain.
//! - [`client_config`]: the server's chain must lead to the roots and one of
//!   its SPIFFE ids must be among the expected identities. DNS names and
//!   the TLS server name play no part, and SNI is not sent: connect with
//!   any name, e.g. [`placeholder_server_name`].
//!
//! Peers whose certificate is on the revocation list set with
//! [`set_crl_path`] are refused on both sides.
//!
//! After the handshake, [`peer_identity`] reads the authenticated peer's
//! identity; a failed handshake's error becomes a [`HandshakeError`] that
//! tells apart the ways a peer can be refused.

mod crl;
mod resolver;
mod verify;

use std::{io, sync::Arc};

use rustls::{
    AlertDescription, CertificateError, ClientConfig, CommonState, RootCertStore, ServerConfig,
    client::Resumption,
    pki_types::{CertificateDer, ServerName},
    server::{NoServerSessionStorage, WebPkiClientVerifier},
    version::{TLS12, TLS13},
};

use self::verify::{SpiffeClientVerifier, SpiffeServerVerifier};
pub use self::{
    crl::{CrlError, set_crl_path},
    resolver::CertResolver,
    verify::PeerVerifyError,
};
use crate::{
    cert::{CertError, identity_of},
    identity::Identity,
    provider::provider,
};

static TLS12_ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Also offers and accepts TLS 1.2 from now on (istio/ztunnel's
/// `TLS12_ENABLED`; TLS 1.3 only by default). Process-wide; configs built
/// before keep their versions.
pub fn set_tls12_enabled(on: bool) {
    TLS12_ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&TLS13];
static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] = [&TLS13, &TLS12];

fn versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    if TLS12_ENABLED.load(std::sync::atomic::Ordering::Relaxed) {
        &TLS13_AND_12
    } else {
        &TLS13_ONLY
    }
}

/// The ALPN protocol HBONE negotiates.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A trust root could not be added to the root store.
    #[error("invalid trust root certificate")]
    BadRoot(#[source] rustls::Error),
    /// There are no trust roots.
    #[error("no trust roots given")]
    NoRoots,
    /// rustls refused the configuration.
    #[error("failed to build the tls {side} configuration")]
    Rustls {
        /// `client` or `server`.
        side: &'static str,
        /// The underlying error.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("failed to build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// Builds a root store from DER certificates.
pub fn root_store(roots: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsConfigError> {
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(TlsConfigError::BadRoot)?;
    }
    Ok(store)
}

/// A server config for mTLS: present `resolver`'s certificate, require a
/// client certificate chained to `roots` whose SPIFFE id is in
/// `trust_domain`.
pub fn server_config(
    resolver: Arc<CertResolver>,
    roots: RootCertStore,
    trust_domain: &str,
) -> Result<ServerConfig, TlsConfigError> {
    let provider = provider();
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(TlsConfigError::Verifier)?;
    let verifier = SpiffeClientVerifier::new(webpki, trust_domain.to_owned());
    mtls_server(provider, verifier, resolver)
}

/// TLS 1.3, `h2`, no resumption: the server side every config here shares.
fn mtls_server(
    provider: Arc<rustls::crypto::CryptoProvider>,
    verifier: SpiffeClientVerifier,
    resolver: Arc<CertResolver>,
) -> Result<ServerConfig, TlsConfigError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions())
        .map_err(|source| TlsConfigError::Rustls {
            side: "server",
            source,
        })?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A server config for mTLS whose trust roots follow `resolver`: client
/// chains are verified against the roots that came with the server's own
/// current certificate, read at each handshake, so a server built once
/// keeps working across a root rotation. Clients must be in
/// `trust_domain`.
pub fn server_config_rotating(
    resolver: Arc<CertResolver>,
    trust_domain: &str,
) -> Result<ServerConfig, TlsConfigError> {
    let provider = provider();
    let verifier =
        SpiffeClientVerifier::rotating(resolver.clone(), provider.clone(), trust_domain.to_owned());
    mtls_server(provider, verifier, resolver)
}

/// A client config for mTLS: present `resolver`'s certificate, accept a
/// server whose chain leads to `roots` and whose SPIFFE id is one of
/// `expected`.
pub fn client_config(
    resolver: Arc<CertResolver>,
    roots: RootCertStore,
    expected: Vec<Identity>,
) -> Result<ClientConfig, TlsConfigError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier::new(Arc::new(roots), expected, provider.clone());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions())
        .map_err(|source| TlsConfigError::Rustls {
            side: "client",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// A server name to pass to `connect`: SNI is disabled and names are not
/// verified, so its value does not matter.
pub fn placeholder_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// The SPIFFE identity of the authenticated peer of a finished handshake
/// (pass `tls_stream.get_ref().1`, a client or server connection).
pub fn peer_identity(conn: &CommonState) -> Result<Identity, CertError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| CertError::NoCertificate {
            what: "the peer's handshake".into(),
        })?;
    identity_of(leaf)
}

/// Why a TLS handshake with a peer failed, as seen by the side that
/// reports it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer's SPIFFE id is not one of those expected.
    #[error("peer has the wrong identity {found:?}, expected one of {expected:?}")]
    WrongIdentity {
        /// The identities expected.
        expected: Vec<Identity>,
        /// The identities presented.
        found: Vec<Identity>,
    },
    /// The peer's SPIFFE id is in another trust domain.
    #[error("peer identity {identity} is outside the trust domain {expected:?}")]
    WrongTrustDomain {
        /// The identity presented.
        identity: Identity,
        /// The trust domain required.
        expected: String,
    },
    /// The peer's certificate has no usable SPIFFE id.
    #[error("peer certificate has no usable spiffe identity: {reason}")]
    NoIdentity {
        /// Why.
        reason: String,
    },
    /// The peer's certificate has expired.
    #[error("peer certificate has expired")]
    Expired,
    /// The peer's certificate is not valid yet.
    #[error("peer certificate is not valid yet")]
    NotYetValid,
    /// The peer's certificate does not chain to a trusted root.
    #[error("peer certificate is not signed by a trusted root")]
    UnknownRoot,
    /// The client presented no certificate.
    #[error("peer presented no client certificate")]
    MissingClientCert,
    /// The peer refused the handshake and said why with an alert (for
    /// example `BadCertificate` when it rejected our certificate).
    #[error("peer aborted the handshake with alert {0:?}")]
    PeerAlert(AlertDescription),
    /// Any other TLS failure.
    #[error("tls handshake failed")]
    Tls(#[source] rustls::Error),
    /// The connection failed underneath TLS.
    #[error("connection failed during the tls handshake")]
    Io(#[source] io::Error),
}

impl HandshakeError {
    /// Classifies an error from a tokio-rustls `connect`/`accept`, which
    /// wraps rustls errors in `io::Error`.
    pub fn from_io(err: io::Error) -> Self {
        let is_rustls = err
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>());
        if !is_rustls {
            return Self::Io(err);
        }
        match err
            .into_inner()
            .map(|inner| inner.downcast::<rustls::Error>())
        {
            Some(Ok(tls)) => Self::from_rustls(*tls),
            // Unreachable: checked above; keep a sensible answer anyway.
            _ => Self::Io(io::Error::other("tls error")),
        }
    }

    /// Classifies a rustls error.
    pub fn from_rustls(err: rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            E::InvalidCertificate(cert) => match cert {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Self::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Self::NotYetValid
                }
                // BadSignature: an issuer of the same name, but not the
                // trusted key — still not a trusted root.
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Self::UnknownRoot
                }
                CertificateError::Other(other) => match other.0.downcast_ref::<PeerVerifyError>() {
                    Some(PeerVerifyError::WrongIdentity { expected, found }) => {
                        Self::WrongIdentity {
                            expected: expected.clone(),
                            found: found.clone(),
                        }
                    }
                    Some(PeerVerifyError::WrongTrustDomain { identity, expected }) => {
                        Self::WrongTrustDomain {
                            identity: identity.clone(),
                            expected: expected.clone(),
                        }
                    }
                    Some(PeerVerifyError::NoIdentity { reason }) => Self::NoIdentity {
                        reason: reason.clone(),
                    },
                    None => Self::Tls(E::InvalidCertificate(CertificateError::Other(other))),
                },
                other => Self::Tls(E::InvalidCertificate(other)),
            },
            E::NoCertificatesPresented => Self::MissingClientCert,
            E::AlertReceived(alert) => Self::PeerAlert(alert),
            other => Self::Tls(other),
        }
    }
}
