//! Requests a conforming HBONE client never sends, written as raw HTTP/2
//! frames over the mTLS connection (the h2 client cannot even express
//! some of them): each gets 400 — or, when h2 itself finds the request
//! malformed, RST_STREAM(PROTOCOL_ERROR) — and the handler is never
//! called.

mod common;

use std::{sync::Arc, time::Duration};

use ambit_hbone::ServerConfig;
use ambit_identity::tls::placeholder_server_name;
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// "Literal header field without indexing — indexed name" (§6.2.2).
fn literal(out: &mut Vec<u8>, name_index: usize, value: &[u8]) {
    hpack_int(out, 0x00, 4, name_index);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

// Static table indices (RFC 7541 Appendix A).
const AUTHORITY: usize = 1;
const METHOD: usize = 2;

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Status(u16),
    Reset(u32),
}

/// Sends one request's header block on stream 1 and reads until its
/// answer.
async fn send_raw(addr: std::net::SocketAddr, pki: &Pki, block: Vec<u8>) -> Answer {
    let tls = pki
        .manager
        .client_config(&client_id(), vec![server_id()])
        .await
        .expect("client config");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut io = TlsConnector::from(Arc::new(tls))
        .connect(placeholder_server_name(), tcp)
        .await
        .expect("tls");
    io.write_all(PREFACE).await.expect("preface");
    io.write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    io.write_all(&frame(HEADERS, END_HEADERS, 1, &block))
        .await
        .expect("headers");
    tokio::time::timeout(Duration::from_secs(5), read_answer(&mut io))
        .await
        .expect("answer in time")
}

async fn read_answer<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) -> Answer {
    loop {
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await.expect("frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await.expect("frame payload");
        match (kind, stream) {
            (SETTINGS, 0) if flags & ACK == 0 => {
                io.write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .expect("ack");
            }
            (GOAWAY, _) => panic!("connection closed with GOAWAY: {payload:?}"),
            (RST_STREAM, 1) => {
                return Answer::Reset(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
            }
            (HEADERS, 1) => return Answer::Status(decode_status(&payload)),
            (DATA, 1) => panic!("data before headers"),
            _ => {}
        }
    }
}

/// The `:status` of a response header block: h2 sends the static-table
/// statuses fully indexed, others as a literal with name index 8.
fn decode_status(block: &[u8]) -> u16 {
    let statuses = [
        (8, 200),
        (9, 204),
        (10, 206),
        (11, 304),
        (12, 400),
        (13, 404),
        (14, 500),
    ];
    let first = block[0];
    if first & 0x80 != 0 {
        let index = first & 0x7f;
        if let Some((_, s)) = statuses.iter().find(|(i, _)| *i == index) {
            return *s;
        }
    }
    // Literal with incremental indexing, name index 8 (:status), raw
    // (non-Huffman) three-digit value.
    assert_eq!(first, 0x48, "unexpected status encoding {block:?}");
    assert_eq!(block[1], 3, "expected a raw 3-byte status {block:?}");
    std::str::from_utf8(&block[2..5])
        .expect("ascii")
        .parse()
        .expect("status")
}

fn connect_block(authority: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, METHOD, b"CONNECT");
    literal(&mut b, AUTHORITY, authority);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_400_and_never_reach_the_handler() {
    init_tracing();
    let pki = Pki::new();
    let echo = Echo::default();
    let server = start(
        pki.server_tls().await,
        ServerConfig::default(),
        echo.clone(),
    )
    .await;

    // The raw client is right: a valid CONNECT is accepted.
    assert_eq!(
        send_raw(server.addr, &pki, connect_block(b"127.0.0.1:80")).await,
        Answer::Status(200)
    );
    assert_eq!(echo.seen().len(), 1);

    // GET instead of CONNECT.
    let mut get = Vec::new();
    get.push(0x82); // :method GET
    get.push(0x87); // :scheme https
    get.push(0x84); // :path /
    literal(&mut get, AUTHORITY, b"127.0.0.1:80");
    assert_eq!(send_raw(server.addr, &pki, get).await, Answer::Status(400));

    // CONNECT without :authority: h2 refuses the malformed request itself.
    let mut no_authority = Vec::new();
    literal(&mut no_authority, METHOD, b"CONNECT");
    let answer = send_raw(server.addr, &pki, no_authority).await;
    assert!(
        matches!(answer, Answer::Status(400) | Answer::Reset(0x1)),
        "{answer:?}"
    );

    let long = format!("{}:80", "a".repeat(10 * 1024));
    let cases: Vec<(&[u8], Answer)> = vec![
        // Valid URI authorities that are not ip:port: our parser, 400.
        (b"1.2.3.4", Answer::Status(400)),
        (b"[::1]:x", Answer::Status(400)),
        (long.as_bytes(), Answer::Status(400)),
        (b"echo.default.svc:80", Answer::Status(400)),
        (b"1.2.3.4:0", Answer::Status(400)),
        (b"1.2.3.4:99999", Answer::Status(400)),
        // Not a URI authority at all (two colons outside brackets): h2
        // treats the request as malformed, RST_STREAM(PROTOCOL_ERROR).
        (b"a:b:c", Answer::Reset(0x1)),
    ];
    for (authority, want) in cases {
        let got = send_raw(server.addr, &pki, connect_block(authority)).await;
        let shown = String::from_utf8_lossy(&authority[..authority.len().min(40)]).into_owned();
        assert_eq!(got, want, "authority {shown:?}");
    }
    assert_eq!(
        echo.seen().len(),
        1,
        "the handler saw only the valid request"
    );
    server.stop().await;
}
