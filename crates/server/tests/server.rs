//! The accept loop and the admin server, on real loopback sockets.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ambit_server::admin::{self, AdminConfig};
use ambit_server::{Drain, Limits, Listener, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

async fn loopback() -> (TcpListener, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

/// Reads until EOF or error; true if the peer closed within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn drain_signals_connections_then_aborts_at_the_deadline() {
    let (l, addr) = loopback().await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let signaled = Arc::new(AtomicUsize::new(0));
    let seen = signaled.clone();
    let limits = Limits {
        drain_deadline: Duration::from_millis(300),
        max_connections: usize::MAX,
    };
    let server = tokio::spawn(run(
        l,
        async move {
            let _ = stop_rx.await;
        },
        limits,
        move |mut s: TcpStream, _, drain: Drain| {
            let seen = seen.clone();
            async move {
                // A connection that ignores the drain: it must be aborted.
                drain.signaled().await;
                seen.fetch_add(1, Ordering::SeqCst);
                let mut b = [0u8; 1];
                let _ = s.read(&mut b).await;
            }
        },
    ));
    let mut c = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    stop_tx.send(()).expect("stop");
    server.await.expect("server task");
    let took = started.elapsed();
    assert_eq!(
        signaled.load(Ordering::SeqCst),
        1,
        "the connection saw the drain"
    );
    assert!(
        took >= Duration::from_millis(250),
        "waited for the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "aborted at the deadline: {took:?}"
    );
    assert!(
        closed_within(&mut c, Duration::from_secs(2)).await,
        "aborted connection closed"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let (l, addr) = loopback().await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let limits = Limits {
        drain_deadline: Duration::from_millis(100),
        max_connections: 2,
    };
    let server = tokio::spawn(run(
        l,
        async move {
            let _ = stop_rx.await;
        },
        limits,
        |mut s: TcpStream, _, _| async move {
            // Echo one byte, then hold the connection open.
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).await.is_ok() {
                let _ = s.write_all(&b).await;
                let _ = s.read(&mut b).await;
            }
        },
    ));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.expect("served under the cap");
        held.push(c);
    }
    let mut third = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_within(&mut third, Duration::from_secs(2)).await,
        "the third connection is closed"
    );
    // Once one is gone, there is room again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = TcpStream::connect(addr).await.expect("connect");
    again.write_all(b"y").await.expect("write");
    let mut b = [0u8; 1];
    again
        .read_exact(&mut b)
        .await
        .expect("served after a slot freed");
    assert_eq!(&b, b"y");
    stop_tx.send(()).expect("stop");
    server.await.expect("server task");
}

/// A listener whose every accept fails, as with EMFILE.
struct Failing(Arc<AtomicUsize>);

impl Listener for Failing {
    type Stream = TcpStream;
    type Addr = ();
    async fn accept(&self) -> io::Result<(TcpStream, ())> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(io::Error::from_raw_os_error(24))
    }
}

#[tokio::test]
async fn failed_accepts_back_off() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = run(
        Failing(calls.clone()),
        tokio::time::sleep(Duration::from_millis(300)),
        Limits::default(),
        |_s: TcpStream, (), _| async {},
    );
    server.await;
    // 5, 10, 20, 40, 80, 160 ms pauses: at most 7 attempts in 300 ms
    // (a loop without backoff makes thousands).
    let n = calls.load(Ordering::SeqCst);
    assert!((2..=8).contains(&n), "accept attempts in 300 ms: {n}");
}

#[tokio::test]
async fn unix_listeners_are_served_too() {
    let dir = std::env::temp_dir().join(format!("ambit-server-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("s.sock");
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path).expect("bind unix");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(run(
        l,
        async move {
            let _ = stop_rx.await;
        },
        Limits::default(),
        |mut s: tokio::net::UnixStream, _, _| async move {
            let _ = s.write_all(b"hi").await;
        },
    ));
    let mut c = tokio::net::UnixStream::connect(&path)
        .await
        .expect("connect");
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"hi");
    stop_tx.send(()).expect("stop");
    server.await.expect("server task");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    c.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn admin_answers_readiness_and_metrics() {
    let (l, addr) = loopback().await;
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(admin::serve(
        l,
        admin::readiness(ready.clone()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    assert!(
        get(addr, "/healthz/ready")
            .await
            .starts_with("HTTP/1.1 503")
    );
    ready.store(true, Ordering::Release);
    assert!(
        get(addr, "/healthz/ready")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    let _ = stop_tx.send(());

    let (l, addr) = loopback().await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(admin::serve(
        l,
        admin::prometheus(|| "# EOF\n".to_owned()),
        async move {
            let _ = stop_rx.await;
        },
    ));
    for path in ["/metrics", "/stats/prometheus"] {
        let r = get(addr, path).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
        assert!(r.contains("application/openmetrics-text"), "{r}");
        assert!(r.ends_with("# EOF\n"), "{r}");
    }
    let _ = stop_tx.send(());
}

#[tokio::test]
async fn admin_closes_clients_that_never_finish_their_headers() {
    let (l, addr) = loopback().await;
    let config = AdminConfig {
        header_timeout: Duration::from_millis(200),
        max_connections: 2,
        ..AdminConfig::default()
    };
    let ready = Arc::new(AtomicBool::new(true));
    tokio::spawn(admin::serve_with(
        l,
        admin::readiness(ready),
        config,
        std::future::pending(),
    ));
    // Slowloris: a request line and no end of headers.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)).await,
        "header timeout closes the connection"
    );
    // Two idle connections fill the cap; a third is closed; the server
    // still answers once they time out.
    let idle: Vec<TcpStream> = vec![
        TcpStream::connect(addr).await.expect("connect"),
        TcpStream::connect(addr).await.expect("connect"),
    ];
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut third = TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_within(&mut third, Duration::from_secs(1)).await,
        "over the cap"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        get(addr, "/healthz/ready")
            .await
            .starts_with("HTTP/1.1 200")
    );
    drop(idle);
}
