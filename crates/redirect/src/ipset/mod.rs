//! ipset over nfnetlink: `hash:ip` sets with per-entry comments.
//!
//! Adds and deletes are batched: up to [`ENTRIES_PER_MESSAGE`] entries ride
//! in one message's `ADT` attribute, and messages are sent many per
//! `sendmsg`, so enrolling 10,000 addresses takes a handful of syscalls.

pub mod codec;

use std::fmt;
use std::net::IpAddr;

use ambit_netns::NetNs;

use self::codec::{Attr, Command, EntryAttr, FLAG_WITH_COMMENT, HeaderAttr, IpsetMessage};
use crate::error::{Error, Result};
use crate::route::Family;
use ambit_netlink::{NETLINK_NETFILTER, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, Socket as NlSocket};

const NLM_F_CREATE: u16 = 0x400;
const ENOENT: i32 = 2;
/// `IPSET_ERR_EXIST`: a TEST miss, or an element that already exists.
const IPSET_ERR_EXIST: i32 = 4103;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// Entries carried by one add/del message.
pub const ENTRIES_PER_MESSAGE: usize = 512;

/// Checks a set name: 1–31 bytes, no NUL.
pub fn check_set_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() >= codec::MAX_NAME_LEN {
        "longer than 31 bytes"
    } else if name.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(Error::InvalidSetName {
        name: name.chars().take(40).collect(),
        reason,
    })
}

/// A `hash:ip` set, as `ipset create NAME hash:ip family F [comment]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpSetSpec {
    /// The set name (1–31 bytes).
    pub name: String,
    /// `inet` or `inet6`.
    pub family: Family,
    /// Whether entries carry comments.
    pub comments: bool,
    /// Initial hash size (`hashsize`), `None` for the kernel's default.
    pub hashsize: Option<u32>,
    /// Maximum entries (`maxelem`), `None` for the kernel's default (65536).
    pub maxelem: Option<u32>,
}

impl IpSetSpec {
    /// A `hash:ip` set with comments. Validates the name.
    pub fn new(name: &str, family: Family) -> Result<Self> {
        check_set_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            family,
            comments: true,
            hashsize: None,
            maxelem: None,
        })
    }

    /// Sets `maxelem`.
    pub fn maxelem(mut self, n: u32) -> Self {
        self.maxelem = Some(n);
        self
    }
}

impl fmt::Display for IpSetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fam = match self.family {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        };
        write!(f, "ipset create {} hash:ip family {fam}", self.name)?;
        if let Some(h) = self.hashsize {
            write!(f, " hashsize {h}")?;
        }
        if let Some(m) = self.maxelem {
            write!(f, " maxelem {m}")?;
        }
        if self.comments {
            f.write_str(" comment")?;
        }
        Ok(())
    }
}

/// One member: an address and an optional comment (Istio stores the pod UID).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpSetEntry {
    /// The address.
    pub ip: IpAddr,
    /// The comment (up to 255 bytes).
    pub comment: Option<String>,
}

impl IpSetEntry {
    /// An entry with a comment.
    pub fn new(ip: IpAddr, comment: impl Into<String>) -> Self {
        Self {
            ip,
            comment: Some(comment.into()),
        }
    }
}

/// What `ipset list NAME` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSetInfo {
    /// Name.
    pub name: String,
    /// Type, e.g. `hash:ip`.
    pub type_name: String,
    /// Type revision.
    pub revision: u8,
    /// Family.
    pub family: Option<Family>,
    /// Whether entries carry comments.
    pub comments: bool,
    /// Hash size.
    pub hashsize: Option<u32>,
    /// Maximum entries.
    pub maxelem: Option<u32>,
    /// Number of iptables rules referencing the set.
    pub references: u32,
    /// The members.
    pub entries: Vec<IpSetEntry>,
}

/// An ipset session in one namespace.
pub struct Ipset {
    sock: NlSocket,
    revision: Option<u8>,
}

impl fmt::Debug for Ipset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ipset")
            .field("ns", &self.sock.ns())
            .finish()
    }
}

fn frame(m: &IpsetMessage, flags: u16) -> Vec<u8> {
    let mut payload = Vec::with_capacity(64);
    m.emit_payload(&mut payload);
    let mut msg = ambit_netlink::header(m.command.message_type(), flags, payload.len());
    msg.extend_from_slice(&payload);
    msg
}

fn nfproto(f: Family) -> u8 {
    match f {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

impl Ipset {
    /// Opens an nfnetlink socket inside `ns` (or the caller's namespace).
    pub fn open(ns: Option<&NetNs>) -> Result<Self> {
        Ok(Self {
            sock: NlSocket::open(ns, NETLINK_NETFILTER)?,
            revision: None,
        })
    }

    fn ns(&self) -> String {
        self.sock.ns().to_owned()
    }

    fn ack(
        &mut self,
        m: &IpsetMessage,
        flags: u16,
        op: String,
    ) -> Result<std::result::Result<(), i32>> {
        match self
            .sock
            .request(frame(m, NLM_F_REQUEST | NLM_F_ACK | flags))?
        {
            Ok(()) => Ok(Ok(())),
            Err(e) if matches!(e.errno, ENOENT | IPSET_ERR_EXIST) => Ok(Err(e.errno)),
            Err(e) => Err(Error::nack(e, op, &self.ns())),
        }
    }

    /// The newest `hash:ip` revision the kernel supports (asked once).
    fn revision(&mut self, family: Family) -> Result<u8> {
        if let Some(r) = self.revision {
            return Ok(r);
        }
        let m = IpsetMessage::request(Command::Type)
            .with(Attr::TypeName("hash:ip".into()))
            .with(Attr::Family(nfproto(family)));
        let replies = self
            .sock
            .dump(frame(&m, NLM_F_REQUEST))?
            .map_err(|e| Error::nack(e, "asking the kernel for hash:ip revisions", &self.ns()))?;
        let rev = replies
            .iter()
            .filter_map(|raw| parse_reply(raw).ok())
            .flat_map(|m| m.attrs)
            .find_map(|a| match a {
                Attr::Revision(r) => Some(r),
                _ => None,
            })
            .ok_or_else(|| Error::Decode {
                op: "hash:ip type query".into(),
                reason: "no revision in reply".into(),
            })?;
        self.revision = Some(rev);
        Ok(rev)
    }

    /// Creates the set; an existing set of the same type is left alone.
    pub fn create(&mut self, spec: &IpSetSpec) -> Result<()> {
        check_set_name(&spec.name)?;
        let rev = self.revision(spec.family)?;
        let mut header = Vec::new();
        if spec.comments {
            header.push(HeaderAttr::CadtFlags(FLAG_WITH_COMMENT));
        }
        if let Some(h) = spec.hashsize {
            header.push(HeaderAttr::HashSize(h));
        }
        if let Some(m) = spec.maxelem {
            header.push(HeaderAttr::MaxElem(m));
        }
        let m = IpsetMessage::request(Command::Create)
            .with(Attr::SetName(spec.name.clone()))
            .with(Attr::TypeName("hash:ip".into()))
            .with(Attr::Revision(rev))
            .with(Attr::Family(nfproto(spec.family)))
            .with(Attr::Header(header));
        // Without NLM_F_EXCL the kernel accepts an identical existing set.
        self.ack(&m, NLM_F_CREATE, format!("`{spec}`"))?
            .map_err(|errno| Error::Netlink {
                op: format!("`{spec}`: a different set with that name exists"),
                ns: self.ns(),
                errno,
                ext: None,
            })
    }

    /// Destroys the set; a missing set is not an error.
    pub fn destroy(&mut self, name: &str) -> Result<()> {
        check_set_name(name)?;
        let m = IpsetMessage::request(Command::Destroy).with(Attr::SetName(name.into()));
        let _absent_is_fine = self.ack(&m, 0, format!("ipset destroy {name}"))?;
        Ok(())
    }

    /// Removes every entry (`ipset flush NAME`).
    pub fn flush(&mut self, name: &str) -> Result<()> {
        check_set_name(name)?;
        let m = IpsetMessage::request(Command::Flush).with(Attr::SetName(name.into()));
        self.ack(&m, 0, format!("ipset flush {name}"))?
            .map_err(|errno| self.missing(name, "ipset flush", errno))
    }

    /// Swaps two sets (`ipset swap A B`), for atomic replacement.
    pub fn swap(&mut self, a: &str, b: &str) -> Result<()> {
        check_set_name(a)?;
        check_set_name(b)?;
        let m = IpsetMessage::request(Command::Swap)
            .with(Attr::SetName(a.into()))
            .with(Attr::TypeName(b.into()));
        self.ack(&m, 0, format!("ipset swap {a} {b}"))?
            .map_err(|errno| self.missing(a, "ipset swap", errno))
    }

    fn missing(&self, name: &str, op: &str, errno: i32) -> Error {
        Error::Netlink {
            op: format!("{op} {name}: no such set"),
            ns: self.ns(),
            errno,
            ext: None,
        }
    }

    fn check_entries(&self, set: &IpSetSpec, entries: &[IpSetEntry]) -> Result<()> {
        for e in entries {
            if Family::of(e.ip) != set.family {
                return Err(Error::FamilyMismatch {
                    item: format!("set {} ({})", set.name, set.family_name()),
                    addr: e.ip,
                });
            }
            if let Some(c) = &e.comment
                && (c.len() > codec::MAX_COMMENT_LEN || c.contains('\0'))
            {
                return Err(Error::Invalid {
                    what: format!("comment for {} in set {}", e.ip, set.name),
                    reason: "over 255 bytes or contains NUL".into(),
                });
            }
        }
        Ok(())
    }

    fn batch(&mut self, cmd: Command, set: &IpSetSpec, entries: &[IpSetEntry]) -> Result<()> {
        check_set_name(&set.name)?;
        self.check_entries(set, entries)?;
        let mut msgs: Vec<Vec<u8>> = entries
            .chunks(ENTRIES_PER_MESSAGE)
            .map(|chunk| {
                let adt = chunk
                    .iter()
                    .map(|e| {
                        let mut v = vec![EntryAttr::Ip(e.ip)];
                        if cmd == Command::Add
                            && set.comments
                            && let Some(c) = &e.comment
                        {
                            v.push(EntryAttr::Comment(c.clone()));
                        }
                        v
                    })
                    .collect();
                // The kernel requires LINENO beside ADT (it reports the
                // failing entry's line through it).
                let m = IpsetMessage::request(cmd)
                    .with(Attr::SetName(set.name.clone()))
                    .with(Attr::LineNo(0))
                    .with(Attr::Adt(adt));
                // No NLM_F_EXCL: adding a present entry or deleting an
                // absent one succeeds, as with `ipset -exist`.
                frame(&m, NLM_F_REQUEST | NLM_F_ACK)
            })
            .collect();
        let verb = if cmd == Command::Add { "add" } else { "del" };
        let ns = self.ns();
        for (i, r) in self.sock.transact(&mut msgs)?.into_iter().enumerate() {
            if let Err(e) = r {
                let first = i * ENTRIES_PER_MESSAGE;
                let last = (first + ENTRIES_PER_MESSAGE).min(entries.len()) - 1;
                return Err(Error::nack(
                    e,
                    format!(
                        "ipset {verb} {} (entries {first}..={last}: {} ... {})",
                        set.name, entries[first].ip, entries[last].ip
                    ),
                    &ns,
                ));
            }
        }
        Ok(())
    }

    /// Adds entries; present entries are left as they are.
    pub fn add(&mut self, set: &IpSetSpec, entries: &[IpSetEntry]) -> Result<()> {
        self.batch(Command::Add, set, entries)
    }

    /// Deletes entries; absent entries are ignored.
    pub fn del(&mut self, set: &IpSetSpec, entries: &[IpSetEntry]) -> Result<()> {
        self.batch(Command::Del, set, entries)
    }

    /// Whether `ip` is in the set (`ipset test`).
    pub fn test(&mut self, name: &str, ip: IpAddr) -> Result<bool> {
        check_set_name(name)?;
        let m = IpsetMessage::request(Command::Test)
            .with(Attr::SetName(name.into()))
            .with(Attr::Entry(vec![EntryAttr::Ip(ip)]));
        match self.sock.request(frame(&m, NLM_F_REQUEST | NLM_F_ACK))? {
            Ok(()) => Ok(true),
            Err(e) if e.errno == IPSET_ERR_EXIST => Ok(false),
            Err(e) => Err(Error::nack(
                e,
                format!("ipset test {name} {ip}"),
                &self.ns(),
            )),
        }
    }

    /// Header and members of a set, or `None` if it does not exist.
    pub fn list(&mut self, name: &str) -> Result<Option<IpSetInfo>> {
        check_set_name(name)?;
        let m = IpsetMessage::request(Command::List).with(Attr::SetName(name.into()));
        let replies = match self.sock.dump(frame(&m, NLM_F_REQUEST | NLM_F_DUMP))? {
            Ok(r) => r,
            Err(e) if e.errno == ENOENT => return Ok(None),
            Err(e) => return Err(Error::nack(e, format!("ipset list {name}"), &self.ns())),
        };
        list_from_replies(name, &replies).map_err(|reason| Error::Decode {
            op: format!("ipset list {name}"),
            reason,
        })
    }

    /// The names of every set in the namespace (`ipset list -n`).
    pub fn names(&mut self) -> Result<Vec<String>> {
        let m = IpsetMessage::request(Command::List).with(Attr::Flags(codec::FLAG_LIST_SETNAME));
        let replies = self
            .sock
            .dump(frame(&m, NLM_F_REQUEST | NLM_F_DUMP))?
            .map_err(|e| Error::nack(e, "ipset list -n", &self.ns()))?;
        names_from_replies(&replies).map_err(|reason| Error::Decode {
            op: "ipset list -n".into(),
            reason,
        })
    }
}

impl IpSetSpec {
    fn family_name(&self) -> &'static str {
        match self.family {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }
}

fn parse_reply(raw: &[u8]) -> std::result::Result<IpsetMessage, String> {
    let m = ambit_netlink::Messages::new(raw)
        .next()
        .ok_or_else(|| "empty reply".to_owned())??;
    IpsetMessage::parse(m.ty, m.payload).map_err(|e| e.to_string())
}

/// Folds the reply messages of `ipset list NAME` into one set description,
/// or `None` when there were none.
pub(crate) fn list_from_replies(
    name: &str,
    replies: &[Vec<u8>],
) -> std::result::Result<Option<IpSetInfo>, String> {
    let mut info: Option<IpSetInfo> = None;
    for raw in replies {
        let msg = parse_reply(raw)?;
        let i = info.get_or_insert_with(|| IpSetInfo {
            name: name.to_owned(),
            type_name: String::new(),
            revision: 0,
            family: None,
            comments: false,
            hashsize: None,
            maxelem: None,
            references: 0,
            entries: Vec::new(),
        });
        merge(i, msg);
    }
    Ok(info)
}

/// The distinct set names in the reply messages of `ipset list -n`.
pub(crate) fn names_from_replies(replies: &[Vec<u8>]) -> std::result::Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for raw in replies {
        let msg = parse_reply(raw)?;
        if let Some(n) = msg.set_name()
            && !names.iter().any(|x| x == n)
        {
            names.push(n.to_owned());
        }
    }
    Ok(names)
}

fn merge(info: &mut IpSetInfo, msg: IpsetMessage) {
    for a in msg.attrs {
        match a {
            Attr::TypeName(t) => info.type_name = t,
            Attr::Revision(r) => info.revision = r,
            Attr::Family(f) => {
                info.family = match f {
                    NFPROTO_IPV4 => Some(Family::V4),
                    NFPROTO_IPV6 => Some(Family::V6),
                    _ => None,
                }
            }
            Attr::Header(h) => {
                for x in h {
                    match x {
                        HeaderAttr::CadtFlags(f) => info.comments = f & FLAG_WITH_COMMENT != 0,
                        HeaderAttr::HashSize(v) => info.hashsize = Some(v),
                        HeaderAttr::MaxElem(v) => info.maxelem = Some(v),
                        HeaderAttr::References(v) => info.references = v,
                        _ => {}
                    }
                }
            }
            Attr::Adt(entries) => {
                for e in entries {
                    let mut ip = None;
                    let mut comment = None;
                    for x in e {
                        match x {
                            EntryAttr::Ip(i) => ip = Some(i),
                            EntryAttr::Comment(c) => comment = Some(c),
                            _ => {}
                        }
                    }
                    if let Some(ip) = ip {
                        info.entries.push(IpSetEntry { ip, comment });
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_are_checked() {
        assert!(check_set_name("ztunnel-pods-ips").is_ok());
        let e = check_set_name(&"x".repeat(32)).expect_err("too long");
        assert!(e.to_string().contains("31 bytes"), "{e}");
        assert!(check_set_name("").is_err());
        assert!(IpSetSpec::new("a\0b", Family::V4).is_err());
    }

    #[test]
    fn spec_displays_as_ipset_command() {
        let s = IpSetSpec::new("ztunnel-pods-ips", Family::V4).expect("spec");
        assert_eq!(
            s.to_string(),
            "ipset create ztunnel-pods-ips hash:ip family inet comment"
        );
    }
}
