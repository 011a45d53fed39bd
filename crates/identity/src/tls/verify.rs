//! Certificate verifiers for SPIFFE mTLS: chains are checked by webpki
//! against the mesh roots; names are checked as SPIFFE ids (DNS names and
//! the TLS server name are ignored).

use std::sync::{Arc, Mutex};

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        ParsedCertificate, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

use super::CertResolver;
use crate::{cert::identities_of, identity::Identity};

/// Why a peer's otherwise valid certificate was refused on identity
/// grounds. Carried inside `rustls::Error::InvalidCertificate(
/// CertificateError::Other(..))`; [`HandshakeError`](super::HandshakeError)
/// unpacks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerVerifyError {
    /// None of the certificate's SPIFFE ids is one the client expected.
    #[error("peer identity {found:?} is not one of the expected identities {expected:?}")]
    WrongIdentity {
        /// The identities the client accepts.
        expected: Vec<Identity>,
        /// The identities in the certificate.
        found: Vec<Identity>,
    },
    /// The client's identity is outside the server's trust domain.
    #[error("peer identity {identity} is not in the trust domain {expected:?}")]
    WrongTrustDomain {
        /// The identity in the certificate.
        identity: Identity,
        /// The trust domain required.
        expected: String,
    },
    /// The certificate has no usable SPIFFE id.
    #[error("peer certificate has no usable spiffe identity: {reason}")]
    NoIdentity {
        /// Why (no URI SAN, a malformed one, ...).
        reason: String,
    },
}

impl From<PeerVerifyError> for rustls::Error {
    fn from(err: PeerVerifyError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
    }
}

fn peer_identities(cert: &CertificateDer<'_>) -> Result<Vec<Identity>, PeerVerifyError> {
    let ids = identities_of(cert).map_err(|e| PeerVerifyError::NoIdentity {
        reason: e.to_string(),
    })?;
    if ids.is_empty() {
        return Err(PeerVerifyError::NoIdentity {
            reason: "no spiffe uri san".into(),
        });
    }
    Ok(ids)
}

/// Client side: the server's chain must lead to the roots (with EKU
/// serverAuth) and one of its URI SANs must be an expected identity.
#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        expected: Vec<Identity>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            roots,
            expected,
            provider,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        super::crl::check(end_entity, intermediates)?;
        let found = peer_identities(end_entity)?;
        if found.iter().any(|id| self.expected.contains(id)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(PeerVerifyError::WrongIdentity {
                expected: self.expected.clone(),
                found,
            }
            .into())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server side: a client certificate is mandatory, its chain must lead to
/// the roots (with EKU clientAuth, checked by webpki), and its SPIFFE id
/// must be in the server's trust domain. Which identities may do what is
/// left to authorization policy afterwards.
#[derive(Debug)]
pub(crate) struct SpiffeClientVerifier {
    roots: ClientRoots,
    trust_domain: String,
}

/// Where the client-chain verifier's roots come from.
#[derive(Debug)]
enum ClientRoots {
    /// Fixed when the config was built.
    Fixed(Arc<dyn ClientCertVerifier>),
    /// The roots that came with the server's own current certificate, read
    /// at each handshake: a server built once keeps accepting clients
    /// across a root rotation.
    Rotating(RotatingRoots),
}

/// The roots a verifier was built from, and the verifier.
type CachedVerifier = (Vec<CertificateDer<'static>>, Arc<dyn ClientCertVerifier>);

/// A webpki verifier rebuilt whenever the current certificate's roots
/// change.
#[derive(Debug)]
struct RotatingRoots {
    resolver: Arc<CertResolver>,
    provider: Arc<CryptoProvider>,
    cache: Mutex<Option<CachedVerifier>>,
}

impl RotatingRoots {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let cert = self.resolver.current().ok_or_else(|| {
            rustls::Error::General("no certificate to take trust roots from".into())
        })?;
        let mut cache = match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((roots, verifier)) = cache.as_ref()
            && roots.as_slice() == cert.roots()
        {
            return Ok(verifier.clone());
        }
        let store = super::root_store(cert.roots())
            .map_err(|e| rustls::Error::General(format!("trust roots: {e}")))?;
        let verifier: Arc<dyn ClientCertVerifier> =
            WebPkiClientVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
        *cache = Some((cert.roots().to_vec(), verifier.clone()));
        Ok(verifier)
    }
}

impl SpiffeClientVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, trust_domain: String) -> Self {
        Self {
            roots: ClientRoots::Fixed(inner),
            trust_domain,
        }
    }

    /// Verifies client chains against the roots of `resolver`'s current
    /// certificate, read at each handshake.
    pub(crate) fn rotating(
        resolver: Arc<CertResolver>,
        provider: Arc<CryptoProvider>,
        trust_domain: String,
    ) -> Self {
        Self {
            roots: ClientRoots::Rotating(RotatingRoots {
                resolver,
                provider,
                cache: Mutex::new(None),
            }),
            trust_domain,
        }
    }

    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        match &self.roots {
            ClientRoots::Fixed(v) => Ok(v.clone()),
            ClientRoots::Rotating(r) => r.current(),
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; rotating roots cannot lend a stable slice.
        match &self.roots {
            ClientRoots::Fixed(v) => v.root_hint_subjects(),
            ClientRoots::Rotating(_) => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)?;
        super::crl::check(end_entity, intermediates)?;
        let found = peer_identities(end_entity)?;
        match found
            .iter()
            .find(|id| !id.in_trust_domain(&self.trust_domain))
        {
            None => Ok(ClientCertVerified::assertion()),
            Some(stranger) => Err(PeerVerifyError::WrongTrustDomain {
                identity: stranger.clone(),
                expected: self.trust_domain.clone(),
            }
            .into()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match &self.roots {
            ClientRoots::Fixed(v) => v.supported_verify_schemes(),
            ClientRoots::Rotating(r) => r
                .provider
                .signature_verification_algorithms
                .supported_schemes(),
        }
    }
}
