//! The listener boilerplate every app server shares: a listener bound in
//! a pod, handed to tokio, a task per accepted connection; and the echo
//! loop behind the TCP apps and the benchmark's echo server.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use ambit_netns::NsTask;
use ambit_netns::harness::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A std listener as a tokio one (made non-blocking first, as tokio
/// requires). Call inside a runtime.
pub fn tokio_listener(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    let _ = l.set_nonblocking(true);
    TcpListener::from_std(l)
}

/// Accepts connections on `l` until it fails, running `handle` on a task
/// of its own for each, with the peer's address.
pub async fn accept_each<F, Fut>(l: TcpListener, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    while let Ok((s, peer)) = l.accept().await {
        tokio::spawn(handle(s, peer));
    }
}

/// Binds `port` on `pod`'s address (both of them in a dual-stack cluster)
/// inside its namespace and serves it on a thread there: [`accept_each`]
/// with `handle`. The server lives until the returned task is dropped
/// with the pod.
pub fn serve_in_pod<F, Fut>(pod: &Pod, port: u16, handle: F) -> anyhow::Result<NsTask<()>>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let v4 = pod
        .ns()
        .tcp_listener(SocketAddr::new(IpAddr::V4(pod.ip()), port))?;
    let v6 = match pod.ip6() {
        Some(ip) => Some(
            pod.ns()
                .tcp_listener(SocketAddr::new(IpAddr::V6(ip), port))?,
        ),
        None => None,
    };
    let handle = std::sync::Arc::new(handle);
    Ok(pod.spawn_async(move || async move {
        let serve = |l: std::net::TcpListener| {
            let h = handle.clone();
            async move {
                if let Ok(l) = tokio_listener(l) {
                    accept_each(l, move |s, p| h(s, p)).await;
                }
            }
        };
        match v6 {
            Some(v6) => {
                tokio::join!(serve(v4), serve(v6));
            }
            None => serve(v4).await,
        }
    })?)
}

/// Writes back what `s` reads, through a buffer of `buf_len` bytes, until
/// EOF or an error.
pub async fn echo(s: &mut TcpStream, buf_len: usize) {
    let mut buf = vec![0u8; buf_len];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if s.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}
