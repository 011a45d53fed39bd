//! eBPF capture (cargo feature `ebpf`): Istio's in-pod capture intent
//! carried out at connect time instead of by netfilter NAT.
//!
//! The programs (`bpf/capture.bpf.c`, built with clang by this crate's
//! build script) are attached once per node to a cgroup v2 (the root by
//! default, so every pod's sockets pass through them) and act only on
//! sockets of **enrolled** network namespaces:
//!
//! - `cgroup/connect4`, `cgroup/connect6`: an enrolled pod's TCP connect to
//!   anything but loopback, the pod itself or the probe address goes to
//!   ztunnel's outbound port (15001) on the pod's own address (so the
//!   source stays the pod's, as after a netfilter redirect), unless the
//!   socket carries ztunnel's mark (1337);
//! - `sockops`: keeps the original destination under the client's address
//!   once its port is bound, and registers ztunnel's inbound listener
//!   (15006) of each enrolled namespace when it calls `listen()`;
//! - `cgroup/getsockopt`: `SO_ORIGINAL_DST` on ztunnel's accepted socket
//!   answers the original destination, so ztunnel reads it exactly as it
//!   does after an nftables `redirect`;
//! - `sk_lookup`, attached to each enrolled namespace: TCP arriving from
//!   outside (not HBONE 15008, not the probe address, not a connection made
//!   inside the namespace such as ztunnel's own delivery, which sockops
//!   records) is handed to that inbound listener, keeping its destination
//!   address.
//!
//! Everything lives under a pin directory on a bpf filesystem
//! (`/sys/fs/bpf/ambit` by default): the maps (`maps/`), the node-wide
//! links (`links/`) and one sk_lookup link per enrolled pod (`pods/`). Pins
//! outlive the agent, so capture continues across agent restarts and
//! upgrades; [`EbpfCapture::start`] reuses the pinned maps and replaces the
//! node-wide links make-before-break, [`EbpfCapture::retain`] drops pods the
//! restarted agent no longer knows, and [`remove`] takes everything away.
//!
//! Replies of ztunnel's original-source connections to the app still need
//! the in-pod plan's return path (connmark 0x111 and its route), which no
//! socket hook can see: [`crate::profiles::inpod_return_path`] is that part
//! of the in-pod plan alone.

mod maps;
mod sys;

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ambit_netns::NetNs;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Program, SkLookup};
use aya::{Ebpf, EbpfLoader};

pub use self::maps::netns_cookie;
use self::maps::{ConfigValue, PodValue};
use crate::error::{Error, Result};
use crate::mark::{Mark, Marks};
use crate::profiles::Ports;

/// The compiled programs.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/capture.bpf.o"));

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ambit";

/// The filesystem type of the cgroup v2 hierarchy in the mount table.
const CGROUP2_FS: &str = "cgroup2";

/// The node-wide programs: (name in the object, pinned link name, attach
/// type).
const NODE_PROGRAMS: [(&str, &str, u32); 4] = [
    ("ambit_connect4", "connect4", sys::ATTACH_INET4_CONNECT),
    ("ambit_connect6", "connect6", sys::ATTACH_INET6_CONNECT),
    ("ambit_sockops", "sockops", sys::ATTACH_SOCK_OPS),
    ("ambit_getsockopt", "getsockopt", sys::ATTACH_GETSOCKOPT),
];

const SK_LOOKUP: &str = "ambit_sk_lookup";
const SK_MSG: &str = "ambit_sk_msg";

/// The maps, pinned by name under `maps/` and reused by the next start.
const MAPS: [&str; 8] = [
    "ambit_config",
    "ambit_enrolled",
    "ambit_pod_netns",
    "ambit_orig_by_cookie",
    "ambit_orig_by_peer",
    "ambit_local_conns",
    "ambit_local_socks",
    "ambit_listeners",
];

/// What the programs are told and where they live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfConfig {
    /// Directory on a bpf filesystem for the pins.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory the node-wide programs attach to; `None` is the
    /// root of the unified hierarchy.
    pub cgroup: Option<PathBuf>,
    /// ztunnel's socket mark (1337), whose connects are never redirected.
    pub marks: Marks,
    /// ztunnel's ports (outbound 15001, inbound 15006, HBONE 15008).
    pub ports: Ports,
    /// Kubelet probe source after the host's SNAT (169.254.7.127).
    pub probe_ip: std::net::Ipv4Addr,
    /// Its IPv6 counterpart.
    pub probe_ip6: std::net::Ipv6Addr,
    /// Same-namespace splice: the bytes of connections with both ends in
    /// one enrolled pod (the app and its ztunnel) go from socket to socket
    /// by sk_msg instead of through TCP/IP on loopback.
    pub splice_local: bool,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        let inpod = crate::profiles::InpodConfig::default();
        Self {
            pin_dir: DEFAULT_PIN_DIR.into(),
            cgroup: None,
            marks: inpod.marks,
            ports: inpod.ports,
            probe_ip: inpod.probe_ip,
            probe_ip6: inpod.probe_ip6,
            splice_local: false,
        }
    }
}

/// One enrolled pod as pinned: its key and namespace cookie.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnrolledPod {
    /// The caller's key (a pod UID).
    pub key: String,
    /// The namespace's cookie (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
}

/// The loaded programs and their pinned state.
pub struct EbpfCapture {
    cfg: EbpfConfig,
    ebpf: Ebpf,
}

impl std::fmt::Debug for EbpfCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfCapture")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn ebpf_err(op: impl Into<String>, e: impl std::error::Error) -> Error {
    let mut reason = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        src = s.source();
    }
    Error::Ebpf {
        op: op.into(),
        reason,
    }
}

/// Oldest kernel with every hook and helper the programs use
/// (`bpf_get_netns_cookie` in sockops came last, in 5.15).
pub const MIN_KERNEL: (u32, u32) = (5, 15);

/// Whether this machine can use eBPF capture: `Ok(())`, or the reason it
/// cannot (kernel older than [`MIN_KERNEL`], no cgroup v2, no `bpf(2)` for
/// this process). Tests skip with that reason. A kernel that has all of
/// these but refuses a program is an error of [`EbpfCapture::start`], not
/// a reason to skip.
pub fn supported() -> std::result::Result<(), String> {
    check_kernel().map_err(|e| e.to_string())?;
    cgroup2_root().map_err(|e| e.to_string())?;
    EbpfLoader::new()
        .load(OBJECT)
        .map(drop)
        .map_err(|e| ebpf_err("creating the capture maps (is bpf(2) allowed?)", e).to_string())
}

/// The running kernel is at least [`MIN_KERNEL`].
fn check_kernel() -> Result<()> {
    let release = nix::sys::utsname::uname()
        .map_err(|e| ebpf_err("checking the kernel version (uname)", e))?
        .release()
        .to_string_lossy()
        .into_owned();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < MIN_KERNEL {
        return Err(Error::Ebpf {
            op: "checking the kernel version".into(),
            reason: format!(
                "kernel {release} is older than {}.{}",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        });
    }
    Ok(())
}

/// The root of the cgroup v2 hierarchy, from the mount table.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| ebpf_err("reading /proc/self/mountinfo", e))?;
    for line in mounts.lines() {
        // ... mount-point ... - fstype source options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some(CGROUP2_FS)
            && let Some(point) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(point));
        }
    }
    Err(Error::Ebpf {
        op: "finding the cgroup v2 hierarchy".into(),
        reason: "no cgroup2 filesystem is mounted".into(),
    })
}

/// Mounts a bpf filesystem on `dir` unless one is there already (as
/// `/sys/fs/bpf` usually is).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    if is_bpffs(dir)? {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| ebpf_err(format!("creating {}", dir.display()), e))?;
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| ebpf_err(format!("mounting a bpf filesystem on {}", dir.display()), e))
}

fn is_bpffs(dir: &Path) -> Result<bool> {
    match nix::sys::statfs::statfs(dir) {
        Ok(s) => Ok(s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(ebpf_err(format!("statfs {}", dir.display()), e)),
    }
}

/// The bpf filesystem holding `dir`: `dir` or its nearest existing parent.
fn check_on_bpffs(dir: &Path) -> Result<()> {
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.exists() {
            return if is_bpffs(d)? {
                Ok(())
            } else {
                Err(Error::Ebpf {
                    op: format!("using pin directory {}", dir.display()),
                    reason: format!(
                        "{} is not on a bpf filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)",
                        d.display()
                    ),
                })
            };
        }
        p = d.parent();
    }
    Ok(())
}

fn load_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    let prog = ebpf.program_mut(name).ok_or_else(|| Error::Ebpf {
        op: format!("loading program {name}"),
        reason: "not in the capture object".into(),
    })?;
    let loaded = match prog {
        Program::CgroupSockAddr(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        Program::SkLookup(p) => p.load(),
        Program::SkMsg(p) => p.load(),
        _ => {
            return Err(Error::Ebpf {
                op: format!("loading program {name}"),
                reason: "unexpected program type".into(),
            });
        }
    };
    match loaded {
        Ok(()) | Err(aya::programs::ProgramError::AlreadyLoaded) => Ok(prog),
        Err(e) => Err(ebpf_err(format!("loading program {name} (verifier)"), e)),
    }
}

impl EbpfCapture {
    /// Checks the kernel ([`MIN_KERNEL`]), loads the programs, reusing the
    /// pinned maps of an earlier run, and attaches the node-wide programs
    /// to the cgroup, replacing the links of an earlier run after the new
    /// ones are in place. Idempotent.
    pub fn start(cfg: EbpfConfig) -> Result<Self> {
        check_kernel()?;
        check_on_bpffs(&cfg.pin_dir)?;
        for sub in ["maps", "links", "pods"] {
            let d = cfg.pin_dir.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| ebpf_err(format!("creating {}", d.display()), e))?;
        }
        let cgroup_dir = match &cfg.cgroup {
            Some(c) => c.clone(),
            None => cgroup2_root()?,
        };
        let cgroup = File::open(&cgroup_dir)
            .map_err(|e| ebpf_err(format!("opening cgroup {}", cgroup_dir.display()), e))?;
        let map_dir = cfg.pin_dir.join("maps");
        let pins: Vec<(&str, PathBuf)> = MAPS.iter().map(|m| (*m, map_dir.join(m))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .load(OBJECT)
            .map_err(|e| {
                ebpf_err(
                    format!(
                        "loading the capture programs (maps pinned in {}; remove them if a different version made them)",
                        cfg.pin_dir.join("maps").display()
                    ),
                    e,
                )
            })?;
        let fresh = list_dir(&cfg.pin_dir.join("links"))?.is_empty();
        let mut this = Self { cfg, ebpf };
        match this.attach_all(cgroup.as_fd()) {
            Ok(()) => Ok(this),
            Err(e) => {
                // A first start leaves nothing behind; a restart keeps the
                // previous run's links, which still capture.
                if fresh {
                    let dir = this.cfg.pin_dir.clone();
                    drop(this);
                    let _ = remove(&dir);
                }
                Err(e)
            }
        }
    }

    fn attach_all(&mut self, cgroup: std::os::fd::BorrowedFd<'_>) -> Result<()> {
        load_program(&mut self.ebpf, SK_LOOKUP)?;
        self.write_config()?;
        for (name, pin, attach_type) in NODE_PROGRAMS {
            let path = self.cfg.pin_dir.join("links").join(pin);
            self.attach_node(name, attach_type, cgroup, &path)?;
        }
        if self.cfg.splice_local {
            self.attach_splice()?;
        }
        Ok(())
    }

    fn write_config(&mut self) -> Result<()> {
        let c = &self.cfg;
        let inpod: Mark = c.marks.inpod;
        let v = ConfigValue {
            mark: inpod.value(),
            mark_mask: inpod.mask(),
            outbound_port: c.ports.outbound,
            inbound_port: c.ports.inbound,
            hbone_port: c.ports.hbone,
            probe4: c.probe_ip,
            probe6: c.probe_ip6,
            splice_local: c.splice_local,
        };
        maps::write_config(&mut self.ebpf, &v)
    }

    /// Attaches node-wide program `name` to the cgroup through a new link
    /// and pins it at `path`, replacing the link pinned there before: the
    /// new program is in place before the old one goes.
    fn attach_node(
        &mut self,
        name: &str,
        attach_type: u32,
        cgroup: std::os::fd::BorrowedFd<'_>,
        path: &Path,
    ) -> Result<()> {
        let op = || format!("attaching {name} to the cgroup");
        let link = {
            let prog = load_program(&mut self.ebpf, name)?;
            let fd = match prog {
                Program::CgroupSockAddr(p) => p.fd(),
                Program::SockOps(p) => p.fd(),
                Program::CgroupSockopt(p) => p.fd(),
                _ => {
                    return Err(Error::Ebpf {
                        op: op(),
                        reason: "not a cgroup program".into(),
                    });
                }
            }
            .map_err(|e| ebpf_err(op(), e))?;
            sys::link_create(fd.as_fd(), cgroup, attach_type).map_err(|e| ebpf_err(op(), e))?
        };
        unpin(path)?;
        sys::obj_pin(link.as_fd(), path)
            .map_err(|e| ebpf_err(format!("pinning {}", path.display()), e))
    }

    /// Attaches the sk_msg program to the local-sockets map. The map holds
    /// the attachment (and the pin holds the map), so it outlives this
    /// process as the links do; a later start replaces it.
    fn attach_splice(&mut self) -> Result<()> {
        let op = "attaching sk_msg to ambit_local_socks";
        let map = self
            .ebpf
            .take_map("ambit_local_socks")
            .ok_or_else(|| Error::Ebpf {
                op: op.into(),
                reason: "map not in the capture object".into(),
            })?;
        let socks: aya::maps::SockHash<aya::maps::MapData, [u8; 56]> =
            aya::maps::SockHash::try_from(map).map_err(|e| ebpf_err(op, e))?;
        match load_program(&mut self.ebpf, SK_MSG)? {
            Program::SkMsg(p) => {
                let id = p.attach(socks.fd()).map_err(|e| ebpf_err(op, e))?;
                let link = p.take_link(id).map_err(|e| ebpf_err(op, e))?;
                // Dropping the link would detach the program; the map
                // keeps it attached instead.
                std::mem::forget(link);
                Ok(())
            }
            _ => Err(Error::Ebpf {
                op: op.into(),
                reason: "not an sk_msg program".into(),
            }),
        }
    }

    /// How many sockets are in the same-namespace splice map now.
    pub fn spliced_sockets(&self) -> Result<usize> {
        let path = self.cfg.pin_dir.join("maps").join("ambit_local_socks");
        let data = aya::maps::MapData::from_pin(&path)
            .map_err(|e| ebpf_err(format!("opening {}", path.display()), e))?;
        let socks: aya::maps::SockHash<aya::maps::MapData, [u8; 56]> =
            aya::maps::SockHash::try_from(aya::maps::Map::SockHash(data))
                .map_err(|e| ebpf_err("opening ambit_local_socks", e))?;
        Ok(socks.keys().filter(|k| k.is_ok()).count())
    }

    /// The configuration in force.
    pub fn config(&self) -> &EbpfConfig {
        &self.cfg
    }

    /// Enrolls the pod whose namespace is `ns` under `key` (its UID): its
    /// connects are redirected from now on and its inbound TCP goes to the
    /// inbound listener ztunnel opens in it. `ips` are the pod's addresses
    /// (connects to them stay local). Idempotent; returns the namespace
    /// cookie.
    pub fn enroll(&mut self, key: &str, ns: &NetNs, ips: &[IpAddr]) -> Result<u64> {
        check_key(key)?;
        let cookie = netns_cookie(ns)?;
        let pod = PodValue::new(ips);
        maps::enroll(&mut self.ebpf, cookie, &pod, ips)?;
        let path = self.pod_pin(key, cookie);
        if PinnedLink::from_pin(&path).is_ok() {
            return Ok(cookie);
        }
        unpin(&path)?;
        let op = || format!("attaching sk_lookup to the namespace of pod {key}");
        let attached: Result<FdLink> = match load_program(&mut self.ebpf, SK_LOOKUP) {
            Ok(Program::SkLookup(p)) => {
                let p: &mut SkLookup = p;
                p.attach(ns.as_fd())
                    .and_then(|id| p.take_link(id))
                    .map(FdLink::from)
                    .map_err(|e| ebpf_err(op(), e))
            }
            Ok(_) => Err(Error::Ebpf {
                op: op(),
                reason: "not an sk_lookup program".into(),
            }),
            Err(e) => Err(e),
        };
        let pinned = attached.and_then(|link| {
            link.pin(&path)
                .map(drop)
                .map_err(|e| ebpf_err(format!("pinning {}", path.display()), e))
        });
        if let Err(e) = pinned {
            // Nothing half-done: the map entries go with the failed link.
            let _ = maps::unenroll(&mut self.ebpf, cookie);
            return Err(e);
        }
        // A stale pin of the same key for another namespace goes.
        for old in self.enrolled()? {
            if old.key == key && old.netns_cookie != cookie {
                self.drop_pod(&old)?;
            }
        }
        Ok(cookie)
    }

    fn pod_pin(&self, key: &str, cookie: u64) -> PathBuf {
        self.cfg
            .pin_dir
            .join("pods")
            .join(format!("{cookie}-{key}"))
    }

    /// Takes pod `key` out of capture: its map entry and its sk_lookup
    /// link. Unknown keys are nothing to do.
    pub fn unenroll(&mut self, key: &str) -> Result<()> {
        check_key(key)?;
        for p in self.enrolled()? {
            if p.key == key {
                self.drop_pod(&p)?;
            }
        }
        Ok(())
    }

    /// Takes out of capture the pods enrolled with any of `ips` (what a
    /// restarted agent knows of a stale pod: its addresses). Returns their
    /// keys.
    pub fn unenroll_addresses(&mut self, ips: &[IpAddr]) -> Result<Vec<String>> {
        let mut cookies = Vec::new();
        for ip in ips {
            if let Some(c) = maps::cookie_of(&mut self.ebpf, *ip)? {
                cookies.push(c);
            }
        }
        let mut gone = Vec::new();
        for p in self.enrolled()? {
            if cookies.contains(&p.netns_cookie) {
                self.drop_pod(&p)?;
                gone.push(p.key);
            }
        }
        // Map entries without a pinned pod (a crash between the two).
        for c in cookies {
            maps::unenroll(&mut self.ebpf, c)?;
        }
        Ok(gone)
    }

    fn drop_pod(&mut self, p: &EnrolledPod) -> Result<()> {
        maps::unenroll(&mut self.ebpf, p.netns_cookie)?;
        unpin(&self.pod_pin(&p.key, p.netns_cookie))
    }

    /// The pods enrolled, from the pins (they survive restarts).
    pub fn enrolled(&self) -> Result<Vec<EnrolledPod>> {
        list_pods(&self.cfg.pin_dir)
    }

    /// Keeps only the pods whose keys `keep` accepts: what a restarted
    /// agent calls once it knows its pods. Returns the keys dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        for p in self.enrolled()? {
            if !keep(&p.key) {
                self.drop_pod(&p)?;
                gone.push(p.key);
            }
        }
        let known: Vec<u64> = self.enrolled()?.iter().map(|p| p.netns_cookie).collect();
        maps::retain_enrolled(&mut self.ebpf, |c| known.contains(&c))?;
        Ok(gone)
    }

    /// Drift: what is missing or extra against a fully attached state.
    pub fn verify(&self) -> Result<Vec<String>> {
        let mut drift = Vec::new();
        for (_, pin, _) in NODE_PROGRAMS {
            let path = self.cfg.pin_dir.join("links").join(pin);
            if PinnedLink::from_pin(&path).is_err() {
                drift.push(format!(
                    "node link {pin} is not pinned at {}",
                    path.display()
                ));
            }
        }
        let in_map = maps::enrolled_cookies(&self.ebpf)?;
        let pinned = self.enrolled()?;
        for p in &pinned {
            if !in_map.contains(&p.netns_cookie) {
                drift.push(format!("pod {} has a link but no map entry", p.key));
            }
            if PinnedLink::from_pin(self.pod_pin(&p.key, p.netns_cookie)).is_err() {
                drift.push(format!("pod {}: its sk_lookup link is gone", p.key));
            }
        }
        for c in in_map {
            if !pinned.iter().any(|p| p.netns_cookie == c) {
                drift.push(format!("namespace cookie {c} is enrolled with no pod link"));
            }
        }
        Ok(drift)
    }

    /// How many inbound listeners are registered (one per enrolled
    /// namespace whose ztunnel listens, per address family).
    pub fn listeners(&self) -> Result<usize> {
        maps::listener_count(&self.ebpf)
    }
}

fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "eBPF pod key".into(),
            reason: format!("{key:?}: use 1-200 of A-Z a-z 0-9 . _ -"),
        })
    }
}

/// The entries of `dir` (none if it does not exist).
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| ebpf_err(format!("listing {}", dir.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ebpf_err(format!("listing {}", dir.display()), e)),
    }
}

fn list_pods(pin_dir: &Path) -> Result<Vec<EnrolledPod>> {
    let mut out: Vec<EnrolledPod> = list_dir(&pin_dir.join("pods"))?
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let (c, key) = name.split_once('-')?;
            Some(EnrolledPod {
                key: key.to_owned(),
                netns_cookie: c.parse().ok()?,
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Removes a pin (detaching its link once no one holds it). Missing is
/// fine.
fn unpin(path: &Path) -> Result<()> {
    gone_ok(std::fs::remove_file(path), path)
}

/// `r` of removing `path`, where a path already gone is success.
fn gone_ok(r: std::io::Result<()>, path: &Path) -> Result<()> {
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ebpf_err(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Takes everything under `pin_dir` away: links (so the programs detach),
/// maps and the directory. Idempotent; a directory that is not there is
/// nothing to do.
pub fn remove(pin_dir: &Path) -> Result<()> {
    for sub in ["pods", "links", "maps"] {
        let d = pin_dir.join(sub);
        for pin in list_dir(&d)? {
            unpin(&pin)?;
        }
        gone_ok(std::fs::remove_dir(&d), &d)?;
    }
    gone_ok(std::fs::remove_dir(pin_dir), pin_dir)
}
