//! Tunnel links in one namespace: list, create, change, delete, reconcile.

use std::os::fd::{AsFd, AsRawFd};

use ambit_netlink::{NETLINK_ROUTE, Socket};
use ambit_netns::NetNs;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressAttribute;

use crate::codec::{self, CHANGE_FLAGS, CREATE_FLAGS, DUMP_FLAGS, LinkState};
use crate::error::{Error, Result};
use crate::spec::{IfAddr, Tunnel, TunnelKind, validate_name};

/// `EOPNOTSUPP`: the kernel has no `rtnl_link_ops` for the requested kind.
const EOPNOTSUPP: i32 = 95;
/// `ENODEV`: the link vanished between lookup and delete.
const ENODEV: i32 = 19;

/// What [`reconcile`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// The link did not exist and was created.
    Created,
    /// The link matched in every respect; nothing was sent but reads.
    Unchanged,
    /// The link was kept, but its MTU, addresses, up state or sysctls were
    /// changed in place; the list names which.
    Updated(Vec<&'static str>),
    /// The link existed with other creation parameters (named in the list)
    /// and was deleted and created again.
    Replaced(Vec<&'static str>),
}

/// The result of reconciling one tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The link's interface index after the call.
    pub index: u32,
    /// What was done.
    pub action: Action,
}

/// What a request is about, for error messages.
#[derive(Debug, Clone, Copy)]
struct Ctx<'a> {
    /// The link name, or `*`.
    link: &'a str,
    /// The operation, e.g. `creating link`.
    op: &'a str,
}

/// An rtnetlink connection inside one network namespace, with the link and
/// address operations a tunnel needs. Each method is one `ip` command.
pub struct Links {
    sock: Socket,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("ns", &self.sock.ns())
            .finish()
    }
}

impl Links {
    /// Opens a netlink socket inside `ns`.
    pub fn open(ns: &NetNs) -> Result<Self> {
        Ok(Self {
            sock: Socket::open(Some(ns), NETLINK_ROUTE)
                .map_err(|e| Error::transport(e, "*", "opening a netlink socket for"))?,
        })
    }

    /// Sends one acknowledged request; a kernel refusal becomes an
    /// [`Error::Netlink`] whose source carries the errno.
    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16, ctx: Ctx<'_>) -> Result<()> {
        self.sock
            .request(codec::encode_request(msg, flags))
            .map_err(|e| Error::transport(e, ctx.link, ctx.op))?
            .map_err(|nack| Error::nack(&nack, ctx.link, self.sock.ns(), ctx.op))
    }

    /// Sends one dump request and decodes every route message of the reply.
    fn dump(&mut self, msg: RouteNetlinkMessage, ctx: Ctx<'_>) -> Result<Vec<RouteNetlinkMessage>> {
        let raw = self
            .sock
            .dump(codec::encode_request(msg, DUMP_FLAGS))
            .map_err(|e| Error::transport(e, ctx.link, ctx.op))?
            .map_err(|nack| Error::nack(&nack, ctx.link, self.sock.ns(), ctx.op))?;
        let mut out = Vec::with_capacity(raw.len());
        for m in &raw {
            let decoded = codec::decode_reply(m)
                .map_err(|reason| Error::decode(ctx.link, self.sock.ns(), ctx.op, reason))?;
            out.extend(decoded);
        }
        Ok(out)
    }

    /// The namespace label, as used in errors.
    pub fn ns(&self) -> &str {
        self.sock.ns()
    }

    /// Every link with its tunnel parameters and addresses: `ip -d addr show`.
    pub fn list(&mut self) -> Result<Vec<LinkState>> {
        let ctx = Ctx {
            link: "*",
            op: "listing links",
        };
        let msgs = self.dump(RouteNetlinkMessage::GetLink(codec::dump_links()), ctx)?;
        let mut links: Vec<LinkState> = msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => LinkState::from_message(l),
                _ => None,
            })
            .collect();
        let ctx = Ctx {
            link: "*",
            op: "listing addresses",
        };
        let addrs = self.dump(
            RouteNetlinkMessage::GetAddress(codec::dump_addresses()),
            ctx,
        )?;
        for m in addrs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let addr = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let (Some(addr), Some(link)) =
                (addr, links.iter_mut().find(|l| l.index == a.header.index))
            {
                link.addresses.push(IfAddr::new(addr, a.header.prefix_len));
            }
        }
        Ok(links)
    }

    /// The link called `name`, if there is one.
    pub fn get(&mut self, name: &str) -> Result<Option<LinkState>> {
        Ok(self.list()?.into_iter().find(|l| l.name == name))
    }

    /// Creates the tunnel link only (no MTU, addresses or up): `ip link add
    /// NAME [netns NS] type KIND ...`. With `move_to`, the link is created
    /// here — its UDP socket lives in this namespace — and lives in
    /// `move_to`. The tunnel is validated first.
    pub fn create(&mut self, t: &Tunnel, move_to: Option<&NetNs>) -> Result<()> {
        t.validate()?;
        let fd = move_to.map(|ns| ns.as_fd().as_raw_fd());
        let msg = codec::new_link(&t.name, &t.params, fd);
        let ctx = Ctx {
            link: &t.name,
            op: "creating link",
        };
        match self.ack(RouteNetlinkMessage::NewLink(msg), CREATE_FLAGS, ctx) {
            Err(Error::Netlink {
                source, link, ns, ..
            }) if t.params.kind == TunnelKind::Geneve
                && source.raw_os_error() == Some(EOPNOTSUPP) =>
            {
                Err(Error::GeneveUnsupported { link, ns, source })
            }
            r => r,
        }
    }

    /// Sets the MTU and/or the up flag: `ip link set dev NAME [mtu N] [up|down]`.
    pub fn set(
        &mut self,
        name: &str,
        index: u32,
        mtu: Option<u32>,
        up: Option<bool>,
    ) -> Result<()> {
        let ctx = Ctx {
            link: name,
            op: "changing mtu/state of link",
        };
        self.ack(
            RouteNetlinkMessage::SetLink(codec::set_link(index, mtu, up)),
            CHANGE_FLAGS,
            ctx,
        )
    }

    /// Adds an address: `ip addr add ADDR/LEN dev NAME`.
    pub fn add_address(&mut self, name: &str, index: u32, a: IfAddr) -> Result<()> {
        let op = format!("adding address {a} to link");
        let ctx = Ctx {
            link: name,
            op: &op,
        };
        self.ack(
            RouteNetlinkMessage::NewAddress(codec::address(index, a)),
            CREATE_FLAGS,
            ctx,
        )
    }

    /// Removes an address: `ip addr del ADDR/LEN dev NAME`.
    pub fn del_address(&mut self, name: &str, index: u32, a: IfAddr) -> Result<()> {
        let op = format!("removing address {a} from link");
        let ctx = Ctx {
            link: name,
            op: &op,
        };
        self.ack(
            RouteNetlinkMessage::DelAddress(codec::address(index, a)),
            CHANGE_FLAGS,
            ctx,
        )
    }

    /// Deletes the link called `name`: `ip link del NAME`. Returns whether
    /// there was one; deleting an absent link is not an error.
    pub fn delete(&mut self, name: &str) -> Result<bool> {
        validate_name(name)?;
        let Some(link) = self.get(name)? else {
            return Ok(false);
        };
        self.delete_index(name, link.index)
    }

    fn delete_index(&mut self, name: &str, index: u32) -> Result<bool> {
        let ctx = Ctx {
            link: name,
            op: "deleting link",
        };
        match self.ack(
            RouteNetlinkMessage::DelLink(codec::del_link(index)),
            CHANGE_FLAGS,
            ctx,
        ) {
            Ok(()) => Ok(true),
            Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(ENODEV) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Istio 1.19's port choice in this namespace: the first port at or
    /// above `from` not used by another link of `kind` (links named in
    /// `exclude` do not count).
    pub fn first_free_port(
        &mut self,
        kind: TunnelKind,
        from: u16,
        exclude: &[&str],
    ) -> Result<u16> {
        let links = self.list()?;
        codec::first_free_port(&links, kind, from, exclude).ok_or_else(|| Error::NoFreePort {
            kind,
            from,
            ns: self.ns().to_owned(),
        })
    }
}

/// Makes the tunnel exist in `ns` exactly as described: creates it, leaves
/// it if it matches, updates MTU/addresses/up/sysctls in place, or deletes
/// and recreates it if its creation parameters differ. Applying twice
/// changes nothing the second time. The name is never held by two links: a
/// mismatching tunnel is deleted before its replacement is created, and a
/// non-tunnel link with the name is an error ([`Error::NameTaken`]).
///
/// If a step after a fresh create fails, the new link is deleted again.
pub fn reconcile(ns: &NetNs, t: &Tunnel) -> Result<Outcome> {
    reconcile_inner(ns, None, t)
}

/// Like [`reconcile`], but a link that has to be created is created in
/// `underlay` (where its UDP socket then lives, as `ip link add ... netns
/// NS` run in `underlay` does) and moved into `ns`. An existing link in `ns`
/// is compared on its tunnel parameters only, not on where its socket lives.
pub fn reconcile_from(underlay: &NetNs, ns: &NetNs, t: &Tunnel) -> Result<Outcome> {
    reconcile_inner(ns, Some(underlay), t)
}

/// Deletes the link `name` in `ns`, if present; returns whether it was.
pub fn delete(ns: &NetNs, name: &str) -> Result<bool> {
    validate_name(name)?;
    Links::open(ns)?.delete(name)
}

/// Lists the links in `ns`, with tunnel parameters and addresses.
pub fn list(ns: &NetNs) -> Result<Vec<LinkState>> {
    Links::open(ns)?.list()
}

fn reconcile_inner(ns: &NetNs, underlay: Option<&NetNs>, t: &Tunnel) -> Result<Outcome> {
    // Nothing reaches the kernel before the description is known to be good.
    t.validate()?;
    let mut links = Links::open(ns)?;
    let existing = links.get(&t.name)?;
    let mut replaced = None;
    if let Some(have) = &existing {
        let is_tunnel = matches!(have.kind.as_deref(), Some("geneve" | "vxlan"));
        if !is_tunnel {
            return Err(Error::NameTaken {
                link: t.name.clone(),
                ns: links.ns().to_owned(),
                kind: have.kind.clone().unwrap_or_else(|| "unknown".into()),
            });
        }
        let diff = match &have.params {
            Some(p) => codec::param_differences(&t.params, p),
            // A tunnel without a unicast remote (external, multicast).
            None => vec!["remote"],
        };
        if !diff.is_empty() {
            links.delete_index(&t.name, have.index)?;
            replaced = Some(diff);
        }
    }
    let existed = existing.is_some();
    let created = !existed || replaced.is_some();
    let state = if created {
        match underlay {
            Some(u) => Links::open(u)?.create(t, Some(ns))?,
            None => links.create(t, None)?,
        }
        links.get(&t.name)?.ok_or_else(|| Error::NotFound {
            link: t.name.clone(),
            ns: links.ns().to_owned(),
            op: "configuring new",
        })?
    } else {
        existing.ok_or_else(|| Error::NotFound {
            link: t.name.clone(),
            ns: links.ns().to_owned(),
            op: "configuring",
        })?
    };
    let index = state.index;
    let changed = match configure(&mut links, ns, t, &state) {
        Ok(changed) => changed,
        Err(e) => {
            if created {
                // Leave nothing half-made; the error is what matters.
                let _ = links.delete_index(&t.name, index);
            }
            return Err(e);
        }
    };
    let action = match (existed, replaced) {
        (false, _) => Action::Created,
        (true, Some(diff)) => Action::Replaced(diff),
        (true, None) if changed.is_empty() => Action::Unchanged,
        (true, None) => Action::Updated(changed),
    };
    Ok(Outcome { index, action })
}

/// Brings MTU, addresses, up state and sysctls of an existing link to the
/// description; returns what had to change.
fn configure(
    links: &mut Links,
    ns: &NetNs,
    t: &Tunnel,
    have: &LinkState,
) -> Result<Vec<&'static str>> {
    let mut changed = Vec::new();
    let mtu = t.mtu.filter(|m| have.mtu != Some(*m));
    if mtu.is_some() {
        links.set(&t.name, have.index, mtu, None)?;
        changed.push("mtu");
    }
    let (add, remove) = codec::addresses_to_change(t, &have.addresses);
    for a in remove {
        links.del_address(&t.name, have.index, a)?;
        changed.push("addresses");
    }
    for a in add {
        links.add_address(&t.name, have.index, a)?;
        changed.push("addresses");
    }
    if have.up != t.up {
        links.set(&t.name, have.index, None, Some(t.up))?;
        changed.push("up");
    }
    let sysctls = [
        ("rp_filter", t.rp_filter.map(|v| v.to_string())),
        (
            "accept_local",
            t.accept_local.map(|b| u8::from(b).to_string()),
        ),
    ];
    for (key, want) in sysctls {
        let Some(want) = want else { continue };
        let path = format!("net/ipv4/conf/{}/{key}", t.name);
        let netns_err = |op, source| Error::Netns {
            link: t.name.clone(),
            op,
            source,
        };
        let have = ns
            .sysctl(&path)
            .map_err(|e| netns_err("reading sysctl", e))?;
        if have != want {
            ns.set_sysctl(&path, &want)
                .map_err(|e| netns_err("writing sysctl", e))?;
            changed.push(if key == "rp_filter" {
                "rp_filter"
            } else {
                "accept_local"
            });
        }
    }
    changed.dedup();
    Ok(changed)
}
