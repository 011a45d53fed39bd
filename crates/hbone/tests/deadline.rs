//! One deadline per CONNECT: callers queued behind a connection setup that
//! hangs (a peer that accepts TCP and never answers TLS) each give up after
//! `connect_timeout`, not after N × it.

mod common;

use std::{sync::Arc, time::Duration};

use ambit_hbone::{Client, ClientConfig, ClientError, ConnectRequest, StaticTls};
use ambit_identity::{CertResolver, LocalCa, tls};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_callers_share_one_deadline() {
    // Accepts and holds every connection, never speaking.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = black_hole.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = black_hole.accept().await {
            held.push(s);
        }
    });
    let ca = LocalCa::generate(TD).expect("ca");
    let cert = Arc::new(
        ca.issue_now(&client_id(), Duration::from_secs(3600))
            .expect("issue"),
    );
    let roots = cert.roots().to_vec();
    let config = tls::client_config(
        CertResolver::fixed(cert),
        tls::root_store(&roots).expect("roots"),
        vec![server_id()],
    )
    .expect("client config");
    let timeout = Duration::from_millis(400);
    let mut cfg = ClientConfig::default();
    cfg.connect_timeout = timeout;
    let client = Client::new(cfg, StaticTls(Arc::new(config)));

    let started = tokio::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let client = client.clone();
        calls.spawn(async move {
            let req = ConnectRequest::new(client_id(), vec![server_id()], addr, addr);
            let r = client.connect(req).await;
            (r.map(|_| ()), started.elapsed())
        });
    }
    while let Some(done) = calls.join_next().await {
        let (r, after) = done.expect("task");
        assert!(
            matches!(r, Err(ClientError::ConnectTimeout { .. })),
            "{r:?}"
        );
        // Old behaviour: the k-th caller waited k × 400 ms (2.4 s for the last).
        assert!(after < timeout * 2, "gave up after {after:?}");
    }
    held.abort();
}
