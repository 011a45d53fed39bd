//! Istio's node-level tunnel pairs (ambient, Istio 1.16–1.20).
//!
//! The host side (node netns) has `istioin` (VNI 1000, 192.168.126.1/30)
//! and `istioout` (VNI 1001, 192.168.127.1/30), both with remote = the
//! ztunnel pod's IP; the ztunnel side (its pod netns) has `pistioin` and
//! `pistioout` with the `.2` addresses and remote = the host IP. All four
//! share one UDP port: from Istio 1.19 the first port ≥ 6081 not used by
//! another Geneve link. Host links get `rp_filter=0` and `accept_local=1`,
//! ztunnel links `rp_filter=0`. Istio never set an MTU; [`IstioTunnels::mtu`]
//! can.

use std::net::{IpAddr, Ipv4Addr};

use ambit_netns::NetNs;

use crate::error::Result;
use crate::links::{Links, Outcome, reconcile};
use crate::spec::{GENEVE_PORT, IfAddr, Tunnel, TunnelKind};

/// One direction of the pair: a host-side and a ztunnel-side link sharing a
/// VNI and a point-to-point subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelPairSide {
    /// The link in the node netns (`istioin`).
    pub host_name: String,
    /// The link in the ztunnel netns (`pistioin`).
    pub ztunnel_name: String,
    /// The VNI (1000).
    pub vni: u32,
    /// The host link's address (192.168.126.1/30).
    pub host_addr: IfAddr,
    /// The ztunnel link's address (192.168.126.2/30).
    pub ztunnel_addr: IfAddr,
}

/// The four links of Istio's node-level design, parameterised; the
/// [`Default`] is Istio's Geneve setup with the port chosen as Istio 1.19
/// does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioTunnels {
    /// Geneve (Istio) or VXLAN (kernels without Geneve).
    pub kind: TunnelKind,
    /// The UDP port; `None` picks the first port ≥ [`IstioTunnels::first_port`]
    /// not used by another link of the same kind in the node netns.
    pub port: Option<u16>,
    /// Where the port search starts (6081).
    pub first_port: u16,
    /// Inbound: `istioin`/`pistioin`, VNI 1000, 192.168.126.0/30.
    pub inbound: TunnelPairSide,
    /// Outbound: `istioout`/`pistioout`, VNI 1001, 192.168.127.0/30.
    pub outbound: TunnelPairSide,
    /// An MTU for all four links; `None` (Istio) keeps the kernel default.
    pub mtu: Option<u32>,
}

/// What applying one side did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairOutcome {
    /// The UDP port the side uses; the other side must use the same.
    pub port: u16,
    /// The inbound link.
    pub inbound: Outcome,
    /// The outbound link.
    pub outbound: Outcome,
}

impl Default for IstioTunnels {
    fn default() -> Self {
        let side = |host: &str, zt: &str, vni, third| TunnelPairSide {
            host_name: host.into(),
            ztunnel_name: zt.into(),
            vni,
            host_addr: IfAddr::new(Ipv4Addr::new(192, 168, third, 1), 30),
            ztunnel_addr: IfAddr::new(Ipv4Addr::new(192, 168, third, 2), 30),
        };
        Self {
            kind: TunnelKind::Geneve,
            port: None,
            first_port: GENEVE_PORT,
            inbound: side("istioin", "pistioin", 1000, 126),
            outbound: side("istioout", "pistioout", 1001, 127),
            mtu: None,
        }
    }
}

impl IstioTunnels {
    /// Istio's layout carried over VXLAN instead of Geneve.
    pub fn vxlan() -> Self {
        Self {
            kind: TunnelKind::Vxlan,
            ..Self::default()
        }
    }

    /// The host-side links (`istioin`, `istioout`) for a ztunnel at
    /// `ztunnel_ip`, on `port`.
    pub fn host_side(&self, ztunnel_ip: IpAddr, port: u16) -> [Tunnel; 2] {
        [&self.inbound, &self.outbound].map(|s| {
            self.tunnel(&s.host_name, s.vni, ztunnel_ip, port, s.host_addr)
                .sysctls(Some(0), Some(true))
        })
    }

    /// The ztunnel-side links (`pistioin`, `pistioout`) for a host at
    /// `host_ip`, on `port`.
    pub fn ztunnel_side(&self, host_ip: IpAddr, port: u16) -> [Tunnel; 2] {
        [&self.inbound, &self.outbound].map(|s| {
            self.tunnel(&s.ztunnel_name, s.vni, host_ip, port, s.ztunnel_addr)
                .sysctls(Some(0), None)
        })
    }

    fn tunnel(&self, name: &str, vni: u32, remote: IpAddr, port: u16, addr: IfAddr) -> Tunnel {
        let mut t = Tunnel::new(name, self.kind, vni, remote)
            .port(port)
            .address(addr);
        t.mtu = self.mtu;
        t
    }

    /// Reconciles `istioin` and `istioout` in the node namespace. With
    /// `port: None` the port is chosen first (our own two links excluded,
    /// so a re-apply keeps the port they have).
    pub fn apply_host_side(&self, node: &NetNs, ztunnel_ip: IpAddr) -> Result<PairOutcome> {
        let port = match self.port {
            Some(p) => p,
            None => Links::open(node)?.first_free_port(
                self.kind,
                self.first_port,
                &[&self.inbound.host_name, &self.outbound.host_name],
            )?,
        };
        let [inb, outb] = self.host_side(ztunnel_ip, port);
        apply_pair(node, &inb, &outb, port)
    }

    /// Reconciles `pistioin` and `pistioout` in the ztunnel's namespace,
    /// on the port the host side uses.
    pub fn apply_ztunnel_side(
        &self,
        ztunnel: &NetNs,
        host_ip: IpAddr,
        port: u16,
    ) -> Result<PairOutcome> {
        let [inb, outb] = self.ztunnel_side(host_ip, port);
        apply_pair(ztunnel, &inb, &outb, port)
    }

    /// Deletes `istioin` and `istioout` from the node namespace (absent is fine).
    pub fn delete_host_side(&self, node: &NetNs) -> Result<()> {
        let mut links = Links::open(node)?;
        links.delete(&self.inbound.host_name)?;
        links.delete(&self.outbound.host_name)?;
        Ok(())
    }

    /// Deletes `pistioin` and `pistioout` from the ztunnel namespace.
    pub fn delete_ztunnel_side(&self, ztunnel: &NetNs) -> Result<()> {
        let mut links = Links::open(ztunnel)?;
        links.delete(&self.inbound.ztunnel_name)?;
        links.delete(&self.outbound.ztunnel_name)?;
        Ok(())
    }
}

fn apply_pair(ns: &NetNs, inb: &Tunnel, outb: &Tunnel, port: u16) -> Result<PairOutcome> {
    // Validate both before touching either.
    inb.validate()?;
    outb.validate()?;
    Ok(PairOutcome {
        port,
        inbound: reconcile(ns, inb)?,
        outbound: reconcile(ns, outb)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ttl;

    #[test]
    fn defaults_are_istios() {
        let i = IstioTunnels::default();
        let zt: IpAddr = Ipv4Addr::new(10, 244, 0, 5).into();
        let [inb, outb] = i.host_side(zt, 6081);
        assert_eq!(inb.name, "istioin");
        assert_eq!(inb.params.vni, 1000);
        assert_eq!(inb.params.remote, zt);
        assert_eq!(inb.params.port, 6081);
        assert_eq!(inb.params.kind, TunnelKind::Geneve);
        assert_eq!(inb.params.ttl, Ttl::Auto);
        assert_eq!(inb.addresses[0].to_string(), "192.168.126.1/30");
        assert_eq!((inb.rp_filter, inb.accept_local), (Some(0), Some(true)));
        assert_eq!(outb.name, "istioout");
        assert_eq!(outb.params.vni, 1001);
        assert_eq!(outb.addresses[0].to_string(), "192.168.127.1/30");

        let host: IpAddr = Ipv4Addr::new(10, 244, 0, 1).into();
        let [pin, pout] = IstioTunnels::vxlan().ztunnel_side(host, 6082);
        assert_eq!(pin.name, "pistioin");
        assert_eq!(pin.params.kind, TunnelKind::Vxlan);
        assert_eq!(pin.params.remote, host);
        assert_eq!(pin.addresses[0].to_string(), "192.168.126.2/30");
        assert_eq!((pin.rp_filter, pin.accept_local), (Some(0), None));
        assert_eq!(pout.name, "pistioout");
        assert_eq!(pout.addresses[0].to_string(), "192.168.127.2/30");
        for t in [inb, outb, pin, pout] {
            assert!(t.validate().is_ok(), "{t:?}");
        }
    }
}
