//! Certificate revocation lists (istio/ztunnel's `CRL_PATH`): peers whose
//! certificate — leaf or intermediate — is listed are refused in both
//! directions of mTLS. The file (PEM `X509 CRL` blocks or one DER list)
//! is read when set and read again when its modification time changes.
//! It is trusted as the file the operator mounted: the lists' signatures
//! are not checked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use rustls::CertificateError;
use rustls::pki_types::CertificateDer;

/// Why a revocation list could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// The file could not be read.
    #[error("reading the revocation list {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no valid revocation list.
    #[error("revocation list {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// (issuer name, DER, serial number bytes) of every revoked certificate.
type Revoked = HashSet<(Vec<u8>, Vec<u8>)>;

struct Loaded {
    path: PathBuf,
    modified: Option<SystemTime>,
    revoked: Revoked,
}

static CRL: RwLock<Option<Loaded>> = RwLock::new(None);

fn parse(path: &Path, data: &[u8]) -> Result<Revoked, CrlError> {
    let bad = |reason: String| CrlError::Parse {
        path: path.to_owned(),
        reason,
    };
    let mut ders = Vec::new();
    if data.starts_with(b"-----BEGIN") || data.iter().take(64).all(u8::is_ascii) {
        for pem in x509_parser::pem::Pem::iter_from_buffer(data) {
            let pem = pem.map_err(|e| bad(format!("bad PEM: {e}")))?;
            if pem.label == "X509 CRL" {
                ders.push(pem.contents);
            }
        }
        if ders.is_empty() {
            return Err(bad("no `X509 CRL` PEM block".into()));
        }
    } else {
        ders.push(data.to_vec());
    }
    let mut revoked = Revoked::new();
    for der in &ders {
        let (_, crl) =
            x509_parser::parse_x509_crl(der).map_err(|e| bad(format!("bad list: {e}")))?;
        let issuer = crl.issuer().as_raw().to_vec();
        for r in crl.iter_revoked_certificates() {
            revoked.insert((issuer.clone(), r.raw_serial().to_vec()));
        }
    }
    Ok(revoked)
}

fn load(path: &Path) -> Result<Loaded, CrlError> {
    let read = |source| CrlError::Read {
        path: path.to_owned(),
        source,
    };
    let modified = std::fs::metadata(path).map_err(read)?.modified().ok();
    let data = std::fs::read(path).map_err(read)?;
    Ok(Loaded {
        path: path.to_owned(),
        modified,
        revoked: parse(path, &data)?,
    })
}

/// Checks peers against the revocation list in `path` from now on (`None`:
/// no list). Returns how many certificates it revokes.
pub fn set_crl_path(path: Option<&Path>) -> Result<usize, CrlError> {
    let loaded = path.map(load).transpose()?;
    let n = loaded.as_ref().map_or(0, |l| l.revoked.len());
    match CRL.write() {
        Ok(mut g) => *g = loaded,
        Err(p) => *p.into_inner() = loaded,
    }
    Ok(n)
}

/// Re-reads the list if the file changed; a file that cannot be read
/// keeps the last good list (and is logged).
fn refresh() {
    let stale = match CRL.read() {
        Ok(g) => g.as_ref().and_then(|l| {
            let now = std::fs::metadata(&l.path).ok()?.modified().ok();
            (now != l.modified).then(|| l.path.clone())
        }),
        Err(_) => None,
    };
    let Some(path) = stale else { return };
    match load(&path) {
        Ok(l) => {
            tracing::info!(path = %path.display(), revoked = l.revoked.len(), "revocation list reloaded");
            if let Ok(mut g) = CRL.write() {
                *g = Some(l);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "revocation list not reloaded; the last one stays in force")
        }
    }
}

/// Refuses a peer chain with a revoked certificate.
pub(crate) fn check(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    refresh();
    let Ok(g) = CRL.read() else {
        return Ok(());
    };
    let Some(l) = g.as_ref() else {
        return Ok(());
    };
    if is_revoked(&l.revoked, end_entity, intermediates) {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
    }
    Ok(())
}

fn is_revoked(
    revoked: &Revoked,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> bool {
    std::iter::once(end_entity).chain(intermediates).any(|der| {
        x509_parser::parse_x509_certificate(der).is_ok_and(|(_, cert)| {
            revoked.contains(&(cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, CertificateRevocationListParams, IsCa, Issuer, KeyIdMethod, KeyPair,
        KeyUsagePurpose, RevokedCertParams, SerialNumber, date_time_ymd,
    };

    #[test]
    fn listed_certificates_are_revoked() {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |serial: u64| {
            let mut p = CertificateParams::new(vec!["a.example".into()]).expect("params");
            p.serial_number = Some(SerialNumber::from(serial));
            let key = KeyPair::generate().expect("key");
            p.signed_by(&key, &issuer).expect("leaf")
        };
        let (bad, good) = (leaf(7), leaf(8));
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2026, 1, 1),
            next_update: date_time_ymd(2036, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(7u64),
                revocation_time: date_time_ymd(2026, 1, 2),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("crl");
        let path = Path::new("test.crl");
        for data in [crl.pem().expect("pem").into_bytes(), crl.der().to_vec()] {
            let revoked = parse(path, &data).expect("parses");
            assert_eq!(revoked.len(), 1);
            assert!(is_revoked(&revoked, bad.der(), &[]));
            assert!(!is_revoked(&revoked, good.der(), &[]));
            // Revoked as an intermediate too.
            assert!(is_revoked(&revoked, good.der(), &[bad.der().clone()]));
            assert!(!is_revoked(&revoked, ca_cert.der(), &[]));
        }
        let e = parse(
            path,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect_err("no crl");
        assert!(e.to_string().contains("test.crl"), "{e}");
        assert!(parse(path, &[0x30, 0x03, 0x02, 0x01]).is_err());
        let e = set_crl_path(Some(Path::new("/nonexistent/ambit.crl"))).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/ambit.crl"), "{e}");
    }
}
