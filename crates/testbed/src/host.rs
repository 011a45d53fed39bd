//! The host around the mesh: whether the testbed can run here, what the
//! host's network state looks like from outside the mesh's namespaces (to
//! check that teardown leaves it as it was), and process memory.

use std::process::Command;

use anyhow::bail;

/// Sanity check for callers: root, and the tools the mesh needs.
pub fn preflight() -> anyhow::Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|r| r.split_whitespace().next().unwrap_or("").to_owned())
        })
        .unwrap_or_default();
    if uid != "0" {
        bail!("run as root: the local mesh builds network namespaces and kernel rules");
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            bail!("`{tool}` is missing: install iproute2 and nftables (make deps)");
        }
    }
    Ok(())
}

/// Resident memory of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// What the host looks like from outside the mesh's namespaces: the output
/// of `ip netns list`, `nft list ruleset`, `ipset list`, `ip rule` and
/// `ip -o link`, each under its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot(Vec<(&'static str, String)>);

impl HostSnapshot {
    /// Runs the commands now (a command that fails is recorded as such).
    pub fn take() -> Self {
        let run = |cmd: &[&str]| {
            Command::new(cmd[0])
                .args(&cmd[1..])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("({} failed: {e})", cmd[0]))
        };
        Self(vec![
            ("ip netns list", run(&["ip", "netns", "list"])),
            ("nft list ruleset", run(&["nft", "list", "ruleset"])),
            ("ipset list", run(&["ipset", "list"])),
            ("ip rule", run(&["ip", "rule"])),
            ("ip link", run(&["ip", "-o", "link"])),
        ])
    }

    /// What was looked at, in order.
    pub fn what(&self) -> Vec<&'static str> {
        self.0.iter().map(|(w, _)| *w).collect()
    }

    /// What differs in `after` from this snapshot, by name.
    pub fn changed(&self, after: &Self) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(&after.0)
            .filter(|((_, before), (_, after))| before != after)
            .map(|((what, _), _)| *what)
            .collect()
    }
}

/// The settings of this process's environment that every proxy a
/// benchmark or test mesh starts is given (their environment is otherwise
/// cleared): `ZTUNNEL_WORKER_THREADS` and `TOKIO_*`, for runtime
/// experiments.
pub fn runtime_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars().filter(|(k, _)| k.starts_with("TOKIO_") || k == "ZTUNNEL_WORKER_THREADS")
}

/// The `ztunnel` binary an example runs: `given`, else `$AMBIT_ZTUNNEL`,
/// else the one built beside the example (`target/<profile>/ztunnel` for
/// `target/<profile>/examples/<name>`); an error names the build command
/// when it does not exist.
pub fn ztunnel_binary(given: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    let bin = given
        .or_else(|| std::env::var_os("AMBIT_ZTUNNEL").map(std::path::PathBuf::from))
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("ztunnel"))
        })
        .unwrap_or_default();
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it first (`cargo build --release -p ztunnel -p cni-node -p waypoint`, or `make run`)",
        bin.display()
    );
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_names_only_what_differs() {
        let before = HostSnapshot(vec![("ip rule", "a".into()), ("ip link", "b".into())]);
        let after = HostSnapshot(vec![("ip rule", "a".into()), ("ip link", "c".into())]);
        assert_eq!(before.changed(&after), ["ip link"]);
        assert!(before.changed(&before).is_empty());
        assert_eq!(before.what(), ["ip rule", "ip link"]);
    }
}
