//! A rustls certificate resolver that always hands out the freshest
//! certificate for one identity.

use std::sync::{Arc, Mutex};

use rustls::{
    SignatureScheme,
    client::ResolvesClientCert,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::sync::watch;

use crate::{cert::WorkloadCertificate, manager::Slot, provider::provider};

/// Resolves the local certificate for both sides of a handshake.
///
/// Backed either by one fixed [`WorkloadCertificate`] or by a
/// [`CertManager`](crate::CertManager) entry, in which case every new
/// handshake uses whatever certificate is current at that moment: rotation
/// needs no new config, and connections already open keep the keys they
/// negotiated.
pub struct CertResolver {
    source: Source,
    provider: Arc<CryptoProvider>,
    /// The rustls form of the last certificate resolved, reused until the
    /// source changes.
    cache: Mutex<Option<(Arc<WorkloadCertificate>, Arc<CertifiedKey>)>>,
}

enum Source {
    Fixed(Arc<WorkloadCertificate>),
    Managed(watch::Receiver<Slot>),
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.source {
            Source::Fixed(_) => "fixed",
            Source::Managed(_) => "managed",
        };
        f.debug_struct("CertResolver")
            .field("source", &kind)
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// A resolver that always presents `cert`.
    pub fn fixed(cert: Arc<WorkloadCertificate>) -> Arc<Self> {
        Arc::new(Self::new(Source::Fixed(cert)))
    }

    pub(crate) fn managed(rx: watch::Receiver<Slot>) -> Arc<Self> {
        Arc::new(Self::new(Source::Managed(rx)))
    }

    fn new(source: Source) -> Self {
        Self {
            source,
            provider: provider(),
            cache: Mutex::new(None),
        }
    }

    /// The certificate new handshakes will present, if there is one.
    pub fn current(&self) -> Option<Arc<WorkloadCertificate>> {
        match &self.source {
            Source::Fixed(cert) => Some(cert.clone()),
            Source::Managed(rx) => rx.borrow().cert.clone(),
        }
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let cert = self.current()?;
        let mut cache = match self.cache.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((cached, key)) = cache.as_ref()
            && Arc::ptr_eq(cached, &cert)
        {
            return Some(key.clone());
        }
        match CertifiedKey::from_der(
            cert.chain().to_vec(),
            cert.private_key().clone_key(),
            &self.provider,
        ) {
            Ok(key) => {
                let key = Arc::new(key);
                *cache = Some((cert, key.clone()));
                Some(key)
            }
            Err(error) => {
                tracing::warn!(identity = %cert.identity(), %error, "unusable workload certificate");
                None
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
