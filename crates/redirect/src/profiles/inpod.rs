//! In-pod capture (current Istio): rules inside each pod's namespace, and
//! kubelet probe SNAT on the host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::{Ports, bad, host};
use crate::error::Result;
use crate::ipset::IpSetSpec;
use crate::mark::Marks;
use crate::netfilter::{Dir, Hook, Match, Proto, Table, Target};
use crate::plan::Plan;
use crate::route::{Family, IpRule, Route};

/// Parameters of in-pod capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InpodConfig {
    /// Redirect DNS to ztunnel's DNS proxy.
    pub capture_dns: bool,
    /// Also capture IPv6.
    pub ipv6: bool,
    /// The kubelet probe source address after SNAT (169.254.7.127).
    pub probe_ip: Ipv4Addr,
    /// Its IPv6 counterpart.
    pub probe_ip6: Ipv6Addr,
    /// Marks (ztunnel's SO_MARK 1337, connmark 0x111).
    pub marks: Marks,
    /// Ports.
    pub ports: Ports,
    /// Route table for the TPROXY-return rule (100).
    pub table: u32,
    /// Its rule priority (32764).
    pub rule_priority: u32,
    /// nft table.
    pub nft_table: String,
}

impl Default for InpodConfig {
    fn default() -> Self {
        Self {
            capture_dns: false,
            ipv6: false,
            probe_ip: Ipv4Addr::new(169, 254, 7, 127),
            probe_ip6: Ipv6Addr::new(
                0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
            ),
            marks: Marks::ISTIO,
            ports: Ports::default(),
            table: 100,
            rule_priority: 32764,
            nft_table: "ambit-inpod".into(),
        }
    }
}

/// In-pod capture (Istio 1.24+), applied inside a pod's namespace:
/// inbound TCP to 15006 (HBONE 15008 passes), outbound TCP to 15001,
/// ztunnel's own sockets (mark 1337) untouched, replies routed back by the
/// 0x111 connmark, optional DNS to 15053.
pub fn inpod(cfg: &InpodConfig) -> Result<Plan> {
    let m = cfg.marks;
    let mut p = Plan::new("in-pod", &cfg.nft_table);
    let nf = &mut p.netfilter;
    nf.ipv6 = cfg.ipv6;
    let (pre, out) = ("ISTIO_PRERT", "ISTIO_OUTPUT");
    nf.jump(Table::Mangle, Hook::Prerouting, pre);
    nf.jump(Table::Mangle, Hook::Output, out);
    nf.jump(Table::Nat, Hook::Output, out);
    nf.jump(Table::Nat, Hook::Prerouting, pre);
    let not_zt = || Match::Mark(m.inpod, true);
    let tcp = || Match::Proto(Proto::Tcp);
    return_marks(nf, &m);
    let mut fams = vec![(host(cfg.probe_ip), host(Ipv4Addr::LOCALHOST))];
    if cfg.ipv6 {
        fams.push((host(cfg.probe_ip6), host(Ipv6Addr::LOCALHOST)));
    }
    for (probe, lo) in &fams {
        nf.push(
            Table::Nat,
            pre,
            vec![Match::Src(*probe, false), tcp()],
            Target::Accept,
        );
        nf.push(
            Table::Nat,
            out,
            vec![Match::Dst(*probe, false), tcp()],
            Target::Accept,
        );
        nf.push(
            Table::Nat,
            pre,
            vec![
                Match::Dst(*lo, true),
                tcp(),
                Match::DPort(cfg.ports.hbone, true),
                not_zt(),
            ],
            Target::Redirect(cfg.ports.inbound),
        );
    }
    if cfg.capture_dns {
        nf.push(
            Table::Nat,
            out,
            vec![
                Match::OutIface("lo".into(), true),
                Match::Proto(Proto::Udp),
                not_zt(),
                Match::DPort(53, false),
            ],
            Target::Redirect(cfg.ports.dns),
        );
        for (_, lo) in &fams {
            nf.push(
                Table::Nat,
                out,
                vec![
                    Match::Dst(*lo, true),
                    tcp(),
                    Match::DPort(53, false),
                    not_zt(),
                ],
                Target::Redirect(cfg.ports.dns),
            );
        }
    }
    nf.push(
        Table::Nat,
        out,
        vec![tcp(), Match::Mark(m.inpod_tproxy, false)],
        Target::Accept,
    );
    for (_, lo) in &fams {
        nf.push(
            Table::Nat,
            out,
            vec![Match::Dst(*lo, true), Match::OutIface("lo".into(), false)],
            Target::Accept,
        );
        nf.push(
            Table::Nat,
            out,
            vec![Match::Dst(*lo, true), tcp(), not_zt()],
            Target::Redirect(cfg.ports.outbound),
        );
    }
    if cfg.capture_dns {
        nf.jump(Table::Raw, Hook::Output, out);
        nf.jump(Table::Raw, Hook::Prerouting, pre);
        nf.push(
            Table::Raw,
            out,
            vec![
                Match::Proto(Proto::Udp),
                Match::Mark(m.inpod, false),
                Match::DPort(53, false),
            ],
            Target::CtZone(1),
        );
        nf.push(
            Table::Raw,
            pre,
            vec![Match::Proto(Proto::Udp), not_zt(), Match::SPort(53, false)],
            Target::CtZone(1),
        );
    }
    return_routes(&mut p, cfg)?;
    p.validate()?;
    Ok(p)
}

/// Connections ztunnel makes to the app from the original client's
/// address get connmark 0x111 on arrival; the app's replies restore it as
/// their mark, which [`return_routes`] routes back to ztunnel.
fn return_marks(nf: &mut crate::netfilter::Ruleset, m: &Marks) {
    let (pre, out) = ("ISTIO_PRERT", "ISTIO_OUTPUT");
    nf.push(
        Table::Mangle,
        pre,
        vec![Match::Mark(m.inpod, false)],
        Target::ConnMarkSetXmark(m.inpod_tproxy),
    );
    nf.push(
        Table::Mangle,
        out,
        vec![Match::ConnMark(m.inpod_tproxy, false)],
        Target::ConnMarkRestore {
            nfmask: u32::MAX,
            ctmask: u32::MAX,
        },
    );
}

/// Packets marked 0x111 are local: table 100 holds a local default route.
fn return_routes(p: &mut Plan, cfg: &InpodConfig) -> Result<()> {
    let mut nets: Vec<IpNet> = vec!["0.0.0.0/0".parse().map_err(|_| bad("default"))?];
    if cfg.ipv6 {
        nets.push("::/0".parse().map_err(|_| bad("default6"))?);
    }
    for n in nets {
        p.routes.push(Route::local(n, cfg.table)?);
        p.rules.push(
            IpRule::lookup(cfg.rule_priority, cfg.table)?
                .fwmark(cfg.marks.inpod_tproxy)
                .family(Family::of(n.addr())),
        );
    }
    Ok(())
}

/// The return path of in-pod capture alone: the two mangle rules and the
/// policy route that bring the app's replies to ztunnel's original-source
/// connections back to ztunnel. This is what the eBPF capture backend
/// (feature `ebpf`) still needs from netfilter: no socket hook sees those
/// reply packets. Table `<nft_table>-return`.
pub fn inpod_return_path(cfg: &InpodConfig) -> Result<Plan> {
    let mut p = Plan::new("in-pod return path", format!("{}-return", cfg.nft_table));
    let nf = &mut p.netfilter;
    nf.ipv6 = cfg.ipv6;
    nf.jump(Table::Mangle, Hook::Prerouting, "ISTIO_PRERT");
    nf.jump(Table::Mangle, Hook::Output, "ISTIO_OUTPUT");
    return_marks(nf, &cfg.marks);
    return_routes(&mut p, cfg)?;
    p.validate()?;
    Ok(p)
}

/// The host set of enrolled pods' IPv4 addresses whose kubelet probes are
/// SNATed (Istio's `istio-inpod-probes` with its `-v4` suffix).
pub const PROBE_SET_V4: &str = "istio-inpod-probes-v4";
/// Its IPv6 counterpart, part of the host plan when [`InpodConfig::ipv6`].
pub const PROBE_SET_V6: &str = "istio-inpod-probes-v6";

/// The host half of in-pod capture: kubelet's probes to enrolled pods are
/// SNATed to the probe address, which the pod rules let through. With
/// `ipv6`, probes to the pods' IPv6 addresses (set `istio-inpod-probes-v6`)
/// are SNATed to `probe_ip6` as well.
pub fn inpod_host_probes(cfg: &InpodConfig) -> Result<Plan> {
    let mut p = Plan::new("in-pod host probes", format!("{}-host", cfg.nft_table));
    p.netfilter.ipv6 = cfg.ipv6;
    p.netfilter
        .jump(Table::Nat, Hook::Postrouting, "ISTIO_POSTRT");
    let mut fams = vec![(PROBE_SET_V4, Family::V4, IpAddr::V4(cfg.probe_ip))];
    if cfg.ipv6 {
        fams.push((PROBE_SET_V6, Family::V6, IpAddr::V6(cfg.probe_ip6)));
    }
    for (name, family, snat) in fams {
        let set = IpSetSpec::new(name, family)?;
        p.netfilter.push(
            Table::Nat,
            "ISTIO_POSTRT",
            vec![
                Match::SocketExists,
                Match::Proto(Proto::Tcp),
                Match::Set {
                    name: set.name.clone(),
                    dir: Dir::Dst,
                    family,
                    neg: false,
                },
            ],
            Target::Snat(snat),
        );
        p.sets.push(set);
    }
    p.validate()?;
    Ok(p)
}
