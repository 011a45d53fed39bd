//! CertManager behaviour against an instrumented CA: coalescing, refresh at
//! half life, backoff that keeps the old certificate, and rotation under
//! open TLS connections.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ambit_identity::{
    CaError, CertManager, CertificateAuthority, Identity, LocalCa, ManagerConfig, ManagerError,
    WorkloadCertificate, ca::BoxFuture, peer_identity, tls::placeholder_server_name,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A LocalCa with a delay, a call log and a script of failures.
struct TestCa {
    ca: LocalCa,
    delay: Duration,
    calls: AtomicUsize,
    call_times: Mutex<Vec<Instant>>,
    /// For each call index, whether it fails (calls past the end succeed).
    failures: Mutex<Vec<bool>>,
}

impl TestCa {
    fn new(delay: Duration, failures: Vec<bool>) -> Arc<Self> {
        Arc::new(Self {
            ca: LocalCa::generate("cluster.local").expect("ca"),
            delay,
            calls: AtomicUsize::new(0),
            call_times: Mutex::new(Vec::new()),
            failures: Mutex::new(failures),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl CertificateAuthority for TestCa {
    fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<WorkloadCertificate, CaError>> {
        let identity = identity.clone();
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            self.call_times.lock().expect("lock").push(Instant::now());
            tokio::time::sleep(self.delay).await;
            if self.failures.lock().expect("lock").get(n).copied() == Some(true) {
                return Err(CaError::Other(format!("injected failure #{n}")));
            }
            Ok(self.ca.issue_now(&identity, ttl)?)
        })
    }
}

fn id(s: &str) -> Identity {
    s.parse().expect("valid id")
}

fn config(ttl: Duration, initial_backoff: Duration) -> ManagerConfig {
    let mut config = ManagerConfig::default();
    config.ttl = ttl;
    config.initial_backoff = initial_backoff;
    config.max_backoff = initial_backoff * 4;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_share_one_ca_call() {
    let ca = TestCa::new(Duration::from_millis(200), vec![]);
    let manager = CertManager::new(ca.clone(), ManagerConfig::default());
    let me = id("spiffe://cluster.local/ns/a/sa/web");
    let fetches: Vec<_> = (0..64)
        .map(|_| {
            let (manager, me) = (manager.clone(), me.clone());
            tokio::spawn(async move { manager.fetch(&me).await })
        })
        .collect();
    let mut certs = Vec::new();
    for f in fetches {
        certs.push(f.await.expect("join").expect("cert"));
    }
    assert_eq!(ca.calls(), 1, "one CA call for 64 concurrent fetches");
    assert!(certs.iter().all(|c| Arc::ptr_eq(c, &certs[0])));
    assert_eq!(certs[0].identity(), &me);

    // A second identity gets its own certificate.
    let other = id("spiffe://cluster.local/ns/a/sa/db");
    let cert = manager.fetch(&other).await.expect("cert");
    assert_eq!(cert.identity(), &other);
    assert_eq!(ca.calls(), 2);
    let mut ids = manager.identities();
    ids.sort();
    assert_eq!(ids, vec![other.clone(), me.clone()]);
    assert!(manager.forget(&other));
    assert!(manager.current(&other).is_none());
}

#[tokio::test]
async fn refreshes_at_half_life() {
    let ca = TestCa::new(Duration::ZERO, vec![]);
    let manager = CertManager::new(
        ca.clone(),
        config(Duration::from_secs(8), Duration::from_millis(100)),
    );
    let me = id("spiffe://cluster.local/ns/a/sa/web");
    let first = manager.fetch(&me).await.expect("cert");
    let half = first
        .refresh_at()
        .duration_since(first.not_before())
        .expect("ordered");
    assert_eq!(half, Duration::from_secs(4));

    // Times are truncated to seconds: the first refresh is due 3-4 s after
    // the fetch, and the second one 6 s after it at the earliest.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(Arc::ptr_eq(&manager.current(&me).expect("current"), &first));
    assert_eq!(ca.calls(), 1, "no refresh before half life");

    // At 4.5 s: the first refresh is done and the second not due yet (with
    // a 4 s lifetime both could fall within one such window).
    tokio::time::sleep(Duration::from_millis(3700)).await;
    let second = manager.current(&me).expect("current");
    assert!(!Arc::ptr_eq(&second, &first), "refreshed after half life");
    assert_ne!(second.leaf(), first.leaf());
    assert_eq!(ca.calls(), 2);
    assert!(Arc::ptr_eq(
        &manager.fetch(&me).await.expect("cert"),
        &second
    ));
}

#[tokio::test]
async fn failed_refresh_keeps_the_old_certificate_and_backs_off() {
    // Call 0 succeeds; calls 1..=3 fail; call 4 succeeds.
    let ca = TestCa::new(Duration::ZERO, vec![false, true, true, true]);
    let manager = CertManager::new(
        ca.clone(),
        config(Duration::from_secs(6), Duration::from_millis(200)),
    );
    let me = id("spiffe://cluster.local/ns/a/sa/web");
    let first = manager.fetch(&me).await.expect("cert");

    // Refresh is due after 2-3 s (one-second certificate times); failures
    // then retry after 0.2, 0.4 and 0.8 s, all before the old one expires.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ca.calls() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ca.calls(), 3, "refresh attempted and failed twice");
    let during = manager.fetch(&me).await.expect("old cert still served");
    assert!(Arc::ptr_eq(&during, &first), "old cert kept while failing");

    let deadline = Instant::now() + Duration::from_secs(5);
    while ca.calls() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ca.calls(), 5);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let renewed = manager.fetch(&me).await.expect("renewed");
    assert!(!Arc::ptr_eq(&renewed, &first));

    let times = ca.call_times.lock().expect("lock").clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // gaps[0] is the wait to half life; then the backoff doubles.
    for (gap, want) in gaps[1..].iter().zip([200, 400, 800]) {
        let want = Duration::from_millis(want);
        assert!(
            *gap >= want && *gap < want + Duration::from_millis(300),
            "backoff gaps {gaps:?}"
        );
    }
}

#[tokio::test]
async fn initial_failure_is_reported_then_retried() {
    let ca = TestCa::new(Duration::ZERO, vec![true]);
    let manager = CertManager::new(
        ca.clone(),
        config(Duration::from_secs(3600), Duration::from_millis(100)),
    );
    let me = id("spiffe://cluster.local/ns/a/sa/web");
    let err = manager.fetch(&me).await.expect_err("first call fails");
    assert!(matches!(err, ManagerError::Ca { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "failed to obtain a certificate for spiffe://cluster.local/ns/a/sa/web"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let cert = manager.fetch(&me).await.expect("retry succeeded");
    assert_eq!(cert.identity(), &me);
    assert_eq!(ca.calls(), 2);
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_reaches_new_ones() {
    let ca = TestCa::new(Duration::ZERO, vec![]);
    let manager = CertManager::new(
        ca.clone(),
        config(Duration::from_secs(2), Duration::from_millis(100)),
    );
    let server_id = id("spiffe://cluster.local/ns/a/sa/server");
    let client_id = id("spiffe://cluster.local/ns/a/sa/client");
    let acceptor = TlsAcceptor::from(Arc::new(
        manager
            .server_config(&server_id)
            .await
            .expect("server config"),
    ));
    let connector = TlsConnector::from(Arc::new(
        manager
            .client_config(&client_id, vec![server_id.clone()])
            .await
            .expect("client config"),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // An echo server that reports each connection's client leaf.
    let (leaf_tx, mut leaf_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, leaf_tx) = (acceptor.clone(), leaf_tx.clone());
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.expect("accept");
                let conn = tls.get_ref().1;
                let leaf = conn.peer_certificates().expect("client certs")[0].clone();
                leaf_tx
                    .send((peer_identity(conn).expect("peer id"), leaf))
                    .expect("report");
                let mut buf = [0u8; 1024];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => tls.write_all(&buf[..n]).await.expect("echo"),
                    }
                }
            });
        }
    });

    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        connector
            .connect(placeholder_server_name(), tcp)
            .await
            .expect("tls connect")
    };
    let mut old = connect().await;
    let old_server_leaf = old.get_ref().1.peer_certificates().expect("certs")[0].clone();
    echo(&mut old, b"before rotation").await;
    let (who, old_client_leaf) = leaf_rx.recv().await.expect("first connection");
    assert_eq!(who, client_id);

    // Wait for both certificates to rotate (half life of 2 s ≈ 1 s).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(ca.calls() >= 4, "both identities refreshed: {}", ca.calls());

    // The open connection still works; a new one uses the new certificates.
    echo(&mut old, b"after rotation").await;
    let mut new = connect().await;
    echo(&mut new, b"new connection").await;
    let new_server_leaf = new.get_ref().1.peer_certificates().expect("certs")[0].clone();
    let (_, new_client_leaf) = leaf_rx.recv().await.expect("second connection");
    assert_ne!(
        new_server_leaf, old_server_leaf,
        "server presented its new cert"
    );
    assert_ne!(
        new_client_leaf, old_client_leaf,
        "client presented its new cert"
    );
    assert_eq!(
        &new_server_leaf,
        manager.current(&server_id).expect("current").leaf()
    );
}

async fn echo<S>(tls: &mut S, msg: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tls.write_all(msg).await.expect("write");
    let mut buf = vec![0u8; msg.len()];
    tls.read_exact(&mut buf).await.expect("read");
    assert_eq!(buf, msg);
}

/// A CA whose signing root can be replaced (a root rotation).
struct SwappableCa(Mutex<Arc<LocalCa>>);

impl CertificateAuthority for SwappableCa {
    fn issue(
        &self,
        identity: &Identity,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<WorkloadCertificate, CaError>> {
        let ca = self.0.lock().expect("lock").clone();
        let identity = identity.clone();
        Box::pin(async move { Ok(ca.issue_now(&identity, ttl)?) })
    }
}

/// A server config built before a root rotation accepts clients whose
/// certificates chain to the new root once the server's own certificate
/// has rotated: the trust roots are read at each handshake, not when the
/// config was built (ztunnel builds each HBONE server once).
#[tokio::test]
async fn root_rotation_reaches_a_server_built_before_it() {
    let ca = Arc::new(SwappableCa(Mutex::new(Arc::new(
        LocalCa::generate("cluster.local").expect("ca"),
    ))));
    let manager = CertManager::new(
        ca.clone(),
        config(Duration::from_secs(2), Duration::from_millis(100)),
    );
    let server_id = id("spiffe://cluster.local/ns/a/sa/server");
    let client_id = id("spiffe://cluster.local/ns/a/sa/client");
    let acceptor = TlsAcceptor::from(Arc::new(
        manager
            .server_config(&server_id)
            .await
            .expect("server config"),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let connect = |config: rustls::ClientConfig| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(placeholder_server_name(), tcp)
            .await?;
        // TLS 1.3: a refused client certificate shows on the first read.
        tls.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        Ok::<_, std::io::Error>(())
    };
    let before = manager
        .client_config(&client_id, vec![server_id.clone()])
        .await
        .expect("client config");
    connect(before).await.expect("before the rotation");

    // The root changes; both identities refresh at half life (≈ 1 s).
    *ca.0.lock().expect("lock") = Arc::new(LocalCa::generate("cluster.local").expect("new ca"));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = manager
        .client_config(&client_id, vec![server_id.clone()])
        .await
        .expect("client config");
    connect(after)
        .await
        .expect("a client of the new root reaches the server built before the rotation");
}
