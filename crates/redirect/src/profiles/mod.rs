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
//!
//! One file per design: `node` (the node's half of the node-level design
//! and pod enrolment), `ztunnel` (its ztunnel-netns half), `inpod` and
//! `sidecar`. This module holds what they share.

use std::net::IpAddr;

use ipnet::IpNet;

mod inpod;
mod node;
mod sidecar;
mod ztunnel;

pub use self::{
    inpod::{InpodConfig, PROBE_SET_V4, PROBE_SET_V6, inpod, inpod_host_probes, inpod_return_path},
    node::{NodeConfig, PodRef, enrol, node_host, unenrol},
    sidecar::{SidecarConfig, sidecar},
    ztunnel::{ZtunnelConfig, ztunnel_ns},
};

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

fn host(ip: impl Into<IpAddr>) -> IpNet {
    IpNet::from(ip.into())
}

fn sysctl(key: String, v: &str) -> (String, String) {
    (key, v.to_owned())
}

fn bad(what: &str) -> crate::Error {
    crate::Error::Invalid {
        what: what.into(),
        reason: "internal constant failed to parse".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            s.contains("! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"),
            "{s}"
        );
    }
}
