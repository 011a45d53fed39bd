//! A client for Istio's CA: `istio.v1.auth.IstioCertificateService/
//! CreateCertificate`, as ztunnel calls it.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use prost_types::{Struct, Value, value::Kind};
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use super::{
    BoxFuture, CaError, CertificateAuthority,
    proto::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
};
use crate::{
    cert::{self, WorkloadCertificate, generate_csr},
    identity::Identity,
};

/// istiod's CA (and xDS) address.
pub const DEFAULT_CA_ADDRESS: &str = "https://istiod.istio-system.svc:15012";
/// The metadata key a shared (node) proxy uses to ask for another
/// workload's certificate.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Settings of an [`IstioCaClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IstioCaConfig {
    /// `https://host:port`, or `http://host:port` for a plaintext CA (local
    /// tests only). Default [`DEFAULT_CA_ADDRESS`].
    pub address: String,
    /// A file holding the bearer token (a projected service-account JWT);
    /// read afresh for every call, since the kubelet rotates it.
    pub token_path: Option<PathBuf>,
    /// A fixed bearer token (istio/ztunnel's `AUTH_TOKEN` when it is not a
    /// file); used when `token_path` is unset.
    pub static_token: Option<String>,
    /// Extra request headers on every call (istio/ztunnel's
    /// `CA_HEADER_<NAME>`).
    pub headers: Vec<(String, String)>,
    /// Sent as the `clusterid` header when set.
    pub cluster_id: Option<String>,
    /// PEM roots that the CA's TLS certificate must chain to. Required for
    /// `https://` addresses.
    pub root_certs_pem: Option<String>,
    /// The name to verify the CA's certificate against; defaults to the
    /// address's host.
    pub tls_server_name: Option<String>,
    /// Ask for certificates on behalf of other identities (shared-mode
    /// metadata `ImpersonatedIdentity`), as a node proxy does.
    pub impersonate: bool,
    /// Per-call timeout (default 10 s).
    pub timeout: Duration,
}

impl Default for IstioCaConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_CA_ADDRESS.to_owned(),
            token_path: None,
            static_token: None,
            headers: Vec::new(),
            cluster_id: None,
            root_certs_pem: None,
            tls_server_name: None,
            impersonate: true,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A [`CertificateAuthority`] that sends a CSR to Istio's CA.
#[derive(Debug, Clone)]
pub struct IstioCaClient {
    client: IstioCertificateServiceClient<Channel>,
    config: IstioCaConfig,
}

fn config_err(reason: impl Into<String>) -> CaError {
    CaError::Config {
        reason: reason.into(),
    }
}

impl IstioCaClient {
    /// Prepares a client; the connection is made on first use. Must be
    /// called within a tokio runtime.
    pub fn new(mut config: IstioCaConfig) -> Result<Self, CaError> {
        // Istio's charts give `host:port`; like ztunnel, take that as TLS.
        if !config.address.contains("://") {
            config.address = format!("https://{}", config.address);
        }
        let mut endpoint = Endpoint::from_shared(config.address.clone())
            .map_err(|e| config_err(format!("bad ca address {:?}: {e}", config.address)))?
            .timeout(config.timeout)
            .connect_timeout(config.timeout);
        if config.address.starts_with("https://") {
            let roots = config.root_certs_pem.as_deref().ok_or_else(|| {
                config_err("an https ca address needs root certificates (root_certs_pem)")
            })?;
            // Validate the PEM here so a bad bundle fails at startup.
            cert::certs_from_pem(roots.as_bytes(), "the ca root certificates")?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(roots));
            if let Some(name) = &config.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| config_err(format!("bad ca tls settings: {e}")))?;
        } else if !config.address.starts_with("http://") {
            return Err(config_err(format!(
                "ca address {:?} must start with https:// or http://",
                config.address
            )));
        }
        Ok(Self {
            client: IstioCertificateServiceClient::new(endpoint.connect_lazy()),
            config,
        })
    }

    async fn read_token(&self) -> Result<Option<String>, CaError> {
        let Some(path) = &self.config.token_path else {
            return Ok(self.config.static_token.clone());
        };
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| CaError::Token {
                path: path.clone(),
                source,
            })?;
        Ok(Some(token.trim().to_owned()))
    }

    /// Generates a key and CSR for `identity`, has the CA sign it for
    /// `ttl`, and assembles the result (chain leaf first; the last
    /// certificate of the answer becomes the trust root).
    pub async fn sign(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> Result<WorkloadCertificate, CaError> {
        let csr = generate_csr(identity)?;
        let metadata = self.config.impersonate.then(|| Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(identity.to_string())),
                },
            )]),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.csr_pem,
            validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        if let Some(token) = self.read_token().await? {
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| config_err("the ca token is not a valid header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(cluster) = &self.config.cluster_id {
            let value = MetadataValue::try_from(cluster.as_str())
                .map_err(|_| config_err("the cluster id is not a valid header value"))?;
            request.metadata_mut().insert("clusterid", value);
        }
        for (name, value) in &self.config.headers {
            let (Ok(k), Ok(v)) = (
                name.parse::<tonic::metadata::AsciiMetadataKey>(),
                MetadataValue::try_from(value.as_str()),
            ) else {
                return Err(config_err(format!("ca header {name}: not a valid header")));
            };
            request.metadata_mut().insert(k, v);
        }
        let response = self
            .client
            .clone()
            .create_certificate(request)
            .await
            .map_err(|status| self.status_error(status))?
            .into_inner();

        let mut certs = Vec::with_capacity(response.cert_chain.len());
        for pem in &response.cert_chain {
            certs.extend(cert::certs_from_pem(pem.as_bytes(), "the ca response")?);
        }
        if certs.len() < 2 {
            return Err(CaError::BadResponse {
                reason: format!(
                    "expected a leaf and a root, got {} certificate(s)",
                    certs.len()
                ),
            });
        }
        let root = certs.pop().into_iter().collect();
        let cert = WorkloadCertificate::new(certs, csr.private_key, root)?;
        if cert.identity() != identity {
            return Err(CaError::BadResponse {
                reason: format!(
                    "asked for {identity}, got a certificate for {}",
                    cert.identity()
                ),
            });
        }
        Ok(cert)
    }

    fn status_error(&self, status: tonic::Status) -> CaError {
        let address = self.config.address.clone();
        match status.code() {
            tonic::Code::Unavailable => CaError::Connect {
                address,
                source: Box::new(status),
            },
            code => CaError::Rejected {
                address,
                code: format!("{code:?}"),
                message: status.message().to_owned(),
            },
        }
    }
}

impl CertificateAuthority for IstioCaClient {
    fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<WorkloadCertificate, CaError>> {
        let identity = identity.clone();
        Box::pin(async move { self.sign(&identity, ttl).await })
    }
}
