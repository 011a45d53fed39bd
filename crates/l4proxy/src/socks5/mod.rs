//! SOCKS5 (RFC 1928) as ztunnel's opt-in local front door (port 15080).
//!
//! A local application that cannot be captured connects here, asks for a
//! destination, and its connection then takes the proxy's normal outbound
//! path (see [`crate::Proxy::serve_socks5`]). Only what istio/ztunnel
//! offers is spoken: the no-authentication method and the CONNECT command,
//! to an IPv4 address, an IPv6 address or a hostname (resolved against the
//! mesh state by the proxy, not by DNS).
//!
//! The codec is pure: [`parse_greeting`] and [`parse_request`] look at the
//! bytes received so far and answer "need `n` bytes in total", the parsed
//! message, or an error. [`read_greeting`] and [`read_request`] drive them
//! over a stream reading exactly the bytes asked for, so nothing the client
//! sends after its request (its first payload) is consumed here.
//! [`read_handshake`] reads both messages with as few reads as the client
//! allows and hands back whatever followed the request, which the proxy
//! sends on as the tunnel's first bytes.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod front;

/// The protocol version byte.
pub const VERSION: u8 = 0x05;
/// The "no authentication required" method.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// The "no acceptable methods" answer.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
/// The CONNECT command.
pub const CMD_CONNECT: u8 = 0x01;
/// The BIND command (not supported).
pub const CMD_BIND: u8 = 0x02;
/// The UDP ASSOCIATE command (not supported).
pub const CMD_UDP_ASSOCIATE: u8 = 0x03;
/// Address type: IPv4.
pub const ATYP_IPV4: u8 = 0x01;
/// Address type: a length-prefixed domain name.
pub const ATYP_DOMAIN: u8 = 0x03;
/// Address type: IPv6.
pub const ATYP_IPV6: u8 = 0x04;

/// The reply codes of RFC 1928 §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// 0x00 succeeded.
    Succeeded = 0x00,
    /// 0x01 general SOCKS server failure.
    GeneralFailure = 0x01,
    /// 0x02 connection not allowed by ruleset (authorization denied).
    NotAllowed = 0x02,
    /// 0x03 network unreachable.
    NetworkUnreachable = 0x03,
    /// 0x04 host unreachable (also: a hostname the mesh does not know).
    HostUnreachable = 0x04,
    /// 0x05 connection refused.
    ConnectionRefused = 0x05,
    /// 0x06 TTL expired (used for connect timeouts).
    TtlExpired = 0x06,
    /// 0x07 command not supported.
    CommandNotSupported = 0x07,
    /// 0x08 address type not supported.
    AddressTypeNotSupported = 0x08,
}

impl Reply {
    /// The reply for a failed TCP connect, from the error's kind.
    pub fn for_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Self::ConnectionRefused,
            io::ErrorKind::NetworkUnreachable => Self::NetworkUnreachable,
            io::ErrorKind::HostUnreachable => Self::HostUnreachable,
            io::ErrorKind::TimedOut => Self::TtlExpired,
            io::ErrorKind::PermissionDenied => Self::NotAllowed,
            _ => Self::GeneralFailure,
        }
    }

    /// The reply message: `VER REP RSV ATYP BND.ADDR BND.PORT`.
    pub fn encode(self, bound: SocketAddr) -> Vec<u8> {
        let mut out = Vec::with_capacity(22);
        out.extend_from_slice(&[VERSION, self as u8, 0x00]);
        match bound.ip() {
            IpAddr::V4(ip) => {
                out.push(ATYP_IPV4);
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(ATYP_IPV6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&bound.port().to_be_bytes());
        out
    }
}

/// Where the client asks to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An IPv4 or IPv6 socket address.
    Ip(SocketAddr),
    /// A hostname and port, to be resolved by the proxy.
    Domain(String, u16),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => a.fmt(f),
            Self::Domain(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// Why a SOCKS5 handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Socks5Error {
    /// Reading or writing the handshake failed.
    #[error("socks5 handshake i/o")]
    Io(#[source] io::Error),
    /// The connection ended before a whole message arrived.
    #[error("socks5 {what} truncated: the client closed after {got} of {need} bytes")]
    Truncated {
        /// `greeting` or `request`.
        what: &'static str,
        /// Bytes received.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The version byte is not 5.
    #[error("socks5 {what}: unsupported version {version:#04x} (expected 0x05)")]
    Version {
        /// `greeting` or `request`.
        what: &'static str,
        /// The byte received.
        version: u8,
    },
    /// The greeting lists no methods.
    #[error("socks5 greeting offers no authentication methods")]
    NoMethods,
    /// The greeting does not offer "no authentication".
    #[error("socks5 greeting offers no acceptable method (only no-auth is supported): {0:02x?}")]
    NoAcceptableMethod(Vec<u8>),
    /// BIND, UDP ASSOCIATE or an unknown command.
    #[error("socks5 command {0:#04x} is not supported (only CONNECT)")]
    Command(u8),
    /// The reserved byte is not zero.
    #[error("socks5 request reserved byte is {0:#04x}, not 0x00")]
    Reserved(u8),
    /// An address type other than IPv4, domain or IPv6.
    #[error("socks5 address type {0:#04x} is not supported")]
    AddressType(u8),
    /// A zero-length domain name.
    #[error("socks5 request has an empty domain name")]
    EmptyDomain,
    /// A domain name that is not UTF-8.
    #[error("socks5 domain name is not valid utf-8")]
    DomainEncoding,
}

impl Socks5Error {
    /// The reply to send for this failure, when one can be sent: request
    /// errors get one; greeting errors do not (no method was agreed), except
    /// [`Socks5Error::NoAcceptableMethod`], whose answer is the method 0xFF.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Self::Command(_) => Some(Reply::CommandNotSupported),
            Self::AddressType(_) => Some(Reply::AddressTypeNotSupported),
            Self::Reserved(_) | Self::EmptyDomain | Self::DomainEncoding => {
                Some(Reply::GeneralFailure)
            }
            Self::Version { what, .. } if *what == "request" => Some(Reply::GeneralFailure),
            _ => None,
        }
    }
}

/// The result of looking at a message's bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// Incomplete: the message needs this many bytes in total.
    Need(usize),
    /// Complete: the message and the bytes it took.
    Done(T, usize),
}

/// The client's greeting: `VER NMETHODS METHODS...`. Returns the methods.
pub fn parse_greeting(buf: &[u8]) -> Result<Parsed<Vec<u8>>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(Parsed::Need(2));
    };
    if version != VERSION {
        return Err(Socks5Error::Version {
            what: "greeting",
            version,
        });
    }
    let Some(&n) = buf.get(1) else {
        return Ok(Parsed::Need(2));
    };
    if n == 0 {
        return Err(Socks5Error::NoMethods);
    }
    let need = 2 + usize::from(n);
    match buf.get(2..need) {
        Some(methods) => Ok(Parsed::Done(methods.to_vec(), need)),
        None => Ok(Parsed::Need(need)),
    }
}

/// The client's request: `VER CMD RSV ATYP DST.ADDR DST.PORT`. Only
/// CONNECT is accepted.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<Address>, Socks5Error> {
    const HEAD: usize = 4;
    if buf.len() < HEAD {
        // Check what is there already, so a bad version fails fast.
        if let Some(&v) = buf.first()
            && v != VERSION
        {
            return Err(Socks5Error::Version {
                what: "request",
                version: v,
            });
        }
        return Ok(Parsed::Need(HEAD));
    }
    let (version, cmd, rsv, atyp) = (buf[0], buf[1], buf[2], buf[3]);
    if version != VERSION {
        return Err(Socks5Error::Version {
            what: "request",
            version,
        });
    }
    if cmd != CMD_CONNECT {
        return Err(Socks5Error::Command(cmd));
    }
    if rsv != 0 {
        return Err(Socks5Error::Reserved(rsv));
    }
    let (addr_len, addr_start) = match atyp {
        ATYP_IPV4 => (4, HEAD),
        ATYP_IPV6 => (16, HEAD),
        ATYP_DOMAIN => {
            let Some(&len) = buf.get(HEAD) else {
                return Ok(Parsed::Need(HEAD + 1));
            };
            if len == 0 {
                return Err(Socks5Error::EmptyDomain);
            }
            (usize::from(len), HEAD + 1)
        }
        other => return Err(Socks5Error::AddressType(other)),
    };
    let need = addr_start + addr_len + 2;
    let Some(rest) = buf.get(addr_start..need) else {
        return Ok(Parsed::Need(need));
    };
    let (addr, port) = rest.split_at(addr_len);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let address = match atyp {
        ATYP_IPV4 => {
            let o: [u8; 4] = addr
                .try_into()
                .map_err(|_| Socks5Error::AddressType(atyp))?;
            Address::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
        }
        ATYP_IPV6 => {
            let o: [u8; 16] = addr
                .try_into()
                .map_err(|_| Socks5Error::AddressType(atyp))?;
            Address::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => {
            let host = std::str::from_utf8(addr).map_err(|_| Socks5Error::DomainEncoding)?;
            // A client may send an address literal as a "domain".
            match host.parse::<IpAddr>() {
                Ok(ip) => Address::Ip(SocketAddr::new(ip, port)),
                Err(_) => Address::Domain(host.to_owned(), port),
            }
        }
    };
    Ok(Parsed::Done(address, need))
}

/// Reads one message with `parse`, never reading past its end.
async fn read_message<S, T>(
    s: &mut S,
    what: &'static str,
    parse: fn(&[u8]) -> Result<Parsed<T>, Socks5Error>,
) -> Result<T, Socks5Error>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(32);
    loop {
        match parse(&buf)? {
            Parsed::Done(v, _) => return Ok(v),
            Parsed::Need(need) => {
                let got = buf.len();
                buf.resize(need, 0);
                let mut filled = got;
                while filled < need {
                    match s.read(&mut buf[filled..]).await {
                        Ok(0) => {
                            return Err(Socks5Error::Truncated {
                                what,
                                got: filled,
                                need,
                            });
                        }
                        Ok(n) => filled += n,
                        Err(e) => return Err(Socks5Error::Io(e)),
                    }
                }
            }
        }
    }
}

/// Reads the greeting and answers it: "no authentication" if offered,
/// otherwise 0xFF (and the error).
pub async fn read_greeting<S>(s: &mut S) -> Result<(), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let methods = read_message(s, "greeting", parse_greeting).await?;
    refuse_without_no_auth(s, methods).await?;
    s.write_all(&[VERSION, METHOD_NO_AUTH])
        .await
        .map_err(Socks5Error::Io)
}

/// Answers 0xFF and fails unless the client offered "no authentication".
async fn refuse_without_no_auth<S>(s: &mut S, methods: Vec<u8>) -> Result<(), Socks5Error>
where
    S: AsyncWrite + Unpin,
{
    if methods.contains(&METHOD_NO_AUTH) {
        return Ok(());
    }
    let _ = s.write_all(&[VERSION, METHOD_NONE_ACCEPTABLE]).await;
    Err(Socks5Error::NoAcceptableMethod(methods))
}

/// Reads the request. On a request error the matching reply is sent
/// before the error is returned.
pub async fn read_request<S>(s: &mut S) -> Result<Address, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match read_message(s, "request", parse_request).await {
        Ok(a) => Ok(a),
        Err(e) => {
            if let Some(r) = e.reply() {
                let _ = send_reply(s, r, unspecified()).await;
            }
            Err(e)
        }
    }
}

/// How much [`read_handshake`] reads at a time; what follows the request
/// in that read is returned (at most this much).
const HANDSHAKE_READ: usize = 4096;

/// A completed handshake ([`read_handshake`]).
#[derive(Debug)]
pub struct Handshake {
    /// The requested destination.
    pub address: Address,
    /// What the client sent after its request in the same reads (empty
    /// unless it pipelined its first payload).
    pub early: Bytes,
    /// The greeting's answer was held back (see [`read_handshake`]).
    greeting_owed: bool,
}

impl Handshake {
    /// Sends `reply`, preceded in the same write by the greeting's answer
    /// if that is still owed.
    pub async fn reply<S>(&mut self, s: &mut S, reply: Reply, bound: SocketAddr) -> io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        let owed = std::mem::take(&mut self.greeting_owed);
        s.write_all(&answer(owed, reply, bound)).await
    }
}

/// `reply`'s bytes, preceded by the greeting's answer when `greeting_owed`.
fn answer(greeting_owed: bool, reply: Reply, bound: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    if greeting_owed {
        out.extend_from_slice(&[VERSION, METHOD_NO_AUTH]);
    }
    out.extend_from_slice(&reply.encode(bound));
    out
}

/// Reads the greeting and the request as [`read_greeting`] and
/// [`read_request`] do (answering a refused greeting or a bad request),
/// with one read for all a client sends in one burst, and returns the
/// request and what followed it. A client that sent its request without
/// waiting for the greeting's answer gets that answer together with the
/// request's reply ([`Handshake::reply`]), in one write rather than two:
/// it reads both anyway, and one wake-up fewer is cheaper for both sides.
/// A client that waits for the answer gets it straight away.
pub async fn read_handshake<S>(s: &mut S) -> Result<Handshake, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(HANDSHAKE_READ);
    let methods = read_buffered(s, &mut buf, "greeting", parse_greeting).await?;
    refuse_without_no_auth(s, methods).await?;
    let pipelined = matches!(parse_request(&buf), Ok(Parsed::Done(..)));
    if !pipelined {
        s.write_all(&[VERSION, METHOD_NO_AUTH])
            .await
            .map_err(Socks5Error::Io)?;
    }
    match read_buffered(s, &mut buf, "request", parse_request).await {
        Ok(address) => Ok(Handshake {
            address,
            // A copy the size of what is there: the read buffer is let go,
            // not kept alive for the connection's lifetime.
            early: match buf.is_empty() {
                true => Bytes::new(),
                false => Bytes::copy_from_slice(&buf),
            },
            greeting_owed: pipelined,
        }),
        Err(e) => {
            if let Some(r) = e.reply() {
                let _ = s.write_all(&answer(pipelined, r, unspecified())).await;
            }
            Err(e)
        }
    }
}

/// Parses one message from the front of `buf`, reading more as needed;
/// on success the message is consumed from `buf` and what follows stays.
async fn read_buffered<S, T>(
    s: &mut S,
    buf: &mut BytesMut,
    what: &'static str,
    parse: fn(&[u8]) -> Result<Parsed<T>, Socks5Error>,
) -> Result<T, Socks5Error>
where
    S: AsyncRead + Unpin,
{
    loop {
        match parse(buf)? {
            Parsed::Done(v, used) => {
                buf.advance(used);
                return Ok(v);
            }
            Parsed::Need(need) => {
                buf.reserve(need.saturating_sub(buf.len()));
                match s.read_buf(buf).await {
                    Ok(0) => {
                        return Err(Socks5Error::Truncated {
                            what,
                            got: buf.len(),
                            need,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => return Err(Socks5Error::Io(e)),
                }
            }
        }
    }
}

/// `0.0.0.0:0`, the bound address of replies that have none.
pub fn unspecified() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
}

/// Sends a reply.
pub async fn send_reply<S>(s: &mut S, reply: Reply, bound: SocketAddr) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    s.write_all(&reply.encode(bound)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done<T>(p: Result<Parsed<T>, Socks5Error>) -> (T, usize) {
        match p {
            Ok(Parsed::Done(v, n)) => (v, n),
            Ok(Parsed::Need(n)) => panic!("incomplete, needs {n}"),
            Err(e) => panic!("error: {e}"),
        }
    }

    #[test]
    fn greeting_complete_incomplete_and_bad() {
        assert_eq!(done(parse_greeting(&[5, 2, 0, 2])), (vec![0, 2], 4));
        assert_eq!(parse_greeting(&[]).ok(), Some(Parsed::Need(2)));
        assert_eq!(parse_greeting(&[5]).ok(), Some(Parsed::Need(2)));
        assert_eq!(parse_greeting(&[5, 3, 0]).ok(), Some(Parsed::Need(5)));
        assert!(matches!(
            parse_greeting(&[4, 1, 0]),
            Err(Socks5Error::Version { version: 4, .. })
        ));
        // An HTTP request sent to the SOCKS port.
        assert!(matches!(
            parse_greeting(b"GET / HTTP/1.1\r\n"),
            Err(Socks5Error::Version { version: b'G', .. })
        ));
        assert!(matches!(
            parse_greeting(&[5, 0]),
            Err(Socks5Error::NoMethods)
        ));
    }

    #[test]
    fn requests_of_every_address_type() {
        let v4 = [5, 1, 0, 1, 10, 0, 0, 1, 0x1f, 0x90];
        assert_eq!(
            done(parse_request(&v4)),
            (Address::Ip("10.0.0.1:8080".parse().expect("addr")), 10)
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&"::1".parse::<Ipv6Addr>().expect("v6").octets());
        v6.extend_from_slice(&[0, 80]);
        assert_eq!(
            done(parse_request(&v6)),
            (Address::Ip("[::1]:80".parse().expect("addr")), 22)
        );
        let mut d = vec![5, 1, 0, 3, 11];
        d.extend_from_slice(b"example.com");
        d.extend_from_slice(&[0x23, 0x78]);
        assert_eq!(
            done(parse_request(&d)),
            (Address::Domain("example.com".into(), 9080), 18)
        );
        // An address literal sent as a domain is an address.
        let mut lit = vec![5, 1, 0, 3, 9];
        lit.extend_from_slice(b"127.0.0.1");
        lit.extend_from_slice(&[0, 80]);
        assert_eq!(
            done(parse_request(&lit)).0,
            Address::Ip("127.0.0.1:80".parse().expect("addr"))
        );
    }

    #[test]
    fn truncated_requests_ask_for_the_rest() {
        let full = {
            let mut d = vec![5, 1, 0, 3, 4];
            d.extend_from_slice(b"host");
            d.extend_from_slice(&[0, 80]);
            d
        };
        // Every strict prefix is incomplete, never an error or a panic.
        for n in 0..full.len() {
            match parse_request(&full[..n]) {
                Ok(Parsed::Need(need)) => assert!(need > n, "prefix {n} needs {need}"),
                other => panic!("prefix {n}: {other:?}"),
            }
        }
        assert_eq!(
            parse_request(&[5, 1, 0, 1, 1, 2]).ok(),
            Some(Parsed::Need(10))
        );
        assert_eq!(parse_request(&[5, 1, 0, 4]).ok(), Some(Parsed::Need(22)));
    }

    #[test]
    fn bad_requests_are_errors_with_the_right_reply() {
        let cases: [(&[u8], Reply); 6] = [
            (
                &[5, CMD_BIND, 0, 1, 0, 0, 0, 0, 0, 0],
                Reply::CommandNotSupported,
            ),
            (&[5, CMD_UDP_ASSOCIATE, 0, 1], Reply::CommandNotSupported),
            (&[5, 1, 0, 7, 1, 2, 3], Reply::AddressTypeNotSupported),
            (&[5, 1, 9, 1, 0, 0, 0, 0, 0, 0], Reply::GeneralFailure),
            (&[5, 1, 0, 3, 0, 0, 80], Reply::GeneralFailure),
            (&[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80], Reply::GeneralFailure),
        ];
        for (bytes, want) in cases {
            let e = parse_request(bytes).expect_err("bad request");
            assert_eq!(e.reply(), Some(want), "{bytes:?}: {e}");
            assert!(!e.to_string().is_empty());
        }
        let e = parse_request(&[4]).expect_err("bad version");
        assert!(e.to_string().contains("unsupported version 0x04"), "{e}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap exhaustive sweep over short inputs plus a pseudo-random one.
        let mut x: u32 = 0x1234_5678;
        for len in 0..40 {
            for _ in 0..500 {
                let buf: Vec<u8> = (0..len)
                    .map(|i| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        // Bias the head towards valid bytes to go deep.
                        match i {
                            0 => 5,
                            1 if x.is_multiple_of(2) => 1,
                            2 if x.is_multiple_of(2) => 0,
                            3 => (x % 6) as u8,
                            _ => x as u8,
                        }
                    })
                    .collect();
                let _ = parse_greeting(&buf);
                let _ = parse_request(&buf);
            }
        }
    }

    #[test]
    fn replies_encode_the_bound_address() {
        assert_eq!(
            Reply::Succeeded.encode("10.1.2.3:258".parse().expect("addr")),
            vec![5, 0, 0, 1, 10, 1, 2, 3, 1, 2]
        );
        let r = Reply::HostUnreachable.encode("[::1]:1".parse().expect("addr"));
        assert_eq!(r.len(), 22);
        assert_eq!(&r[..4], &[5, 4, 0, 4]);
        assert_eq!(
            Reply::for_io(&io::Error::from(io::ErrorKind::ConnectionRefused)),
            Reply::ConnectionRefused
        );
    }

    #[tokio::test]
    async fn handshake_over_a_stream_reads_exactly_the_request() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        // Greeting, request and the first payload in one burst.
        let mut burst = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80];
        burst.extend_from_slice(b"payload");
        client.write_all(&burst).await.expect("write");
        read_greeting(&mut server).await.expect("greeting");
        let a = read_request(&mut server).await.expect("request");
        assert_eq!(a, Address::Ip("127.0.0.1:80".parse().expect("addr")));
        let mut rest = [0u8; 7];
        server.read_exact(&mut rest).await.expect("payload");
        assert_eq!(&rest, b"payload");
        let mut answer = [0u8; 2];
        client.read_exact(&mut answer).await.expect("method");
        assert_eq!(answer, [5, 0]);
    }

    #[tokio::test]
    async fn buffered_handshake_returns_the_pipelined_payload() {
        // In one burst: greeting, request and payload.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut burst = vec![5, 2, 2, 0, 5, 1, 0, 3, 4];
        burst.extend_from_slice(b"host");
        burst.extend_from_slice(&[0x1f, 0x90]);
        burst.extend_from_slice(b"payload");
        client.write_all(&burst).await.expect("write");
        let mut h = read_handshake(&mut server).await.expect("handshake");
        assert_eq!(h.address, Address::Domain("host".into(), 8080));
        assert_eq!(&h.early[..], b"payload");
        // Pipelined: the greeting's answer comes with the reply, once.
        let bound: SocketAddr = "10.0.0.1:4000".parse().expect("addr");
        h.reply(&mut server, Reply::Succeeded, bound)
            .await
            .expect("reply");
        h.reply(&mut server, Reply::Succeeded, bound)
            .await
            .expect("reply");
        let mut answers = vec![0u8; 2 + 10 + 10];
        client.read_exact(&mut answers).await.expect("answers");
        assert_eq!(&answers[..2], &[5, 0]);
        assert_eq!(&answers[2..12], &Reply::Succeeded.encode(bound)[..]);
        assert_eq!(&answers[12..], &Reply::Succeeded.encode(bound)[..]);

        // A byte at a time, nothing after the request.
        let (mut client, mut server) = tokio::io::duplex(1);
        let task = tokio::spawn(async move { read_handshake(&mut server).await });
        let msg = [
            5u8, 1, 0, 5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 22,
        ];
        for (i, b) in msg.iter().enumerate() {
            client.write_all(&[*b]).await.expect("write");
            if i == 2 {
                let mut answer = [0u8; 2];
                client.read_exact(&mut answer).await.expect("method");
                assert_eq!(answer, [5, 0]);
            }
        }
        let h = task.await.expect("joined").expect("handshake");
        assert_eq!(h.address, Address::Ip("[::1]:22".parse().expect("addr")));
        assert!(h.early.is_empty());
        assert!(!h.greeting_owed, "answered before the request came");

        // Truncated in the request; a refused command is answered.
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&[5, 1, 0, 5, 1]).await.expect("write");
        client.shutdown().await.expect("eof");
        let e = read_handshake(&mut server).await.expect_err("truncated");
        assert!(
            matches!(
                e,
                Socks5Error::Truncated {
                    what: "request",
                    ..
                }
            ),
            "{e}"
        );
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(&[5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80])
            .await
            .expect("write");
        let e = read_handshake(&mut server).await.expect_err("bind");
        assert!(matches!(e, Socks5Error::Command(CMD_BIND)), "{e}");
        // The method answer, then the refusal: "command not supported".
        let mut answers = [0u8; 12];
        client.read_exact(&mut answers).await.expect("answers");
        assert_eq!(&answers[..4], &[5, 0, 5, 0x07]);
    }

    #[tokio::test]
    async fn truncated_and_refused_handshakes_are_errors() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&[5, 3, 0]).await.expect("write");
        drop(client);
        let e = read_greeting(&mut server).await.expect_err("truncated");
        assert!(
            matches!(
                e,
                Socks5Error::Truncated {
                    got: 3,
                    need: 5,
                    ..
                }
            ),
            "{e}"
        );

        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&[5, 1, 2]).await.expect("write");
        let e = read_greeting(&mut server).await.expect_err("no no-auth");
        assert!(matches!(e, Socks5Error::NoAcceptableMethod(_)), "{e}");
        let mut answer = [0u8; 2];
        client.read_exact(&mut answer).await.expect("answer");
        assert_eq!(answer, [5, 0xff]);

        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(&[5, CMD_BIND, 0, 1, 0, 0, 0, 0, 0, 0])
            .await
            .expect("write");
        let e = read_request(&mut server).await.expect_err("bind");
        assert!(matches!(e, Socks5Error::Command(CMD_BIND)), "{e}");
        let mut reply = [0u8; 10];
        client.read_exact(&mut reply).await.expect("reply");
        assert_eq!(reply[1], Reply::CommandNotSupported as u8);
    }
}
