//! Policy routing over rtnetlink: ip rules and routes in any table.
//!
//! The types mirror `ip rule` and `ip route`; their `Display` prints the
//! equivalent command. [`Rtnl`] applies them idempotently: adding what
//! exists and deleting what is absent both succeed.

use std::fmt;
use std::net::IpAddr;

use ambit_netlink::{NETLINK_ROUTE, Socket as NlSocket};
use ambit_netns::NetNs;
use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::rule::{RuleAction as NlRuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Error, Result};
use crate::mark::Mark;

mod rtnl;

pub use rtnl::Rtnl;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;

/// The index of the loopback device `lo` in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 (`ip -4`).
    V4,
    /// IPv6 (`ip -6`).
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }
    fn af(self) -> AddressFamily {
        match self {
            Self::V4 => AddressFamily::Inet,
            Self::V6 => AddressFamily::Inet6,
        }
    }
    fn flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }
}

/// Checks that a table may be managed: not 0 (unspec), 253 (default),
/// 254 (main) or 255 (local).
pub fn check_table(table: u32) -> Result<u32> {
    if table == 0 || (253..=255).contains(&table) {
        return Err(Error::InvalidTable { table });
    }
    Ok(table)
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// `lookup TABLE`.
    Lookup(u32),
    /// `goto PRIORITY`: continue at the rule with that priority.
    Goto(u32),
}

/// An ip rule: `ip rule add priority P [fwmark V/M] (lookup T | goto G)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpRule {
    /// Address family.
    pub family: Family,
    /// Priority (preference); lower runs first.
    pub priority: u32,
    /// Optional fwmark match.
    pub fwmark: Option<Mark>,
    /// The action.
    pub action: RuleAction,
}

impl IpRule {
    /// `ip rule add priority P lookup T` (IPv4). Rejects reserved tables.
    pub fn lookup(priority: u32, table: u32) -> Result<Self> {
        Ok(Self {
            family: Family::V4,
            priority,
            fwmark: None,
            action: RuleAction::Lookup(check_table(table)?),
        })
    }

    /// `ip rule add priority P goto G` (IPv4).
    pub fn goto(priority: u32, target: u32) -> Result<Self> {
        if target <= priority {
            return Err(Error::Invalid {
                what: format!("rule {priority}"),
                reason: format!("goto {target} must point to a later priority"),
            });
        }
        Ok(Self {
            family: Family::V4,
            priority,
            fwmark: None,
            action: RuleAction::Goto(target),
        })
    }

    /// Adds an fwmark match.
    pub fn fwmark(mut self, mark: Mark) -> Self {
        self.fwmark = Some(mark);
        self
    }

    /// The same rule for another family.
    pub fn family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }

    fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = self.family.af();
        m.attributes.push(RuleAttribute::Priority(self.priority));
        if let Some(mark) = self.fwmark {
            m.attributes.push(RuleAttribute::FwMark(mark.value()));
            m.attributes.push(RuleAttribute::FwMask(mark.mask()));
        }
        match self.action {
            RuleAction::Lookup(t) => {
                m.header.action = NlRuleAction::ToTable;
                m.header.table = u8::try_from(t).unwrap_or(0);
                m.attributes.push(RuleAttribute::Table(t));
            }
            RuleAction::Goto(g) => {
                m.header.action = NlRuleAction::Goto;
                m.attributes.push(RuleAttribute::Goto(g));
            }
        }
        m
    }

    fn from_message(m: &RuleMessage) -> Option<Self> {
        let family = match m.header.family {
            AddressFamily::Inet => Family::V4,
            AddressFamily::Inet6 => Family::V6,
            _ => return None,
        };
        let (mut prio, mut mark, mut mask, mut table, mut goto) = (0, None, None, None, None);
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => prio = *p,
                RuleAttribute::FwMark(v) => mark = Some(*v),
                RuleAttribute::FwMask(v) => mask = Some(*v),
                RuleAttribute::Table(t) => table = Some(*t),
                RuleAttribute::Goto(g) => goto = Some(*g),
                // Selectors this type does not model: not one of ours.
                RuleAttribute::Source(_)
                | RuleAttribute::Destination(_)
                | RuleAttribute::Iifname(_)
                | RuleAttribute::Oifname(_)
                | RuleAttribute::UidRange(_)
                | RuleAttribute::IpProtocol(_)
                | RuleAttribute::SourcePortRange(_)
                | RuleAttribute::DestinationPortRange(_) => return None,
                _ => {}
            }
        }
        if m.header.src_len != 0 || m.header.dst_len != 0 || m.header.tos != 0 {
            return None;
        }
        let action = match m.header.action {
            NlRuleAction::ToTable => RuleAction::Lookup(table.unwrap_or(u32::from(m.header.table))),
            NlRuleAction::Goto => RuleAction::Goto(goto?),
            _ => return None,
        };
        let fwmark = match (mark, mask) {
            (Some(v), Some(m)) if m != 0 => Mark::new(v, m).ok(),
            (Some(v), None) if v != 0 => Some(Mark::exact(v)),
            _ => None,
        };
        Some(Self {
            family,
            priority: prio,
            fwmark,
            action,
        })
    }
}

impl fmt::Display for IpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ip {} rule add priority {}",
            self.family.flag(),
            self.priority
        )?;
        if let Some(m) = self.fwmark {
            write!(f, " fwmark {:#x}/{:#x}", m.value(), m.mask())?;
        }
        match self.action {
            RuleAction::Lookup(t) => write!(f, " lookup {t}"),
            RuleAction::Goto(g) => write!(f, " goto {g}"),
        }
    }
}

/// The kind of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// A normal route via a gateway and/or device.
    Unicast,
    /// `local`: deliver locally (used with TPROXY: `local default dev lo`).
    Local,
}

/// A route's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `scope global`.
    Global,
    /// `scope link`: the destination is on the link.
    Link,
    /// `scope host`.
    Host,
}

/// A route: `ip route add [local] DST [via GW] [dev DEV] [scope S] [onlink] [src IP] table T`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination prefix (`0.0.0.0/0` is `default`).
    pub dst: IpNet,
    /// Routing table.
    pub table: u32,
    /// Unicast or local.
    pub kind: RouteKind,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output device.
    pub dev: Option<String>,
    /// Scope; when `None` the kernel's default for the route is used
    /// (link for device-only routes, host for local, global otherwise).
    pub scope: Option<Scope>,
    /// Use the gateway even if it is not on the device's subnets.
    pub onlink: bool,
    /// Preferred source address.
    pub src: Option<IpAddr>,
}

impl Route {
    /// A unicast route to `dst` in `table` (rejects reserved tables).
    pub fn new(dst: IpNet, table: u32) -> Result<Self> {
        Ok(Self {
            dst: dst.trunc(),
            table: check_table(table)?,
            kind: RouteKind::Unicast,
            gateway: None,
            dev: None,
            scope: None,
            onlink: false,
            src: None,
        })
    }

    /// `local DST dev lo table T`.
    pub fn local(dst: IpNet, table: u32) -> Result<Self> {
        let mut r = Self::new(dst, table)?;
        r.kind = RouteKind::Local;
        r.dev = Some("lo".into());
        Ok(r)
    }

    /// `via GW`.
    pub fn via(mut self, gw: IpAddr) -> Result<Self> {
        if Family::of(gw) != self.family() {
            return Err(Error::FamilyMismatch {
                item: format!("route {} table {}", self.dst, self.table),
                addr: gw,
            });
        }
        self.gateway = Some(gw);
        Ok(self)
    }

    /// `dev DEV`.
    pub fn dev(mut self, dev: impl Into<String>) -> Self {
        self.dev = Some(dev.into());
        self
    }

    /// `scope S`.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }

    /// `onlink`.
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    /// `src IP`.
    pub fn src(mut self, src: IpAddr) -> Result<Self> {
        if Family::of(src) != self.family() {
            return Err(Error::FamilyMismatch {
                item: format!("route {} table {}", self.dst, self.table),
                addr: src,
            });
        }
        self.src = Some(src);
        Ok(self)
    }

    /// The route's family.
    pub fn family(&self) -> Family {
        Family::of(self.dst.addr())
    }

    fn effective_scope(&self) -> Scope {
        match (self.scope, self.kind) {
            (Some(s), _) => s,
            (None, RouteKind::Local) => Scope::Host,
            (None, RouteKind::Unicast) if self.gateway.is_none() && self.dev.is_some() => {
                Scope::Link
            }
            _ => Scope::Global,
        }
    }

    fn message(&self, oif: Option<u32>) -> RouteMessage {
        let mut m = RouteMessage::default();
        let h = &mut m.header;
        h.address_family = self.family().af();
        h.destination_prefix_length = self.dst.prefix_len();
        h.table = u8::try_from(self.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        h.protocol = RouteProtocol::Boot;
        h.scope = match self.effective_scope() {
            Scope::Global => RouteScope::Universe,
            Scope::Link => RouteScope::Link,
            Scope::Host => RouteScope::Host,
        };
        h.kind = match self.kind {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Local => RouteType::Local,
        };
        if self.onlink {
            h.flags |= RouteFlags::Onlink;
        }
        m.attributes.push(RouteAttribute::Table(self.table));
        if self.dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    self.dst.addr(),
                )));
        }
        if let Some(gw) = self.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(i) = oif {
            m.attributes.push(RouteAttribute::Oif(i));
        }
        if let Some(src) = self.src {
            m.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        m
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ip {} route add ", self.family().flag())?;
        if self.kind == RouteKind::Local {
            f.write_str("local ")?;
        }
        if self.dst.prefix_len() == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        match self.scope {
            Some(Scope::Link) => f.write_str(" scope link")?,
            Some(Scope::Host) => f.write_str(" scope host")?,
            Some(Scope::Global) => f.write_str(" scope global")?,
            None => {}
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if let Some(s) = self.src {
            write!(f, " src {s}")?;
        }
        write!(f, " table {}", self.table)
    }
}

/// Decodes whole rtnetlink messages (header included), keeping the inner
/// messages (acks and other control messages carry none).
pub(crate) fn decode_replies(
    raw: &[Vec<u8>],
) -> std::result::Result<Vec<RouteNetlinkMessage>, String> {
    raw.iter()
        .map(|b| {
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(b)
                .map_err(|e| e.to_string())
                .map(|m| match m.payload {
                    NetlinkPayload::InnerMessage(i) => Some(i),
                    _ => None,
                })
        })
        .filter_map(|r| r.transpose())
        .collect()
}

/// The rules among decoded messages that this crate can express.
pub(crate) fn rules_from(msgs: &[RouteNetlinkMessage]) -> Vec<IpRule> {
    msgs.iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRule(r) => IpRule::from_message(r),
            _ => None,
        })
        .collect()
}

/// The routes among decoded messages that this crate can express, in any
/// table; `name_of` names output interfaces by index.
pub(crate) fn routes_from(
    msgs: &[RouteNetlinkMessage],
    name_of: &dyn Fn(u32) -> Option<String>,
) -> Vec<Route> {
    msgs.iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => parse_route(r, name_of),
            _ => None,
        })
        .collect()
}

/// A rule through its netlink message and back: what the kernel would
/// report for a rule this crate added.
pub(crate) fn rule_round_trip(rule: &IpRule) -> Option<IpRule> {
    IpRule::from_message(&rule.message())
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn parse_route(r: &RouteMessage, name_of: &dyn Fn(u32) -> Option<String>) -> Option<Route> {
    let family = match r.header.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    let kind = match r.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local => RouteKind::Local,
        _ => return None,
    };
    let mut table = u32::from(r.header.table);
    let (mut dst, mut gw, mut oif, mut src) = (None, None, None, None);
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = addr(d),
            RouteAttribute::Gateway(g) => gw = addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(s) => src = addr(s),
            _ => {}
        }
    }
    let unspecified: IpAddr = match family {
        Family::V4 => std::net::Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    let dst = IpNet::new(
        dst.unwrap_or(unspecified),
        r.header.destination_prefix_length,
    )
    .ok()?;
    Some(Route {
        dst,
        table,
        kind,
        gateway: gw,
        dev: oif.and_then(name_of),
        scope: Some(match r.header.scope {
            RouteScope::Link => Scope::Link,
            RouteScope::Host => Scope::Host,
            _ => Scope::Global,
        }),
        onlink: r.header.flags.contains(RouteFlags::Onlink),
        src,
    })
}

/// Whether a route read from the kernel satisfies a planned one: every
/// field the plan sets is equal; the kernel's defaults fill the rest.
pub fn route_satisfies(have: &Route, want: &Route) -> bool {
    have.dst == want.dst
        && have.table == want.table
        && have.kind == want.kind
        && have.gateway == want.gateway
        && (want.dev.is_none() || have.dev == want.dev)
        // IPv6 routes carry no scope (the kernel reports universe).
        && (want.family() == Family::V6 || have.scope == Some(want.effective_scope()))
        && have.onlink == want.onlink
        && have.src == want.src
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_tables_are_rejected() {
        for t in [0, 253, 254, 255] {
            let e = IpRule::lookup(100, t).expect_err("reserved");
            assert!(e.to_string().contains(&format!("table {t}")), "{e}");
            assert!(Route::new("0.0.0.0/0".parse().expect("net"), t).is_err());
        }
        assert!(IpRule::lookup(100, 100).is_ok());
        assert!(IpRule::lookup(100, 1000).is_ok());
    }

    #[test]
    fn display_matches_ip_syntax() {
        let r = IpRule::goto(100, 32766)
            .expect("rule")
            .fwmark(Mark::bits(0x200));
        assert_eq!(
            r.to_string(),
            "ip -4 rule add priority 100 fwmark 0x200/0x200 goto 32766"
        );
        let route = Route::new("0.0.0.0/0".parse().expect("net"), 101)
            .expect("route")
            .via("192.168.127.2".parse().expect("ip"))
            .expect("family")
            .dev("istioout");
        assert_eq!(
            route.to_string(),
            "ip -4 route add default via 192.168.127.2 dev istioout table 101"
        );
        let local = Route::local("0.0.0.0/0".parse().expect("net"), 100).expect("route");
        assert_eq!(
            local.to_string(),
            "ip -4 route add local default dev lo table 100"
        );
    }

    #[test]
    fn rule_message_round_trips() {
        for rule in [
            IpRule::lookup(101, 101)
                .expect("r")
                .fwmark(Mark::bits(0x100)),
            IpRule::goto(100, 32766)
                .expect("r")
                .fwmark(Mark::bits(0x200)),
            IpRule::lookup(103, 100).expect("r"),
            IpRule::lookup(20000, 1000)
                .expect("r")
                .fwmark(Mark::new(0x400, 0xfff).expect("m"))
                .family(Family::V6),
        ] {
            assert_eq!(IpRule::from_message(&rule.message()), Some(rule));
        }
    }

    #[test]
    fn family_mismatch_is_named() {
        let e = Route::new("10.0.0.0/8".parse().expect("net"), 100)
            .expect("route")
            .via("fd00::1".parse().expect("ip"))
            .expect_err("mismatch");
        assert!(e.to_string().contains("fd00::1"), "{e}");
        assert!(e.to_string().contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn goto_must_go_forward() {
        assert!(IpRule::goto(100, 50).is_err());
    }
}
