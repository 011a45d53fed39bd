//! The desired tunnel, as plain data, and its validation.
//!
//! A [`Tunnel`] says everything about one link: the device parameters that
//! the kernel fixes at creation ([`TunnelParams`]: kind, VNI, remote, local,
//! port, TTL, checksum flags) and the settings that can change in place
//! (MTU, addresses, up, `rp_filter`, `accept_local`). Nothing here touches
//! the kernel; [`Tunnel::validate`] runs before any request is sent.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crate::error::{Error, Result};

/// Linux's `IFNAMSIZ` less the terminating NUL: the longest interface name.
pub const MAX_NAME_LEN: usize = 15;

/// The largest VNI: Geneve and VXLAN both carry 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Geneve's IANA port, and the first one Istio 1.19 tries.
pub const GENEVE_PORT: u16 = 6081;

/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;

/// The link type of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TunnelKind {
    /// Geneve (`ip link add ... type geneve`), what Istio uses. Needs
    /// `CONFIG_GENEVE` in the kernel.
    Geneve,
    /// VXLAN (`ip link add ... type vxlan`): the same point-to-point L2
    /// tunnel for kernels without Geneve.
    Vxlan,
}

impl TunnelKind {
    /// The kernel's name for the link type (`IFLA_INFO_KIND`).
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Geneve => "geneve",
            TunnelKind::Vxlan => "vxlan",
        }
    }
}

impl fmt::Display for TunnelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TTL of the outer (underlay) packets, as `ip link ... ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Ttl {
    /// `ttl auto`: the kernel's default (the route's hop limit). What Istio's
    /// links show.
    #[default]
    Auto,
    /// `ttl inherit`: copy the inner packet's TTL.
    Inherit,
    /// `ttl N`, 1..=255.
    Fixed(u8),
}

/// UDP checksum settings, as `ip link`'s `[no]udpcsum`, `[no]udp6zerocsumtx`
/// and `[no]udp6zerocsumrx`.
///
/// `None` leaves a flag at the kernel's default: the attribute is not sent
/// (as iproute2 does when the word is not on its command line) and
/// [`reconcile`](crate::reconcile) does not compare it. The kernel's defaults
/// for Geneve are what `ip -d link` shows for Istio's links:
/// `noudpcsum udp6zerocsumrx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Checksums {
    /// Compute UDP checksums on IPv4 outer packets (`udpcsum`).
    pub udp_csum: Option<bool>,
    /// Send zero UDP checksums on IPv6 outer packets (`udp6zerocsumtx`).
    pub udp6_zero_csum_tx: Option<bool>,
    /// Accept zero UDP checksums on IPv6 outer packets (`udp6zerocsumrx`).
    pub udp6_zero_csum_rx: Option<bool>,
}

/// The parameters the kernel fixes when a tunnel link is created. Changing
/// any of them means replacing the link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TunnelParams {
    /// Geneve or VXLAN.
    pub kind: TunnelKind,
    /// The virtual network identifier, 0..=2^24-1 (`id`).
    pub vni: u32,
    /// The far end's underlay address (`remote`).
    pub remote: IpAddr,
    /// The local underlay address (`local`), same family as `remote`. VXLAN
    /// only: iproute2 6.1 and Istio never set one for Geneve.
    pub local: Option<IpAddr>,
    /// The UDP destination port (`dstport`), never 0.
    pub port: u16,
    /// Outer TTL.
    pub ttl: Ttl,
    /// Outer UDP checksum flags.
    pub checksums: Checksums,
}

/// An address on a tunnel link, `ADDR/PREFIX` as `ip addr add`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfAddr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub prefix_len: u8,
}

impl IfAddr {
    /// `addr/prefix_len`.
    pub fn new(addr: impl Into<IpAddr>, prefix_len: u8) -> Self {
        Self {
            addr: addr.into(),
            prefix_len,
        }
    }
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A desired tunnel link: name, creation parameters, and in-place settings.
///
/// ```
/// use ambit_tunnel::{IfAddr, Tunnel, TunnelKind};
/// use std::net::Ipv4Addr;
///
/// // ip link add istioin type vxlan id 1000 remote 10.244.0.5 dstport 6081
/// // ip addr add 192.168.126.1/30 dev istioin; ip link set istioin up
/// let t = Tunnel::new("istioin", TunnelKind::Vxlan, 1000, Ipv4Addr::new(10, 244, 0, 5).into())
///     .port(6081)
///     .address(IfAddr::new(Ipv4Addr::new(192, 168, 126, 1), 30));
/// assert!(t.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// The interface name, at most 15 bytes.
    pub name: String,
    /// What the kernel fixes at creation.
    pub params: TunnelParams,
    /// The link MTU; `None` keeps the kernel's default (Istio never set one).
    pub mtu: Option<u32>,
    /// Addresses on the link. Reconcile adds missing ones and removes others.
    pub addresses: Vec<IfAddr>,
    /// Whether the link is administratively up.
    pub up: bool,
    /// `net.ipv4.conf.<name>.rp_filter`, if it should be set.
    pub rp_filter: Option<u8>,
    /// `net.ipv4.conf.<name>.accept_local`, if it should be set.
    pub accept_local: Option<bool>,
}

impl Tunnel {
    /// A tunnel with the kind's IANA port (6081 for Geneve, 4789 for VXLAN),
    /// `ttl auto`, kernel-default checksums, no addresses, default MTU, up.
    pub fn new(name: impl Into<String>, kind: TunnelKind, vni: u32, remote: IpAddr) -> Self {
        let port = match kind {
            TunnelKind::Geneve => GENEVE_PORT,
            TunnelKind::Vxlan => VXLAN_PORT,
        };
        Self {
            name: name.into(),
            params: TunnelParams {
                kind,
                vni,
                remote,
                local: None,
                port,
                ttl: Ttl::Auto,
                checksums: Checksums::default(),
            },
            mtu: None,
            addresses: Vec::new(),
            up: true,
            rp_filter: None,
            accept_local: None,
        }
    }

    /// Sets the UDP destination port.
    pub fn port(mut self, port: u16) -> Self {
        self.params.port = port;
        self
    }

    /// Sets the local underlay address (VXLAN).
    pub fn local(mut self, local: IpAddr) -> Self {
        self.params.local = Some(local);
        self
    }

    /// Sets the outer TTL.
    pub fn ttl(mut self, ttl: Ttl) -> Self {
        self.params.ttl = ttl;
        self
    }

    /// Sets the UDP checksum flags.
    pub fn checksums(mut self, checksums: Checksums) -> Self {
        self.params.checksums = checksums;
        self
    }

    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Adds an address.
    pub fn address(mut self, addr: IfAddr) -> Self {
        self.addresses.push(addr);
        self
    }

    /// Whether the link should be up (the default) or down.
    pub fn up(mut self, up: bool) -> Self {
        self.up = up;
        self
    }

    /// Sets `rp_filter` and `accept_local` for the link, as Istio does
    /// (`rp_filter=0`, `accept_local=1` on the host side).
    pub fn sysctls(mut self, rp_filter: Option<u8>, accept_local: Option<bool>) -> Self {
        self.rp_filter = rp_filter;
        self.accept_local = accept_local;
        self
    }

    /// Checks every field without touching the kernel. The error names the
    /// link and the offending item.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        let invalid = |item: &'static str, reason: String| Error::Invalid {
            link: self.name.clone(),
            item,
            reason,
        };
        let p = &self.params;
        if p.vni > MAX_VNI {
            return Err(invalid(
                "vni",
                format!("{} is larger than 2^24-1 ({MAX_VNI})", p.vni),
            ));
        }
        if p.port == 0 {
            return Err(invalid("port", "0 is not a usable udp port".into()));
        }
        check_unicast(p.remote).map_err(|why| invalid("remote", format!("{}: {why}", p.remote)))?;
        if let Some(local) = p.local {
            if p.kind == TunnelKind::Geneve {
                return Err(invalid(
                    "local",
                    "a local address is only supported for vxlan".into(),
                ));
            }
            if local.is_ipv4() != p.remote.is_ipv4() {
                return Err(invalid(
                    "local",
                    format!(
                        "{local} and remote {} are of different address families",
                        p.remote
                    ),
                ));
            }
            check_unicast(local).map_err(|why| invalid("local", format!("{local}: {why}")))?;
        }
        if p.ttl == Ttl::Fixed(0) {
            return Err(invalid(
                "ttl",
                "0 is not a fixed ttl (use Ttl::Auto)".into(),
            ));
        }
        if let Some(mtu) = self.mtu
            && !(68..=65_535).contains(&mtu)
        {
            return Err(invalid("mtu", format!("{mtu} is outside 68..=65535")));
        }
        for a in &self.addresses {
            let max = if a.addr.is_ipv4() { 32 } else { 128 };
            if a.prefix_len > max {
                return Err(invalid("address", format!("{a}: prefix longer than {max}")));
            }
            if a.addr.is_unspecified() || a.addr.is_multicast() {
                return Err(invalid("address", format!("{a}: not a unicast address")));
            }
        }
        if let Some(rp) = self.rp_filter
            && rp > 2
        {
            return Err(invalid("rp_filter", format!("{rp} is not 0, 1 or 2")));
        }
        Ok(())
    }
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "is empty".to_owned()
    } else if name.len() > MAX_NAME_LEN {
        format!(
            "is {} bytes, longer than the kernel's limit of {MAX_NAME_LEN}",
            name.len()
        )
    } else if name == "." || name == ".." {
        "is reserved".to_owned()
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        "contains '/', ':', NUL or whitespace".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::Invalid {
        link: name.chars().take(64).collect(),
        item: "name",
        reason,
    })
}

fn check_unicast(a: IpAddr) -> std::result::Result<(), &'static str> {
    if a.is_unspecified() {
        Err("unspecified address")
    } else if a.is_multicast() || a == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Err("not a unicast address (multicast groups are not supported)")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn t() -> Tunnel {
        Tunnel::new(
            "istioin",
            TunnelKind::Vxlan,
            1000,
            Ipv4Addr::new(10, 0, 0, 2).into(),
        )
    }

    fn item_of(r: Result<()>) -> &'static str {
        match r {
            Err(Error::Invalid { item, .. }) => item,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn good_tunnel_validates() {
        assert!(t().validate().is_ok());
        assert!(
            t().local(Ipv4Addr::new(10, 0, 0, 1).into())
                .ttl(Ttl::Fixed(64))
                .mtu(1410)
                .address(IfAddr::new(Ipv4Addr::new(192, 168, 126, 1), 30))
                .validate()
                .is_ok()
        );
        let mut long = t();
        long.name = "a".repeat(15);
        assert!(long.validate().is_ok());
    }

    #[test]
    fn bad_input_names_the_item() {
        let mut x = t();
        x.name = "a".repeat(16);
        let e = x.validate().expect_err("16-byte name");
        assert!(e.to_string().contains("longer than"), "{e}");
        assert_eq!(item_of(Err(e)), "name");

        let mut x = t();
        x.params.vni = MAX_VNI + 1;
        let e = x.validate().expect_err("vni");
        assert!(e.to_string().contains("istioin"), "{e}");
        assert!(e.to_string().contains("vni"), "{e}");

        assert_eq!(item_of(t().port(0).validate()), "port");
        assert_eq!(
            item_of(t().local(Ipv6Addr::LOCALHOST.into()).validate()),
            "local"
        );
        let mut geneve_local = t().local(Ipv4Addr::new(10, 0, 0, 1).into());
        geneve_local.params.kind = TunnelKind::Geneve;
        assert_eq!(item_of(geneve_local.validate()), "local");
        let mut x = t();
        x.params.remote = Ipv4Addr::UNSPECIFIED.into();
        assert_eq!(item_of(x.validate()), "remote");
        assert_eq!(item_of(t().ttl(Ttl::Fixed(0)).validate()), "ttl");
        assert_eq!(item_of(t().mtu(10).validate()), "mtu");
        assert_eq!(
            item_of(
                t().address(IfAddr::new(Ipv4Addr::new(1, 2, 3, 4), 33))
                    .validate()
            ),
            "address"
        );
        for bad in ["", "a b", "a/b", "a:b", ".."] {
            assert_eq!(item_of(validate_name(bad)), "name", "{bad:?}");
        }
    }
}
