//! Istio's capture designs as plan builders.
//!
//! - [`node_host`], [`ztunnel_ns`], [`enrol`]: the node-level design of
//!   Istio 1.16–1.20 (host rules, Geneve pairs, routing tables 100–102).
//! - [`inpod`], [`inpod_host_probes`]: current Istio, rules inside each
//!   pod's namespace plus kubelet probe SNAT on the host.
//! - [`sidecar`]: the classic sidecar capture of `istio-iptables`.
//!
//! Every name, mark, port and table comes from the config structs, whose
//! defaults are Istio's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ambit_netns::NetNs;
use ipnet::IpNet;

use crate::backend::Backend;
use crate::error::Result;
use crate::ipset::{IpSetEntry, IpSetSpec};
use crate::mark::{Mark, Marks};
use crate::netfilter::{Dir, Hook, Match, Proto, Table, Target};
use crate::plan::Plan;
use crate::route::{Family, IpRule, Route, Rtnl, Scope};

/// ztunnel's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Outbound capture (15001).
    pub outbound: u16,
    /// Inbound plaintext (15006).
    pub inbound: u16,
    /// Inbound HBONE (15008).
    pub hbone: u16,
    /// DNS proxy (15053).
    pub dns: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            outbound: 15001,
            inbound: 15006,
            hbone: 15008,
            dns: 15053,
        }
    }
}

/// The three routing tables of the node-level design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tables {
    /// Inbound to enrolled pods, and ztunnel's `local default` (100).
    pub inbound: u32,
    /// Outbound from enrolled pods, via `istioout` (101).
    pub outbound: u32,
    /// Replies to spoofed connections, back to ztunnel (102).
    pub proxy: u32,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            inbound: 100,
            outbound: 101,
            proxy: 102,
        }
    }
}

/// Parameters of the node-level host half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's address inside its pod CIDR (Istio's HostIP).
    pub host_ip: Ipv4Addr,
    /// Host-side veth of the ztunnel pod.
    pub ztunnel_veth: String,
    /// The ztunnel pod's IP.
    pub ztunnel_ip: Ipv4Addr,
    /// Redirect pods' DNS (UDP 53) to ztunnel's DNS proxy.
    pub capture_dns: bool,
    /// The tunnels' UDP destination port (Geneve 6081, or the VXLAN port).
    pub tunnel_port: u16,
    /// Inbound tunnel name (`istioin`).
    pub inbound_tunnel: String,
    /// Outbound tunnel name (`istioout`).
    pub outbound_tunnel: String,
    /// The ztunnel end of the inbound tunnel (192.168.126.2).
    pub inbound_peer: Ipv4Addr,
    /// The ztunnel end of the outbound tunnel (192.168.127.2).
    pub outbound_peer: Ipv4Addr,
    /// The enrolled-pod set (`ztunnel-pods-ips`).
    pub set_name: String,
    /// User-chain prefix (`ztunnel` → `ztunnel-PREROUTING`).
    pub chain_prefix: String,
    /// Routing tables.
    pub tables: Tables,
    /// Priority of the first ip rule (100; the plan uses four in a row).
    pub rule_priority: u32,
    /// Marks.
    pub marks: Marks,
    /// ztunnel ports.
    pub ports: Ports,
    /// The nft table holding the nft rendering.
    pub nft_table: String,
}

impl NodeConfig {
    /// Istio's defaults around the three node-specific values.
    pub fn new(host_ip: Ipv4Addr, ztunnel_veth: impl Into<String>, ztunnel_ip: Ipv4Addr) -> Self {
        Self {
            host_ip,
            ztunnel_veth: ztunnel_veth.into(),
            ztunnel_ip,
            capture_dns: false,
            tunnel_port: 6081,
            inbound_tunnel: "istioin".into(),
            outbound_tunnel: "istioout".into(),
            inbound_peer: Ipv4Addr::new(192, 168, 126, 2),
            outbound_peer: Ipv4Addr::new(192, 168, 127, 2),
            set_name: "ztunnel-pods-ips".into(),
            chain_prefix: "ztunnel".into(),
            tables: Tables::default(),
            rule_priority: 100,
            marks: Marks::ISTIO,
            ports: Ports::default(),
            nft_table: "ambit-node".into(),
        }
    }

    fn chain(&self, hook: Hook) -> String {
        format!("{}-{}", self.chain_prefix, hook.chain())
    }

    /// The enrolled-pod set.
    pub fn set(&self) -> Result<IpSetSpec> {
        IpSetSpec::new(&self.set_name, Family::V4)
    }
}

fn host(ip: impl Into<IpAddr>) -> IpNet {
    IpNet::from(ip.into())
}

fn sysctl(key: String, v: &str) -> (String, String) {
    (key, v.to_owned())
}

/// The node-level host half (Istio's `CreateRulesOnNode`): chains and rules,
/// the pod set, sysctls, tables 100–102 and rules 100–103. The tunnels must
/// exist before it is applied (see `ambit-tunnel`).
pub fn node_host(cfg: &NodeConfig) -> Result<Plan> {
    let m = cfg.marks;
    let mut p = Plan::new("node host", &cfg.nft_table);
    let set = cfg.set()?;
    let in_set = |dir| Match::Set {
        name: set.name.clone(),
        dir,
        family: Family::V4,
        neg: false,
    };
    p.sets.push(set.clone());
    let nf = &mut p.netfilter;
    for (table, hook) in [
        (Table::Nat, Hook::Prerouting),
        (Table::Nat, Hook::Postrouting),
        (Table::Mangle, Hook::Prerouting),
        (Table::Mangle, Hook::Postrouting),
        (Table::Mangle, Hook::Output),
        (Table::Mangle, Hook::Input),
        (Table::Mangle, Hook::Forward),
        (Table::Filter, Hook::Forward),
    ] {
        nf.jump(table, hook, &cfg.chain(hook));
    }
    let pre = cfg.chain(Hook::Prerouting);
    let mark = |mk: Mark| Match::Mark(mk, false);
    for tun in [&cfg.inbound_tunnel, &cfg.outbound_tunnel] {
        nf.push(
            Table::Mangle,
            &pre,
            vec![Match::InIface(tun.clone(), false)],
            Target::SetMark(m.skip),
        );
        nf.push(
            Table::Mangle,
            &pre,
            vec![Match::InIface(tun.clone(), false)],
            Target::Return,
        );
    }
    for keep in [m.conn_skip, m.proxy] {
        for hook in [Hook::Forward, Hook::Input] {
            nf.push(
                Table::Mangle,
                &cfg.chain(hook),
                vec![mark(keep)],
                Target::ConnMarkSave {
                    nfmask: keep.mask(),
                    ctmask: keep.mask(),
                },
            );
        }
    }
    // kubelet health probes to enrolled pods bypass capture.
    nf.push(
        Table::Mangle,
        &cfg.chain(Hook::Output),
        vec![
            Match::SocketExists,
            Match::Proto(Proto::Tcp),
            in_set(Dir::Dst),
            Match::Src(host(cfg.host_ip), false),
        ],
        Target::SetMark(Mark::exact(m.conn_skip.value())),
    );
    // Outbound-marked packets skip kube-proxy's DNAT and SNAT and are forwarded.
    nf.push(Table::Nat, &pre, vec![mark(m.outbound)], Target::Accept);
    nf.push(
        Table::Nat,
        &cfg.chain(Hook::Postrouting),
        vec![mark(m.outbound)],
        Target::Accept,
    );
    nf.push(
        Table::Filter,
        &cfg.chain(Hook::Forward),
        vec![mark(m.outbound)],
        Target::Accept,
    );
    if cfg.capture_dns {
        nf.push(
            Table::Nat,
            &pre,
            vec![
                Match::Proto(Proto::Udp),
                in_set(Dir::Src),
                Match::DPort(53, false),
            ],
            Target::Dnat(IpAddr::V4(cfg.ztunnel_ip), cfg.ports.dns),
        );
    }
    let zv = || Match::InIface(cfg.ztunnel_veth.clone(), false);
    let rules: Vec<(Vec<Match>, Target)> = vec![
        (
            vec![
                Match::Proto(Proto::Udp),
                Match::DPort(cfg.tunnel_port, false),
            ],
            Target::Return,
        ),
        (
            vec![Match::ConnMark(m.conn_skip, false)],
            Target::SetMark(m.skip),
        ),
        (vec![mark(m.skip)], Target::Return),
        (
            vec![
                Match::InIface(cfg.ztunnel_veth.clone(), true),
                Match::ConnMark(m.proxy, false),
            ],
            Target::SetMark(m.proxy_ret),
        ),
        (vec![mark(m.proxy_ret)], Target::Return),
        (
            vec![zv(), Match::Src(host(cfg.ztunnel_ip), true)],
            Target::SetMark(m.proxy),
        ),
        (vec![mark(m.skip)], Target::Return),
        (vec![zv()], Target::SetMark(m.conn_skip)),
        (vec![Match::Proto(Proto::Udp)], Target::SetMark(m.conn_skip)),
        (vec![mark(m.skip)], Target::Return),
        (
            vec![Match::Proto(Proto::Tcp), in_set(Dir::Src)],
            Target::SetMark(m.outbound),
        ),
    ];
    for (matches, target) in rules {
        nf.push(Table::Mangle, &pre, matches, target);
    }

    for dev in ["default", "all", cfg.ztunnel_veth.as_str()] {
        p.sysctls
            .push(sysctl(format!("net/ipv4/conf/{dev}/rp_filter"), "0"));
    }
    p.sysctls.push(sysctl(
        format!("net/ipv4/conf/{}/accept_local", cfg.ztunnel_veth),
        "1",
    ));
    for tun in [&cfg.inbound_tunnel, &cfg.outbound_tunnel] {
        p.sysctls
            .push(sysctl(format!("net/ipv4/conf/{tun}/rp_filter"), "0"));
        p.sysctls
            .push(sysctl(format!("net/ipv4/conf/{tun}/accept_local"), "1"));
    }

    let t = cfg.tables;
    let zt = host(cfg.ztunnel_ip);
    let default: IpNet = "0.0.0.0/0".parse().map_err(|_| bad("default route"))?;
    p.routes = vec![
        Route::new(zt, t.outbound)?
            .dev(&cfg.ztunnel_veth)
            .scope(Scope::Link),
        Route::new(default, t.outbound)?
            .via(IpAddr::V4(cfg.outbound_peer))?
            .dev(&cfg.outbound_tunnel),
        Route::new(zt, t.proxy)?
            .dev(&cfg.ztunnel_veth)
            .scope(Scope::Link),
        Route::new(default, t.proxy)?
            .via(IpAddr::V4(cfg.ztunnel_ip))?
            .dev(&cfg.ztunnel_veth)
            .onlink(),
        Route::new(zt, t.inbound)?
            .dev(&cfg.ztunnel_veth)
            .scope(Scope::Link),
    ];
    let pr = cfg.rule_priority;
    p.rules = vec![
        IpRule::goto(pr, 32766)?.fwmark(m.skip),
        IpRule::lookup(pr + 1, t.outbound)?.fwmark(m.outbound),
        IpRule::lookup(pr + 2, t.proxy)?.fwmark(m.proxy_ret),
        IpRule::lookup(pr + 3, t.inbound)?,
    ];
    p.validate()?;
    Ok(p)
}

fn bad(what: &str) -> crate::Error {
    crate::Error::Invalid {
        what: what.into(),
        reason: "internal constant failed to parse".into(),
    }
}

/// An enrolled pod, as the node-level design needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// The pod's UID (the set entry's comment).
    pub uid: String,
    /// The pod's host-side veth, whose rp_filter is turned off.
    pub host_veth: Option<String>,
}

fn pod_route(cfg: &NodeConfig, ip: Ipv4Addr) -> Result<Route> {
    Route::new(host(ip), cfg.tables.inbound)?
        .via(IpAddr::V4(cfg.inbound_peer))?
        .dev(&cfg.inbound_tunnel)
        .src(IpAddr::V4(cfg.host_ip))
}

/// Enrols pods in node-level capture: set entries (one batch), table-100
/// routes through `istioin`, and rp_filter off on their veths. Idempotent.
pub fn enrol(
    ns: &NetNs,
    backend: Backend,
    plan: &Plan,
    cfg: &NodeConfig,
    pods: &[PodRef],
) -> Result<()> {
    let entries: Vec<IpSetEntry> = pods
        .iter()
        .map(|p| IpSetEntry::new(IpAddr::V4(p.ip), p.uid.clone()))
        .collect();
    plan.add_members(ns, backend, &cfg.set_name, &entries)?;
    let routes = pods
        .iter()
        .map(|p| pod_route(cfg, p.ip))
        .collect::<Result<Vec<_>>>()?;
    Rtnl::open(Some(ns))?.add_routes(&routes)?;
    for v in pods.iter().filter_map(|p| p.host_veth.as_deref()) {
        ns.set_sysctl(&format!("net/ipv4/conf/{v}/rp_filter"), "0")?;
    }
    Ok(())
}

/// Reverses [`enrol`]: set entries and routes go; absent ones are ignored.
pub fn unenrol(
    ns: &NetNs,
    backend: Backend,
    plan: &Plan,
    cfg: &NodeConfig,
    pods: &[Ipv4Addr],
) -> Result<()> {
    let routes = pods
        .iter()
        .map(|ip| pod_route(cfg, *ip))
        .collect::<Result<Vec<_>>>()?;
    Rtnl::open(Some(ns))?.del_routes(&routes)?;
    let ips: Vec<IpAddr> = pods.iter().map(|ip| IpAddr::V4(*ip)).collect();
    plan.del_members(ns, backend, &cfg.set_name, &ips)
}

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
    let mut nets: Vec<IpNet> = vec!["0.0.0.0/0".parse().map_err(|_| bad("default"))?];
    if cfg.ipv6 {
        nets.push("::/0".parse().map_err(|_| bad("default6"))?);
    }
    for n in nets {
        p.routes.push(Route::local(n, cfg.table)?);
        p.rules.push(
            IpRule::lookup(cfg.rule_priority, cfg.table)?
                .fwmark(m.inpod_tproxy)
                .family(Family::of(n.addr())),
        );
    }
    p.validate()?;
    Ok(p)
}

/// The host half of in-pod capture: kubelet's probes to enrolled pods are
/// SNATed to the probe address, which the pod rules let through.
pub fn inpod_host_probes(cfg: &InpodConfig) -> Result<Plan> {
    let mut p = Plan::new("in-pod host probes", format!("{}-host", cfg.nft_table));
    let set = IpSetSpec::new("istio-inpod-probes-v4", Family::V4)?;
    p.netfilter
        .jump(Table::Nat, Hook::Postrouting, "ISTIO_POSTRT");
    p.netfilter.push(
        Table::Nat,
        "ISTIO_POSTRT",
        vec![
            Match::SocketExists,
            Match::Proto(Proto::Tcp),
            Match::Set {
                name: set.name.clone(),
                dir: Dir::Dst,
                family: Family::V4,
                neg: false,
            },
        ],
        Target::Snat(IpAddr::V4(cfg.probe_ip)),
    );
    p.sets.push(set);
    p.validate()?;
    Ok(p)
}

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
            inbound_passthrough_src: Ipv4Addr::new(127, 0, 0, 6),
            nft_table: "ambit-sidecar".into(),
        }
    }
}

/// The classic sidecar capture, inside a pod: (1) inbound TCP to the
/// inbound port, (2) except excluded ports; (3) the app's outbound TCP to
/// the outbound port; (4) the proxy's own traffic (uid/gid) passes; (5)
/// localhost passes; (6) the app calling itself through a service address
/// from the proxy is sent back inbound.
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
        vec![not_local(), lo(), tcp(), Match::SkUid(cfg.proxy_uid, false)],
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
        vec![not_local(), lo(), tcp(), Match::SkGid(cfg.proxy_gid, false)],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_plan_matches_istio_rule_text() {
        let cfg = NodeConfig::new(
            Ipv4Addr::new(10, 244, 0, 1),
            "veth0",
            Ipv4Addr::new(10, 244, 0, 2),
        );
        let p = node_host(&cfg).expect("plan");
        let text = p.render_iptables().expect("render");
        for want in [
            "-A ztunnel-PREROUTING -i istioin -j MARK --set-xmark 0x200/0x200",
            "-A ztunnel-FORWARD -m mark --mark 0x220/0x220 -j CONNMARK --save-mark --nfmask 0x220 --ctmask 0x220",
            "-A ztunnel-OUTPUT -m owner --socket-exists -p tcp -m tcp -m set --match-set ztunnel-pods-ips dst -s 10.244.0.1/32 -j MARK --set-xmark 0x220/0xffffffff",
            "-A ztunnel-PREROUTING -p udp -m udp --dport 6081 -j RETURN",
            "-A ztunnel-PREROUTING ! -i veth0 -m connmark --mark 0x210/0x210 -j MARK --set-xmark 0x40/0x40",
            "-A ztunnel-PREROUTING -i veth0 ! -s 10.244.0.2/32 -j MARK --set-xmark 0x210/0x210",
            "-A ztunnel-PREROUTING -p tcp -m tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100",
            "# ip -4 rule add priority 100 fwmark 0x200/0x200 goto 32766",
            "# ip -4 route add default via 10.244.0.2 dev veth0 onlink table 102",
            "# ipset create ztunnel-pods-ips hash:ip family inet comment",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // The nft rendering exists for every rule.
        assert!(
            p.render_nft()
                .expect("nft")
                .contains("table inet ambit-node")
        );
    }

    #[test]
    fn inpod_and_sidecar_render() {
        let p = inpod(&InpodConfig {
            capture_dns: true,
            ipv6: true,
            ..InpodConfig::default()
        })
        .expect("plan");
        let t = p.render_iptables().expect("render");
        assert!(t.contains("-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006"), "{t}");
        assert!(
            t.contains(
                "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff"
            ),
            "{t}"
        );
        assert!(t.contains("-j CT --zone 1"), "{t}");
        let n = p.render_nft().expect("nft");
        assert!(n.contains("redirect to :15006"), "{n}");
        assert!(
            n.contains("ct mark set ct mark & 0xfffff000 ^ 0x111"),
            "{n}"
        );
        assert!(n.contains("meta mark set ct mark"), "{n}");
        let s = sidecar(&SidecarConfig::default())
            .expect("plan")
            .render_iptables()
            .expect("render");
        assert!(
            s.contains("-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN"),
            "{s}"
        );
        assert!(
            s.contains("-A ISTIO_REDIRECT -p tcp -m tcp -j REDIRECT --to-ports 15001"),
            "{s}"
        );
    }
}
