//! Checks on a [`Ruleset`] before it is rendered or applied: the kernel
//! (or `nft`/`iptables-restore`) would refuse these rules, or worse, accept
//! them with another meaning.

use super::{Match, Rule, Ruleset, Table, Target};
use crate::error::{Error, Result};

impl Ruleset {
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
}

impl Rule {
    fn has_mixed_families(&self) -> bool {
        let mut f = self.families();
        let first = f.next();
        f.any(|x| Some(x) != first)
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
}
