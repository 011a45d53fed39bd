//! Where the mesh state and the certificates come from: istiod (delta ADS
//! and the Istio CA) or local files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambit_identity::{
    CertManager, CertificateAuthority, IstioCaClient, IstioCaConfig, LocalCa, ManagerConfig,
};
use ambit_mesh::Config;
use ambit_mesh::xds::MeshSource;
use ambit_xds::{AdsConfig, NodeIdentity};
use anyhow::Context;
use clap::Args;

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// The mesh source: ztunnel's local YAML, or istiod over delta ADS.
#[derive(Debug, Clone, Args)]
pub struct MeshSourceArgs {
    /// Mesh configuration file in ztunnel's local YAML format (no xDS).
    #[arg(long, env = "LOCAL_XDS_PATH")]
    pub local_xds_path: Option<PathBuf>,
    /// The xDS server (istiod), e.g. `https://istiod.istio-system.svc:15012`;
    /// delta ADS for Address and Authorization. Ignored when LOCAL_XDS_PATH is set.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// PEM roots for the xDS server's TLS certificate.
    #[arg(long, env = "XDS_ROOT_CA")]
    pub xds_root_cert: Option<PathBuf>,
}

impl MeshSourceArgs {
    /// The source these flags name. `node` is what this proxy tells istiod
    /// it is; the token and cluster id are the CA group's.
    pub fn source(&self, ca: &CaArgs, node: NodeIdentity) -> anyhow::Result<MeshSource> {
        match (&self.local_xds_path, &self.xds_address) {
            (Some(path), _) => Ok(MeshSource::Local(Config::from_file(path)?)),
            (None, Some(addr)) => {
                let mut c = AdsConfig::new(addr.clone(), node);
                c.token_path = ca.token();
                c.cluster_id = Some(ca.cluster_id.clone());
                c.root_certs_pem = self.xds_root_cert.as_deref().map(read).transpose()?;
                Ok(MeshSource::Xds(Box::new(c)))
            }
            (None, None) => {
                anyhow::bail!("no mesh configuration: set XDS_ADDRESS or LOCAL_XDS_PATH")
            }
        }
    }
}

/// Certificates: the Istio CA, or a local CA's PEM files.
#[derive(Debug, Clone, Args)]
pub struct CaArgs {
    /// Istio CA address (`https://istiod.istio-system.svc:15012`).
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,
    /// PEM roots for the CA's TLS certificate.
    #[arg(long, env = "CA_ROOT_CA")]
    pub ca_root_cert: Option<PathBuf>,
    /// Bearer token file sent to the CA and the xDS server.
    #[arg(
        long,
        env = "AUTH_TOKEN_PATH",
        default_value = "/var/run/secrets/tokens/istio-token"
    )]
    pub auth_token_path: PathBuf,
    /// Local CA certificate (PEM), to issue certificates without istiod.
    #[arg(long, env = "LOCAL_CA_CERT", requires = "local_ca_key")]
    pub local_ca_cert: Option<PathBuf>,
    /// Local CA private key (PEM).
    #[arg(long, env = "LOCAL_CA_KEY", requires = "local_ca_cert")]
    pub local_ca_key: Option<PathBuf>,
    /// SPIFFE trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Cluster id (sent to the CA and the xDS server as `clusterid`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Certificate lifetime requested from the CA, as Istio writes it
    /// (`24h`, `90m`; a bare number is seconds).
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = crate::parse_duration)]
    pub secret_ttl: Duration,
}

impl CaArgs {
    /// The token file, when it exists.
    fn token(&self) -> Option<PathBuf> {
        self.auth_token_path
            .exists()
            .then(|| self.auth_token_path.clone())
    }

    /// The CA these flags name: the local CA when its files are given,
    /// else the Istio CA. `impersonate`: ask for other workloads'
    /// certificates (node proxies); a waypoint asks only for its own.
    pub fn authority(&self, impersonate: bool) -> anyhow::Result<Arc<dyn CertificateAuthority>> {
        match (&self.ca_address, &self.local_ca_cert, &self.local_ca_key) {
            (_, Some(cert), Some(key)) => Ok(Arc::new(LocalCa::from_pem(
                &read(cert)?,
                &read(key)?,
                &self.trust_domain,
            )?)),
            (Some(addr), _, _) => {
                let mut c = IstioCaConfig::default();
                c.address = addr.clone();
                c.impersonate = impersonate;
                c.token_path = self.token();
                c.cluster_id = Some(self.cluster_id.clone());
                c.root_certs_pem = self.ca_root_cert.as_deref().map(read).transpose()?;
                Ok(Arc::new(IstioCaClient::new(c)?))
            }
            _ => anyhow::bail!(
                "no certificate authority: set CA_ADDRESS, or LOCAL_CA_CERT and LOCAL_CA_KEY"
            ),
        }
    }

    /// A certificate manager over `ca` with the requested lifetime.
    pub fn manager(&self, ca: Arc<dyn CertificateAuthority>) -> Arc<CertManager> {
        let mut mc = ManagerConfig::default();
        mc.ttl = self.secret_ttl;
        Arc::new(CertManager::new(ca, mc))
    }
}
