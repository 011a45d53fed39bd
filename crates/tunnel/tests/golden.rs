//! Golden tests: our `RTM_NEWLINK` requests against iproute2's.
//!
//! Each `tests/data/*.strace` file is the request that iproute2 6.1 sent for
//! the `ip link add ...` command on its first line, captured by
//! `tests/data/capture.sh` with
//!
//! ```text
//! unshare -n strace -f -e trace=sendmsg -e write=3 -xx -s 4096 ip link add ...
//! ```
//!
//! (`-e write=3` adds a full hex dump of the bytes written to the netlink
//! socket, which is what these tests read). The Geneve commands fail on this
//! machine's kernel (no CONFIG_GENEVE) after the request was sent, so the
//! bytes are still iproute2's. The tests need neither root nor a kernel.
//!
//! Normalisation: the netlink header's sequence number (iproute2 uses the
//! time of day) is zeroed in both messages before comparing; the port id is
//! 0 in both (the kernel fills it in); the flags are compared as they are
//! (`REQUEST|ACK|EXCL|CREATE` in both). The decoded messages are compared
//! attribute for attribute and in order with nothing else changed. For the
//! raw bytes one more difference is normalised: iproute2 sends
//! `IFLA_INFO_KIND` without a trailing NUL (`nla_len` 9 for "vxlan"),
//! netlink-packet-route with one (10). The kernel's `NLA_STRING` policy
//! accepts both, the padding byte is zero either way, and both decode to the
//! same `InfoKind`; so iproute2's `nla_len` is raised by one before the byte
//! comparison. Everything else must be byte-identical.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ambit_tunnel::codec::{self, CREATE_FLAGS, geneve_params, netlink_request, vxlan_params};
use ambit_tunnel::{Checksums, Ttl, Tunnel, TunnelKind};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoData, LinkAttribute, LinkInfo, LinkMessage};

/// A capture: the command it records and the request bytes.
struct Capture {
    command: String,
    bytes: Vec<u8>,
}

/// Reads strace's `-e write=3` hex dump of the first buffer in `file`.
fn capture(file: &str) -> Capture {
    // Read at run time (cargo sets it for tests): a test binary reused from
    // a shared target directory may have been built in another checkout.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let path = Path::new(&dir).join("tests/data").join(file);
    let text = std::fs::read_to_string(&path).expect("read capture");
    let command = text
        .lines()
        .find_map(|l| l.strip_prefix("# command: "))
        .expect("command line")
        .to_owned();
    let declared: usize = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("* ")?
                .strip_suffix(" bytes in buffer 0")?
                .parse()
                .ok()
        })
        .expect("buffer size line");
    let mut bytes = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(" | ")) {
        // " | OOOOO  hh hh ... hh  hh ... hh  ascii |": the hex columns are
        // characters 10..59; a short last line is padded with spaces.
        let hex = &line[10..59.min(line.len())];
        bytes.extend(
            hex.split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).expect("hex byte")),
        );
    }
    assert_eq!(bytes.len(), declared, "{file}: hex dump length");
    Capture { command, bytes }
}

fn decode(bytes: &[u8]) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).expect("decode");
    // Normalisation (see the module docs): the sequence number only.
    m.header.sequence_number = 0;
    m
}

fn link_message(m: &NetlinkMessage<RouteNetlinkMessage>) -> &LinkMessage {
    match &m.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => l,
        other => panic!("not RTM_NEWLINK: {other:?}"),
    }
}

fn info_data(l: &LinkMessage) -> &InfoData {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(d) => Some(d),
                _ => None,
            }),
            _ => None,
        })
        .expect("IFLA_INFO_DATA")
}

/// Compares our request for `t` with the capture in `file`.
fn check(file: &str, t: &Tunnel) {
    let cap = capture(file);
    let cmd = &cap.command;
    t.validate().expect("valid tunnel");
    let ours = netlink_request(
        RouteNetlinkMessage::NewLink(codec::new_link(&t.name, &t.params, None)),
        CREATE_FLAGS,
    );
    let mut our_bytes = vec![0u8; ours.buffer_len()];
    ours.serialize(&mut our_bytes);

    let theirs = decode(&cap.bytes);
    let mine = decode(&our_bytes);
    assert_eq!(mine.header, theirs.header, "{cmd}: netlink header");
    let (ml, tl) = (link_message(&mine), link_message(&theirs));
    assert_eq!(ml.header, tl.header, "{cmd}: ifinfomsg");
    // Attribute for attribute, in order, with the tunnel's own attributes
    // listed one by one so a mismatch names the attribute.
    match (info_data(ml), info_data(tl)) {
        (InfoData::Geneve(a), InfoData::Geneve(b)) => {
            assert_eq!(a.len(), b.len(), "{cmd}: geneve attributes\n{a:?}\n{b:?}");
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x, y, "{cmd}: geneve attribute");
            }
            assert_eq!(geneve_params(b).as_ref(), Some(&t.params), "{cmd}: parse");
        }
        (InfoData::Vxlan(a), InfoData::Vxlan(b)) => {
            assert_eq!(a.len(), b.len(), "{cmd}: vxlan attributes\n{a:?}\n{b:?}");
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x, y, "{cmd}: vxlan attribute");
            }
            assert_eq!(vxlan_params(b).as_ref(), Some(&t.params), "{cmd}: parse");
        }
        (a, b) => panic!("{cmd}: kinds differ: {a:?} vs {b:?}"),
    }
    assert_eq!(ml.attributes, tl.attributes, "{cmd}: link attributes");
    assert_eq!(mine, theirs, "{cmd}: whole message");

    // And the wire bytes themselves, normalised as the module docs say.
    let mut their_bytes = cap.bytes.clone();
    their_bytes[8..12].fill(0);
    let kind_at = info_kind_offset(&their_bytes).expect("IFLA_INFO_KIND");
    let len = u16::from_ne_bytes([their_bytes[kind_at], their_bytes[kind_at + 1]]);
    assert_ne!(
        their_bytes[kind_at + len as usize - 1],
        0,
        "{cmd}: kind has a NUL"
    );
    their_bytes[kind_at..kind_at + 2].copy_from_slice(&(len + 1).to_ne_bytes());
    assert_eq!(our_bytes, their_bytes, "{cmd}: bytes");
}

/// Offset of the `IFLA_INFO_KIND` attribute inside `IFLA_LINKINFO` of a raw
/// `RTM_NEWLINK` request (16-byte nlmsghdr + 16-byte ifinfomsg first).
fn info_kind_offset(b: &[u8]) -> Option<usize> {
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_INFO_KIND: u16 = 1;
    let find = |start: usize, end: usize, ty: u16| -> Option<(usize, usize)> {
        let mut off = start;
        while off + 4 <= end {
            let len = u16::from_ne_bytes([b[off], b[off + 1]]) as usize;
            let kind = u16::from_ne_bytes([b[off + 2], b[off + 3]]) & 0x3fff;
            if len < 4 {
                return None;
            }
            if kind == ty {
                return Some((off, off + len));
            }
            off += (len + 3) & !3;
        }
        None
    };
    let (li, li_end) = find(32, b.len(), IFLA_LINKINFO)?;
    find(li + 4, li_end, IFLA_INFO_KIND).map(|(k, _)| k)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    Ipv4Addr::new(a, b, c, d).into()
}

fn v6(s: &str) -> IpAddr {
    s.parse::<Ipv6Addr>().expect("v6").into()
}

#[test]
fn geneve_ipv4_remote() {
    // ip link add gnv4 type geneve id 1000 remote 10.244.0.2 dstport 6081
    let t = Tunnel::new("gnv4", TunnelKind::Geneve, 1000, v4(10, 244, 0, 2)).port(6081);
    check("geneve-v4.strace", &t);
}

#[test]
fn geneve_ipv6_remote() {
    // ip link add gnv6 type geneve id 1001 remote fd00::2 dstport 6082
    let t = Tunnel::new("gnv6", TunnelKind::Geneve, 1001, v6("fd00::2")).port(6082);
    check("geneve-v6.strace", &t);
}

#[test]
fn geneve_fixed_ttl() {
    // ip link add gnttl type geneve id 42 remote 10.0.0.1 ttl 64 dstport 6081
    let t = Tunnel::new("gnttl", TunnelKind::Geneve, 42, v4(10, 0, 0, 1)).ttl(Ttl::Fixed(64));
    check("geneve-ttl.strace", &t);
}

#[test]
fn geneve_ttl_inherit() {
    // ip link add gninh type geneve id 43 remote 10.0.0.1 ttl inherit dstport 7000
    let t = Tunnel::new("gninh", TunnelKind::Geneve, 43, v4(10, 0, 0, 1))
        .ttl(Ttl::Inherit)
        .port(7000);
    check("geneve-inherit.strace", &t);
}

#[test]
fn geneve_checksum_flags_on() {
    // ip link add gncsum type geneve id 7 remote fd00::2 dstport 6081
    //     udpcsum udp6zerocsumtx udp6zerocsumrx
    let t = Tunnel::new("gncsum", TunnelKind::Geneve, 7, v6("fd00::2")).checksums(Checksums {
        udp_csum: Some(true),
        udp6_zero_csum_tx: Some(true),
        udp6_zero_csum_rx: Some(true),
    });
    check("geneve-csum.strace", &t);
}

#[test]
fn geneve_checksum_flags_as_istio_links_show() {
    // ip link add istioin type geneve id 1000 remote 10.244.0.5 dstport 6081
    //     noudpcsum noudp6zerocsumtx udp6zerocsumrx
    let t =
        Tunnel::new("istioin", TunnelKind::Geneve, 1000, v4(10, 244, 0, 5)).checksums(Checksums {
            udp_csum: Some(false),
            udp6_zero_csum_tx: Some(false),
            udp6_zero_csum_rx: Some(true),
        });
    check("geneve-nocsum.strace", &t);
}

#[test]
fn vxlan_ipv4_remote() {
    // ip link add vx4 type vxlan id 1000 remote 10.244.0.2 dstport 6081
    let t = Tunnel::new("vx4", TunnelKind::Vxlan, 1000, v4(10, 244, 0, 2)).port(6081);
    check("vxlan-v4.strace", &t);
}

#[test]
fn vxlan_local_and_ttl() {
    // ip link add vxl type vxlan id 1001 remote 10.0.0.2 local 10.0.0.1 dstport 4789 ttl 64
    let t = Tunnel::new("vxl", TunnelKind::Vxlan, 1001, v4(10, 0, 0, 2))
        .local(v4(10, 0, 0, 1))
        .ttl(Ttl::Fixed(64));
    check("vxlan-local.strace", &t);
}

#[test]
fn vxlan_ipv6_with_checksum_flags() {
    // ip link add vx6 type vxlan id 5 remote fd00::2 local fd00::1 dstport 4789
    //     udp6zerocsumtx udp6zerocsumrx
    let t = Tunnel::new("vx6", TunnelKind::Vxlan, 5, v6("fd00::2"))
        .local(v6("fd00::1"))
        .checksums(Checksums {
            udp_csum: None,
            udp6_zero_csum_tx: Some(true),
            udp6_zero_csum_rx: Some(true),
        });
    check("vxlan-v6.strace", &t);
}

#[test]
fn vxlan_ttl_inherit_and_udpcsum() {
    // ip link add vxc type vxlan id 6 remote 10.0.0.2 dstport 4790 ttl inherit udpcsum
    let t = Tunnel::new("vxc", TunnelKind::Vxlan, 6, v4(10, 0, 0, 2))
        .port(4790)
        .ttl(Ttl::Inherit)
        .checksums(Checksums {
            udp_csum: Some(true),
            ..Checksums::default()
        });
    check("vxlan-csum.strace", &t);
}
