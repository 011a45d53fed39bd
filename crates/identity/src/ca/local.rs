//! A certificate authority that signs in process: for local meshes, tests,
//! and as the backend of the CA server.

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{BoxFuture, CaError, CertificateAuthority};
use crate::{
    cert::{self, CertError, LeafInfo, WorkloadCertificate},
    identity::Identity,
};

/// The longest leaf validity the local CA grants (Istio's maximum is 90 days).
pub const MAX_LEAF_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

/// A TLS serving certificate for DNS names and IP addresses (not a
/// workload identity), as a control plane presents on its gRPC port.
pub struct ServingCert {
    /// The leaf first; the CA's root is not included (clients hold it).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for ServingCert {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A root CA held in memory that issues SPIFFE workload certificates for one
/// trust domain.
pub struct LocalCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    key_pem: String,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn generate_key() -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| CertError::Generate {
        what: "generate a p-256 key",
        source,
    })
}

impl LocalCa {
    /// Generates a self-signed ECDSA P-256 root, valid for ten years, for
    /// `trust_domain`.
    pub fn generate(trust_domain: &str) -> Result<Self, CertError> {
        let key = generate_key()?;
        let mut params = CertificateParams::default();
        // A per-CA common name: two CAs never share an issuer name, so a
        // certificate from a foreign CA fails as "unknown issuer".
        let key_id: String = params
            .key_identifier(&key)
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, format!("ambit local ca {key_id}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        let root = params
            .self_signed(&key)
            .map_err(|source| CertError::Generate {
                what: "self-sign the ca certificate",
                source,
            })?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
            root: root.der().clone(),
            key_pem,
        })
    }

    /// Loads a CA from its root certificate and private key in PEM form.
    pub fn from_pem(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Self, CertError> {
        let root = cert::certs_from_pem(cert_pem.as_bytes(), "the ca certificate")?
            .into_iter()
            .next()
            .ok_or_else(|| CertError::NoCertificate {
                what: "the ca certificate".into(),
            })?;
        let key = KeyPair::from_pem(key_pem).map_err(|source| CertError::Generate {
            what: "load the ca private key",
            source,
        })?;
        let issuer =
            Issuer::from_ca_cert_der(&root, key).map_err(|source| CertError::Generate {
                what: "load the ca certificate",
                source,
            })?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            root,
            key_pem: key_pem.to_owned(),
        })
    }

    /// Loads a CA from PEM files holding the root certificate and its key.
    pub fn from_pem_files(
        cert_path: &Path,
        key_path: &Path,
        trust_domain: &str,
    ) -> Result<Self, CertError> {
        let read = |path: &Path| -> Result<String, CertError> {
            let bytes = cert::read_file(path)?;
            String::from_utf8(bytes).map_err(|_| CertError::NoCertificate {
                what: path.display().to_string(),
            })
        };
        Self::from_pem(&read(cert_path)?, &read(key_path)?, trust_domain)
    }

    /// The trust domain this CA issues identities for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The root certificate as PEM.
    pub fn root_pem(&self) -> String {
        cert::to_pem("CERTIFICATE", &self.root)
    }

    /// The root's private key as PEM (PKCS#8), for saving the CA.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn check_trust_domain(&self, identity: &Identity) -> Result<(), CertError> {
        if identity.in_trust_domain(&self.trust_domain) {
            Ok(())
        } else {
            Err(CertError::WrongTrustDomain {
                identity: identity.clone(),
                trust_domain: self.trust_domain.clone(),
            })
        }
    }

    fn leaf_params(
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateParams, CertError> {
        if not_after <= not_before {
            return Err(CertError::Validity {
                reason: "not_after must be later than not_before",
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![cert::uri_san(identity)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        Ok(params)
    }

    fn validity(ttl: Duration) -> Result<(SystemTime, SystemTime), CertError> {
        if ttl.is_zero() || ttl > MAX_LEAF_TTL {
            return Err(CertError::Validity {
                reason: "the ttl must be between 1 second and 90 days",
            });
        }
        let now = SystemTime::now();
        Ok((now, now + ttl))
    }

    fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<CertificateDer<'static>, CertError> {
        params
            .signed_by(public_key, &self.issuer)
            .map(|c| c.der().clone())
            .map_err(|source| CertError::Generate {
                what: "sign the workload certificate",
                source,
            })
    }

    /// Issues a leaf certificate with a fresh key for `identity`, valid from
    /// now for `ttl`.
    pub fn issue_now(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<WorkloadCertificate, CertError> {
        let (not_before, not_after) = Self::validity(ttl)?;
        self.issue_with_validity(identity, not_before, not_after)
    }

    /// Issues a leaf certificate with a fresh key and an explicit validity
    /// window (which may lie in the past, for tests of expiry handling).
    pub fn issue_with_validity(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCertificate, CertError> {
        self.check_trust_domain(identity)?;
        let key = generate_key()?;
        let params = Self::leaf_params(identity, not_before, not_after)?;
        let leaf = self.sign(&params, &key)?;
        WorkloadCertificate::new(
            vec![leaf],
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            vec![self.root.clone()],
        )
    }

    /// Issues a TLS server certificate with a fresh key for `dns_names` and
    /// `ips` (the subject alternative names; the common name is the first
    /// DNS name), valid from now for `ttl`: what istiod presents on its
    /// xDS and CA port. It carries no SPIFFE id and cannot serve as a
    /// workload certificate.
    pub fn issue_serving_cert(
        &self,
        dns_names: &[&str],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<ServingCert, CertError> {
        if dns_names.is_empty() && ips.is_empty() {
            return Err(CertError::Validity {
                reason: "a serving certificate needs at least one dns name or ip address",
            });
        }
        let (not_before, not_after) = Self::validity(ttl)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(first) = dns_names.first() {
            dn.push(DnType::CommonName, *first);
        }
        params.distinguished_name = dn;
        for name in dns_names {
            let ia5 = rcgen::string::Ia5String::try_from(*name).map_err(|source| {
                CertError::Generate {
                    what: "encode a dns name of the serving certificate",
                    source,
                }
            })?;
            params.subject_alt_names.push(rcgen::SanType::DnsName(ia5));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = generate_key()?;
        let leaf = self.sign(&params, &key)?;
        Ok(ServingCert {
            chain: vec![leaf],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        })
    }

    /// Signs a PEM CSR, valid from now for `ttl`, and returns the chain
    /// leaf first, root last (as Istio's CA does).
    ///
    /// The CSR's signature is verified; it must carry exactly one SAN, a URI
    /// that is a SPIFFE id in this CA's trust domain, and `authorize` must
    /// accept that identity. Every other CSR field (subject, extensions) is
    /// ignored: the leaf's contents are chosen here.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        ttl: Duration,
        authorize: impl FnOnce(&Identity) -> Result<(), CertError>,
    ) -> Result<Vec<CertificateDer<'static>>, CertError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            CertError::Parse {
                what: "certificate signing request",
                reason: e.to_string(),
            }
        })?;
        let identity = match csr.params.subject_alt_names.as_slice() {
            [rcgen::SanType::URI(uri)] => {
                cert::parse_uri_san(uri.as_str(), "certificate signing request")?
            }
            [] => {
                return Err(CertError::NoSpiffeId {
                    what: "certificate signing request",
                });
            }
            other => {
                return Err(CertError::CsrNames {
                    found: format!("{} names: {other:?}", other.len()),
                });
            }
        };
        self.check_trust_domain(&identity)?;
        authorize(&identity)?;
        let (not_before, not_after) = Self::validity(ttl)?;
        let params = Self::leaf_params(&identity, not_before, not_after)?;
        let leaf = self.sign(&params, &csr.public_key)?;
        // Defensive: what we signed must carry what we authorized.
        if LeafInfo::parse(&leaf)?.identities != [identity] {
            return Err(CertError::NoSpiffeId {
                what: "certificate",
            });
        }
        Ok(vec![leaf, self.root.clone()])
    }
}

impl CertificateAuthority for LocalCa {
    fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<WorkloadCertificate, CaError>> {
        let result = self.issue_now(identity, ttl).map_err(CaError::from);
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::generate_csr;

    fn id(s: &str) -> Identity {
        s.parse().expect("valid id")
    }

    #[test]
    fn issues_a_spiffe_leaf() {
        let ca = LocalCa::generate("cluster.local").expect("ca");
        let cert = ca
            .issue_now(
                &id("spiffe://cluster.local/ns/a/sa/b"),
                Duration::from_secs(3600),
            )
            .expect("issued");
        assert_eq!(cert.identity().as_str(), "spiffe://cluster.local/ns/a/sa/b");
        assert_eq!(cert.roots(), &[ca.root().clone()]);
        let life = cert
            .not_after()
            .duration_since(cert.not_before())
            .expect("ordered");
        assert!(life.as_secs().abs_diff(3600) <= 1, "{life:?}");

        let (_, x509) = x509_parser::parse_x509_certificate(cert.leaf()).expect("parses");
        let eku = x509
            .extended_key_usage()
            .expect("eku ok")
            .expect("eku present")
            .value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(x509.subject().iter().next().is_none(), "empty subject");
        assert!(
            x509.public_key().algorithm.algorithm.to_id_string() == "1.2.840.10045.2.1",
            "ec public key"
        );
    }

    #[test]
    fn refuses_other_trust_domains() {
        let ca = LocalCa::generate("cluster.local").expect("ca");
        let err = ca
            .issue_now(
                &id("spiffe://evil.local/ns/a/sa/b"),
                Duration::from_secs(60),
            )
            .expect_err("other trust domain");
        assert!(matches!(err, CertError::WrongTrustDomain { .. }), "{err}");
    }

    #[test]
    fn signs_csrs_it_authorizes_and_only_those() {
        let ca = LocalCa::generate("cluster.local").expect("ca");
        let me = id("spiffe://cluster.local/ns/a/sa/b");
        let req = generate_csr(&me).expect("csr");
        let chain = ca
            .sign_csr(&req.csr_pem, Duration::from_secs(600), |asked| {
                assert_eq!(asked, &me);
                Ok(())
            })
            .expect("signed");
        assert_eq!(chain.len(), 2);
        assert_eq!(&chain[1], ca.root());
        let cert = WorkloadCertificate::new(
            vec![chain[0].clone()],
            req.private_key,
            vec![chain[1].clone()],
        )
        .expect("assembles");
        assert_eq!(cert.identity(), &me);

        let err = ca
            .sign_csr(&req.csr_pem, Duration::from_secs(600), |asked| {
                Err(CertError::Unauthorized {
                    identity: asked.clone(),
                    reason: "caller is someone else".into(),
                })
            })
            .expect_err("refused");
        assert!(matches!(err, CertError::Unauthorized { .. }), "{err}");

        let other = LocalCa::generate("other.local").expect("ca");
        let err = other
            .sign_csr(&req.csr_pem, Duration::from_secs(600), |_| Ok(()))
            .expect_err("wrong trust domain");
        assert!(matches!(err, CertError::WrongTrustDomain { .. }), "{err}");

        let err = ca
            .sign_csr("garbage", Duration::from_secs(600), |_| Ok(()))
            .expect_err("garbage");
        assert!(matches!(err, CertError::Parse { .. }), "{err}");
    }

    #[test]
    fn round_trips_through_pem_files() {
        let ca = LocalCa::generate("cluster.local").expect("ca");
        let dir = std::env::temp_dir().join(format!("ambit-identity-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert_path, key_path) = (dir.join("root-cert.pem"), dir.join("ca-key.pem"));
        std::fs::write(&cert_path, ca.root_pem()).expect("write cert");
        std::fs::write(&key_path, ca.key_pem()).expect("write key");
        let loaded = LocalCa::from_pem_files(&cert_path, &key_path, "cluster.local").expect("load");
        assert_eq!(loaded.root(), ca.root());
        let cert = loaded
            .issue_now(
                &id("spiffe://cluster.local/ns/a/sa/b"),
                Duration::from_secs(60),
            )
            .expect("issued by the loaded ca");
        let again = WorkloadCertificate::from_pem(
            &cert.chain_pem(),
            &cert::to_pem("PRIVATE KEY", cert.private_key().secret_der()),
            &ca.root_pem(),
        )
        .expect("pem round trip");
        assert_eq!(again.leaf(), cert.leaf());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
