//! 1 GiB through one HBONE stream and back out of a TCP upstream, with a
//! SHA-256 on each side. Its own test binary: it is the slow one.

mod common;

use std::time::Instant;

use ambit_hbone::{Authority, ConnectRequest, ServerConfig};
use aws_lc_rs::digest::{Context, SHA256};
use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const TOTAL: usize = 1 << 30;
const CHUNK: usize = 256 * 1024;

/// Deterministic, non-repeating-per-chunk data (a counter per 8 bytes).
fn fill(chunk: &mut [u8], offset: usize) {
    for (i, word) in chunk.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&((offset / 8 + i) as u64).to_le_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gibibyte_through_one_stream_with_a_checksum() {
    init_tracing();
    let pki = Pki::new();
    let up = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_addr = up.local_addr().expect("addr");
    let server = start(
        pki.server_tls().await,
        ServerConfig::default(),
        ToUpstream { upstream: up_addr },
    )
    .await;
    let client = pki.client();
    let stream = client
        .connect(ConnectRequest::new(
            client_id(),
            vec![server_id()],
            server.addr,
            Authority::Addr(up_addr),
        ))
        .await
        .expect("connect");
    let (mut tcp, _) = up.accept().await.expect("upstream accept");

    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut digest = Context::new(&SHA256);
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0usize;
        loop {
            let n = tcp.read(&mut buf).await.expect("upstream read");
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            total += n;
        }
        (total, digest.finish())
    });
    let (_, mut w) = tokio::io::split(stream);
    let mut digest = Context::new(&SHA256);
    let mut chunk = vec![0u8; CHUNK];
    let mut offset = 0;
    while offset < TOTAL {
        fill(&mut chunk, offset);
        digest.update(&chunk);
        w.write_all(&chunk).await.expect("write");
        offset += CHUNK;
    }
    w.shutdown().await.expect("shutdown");
    let sent = digest.finish();
    let (received, got) = receiver.await.expect("receiver");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "1 GiB in {secs:.2} s: {:.0} MiB/s",
        TOTAL as f64 / secs / (1 << 20) as f64
    );
    assert_eq!(received, TOTAL);
    assert_eq!(got.as_ref(), sent.as_ref(), "sha-256 differs");
    server.stop().await;
}
