//! Packet-filter rules as data, rendered for nftables and for iptables.
//!
//! The model follows iptables, because that is how Istio specifies its
//! capture: rules live in user chains of the `raw`, `mangle`, `nat` and
//! `filter` tables, and a jump from a built-in chain (`PREROUTING`, ...)
//! enters each. The nftables rendering puts everything in one table of
//! family `inet` that this crate owns: one base chain per (table, hook)
//! with the matching type and priority, and the user chains prefixed by
//! their table (`mangle-ztunnel-PREROUTING`). Owning the table is what
//! makes removal exact: delete it, and nothing else is touched.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::mark::Mark;
use crate::route::Family;

/// An iptables table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `raw`: before connection tracking.
    Raw,
    /// `mangle`: marks.
    Mangle,
    /// `nat`: DNAT/SNAT/REDIRECT.
    Nat,
    /// `filter`: accept/drop.
    Filter,
}

impl Table {
    /// The iptables name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Mangle => "mangle",
            Self::Nat => "nat",
            Self::Filter => "filter",
        }
    }
}

/// A netfilter hook (an iptables built-in chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `PREROUTING`.
    Prerouting,
    /// `INPUT`.
    Input,
    /// `FORWARD`.
    Forward,
    /// `OUTPUT`.
    Output,
    /// `POSTROUTING`.
    Postrouting,
}

impl Hook {
    /// The iptables built-in chain name.
    pub fn chain(self) -> &'static str {
        match self {
            Self::Prerouting => "PREROUTING",
            Self::Input => "INPUT",
            Self::Forward => "FORWARD",
            Self::Output => "OUTPUT",
            Self::Postrouting => "POSTROUTING",
        }
    }
    fn nft(self) -> &'static str {
        match self {
            Self::Prerouting => "prerouting",
            Self::Input => "input",
            Self::Forward => "forward",
            Self::Output => "output",
            Self::Postrouting => "postrouting",
        }
    }
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Which address of the packet a set lookup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Source.
    Src,
    /// Destination.
    Dst,
}

/// A match. `bool` fields are negations (`!`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Match {
    /// `-i NAME` / `iifname "NAME"`.
    InIface(String, bool),
    /// `-o NAME` / `oifname "NAME"`.
    OutIface(String, bool),
    /// `-p tcp` / `meta l4proto tcp`.
    Proto(Proto),
    /// `--dport N` (needs a [`Match::Proto`] in the same rule).
    DPort(u16, bool),
    /// `--sport N` (needs a [`Match::Proto`] in the same rule).
    SPort(u16, bool),
    /// `-s NET`.
    Src(IpNet, bool),
    /// `-d NET`.
    Dst(IpNet, bool),
    /// `-m mark --mark V/M` / `meta mark & M == V`.
    Mark(Mark, bool),
    /// `-m connmark --mark V/M` / `ct mark & M == V`.
    ConnMark(Mark, bool),
    /// `-m set --match-set NAME src|dst` / `ip saddr @NAME`.
    Set {
        /// Set name.
        name: String,
        /// Which address.
        dir: Dir,
        /// The set's family (decides `ip` or `ip6` in nft).
        family: Family,
        /// Negated.
        neg: bool,
    },
    /// `-m owner --socket-exists`: a locally generated packet with a socket.
    SocketExists,
    /// `-m owner --uid-owner UID`.
    SkUid(u32, bool),
    /// `-m owner --gid-owner GID`.
    SkGid(u32, bool),
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// `ACCEPT`.
    Accept,
    /// `RETURN`.
    Return,
    /// Jump to a user chain of the same table.
    Jump(String),
    /// `MARK --set-mark V/M`: clear M, OR V.
    SetMark(Mark),
    /// `MARK --set-xmark V/M`: clear M, XOR V.
    SetXmark(Mark),
    /// `CONNMARK --save-mark --nfmask N --ctmask C`.
    ConnMarkSave {
        /// Bits taken from the packet mark.
        nfmask: u32,
        /// Bits replaced in the connection mark.
        ctmask: u32,
    },
    /// `CONNMARK --restore-mark --nfmask N --ctmask C`.
    ConnMarkRestore {
        /// Bits replaced in the packet mark.
        nfmask: u32,
        /// Bits taken from the connection mark.
        ctmask: u32,
    },
    /// `CONNMARK --set-xmark V/M`.
    ConnMarkSetXmark(Mark),
    /// `TPROXY --on-ip IP --on-port PORT --tproxy-mark V/M`.
    Tproxy {
        /// Listener address.
        ip: IpAddr,
        /// Listener port.
        port: u16,
        /// Mark set on the packet.
        mark: Mark,
    },
    /// `REDIRECT --to-ports PORT`.
    Redirect(u16),
    /// `DNAT --to-destination IP:PORT`.
    Dnat(IpAddr, u16),
    /// `SNAT --to-source IP`.
    Snat(IpAddr),
    /// `CT --zone Z`.
    CtZone(u16),
}

/// A rule appended to a user chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The table.
    pub table: Table,
    /// The user chain.
    pub chain: String,
    /// Every match must hold.
    pub matches: Vec<Match>,
    /// The action.
    pub target: Target,
}

/// A jump from a built-in chain to a user chain, inserted first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Jump {
    /// The table.
    pub table: Table,
    /// The built-in chain.
    pub hook: Hook,
    /// The user chain.
    pub chain: String,
}

/// A complete set of chains, jumps and rules, owned by one component.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// The nftables table name (family `inet`) holding the nft rendering.
    pub nft_table: String,
    /// User chains, `(table, name)`, created empty before rules are added.
    pub chains: Vec<(Table, String)>,
    /// Jumps from built-in chains.
    pub jumps: Vec<Jump>,
    /// Rules, in order.
    pub rules: Vec<Rule>,
    /// nft sets the rules use (the iptables rendering uses ipsets instead).
    pub sets: Vec<(String, Family)>,
    /// Whether the iptables backend also programs ip6tables (the nft
    /// rendering is `inet` and always covers both families).
    pub ipv6: bool,
}

impl Ruleset {
    /// An empty ruleset whose nft rendering lives in `inet nft_table`.
    pub fn new(nft_table: impl Into<String>) -> Self {
        Self {
            nft_table: nft_table.into(),
            ..Self::default()
        }
    }

    /// Declares a user chain (idempotent).
    pub fn chain(&mut self, table: Table, name: &str) {
        if !self.chains.iter().any(|(t, n)| *t == table && n == name) {
            self.chains.push((table, name.to_owned()));
        }
    }

    /// Adds a jump from `hook` of `table` to `chain` (declaring the chain).
    pub fn jump(&mut self, table: Table, hook: Hook, chain: &str) {
        self.chain(table, chain);
        let j = Jump {
            table,
            hook,
            chain: chain.to_owned(),
        };
        if !self.jumps.contains(&j) {
            self.jumps.push(j);
        }
    }

    /// Appends a rule (declaring its chain).
    pub fn push(&mut self, table: Table, chain: &str, matches: Vec<Match>, target: Target) {
        self.chain(table, chain);
        self.rules.push(Rule {
            table,
            chain: chain.to_owned(),
            matches,
            target,
        });
    }

    /// Checks every rule: ports need a protocol, jumps need a declared
    /// chain, addresses and marks must be consistent, TPROXY and REDIRECT
    /// only where the kernel allows them.
    pub fn validate(&self) -> Result<()> {
        for r in &self.rules {
            let what = || format!("rule in {} {}: {}", r.table.name(), r.chain, r.iptables());
            let has_proto = r.matches.iter().any(|m| matches!(m, Match::Proto(_)));
            for m in &r.matches {
                match m {
                    Match::DPort(..) | Match::SPort(..) if !has_proto => {
                        return Err(Error::Invalid {
                            what: what(),
                            reason: "a port match needs a protocol match".into(),
                        });
                    }
                    Match::InIface(n, _) | Match::OutIface(n, _)
                        if n.is_empty() || n.len() > 15 =>
                    {
                        return Err(Error::Invalid {
                            what: what(),
                            reason: format!("interface name {n:?} must be 1-15 bytes"),
                        });
                    }
                    Match::Set { name, .. } => crate::ipset::check_set_name(name)?,
                    _ => {}
                }
            }
            if r.has_mixed_families() {
                return Err(Error::Invalid {
                    what: what(),
                    reason: "mixes IPv4 and IPv6 addresses".into(),
                });
            }
            match &r.target {
                Target::Jump(c) if !self.chains.iter().any(|(t, n)| *t == r.table && n == c) => {
                    return Err(Error::Invalid {
                        what: what(),
                        reason: format!("jump to undeclared chain {c}"),
                    });
                }
                Target::Tproxy { .. } if r.table != Table::Mangle || !has_proto => {
                    return Err(Error::Invalid {
                        what: what(),
                        reason: "TPROXY needs the mangle table and a protocol match".into(),
                    });
                }
                Target::Redirect(_) | Target::Dnat(..) | Target::Snat(_)
                    if r.table != Table::Nat =>
                {
                    return Err(Error::Invalid {
                        what: what(),
                        reason: "NAT targets need the nat table".into(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The base chains the nft rendering needs: every (table, hook) with a jump.
    fn base_chains(&self) -> Vec<(Table, Hook)> {
        let mut v: Vec<(Table, Hook)> = self.jumps.iter().map(|j| (j.table, j.hook)).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The nftables rendering: a script for `nft -f -` that creates the
    /// table if needed, then atomically (re)writes every chain's rules.
    /// Set elements already in the table survive.
    pub fn nft_script(&self) -> Result<String> {
        self.validate()?;
        let t = &self.nft_table;
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {t}");
        for (name, fam) in &self.sets {
            let ty = match fam {
                Family::V4 => "ipv4_addr",
                Family::V6 => "ipv6_addr",
            };
            let _ = writeln!(s, "add set inet {t} {name} {{ type {ty}; }}");
        }
        for (table, hook) in self.base_chains() {
            let _ = writeln!(
                s,
                "add chain inet {t} {} {}",
                base_name(table, hook),
                base_spec(table, hook)
            );
            let _ = writeln!(s, "flush chain inet {t} {}", base_name(table, hook));
        }
        for (table, name) in &self.chains {
            let _ = writeln!(s, "add chain inet {t} {}", user_name(*table, name));
            let _ = writeln!(s, "flush chain inet {t} {}", user_name(*table, name));
        }
        for j in &self.jumps {
            let _ = writeln!(
                s,
                "add rule inet {t} {} jump {}",
                base_name(j.table, j.hook),
                user_name(j.table, &j.chain)
            );
        }
        for r in &self.rules {
            let _ = writeln!(
                s,
                "add rule inet {t} {} {}",
                user_name(r.table, &r.chain),
                r.nft()?
            );
        }
        Ok(s)
    }

    /// The same ruleset as a readable nft table (for humans and dry runs).
    pub fn nft_text(&self) -> Result<String> {
        self.validate()?;
        let mut s = format!("table inet {} {{\n", self.nft_table);
        for (name, fam) in &self.sets {
            let ty = match fam {
                Family::V4 => "ipv4_addr",
                Family::V6 => "ipv6_addr",
            };
            let _ = writeln!(s, "\tset {name} {{\n\t\ttype {ty}\n\t}}");
        }
        for (table, hook) in self.base_chains() {
            let _ = writeln!(s, "\tchain {} {{", base_name(table, hook));
            let spec = base_spec(table, hook);
            let _ = writeln!(
                s,
                "\t\t{}",
                spec.trim_matches(|c| c == '{' || c == '}' || c == ' ')
            );
            for j in self
                .jumps
                .iter()
                .filter(|j| j.table == table && j.hook == hook)
            {
                let _ = writeln!(s, "\t\tjump {}", user_name(table, &j.chain));
            }
            s.push_str("\t}\n");
        }
        for (table, name) in &self.chains {
            let _ = writeln!(s, "\tchain {} {{", user_name(*table, name));
            for r in self
                .rules
                .iter()
                .filter(|r| r.table == *table && &r.chain == name)
            {
                let _ = writeln!(s, "\t\t{}", r.nft()?);
            }
            s.push_str("\t}\n");
        }
        s.push_str("}\n");
        Ok(s)
    }

    /// The iptables rendering for `iptables-restore --noflush` (IPv4, or
    /// IPv6 for `ip6tables-restore`): declaring a chain flushes it, then
    /// its rules are appended. `existing_jumps` are left alone so that
    /// applying twice never duplicates them.
    pub fn iptables_restore(&self, family: Family, existing_jumps: &[Jump]) -> Result<String> {
        self.validate()?;
        let mut s = String::new();
        for table in [Table::Raw, Table::Mangle, Table::Nat, Table::Filter] {
            let chains: Vec<&String> = self
                .chains
                .iter()
                .filter(|(t, _)| *t == table)
                .map(|(_, n)| n)
                .collect();
            if chains.is_empty() {
                continue;
            }
            let _ = writeln!(s, "*{}", table.name());
            for c in &chains {
                let _ = writeln!(s, ":{c} - [0:0]");
            }
            for j in self.jumps.iter().filter(|j| j.table == table) {
                if !existing_jumps.contains(j) {
                    let _ = writeln!(s, "-I {} 1 -j {}", j.hook.chain(), j.chain);
                }
            }
            for r in self.rules.iter().filter(|r| r.table == table) {
                if r.family().is_none_or(|f| f == family) {
                    let _ = writeln!(s, "-A {} {}", r.chain, r.iptables());
                }
            }
            s.push_str("COMMIT\n");
        }
        Ok(s)
    }

    /// The `iptables-save`-style text of the whole ruleset for one family,
    /// as a human-readable dry run.
    pub fn iptables_text(&self, family: Family) -> Result<String> {
        let mut s = String::new();
        for table in [Table::Raw, Table::Mangle, Table::Nat, Table::Filter] {
            if !self.chains.iter().any(|(t, _)| *t == table) {
                continue;
            }
            let _ = writeln!(s, "*{}", table.name());
            for (_, c) in self.chains.iter().filter(|(t, _)| *t == table) {
                let _ = writeln!(s, ":{c} - [0:0]");
            }
            for j in self.jumps.iter().filter(|j| j.table == table) {
                let _ = writeln!(s, "-A {} -j {}", j.hook.chain(), j.chain);
            }
            for r in self.rules.iter().filter(|r| r.table == table) {
                if r.family().is_none_or(|f| f == family) {
                    let _ = writeln!(s, "-A {} {}", r.chain, r.iptables());
                }
            }
            s.push_str("COMMIT\n");
        }
        self.validate()?;
        Ok(s)
    }

    /// The iptables text that removes everything: jumps deleted, chains
    /// flushed and deleted. Only chains and jumps in `present` are named, so
    /// removal of something already gone is not an error.
    pub fn iptables_remove(
        &self,
        present_chains: &[(Table, String)],
        present_jumps: &[Jump],
    ) -> String {
        let mut s = String::new();
        for table in [Table::Raw, Table::Mangle, Table::Nat, Table::Filter] {
            let chains: Vec<&String> = self
                .chains
                .iter()
                .filter(|(t, n)| {
                    *t == table && present_chains.iter().any(|(pt, pn)| pt == t && pn == n)
                })
                .map(|(_, n)| n)
                .collect();
            let jumps: Vec<&Jump> = self
                .jumps
                .iter()
                .filter(|j| j.table == table && present_jumps.contains(j))
                .collect();
            if chains.is_empty() && jumps.is_empty() {
                continue;
            }
            let _ = writeln!(s, "*{}", table.name());
            for j in jumps {
                let _ = writeln!(s, "-D {} -j {}", j.hook.chain(), j.chain);
            }
            for c in &chains {
                let _ = writeln!(s, ":{c} - [0:0]");
            }
            for c in &chains {
                let _ = writeln!(s, "-X {c}");
            }
            s.push_str("COMMIT\n");
        }
        s
    }
}

fn base_name(table: Table, hook: Hook) -> String {
    format!("{}-{}", table.name(), hook.nft())
}

fn user_name(table: Table, chain: &str) -> String {
    format!("{}-{chain}", table.name())
}

/// Type and priority of the base chain standing in for `table`'s `hook`.
fn base_spec(table: Table, hook: Hook) -> String {
    // iptables' priorities, as numbers: nft only accepts the symbolic
    // names on some hooks (`dstnat` is refused on output).
    let (ty, prio) = match (table, hook) {
        (Table::Raw, _) => ("filter", -300),
        // Re-route after a mark change on locally generated packets.
        (Table::Mangle, Hook::Output) => ("route", -150),
        (Table::Mangle, _) => ("filter", -150),
        (Table::Nat, Hook::Prerouting | Hook::Output) => ("nat", -100),
        (Table::Nat, _) => ("nat", 100),
        (Table::Filter, _) => ("filter", 0),
    };
    format!("{{ type {ty} hook {} priority {prio}; }}", hook.nft())
}

impl Rule {
    /// The address family the rule is limited to by its addresses or sets.
    pub fn family(&self) -> Option<Family> {
        self.families().next()
    }

    fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.matches
            .iter()
            .filter_map(|m| match m {
                Match::Src(n, _) | Match::Dst(n, _) => Some(Family::of(n.addr())),
                Match::Set { family, .. } => Some(*family),
                _ => None,
            })
            .chain(match &self.target {
                Target::Tproxy { ip, .. } | Target::Dnat(ip, _) | Target::Snat(ip) => {
                    Some(Family::of(*ip))
                }
                _ => None,
            })
    }

    fn has_mixed_families(&self) -> bool {
        let mut f = self.families();
        let first = f.next();
        f.any(|x| Some(x) != first)
    }

    fn proto(&self) -> Option<Proto> {
        self.matches.iter().find_map(|m| match m {
            Match::Proto(p) => Some(*p),
            _ => None,
        })
    }

    /// The iptables arguments after `-A CHAIN`.
    pub fn iptables(&self) -> String {
        let mut s = String::new();
        let neg = |s: &mut String, n: bool| {
            if n {
                s.push_str(" !");
            }
        };
        for m in &self.matches {
            match m {
                Match::InIface(i, n) => {
                    neg(&mut s, *n);
                    let _ = write!(s, " -i {i}");
                }
                Match::OutIface(i, n) => {
                    neg(&mut s, *n);
                    let _ = write!(s, " -o {i}");
                }
                Match::Proto(p) => {
                    let _ = write!(s, " -p {} -m {}", p.name(), p.name());
                }
                Match::DPort(p, n) => {
                    neg(&mut s, *n);
                    let _ = write!(s, " --dport {p}");
                }
                Match::SPort(p, n) => {
                    neg(&mut s, *n);
                    let _ = write!(s, " --sport {p}");
                }
                Match::Src(net, n) => {
                    neg(&mut s, *n);
                    let _ = write!(s, " -s {net}");
                }
                Match::Dst(net, n) => {
                    neg(&mut s, *n);
                    let _ = write!(s, " -d {net}");
                }
                Match::Mark(mk, n) => {
                    s.push_str(" -m mark");
                    neg(&mut s, *n);
                    let _ = write!(s, " --mark {:#x}/{:#x}", mk.value(), mk.mask());
                }
                Match::ConnMark(mk, n) => {
                    s.push_str(" -m connmark");
                    neg(&mut s, *n);
                    let _ = write!(s, " --mark {:#x}/{:#x}", mk.value(), mk.mask());
                }
                Match::Set {
                    name, dir, neg: n, ..
                } => {
                    s.push_str(" -m set");
                    neg(&mut s, *n);
                    let d = match dir {
                        Dir::Src => "src",
                        Dir::Dst => "dst",
                    };
                    let _ = write!(s, " --match-set {name} {d}");
                }
                Match::SocketExists => s.push_str(" -m owner --socket-exists"),
                Match::SkUid(u, n) => {
                    s.push_str(" -m owner");
                    neg(&mut s, *n);
                    let _ = write!(s, " --uid-owner {u}");
                }
                Match::SkGid(g, n) => {
                    s.push_str(" -m owner");
                    neg(&mut s, *n);
                    let _ = write!(s, " --gid-owner {g}");
                }
            }
        }
        match &self.target {
            Target::Accept => s.push_str(" -j ACCEPT"),
            Target::Return => s.push_str(" -j RETURN"),
            Target::Jump(c) => {
                let _ = write!(s, " -j {c}");
            }
            Target::SetMark(m) => {
                let _ = write!(
                    s,
                    " -j MARK --set-xmark {:#x}/{:#x}",
                    m.value(),
                    m.mask() | m.value()
                );
            }
            Target::SetXmark(m) => {
                let _ = write!(s, " -j MARK --set-xmark {:#x}/{:#x}", m.value(), m.mask());
            }
            Target::ConnMarkSave { nfmask, ctmask } => {
                let _ = write!(
                    s,
                    " -j CONNMARK --save-mark --nfmask {nfmask:#x} --ctmask {ctmask:#x}"
                );
            }
            Target::ConnMarkRestore { nfmask, ctmask } => {
                let _ = write!(
                    s,
                    " -j CONNMARK --restore-mark --nfmask {nfmask:#x} --ctmask {ctmask:#x}"
                );
            }
            Target::ConnMarkSetXmark(m) => {
                let _ = write!(
                    s,
                    " -j CONNMARK --set-xmark {:#x}/{:#x}",
                    m.value(),
                    m.mask()
                );
            }
            Target::Tproxy { ip, port, mark } => {
                let _ = write!(
                    s,
                    " -j TPROXY --on-port {port} --on-ip {ip} --tproxy-mark {:#x}/{:#x}",
                    mark.value(),
                    mark.mask()
                );
            }
            Target::Redirect(p) => {
                let _ = write!(s, " -j REDIRECT --to-ports {p}");
            }
            Target::Dnat(ip, p) => match ip {
                IpAddr::V4(v4) => {
                    let _ = write!(s, " -j DNAT --to-destination {v4}:{p}");
                }
                IpAddr::V6(v6) => {
                    let _ = write!(s, " -j DNAT --to-destination [{v6}]:{p}");
                }
            },
            Target::Snat(ip) => {
                let _ = write!(s, " -j SNAT --to-source {ip}");
            }
            Target::CtZone(z) => {
                let _ = write!(s, " -j CT --zone {z}");
            }
        }
        s.trim_start().to_owned()
    }

    /// The nft statement list of the rule (for `add rule inet T C ...`).
    pub fn nft(&self) -> Result<String> {
        let mut parts: Vec<String> = Vec::new();
        let ne = |n: bool| if n { "!= " } else { "" };
        let ipk = |a: IpAddr| if a.is_ipv4() { "ip" } else { "ip6" };
        for m in &self.matches {
            parts.push(match m {
                Match::InIface(i, n) => format!("iifname {}\"{i}\"", ne(*n)),
                Match::OutIface(i, n) => format!("oifname {}\"{i}\"", ne(*n)),
                Match::Proto(p) => format!("meta l4proto {}", p.name()),
                Match::DPort(p, n) => format!("th dport {}{p}", ne(*n)),
                Match::SPort(p, n) => format!("th sport {}{p}", ne(*n)),
                Match::Src(net, n) => format!("{} saddr {}{net}", ipk(net.addr()), ne(*n)),
                Match::Dst(net, n) => format!("{} daddr {}{net}", ipk(net.addr()), ne(*n)),
                Match::Mark(mk, n) => mark_cmp("meta mark", *mk, *n),
                Match::ConnMark(mk, n) => mark_cmp("ct mark", *mk, *n),
                Match::Set {
                    name,
                    dir,
                    family,
                    neg,
                } => {
                    let k = match family {
                        Family::V4 => "ip",
                        Family::V6 => "ip6",
                    };
                    let d = match dir {
                        Dir::Src => "saddr",
                        Dir::Dst => "daddr",
                    };
                    format!("{k} {d} {}@{name}", ne(*neg))
                }
                // A packet with no socket makes the skuid lookup fail, so the
                // rule cannot match: the nft form of --socket-exists.
                Match::SocketExists => "meta skuid >= 0".to_owned(),
                Match::SkUid(u, n) => format!("meta skuid {}{u}", ne(*n)),
                Match::SkGid(g, n) => format!("meta skgid {}{g}", ne(*n)),
            });
        }
        // Every rule counts its packets, as iptables rules always do.
        parts.push("counter".into());
        parts.push(match &self.target {
            Target::Accept => "accept".into(),
            Target::Return => "return".into(),
            Target::Jump(c) => format!("jump {}", user_name(self.table, c)),
            Target::SetMark(m) => set_expr("meta mark", *m, "|"),
            Target::SetXmark(m) => set_expr("meta mark", *m, "^"),
            Target::ConnMarkSetXmark(m) => set_expr("ct mark", *m, "^"),
            Target::ConnMarkSave { nfmask, ctmask } => {
                // nft cannot combine two registers in one expression, so
                // the saved bits must be known: a mark match on the same
                // bits precedes the save (as in every Istio rule).
                let known = self.matches.iter().find_map(|m| match m {
                    Match::Mark(mk, false) if mk.mask() == *nfmask && nfmask == ctmask => Some(*mk),
                    _ => None,
                });
                match known {
                    Some(mk) => format!("ct mark set ct mark & {:#x} | {:#x}", !ctmask, mk.value()),
                    None => {
                        return Err(Error::Invalid {
                            what: format!("rule `{}`", self.iptables()),
                            reason: "CONNMARK --save-mark renders to nft only after a mark match on the same mask".into(),
                        });
                    }
                }
            }
            Target::ConnMarkRestore { nfmask, ctmask } => {
                if *nfmask == u32::MAX && *ctmask == u32::MAX {
                    "meta mark set ct mark".to_owned()
                } else if nfmask == ctmask {
                    format!("meta mark set meta mark & {:#x} | ct mark & {:#x}", !nfmask, ctmask)
                } else {
                    return Err(Error::Invalid {
                        what: format!("rule `{}`", self.iptables()),
                        reason: "CONNMARK --restore-mark with different nfmask and ctmask has no nft form".into(),
                    });
                }
            }
            Target::Tproxy { ip, port, mark } => {
                let k = ipk(*ip);
                let addr = match ip {
                    IpAddr::V4(v4) => format!("{v4}:{port}"),
                    IpAddr::V6(v6) => format!("[{v6}]:{port}"),
                };
                format!("{} tproxy {k} to {addr} accept", set_expr("meta mark", *mark, "|"))
            }
            Target::Redirect(p) => format!("redirect to :{p}"),
            Target::Dnat(ip, p) => match ip {
                IpAddr::V4(v4) => format!("dnat ip to {v4}:{p}"),
                IpAddr::V6(v6) => format!("dnat ip6 to [{v6}]:{p}"),
            },
            Target::Snat(ip) => format!("snat {} to {ip}", ipk(*ip)),
            Target::CtZone(z) => format!("ct zone set {z}"),
        });
        if self.proto().is_none()
            && self
                .matches
                .iter()
                .any(|m| matches!(m, Match::DPort(..) | Match::SPort(..)))
        {
            return Err(Error::Invalid {
                what: format!("rule `{}`", self.iptables()),
                reason: "a port match needs a protocol match".into(),
            });
        }
        Ok(parts.join(" "))
    }
}

fn mark_cmp(key: &str, m: Mark, neg: bool) -> String {
    let op = if neg { "!= " } else { "" };
    if m.mask() == u32::MAX {
        format!("{key} {op}{:#x}", m.value())
    } else {
        format!(
            "{key} & {:#x} {}{:#x}",
            m.mask(),
            if neg { "!= " } else { "== " },
            m.value()
        )
    }
}

fn set_expr(key: &str, m: Mark, op: &str) -> String {
    if m.mask() == u32::MAX && op == "|" {
        format!("{key} set {:#x}", m.value())
    } else {
        format!("{key} set {key} & {:#x} {op} {:#x}", !m.mask(), m.value())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "-t {} -A {} {}",
            self.table.name(),
            self.chain,
            self.iptables()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs() -> Ruleset {
        let mut r = Ruleset::new("ambit-test");
        r.jump(Table::Mangle, Hook::Prerouting, "ztunnel-PREROUTING");
        r
    }

    #[test]
    fn renders_istio_rules_in_both_syntaxes() {
        let mut r = rs();
        r.push(
            Table::Mangle,
            "ztunnel-PREROUTING",
            vec![Match::InIface("istioin".into(), false)],
            Target::SetMark(Mark::bits(0x200)),
        );
        r.push(
            Table::Mangle,
            "ztunnel-PREROUTING",
            vec![Match::Mark(Mark::bits(0x220), false)],
            Target::ConnMarkSave {
                nfmask: 0x220,
                ctmask: 0x220,
            },
        );
        r.push(
            Table::Mangle,
            "ztunnel-PREROUTING",
            vec![
                Match::Proto(Proto::Tcp),
                Match::Set {
                    name: "ztunnel-pods-ips".into(),
                    dir: Dir::Src,
                    family: Family::V4,
                    neg: false,
                },
            ],
            Target::SetMark(Mark::bits(0x100)),
        );
        let ipt = r.iptables_text(Family::V4).expect("render");
        assert!(
            ipt.contains("-A ztunnel-PREROUTING -i istioin -j MARK --set-xmark 0x200/0x200\n"),
            "{ipt}"
        );
        assert!(ipt.contains("-A ztunnel-PREROUTING -m mark --mark 0x220/0x220 -j CONNMARK --save-mark --nfmask 0x220 --ctmask 0x220\n"), "{ipt}");
        assert!(ipt.contains("-A ztunnel-PREROUTING -p tcp -m tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100\n"), "{ipt}");
        let nft = r.nft_script().expect("render");
        assert!(nft.contains("add chain inet ambit-test mangle-prerouting { type filter hook prerouting priority -150; }"), "{nft}");
        assert!(nft.contains("add rule inet ambit-test mangle-ztunnel-PREROUTING iifname \"istioin\" counter meta mark set meta mark & 0xfffffdff | 0x200"), "{nft}");
        assert!(
            nft.contains(
                "meta mark & 0x220 == 0x220 counter ct mark set ct mark & 0xfffffddf | 0x220"
            ),
            "{nft}"
        );
        assert!(
            nft.contains("meta l4proto tcp ip saddr @ztunnel-pods-ips counter meta mark set"),
            "{nft}"
        );
    }

    #[test]
    fn validation_names_the_rule() {
        let mut r = rs();
        r.push(
            Table::Mangle,
            "ztunnel-PREROUTING",
            vec![Match::DPort(53, false)],
            Target::Return,
        );
        let e = r.validate().expect_err("port without proto");
        assert!(e.to_string().contains("--dport 53"), "{e}");

        let mut r = rs();
        r.push(
            Table::Mangle,
            "ztunnel-PREROUTING",
            vec![],
            Target::Redirect(15001),
        );
        assert!(r.validate().is_err());

        let mut r = rs();
        r.push(
            Table::Nat,
            "X",
            vec![
                Match::Src("10.0.0.0/8".parse().expect("net"), false),
                Match::Dst("::1/128".parse().expect("net"), false),
            ],
            Target::Accept,
        );
        assert!(
            r.validate()
                .expect_err("mixed")
                .to_string()
                .contains("mixes")
        );

        let mut r = rs();
        r.push(
            Table::Mangle,
            "ztunnel-PREROUTING",
            vec![Match::InIface("x".repeat(16), false)],
            Target::Accept,
        );
        assert!(r.validate().is_err());

        let mut r = rs();
        r.push(
            Table::Mangle,
            "ztunnel-PREROUTING",
            vec![],
            Target::Jump("nowhere".into()),
        );
        assert!(
            r.validate()
                .expect_err("jump")
                .to_string()
                .contains("nowhere")
        );
    }

    #[test]
    fn jumps_are_not_duplicated_on_reapply() {
        let r = rs();
        let first = r.iptables_restore(Family::V4, &[]).expect("render");
        assert!(first.contains("-I PREROUTING 1 -j ztunnel-PREROUTING"));
        let again = r.iptables_restore(Family::V4, &r.jumps).expect("render");
        assert!(!again.contains("-I PREROUTING"));
    }
}
