//! Traffic capture for a service mesh, programmed in the kernel.
//!
//! `ambit-redirect` turns a capture design into kernel state and back:
//! packet marks ([`mark`]), policy routing over rtnetlink ([`route`]), sets of
//! pod addresses over nfnetlink ([`ipset`]), and packet-filter rules
//! ([`netfilter`]) rendered for nftables or iptables. A [`Plan`] bundles
//! everything one capture mode needs in one namespace, as data; it can be
//! printed (dry run), applied idempotently, verified for drift, and removed
//! without touching anything it does not own. [`profiles`] builds Istio's
//! plans: node-level (1.16–1.20), in-pod (current) and sidecar.
//!
//! Backends ([`Backend`]): native nftables (default: one atomic
//! transaction, one owned `inet` table), written in process over nfnetlink
//! and read back the same way for verification, or through `nft -f -`
//! ([`RuleWrites`]); iptables through `iptables-restore --noflush`; and,
//! with the `nftnl` feature, nftables in process through libnftnl. Sets,
//! rules and routes always go over netlink; nftables set elements are
//! added and deleted in process ([`nftset`]).
//!
//! With the `ebpf` feature, [`ebpf`] carries out the in-pod capture intent
//! with eBPF instead of netfilter NAT: connect-time redirection in cgroup
//! hooks, `SO_ORIGINAL_DST` answered from a map, inbound steered by
//! `sk_lookup`.
#![deny(unsafe_code)]

mod backend;
#[cfg(feature = "ebpf")]
pub mod ebpf;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod ipset;
pub mod mark;
pub mod netfilter;
#[cfg(feature = "nftnl")]
mod nftnl_backend;
mod nftrules;
pub mod nftset;
mod plan;
pub mod profiles;
pub mod route;

pub use self::{
    backend::Backend,
    error::{Error, Result},
    nftrules::RuleWrites,
    nftset::SetUpdates,
    plan::{Drift, NsHandle, Plan, Step},
};
