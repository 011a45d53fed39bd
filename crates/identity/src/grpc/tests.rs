//! The CA served over TLS on one port with istiod's certificate, called by
//! tonic clients that verify `istiod.istio-system.svc`, under each
//! authentication choice.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use prost_types::{Struct, Value, value::Kind};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::*;
use crate::{
    CaError, CaServer, Identity, IstioCaClient, IstioCaConfig, LocalCa, WorkloadCertificate,
    ca::{
        authn::{ServiceAccount, TokenSet},
        istio::IMPERSONATED_IDENTITY,
        proto::{
            IstioCertificateRequest,
            istio_certificate_service_client::IstioCertificateServiceClient,
        },
    },
    cert::{self, generate_csr},
};

fn id(s: &str) -> Identity {
    s.parse().expect("identity")
}

fn web() -> Identity {
    id("spiffe://cluster.local/ns/default/sa/web")
}

fn db() -> Identity {
    id("spiffe://cluster.local/ns/default/sa/db")
}

fn ztunnel() -> Identity {
    id("spiffe://cluster.local/ns/istio-system/sa/ztunnel")
}

struct Server {
    ca: Arc<LocalCa>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
    /// Where `client` writes a token for this server; removed with it.
    token: TokenFile,
}

/// A file removed on drop.
struct TokenFile(std::path::PathBuf);

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Server {
    /// Stops the server and returns what `serve_tls` returned.
    async fn shut_down(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve_tls returns after shutdown")
            .expect("not panicked")
    }
}

async fn start(authn: Authn) -> Server {
    let ca = Arc::new(LocalCa::generate("cluster.local").expect("ca"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cert = ca
        .issue_serving_cert(ISTIOD_DNS_NAMES, &[addr.ip()], Duration::from_secs(3600))
        .expect("serving cert");
    let tls = server_config(&cert, &authn, &[ca.root().clone()]).expect("tls config");
    let router = tonic::transport::Server::builder()
        .add_service(CaServer::new(ca.clone()).with_authn(authn).into_service());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_tls(router, listener, Arc::new(tls), async move {
        let _ = rx.await;
    }));
    let token = TokenFile(std::env::temp_dir().join(format!(
        "ambit-grpc-token-{}-{}",
        std::process::id(),
        addr.port()
    )));
    Server {
        ca,
        addr,
        stop: Some(tx),
        task,
        token,
    }
}

/// Client settings for `server`: https, `roots`, verifying `name`.
fn ca_config(server: &Server, name: &str, roots: String) -> IstioCaConfig {
    IstioCaConfig {
        address: format!("https://{}", server.addr),
        root_certs_pem: Some(roots),
        tls_server_name: Some(name.into()),
        ..IstioCaConfig::default()
    }
}

/// The CA client as a proxy configures it for istiod: https, the mesh
/// root, `ALT_CA_HOSTNAME=istiod.istio-system.svc`.
fn client(server: &Server, token: Option<&str>, impersonate: bool) -> IstioCaClient {
    let mut c = IstioCaConfig {
        impersonate,
        ..ca_config(server, ISTIOD_SERVER_NAME, server.ca.root_pem())
    };
    if let Some(token) = token {
        let path = server.token.0.clone();
        std::fs::write(&path, format!("{token}\n")).expect("token file");
        c.token_path = Some(path);
    }
    IstioCaClient::new(c).expect("client")
}

fn assert_rejected(err: &CaError, code: &str, text: &str) {
    match err {
        CaError::Rejected {
            code: c, message, ..
        } => {
            assert_eq!(c, code, "{message}");
            assert!(message.contains(text), "{message:?} lacks {text:?}");
        }
        other => panic!("expected a {code} rejection, got {other}"),
    }
}

#[test]
fn serving_certificate_names_istiod_and_the_ips() {
    let ca = LocalCa::generate("cluster.local").expect("ca");
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let cert = ca
        .issue_serving_cert(ISTIOD_DNS_NAMES, &[ip], Duration::from_secs(60))
        .expect("issued");
    assert_eq!(cert.chain.len(), 1);
    let (_, x509) = x509_parser::parse_x509_certificate(&cert.chain[0]).expect("parses");
    let san = x509.subject_alternative_name().expect("ok").expect("san");
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => (*d).to_owned(),
            x509_parser::extensions::GeneralName::IPAddress(b) => format!("{b:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    for want in ISTIOD_DNS_NAMES {
        assert!(
            names.contains(&(*want).to_owned()),
            "{names:?} lacks {want}"
        );
    }
    assert!(names.contains(&"[10, 0, 0, 1]".to_owned()), "{names:?}");
    let eku = x509.extended_key_usage().expect("ok").expect("eku").value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(
        ca.issue_serving_cert(&[], &[], Duration::from_secs(60))
            .is_err()
    );
}

#[tokio::test]
async fn serves_over_tls_as_istiod_and_shuts_down() {
    let server = start(Authn::none()).await;
    let cert = client(&server, None, true)
        .sign(&web(), Duration::from_secs(600))
        .await
        .expect("signed over tls, verified as istiod.istio-system.svc");
    assert_eq!(cert.identity(), &web());

    // Another name than the certificate's fails verification.
    let c = ca_config(&server, "istiod.other-ns.svc", server.ca.root_pem());
    let err = IstioCaClient::new(c)
        .expect("client")
        .sign(&web(), Duration::from_secs(600))
        .await
        .expect_err("wrong name");
    assert!(matches!(err, CaError::Connect { .. }), "{err}");

    // Roots of another CA fail too.
    let foreign_root = LocalCa::generate("cluster.local").expect("ca").root_pem();
    let c = ca_config(&server, ISTIOD_SERVER_NAME, foreign_root);
    let err = IstioCaClient::new(c)
        .expect("client")
        .sign(&web(), Duration::from_secs(600))
        .await
        .expect_err("unknown root");
    assert!(matches!(err, CaError::Connect { .. }), "{err}");

    server.shut_down().await.expect("clean shutdown");
}

#[tokio::test]
async fn bearer_tokens_are_checked_and_bound_to_a_service_account() {
    let tokens = TokenSet::new()
        .with("zt-secret", ServiceAccount::new("istio-system", "ztunnel"))
        .with("web-secret", ServiceAccount::new("default", "web"));
    let server = start(Authn::tokens(tokens)).await;
    let ttl = Duration::from_secs(600);

    let err = client(&server, None, false)
        .sign(&web(), ttl)
        .await
        .expect_err("no token");
    assert_rejected(&err, "Unauthenticated", "no authorization header");
    let err = client(&server, Some("guess"), false)
        .sign(&web(), ttl)
        .await
        .expect_err("unknown token");
    assert_rejected(&err, "Unauthenticated", "not recognized");

    let web_client = client(&server, Some("web-secret"), false);
    web_client
        .sign(&web(), ttl)
        .await
        .expect("its own identity");
    let err = web_client.sign(&db(), ttl).await.expect_err("another's");
    assert_rejected(&err, "PermissionDenied", "for itself only");
    let err = client(&server, Some("web-secret"), true)
        .sign(&db(), ttl)
        .await
        .expect_err("impersonation by a workload");
    assert_rejected(&err, "PermissionDenied", "not a trusted node account");

    // The node proxy's token: any identity, on another's behalf.
    let zt = client(&server, Some("zt-secret"), true);
    for who in [web(), db()] {
        assert_eq!(
            zt.sign(&who, ttl).await.expect("impersonated").identity(),
            &who
        );
    }
    server.shut_down().await.expect("clean shutdown");
}

/// A raw CA client presenting `cert` (if any) as its TLS client identity.
async fn cert_client(
    server: &Server,
    cert: Option<&WorkloadCertificate>,
) -> Result<IstioCertificateServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server.ca.root_pem()))
        .domain_name(ISTIOD_SERVER_NAME);
    if let Some(cert) = cert {
        let key = cert::to_pem("PRIVATE KEY", cert.private_key().secret_der());
        tls = tls.identity(tonic::transport::Identity::from_pem(cert.chain_pem(), key));
    }
    let channel = Endpoint::from_shared(format!("https://{}", server.addr))
        .expect("endpoint")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(IstioCertificateServiceClient::new(channel))
}

async fn csr_for(
    client: &mut IstioCertificateServiceClient<Channel>,
    who: &Identity,
    impersonate: bool,
) -> Result<Vec<String>, tonic::Status> {
    let csr = generate_csr(who).expect("csr");
    let metadata = impersonate.then(|| Struct {
        fields: BTreeMap::from([(
            IMPERSONATED_IDENTITY.to_owned(),
            Value {
                kind: Some(Kind::StringValue(who.to_string())),
            },
        )]),
    });
    let request = IstioCertificateRequest {
        csr: csr.csr_pem,
        validity_duration: 600,
        metadata,
    };
    Ok(client
        .create_certificate(request)
        .await?
        .into_inner()
        .cert_chain)
}

#[tokio::test]
async fn client_certificates_of_the_mesh_authenticate_their_identity() {
    let server = start(Authn::client_certs()).await;
    let ttl = Duration::from_secs(600);
    let web_cert = server.ca.issue_now(&web(), ttl).expect("web cert");
    let zt_cert = server.ca.issue_now(&ztunnel(), ttl).expect("ztunnel cert");

    // Renewal: the holder of web's certificate may get web's again.
    let mut web_client = cert_client(&server, Some(&web_cert))
        .await
        .expect("connects");
    let chain = csr_for(&mut web_client, &web(), false)
        .await
        .expect("renewed");
    assert_eq!(chain.len(), 2);
    let status = csr_for(&mut web_client, &db(), false)
        .await
        .expect_err("another's identity");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("for itself only"),
        "{}",
        status.message()
    );

    // No certificate: refused with the reason.
    let mut anonymous = cert_client(&server, None).await.expect("connects");
    let status = csr_for(&mut anonymous, &web(), false)
        .await
        .expect_err("anonymous");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("no client certificate"),
        "{}",
        status.message()
    );

    // The node proxy's certificate may impersonate.
    let mut zt = cert_client(&server, Some(&zt_cert))
        .await
        .expect("connects");
    csr_for(&mut zt, &db(), true)
        .await
        .expect("node proxy impersonates");

    // A certificate of another CA fails the handshake (or the first call).
    let foreign = LocalCa::generate("cluster.local")
        .expect("ca")
        .issue_now(&web(), ttl)
        .expect("foreign cert");
    let refused = match cert_client(&server, Some(&foreign)).await {
        Err(_) => true,
        Ok(mut c) => csr_for(&mut c, &web(), false).await.is_err(),
    };
    assert!(refused, "a foreign client certificate was accepted");
    server.shut_down().await.expect("clean shutdown");
}

#[tokio::test]
async fn tokens_and_client_certificates_together() {
    let tokens = TokenSet::new().with("web-secret", ServiceAccount::new("default", "web"));
    let server = start(Authn::client_certs().with_tokens(tokens)).await;
    let ttl = Duration::from_secs(600);
    client(&server, Some("web-secret"), false)
        .sign(&web(), ttl)
        .await
        .expect("token without certificate");
    let db_cert = server.ca.issue_now(&db(), ttl).expect("db cert");
    let mut db_client = cert_client(&server, Some(&db_cert))
        .await
        .expect("connects");
    csr_for(&mut db_client, &db(), false)
        .await
        .expect("certificate without token");
    let err = client(&server, None, false)
        .sign(&web(), ttl)
        .await
        .expect_err("neither");
    assert_rejected(
        &err,
        "Unauthenticated",
        "no client certificate; no authorization header",
    );
    server.shut_down().await.expect("clean shutdown");
}
