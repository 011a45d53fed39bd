//! The node's half of Istio's node-level design (1.16–1.20): its chains,
//! rules, set, sysctls, routing tables and ip rules, and the enrolment of
//! pods into it.

use std::net::{IpAddr, Ipv4Addr};

use ambit_netns::NetNs;
use ipnet::IpNet;

use super::{Ports, Tables, bad, host, sysctl};
use crate::backend::Backend;
use crate::error::Result;
use crate::ipset::{IpSetEntry, IpSetSpec};
use crate::mark::{Mark, Marks};
use crate::netfilter::{Dir, Hook, Match, Proto, Table, Target};
use crate::plan::Plan;
use crate::route::{Family, IpRule, Route, Rtnl, Scope};

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
}
