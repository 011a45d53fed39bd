//! The ztunnel-netns half of Istio's node-level design (1.16–1.20).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::{Ports, Tables, bad, host, sysctl};
use crate::error::Result;
use crate::mark::Marks;
use crate::netfilter::{Hook, Match, Proto, Table, Target};
use crate::plan::Plan;
use crate::route::{IpRule, Route, Scope};

/// Parameters of the ztunnel-netns half of the node-level design.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZtunnelConfig {
    /// The node's HostIP (the tunnels' remote).
    pub host_ip: Ipv4Addr,
    /// The ztunnel pod's IP.
    pub ztunnel_ip: Ipv4Addr,
    /// The ztunnel pod's interface (`eth0`).
    pub eth: String,
    /// Inbound tunnel (`pistioin`).
    pub inbound_tunnel: String,
    /// Outbound tunnel (`pistioout`).
    pub outbound_tunnel: String,
    /// Host end of the inbound tunnel (192.168.126.1).
    pub inbound_peer: Ipv4Addr,
    /// Host end of the outbound tunnel (192.168.127.1).
    pub outbound_peer: Ipv4Addr,
    /// TPROXY listener address (127.0.0.1).
    pub listen_ip: Ipv4Addr,
    /// Routing tables.
    pub tables: Tables,
    /// Priority of the TPROXY rule (20000; original-source return is +3).
    pub rule_priority: u32,
    /// Marks.
    pub marks: Marks,
    /// Ports.
    pub ports: Ports,
    /// User-chain name.
    pub chain: String,
    /// nft table.
    pub nft_table: String,
}

impl ZtunnelConfig {
    /// Istio's defaults around the two addresses.
    pub fn new(host_ip: Ipv4Addr, ztunnel_ip: Ipv4Addr) -> Self {
        Self {
            host_ip,
            ztunnel_ip,
            eth: "eth0".into(),
            inbound_tunnel: "pistioin".into(),
            outbound_tunnel: "pistioout".into(),
            inbound_peer: Ipv4Addr::new(192, 168, 126, 1),
            outbound_peer: Ipv4Addr::new(192, 168, 127, 1),
            listen_ip: Ipv4Addr::LOCALHOST,
            tables: Tables::default(),
            rule_priority: 20000,
            marks: Marks::ISTIO,
            ports: Ports::default(),
            chain: "ztunnel-PREROUTING".into(),
            nft_table: "ambit-ztunnel".into(),
        }
    }
}

/// The ztunnel-netns half (Istio's `CreateRulesWithinNodeProxyNS`): TPROXY
/// of tunnel traffic to 15008/15001/15006, the original-source return mark,
/// rules 20000/20003, `local default dev lo` in table 100 and the return
/// routes through the tunnels. The tunnels must exist.
pub fn ztunnel_ns(cfg: &ZtunnelConfig) -> Result<Plan> {
    let m = cfg.marks;
    let mut p = Plan::new("ztunnel netns", &cfg.nft_table);
    let nf = &mut p.netfilter;
    nf.jump(Table::Mangle, Hook::Prerouting, &cfg.chain);
    let tproxy = |port| Target::Tproxy {
        ip: IpAddr::V4(cfg.listen_ip),
        port,
        mark: m.tproxy,
    };
    let tcp = Match::Proto(Proto::Tcp);
    let inb = || Match::InIface(cfg.inbound_tunnel.clone(), false);
    nf.push(
        Table::Mangle,
        &cfg.chain,
        vec![tcp.clone(), inb(), Match::DPort(cfg.ports.hbone, false)],
        tproxy(cfg.ports.hbone),
    );
    nf.push(
        Table::Mangle,
        &cfg.chain,
        vec![
            tcp.clone(),
            Match::InIface(cfg.outbound_tunnel.clone(), false),
        ],
        tproxy(cfg.ports.outbound),
    );
    nf.push(
        Table::Mangle,
        &cfg.chain,
        vec![tcp.clone(), inb()],
        tproxy(cfg.ports.inbound),
    );
    nf.push(
        Table::Mangle,
        &cfg.chain,
        vec![
            tcp,
            Match::InIface(cfg.eth.clone(), false),
            Match::Dst(host(cfg.ztunnel_ip), true),
        ],
        Target::SetMark(m.org_src_ret),
    );
    for dev in [
        "default",
        "all",
        cfg.eth.as_str(),
        &cfg.inbound_tunnel,
        &cfg.outbound_tunnel,
    ] {
        p.sysctls
            .push(sysctl(format!("net/ipv4/conf/{dev}/rp_filter"), "0"));
    }
    let t = cfg.tables;
    let default: IpNet = "0.0.0.0/0".parse().map_err(|_| bad("default route"))?;
    p.routes = vec![
        Route::local(default, t.inbound)?,
        Route::new(default, t.outbound)?
            .via(IpAddr::V4(cfg.outbound_peer))?
            .dev(&cfg.outbound_tunnel),
        Route::new(default, t.proxy)?
            .via(IpAddr::V4(cfg.inbound_peer))?
            .dev(&cfg.inbound_tunnel),
        Route::new(host(cfg.host_ip), t.outbound)?
            .dev(&cfg.eth)
            .scope(Scope::Link),
        Route::new(host(cfg.host_ip), t.proxy)?
            .dev(&cfg.eth)
            .scope(Scope::Link),
    ];
    p.rules = vec![
        IpRule::lookup(cfg.rule_priority, t.inbound)?.fwmark(m.tproxy),
        IpRule::lookup(cfg.rule_priority + 3, t.inbound)?.fwmark(m.org_src_ret),
    ];
    p.validate()?;
    Ok(p)
}
