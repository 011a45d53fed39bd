//! HBONE header codecs: the CONNECT `:authority`, `forwarded`, `baggage`
//! and `traceparent`.
//!
//! Pure functions over bytes and strings: nothing here knows of sockets,
//! TLS or HTTP/2, so every parser is tested by tables and fuzzed
//! (`fuzz/fuzz_targets/hbone_headers.rs`). No parser panics on any input;
//! each bounds the length it accepts before looking further.

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

/// The longest `:authority` accepted: a 253-byte DNS name, `:` and a
/// 5-digit port (a bracketed IPv6 address with port is shorter).
pub const MAX_AUTHORITY_LEN: usize = 259;

/// The longest `forwarded` value parsed.
pub const MAX_FORWARDED_LEN: usize = 1024;

/// The longest `baggage` value parsed (W3C Baggage: 8192 bytes).
pub const MAX_BAGGAGE_LEN: usize = 8192;

/// The most `baggage` list members parsed (W3C Baggage: 180).
pub const MAX_BAGGAGE_MEMBERS: usize = 180;

/// Header names HBONE uses besides the pseudo-headers.
pub mod names {
    /// `forwarded` (RFC 7239): the original source, `for="ip:port"`.
    pub const FORWARDED: &str = "forwarded";
    /// `baggage` (W3C): the source workload's metadata.
    pub const BAGGAGE: &str = "baggage";
    /// `traceparent` (W3C Trace Context).
    pub const TRACEPARENT: &str = "traceparent";
}

/// Why a header value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The value is empty.
    #[error("empty {header} value")]
    Empty {
        /// The header (`:authority`, `forwarded`, ...).
        header: &'static str,
    },
    /// The value is longer than the parser accepts.
    #[error("{header} value is {len} bytes long, more than the {max} allowed")]
    TooLong {
        /// The header.
        header: &'static str,
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is not printable ASCII.
    #[error("{header} value has a byte that is not printable ascii")]
    NotAscii {
        /// The header.
        header: &'static str,
    },
    /// The authority has no `:port`.
    #[error("authority {0:?} has no port")]
    MissingPort(String),
    /// The authority's port is not a number in 1..=65535.
    #[error("authority {0:?} has an invalid port")]
    BadPort(String),
    /// The authority's host is neither an IP address nor (where allowed) a
    /// DNS name.
    #[error("authority {0:?} has an invalid host")]
    BadHost(String),
    /// The authority names a host, and only `ip:port` is allowed here.
    #[error("authority {0:?} is a hostname, and only ip:port is allowed")]
    HostnameNotAllowed(String),
    /// A structured header does not follow its grammar.
    #[error("malformed {header} value: {reason}")]
    Malformed {
        /// The header.
        header: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

fn check_len(header: &'static str, bytes: &[u8], max: usize) -> Result<(), HeaderError> {
    if bytes.is_empty() {
        return Err(HeaderError::Empty { header });
    }
    if bytes.len() > max {
        return Err(HeaderError::TooLong {
            header,
            len: bytes.len(),
            max,
        });
    }
    Ok(())
}

/// Header values are visible ASCII plus space and tab (RFC 9110 §5.5,
/// without obs-text).
fn ascii_str<'a>(header: &'static str, bytes: &'a [u8]) -> Result<&'a str, HeaderError> {
    if !bytes
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(HeaderError::NotAscii { header });
    }
    std::str::from_utf8(bytes).map_err(|_| HeaderError::NotAscii { header })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What [`Authority::parse`] accepts beyond `ip:port`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthorityOptions {
    /// Accept `hostname:port` (east-west gateways receive
    /// `svc-hostname:port`). Default: off.
    pub allow_hostnames: bool,
    /// Accept port 0. Default: off — nothing listens on port 0, so such a
    /// target is always a mistake or a probe.
    pub allow_port_zero: bool,
}

impl AuthorityOptions {
    /// Only `ip:port` and `[ipv6]:port`, port 1..=65535 (the default).
    pub const STRICT: Self = Self {
        allow_hostnames: false,
        allow_port_zero: false,
    };

    /// Also `hostname:port`.
    pub const WITH_HOSTNAMES: Self = Self {
        allow_hostnames: true,
        allow_port_zero: false,
    };
}

/// The target of an HBONE CONNECT, from its `:authority`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Authority {
    /// `ip:port` or `[ipv6]:port`.
    Addr(SocketAddr),
    /// `hostname:port` (only where [`AuthorityOptions::allow_hostnames`]).
    Host {
        /// A DNS name, lowercased.
        host: String,
        /// The port.
        port: u16,
    },
}

impl Authority {
    /// Parses an `:authority` value: `ip:port`, `[ipv6]:port`, or (if
    /// allowed) `hostname:port`. IPv6 must be bracketed; zone ids and
    /// user-info are refused; the port must be 1–5 digits.
    pub fn parse(bytes: &[u8], options: AuthorityOptions) -> Result<Self, HeaderError> {
        const H: &str = ":authority";
        check_len(H, bytes, MAX_AUTHORITY_LEN)?;
        let s = ascii_str(H, bytes)?;
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| HeaderError::BadHost(lossy(bytes)))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| HeaderError::MissingPort(lossy(bytes)))?;
            let ip: std::net::Ipv6Addr =
                v6.parse().map_err(|_| HeaderError::BadHost(lossy(bytes)))?;
            (HostPart::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| HeaderError::MissingPort(lossy(bytes)))?;
            if host.contains(':') {
                // `a:b:c`, or an unbracketed IPv6 address.
                return Err(HeaderError::BadHost(lossy(bytes)));
            }
            let host = match host.parse::<std::net::Ipv4Addr>() {
                Ok(ip) => HostPart::Ip(IpAddr::V4(ip)),
                Err(_) => HostPart::Name(host),
            };
            (host, port)
        };
        let port = parse_port(port).ok_or_else(|| HeaderError::BadPort(lossy(bytes)))?;
        if port == 0 && !options.allow_port_zero {
            return Err(HeaderError::BadPort(lossy(bytes)));
        }
        match host {
            HostPart::Ip(ip) => Ok(Self::Addr(SocketAddr::new(ip, port))),
            HostPart::Name(name) => {
                if !is_dns_name(name) {
                    return Err(HeaderError::BadHost(lossy(bytes)));
                }
                if !options.allow_hostnames {
                    return Err(HeaderError::HostnameNotAllowed(lossy(bytes)));
                }
                Ok(Self::Host {
                    host: name.to_ascii_lowercase(),
                    port,
                })
            }
        }
    }

    /// The target address, if the authority is `ip:port`.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Addr(addr) => Some(*addr),
            Self::Host { .. } => None,
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Addr(addr) => addr.port(),
            Self::Host { port, .. } => *port,
        }
    }
}

enum HostPart<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

impl From<SocketAddr> for Authority {
    fn from(addr: SocketAddr) -> Self {
        Self::Addr(addr)
    }
}

impl fmt::Display for Authority {
    /// The `:authority` form: `1.2.3.4:80`, `[::1]:80`, `svc.ns:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // SocketAddr's Display brackets IPv6 (and keeps a scope id,
            // which `parse` then refuses; HBONE targets have none).
            Self::Addr(addr) => write!(f, "{}:{}", Bracketed(addr.ip()), addr.port()),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// An address as it stands before `:port`: IPv6 in brackets. Written
/// straight into the formatter (CONNECTs format one each).
struct Bracketed(IpAddr);

impl fmt::Display for Bracketed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => fmt::Display::fmt(&ip, f),
            IpAddr::V6(ip) => write!(f, "[{ip}]"),
        }
    }
}

impl FromStr for Authority {
    type Err = HeaderError;

    /// Parses with [`AuthorityOptions::STRICT`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes(), AuthorityOptions::STRICT)
    }
}

/// 1–5 ASCII digits, at most 65535.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An RFC 1123 host name: dot-separated labels of letters, digits and `-`,
/// 1–63 bytes each, not starting or ending with `-`; not all-numeric in the
/// last label (so a mistyped IPv4 address is not taken for a name).
fn is_dns_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    let mut last = "";
    for label in s.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b.first() != Some(&b'-')
            && b.last() != Some(&b'-');
        if !ok {
            return false;
        }
        last = label;
    }
    !last.bytes().all(|c| c.is_ascii_digit())
}

/// The `forwarded` header as HBONE sends it: `for="<src ip:port>"`.
///
/// Parsing reads the first forwarded-element (the client nearest the
/// origin) and its `for` parameter; other parameters are ignored. A `for`
/// node that is not an address (`unknown`, an obfuscated `_id`) parses
/// as `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// The original source address, when the node is `ip` or `ip:port`
    /// (an address without a port gets port 0).
    pub for_addr: Option<SocketAddr>,
}

impl Forwarded {
    /// `for="<addr>"`.
    pub fn new(for_addr: SocketAddr) -> Self {
        Self {
            for_addr: Some(for_addr),
        }
    }

    /// Parses a `forwarded` value (RFC 7239).
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderError> {
        const H: &str = "forwarded";
        let malformed = |reason| HeaderError::Malformed { header: H, reason };
        check_len(H, bytes, MAX_FORWARDED_LEN)?;
        let s = ascii_str(H, bytes)?;
        let first = split_unquoted(s, ',')
            .next()
            .ok_or(malformed("no forwarded-element"))?;
        let mut for_addr = None;
        let mut seen_for = false;
        for pair in split_unquoted(first, ';') {
            let pair = pair.trim_matches([' ', '\t']);
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair
                .split_once('=')
                .ok_or(malformed("a forwarded-pair has no '='"))?;
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(malformed("invalid parameter name"));
            }
            let value = unquote(value).ok_or(malformed("invalid parameter value"))?;
            if name.eq_ignore_ascii_case("for") {
                if seen_for {
                    return Err(malformed("more than one 'for' parameter"));
                }
                seen_for = true;
                for_addr = parse_node(&value);
            }
        }
        if !seen_for {
            return Err(malformed("no 'for' parameter"));
        }
        Ok(Self { for_addr })
    }
}

impl fmt::Display for Forwarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.for_addr {
            Some(addr) => write!(f, "for=\"{}:{}\"", Bracketed(addr.ip()), addr.port()),
            None => f.write_str("for=unknown"),
        }
    }
}

/// An RFC 7239 node: `ip`, `ip:port`, `[v6]`, `[v6]:port`, or not an
/// address (`None`).
fn parse_node(node: &str) -> Option<SocketAddr> {
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = node.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
    ip.unwrap_or(node)
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 0))
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A token, or a quoted-string with its escapes removed (borrowed unless
/// it has escapes: every inbound HBONE CONNECT may carry one).
fn unquote(value: &str) -> Option<Cow<'_, str>> {
    let Some(inner) = value.strip_prefix('"') else {
        return (!value.is_empty() && value.bytes().all(is_tchar)).then_some(Cow::Borrowed(value));
    };
    let inner = inner.strip_suffix('"')?;
    if !inner.contains(['\\', '"']) {
        return Some(Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(Cow::Owned(out))
}

/// Splits on `sep` outside double quotes (a `\` escapes inside quotes).
fn split_unquoted(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            if escaped {
                escaped = false;
            } else if quoted && c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = !quoted;
            } else if c == sep && !quoted {
                rest = Some(&s[i + c.len_utf8()..]);
                return Some(&s[..i]);
            }
        }
        rest = None;
        Some(s)
    })
}

/// The W3C `baggage` header: `key=value` list members, with properties
/// (`;prop`) kept out of the value. Keys are tokens; values are
/// percent-decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    entries: Vec<(String, String)>,
}

impl Baggage {
    /// An empty baggage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let (key, value) = (key.into(), value.into());
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
        self
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The entries, in header order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses a `baggage` value. Empty list members are skipped; a member
    /// without `=` or with a non-token key is an error; on a repeated key
    /// the last one wins.
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderError> {
        const H: &str = "baggage";
        let malformed = |reason| HeaderError::Malformed { header: H, reason };
        check_len(H, bytes, MAX_BAGGAGE_LEN)?;
        let s = ascii_str(H, bytes)?;
        let mut baggage = Self::new();
        for (n, member) in s.split(',').enumerate() {
            if n >= MAX_BAGGAGE_MEMBERS {
                return Err(malformed("too many list members"));
            }
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            let kv = member.split(';').next().unwrap_or(member);
            let (key, value) = kv
                .split_once('=')
                .ok_or(malformed("a list member has no '='"))?;
            let key = key.trim_matches([' ', '\t']);
            if key.is_empty() || !key.bytes().all(is_tchar) {
                return Err(malformed("invalid key"));
            }
            let value = percent_decode(value.trim_matches([' ', '\t']))
                .ok_or(malformed("invalid percent-encoding in a value"))?;
            baggage.insert(key, value);
        }
        Ok(baggage)
    }
}

impl fmt::Display for Baggage {
    /// `k1=v1,k2=v2`, values percent-encoded where needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}=")?;
            for b in v.bytes() {
                // W3C baggage-octet, less '%' (the escape itself).
                let plain = matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
                    && b != b'%';
                if plain {
                    write!(f, "{}", b as char)?;
                } else {
                    write!(f, "%{b:02X}")?;
                }
            }
        }
        Ok(())
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The W3C `traceparent` header: `00-<32 hex trace id>-<16 hex parent
/// id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The version (`00`; `ff` is invalid).
    pub version: u8,
    /// The trace id (not all zero).
    pub trace_id: [u8; 16],
    /// The parent span id (not all zero).
    pub parent_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// Parses a `traceparent` value. Version 00 must be exactly 55 bytes;
    /// later versions may append `-...` fields, which are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderError> {
        const H: &str = "traceparent";
        let malformed = |reason| HeaderError::Malformed { header: H, reason };
        check_len(H, bytes, 512)?;
        if bytes.len() < 55 {
            return Err(malformed("shorter than 55 bytes"));
        }
        let dash = |i: usize| bytes[i] == b'-';
        if !(dash(2) && dash(35) && dash(52)) {
            return Err(malformed("fields are not separated by '-'"));
        }
        let mut version = [0u8; 1];
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        let mut flags = [0u8; 1];
        hex_into(&bytes[0..2], &mut version).ok_or(malformed("invalid version"))?;
        hex_into(&bytes[3..35], &mut trace_id).ok_or(malformed("invalid trace id"))?;
        hex_into(&bytes[36..52], &mut parent_id).ok_or(malformed("invalid parent id"))?;
        hex_into(&bytes[53..55], &mut flags).ok_or(malformed("invalid flags"))?;
        let version = version[0];
        if version == 0xff {
            return Err(malformed("version ff is invalid"));
        }
        if version == 0 && bytes.len() != 55 {
            return Err(malformed("version 00 must be exactly 55 bytes"));
        }
        if version != 0 && bytes.len() > 55 && bytes[55] != b'-' {
            return Err(malformed("trailing data without '-'"));
        }
        if trace_id == [0; 16] {
            return Err(malformed("all-zero trace id"));
        }
        if parent_id == [0; 8] {
            return Err(malformed("all-zero parent id"));
        }
        Ok(Self {
            version,
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }
}

/// Lowercase hex only, as the W3C spec requires.
fn hex_into(src: &[u8], dst: &mut [u8]) -> Option<()> {
    if src.len() != dst.len() * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, out) in dst.iter_mut().enumerate() {
        *out = nibble(src[2 * i])? << 4 | nibble(src[2 * i + 1])?;
    }
    Some(())
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}-", self.version)?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// The typed HBONE request headers.
///
/// On the server, a header that is present but malformed is dropped here
/// (logged at debug) rather than failing the request: like ztunnel, HBONE
/// treats them as metadata. The raw values stay available in
/// [`InboundRequest::headers`](crate::InboundRequest::headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectHeaders {
    /// `forwarded: for="ip:port"`.
    pub forwarded: Option<Forwarded>,
    /// `baggage`.
    pub baggage: Option<Baggage>,
    /// `traceparent`.
    pub traceparent: Option<TraceParent>,
}

impl ConnectHeaders {
    /// Reads the typed headers from a header map (the first value of each).
    pub fn from_map(map: &http::HeaderMap) -> Self {
        fn get<T>(
            map: &http::HeaderMap,
            name: &str,
            parse: fn(&[u8]) -> Result<T, HeaderError>,
        ) -> Option<T> {
            let value = map.get(name)?;
            match parse(value.as_bytes()) {
                Ok(v) => Some(v),
                Err(error) => {
                    tracing::debug!(header = name, %error, "ignoring a malformed header");
                    None
                }
            }
        }
        Self {
            forwarded: get(map, names::FORWARDED, Forwarded::parse),
            baggage: get(map, names::BAGGAGE, Baggage::parse),
            traceparent: get(map, names::TRACEPARENT, TraceParent::parse),
        }
    }

    /// Writes the headers that are set into `map`.
    pub fn write_to(&self, map: &mut http::HeaderMap) {
        fn put(map: &mut http::HeaderMap, name: &'static str, value: String) {
            // Our own renderings are always valid header values.
            if let Ok(value) = http::HeaderValue::try_from(value) {
                map.insert(name, value);
            }
        }
        if let Some(f) = &self.forwarded {
            put(map, names::FORWARDED, f.to_string());
        }
        if let Some(b) = self.baggage.as_ref().filter(|b| !b.is_empty()) {
            put(map, names::BAGGAGE, b.to_string());
        }
        if let Some(t) = &self.traceparent {
            put(map, names::TRACEPARENT, t.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(s: &str) -> Result<Authority, HeaderError> {
        Authority::parse(s.as_bytes(), AuthorityOptions::STRICT)
    }

    #[test]
    fn authority_accepts_ip_port() {
        let cases: &[(&str, &str)] = &[
            ("1.2.3.4:80", "1.2.3.4:80"),
            ("10.244.1.5:65535", "10.244.1.5:65535"),
            ("[::1]:8080", "[::1]:8080"),
            ("[fd00::a:1]:1", "[fd00::a:1]:1"),
            ("127.0.0.1:00080", "127.0.0.1:80"),
        ];
        for (input, shown) in cases {
            let a = strict(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert!(a.socket_addr().is_some(), "{input}");
            assert_eq!(a.to_string(), *shown);
        }
    }

    #[test]
    fn authority_rejects_malformed_values() {
        let long = "a".repeat(10 * 1024);
        type Check = fn(&HeaderError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("a:b:c", |e| matches!(e, HeaderError::BadHost(_))),
            ("1.2.3.4", |e| matches!(e, HeaderError::MissingPort(_))),
            ("[::1]:x", |e| matches!(e, HeaderError::BadPort(_))),
            ("[::1]", |e| matches!(e, HeaderError::MissingPort(_))),
            ("::1:80", |e| matches!(e, HeaderError::BadHost(_))),
            ("[::1:80", |e| matches!(e, HeaderError::BadHost(_))),
            ("[fe80::1%eth0]:80", |e| {
                matches!(e, HeaderError::BadHost(_))
            }),
            ("1.2.3.4:", |e| matches!(e, HeaderError::BadPort(_))),
            ("1.2.3.4:0", |e| matches!(e, HeaderError::BadPort(_))),
            ("1.2.3.4:65536", |e| matches!(e, HeaderError::BadPort(_))),
            ("1.2.3.4:+80", |e| matches!(e, HeaderError::BadPort(_))),
            ("1.2.3.4:123456", |e| matches!(e, HeaderError::BadPort(_))),
            ("1.2.3.256:80", |e| matches!(e, HeaderError::BadHost(_))),
            ("user@1.2.3.4:80", |e| matches!(e, HeaderError::BadHost(_))),
            (":80", |e| matches!(e, HeaderError::BadHost(_))),
            ("", |e| matches!(e, HeaderError::Empty { .. })),
            ("1.2.3.4:80\n", |e| {
                matches!(e, HeaderError::NotAscii { .. })
            }),
            ("svc.ns.svc.cluster.local:80", |e| {
                matches!(e, HeaderError::HostnameNotAllowed(_))
            }),
            (&long, |e| matches!(e, HeaderError::TooLong { .. })),
        ];
        for (input, expect) in cases {
            let err = strict(input).expect_err(input);
            assert!(expect(&err), "{input:?}: {err:?}");
        }
    }

    #[test]
    fn authority_hostnames_when_allowed() {
        let opts = AuthorityOptions::WITH_HOSTNAMES;
        let a = Authority::parse(b"Echo.Default.svc.cluster.local:8080", opts).expect("host");
        assert_eq!(
            a,
            Authority::Host {
                host: "echo.default.svc.cluster.local".into(),
                port: 8080
            }
        );
        assert_eq!(a.to_string(), "echo.default.svc.cluster.local:8080");
        for bad in ["-a.b:80", "a..b:80", "a_b:80", "1.2.3:80", "a.b-:80"] {
            assert!(Authority::parse(bad.as_bytes(), opts).is_err(), "{bad}");
        }
        let zero = AuthorityOptions {
            allow_port_zero: true,
            ..AuthorityOptions::STRICT
        };
        assert!(Authority::parse(b"1.2.3.4:0", zero).is_ok());
    }

    #[test]
    fn forwarded_round_trips_and_tolerates_variants() {
        let v4: SocketAddr = "10.0.0.1:34567".parse().expect("addr");
        let v6: SocketAddr = "[fd00::1]:443".parse().expect("addr");
        for addr in [v4, v6] {
            let f = Forwarded::new(addr);
            assert_eq!(Forwarded::parse(f.to_string().as_bytes()), Ok(f));
        }
        assert_eq!(Forwarded::new(v4).to_string(), "for=\"10.0.0.1:34567\"");
        let cases: &[(&str, Option<&str>)] = &[
            ("for=10.0.0.1", Some("10.0.0.1:0")),
            ("For=\"[fd00::1]\"", Some("[fd00::1]:0")),
            (
                "for=\"10.0.0.1:1\";proto=https, for=10.9.9.9",
                Some("10.0.0.1:1"),
            ),
            ("by=x; for=\"10.0.0.1:1\"", Some("10.0.0.1:1")),
            ("for=unknown", None),
            ("for=_hidden", None),
        ];
        for (input, want) in cases {
            let got = Forwarded::parse(input.as_bytes()).expect(input);
            assert_eq!(
                got.for_addr,
                want.map(|w| w.parse().expect("addr")),
                "{input}"
            );
        }
        for bad in [
            "",
            "for",
            "proto=http",
            "for=\"unterminated",
            "for=a b",
            "for=1;for=2",
            "=x",
        ] {
            assert!(Forwarded::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    /// A value without escapes is borrowed; escapes are removed into an
    /// owned copy; a stray quote or a trailing escape is refused.
    #[test]
    fn unquote_borrows_unless_it_must_unescape() {
        let borrowed = |v: &str, want: &str| {
            assert!(
                matches!(unquote(v), Some(Cow::Borrowed(got)) if got == want),
                "{v:?}"
            );
        };
        borrowed("10.0.0.1", "10.0.0.1");
        borrowed("\"[fd00::1]:443\"", "[fd00::1]:443");
        borrowed("\"\"", "");
        assert!(matches!(unquote("\"a\\\"b\\\\c\""), Some(Cow::Owned(s)) if s == "a\"b\\c"));
        for bad in ["", "a b", "\"a\"b\"", "\"a\\\"", "\"open", "a\"b"] {
            assert_eq!(unquote(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn baggage_parses_and_renders() {
        let b = Baggage::parse(
            b"k8s.cluster.name=Kubernetes, k8s.namespace.name=default;prop=1,service.name=echo%20svc,,",
        )
        .expect("baggage");
        assert_eq!(b.get("k8s.cluster.name"), Some("Kubernetes"));
        assert_eq!(b.get("k8s.namespace.name"), Some("default"));
        assert_eq!(b.get("service.name"), Some("echo svc"));
        assert_eq!(b.len(), 3);
        let again = Baggage::parse(b.to_string().as_bytes()).expect("round trip");
        assert_eq!(again, b);
        let mut odd = Baggage::new();
        odd.insert("k", "a,b;c=d%e\"f");
        assert_eq!(Baggage::parse(odd.to_string().as_bytes()), Ok(odd));
        for bad in ["novalue", "=v", "k=%zz", "k=%4", "k y=v", "k=%ff"] {
            assert!(Baggage::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let many = vec!["k=v"; MAX_BAGGAGE_MEMBERS + 1].join(",");
        assert!(Baggage::parse(many.as_bytes()).is_err());
    }

    #[test]
    fn traceparent_parses_and_renders() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(s.as_bytes()).expect("traceparent");
        assert!(t.sampled());
        assert_eq!(
            t.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(t.to_string(), s);
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert_eq!(
            TraceParent::parse(future.as_bytes()).map(|t| t.version),
            Ok(1)
        );
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn connect_headers_round_trip_through_a_header_map() {
        let mut baggage = Baggage::new();
        baggage
            .insert("k8s.cluster.name", "c1")
            .insert("service.name", "echo");
        let headers = ConnectHeaders {
            forwarded: Some(Forwarded::new("10.1.2.3:5555".parse().expect("addr"))),
            baggage: Some(baggage),
            traceparent: TraceParent::parse(
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            )
            .ok(),
        };
        let mut map = http::HeaderMap::new();
        headers.write_to(&mut map);
        assert_eq!(ConnectHeaders::from_map(&map), headers);
        map.insert(names::TRACEPARENT, http::HeaderValue::from_static("junk"));
        assert_eq!(ConnectHeaders::from_map(&map).traceparent, None);
    }

    #[test]
    fn parsers_do_not_panic_on_awkward_bytes() {
        let inputs: &[&[u8]] = &[
            b"[",
            b"]",
            b"[]:",
            b"[]:1",
            b"%",
            b"\xff\xfe",
            b"for=\"\\",
            b"for=\"\\\"",
            b"k=%",
            b"00-",
            &[b'-'; 60],
            "é:80".as_bytes(),
        ];
        for input in inputs {
            let _ = Authority::parse(input, AuthorityOptions::WITH_HOSTNAMES);
            let _ = Forwarded::parse(input);
            let _ = Baggage::parse(input);
            let _ = TraceParent::parse(input);
        }
    }
}
