//! Finding the network namespaces of pods that were running before the
//! agent (no sandbox event ever reached it), the way Istio's node agent
//! does it (`cni/pkg/nodeagent/podcgroupns_linux.go`,
//! `PodNetnsProcFinder::FindNetnsForPods`):
//!
//! - for every process in `/proc`, stat `/proc/PID/ns/net` (device and
//!   inode); skip the host's namespace and namespaces already claimed;
//! - read `/proc/PID/cgroup` and take the pod UID from the cgroup path
//!   (`…pod<uid>…/<container id>`, the UID's punctuation turned into
//!   dashes, as in `kubepods-besteffort-pod72f7f152_440c_….slice`);
//! - keep only wanted pods, and accept the pairing only if the namespace
//!   holds one of the pod's addresses (a process may be visiting another
//!   pod's namespace); a pod without addresses is not paired on this scan;
//! - when several namespaces qualify for one pod, the oldest process's
//!   (its start time in `/proc/PID/stat`) wins.
//!
//! The result names each namespace by `/proc/PID/ns/net` with its
//! identity; the data plane checks the identity again when it opens it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use crate::pod::NetnsId;

/// A pod's namespace found in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundNetns {
    /// `/proc/PID/ns/net` of the oldest process of the pod in it.
    pub path: PathBuf,
    /// The namespace's identity.
    pub id: NetnsId,
    /// That process's start time (clock ticks since boot).
    pub start: u64,
}

/// Scans `proc_root` (normally `/proc`) for the namespaces of `wanted`
/// pods (uid → addresses). Namespaces in `skip` (the host's) are never
/// paired. `owns` answers whether the namespace at a path holds one of
/// the addresses; [`holds_address`] in production.
pub fn find(
    proc_root: &Path,
    wanted: &BTreeMap<String, Vec<IpAddr>>,
    skip: &BTreeSet<NetnsId>,
    owns: impl Fn(&Path, &[IpAddr]) -> Result<bool, String>,
) -> BTreeMap<String, FoundNetns> {
    let mut found: BTreeMap<String, FoundNetns> = BTreeMap::new();
    if wanted.is_empty() {
        return found;
    }
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        warn!(proc = %proc_root.display(), "cannot list processes to find pod namespaces");
        return found;
    };
    let mut claimed: BTreeSet<NetnsId> = BTreeSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = proc_root.join(pid);
        let ns_path = dir.join("ns").join("net");
        // Processes come and go while we look: anything unreadable is skipped.
        let Ok(id) = NetnsId::of_path(&ns_path) else {
            continue;
        };
        if skip.contains(&id) || claimed.contains(&id) {
            continue;
        }
        let Some(uid) = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|c| pod_uid_from_cgroup(&c))
        else {
            continue;
        };
        let Some(ips) = wanted.get(&uid) else {
            continue;
        };
        if ips.is_empty() {
            debug!(%uid, "pod has no address yet; cannot check its namespace on this scan");
            continue;
        }
        let Some(start) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| start_time(&s))
        else {
            continue;
        };
        match owns(&ns_path, ips) {
            Ok(true) => {}
            Ok(false) => {
                warn!(%uid, pid, netns = %id, "namespace holds none of the pod's addresses; not pairing it (a process visiting another pod's namespace?)");
                continue;
            }
            Err(e) => {
                warn!(%uid, pid, error = %e, "could not check the pod's namespace");
                continue;
            }
        }
        claimed.insert(id);
        if found.get(&uid).is_some_and(|f| f.start <= start) {
            continue;
        }
        debug!(%uid, pid, netns = %id, "found a pod's namespace");
        found.insert(
            uid,
            FoundNetns {
                path: ns_path,
                id,
                start,
            },
        );
    }
    found
}

/// Whether the namespace at `path` holds one of `ips` on an interface: a
/// socket bound to a non-local address fails with `EADDRNOTAVAIL`.
pub fn holds_address(path: &Path, ips: &[IpAddr]) -> Result<bool, String> {
    let ns = ambit_netns::NetNs::open(path).map_err(|e| e.to_string())?;
    Ok(ips
        .iter()
        .any(|ip| ns.udp_socket(SocketAddr::new(*ip, 0)).is_ok()))
}

/// The pod UID in a `/proc/PID/cgroup` text (`hierarchy:controllers:path`
/// lines), canonicalised with dashes; `None` when no line names a pod
/// container, or lines name different pods.
pub fn pod_uid_from_cgroup(text: &str) -> Option<String> {
    let mut uid: Option<String> = None;
    for line in text.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let Some(u) = uid_in_path(path.trim_end_matches(".scope")) else {
            continue;
        };
        match &uid {
            Some(seen) if *seen != u => return None,
            _ => uid = Some(u),
        }
    }
    uid
}

/// `[punct]pod<8>[p]<4>[p]<4>[p]<4>[p]<12>[punct]<container…>` anywhere in
/// a cgroup path; the UID's separators become dashes.
fn uid_in_path(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let punct = |c: u8| c.is_ascii_punctuation();
    let mut i = 0;
    while let Some(off) = path[i..].find("pod") {
        let at = i + off;
        i = at + 3;
        if at == 0 || !punct(b[at - 1]) {
            continue;
        }
        let mut j = at + 3;
        let mut out = String::with_capacity(36);
        let mut ok = true;
        for (g, len) in [8usize, 4, 4, 4, 12].into_iter().enumerate() {
            if g > 0 {
                if j < b.len() && punct(b[j]) {
                    j += 1;
                }
                out.push('-');
            }
            if j + len > b.len() || !b[j..j + len].iter().all(u8::is_ascii_hexdigit) {
                ok = false;
                break;
            }
            out.push_str(&path[j..j + len]);
            j += len;
        }
        // The UID is followed by punctuation and then the container's part.
        if ok && j + 1 < b.len() && punct(b[j]) && b[j + 1..].iter().any(|c| !punct(*c)) {
            return Some(out.to_ascii_lowercase());
        }
    }
    None
}

/// Field 22 (`starttime`) of `/proc/PID/stat`, counted after the command
/// name's closing parenthesis (the name may hold spaces and parentheses).
fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_come_out_of_cgroup_paths() {
        let uid = "2c48913c-b29f-11e7-9350-020968147796";
        for line in [
            "11:pids:/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa",
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-9bca8d63.scope",
            "1:name=systemd:/docker/8d461fa5/kubepods/besteffort/pod2c48913c-b29f-11e7-9350-020968147796/aff34703",
        ] {
            assert_eq!(pod_uid_from_cgroup(line).as_deref(), Some(uid), "{line}");
        }
        // No container part after the pod, no pod, or two different pods.
        assert_eq!(
            pod_uid_from_cgroup("8:pids:/kubepods/pod2c48913c-b29f-11e7-9350-020968147796"),
            None
        );
        assert_eq!(pod_uid_from_cgroup("0::/user.slice/session-1.scope"), None);
        assert_eq!(pod_uid_from_cgroup("0::/\n8:pids:/\n"), None);
        let two = "8:pids:/pod2c48913c-b29f-11e7-9350-020968147796/a\n7:blkio:/pod3c48913c-b29f-11e7-9350-020968147796/a";
        assert_eq!(pod_uid_from_cgroup(two), None);
    }

    #[test]
    fn start_time_skips_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time(stat), Some(987654));
        assert_eq!(start_time("garbage"), None);
    }

    #[test]
    fn scan_of_this_machine_skips_unwanted_pods_and_the_host() {
        // No process here runs in a pod cgroup of this uid: nothing found,
        // and the checker is never asked.
        let wanted: BTreeMap<String, Vec<IpAddr>> = [(
            "00000000-0000-0000-0000-000000000001".to_owned(),
            vec!["10.9.9.9".parse().expect("ip")],
        )]
        .into();
        let found = find(Path::new("/proc"), &wanted, &BTreeSet::new(), |_, _| {
            Err("must not be asked".into())
        });
        assert!(found.is_empty());
    }
}
