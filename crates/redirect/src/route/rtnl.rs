//! [`Rtnl`]: the rtnetlink session that applies, lists and deletes the
//! rules and routes of the parent module in one namespace.

use netlink_packet_route::address::{AddressAttribute, AddressMessage};

use super::*;

/// `EOPNOTSUPP` and `EAFNOSUPPORT` (Linux): no handler for the family.
const EOPNOTSUPP: i32 = 95;
const EAFNOSUPPORT: i32 = 97;

/// An rtnetlink session in one namespace.
pub struct Rtnl {
    sock: NlSocket,
}

impl fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rtnl").field("ns", &self.sock.ns()).finish()
    }
}

fn frame(msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

impl Rtnl {
    /// Opens an rtnetlink socket inside `ns` (or the caller's namespace).
    pub fn open(ns: Option<&NetNs>) -> Result<Self> {
        Ok(Self {
            sock: NlSocket::open(ns, NETLINK_ROUTE)?,
        })
    }

    /// Takes a `NETLINK_ROUTE` socket already open in the namespace.
    pub(crate) fn from_socket(sock: NlSocket) -> Self {
        Self { sock }
    }

    fn ns(&self) -> String {
        self.sock.ns().to_owned()
    }

    /// Sends one request per item and checks each ack: an error whose
    /// errno is in `ignore` counts as done, any other fails naming the
    /// item (`{what} `item``).
    fn transact_each<T: std::fmt::Display>(
        &mut self,
        msgs: &mut [Vec<u8>],
        items: &[T],
        ignore: &[i32],
        what: &str,
    ) -> Result<()> {
        let results = self.sock.transact(msgs)?;
        for (item, res) in items.iter().zip(results) {
            match res {
                Ok(()) => {}
                Err(e) if ignore.contains(&e.errno) => {}
                Err(e) => return Err(Error::nack(e, format!("{what} `{item}`"), &self.ns())),
            }
        }
        Ok(())
    }

    fn query(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let raw = self
            .sock
            .dump(frame(msg, flags))?
            .map_err(|e| Error::nack(e, op, &self.ns()))?;
        decode_replies(&raw).map_err(|reason| Error::Decode {
            op: op.to_owned(),
            reason,
        })
    }

    /// Whether the loopback device holds `::1`, that is, whether IPv6 is
    /// there and enabled in this namespace: `net.ipv6.conf.all.disable_ipv6`
    /// (or `lo`'s) takes `::1` away, and a down loopback has none. A
    /// `local ::/0 dev lo` route needs it. One address dump; a kernel
    /// without IPv6 answers that it does not know the family, which is a
    /// `false` here.
    pub fn loopback_has_ipv6(&mut self) -> Result<bool> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet6;
        let msgs = match self.query(
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_REQUEST | NLM_F_DUMP,
            "listing IPv6 addresses",
        ) {
            Ok(msgs) => msgs,
            Err(e) if matches!(e.errno(), Some(EOPNOTSUPP | EAFNOSUPPORT)) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(msgs.iter().any(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => {
                a.header.index == LOOPBACK_IFINDEX && holds_v6_loopback(a)
            }
            _ => false,
        }))
    }

    /// The index of interface `name`, like `ip link show NAME`.
    pub fn link_index(&mut self, name: &str) -> Result<u32> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let op = format!("looking up interface {name:?}");
        match self.query(RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST, &op) {
            Ok(v) => v
                .into_iter()
                .find_map(|m| match m {
                    RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                    _ => None,
                })
                .ok_or_else(|| Error::UnknownInterface {
                    name: name.to_owned(),
                    ns: self.ns(),
                }),
            Err(e) if matches!(e.errno(), Some(ENODEV)) => Err(Error::UnknownInterface {
                name: name.to_owned(),
                ns: self.ns(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Names of all interfaces, by index.
    pub fn link_names(&mut self) -> Result<Vec<(u32, String)>> {
        let msgs = self.query(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            "listing interfaces",
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some((l.header.index, n.clone())),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }

    /// Adds the rules; rules that already exist are left as they are.
    pub fn add_rules(&mut self, rules: &[IpRule]) -> Result<()> {
        let mut msgs: Vec<Vec<u8>> = rules
            .iter()
            .map(|r| {
                frame(
                    RouteNetlinkMessage::NewRule(r.message()),
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                )
            })
            .collect();
        self.transact_each(&mut msgs, rules, &[EEXIST], "adding rule")
    }

    /// Deletes the rules; rules that do not exist are ignored.
    pub fn del_rules(&mut self, rules: &[IpRule]) -> Result<()> {
        let mut msgs: Vec<Vec<u8>> = rules
            .iter()
            .map(|r| {
                frame(
                    RouteNetlinkMessage::DelRule(r.message()),
                    NLM_F_REQUEST | NLM_F_ACK,
                )
            })
            .collect();
        self.transact_each(&mut msgs, rules, &[ENOENT], "deleting rule")
    }

    /// Lists the rules of a family that this crate can express (priority,
    /// fwmark, lookup/goto), like `ip rule list`.
    pub fn rules(&mut self, family: Family) -> Result<Vec<IpRule>> {
        let mut m = RuleMessage::default();
        m.header.family = family.af();
        let msgs = self.query(
            RouteNetlinkMessage::GetRule(m),
            NLM_F_REQUEST | NLM_F_DUMP,
            "listing rules",
        )?;
        Ok(rules_from(&msgs))
    }

    /// The index of `r`'s device, looked up once per name for one call
    /// (`known`, `None` for a device that does not exist): a pod's IPv4 and
    /// IPv6 routes share `lo`.
    fn oif(&mut self, r: &Route, known: &mut Vec<(String, Option<u32>)>) -> Result<Option<u32>> {
        let Some(dev) = r.dev.as_deref() else {
            return Ok(None);
        };
        if dev == "lo" {
            // The loopback device is the first device of every namespace,
            // index 1 (the kernel's LOOPBACK_IFINDEX): no lookup.
            return Ok(Some(LOOPBACK_IFINDEX));
        }
        let index = match known.iter().find(|(n, _)| n == dev) {
            Some((_, i)) => *i,
            None => {
                let i = match self.link_index(dev) {
                    Ok(i) => Some(i),
                    Err(Error::UnknownInterface { .. }) => None,
                    Err(e) => return Err(e),
                };
                known.push((dev.to_owned(), i));
                i
            }
        };
        index.map(Some).ok_or_else(|| Error::UnknownInterface {
            name: dev.to_owned(),
            ns: self.ns(),
        })
    }

    /// Adds or replaces routes (`ip route replace`): the result is the
    /// route as given, whatever was there before.
    pub fn add_routes(&mut self, routes: &[Route]) -> Result<()> {
        let mut msgs = Vec::with_capacity(routes.len());
        let mut known = Vec::new();
        for r in routes {
            let oif = self.oif(r, &mut known)?;
            msgs.push(frame(
                RouteNetlinkMessage::NewRoute(r.message(oif)),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            ));
        }
        self.transact_each(&mut msgs, routes, &[], "adding route")
    }

    /// Deletes routes; absent routes (and routes whose device is gone) are ignored.
    pub fn del_routes(&mut self, routes: &[Route]) -> Result<()> {
        let mut msgs = Vec::with_capacity(routes.len());
        let mut items = Vec::with_capacity(routes.len());
        let mut known = Vec::new();
        for r in routes {
            let oif = match self.oif(r, &mut known) {
                Ok(o) => o,
                // The device is gone, and with it every route through it.
                Err(Error::UnknownInterface { .. }) => continue,
                Err(e) => return Err(e),
            };
            let mut m = r.message(oif);
            // Match any protocol and scope, as `ip route del` does.
            m.header.protocol = RouteProtocol::Unspec;
            m.header.scope = RouteScope::NoWhere;
            msgs.push(frame(
                RouteNetlinkMessage::DelRoute(m),
                NLM_F_REQUEST | NLM_F_ACK,
            ));
            items.push(r);
        }
        self.transact_each(&mut msgs, &items, &[ESRCH, ENOENT], "deleting route")
    }

    /// Lists the routes in `table`, like `ip route show table T`.
    pub fn routes(&mut self, family: Family, table: u32) -> Result<Vec<Route>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family.af();
        // With strict checking the kernel dumps only the table asked for,
        // so listing a small table does not cost the size of the others
        // (table 100 holds a route per enrolled pod). Without it (kernels
        // before 4.20) every table comes back and is filtered below.
        m.attributes.push(RouteAttribute::Table(table));
        let strict = self.sock.set_strict_check(true).is_ok();
        let msgs = self.query(
            RouteNetlinkMessage::GetRoute(m),
            NLM_F_REQUEST | NLM_F_DUMP,
            "listing routes",
        );
        if strict {
            self.sock.set_strict_check(false)?;
        }
        let msgs = match msgs {
            // A strict dump of a table that does not exist (no route was
            // ever put in it) is ENOENT: no routes.
            Err(e) if strict && e.errno() == Some(2) => return Ok(Vec::new()),
            m => m?,
        };
        let names = self.link_names()?;
        let name_of = |i: u32| names.iter().find(|(x, _)| *x == i).map(|(_, n)| n.clone());
        Ok(routes_from(&msgs, &name_of)
            .into_iter()
            .filter(|r| r.table == table)
            .collect())
    }

    /// Deletes every route in `table` (`ip route flush table T`).
    pub fn flush_table(&mut self, family: Family, table: u32) -> Result<()> {
        let routes = self.routes(family, check_table(table)?)?;
        self.del_routes(&routes)
    }
}

/// Whether an address message carries `::1`.
fn holds_v6_loopback(a: &AddressMessage) -> bool {
    a.attributes
        .iter()
        .any(|at| matches!(at, AddressAttribute::Address(IpAddr::V6(ip)) if ip.is_loopback()))
}
