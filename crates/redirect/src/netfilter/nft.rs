//! The nftables rendering of a [`Ruleset`]: one table of family `inet`
//! with a base chain per (table, hook) and the user chains prefixed by their
//! table, as a script for `nft -f -` or as a readable listing.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::{Dir, Hook, Match, Rule, Ruleset, Table, Target};
use crate::error::{Error, Result};
use crate::mark::Mark;
use crate::route::Family;

/// What an older ruleset has and a newer one lacks: (base chains, user
/// chains).
pub(crate) type Surplus<'a> = (Vec<(Table, Hook)>, Vec<&'a (Table, String)>);

impl Ruleset {
    /// The base chains the nft rendering needs: every (table, hook) with a
    /// jump, sorted.
    pub(crate) fn base_chains(&self) -> Vec<(Table, Hook)> {
        let mut v: Vec<(Table, Hook)> = self.jumps.iter().map(|j| (j.table, j.hook)).collect();
        v.sort();
        v.dedup();
        v
    }

    /// What this ruleset has and `newer` lacks: base chains no jump of
    /// `newer` uses, and user chains `newer` does not declare.
    pub(crate) fn surplus<'a>(&'a self, newer: &Ruleset) -> Surplus<'a> {
        let keep = newer.base_chains();
        let bases = self
            .base_chains()
            .into_iter()
            .filter(|b| !keep.contains(b))
            .collect();
        let users = self
            .chains
            .iter()
            .filter(|c| !newer.chains.contains(c))
            .collect();
        (bases, users)
    }

    /// A script for `nft -f -` that deletes, inside this ruleset's table,
    /// what this ruleset has and `newer` (applied after it, in the same
    /// table) lacks: base chains no jump of `newer` uses, then user chains
    /// `newer` does not declare, with their rules. Each chain is first added
    /// (a no-op when present), so absent chains are not an error; deleting
    /// a base chain drops its jumps, after which the user chains are
    /// unreferenced. Empty when there is nothing to delete.
    pub fn nft_surplus_script(&self, newer: &Ruleset) -> Result<String> {
        self.validate()?;
        let t = &self.nft_table;
        let (bases, users) = self.surplus(newer);
        let mut s = String::new();
        if bases.is_empty() && users.is_empty() {
            return Ok(s);
        }
        let _ = writeln!(s, "add table inet {t}");
        for (table, hook) in bases {
            let name = base_name(table, hook);
            let _ = writeln!(s, "add chain inet {t} {name} {}", base_spec(table, hook));
            let _ = writeln!(s, "delete chain inet {t} {name}");
        }
        for (table, name) in users {
            let name = user_name(*table, name);
            let _ = writeln!(s, "add chain inet {t} {name}");
            let _ = writeln!(s, "delete chain inet {t} {name}");
        }
        Ok(s)
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
