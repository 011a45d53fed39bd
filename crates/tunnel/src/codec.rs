//! rtnetlink messages for tunnel links, built and parsed without a socket.
//!
//! Every request here is what the matching `ip` command sends, attribute for
//! attribute and in the same order, so the golden tests in `tests/golden.rs`
//! can compare our bytes with iproute2 6.1's. The socket side is
//! [`ambit_netlink::Socket`], driven by [`crate::Links`]; nothing in this
//! module needs root.

use std::net::IpAddr;
use std::os::fd::RawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoGeneve, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use crate::spec::{Checksums, IfAddr, Ttl, Tunnel, TunnelKind, TunnelParams};

/// Flags of a create request: `ip link add` / `ip addr add`.
pub const CREATE_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
/// Flags of a change or delete request: `ip link set` / `ip link del`.
pub const CHANGE_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK;
/// Flags of a dump request: `ip link show` / `ip addr show`.
pub const DUMP_FLAGS: u16 = NLM_F_REQUEST | NLM_F_DUMP;

/// Wraps a route message in a netlink header with `flags`. Sequence number
/// and port id are left 0: the socket layer fills in the sequence number and
/// the kernel the port id.
pub fn netlink_request(
    msg: RouteNetlinkMessage,
    flags: u16,
) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    nl
}

/// [`netlink_request`] as bytes, ready for [`ambit_netlink::Socket`].
pub fn encode_request(msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let nl = netlink_request(msg, flags);
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// Decodes one reply message (header included, as [`ambit_netlink::Socket`]
/// returns them): its route message, or `None` for a netlink control
/// message (done, error, noop, overrun).
pub fn decode_reply(raw: &[u8]) -> Result<Option<RouteNetlinkMessage>, String> {
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).map_err(|e| e.to_string())?;
    Ok(match msg.payload {
        NetlinkPayload::InnerMessage(m) => Some(m),
        _ => None,
    })
}

/// The `IFLA_INFO_DATA` of a tunnel, in iproute2 6.1's attribute order.
///
/// Geneve (`geneve_parse_opt`): `[TTL_INHERIT]`, `ID`, `REMOTE|REMOTE6`,
/// `LABEL` (0), `TTL` (0 = auto), `TOS` (0), `PORT`, then each checksum flag
/// that was given. VXLAN (`vxlan_parse_opt`) adds the words it meets while
/// parsing first — `TTL_INHERIT` or `TTL`, then the checksum flags, in the
/// order `ip`'s manual lists them — then `ID`, `LOCAL|LOCAL6`,
/// `GROUP|GROUP6` (the remote), `LEARNING` (1), `PORT`.
pub fn info_data(p: &TunnelParams) -> InfoData {
    match p.kind {
        TunnelKind::Geneve => InfoData::Geneve(geneve_attrs(p)),
        TunnelKind::Vxlan => InfoData::Vxlan(vxlan_attrs(p)),
    }
}

fn geneve_attrs(p: &TunnelParams) -> Vec<InfoGeneve> {
    let mut v = Vec::with_capacity(10);
    if p.ttl == Ttl::Inherit {
        v.push(InfoGeneve::TtlInherit(true));
    }
    v.push(InfoGeneve::Id(p.vni));
    v.push(match p.remote {
        IpAddr::V4(a) => InfoGeneve::Remote(a),
        IpAddr::V6(a) => InfoGeneve::Remote6(a),
    });
    // Not emitted by iproute2 6.1; validation rejects it, but newer kernels
    // know IFLA_GENEVE_LOCAL{,6}, so a caller that builds params by hand
    // still gets a faithful request.
    match p.local {
        Some(IpAddr::V4(a)) => v.push(InfoGeneve::Local(a)),
        Some(IpAddr::V6(a)) => v.push(InfoGeneve::Local6(a)),
        None => {}
    }
    v.push(InfoGeneve::Label(0));
    v.push(InfoGeneve::Ttl(match p.ttl {
        Ttl::Fixed(n) => n,
        Ttl::Auto | Ttl::Inherit => 0,
    }));
    v.push(InfoGeneve::Tos(0));
    v.push(InfoGeneve::Port(p.port));
    let Checksums {
        udp_csum,
        udp6_zero_csum_tx,
        udp6_zero_csum_rx,
    } = p.checksums;
    v.extend(udp_csum.map(InfoGeneve::UdpCsum));
    v.extend(udp6_zero_csum_tx.map(InfoGeneve::UdpZeroCsum6Tx));
    v.extend(udp6_zero_csum_rx.map(InfoGeneve::UdpZeroCsum6Rx));
    v
}

fn vxlan_attrs(p: &TunnelParams) -> Vec<InfoVxlan> {
    let mut v = Vec::with_capacity(10);
    match p.ttl {
        // The kernel's policy for IFLA_VXLAN_TTL_INHERIT is NLA_FLAG.
        Ttl::Inherit => v.push(InfoVxlan::TtlInheritFlag),
        Ttl::Fixed(n) => v.push(InfoVxlan::Ttl(n)),
        Ttl::Auto => {}
    }
    let c = p.checksums;
    v.extend(c.udp_csum.map(InfoVxlan::UDPCsum));
    v.extend(c.udp6_zero_csum_tx.map(InfoVxlan::UDPZeroCsumTX));
    v.extend(c.udp6_zero_csum_rx.map(InfoVxlan::UDPZeroCsumRX));
    v.push(InfoVxlan::Id(p.vni));
    match p.local {
        Some(IpAddr::V4(a)) => v.push(InfoVxlan::Local(a)),
        Some(IpAddr::V6(a)) => v.push(InfoVxlan::Local6(a)),
        None => {}
    }
    v.push(match p.remote {
        IpAddr::V4(a) => InfoVxlan::Group(a),
        IpAddr::V6(a) => InfoVxlan::Group6(a),
    });
    // iproute2 always sends `learning` (on unless `nolearning`).
    v.push(InfoVxlan::Learning(true));
    v.push(InfoVxlan::Port(p.port));
    v
}

fn info_kind(kind: TunnelKind) -> InfoKind {
    match kind {
        TunnelKind::Geneve => InfoKind::Geneve,
        TunnelKind::Vxlan => InfoKind::Vxlan,
    }
}

/// `RTM_NEWLINK` creating the tunnel: `ip link add NAME [netns NS] type KIND
/// id VNI remote ADDR [local ADDR] dstport PORT [ttl ..] [csum flags]`.
///
/// With `netns_fd`, the link is created in the namespace of the socket that
/// sends it (its UDP socket lives there) and then moved to the namespace the
/// descriptor refers to (`IFLA_NET_NS_FD`). MTU, addresses and up are set
/// by separate requests afterwards, as `ip` does.
pub fn new_link(name: &str, params: &TunnelParams, netns_fd: Option<RawFd>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    if let Some(fd) = netns_fd {
        msg.attributes.push(LinkAttribute::NetNsFd(fd));
    }
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(info_kind(params.kind)),
        LinkInfo::Data(info_data(params)),
    ]));
    msg
}

/// `RTM_NEWLINK` changing an existing link: `ip link set dev INDEX [mtu N]
/// [up|down]`.
pub fn set_link(index: u32, mtu: Option<u32>, up: Option<bool>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    if let Some(up) = up {
        msg.header.change_mask = LinkFlags::Up;
        if up {
            msg.header.flags = LinkFlags::Up;
        }
    }
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    msg
}

/// `RTM_DELLINK`: `ip link del dev INDEX`.
pub fn del_link(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

/// `RTM_GETLINK` dump request: `ip link show`.
pub fn dump_links() -> LinkMessage {
    LinkMessage::default()
}

/// `RTM_NEWADDR` / `RTM_DELADDR` body: `ip addr add|del ADDR/LEN dev INDEX`.
/// Like iproute2, both `IFA_LOCAL` and `IFA_ADDRESS` carry the address.
pub fn address(index: u32, a: IfAddr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = match a.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = a.prefix_len;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(a.addr));
    msg.attributes.push(AddressAttribute::Address(a.addr));
    msg
}

/// `RTM_GETADDR` dump request: `ip addr show`.
pub fn dump_addresses() -> AddressMessage {
    AddressMessage::default()
}

/// What a link dump says about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// The interface index.
    pub index: u32,
    /// The interface name.
    pub name: String,
    /// The link type (`IFLA_INFO_KIND`), e.g. `vxlan`, `veth`; `None` for
    /// links without one (loopback, physical devices).
    pub kind: Option<String>,
    /// For Geneve and VXLAN links, their parameters as the kernel reports
    /// them (every checksum flag is `Some`).
    pub params: Option<TunnelParams>,
    /// The MTU.
    pub mtu: Option<u32>,
    /// Whether the link is administratively up.
    pub up: bool,
    /// Its addresses (filled from an address dump, not the link dump).
    pub addresses: Vec<IfAddr>,
}

impl LinkState {
    /// Builds the state from an `RTM_NEWLINK` dump entry; `None` if the
    /// entry has no name.
    pub fn from_message(msg: &LinkMessage) -> Option<Self> {
        let mut name = None;
        let mut mtu = None;
        let mut kind = None;
        let mut params = None;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Geneve(g)) => params = geneve_params(g),
                            LinkInfo::Data(InfoData::Vxlan(x)) => params = vxlan_params(x),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Self {
            index: msg.header.index,
            name: name?,
            kind,
            params,
            mtu,
            up: msg.header.flags.contains(LinkFlags::Up),
            addresses: Vec::new(),
        })
    }
}

/// Parses a Geneve `IFLA_INFO_DATA` (from the kernel or from a request).
/// `None` for links without a unicast remote (e.g. `external` ones).
pub fn geneve_params(attrs: &[InfoGeneve]) -> Option<TunnelParams> {
    let (mut vni, mut remote, mut local, mut port) = (None, None, None, None);
    let (mut ttl, mut inherit) = (0u8, false);
    let mut c = Checksums::default();
    for a in attrs {
        match a {
            InfoGeneve::Id(v) => vni = Some(*v),
            InfoGeneve::Remote(r) => remote = Some(IpAddr::V4(*r)),
            InfoGeneve::Remote6(r) => remote = Some(IpAddr::V6(*r)),
            InfoGeneve::Local(l) => local = Some(IpAddr::V4(*l)),
            InfoGeneve::Local6(l) => local = Some(IpAddr::V6(*l)),
            InfoGeneve::Port(p) => port = Some(*p),
            InfoGeneve::Ttl(t) => ttl = *t,
            InfoGeneve::TtlInherit(b) => inherit = *b,
            InfoGeneve::UdpCsum(b) => c.udp_csum = Some(*b),
            InfoGeneve::UdpZeroCsum6Tx(b) => c.udp6_zero_csum_tx = Some(*b),
            InfoGeneve::UdpZeroCsum6Rx(b) => c.udp6_zero_csum_rx = Some(*b),
            _ => {}
        }
    }
    Some(TunnelParams {
        kind: TunnelKind::Geneve,
        vni: vni?,
        remote: remote?,
        local: local.filter(|l: &IpAddr| !l.is_unspecified()),
        port: port?,
        ttl: ttl_of(ttl, inherit),
        checksums: c,
    })
}

/// Parses a VXLAN `IFLA_INFO_DATA` (from the kernel or from a request).
/// `None` for links without a unicast remote (multicast or `external`).
pub fn vxlan_params(attrs: &[InfoVxlan]) -> Option<TunnelParams> {
    let (mut vni, mut remote, mut local, mut port) = (None, None, None, None);
    let (mut ttl, mut inherit) = (0u8, false);
    let mut c = Checksums::default();
    for a in attrs {
        match a {
            InfoVxlan::Id(v) => vni = Some(*v),
            InfoVxlan::Group(r) => remote = Some(IpAddr::V4(*r)),
            InfoVxlan::Group6(r) => remote = Some(IpAddr::V6(*r)),
            InfoVxlan::Local(l) => local = Some(IpAddr::V4(*l)),
            InfoVxlan::Local6(l) => local = Some(IpAddr::V6(*l)),
            InfoVxlan::Port(p) => port = Some(*p),
            InfoVxlan::Ttl(t) => ttl = *t,
            InfoVxlan::TtlInherit(b) => inherit = *b != 0,
            InfoVxlan::TtlInheritFlag => inherit = true,
            InfoVxlan::UDPCsum(b) => c.udp_csum = Some(*b),
            InfoVxlan::UDPZeroCsumTX(b) => c.udp6_zero_csum_tx = Some(*b),
            InfoVxlan::UDPZeroCsumRX(b) => c.udp6_zero_csum_rx = Some(*b),
            _ => {}
        }
    }
    let remote = remote.filter(|r: &IpAddr| !r.is_multicast() && !r.is_unspecified())?;
    Some(TunnelParams {
        kind: TunnelKind::Vxlan,
        vni: vni?,
        remote,
        local: local.filter(|l: &IpAddr| !l.is_unspecified()),
        port: port?,
        ttl: ttl_of(ttl, inherit),
        checksums: c,
    })
}

fn ttl_of(ttl: u8, inherit: bool) -> Ttl {
    match (inherit, ttl) {
        (true, _) => Ttl::Inherit,
        (false, 0) => Ttl::Auto,
        (false, n) => Ttl::Fixed(n),
    }
}

/// The creation parameters in which `actual` (as the kernel reports it)
/// differs from `desired`; empty when the link can be kept. Checksum flags
/// left `None` in `desired` are not compared.
pub fn param_differences(desired: &TunnelParams, actual: &TunnelParams) -> Vec<&'static str> {
    let mut d = Vec::new();
    if desired.kind != actual.kind {
        d.push("kind");
    }
    if desired.vni != actual.vni {
        d.push("vni");
    }
    if desired.remote != actual.remote {
        d.push("remote");
    }
    if desired.local != actual.local {
        d.push("local");
    }
    if desired.port != actual.port {
        d.push("port");
    }
    if desired.ttl != actual.ttl {
        d.push("ttl");
    }
    let (w, h) = (desired.checksums, actual.checksums);
    let differs = |want: Option<bool>, have: Option<bool>| want.is_some() && want != have;
    if differs(w.udp_csum, h.udp_csum) {
        d.push("udpcsum");
    }
    if differs(w.udp6_zero_csum_tx, h.udp6_zero_csum_tx) {
        d.push("udp6zerocsumtx");
    }
    if differs(w.udp6_zero_csum_rx, h.udp6_zero_csum_rx) {
        d.push("udp6zerocsumrx");
    }
    d
}

/// Istio 1.19's port choice: the first port at or above `from` that no
/// other tunnel link of the same kind uses. Links named in `exclude` (the
/// ones about to be reconciled) do not count. `None` if every port is taken.
pub fn first_free_port(
    links: &[LinkState],
    kind: TunnelKind,
    from: u16,
    exclude: &[&str],
) -> Option<u16> {
    let used: Vec<u16> = links
        .iter()
        .filter(|l| !exclude.contains(&l.name.as_str()))
        .filter_map(|l| l.params.as_ref())
        .filter(|p| p.kind == kind)
        .map(|p| p.port)
        .collect();
    (from..=u16::MAX).find(|p| !used.contains(p))
}

/// The addresses to add to and remove from a link that has `have`, so that
/// it ends up with exactly `t.addresses` (plus the kernel's own IPv6
/// link-local address).
pub(crate) fn addresses_to_change(t: &Tunnel, have: &[IfAddr]) -> (Vec<IfAddr>, Vec<IfAddr>) {
    let add = t
        .addresses
        .iter()
        .filter(|a| !have.contains(a))
        .copied()
        .collect();
    let remove = have
        .iter()
        .filter(|a| !t.addresses.contains(a))
        // The kernel's own IPv6 link-local address is not ours to remove.
        .filter(|a| !is_v6_link_local(a.addr))
        .copied()
        .collect();
    (add, remove)
}

fn is_v6_link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn params(kind: TunnelKind) -> TunnelParams {
        Tunnel::new("t", kind, 1000, Ipv4Addr::new(10, 0, 0, 2).into())
            .port(6081)
            .params
    }

    #[test]
    fn request_params_round_trip_through_the_parser() {
        for kind in [TunnelKind::Geneve, TunnelKind::Vxlan] {
            for ttl in [Ttl::Auto, Ttl::Inherit, Ttl::Fixed(64)] {
                let mut p = params(kind);
                p.ttl = ttl;
                p.checksums.udp_csum = Some(true);
                let parsed = match info_data(&p) {
                    InfoData::Geneve(g) => geneve_params(&g),
                    InfoData::Vxlan(x) => vxlan_params(&x),
                    other => panic!("unexpected {other:?}"),
                };
                assert_eq!(parsed.as_ref(), Some(&p), "{kind} {ttl:?}");
                assert!(param_differences(&p, &p).is_empty());
            }
        }
    }

    #[test]
    fn differences_name_the_parameter() {
        let want = params(TunnelKind::Vxlan);
        let mut have = want.clone();
        have.remote = Ipv6Addr::LOCALHOST.into();
        have.port = 4789;
        assert_eq!(param_differences(&want, &have), ["remote", "port"]);
        // Unset checksum wishes accept whatever the kernel chose.
        let mut have = want.clone();
        have.checksums.udp6_zero_csum_rx = Some(true);
        assert!(param_differences(&want, &have).is_empty());
        let mut strict = want.clone();
        strict.checksums.udp6_zero_csum_rx = Some(false);
        assert_eq!(param_differences(&strict, &have), ["udp6zerocsumrx"]);
    }

    #[test]
    fn set_link_carries_mtu_and_up_flag() {
        let m = set_link(7, Some(1410), Some(true));
        assert_eq!(m.header.index, 7);
        assert_eq!(m.header.flags, LinkFlags::Up);
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert_eq!(m.attributes, [LinkAttribute::Mtu(1410)]);
        let down = set_link(7, None, Some(false));
        assert!(down.header.flags.is_empty());
        assert_eq!(down.header.change_mask, LinkFlags::Up);
        // 16-byte ifinfomsg + one 8-byte attribute.
        assert_eq!(m.buffer_len(), 24);
    }

    #[test]
    fn first_free_port_skips_other_links_of_the_same_kind() {
        let link = |name: &str, kind, port| LinkState {
            index: 1,
            name: name.into(),
            kind: Some("x".into()),
            params: Some(TunnelParams {
                port,
                ..params(kind)
            }),
            mtu: None,
            up: true,
            addresses: vec![],
        };
        let links = [
            link("other0", TunnelKind::Geneve, 6081),
            link("other1", TunnelKind::Geneve, 6082),
            link("istioin", TunnelKind::Geneve, 6083),
            link("vx", TunnelKind::Vxlan, 6083),
        ];
        let g = TunnelKind::Geneve;
        assert_eq!(first_free_port(&[], g, 6081, &[]), Some(6081));
        assert_eq!(first_free_port(&links, g, 6081, &[]), Some(6084));
        assert_eq!(first_free_port(&links, g, 6081, &["istioin"]), Some(6083));
        assert_eq!(
            first_free_port(&links, TunnelKind::Vxlan, 6081, &[]),
            Some(6081)
        );
        let full = [link("a", g, u16::MAX)];
        assert_eq!(first_free_port(&full, g, u16::MAX, &[]), None);
    }

    #[test]
    fn address_reconcile_keeps_link_local() {
        let t = Tunnel::new("t", TunnelKind::Vxlan, 1, Ipv4Addr::new(10, 0, 0, 2).into())
            .address(IfAddr::new(Ipv4Addr::new(192, 168, 126, 1), 30));
        let have = [
            IfAddr::new(Ipv4Addr::new(192, 168, 1, 1), 24),
            IfAddr::new("fe80::1".parse::<Ipv6Addr>().expect("v6"), 64),
        ];
        let (add, remove) = addresses_to_change(&t, &have);
        assert_eq!(add, t.addresses);
        assert_eq!(remove, [have[0]]);
    }
}
