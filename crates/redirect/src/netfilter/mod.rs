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
//!
//! The model lives here. [`Ruleset::validate`] checks it (the `validate`
//! module); [`Ruleset::nft_script`], [`Ruleset::nft_text`] and [`Rule::nft`]
//! render it as nft text (the `nft` module), and
//! [`Ruleset::iptables_restore`], [`Ruleset::iptables_text`],
//! [`Ruleset::iptables_remove`] and [`Rule::iptables`] as iptables text (the
//! `iptables` module).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::mark::Mark;
use crate::route::Family;

mod iptables;
mod nft;
mod validate;

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

    /// What this ruleset has and `newer` lacks, for removal after `newer`
    /// was applied over it: the user chains `newer` does not declare, the
    /// jumps into them and their rules. Chains both declare are `newer`'s
    /// (applying it rewrote them), so they are not part of it.
    pub fn surplus_over(&self, newer: &Ruleset) -> Ruleset {
        let gone = |t: &Table, n: &String| !newer.chains.iter().any(|(nt, nn)| nt == t && nn == n);
        Ruleset {
            nft_table: self.nft_table.clone(),
            chains: self
                .chains
                .iter()
                .filter(|(t, n)| gone(t, n))
                .cloned()
                .collect(),
            jumps: self
                .jumps
                .iter()
                .filter(|j| gone(&j.table, &j.chain))
                .cloned()
                .collect(),
            rules: self
                .rules
                .iter()
                .filter(|r| gone(&r.table, &r.chain))
                .cloned()
                .collect(),
            sets: Vec::new(),
            ipv6: self.ipv6,
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

    fn proto(&self) -> Option<Proto> {
        self.matches.iter().find_map(|m| match m {
            Match::Proto(p) => Some(*p),
            _ => None,
        })
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
}
