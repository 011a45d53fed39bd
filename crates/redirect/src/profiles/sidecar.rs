//! The classic sidecar capture of `istio-iptables`.

use std::net::Ipv4Addr;

use super::host;
use crate::error::Result;
use crate::netfilter::{Hook, Match, Proto, Table, Target};
use crate::plan::Plan;

/// Parameters of the classic sidecar capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarConfig {
    /// The proxy's UID and GID (1337), whose traffic is never captured.
    pub proxy_uid: u32,
    /// Its GID.
    pub proxy_gid: u32,
    /// Inbound capture port (15006).
    pub inbound_port: u16,
    /// Outbound capture port (15001).
    pub outbound_port: u16,
    /// Inbound ports never captured (HBONE 15008, health 15021, stats 15020/15090).
    pub exclude_inbound: Vec<u16>,
    /// HBONE (15008): the proxy's loopback connections to its own pod on
    /// this port are not sent back inbound.
    pub hbone_port: u16,
    /// The address the proxy uses to reach the app as itself (127.0.0.6).
    pub inbound_passthrough_src: Ipv4Addr,
    /// nft table.
    pub nft_table: String,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            proxy_uid: 1337,
            proxy_gid: 1337,
            inbound_port: 15006,
            outbound_port: 15001,
            exclude_inbound: vec![15008, 15020, 15021, 15090],
            hbone_port: 15008,
            inbound_passthrough_src: Ipv4Addr::new(127, 0, 0, 6),
            nft_table: "ambit-sidecar".into(),
        }
    }
}

/// The classic sidecar capture, inside a pod: (1) inbound TCP to the
/// inbound port, (2) except excluded ports; (3) the app's outbound TCP to
/// the outbound port; (4) the proxy's own traffic (uid/gid) passes; (5)
/// localhost passes; (6) the app calling itself through a service address
/// from the proxy is sent back inbound, except to the HBONE port.
pub fn sidecar(cfg: &SidecarConfig) -> Result<Plan> {
    let mut p = Plan::new("sidecar", &cfg.nft_table);
    let nf = &mut p.netfilter;
    let (inb, in_redir, out, redir) = (
        "ISTIO_INBOUND",
        "ISTIO_IN_REDIRECT",
        "ISTIO_OUTPUT",
        "ISTIO_REDIRECT",
    );
    let tcp = || Match::Proto(Proto::Tcp);
    nf.chain(Table::Nat, in_redir);
    nf.chain(Table::Nat, redir);
    nf.jump(Table::Nat, Hook::Prerouting, inb);
    nf.jump(Table::Nat, Hook::Output, out);
    for port in &cfg.exclude_inbound {
        nf.push(
            Table::Nat,
            inb,
            vec![tcp(), Match::DPort(*port, false)],
            Target::Return,
        );
    }
    nf.push(Table::Nat, inb, vec![tcp()], Target::Jump(in_redir.into()));
    nf.push(
        Table::Nat,
        in_redir,
        vec![tcp()],
        Target::Redirect(cfg.inbound_port),
    );
    let lo = || Match::OutIface("lo".into(), false);
    let not_local = || Match::Dst(host(Ipv4Addr::LOCALHOST), true);
    nf.push(
        Table::Nat,
        out,
        vec![Match::Src(host(cfg.inbound_passthrough_src), false), lo()],
        Target::Return,
    );
    nf.push(
        Table::Nat,
        out,
        vec![
            not_local(),
            lo(),
            tcp(),
            Match::DPort(cfg.hbone_port, true),
            Match::SkUid(cfg.proxy_uid, false),
        ],
        Target::Jump(in_redir.into()),
    );
    nf.push(
        Table::Nat,
        out,
        vec![lo(), Match::SkUid(cfg.proxy_uid, true)],
        Target::Return,
    );
    nf.push(
        Table::Nat,
        out,
        vec![Match::SkUid(cfg.proxy_uid, false)],
        Target::Return,
    );
    nf.push(
        Table::Nat,
        out,
        vec![
            not_local(),
            lo(),
            tcp(),
            Match::DPort(cfg.hbone_port, true),
            Match::SkGid(cfg.proxy_gid, false),
        ],
        Target::Jump(in_redir.into()),
    );
    nf.push(
        Table::Nat,
        out,
        vec![lo(), Match::SkGid(cfg.proxy_gid, true)],
        Target::Return,
    );
    nf.push(
        Table::Nat,
        out,
        vec![Match::SkGid(cfg.proxy_gid, false)],
        Target::Return,
    );
    nf.push(
        Table::Nat,
        out,
        vec![Match::Dst(host(Ipv4Addr::LOCALHOST), false)],
        Target::Return,
    );
    nf.push(Table::Nat, out, vec![], Target::Jump(redir.into()));
    nf.push(
        Table::Nat,
        redir,
        vec![tcp()],
        Target::Redirect(cfg.outbound_port),
    );
    p.validate()?;
    Ok(p)
}
