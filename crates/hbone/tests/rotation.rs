//! Certificate rotation through ambit-identity's manager while a stream
//! is open: the stream keeps flowing past the old certificates' expiry,
//! and new connections present the new certificates on both sides.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ambit_hbone::{Authority, Client, ClientConfig, ConnectRequest, ServerConfig};
use ambit_identity::tls::placeholder_server_name;
use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_open_streams_and_new_connections_use_new_certs() {
    init_tracing();
    // 3 s certificates: the manager replaces them every 1.5 s.
    let pki = Pki::with_ttl(Duration::from_secs(3));
    let server = start(
        pki.server_tls().await,
        ServerConfig::default(),
        Echo::default(),
    )
    .await;
    let client = pki.client();
    let mut stream = client
        .connect(ConnectRequest::new(
            client_id(),
            vec![server_id()],
            server.addr,
            "127.0.0.1:80".parse::<Authority>().expect("authority"),
        ))
        .await
        .expect("connect");
    let first_server = pki.manager.current(&server_id()).expect("server cert");
    let first_client = pki.manager.current(&client_id()).expect("client cert");

    // Echo 64 KiB chunks until both original certificates have been
    // replaced and have expired.
    let started = Instant::now();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut back = vec![0u8; 64 * 1024];
    let mut rounds = 0u32;
    let expired_after = first_server.not_after().max(first_client.not_after());
    while SystemTime::now() < expired_after + Duration::from_millis(500) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "certificates never expired"
        );
        chunk.fill(rounds as u8);
        stream
            .write_all(&chunk)
            .await
            .expect("write during rotation");
        stream
            .read_exact(&mut back)
            .await
            .expect("read during rotation");
        assert_eq!(back, chunk);
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_server = pki.manager.current(&server_id()).expect("server cert");
    let new_client = pki.manager.current(&client_id()).expect("client cert");
    assert_ne!(
        new_server.leaf(),
        first_server.leaf(),
        "server cert rotated"
    );
    assert_ne!(
        new_client.leaf(),
        first_client.leaf(),
        "client cert rotated"
    );
    assert!(first_server.is_expired_at(SystemTime::now()));
    assert!(first_client.is_expired_at(SystemTime::now()));
    assert!(rounds > 10);
    // The stream opened under the old certificates is intact.
    stream.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("read to end");
    assert!(rest.is_empty());

    // A new connection from the pool works...
    let fresh = Client::new(ClientConfig::default(), pki.manager.clone());
    let s = fresh
        .connect(ConnectRequest::new(
            client_id(),
            vec![server_id()],
            server.addr,
            "127.0.0.1:80".parse::<Authority>().expect("authority"),
        ))
        .await
        .expect("connect after rotation");
    assert_eq!(echo_round_trip(s, b"after").await, b"after");

    // ...the server presents its current certificate...
    let tls = pki
        .manager
        .client_config(&client_id(), vec![server_id()])
        .await
        .expect("client config");
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let conn = TlsConnector::from(Arc::new(tls))
        .connect(placeholder_server_name(), tcp)
        .await
        .expect("tls");
    let presented = conn.get_ref().1.peer_certificates().expect("certs")[0].clone();
    let current = pki.manager.current(&server_id()).expect("server cert");
    assert_eq!(&presented, current.leaf());
    assert_ne!(&presented, first_server.leaf());
    drop(conn);

    // ...and the client presents its current one.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(pki.server_tls().await);
    let seen = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("tls accept");
        tls.get_ref().1.peer_certificates().expect("certs")[0].clone()
    });
    let probe = Client::new(ClientConfig::default(), pki.manager.clone());
    // The probe server speaks no HTTP/2: the CONNECT itself fails.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        probe.connect(ConnectRequest::new(
            client_id(),
            vec![server_id()],
            addr,
            "127.0.0.1:80".parse::<Authority>().expect("authority"),
        )),
    )
    .await;
    let client_presented = seen.await.expect("probe");
    let current = pki.manager.current(&client_id()).expect("client cert");
    assert_eq!(&client_presented, current.leaf());
    assert_ne!(&client_presented, first_client.leaf());
    server.stop().await;
}
