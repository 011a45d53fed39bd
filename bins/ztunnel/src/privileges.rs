//! Least privilege: ztunnel keeps only the capabilities it uses and drops
//! every other one before any thread exists.
//!
//! Capabilities belong to threads, and a thread inherits its creator's, so
//! the drop happens first thing in `main`, before the runtime's workers are
//! spawned. What is kept is what the proxy needs for its whole life, not
//! just at start-up: every outbound socket is marked and may be bound to
//! the original source, and in in-pod mode every pod's listeners and
//! connections are opened inside the pod's netns.

use std::net::SocketAddr;

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities ztunnel uses, and why.
///
/// - `CAP_NET_ADMIN`: `IP_TRANSPARENT` on the TPROXY listeners and on
///   original-source connects, `SO_MARK` on every socket it opens.
/// - `CAP_SYS_ADMIN` (in-pod mode only): `setns` into the pod netns
///   received over ZDS, for each pod's listeners and connections.
/// - `CAP_NET_BIND_SERVICE` only if one of `binds` is below 1024.
pub fn needed(inpod: bool, binds: &[SocketAddr]) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    keep.insert(Capability::CAP_NET_ADMIN);
    if inpod {
        keep.insert(Capability::CAP_SYS_ADMIN);
    }
    if binds.iter().any(|a| a.port() != 0 && a.port() < 1024) {
        keep.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    keep
}

/// Reduces this thread's capabilities to `keep` (or to what of it is
/// permitted): the effective and permitted sets become that, the
/// inheritable and ambient sets are cleared, and, when `CAP_SETPCAP` allows
/// it, the bounding set loses everything else so nothing can come back.
/// Returns what is kept.
pub fn drop_all_but(keep: &CapsHashSet) -> Result<CapsHashSet, caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    // The bounding set first, while CAP_SETPCAP is still effective.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_mode_keeps_only_net_admin() {
        let binds = ["127.0.0.1:15000".parse().expect("addr")];
        let keep = needed(false, &binds);
        assert_eq!(keep, CapsHashSet::from([Capability::CAP_NET_ADMIN]));
    }

    #[test]
    fn inpod_mode_adds_sys_admin_and_low_ports_bind_service() {
        let binds = ["0.0.0.0:80".parse().expect("addr")];
        let keep = needed(true, &binds);
        assert!(keep.contains(&Capability::CAP_SYS_ADMIN));
        assert!(keep.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert_eq!(keep.len(), 3);
    }
}
