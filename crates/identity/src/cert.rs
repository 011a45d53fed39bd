//! Workload certificates: a leaf chain, its private key and the trust roots,
//! plus PEM loading, CSR generation and SPIFFE-id extraction.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer,
    pem::{self, PemObject},
};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use crate::identity::{Identity, IdentityError};

/// Errors creating, loading, parsing or signing certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen failed to generate a key, certificate or CSR.
    #[error("failed to {what}")]
    Generate {
        /// What was being generated, e.g. `generate a p-256 key`.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be read.
    #[error("failed to read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// PEM text could not be decoded.
    #[error("invalid pem in {what}")]
    Pem {
        /// Where the PEM came from (a path or a description).
        what: String,
        /// The underlying error.
        #[source]
        source: pem::Error,
    },
    /// PEM text held no certificate.
    #[error("no certificate found in {what}")]
    NoCertificate {
        /// Where the PEM came from.
        what: String,
    },
    /// PEM text held no private key.
    #[error("no private key found in {what}")]
    NoPrivateKey {
        /// Where the PEM came from.
        what: String,
    },
    /// A certificate or CSR could not be parsed as X.509.
    #[error("failed to parse {what}: {reason}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// A certificate or CSR carries no SPIFFE URI SAN.
    #[error("{what} has no spiffe uri san")]
    NoSpiffeId {
        /// `certificate` or `certificate signing request`.
        what: &'static str,
    },
    /// A certificate or CSR carries a URI SAN that is not a valid SPIFFE id.
    #[error("{what} has uri san {uri:?} that is not a valid spiffe id")]
    BadSpiffeId {
        /// `certificate` or `certificate signing request`.
        what: &'static str,
        /// The offending URI (bounded).
        uri: String,
        /// Why it does not parse.
        #[source]
        source: IdentityError,
    },
    /// A CSR asks for more or other names than one SPIFFE id.
    #[error(
        "certificate signing request must carry exactly one uri san and nothing else, found {found}"
    )]
    CsrNames {
        /// A description of the SANs found.
        found: String,
    },
    /// The identity is not in the CA's trust domain.
    #[error("{identity} is not in the ca's trust domain {trust_domain:?}")]
    WrongTrustDomain {
        /// The requested identity.
        identity: Identity,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// The caller may not obtain a certificate for this identity.
    #[error("not authorized to obtain a certificate for {identity}: {reason}")]
    Unauthorized {
        /// The requested identity.
        identity: Identity,
        /// Why not.
        reason: String,
    },
    /// The requested validity period is empty or out of range.
    #[error("invalid certificate validity: {reason}")]
    Validity {
        /// What is wrong.
        reason: &'static str,
    },
}

/// A certificate chain with its private key and the roots that anchor it:
/// everything one side of an mTLS handshake needs.
#[derive(Debug)]
pub struct WorkloadCertificate {
    identity: Identity,
    /// Leaf first, then intermediates (never the root).
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl WorkloadCertificate {
    /// Assembles a workload certificate, reading the identity and validity
    /// from the leaf (`chain[0]`).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or_else(|| CertError::NoCertificate {
            what: "the certificate chain".into(),
        })?;
        let info = LeafInfo::parse(leaf)?;
        let identity = info
            .identities
            .into_iter()
            .next()
            .ok_or(CertError::NoSpiffeId {
                what: "certificate",
            })?;
        if roots.is_empty() {
            return Err(CertError::NoCertificate {
                what: "the trust roots".into(),
            });
        }
        Ok(Self {
            identity,
            chain,
            key,
            roots,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }

    /// Builds a workload certificate from PEM text: the chain (leaf first),
    /// the leaf's private key, and the trust roots.
    pub fn from_pem(chain_pem: &str, key_pem: &str, roots_pem: &str) -> Result<Self, CertError> {
        Self::new(
            certs_from_pem(chain_pem.as_bytes(), "the certificate chain")?,
            private_key_from_pem(key_pem.as_bytes(), "the private key")?,
            certs_from_pem(roots_pem.as_bytes(), "the trust roots")?,
        )
    }

    /// The SPIFFE identity in the leaf's URI SAN.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The leaf followed by any intermediates, as sent in a handshake.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf's private key.
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The trust roots peers' certificates are verified against.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The end of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to replace this certificate: half-way through its life.
    pub fn refresh_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life / 2
    }

    /// Whether the leaf has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// The chain as PEM text, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }

    /// The roots as PEM text.
    pub fn roots_pem(&self) -> String {
        self.roots
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }
}

/// A freshly generated private key and a CSR for it.
#[derive(Debug)]
pub struct CertificateRequest {
    /// The CSR in PEM form, as Istio's CA expects it.
    pub csr_pem: String,
    /// The private key the CSR was signed with (PKCS#8).
    pub private_key: PrivateKeyDer<'static>,
}

/// Generates an ECDSA P-256 key and a CSR (SHA-256) with an empty subject
/// and the identity as its only SAN (a URI), as ztunnel does.
pub fn generate_csr(identity: &Identity) -> Result<CertificateRequest, CertError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
        CertError::Generate {
            what: "generate a p-256 key",
            source,
        }
    })?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![uri_san(identity)?];
    let csr = params
        .serialize_request(&key)
        .map_err(|source| CertError::Generate {
            what: "sign a certificate signing request",
            source,
        })?;
    let csr_pem = csr.pem().map_err(|source| CertError::Generate {
        what: "encode a certificate signing request as pem",
        source,
    })?;
    Ok(CertificateRequest {
        csr_pem,
        private_key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    })
}

/// The identity as an rcgen URI SAN.
pub(crate) fn uri_san(identity: &Identity) -> Result<rcgen::SanType, CertError> {
    let uri = rcgen::string::Ia5String::try_from(identity.as_str()).map_err(|source| {
        CertError::Generate {
            what: "encode the spiffe id as a uri san",
            source,
        }
    })?;
    Ok(rcgen::SanType::URI(uri))
}

/// Parses every certificate in PEM text; `what` names the source in errors.
pub fn certs_from_pem(
    pem_text: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Pem {
            what: what.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, SEC1 or PKCS#1) in PEM text.
pub fn private_key_from_pem(
    pem_text: &[u8],
    what: &str,
) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem_text).map_err(|source| match source {
        pem::Error::NoItemsFound => CertError::NoPrivateKey {
            what: what.to_owned(),
        },
        source => CertError::Pem {
            what: what.to_owned(),
            source,
        },
    })
}

/// Reads every certificate from a PEM file.
pub fn load_certs_pem_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let text = read_file(path)?;
    certs_from_pem(&text, &path.display().to_string())
}

/// Reads the first private key from a PEM file.
pub fn load_private_key_pem_file(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let text = read_file(path)?;
    private_key_from_pem(&text, &path.display().to_string())
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Every SPIFFE identity in a certificate's URI SANs, in order. URI SANs
/// that are not SPIFFE ids are an error (a workload certificate must not
/// carry ambiguous names).
pub fn identities_of(cert: &CertificateDer<'_>) -> Result<Vec<Identity>, CertError> {
    Ok(LeafInfo::parse(cert)?.identities)
}

/// The (first) SPIFFE identity in a certificate's URI SANs.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, CertError> {
    identities_of(cert)?
        .into_iter()
        .next()
        .ok_or(CertError::NoSpiffeId {
            what: "certificate",
        })
}

/// What this crate needs from a leaf certificate.
pub(crate) struct LeafInfo {
    pub(crate) identities: Vec<Identity>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl LeafInfo {
    pub(crate) fn parse(cert: &CertificateDer<'_>) -> Result<Self, CertError> {
        let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
            .map_err(|e| CertError::Parse {
                what: "certificate",
                reason: e.to_string(),
            })?;
        let san = x509
            .subject_alternative_name()
            .map_err(|e| CertError::Parse {
                what: "certificate subject alternative names",
                reason: e.to_string(),
            })?;
        let mut identities = Vec::new();
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            if let GeneralName::URI(uri) = name {
                identities.push(parse_uri_san(uri, "certificate")?);
            }
        }
        Ok(Self {
            identities,
            not_before: unix_to_system(x509.validity().not_before.timestamp()),
            not_after: unix_to_system(x509.validity().not_after.timestamp()),
        })
    }
}

pub(crate) fn parse_uri_san(uri: &str, what: &'static str) -> Result<Identity, CertError> {
    uri.parse().map_err(|source| CertError::BadSpiffeId {
        what,
        uri: uri.chars().take(96).collect(),
        source,
    })
}

fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Encodes DER as a PEM block with the given label.
pub(crate) fn to_pem(label: &str, der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(TABLE[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_round_trips() {
        for len in 0..10 {
            let der: Vec<u8> = (0..len * 37).map(|i| (i * 7 % 256) as u8).collect();
            let pem_text = to_pem("CERTIFICATE", &der);
            let back = CertificateDer::from_pem_slice(pem_text.as_bytes()).expect("decodes");
            assert_eq!(back.as_ref(), &der[..]);
        }
    }

    #[test]
    fn csr_carries_the_identity() {
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().expect("valid");
        let req = generate_csr(&id).expect("csr");
        assert!(
            req.csr_pem
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        let params = rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem)
            .expect("parses and verifies");
        assert_eq!(
            params.params.subject_alt_names,
            vec![uri_san(&id).expect("san")]
        );
        assert_eq!(
            params.params.distinguished_name,
            rcgen::DistinguishedName::new()
        );
    }

    #[test]
    fn pem_errors_name_the_source() {
        let err = certs_from_pem(b"nothing here", "roots.pem").expect_err("no certs");
        assert_eq!(err.to_string(), "no certificate found in roots.pem");
        let err = private_key_from_pem(b"", "key.pem").expect_err("no key");
        assert_eq!(err.to_string(), "no private key found in key.pem");
        let err = load_certs_pem_file(Path::new("/nonexistent/chain.pem")).expect_err("no file");
        assert_eq!(err.to_string(), "failed to read /nonexistent/chain.pem");
    }
}
