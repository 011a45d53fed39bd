//! The maps' binary layouts (`bpf/capture.bpf.c`) and their access.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ambit_netns::NetNs;
use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, SockHash};

use super::ebpf_err;
use crate::error::{Error, Result};

/// `struct config`.
pub(super) struct ConfigValue {
    pub(super) mark: u32,
    pub(super) mark_mask: u32,
    pub(super) outbound_port: u16,
    pub(super) inbound_port: u16,
    pub(super) hbone_port: u16,
    pub(super) probe4: Ipv4Addr,
    pub(super) probe6: Ipv6Addr,
    pub(super) splice_local: bool,
}

impl ConfigValue {
    fn encode(&self) -> [u8; 44] {
        let mut b = [0u8; 44];
        b[0..4].copy_from_slice(&self.mark.to_ne_bytes());
        b[4..8].copy_from_slice(&self.mark_mask.to_ne_bytes());
        b[8..12].copy_from_slice(&u32::from(self.outbound_port).to_ne_bytes());
        b[12..16].copy_from_slice(&u32::from(self.inbound_port).to_ne_bytes());
        b[16..20].copy_from_slice(&u32::from(self.hbone_port).to_ne_bytes());
        b[20..24].copy_from_slice(&self.probe4.octets());
        b[24..40].copy_from_slice(&self.probe6.octets());
        b[40..44].copy_from_slice(&u32::from(self.splice_local).to_ne_bytes());
        b
    }
}

/// `struct pod`: the pod's first IPv4 and first IPv6 address.
pub(super) struct PodValue([u8; 20]);

impl PodValue {
    pub(super) fn new(ips: &[IpAddr]) -> Self {
        let mut b = [0u8; 20];
        if let Some(v4) = ips.iter().find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }) {
            b[0..4].copy_from_slice(&v4.octets());
        }
        if let Some(v6) = ips.iter().find_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        }) {
            b[4..20].copy_from_slice(&v6.octets());
        }
        Self(b)
    }
}

/// A missing key, however the loader reports it.
fn not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// The result of removing a key, where a key already gone is success.
fn removed(r: std::result::Result<(), aya::maps::MapError>, op: impl Fn() -> String) -> Result<()> {
    match r {
        Err(e) if !not_found(&e) => Err(ebpf_err(op(), e)),
        _ => Ok(()),
    }
}

fn missing_map(name: &str) -> Error {
    Error::Ebpf {
        op: format!("opening map {name}"),
        reason: "not in the capture object".into(),
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| missing_map(name))
}

fn enrolled_map(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, u64, [u8; 20]>> {
    HashMap::try_from(map(ebpf, "ambit_enrolled")?)
        .map_err(|e| ebpf_err("opening map ambit_enrolled", e))
}

fn listener_map(ebpf: &mut Ebpf) -> Result<SockHash<&mut MapData, [u8; 16]>> {
    SockHash::try_from(map(ebpf, "ambit_listeners")?)
        .map_err(|e| ebpf_err("opening map ambit_listeners", e))
}

pub(super) fn write_config(ebpf: &mut Ebpf, v: &ConfigValue) -> Result<()> {
    let mut a: Array<&mut MapData, [u8; 44]> = Array::try_from(map(ebpf, "ambit_config")?)
        .map_err(|e| ebpf_err("opening map ambit_config", e))?;
    a.set(0, v.encode(), 0)
        .map_err(|e| ebpf_err("writing the capture configuration", e))
}

/// `struct addr` with port 0: the key of `ambit_pod_netns`.
fn addr_key(ip: IpAddr) -> [u8; 24] {
    let mut b = [0u8; 24];
    let family: u32 = match ip {
        IpAddr::V4(a) => {
            b[0..4].copy_from_slice(&a.octets());
            2
        }
        IpAddr::V6(a) => {
            b[0..16].copy_from_slice(&a.octets());
            10
        }
    };
    b[20..24].copy_from_slice(&family.to_ne_bytes());
    b
}

fn pod_netns_map(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, [u8; 24], u64>> {
    HashMap::try_from(map(ebpf, "ambit_pod_netns")?)
        .map_err(|e| ebpf_err("opening map ambit_pod_netns", e))
}

pub(super) fn enroll(ebpf: &mut Ebpf, cookie: u64, pod: &PodValue, ips: &[IpAddr]) -> Result<()> {
    let op = || format!("enrolling namespace cookie {cookie}");
    let mut by_ip = pod_netns_map(ebpf)?;
    for ip in ips {
        by_ip
            .insert(addr_key(*ip), cookie, 0)
            .map_err(|e| ebpf_err(op(), e))?;
    }
    enrolled_map(ebpf)?
        .insert(cookie, pod.0, 0)
        .map_err(|e| ebpf_err(op(), e))
}

/// The namespace cookie enrolled with address `ip`, if any.
pub(super) fn cookie_of(ebpf: &mut Ebpf, ip: IpAddr) -> Result<Option<u64>> {
    match pod_netns_map(ebpf)?.get(&addr_key(ip), 0) {
        Ok(c) => Ok(Some(c)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(ebpf_err(format!("looking up {ip}"), e)),
    }
}

/// Takes namespace `cookie` out of every map: enrolment, addresses and
/// its inbound listeners.
pub(super) fn unenroll(ebpf: &mut Ebpf, cookie: u64) -> Result<()> {
    let op = || format!("unenrolling namespace cookie {cookie}");
    removed(enrolled_map(ebpf)?.remove(&cookie), op)?;
    let mut by_ip = pod_netns_map(ebpf)?;
    let mine: Vec<[u8; 24]> = by_ip
        .iter()
        .filter_map(|kv| kv.ok())
        .filter(|(_, c)| *c == cookie)
        .map(|(k, _)| k)
        .collect();
    for k in mine {
        removed(by_ip.remove(&k), op)?;
    }
    forget_listeners(ebpf, cookie)
}

pub(super) fn enrolled_cookies(ebpf: &Ebpf) -> Result<Vec<u64>> {
    let m = ebpf
        .map("ambit_enrolled")
        .ok_or_else(|| missing_map("ambit_enrolled"))?;
    let h: HashMap<&MapData, u64, [u8; 20]> =
        HashMap::try_from(m).map_err(|e| ebpf_err("opening map ambit_enrolled", e))?;
    h.keys()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ebpf_err("listing enrolled namespaces", e))
}

pub(super) fn retain_enrolled(ebpf: &mut Ebpf, keep: impl Fn(u64) -> bool) -> Result<()> {
    let gone: Vec<u64> = enrolled_cookies(ebpf)?
        .into_iter()
        .filter(|c| !keep(*c))
        .collect();
    for c in gone {
        unenroll(ebpf, c)?;
    }
    Ok(())
}

/// Drops the inbound listeners registered for namespace `cookie`.
fn forget_listeners(ebpf: &mut Ebpf, cookie: u64) -> Result<()> {
    let mut m = listener_map(ebpf)?;
    let keys = m
        .keys()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ebpf_err("listing inbound listeners", e))?;
    for k in keys {
        if k[0..8] == cookie.to_ne_bytes() {
            removed(m.remove(&k), || "dropping an inbound listener".into())?;
        }
    }
    Ok(())
}

pub(super) fn listener_count(ebpf: &Ebpf) -> Result<usize> {
    let m = ebpf
        .map("ambit_listeners")
        .ok_or_else(|| missing_map("ambit_listeners"))?;
    let h: SockHash<&MapData, [u8; 16]> =
        SockHash::try_from(m).map_err(|e| ebpf_err("opening map ambit_listeners", e))?;
    Ok(h.keys().filter(|k| k.is_ok()).count())
}

/// The cookie the kernel gives network namespace `ns` (`SO_NETNS_COOKIE`
/// of a socket opened in it), the key the programs look pods up by.
pub fn netns_cookie(ns: &NetNs) -> Result<u64> {
    let sock = ns
        .socket(socket2::Domain::UNIX, socket2::Type::DGRAM, None)
        .map_err(|e| Error::Ebpf {
            op: format!("opening a socket in {ns}"),
            reason: e.to_string(),
        })?;
    socket_netns_cookie(&sock).map_err(|e| ebpf_err(format!("reading the cookie of {ns}"), e))
}

#[allow(unsafe_code)]
fn socket_netns_cookie(sock: &socket2::Socket) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes passed,
    // and the descriptor is open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
