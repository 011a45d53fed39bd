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

/// istio/ztunnel's address forms: `host:port` without a scheme means
/// `https://host:port`; empty means unset.
pub fn istio_address(a: Option<String>) -> Option<String> {
    let a = a?.trim().to_owned();
    if a.is_empty() {
        None
    } else if a.contains("://") {
        Some(a)
    } else {
        Some(format!("https://{a}"))
    }
}

/// Every `<prefix><NAME>=value` environment variable as a `(NAME, value)`
/// request header (istio/ztunnel's XDS_HEADER_* and CA_HEADER_*); a name
/// or value that cannot be a header is refused.
pub fn prefixed_headers(prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
    headers_from(std::env::vars(), prefix)
}

fn headers_from(
    vars: impl IntoIterator<Item = (String, String)>,
    prefix: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, v) in vars {
        let Some(name) = k.strip_prefix(prefix).filter(|n| !n.is_empty()) else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        let ok_name = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let ok_value = v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        if !ok_name || !ok_value {
            anyhow::bail!("{k}: not a valid request header");
        }
        out.push((name, v));
    }
    out.sort();
    Ok(out)
}

/// The mesh source: ztunnel's local YAML, or istiod over delta ADS.
#[derive(Debug, Clone, Args)]
pub struct MeshSourceArgs {
    /// Mesh configuration file in ztunnel's local YAML format (no xDS).
    #[arg(long, env = "LOCAL_XDS_PATH")]
    pub local_xds_path: Option<PathBuf>,
    /// The same configuration given inline (YAML text), as istio/ztunnel's
    /// LOCAL_XDS; only one of the two may be set.
    #[arg(long, env = "LOCAL_XDS")]
    pub local_xds: Option<String>,
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
        match (&self.local_xds_path, &self.local_xds) {
            (Some(_), Some(_)) => {
                anyhow::bail!("only one of LOCAL_XDS_PATH and LOCAL_XDS may be set")
            }
            (Some(path), None) => return Ok(MeshSource::Local(Config::from_file(path)?)),
            (None, Some(text)) => return Ok(MeshSource::Local(Config::parse(text, "LOCAL_XDS")?)),
            (None, None) => {}
        }
        let addr = istio_address(self.xds_address.clone()).unwrap_or_else(default_istiod_address);
        let mut c = AdsConfig::new(addr, node);
        (c.token_path, c.static_token) = ca.token()?;
        c.headers = prefixed_headers("XDS_HEADER_")?;
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
    /// The bearer token sent to the CA and the xDS server, as istio/ztunnel
    /// reads AUTH_TOKEN: a file (read again for every call), or the token
    /// itself. Default: AUTH_TOKEN_PATH.
    #[arg(long, env = "AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// The bearer token file (Ambit's name; Istio's default path), used
    /// when it exists and AUTH_TOKEN is unset.
    #[arg(
        long,
        env = "AUTH_TOKEN_PATH",
        default_value = "./var/run/secrets/tokens/istio-token"
    )]
    pub auth_token_path: PathBuf,
    /// Issue certificates from a CA made up at start (self-signed, for
    /// tests: peers trust nothing else), as istio/ztunnel's FAKE_CA.
    #[arg(long, env = "FAKE_CA", default_value_t = false, action = clap::ArgAction::Set)]
    pub fake_ca: bool,
    /// A certificate revocation list (PEM or DER): peers presenting a
    /// listed certificate are refused; re-read when the file changes.
    #[arg(long, env = "CRL_PATH")]
    pub crl_path: Option<PathBuf>,
    /// Also allow TLS 1.2 for mTLS (default TLS 1.3 only).
    #[arg(long, env = "TLS12_ENABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub tls12_enabled: bool,
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
    /// The token as (file, fixed token): AUTH_TOKEN when it names a file,
    /// else AUTH_TOKEN as the token, else AUTH_TOKEN_PATH when it exists.
    /// Both set to different files is refused.
    fn token(&self) -> anyhow::Result<(Option<PathBuf>, Option<String>)> {
        match self.auth_token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) if Path::new(t).is_file() => {
                if std::env::var_os("AUTH_TOKEN_PATH").is_some()
                    && Path::new(t) != self.auth_token_path
                {
                    anyhow::bail!(
                        "AUTH_TOKEN={t} and AUTH_TOKEN_PATH={} name different token files: set one",
                        self.auth_token_path.display()
                    );
                }
                Ok((Some(PathBuf::from(t)), None))
            }
            Some(t) => Ok((None, Some(t.trim().to_owned()))),
            None => Ok((
                self.auth_token_path
                    .exists()
                    .then(|| self.auth_token_path.clone()),
                None,
            )),
        }
    }

    /// Applies the process-wide TLS settings (CRL_PATH, TLS12_ENABLED).
    pub fn apply_tls_settings(&self) -> anyhow::Result<()> {
        ambit_identity::tls::set_tls12_enabled(self.tls12_enabled);
        if let Some(p) = &self.crl_path {
            let n = ambit_identity::tls::set_crl_path(Some(p))?;
            tracing::info!(path = %p.display(), revoked = n, "revocation list loaded");
        }
        Ok(())
    }

    /// The CA these flags name: the local CA when its files are given,
    /// else the Istio CA. `impersonate`: ask for other workloads'
    /// certificates (node proxies); a waypoint asks only for its own.
    pub fn authority(&self, impersonate: bool) -> anyhow::Result<Arc<dyn CertificateAuthority>> {
        if self.fake_ca {
            if self.local_ca_cert.is_some() {
                anyhow::bail!("FAKE_CA=true and LOCAL_CA_CERT contradict each other: set one");
            }
            tracing::warn!(
                "FAKE_CA: certificates come from a CA made up at start; nothing outside this process trusts them"
            );
            return Ok(Arc::new(LocalCa::generate(&self.trust_domain)?));
        }
        if let (Some(cert), Some(key)) = (&self.local_ca_cert, &self.local_ca_key) {
            return Ok(Arc::new(LocalCa::from_pem(
                &read(cert)?,
                &read(key)?,
                &self.trust_domain,
            )?));
        }
        let mut c = IstioCaConfig::default();
        c.address = istio_address(self.ca_address.clone()).unwrap_or_else(default_istiod_address);
        c.impersonate = impersonate;
        (c.token_path, c.static_token) = self.token()?;
        c.headers = prefixed_headers("CA_HEADER_")?;
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

    #[test]
    fn istio_forms_of_addresses_tokens_headers_and_inline_config() {
        use clap::Parser;
        assert_eq!(
            istio_address(Some("istiod.istio-system.svc:15012".into())).as_deref(),
            Some("https://istiod.istio-system.svc:15012")
        );
        assert_eq!(
            istio_address(Some("http://a:1".into())).as_deref(),
            Some("http://a:1")
        );
        assert_eq!(istio_address(Some(" ".into())), None);
        // LOCAL_XDS inline; both forms at once are refused naming both.
        let yaml = "workloads:\n- {uid: a, workloadIps: [\"10.0.0.1\"]}\n";
        let node = || NodeIdentity::new("10.0.0.2", "zt", "istio-system", "n");
        let cli = Cli::try_parse_from(["proxy", "--local-xds", yaml]).expect("parses");
        match cli.mesh.source(&cli.ca, node()).expect("inline") {
            MeshSource::Local(c) => assert_eq!(c.workloads[0].uid, "a"),
            MeshSource::Xds(_) => panic!("expected local"),
        }
        let cli =
            Cli::try_parse_from(["proxy", "--local-xds", yaml, "--local-xds-path", "/x.yaml"])
                .expect("parses");
        let e = cli.mesh.source(&cli.ca, node()).expect_err("both");
        assert!(
            e.to_string().contains("LOCAL_XDS_PATH") && e.to_string().contains("LOCAL_XDS "),
            "{e}"
        );
        // AUTH_TOKEN: a token itself, or a file.
        let cli = Cli::try_parse_from(["proxy", "--auth-token", "abc"]).expect("parses");
        assert_eq!(cli.ca.token().expect("token"), (None, Some("abc".into())));
        let dir = std::env::temp_dir().join(format!("ambit-app-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "t").expect("write");
        let cli = Cli::try_parse_from(["proxy", "--auth-token", file.to_str().expect("utf8")])
            .expect("parses");
        let from_file = cli.ca.token();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(from_file.expect("file"), (Some(file), None));
        // FAKE_CA beside a local CA is a contradiction.
        let cli = Cli::try_parse_from([
            "proxy",
            "--fake-ca",
            "true",
            "--local-ca-cert",
            "/a",
            "--local-ca-key",
            "/b",
        ])
        .expect("parses");
        let e = cli.ca.authority(true).err().expect("contradiction");
        assert!(
            e.to_string().contains("FAKE_CA") && e.to_string().contains("LOCAL_CA_CERT"),
            "{e}"
        );
        let cli = Cli::try_parse_from(["proxy", "--fake-ca", "true"]).expect("parses");
        assert!(cli.ca.authority(true).is_ok());
        // XDS_HEADER_* / CA_HEADER_*.
        let vars = [
            ("XDS_HEADER_X_TENANT".to_owned(), "blue".to_owned()),
            ("CA_HEADER_OTHER".to_owned(), "x".to_owned()),
            ("XDS_HEADER_".to_owned(), "empty name".to_owned()),
        ];
        assert_eq!(
            headers_from(vars.clone(), "XDS_HEADER_").expect("ok"),
            vec![("x_tenant".to_owned(), "blue".to_owned())]
        );
        let bad = [("XDS_HEADER_A".to_owned(), "line\nbreak".to_owned())];
        assert!(headers_from(bad, "XDS_HEADER_").is_err());
    }
}
