//! The Istio CA client against the CA server over loopback gRPC, plaintext
//! and TLS.
#![cfg(feature = "istio-ca")]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use ambit_identity::{
    CaError, CaServer, CertManager, Identity, IstioCaClient, IstioCaConfig, LocalCa, ManagerConfig,
    ca::server::SignRequest,
};
use tokio::{net::TcpListener, sync::oneshot};

fn id(s: &str) -> Identity {
    s.parse().expect("valid id")
}

/// What the server's authorizer saw for one request.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    identity: Identity,
    impersonated: bool,
    authorization: Option<String>,
    cluster: Option<String>,
}

struct Fixture {
    ca: Arc<LocalCa>,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _stop: oneshot::Sender<()>,
}

/// Starts a plaintext CA server that records every request and refuses
/// the service account `denied`.
async fn start_server() -> Fixture {
    let ca = Arc::new(LocalCa::generate("cluster.local").expect("ca"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server =
        CaServer::new(ca.clone()).with_authorizer(Arc::new(move |req: &SignRequest<'_>| {
            let header = |k: &str| {
                req.metadata
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            log.lock().expect("lock").push(Seen {
                identity: req.identity.clone(),
                impersonated: req.impersonated,
                authorization: header("authorization"),
                cluster: header("clusterid"),
            });
            if req.identity.service_account() == "denied" {
                Err("service account denied by test policy".into())
            } else {
                Ok(())
            }
        }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    Fixture {
        ca,
        addr,
        seen,
        _stop: stop,
    }
}

fn token_file(name: &str, token: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ambit-identity-{name}-{}", std::process::id()));
    std::fs::write(&path, token).expect("write token");
    path
}

#[tokio::test]
async fn client_obtains_certificates_from_the_server() {
    let fx = start_server().await;
    let token = token_file("token", "first-token\n");
    let mut config = IstioCaConfig::default();
    config.address = format!("http://{}", fx.addr);
    config.token_path = Some(token.clone());
    config.cluster_id = Some("Kubernetes".into());
    let client = IstioCaClient::new(config).expect("client");

    let me = id("spiffe://cluster.local/ns/default/sa/web");
    let cert = client
        .sign(&me, Duration::from_secs(3600))
        .await
        .expect("signed");
    assert_eq!(cert.identity(), &me);
    assert_eq!(cert.roots(), &[fx.ca.root().clone()]);
    assert_eq!(cert.chain().len(), 1, "leaf only; the root is separate");
    let life = cert
        .not_after()
        .duration_since(cert.not_before())
        .expect("ordered");
    assert!(life.as_secs().abs_diff(3600) <= 1, "{life:?}");

    // The token is re-read per call: a rotated token is sent next time.
    std::fs::write(&token, "second-token").expect("rotate token");
    client
        .sign(&me, Duration::from_secs(60))
        .await
        .expect("signed again");
    let seen = fx.seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        vec![
            Seen {
                identity: me.clone(),
                impersonated: true,
                authorization: Some("Bearer first-token".into()),
                cluster: Some("Kubernetes".into()),
            },
            Seen {
                identity: me.clone(),
                impersonated: true,
                authorization: Some("Bearer second-token".into()),
                cluster: Some("Kubernetes".into()),
            },
        ]
    );
    std::fs::remove_file(&token).expect("cleanup");
}

#[tokio::test]
async fn server_refusals_reach_the_client() {
    let fx = start_server().await;
    let mut config = IstioCaConfig::default();
    config.address = format!("http://{}", fx.addr);
    config.impersonate = false;
    let client = IstioCaClient::new(config).expect("client");

    let err = client
        .sign(
            &id("spiffe://other.local/ns/default/sa/web"),
            Duration::from_secs(60),
        )
        .await
        .expect_err("wrong trust domain");
    match &err {
        CaError::Rejected { code, message, .. } => {
            assert_eq!(code, "PermissionDenied");
            assert!(message.contains("trust domain"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }

    let err = client
        .sign(
            &id("spiffe://cluster.local/ns/default/sa/denied"),
            Duration::from_secs(60),
        )
        .await
        .expect_err("denied by policy");
    assert!(
        matches!(&err, CaError::Rejected { code, message, .. }
            if code == "PermissionDenied" && message.contains("denied by test policy")),
        "{err:?}"
    );
    let seen = fx.seen.lock().expect("lock").clone();
    assert_eq!(
        seen.len(),
        1,
        "the trust-domain check runs before the policy"
    );
    assert!(!seen[0].impersonated);
    assert_eq!(seen[0].authorization, None);

    // Nothing listening: a connection error, not a refusal.
    let mut config = IstioCaConfig::default();
    config.address = "http://127.0.0.1:1".into();
    config.timeout = Duration::from_secs(2);
    let err = IstioCaClient::new(config)
        .expect("client")
        .sign(
            &id("spiffe://cluster.local/ns/default/sa/web"),
            Duration::from_secs(60),
        )
        .await
        .expect_err("unreachable");
    assert!(matches!(err, CaError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn manager_rotates_through_the_grpc_ca() {
    let fx = start_server().await;
    let mut config = IstioCaConfig::default();
    config.address = format!("http://{}", fx.addr);
    let client = IstioCaClient::new(config).expect("client");
    let manager = CertManager::new(client, ManagerConfig::default());
    let me = id("spiffe://cluster.local/ns/default/sa/web");
    let (a, b) = tokio::join!(manager.fetch(&me), manager.fetch(&me));
    let (a, b) = (a.expect("cert"), b.expect("cert"));
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(fx.seen.lock().expect("lock").len(), 1, "one grpc call");
    let life = a
        .not_after()
        .duration_since(a.not_before())
        .expect("ordered");
    assert!(life.as_secs().abs_diff(24 * 3600) <= 1, "default ttl 24 h");
}

#[tokio::test]
async fn client_verifies_the_ca_tls_certificate_against_custom_roots() {
    // tonic's TLS server uses the process-default provider, which rustls
    // cannot pick by itself under --all-features (both providers built in).
    let _ = rustls::crypto::CryptoProvider::install_default((*ambit_identity::provider()).clone());
    let ca = Arc::new(LocalCa::generate("cluster.local").expect("ca"));
    // The CA's serving certificate: a DNS name, from a separate test root.
    let serving =
        rcgen::generate_simple_self_signed(vec!["istiod.test".to_owned()]).expect("serving cert");
    let cert_pem = serving.cert.pem();
    let key_pem = serving.signing_key.serialize_pem();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_stop, stopped) = oneshot::channel::<()>();
    let mut server = tonic::transport::Server::builder()
        .tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem)),
        )
        .expect("server tls");
    tokio::spawn(
        server
            .add_service(CaServer::new(ca.clone()).into_service())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = stopped.await;
                },
            ),
    );

    let me = id("spiffe://cluster.local/ns/default/sa/web");
    let mut config = IstioCaConfig::default();
    config.address = format!("https://{addr}");
    config.tls_server_name = Some("istiod.test".into());
    config.root_certs_pem = Some(cert_pem);
    let cert = IstioCaClient::new(config.clone())
        .expect("client")
        .sign(&me, Duration::from_secs(60))
        .await
        .expect("signed over tls");
    assert_eq!(cert.identity(), &me);

    // Roots that do not match the CA's certificate: no connection.
    config.root_certs_pem = Some(ca.root_pem());
    let err = IstioCaClient::new(config.clone())
        .expect("client")
        .sign(&me, Duration::from_secs(60))
        .await
        .expect_err("untrusted ca");
    assert!(matches!(err, CaError::Connect { .. }), "{err:?}");

    // https without roots is a configuration error.
    config.root_certs_pem = None;
    assert!(matches!(
        IstioCaClient::new(config),
        Err(CaError::Config { .. })
    ));
}
