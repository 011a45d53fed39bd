//! Node-level capture (Istio 1.16–1.20): the host half is the
//! `ztunnel-pods-ips` set, the node rules, tables 100–102 and the
//! Geneve (or VXLAN) pairs to the ztunnel pod with the ztunnel-netns rules;
//! each pod is a set entry plus a table-100 route through `istioin`.
//! Everything is programmed through `ambit-redirect` and `ambit-tunnel`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ambit_netns::NetNs;
use ambit_redirect::profiles::{self, NodeConfig, PodRef, ZtunnelConfig};
use ambit_redirect::route::{Family, Rtnl};
use ambit_redirect::{Backend, Plan, SetUpdates};
use ambit_tunnel::IstioTunnels;
use tracing::{info, warn};

use crate::agent::Dataplane;
use crate::error::{Context, Error};
use crate::pod::EnrolledPod;
use crate::state::Removal;

/// The main routing table.
const MAIN_TABLE: u32 = 254;

/// What node-level capture needs to know about the node.
#[derive(Debug)]
pub struct NodeSettings {
    /// The node (host) namespace the agent manages.
    pub host: NetNs,
    /// The ztunnel pod's namespace.
    pub ztunnel: NetNs,
    /// The node's address inside its pod CIDR (Istio's HostIP).
    pub host_ip: Ipv4Addr,
    /// The ztunnel pod's IP.
    pub ztunnel_ip: Ipv4Addr,
    /// The ztunnel pod's host-side veth; found from the main table's route
    /// to `ztunnel_ip` when `None`.
    pub ztunnel_veth: Option<String>,
    /// The tunnel layout (Geneve by default, VXLAN where Geneve is missing;
    /// `port: None` picks the first free port as Istio 1.19 does).
    pub tunnels: IstioTunnels,
    /// Packet-filter backend for the host rules.
    pub backend: Backend,
    /// Capture pods' DNS to ztunnel's 15053.
    pub capture_dns: bool,
    /// How pods' set entries are written with the nft backends: in process
    /// (default) or, as a benchmark baseline, by `nft -f -`.
    pub set_updates: SetUpdates,
}

/// The node-level data plane.
#[derive(Debug)]
pub struct NodeDataplane {
    s: NodeSettings,
    /// Set by `start`: the host config, host plan and ztunnel plan.
    applied: Option<(NodeConfig, Plan, Plan)>,
}

impl NodeDataplane {
    /// A data plane that will program `s` when started.
    pub fn new(s: NodeSettings) -> Self {
        Self { s, applied: None }
    }

    /// The host config and plans, once started (for checks and tests).
    pub fn plans(&self) -> Option<(&NodeConfig, &Plan, &Plan)> {
        self.applied.as_ref().map(|(c, h, z)| (c, h, z))
    }

    /// The host-side config and both plans for a tunnel `port`, exactly as
    /// `start` builds them.
    pub fn build_plans(
        s: &NodeSettings,
        ztunnel_veth: &str,
        port: u16,
    ) -> Result<(NodeConfig, Plan, Plan), Error> {
        let mut cfg = NodeConfig::new(s.host_ip, ztunnel_veth, s.ztunnel_ip);
        cfg.tunnel_port = port;
        cfg.capture_dns = s.capture_dns;
        cfg.inbound_tunnel.clone_from(&s.tunnels.inbound.host_name);
        cfg.outbound_tunnel
            .clone_from(&s.tunnels.outbound.host_name);
        if let IpAddr::V4(a) = s.tunnels.inbound.ztunnel_addr.addr {
            cfg.inbound_peer = a;
        }
        if let IpAddr::V4(a) = s.tunnels.outbound.ztunnel_addr.addr {
            cfg.outbound_peer = a;
        }
        let mut host = profiles::node_host(&cfg).context(|| "building the node plan".into())?;
        host.set_updates = s.set_updates;
        let mut zcfg = ZtunnelConfig::new(s.host_ip, s.ztunnel_ip);
        zcfg.inbound_tunnel
            .clone_from(&s.tunnels.inbound.ztunnel_name);
        zcfg.outbound_tunnel
            .clone_from(&s.tunnels.outbound.ztunnel_name);
        let zt = profiles::ztunnel_ns(&zcfg).context(|| "building the ztunnel plan".into())?;
        Ok((cfg, host, zt))
    }

    fn veth(&self) -> Result<String, Error> {
        if let Some(v) = &self.s.ztunnel_veth {
            return Ok(v.clone());
        }
        let want = IpAddr::V4(self.s.ztunnel_ip);
        let routes = Rtnl::open(Some(&self.s.host))
            .and_then(|mut r| r.routes(Family::V4, MAIN_TABLE))
            .context(|| format!("listing routes in {}", self.s.host))?;
        routes
            .iter()
            .filter(|r| r.dst.contains(&want))
            .max_by_key(|r| r.dst.prefix_len())
            .and_then(|r| r.dev.clone())
            .ok_or_else(|| {
                Error::invalid(
                    "ztunnel veth",
                    format!(
                        "no route to the ztunnel pod {want} in {}; pass the veth explicitly",
                        self.s.host
                    ),
                )
            })
    }

    fn try_start(&mut self) -> Result<(), Error> {
        let s = &self.s;
        let host_side = s
            .tunnels
            .apply_host_side(&s.host, IpAddr::V4(s.ztunnel_ip))
            .context(|| format!("creating the host tunnels in {}", s.host))?;
        s.tunnels
            .apply_ztunnel_side(&s.ztunnel, IpAddr::V4(s.host_ip), host_side.port)
            .context(|| format!("creating the ztunnel tunnels in {}", s.ztunnel))?;
        let veth = self.veth()?;
        let (cfg, host, zt) = Self::build_plans(&self.s, &veth, host_side.port)?;
        // Record before applying so a failure below removes them too.
        self.applied = Some((cfg, host.clone(), zt.clone()));
        host.apply(&self.s.host, self.s.backend)
            .context(|| format!("applying the node rules in {}", self.s.host))?;
        zt.apply(&self.s.ztunnel, Backend::Nft)
            .context(|| format!("applying the ztunnel rules in {}", self.s.ztunnel))?;
        info!(
            host = %self.s.host,
            ztunnel = %self.s.ztunnel,
            port = host_side.port,
            veth,
            "node-level capture applied"
        );
        Ok(())
    }

    fn applied(&self) -> Result<&(NodeConfig, Plan, Plan), Error> {
        self.applied
            .as_ref()
            .ok_or_else(|| Error::invalid("node data plane", "not started"))
    }
}

fn v4s(ips: &[IpAddr]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    ips.iter().filter_map(|ip| match ip {
        IpAddr::V4(v) => Some(*v),
        IpAddr::V6(_) => None,
    })
}

impl NodeDataplane {
    /// Enrols pods in one batch.
    fn enrol_batch(&mut self, pods: &[EnrolledPod]) -> Result<(), Error> {
        let (cfg, host, _) = self.applied()?;
        // Pods on a point-to-point veth (the `ptp` layout) have a /32 route
        // in the main table; its device gets rp_filter off.
        let main = Rtnl::open(Some(&self.s.host))
            .and_then(|mut r| r.routes(Family::V4, MAIN_TABLE))
            .context(|| "listing the main table".into())?;
        let veth_of = |ip: Ipv4Addr| {
            main.iter()
                .find(|r| r.dst.prefix_len() == 32 && r.dst.addr() == IpAddr::V4(ip))
                .and_then(|r| r.dev.clone())
        };
        let refs: Vec<PodRef> = pods
            .iter()
            .flat_map(|p| {
                v4s(&p.ips).map(|ip| PodRef {
                    ip,
                    uid: p.uid.clone(),
                    host_veth: veth_of(ip),
                })
            })
            .collect();
        profiles::enrol(&self.s.host, self.s.backend, host, cfg, &refs)
            .context(|| format!("enrolling {} pod address(es)", refs.len()))
    }
}

impl Dataplane for NodeDataplane {
    fn name(&self) -> &'static str {
        "node"
    }

    fn start(&mut self) -> Result<(), Error> {
        let r = self.try_start();
        if r.is_err()
            && let Err(e) = self.stop(false)
        {
            warn!(error = %e, "undoing a failed start");
        }
        r
    }

    fn observed(&mut self) -> Result<BTreeSet<IpAddr>, Error> {
        let (cfg, host, _) = self.applied()?;
        let mut out: BTreeSet<IpAddr> = host
            .members(&self.s.host, self.s.backend, &cfg.set_name)
            .context(|| format!("listing {}", cfg.set_name))?
            .into_iter()
            .collect();
        let routes = Rtnl::open(Some(&self.s.host))
            .and_then(|mut r| r.routes(Family::V4, cfg.tables.inbound))
            .context(|| format!("listing table {}", cfg.tables.inbound))?;
        out.extend(
            routes
                .iter()
                .filter(|r| {
                    r.dst.prefix_len() == 32
                        && r.gateway == Some(IpAddr::V4(cfg.inbound_peer))
                        && r.dev.as_deref() == Some(cfg.inbound_tunnel.as_str())
                })
                .map(|r| r.dst.addr()),
        );
        Ok(out)
    }

    fn enrol(&mut self, pods: &[EnrolledPod]) -> Vec<Result<(), Error>> {
        // One batch (one set update) first; if it fails, pod by pod, so a
        // bad pod is rolled back alone.
        if self.enrol_batch(pods).is_ok() {
            return pods.iter().map(|_| Ok(())).collect();
        }
        pods.iter()
            .map(|p| {
                let r = self.enrol_batch(std::slice::from_ref(p));
                if r.is_err() {
                    let undo = Removal {
                        uid: Some(p.uid.clone()),
                        ips: p.ips.clone(),
                        netns: None,
                        netns_id: None,
                    };
                    if let Err(e) = self.unenrol(std::slice::from_ref(&undo)) {
                        tracing::warn!(uid = %p.uid, error = %e, "rolling back a failed enrolment");
                    }
                }
                r
            })
            .collect()
    }

    fn unenrol(&mut self, pods: &[Removal]) -> Result<(), Error> {
        let (cfg, host, _) = self.applied()?;
        let ips: Vec<Ipv4Addr> = pods.iter().flat_map(|r| v4s(&r.ips)).collect();
        profiles::unenrol(&self.s.host, self.s.backend, host, cfg, &ips)
            .context(|| format!("unenrolling {} pod address(es)", ips.len()))
    }

    fn stop(&mut self, keep_rules: bool) -> Result<(), Error> {
        if keep_rules {
            return Ok(());
        }
        let mut first: Option<Error> = None;
        let mut keep = |r: Result<(), Error>| {
            if let Err(e) = r {
                warn!(error = %e, "removing node-level capture");
                first.get_or_insert(e);
            }
        };
        if let Some((_, host, zt)) = self.applied.take() {
            keep(
                host.remove(&self.s.host, self.s.backend)
                    .context(|| format!("removing the node rules from {}", self.s.host)),
            );
            keep(
                zt.remove(&self.s.ztunnel, Backend::Nft)
                    .context(|| format!("removing the ztunnel rules from {}", self.s.ztunnel)),
            );
        }
        keep(
            self.s
                .tunnels
                .delete_host_side(&self.s.host)
                .context(|| "deleting the host tunnels".into()),
        );
        keep(
            self.s
                .tunnels
                .delete_ztunnel_side(&self.s.ztunnel)
                .context(|| "deleting the ztunnel tunnels".into()),
        );
        first.map_or(Ok(()), Err)
    }
}
