//! The iptables rendering of a [`Ruleset`]: `iptables-restore --noflush`
//! input to apply and to remove it, and `iptables-save`-style text.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::{Dir, Jump, Match, Rule, Ruleset, Table, Target};
use crate::error::Result;
use crate::route::Family;

impl Ruleset {
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

impl Rule {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::Hook;

    fn rs() -> Ruleset {
        let mut r = Ruleset::new("ambit-test");
        r.jump(Table::Mangle, Hook::Prerouting, "ztunnel-PREROUTING");
        r
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
