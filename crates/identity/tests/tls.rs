//! Real TLS 1.3 handshakes over in-memory streams: the happy path, and each
//! way a peer is refused, with the error each side reports.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use ambit_identity::{
    CertResolver, HandshakeError, Identity, LocalCa, WorkloadCertificate, peer_identity,
    tls::{self, placeholder_server_name},
};
use rustls::{
    AlertDescription, ClientConfig, ProtocolVersion, ServerConfig, client::ResolvesClientCert,
    pki_types::CertificateDer, sign::CertifiedKey,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TD: &str = "cluster.local";

fn id(s: &str) -> Identity {
    s.parse().expect("valid id")
}

fn server_id() -> Identity {
    id("spiffe://cluster.local/ns/default/sa/server")
}

fn client_id() -> Identity {
    id("spiffe://cluster.local/ns/default/sa/client")
}

fn issue(ca: &LocalCa, identity: &Identity) -> Arc<WorkloadCertificate> {
    Arc::new(
        ca.issue_now(identity, Duration::from_secs(3600))
            .expect("issue"),
    )
}

fn server_cfg(cert: Arc<WorkloadCertificate>, roots: &[CertificateDer<'static>]) -> ServerConfig {
    tls::server_config(
        CertResolver::fixed(cert),
        tls::root_store(roots).expect("roots"),
        TD,
    )
    .expect("server config")
}

fn client_cfg(
    cert: Arc<WorkloadCertificate>,
    roots: &[CertificateDer<'static>],
    expected: Vec<Identity>,
) -> ClientConfig {
    tls::client_config(
        CertResolver::fixed(cert),
        tls::root_store(roots).expect("roots"),
        expected,
    )
    .expect("client config")
}

struct Outcome {
    server: Result<Identity, HandshakeError>,
    client: Result<Identity, HandshakeError>,
}

/// Runs one handshake over an in-memory duplex and exchanges a few bytes;
/// returns what each side saw (the peer's identity, or its error).
async fn handshake(server: ServerConfig, client: ClientConfig) -> Outcome {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let server_side = async move {
        let mut tls = acceptor.accept(a).await.map_err(HandshakeError::from_io)?;
        let peer = peer_identity(tls.get_ref().1).expect("server sees a peer identity");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(ProtocolVersion::TLSv1_3)
        );
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(HandshakeError::from_io)?;
        tls.write_all(&buf).await.map_err(HandshakeError::from_io)?;
        tls.shutdown().await.map_err(HandshakeError::from_io)?;
        Ok(peer)
    };
    let client_side = async move {
        let mut tls = connector
            .connect(placeholder_server_name(), b)
            .await
            .map_err(HandshakeError::from_io)?;
        // In TLS 1.3 the client finishes before the server has checked its
        // certificate: a refusal shows up on the first read.
        tls.write_all(b"ping")
            .await
            .map_err(HandshakeError::from_io)?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(HandshakeError::from_io)?;
        assert_eq!(&buf, b"ping");
        Ok(peer_identity(tls.get_ref().1).expect("client sees a peer identity"))
    };
    let (server, client) = tokio::join!(server_side, client_side);
    Outcome { server, client }
}

#[tokio::test]
async fn mutual_tls_succeeds_and_reports_peer_identities() {
    let ca = LocalCa::generate(TD).expect("ca");
    let roots = [ca.root().clone()];
    let out = handshake(
        server_cfg(issue(&ca, &server_id()), &roots),
        client_cfg(
            issue(&ca, &client_id()),
            &roots,
            vec![
                id("spiffe://cluster.local/ns/default/sa/other"),
                server_id(),
            ],
        ),
    )
    .await;
    assert_eq!(out.server.expect("server ok"), client_id());
    assert_eq!(out.client.expect("client ok"), server_id());
}

#[tokio::test]
async fn wrong_san_is_refused_by_the_client() {
    let ca = LocalCa::generate(TD).expect("ca");
    let roots = [ca.root().clone()];
    let out = handshake(
        server_cfg(issue(&ca, &server_id()), &roots),
        client_cfg(
            issue(&ca, &client_id()),
            &roots,
            vec![id("spiffe://cluster.local/ns/default/sa/expected")],
        ),
    )
    .await;
    let err = out.client.expect_err("client must refuse");
    match &err {
        HandshakeError::WrongIdentity { expected, found } => {
            assert_eq!(found, &[server_id()]);
            assert_eq!(
                expected,
                &[id("spiffe://cluster.local/ns/default/sa/expected")]
            );
        }
        other => panic!("expected WrongIdentity, got {other:?}"),
    }
    assert!(
        err.to_string().starts_with("peer has the wrong identity"),
        "{err}"
    );
    let seen = out.server.expect_err("server sees the alert");
    assert!(
        matches!(
            seen,
            HandshakeError::PeerAlert(AlertDescription::CertificateUnknown)
        ),
        "{seen:?}"
    );
}

#[tokio::test]
async fn wrong_trust_domain_is_refused_by_the_server() {
    // The server trusts both roots (a multi-root bundle), but admits only
    // its own trust domain.
    let ca = LocalCa::generate(TD).expect("ca");
    let foreign = LocalCa::generate("other.local").expect("foreign ca");
    let roots = [ca.root().clone(), foreign.root().clone()];
    let stranger = id("spiffe://other.local/ns/default/sa/client");
    let out = handshake(
        server_cfg(issue(&ca, &server_id()), &roots),
        client_cfg(issue(&foreign, &stranger), &roots, vec![server_id()]),
    )
    .await;
    let err = out.server.expect_err("server must refuse");
    match &err {
        HandshakeError::WrongTrustDomain { identity, expected } => {
            assert_eq!(identity, &stranger);
            assert_eq!(expected, TD);
        }
        other => panic!("expected WrongTrustDomain, got {other:?}"),
    }
    assert!(
        err.to_string().contains("outside the trust domain"),
        "{err}"
    );
    let seen = out.client.expect_err("client sees the alert");
    assert!(
        matches!(
            seen,
            HandshakeError::PeerAlert(AlertDescription::CertificateUnknown)
        ),
        "{seen:?}"
    );
}

#[tokio::test]
async fn expired_certificates_are_refused_on_both_sides() {
    let ca = LocalCa::generate(TD).expect("ca");
    let roots = [ca.root().clone()];
    let now = SystemTime::now();
    let expired = |identity: &Identity| {
        Arc::new(
            ca.issue_with_validity(
                identity,
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            )
            .expect("issue expired"),
        )
    };

    // An expired client certificate: the server refuses.
    let out = handshake(
        server_cfg(issue(&ca, &server_id()), &roots),
        client_cfg(expired(&client_id()), &roots, vec![server_id()]),
    )
    .await;
    let err = out.server.expect_err("server must refuse");
    assert!(matches!(err, HandshakeError::Expired), "{err:?}");
    assert_eq!(err.to_string(), "peer certificate has expired");

    // An expired server certificate: the client refuses.
    let out = handshake(
        server_cfg(expired(&server_id()), &roots),
        client_cfg(issue(&ca, &client_id()), &roots, vec![server_id()]),
    )
    .await;
    assert!(
        matches!(out.client, Err(HandshakeError::Expired)),
        "{:?}",
        out.client.err()
    );
}

/// A client-certificate resolver with nothing to offer.
#[derive(Debug)]
struct NoClientCert;

impl ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn missing_client_certificate_is_refused() {
    let ca = LocalCa::generate(TD).expect("ca");
    let roots = [ca.root().clone()];
    let mut client = client_cfg(issue(&ca, &client_id()), &roots, vec![server_id()]);
    client.client_auth_cert_resolver = Arc::new(NoClientCert);
    let out = handshake(server_cfg(issue(&ca, &server_id()), &roots), client).await;
    let err = out.server.expect_err("server must refuse");
    assert!(matches!(err, HandshakeError::MissingClientCert), "{err:?}");
    assert_eq!(err.to_string(), "peer presented no client certificate");
    assert!(matches!(
        out.client.expect_err("client sees the alert"),
        HandshakeError::PeerAlert(AlertDescription::CertificateRequired)
    ));
}

#[tokio::test]
async fn unknown_roots_are_refused_on_both_sides() {
    let ca = LocalCa::generate(TD).expect("ca");
    let impostor = LocalCa::generate(TD).expect("impostor ca, same trust domain");
    let roots = [ca.root().clone()];

    // The server's certificate comes from a CA the client does not trust.
    let out = handshake(
        server_cfg(issue(&impostor, &server_id()), &roots),
        client_cfg(issue(&ca, &client_id()), &roots, vec![server_id()]),
    )
    .await;
    let err = out.client.expect_err("client must refuse");
    assert!(matches!(err, HandshakeError::UnknownRoot), "{err:?}");
    assert_eq!(
        err.to_string(),
        "peer certificate is not signed by a trusted root"
    );

    // The client's certificate comes from a CA the server does not trust.
    let out = handshake(
        server_cfg(issue(&ca, &server_id()), &roots),
        client_cfg(issue(&impostor, &client_id()), &roots, vec![server_id()]),
    )
    .await;
    assert!(
        matches!(out.server, Err(HandshakeError::UnknownRoot)),
        "{:?}",
        out.server.err()
    );
}

#[tokio::test]
async fn rejection_messages_are_distinct() {
    let messages = [
        HandshakeError::WrongIdentity {
            expected: vec![server_id()],
            found: vec![client_id()],
        }
        .to_string(),
        HandshakeError::WrongTrustDomain {
            identity: client_id(),
            expected: "x".into(),
        }
        .to_string(),
        HandshakeError::Expired.to_string(),
        HandshakeError::MissingClientCert.to_string(),
        HandshakeError::UnknownRoot.to_string(),
    ];
    for (i, a) in messages.iter().enumerate() {
        for b in &messages[i + 1..] {
            assert_ne!(a, b);
        }
    }
}
