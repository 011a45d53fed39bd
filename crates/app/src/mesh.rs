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

/// Where Istio's proxies find the root certificate by default (relative
/// to the working directory, `/` in Istio's images).
pub const DEFAULT_ROOT_CERT: &str = "./var/run/secrets/istio/root-cert.pem";

/// istiod's address as Istio's ztunnel defaults to it: the in-cluster
/// name when `KUBERNETES_SERVICE_HOST` is set, else `https://localhost:15012`.
pub fn default_istiod_address() -> String {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        ambit_xds::ads::DEFAULT_XDS_ADDRESS.to_owned()
    } else {
        "https://localhost:15012".to_owned()
    }
}

/// The PEM roots a `XDS_ROOT_CA`/`CA_ROOT_CA` value names, read as Istio's
/// ztunnel reads it: unset → [`DEFAULT_ROOT_CERT`] if that file exists
/// (else the system roots); `SYSTEM` → the system roots (`None`); an
/// existing file → its contents; PEM text itself → that text.
pub fn root_pem(setting: &str, value: Option<&str>) -> anyhow::Result<Option<String>> {
    match value {
        None => Ok(Path::new(DEFAULT_ROOT_CERT)
            .exists()
            .then(|| read(Path::new(DEFAULT_ROOT_CERT)))
            .transpose()?),
        Some("SYSTEM") => Ok(None),
        Some(v) if Path::new(v).is_file() => read(Path::new(v)).map(Some),
        Some(v) if v.contains("-----BEGIN CERTIFICATE-----") => Ok(Some(v.to_owned())),
        Some(v) => anyhow::bail!("{setting}={v:?} is neither a readable file, PEM, nor SYSTEM"),
    }
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// The mesh source: ztunnel's local YAML, or istiod over delta ADS.
#[derive(Debug, Clone, Args)]
pub struct MeshSourceArgs {
    /// Mesh configuration file in ztunnel's local YAML format (no xDS).
    #[arg(long, env = "LOCAL_XDS_PATH")]
    pub local_xds_path: Option<PathBuf>,
    /// The xDS server (istiod); delta ADS for Address and Authorization.
    /// Ignored when LOCAL_XDS_PATH is set. Default as Istio's ztunnel:
    /// `https://istiod.istio-system.svc:15012` inside a cluster
    /// (KUBERNETES_SERVICE_HOST set), else `https://localhost:15012`.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// Roots for the xDS server's TLS certificate: a PEM file, PEM text, or
    /// `SYSTEM` (default: ./var/run/secrets/istio/root-cert.pem when it
    /// exists, else the system roots).
    #[arg(long, env = "XDS_ROOT_CA")]
    pub xds_root_cert: Option<String>,
    /// The name the xDS server's TLS certificate is verified against, as
    /// Istio's ztunnel reads it (default: the host of XDS_ADDRESS). For an
    /// address whose host is not in the certificate, e.g. an IP address
    /// of istiod, whose certificate names `istiod.istio-system.svc`.
    #[arg(long, env = "ALT_XDS_HOSTNAME")]
    pub alt_xds_hostname: Option<String>,
}

impl MeshSourceArgs {
    /// The source these flags name. `node` is what this proxy tells istiod
    /// it is; the token and cluster id are the CA group's.
    pub fn source(&self, ca: &CaArgs, node: NodeIdentity) -> anyhow::Result<MeshSource> {
        if let Some(path) = &self.local_xds_path {
            return Ok(MeshSource::Local(Config::from_file(path)?));
        }
        let addr = self
            .xds_address
            .clone()
            .unwrap_or_else(default_istiod_address);
        let mut c = AdsConfig::new(addr, node);
        c.token_path = ca.token();
        c.cluster_id = Some(ca.cluster_id.clone());
        c.root_certs_pem = root_pem("XDS_ROOT_CA", self.xds_root_cert.as_deref())?;
        c.tls_server_name = self.alt_xds_hostname.clone();
        Ok(MeshSource::Xds(Box::new(c)))
    }
}

/// Certificates: the Istio CA, or a local CA's PEM files.
#[derive(Debug, Clone, Args)]
pub struct CaArgs {
    /// Istio CA address; default as XDS_ADDRESS's. Not used when
    /// LOCAL_CA_CERT and LOCAL_CA_KEY are set.
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,
    /// Roots for the CA's TLS certificate, as XDS_ROOT_CA.
    #[arg(long, env = "CA_ROOT_CA")]
    pub ca_root_cert: Option<String>,
    /// The name the CA's TLS certificate is verified against, as
    /// ALT_XDS_HOSTNAME (default: the host of CA_ADDRESS).
    #[arg(long, env = "ALT_CA_HOSTNAME")]
    pub alt_ca_hostname: Option<String>,
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
        if let (Some(cert), Some(key)) = (&self.local_ca_cert, &self.local_ca_key) {
            return Ok(Arc::new(LocalCa::from_pem(
                &read(cert)?,
                &read(key)?,
                &self.trust_domain,
            )?));
        }
        let mut c = IstioCaConfig::default();
        c.address = self
            .ca_address
            .clone()
            .unwrap_or_else(default_istiod_address);
        c.impersonate = impersonate;
        c.token_path = self.token();
        c.cluster_id = Some(self.cluster_id.clone());
        c.root_certs_pem = root_pem("CA_ROOT_CA", self.ca_root_cert.as_deref())?;
        c.tls_server_name = self.alt_ca_hostname.clone();
        Ok(Arc::new(IstioCaClient::new(c)?))
    }

    /// A certificate manager over `ca` with the requested lifetime.
    pub fn manager(&self, ca: Arc<dyn CertificateAuthority>) -> Arc<CertManager> {
        let mut mc = ManagerConfig::default();
        mc.ttl = self.secret_ttl;
        Arc::new(CertManager::new(ca, mc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        mesh: MeshSourceArgs,
        #[command(flatten)]
        ca: CaArgs,
    }

    #[test]
    fn alt_hostnames_become_the_tls_server_names() {
        use clap::Parser;
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let cli = Cli::try_parse_from([
            "proxy",
            "--xds-address",
            "https://10.0.0.1:15012",
            &format!("--xds-root-cert={pem}"),
            "--alt-xds-hostname",
            "istiod.istio-system.svc",
            "--alt-ca-hostname",
            "istiod.istio-system.svc",
        ])
        .expect("parses");
        assert_eq!(
            cli.ca.alt_ca_hostname.as_deref(),
            Some("istiod.istio-system.svc")
        );
        let node = NodeIdentity::new("10.0.0.2", "zt", "istio-system", "node-a");
        match cli.mesh.source(&cli.ca, node).expect("source") {
            MeshSource::Xds(c) => {
                assert_eq!(
                    c.tls_server_name.as_deref(),
                    Some("istiod.istio-system.svc")
                );
                assert_eq!(c.address, "https://10.0.0.1:15012");
            }
            MeshSource::Local(_) => panic!("expected xds"),
        }
    }

    #[test]
    fn root_cert_settings_as_istio_reads_them() {
        assert_eq!(
            root_pem("XDS_ROOT_CA", Some("SYSTEM")).expect("system"),
            None
        );
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            root_pem("XDS_ROOT_CA", Some(pem)).expect("inline"),
            Some(pem.to_owned())
        );
        let dir = std::env::temp_dir().join(format!("ambit-app-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("root.pem");
        std::fs::write(&file, pem).expect("write");
        let from_file = root_pem("CA_ROOT_CA", file.to_str());
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(from_file.expect("file"), Some(pem.to_owned()));
        let err = root_pem("CA_ROOT_CA", Some("/nonexistent/root.pem")).expect_err("bad");
        assert!(err.to_string().contains("CA_ROOT_CA"), "{err}");
    }
}
