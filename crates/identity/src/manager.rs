//! The certificate manager: one certificate per identity, obtained on
//! demand and kept fresh.
//!
//! Invariants:
//! - Each identity has at most one worker task, which makes every CA call
//!   for it; concurrent [`CertManager::fetch`]es therefore share one call.
//! - A worker refreshes at half life; on failure it retries with
//!   exponential backoff (0.5 s doubling to 150 s by default) and keeps
//!   serving the previous certificate until it expires.
//! - Resolvers from [`CertManager::resolver`] read the worker's latest
//!   certificate at every handshake, so rotation reaches new connections
//!   at once and never touches open ones.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use rustls::{ClientConfig, ServerConfig};
use tokio::{sync::watch, task::AbortHandle};

use crate::{
    ca::{CaError, CertificateAuthority},
    cert::WorkloadCertificate,
    identity::Identity,
    tls::{self, CertResolver, TlsConfigError},
};

/// Settings of a [`CertManager`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ManagerConfig {
    /// The validity requested for each certificate (default 24 h).
    pub ttl: Duration,
    /// The first retry delay after a failed CA call (default 0.5 s).
    pub initial_backoff: Duration,
    /// The longest retry delay (default 150 s).
    pub max_backoff: Duration,
    /// The shortest wait before a refresh, whatever the certificate's
    /// lifetime (default 100 ms), so a CA handing out very short-lived
    /// certificates cannot make the worker spin.
    pub min_refresh: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(150),
            min_refresh: Duration::from_millis(100),
        }
    }
}

/// Why the manager could not provide a certificate or config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The CA failed and no unexpired certificate is at hand.
    #[error("failed to obtain a certificate for {identity}")]
    Ca {
        /// The identity asked for.
        identity: Identity,
        /// The CA's latest failure.
        #[source]
        source: Arc<CaError>,
    },
    /// The identity's worker is gone (the manager is shutting down, or the
    /// identity was forgotten while waiting).
    #[error("the certificate manager stopped serving {identity}")]
    Stopped {
        /// The identity asked for.
        identity: Identity,
    },
    /// A TLS config could not be built from the certificate.
    #[error("failed to build a tls config for {identity}")]
    Tls {
        /// The local identity.
        identity: Identity,
        /// The underlying error.
        #[source]
        source: TlsConfigError,
    },
}

/// One identity's state as its worker publishes it.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The certificate to use now (possibly one whose refresh is failing).
    pub(crate) cert: Option<Arc<WorkloadCertificate>>,
    /// The latest CA failure; cleared by the next success.
    pub(crate) error: Option<Arc<CaError>>,
}

/// Issues and rotates workload certificates, one per identity. Cheap to
/// clone; dropping the last clone stops every worker.
#[derive(Clone)]
pub struct CertManager {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Arc<dyn CertificateAuthority>,
    config: ManagerConfig,
    /// Identity → its worker. An entry lives until [`CertManager::forget`]
    /// or the manager's drop; dropping it aborts the worker.
    entries: Mutex<HashMap<Identity, Entry>>,
}

struct Entry {
    rx: watch::Receiver<Slot>,
    worker: AbortHandle,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("config", &self.inner.config)
            .field("identities", &self.identities())
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager that obtains certificates from `ca`.
    pub fn new(ca: impl CertificateAuthority, config: ManagerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                ca: Arc::new(ca),
                config,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Identity, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        match self.inner.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The identity's state, starting its worker if needed. Must be called
    /// within a tokio runtime.
    fn watch(&self, identity: &Identity) -> watch::Receiver<Slot> {
        let mut entries = self.entries();
        if let Some(entry) = entries.get(identity) {
            return entry.rx.clone();
        }
        let (tx, rx) = watch::channel(Slot::default());
        let worker = tokio::spawn(run_worker(
            self.inner.ca.clone(),
            self.inner.config.clone(),
            identity.clone(),
            tx,
        ))
        .abort_handle();
        entries.insert(
            identity.clone(),
            Entry {
                rx: rx.clone(),
                worker,
            },
        );
        rx
    }

    /// The current certificate for `identity`, obtaining one first if
    /// there is none. Concurrent calls for one identity share one CA call.
    pub async fn fetch(
        &self,
        identity: &Identity,
    ) -> Result<Arc<WorkloadCertificate>, ManagerError> {
        let mut rx = self.watch(identity);
        let slot = rx
            .wait_for(|s| usable(s).is_some() || s.error.is_some())
            .await
            .map_err(|_| ManagerError::Stopped {
                identity: identity.clone(),
            })?;
        match (usable(&slot), &slot.error) {
            (Some(cert), _) => Ok(cert),
            (None, Some(error)) => Err(ManagerError::Ca {
                identity: identity.clone(),
                source: error.clone(),
            }),
            (None, None) => Err(ManagerError::Stopped {
                identity: identity.clone(),
            }),
        }
    }

    /// The current certificate for `identity` without waiting or starting
    /// a worker.
    pub fn current(&self, identity: &Identity) -> Option<Arc<WorkloadCertificate>> {
        self.entries()
            .get(identity)
            .and_then(|e| e.rx.borrow().cert.clone())
    }

    /// A resolver that presents `identity`'s freshest certificate at every
    /// handshake; waits for the first certificate.
    pub async fn resolver(&self, identity: &Identity) -> Result<Arc<CertResolver>, ManagerError> {
        self.fetch(identity).await?;
        Ok(CertResolver::managed(self.watch(identity)))
    }

    /// A server config for `identity`: its certificate and its trust roots
    /// both follow rotation (the roots are those of the current
    /// certificate, read at each handshake), and clients must be in its
    /// trust domain.
    pub async fn server_config(&self, identity: &Identity) -> Result<ServerConfig, ManagerError> {
        self.fetch(identity).await?;
        let resolver = CertResolver::managed(self.watch(identity));
        tls::server_config_rotating(resolver, identity.trust_domain()).map_err(|source| {
            ManagerError::Tls {
                identity: identity.clone(),
                source,
            }
        })
    }

    /// A client config that connects as `identity` (rotating certificate)
    /// to a server that must be one of `expected`.
    pub async fn client_config(
        &self,
        identity: &Identity,
        expected: Vec<Identity>,
    ) -> Result<ClientConfig, ManagerError> {
        let cert = self.fetch(identity).await?;
        let resolver = CertResolver::managed(self.watch(identity));
        let tls_err = |source| ManagerError::Tls {
            identity: identity.clone(),
            source,
        };
        let roots = tls::root_store(cert.roots()).map_err(tls_err)?;
        tls::client_config(resolver, roots, expected).map_err(tls_err)
    }

    /// Stops managing `identity`; returns whether it was managed. Resolvers
    /// already handed out keep presenting its last certificate.
    pub fn forget(&self, identity: &Identity) -> bool {
        self.entries().remove(identity).is_some()
    }

    /// The identities being managed.
    pub fn identities(&self) -> Vec<Identity> {
        self.entries().keys().cloned().collect()
    }
}

/// The slot's certificate if it has not expired.
fn usable(slot: &Slot) -> Option<Arc<WorkloadCertificate>> {
    slot.cert
        .as_ref()
        .filter(|c| !c.is_expired_at(SystemTime::now()))
        .cloned()
}

/// One identity's worker: obtain, publish, sleep until half life, repeat;
/// back off on failure. Lives until its [`Entry`] is dropped.
async fn run_worker(
    ca: Arc<dyn CertificateAuthority>,
    config: ManagerConfig,
    identity: Identity,
    tx: watch::Sender<Slot>,
) {
    let mut backoff = config.initial_backoff;
    loop {
        let result = match ca.issue(&identity, config.ttl).await {
            Ok(cert) if cert.identity() == &identity => Ok(cert),
            Ok(cert) => Err(CaError::BadResponse {
                reason: format!(
                    "asked for {identity}, got a certificate for {}",
                    cert.identity()
                ),
            }),
            Err(error) => Err(error),
        };
        match result {
            Ok(cert) => {
                let cert = Arc::new(cert);
                let wait = cert
                    .refresh_at()
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .max(config.min_refresh);
                tracing::debug!(%identity, expires = ?cert.not_after(), refresh_in = ?wait, "certificate issued");
                tx.send_modify(|slot| {
                    slot.cert = Some(cert);
                    slot.error = None;
                });
                backoff = config.initial_backoff;
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                tracing::warn!(%identity, %error, retry_in = ?backoff, "certificate request failed");
                tx.send_modify(|slot| slot.error = Some(Arc::new(error)));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}
