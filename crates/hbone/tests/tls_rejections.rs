//! Each way a peer can be refused, end to end through the HBONE client
//! and server: wrong SAN, wrong trust domain, expired certificate, missing
//! client certificate, unknown root. Each yields a distinct error on the
//! refusing side, and the other side learns of it as a typed TLS error.

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use ambit_hbone::{
    Authority, Client, ClientConfig, ClientError, ConnectRequest, ServerConfig, StaticTls,
};
use ambit_identity::{CertResolver, HandshakeError, Identity, LocalCa, WorkloadCertificate, tls};
use common::*;
use rustls::{
    AlertDescription, client::ResolvesClientCert, pki_types::CertificateDer, sign::CertifiedKey,
};

fn issue(ca: &LocalCa, identity: &Identity) -> Arc<WorkloadCertificate> {
    Arc::new(
        ca.issue_now(identity, Duration::from_secs(3600))
            .expect("issue"),
    )
}

fn expired(ca: &LocalCa, identity: &Identity) -> Arc<WorkloadCertificate> {
    let now = SystemTime::now();
    Arc::new(
        ca.issue_with_validity(
            identity,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .expect("issue expired"),
    )
}

fn server_tls(
    cert: Arc<WorkloadCertificate>,
    roots: &[CertificateDer<'static>],
) -> Arc<rustls::ServerConfig> {
    Arc::new(
        tls::server_config(
            CertResolver::fixed(cert),
            tls::root_store(roots).expect("roots"),
            TD,
        )
        .expect("server config"),
    )
}

fn client_tls(
    cert: Arc<WorkloadCertificate>,
    roots: &[CertificateDer<'static>],
    expected: Vec<Identity>,
) -> rustls::ClientConfig {
    tls::client_config(
        CertResolver::fixed(cert),
        tls::root_store(roots).expect("roots"),
        expected,
    )
    .expect("client config")
}

#[derive(Debug)]
struct NoClientCert;

impl ResolvesClientCert for NoClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// What each side reported for one attempted CONNECT.
struct Outcome {
    client: ClientError,
    server: Vec<String>,
}

async fn attempt(server: Arc<rustls::ServerConfig>, client: rustls::ClientConfig) -> Outcome {
    let echo = Echo::default();
    let running = start(server, ServerConfig::default(), echo.clone()).await;
    let client = Client::new(ClientConfig::default(), StaticTls(Arc::new(client)));
    let err = client
        .connect(ConnectRequest::new(
            client_id(),
            vec![server_id()],
            running.addr,
            "127.0.0.1:80".parse::<Authority>().expect("authority"),
        ))
        .await
        .expect_err("must be refused");
    assert!(echo.seen().is_empty(), "the handler is never called");
    assert_eq!(
        client.pooled_connections(),
        0,
        "a refused connection is not pooled"
    );
    // Give the server a moment to report its side.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = echo.conn_errors();
    running.stop().await;
    Outcome {
        client: err,
        server,
    }
}

fn client_tls_error(outcome: &Outcome) -> &HandshakeError {
    outcome
        .client
        .handshake()
        .unwrap_or_else(|| panic!("expected a tls error, got {:?}", outcome.client))
}

fn server_saw(outcome: &Outcome, what: &str) {
    assert_eq!(outcome.server.len(), 1, "{:?}", outcome.server);
    assert!(
        outcome.server[0].contains(what),
        "server reported {:?}, expected {what}",
        outcome.server
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_own_error() {
    init_tracing();
    let ca = LocalCa::generate(TD).expect("ca");
    let roots = [ca.root().clone()];
    let good_server = || server_tls(issue(&ca, &server_id()), &roots);
    let mut client_errors = Vec::new();
    let mut server_errors = Vec::new();

    // 1. Wrong SAN: the server is not who the client expects.
    let out = attempt(
        good_server(),
        client_tls(
            issue(&ca, &client_id()),
            &roots,
            vec![id("spiffe://cluster.local/ns/default/sa/expected")],
        ),
    )
    .await;
    match client_tls_error(&out) {
        HandshakeError::WrongIdentity { found, .. } => assert_eq!(found, &[server_id()]),
        other => panic!("wrong san: {other:?}"),
    }
    server_saw(&out, "PeerAlert(CertificateUnknown)");
    client_errors.push(format!("{:?}", client_tls_error(&out)));
    server_errors.push(out.server[0].clone());

    // 2. Wrong trust domain: a client from other.local (the server trusts
    //    that root, but admits only cluster.local).
    let foreign = LocalCa::generate("other.local").expect("foreign ca");
    let both = [ca.root().clone(), foreign.root().clone()];
    let stranger = id("spiffe://other.local/ns/default/sa/client");
    let out = attempt(
        server_tls(issue(&ca, &server_id()), &both),
        client_tls(issue(&foreign, &stranger), &both, vec![server_id()]),
    )
    .await;
    server_saw(&out, "WrongTrustDomain");
    assert!(
        matches!(
            client_tls_error(&out),
            HandshakeError::PeerAlert(AlertDescription::CertificateUnknown)
        ),
        "{:?}",
        out.client
    );
    client_errors.push(format!("{:?}", client_tls_error(&out)));
    server_errors.push(out.server[0].clone());

    // 3a. Expired client certificate: the server refuses.
    let out = attempt(
        good_server(),
        client_tls(expired(&ca, &client_id()), &roots, vec![server_id()]),
    )
    .await;
    server_saw(&out, "Expired");
    assert!(
        matches!(
            client_tls_error(&out),
            HandshakeError::PeerAlert(AlertDescription::CertificateExpired)
        ),
        "{:?}",
        out.client
    );
    client_errors.push(format!("{:?}", client_tls_error(&out)));
    server_errors.push(out.server[0].clone());

    // 3b. Expired server certificate: the client refuses.
    let out = attempt(
        server_tls(expired(&ca, &server_id()), &roots),
        client_tls(issue(&ca, &client_id()), &roots, vec![server_id()]),
    )
    .await;
    assert!(
        matches!(client_tls_error(&out), HandshakeError::Expired),
        "{:?}",
        out.client
    );
    server_saw(&out, "PeerAlert(CertificateExpired)");
    client_errors.push(format!("{:?}", client_tls_error(&out)));
    server_errors.push(out.server[0].clone());

    // 4. Missing client certificate.
    let mut no_cert = client_tls(issue(&ca, &client_id()), &roots, vec![server_id()]);
    no_cert.client_auth_cert_resolver = Arc::new(NoClientCert);
    let out = attempt(good_server(), no_cert).await;
    server_saw(&out, "MissingClientCert");
    assert!(
        matches!(
            client_tls_error(&out),
            HandshakeError::PeerAlert(AlertDescription::CertificateRequired)
        ),
        "{:?}",
        out.client
    );
    client_errors.push(format!("{:?}", client_tls_error(&out)));
    server_errors.push(out.server[0].clone());

    // 5a. Unknown root behind the server's certificate: the client refuses.
    let impostor = LocalCa::generate(TD).expect("impostor ca");
    let out = attempt(
        server_tls(issue(&impostor, &server_id()), &roots),
        client_tls(issue(&ca, &client_id()), &roots, vec![server_id()]),
    )
    .await;
    assert!(
        matches!(client_tls_error(&out), HandshakeError::UnknownRoot),
        "{:?}",
        out.client
    );
    server_saw(&out, "PeerAlert(UnknownCA)");
    client_errors.push(format!("{:?}", client_tls_error(&out)));
    server_errors.push(out.server[0].clone());

    // 5b. Unknown root behind the client's certificate: the server refuses.
    let out = attempt(
        good_server(),
        client_tls(issue(&impostor, &client_id()), &roots, vec![server_id()]),
    )
    .await;
    server_saw(&out, "UnknownRoot");
    assert!(
        matches!(
            client_tls_error(&out),
            HandshakeError::PeerAlert(AlertDescription::UnknownCA)
        ),
        "{:?}",
        out.client
    );
    client_errors.push(format!("{:?}", client_tls_error(&out)));
    server_errors.push(out.server[0].clone());

    // The refusing side's error differs in every case, and so does what
    // the refused side learns.
    for errors in [&client_errors, &server_errors] {
        for (i, a) in errors.iter().enumerate() {
            for b in &errors[i + 1..] {
                assert_ne!(a, b, "{errors:#?}");
            }
        }
    }
}
