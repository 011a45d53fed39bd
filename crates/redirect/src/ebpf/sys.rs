//! The two `bpf(2)` commands the loader library does not offer for every
//! program type: creating a cgroup link and pinning it.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `enum bpf_cmd`.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `enum bpf_attach_type` values of the node-wide programs.
pub(super) const ATTACH_SOCK_OPS: u32 = 3;
pub(super) const ATTACH_INET4_CONNECT: u32 = 10;
pub(super) const ATTACH_INET6_CONNECT: u32 = 11;
pub(super) const ATTACH_GETSOCKOPT: u32 = 21;

/// The `link_create` member of `union bpf_attr`, zero-padded.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    rest: [u64; 6],
}

/// The `obj_pin` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised `union bpf_attr` prefix of
    // the size passed; the kernel reads at most that many bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Attaches program `prog` to cgroup `cgroup` as `attach_type` through a
/// BPF link (multiple programs may share the hook).
pub(super) fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreate {
        prog_fd: fd_u32(prog)?,
        target_fd: fd_u32(cgroup)?,
        attach_type,
        ..LinkCreate::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("link fd out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins object `fd` (a link) at `path` on a bpf filesystem.
pub(super) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in pin path"))?;
    let mut attr = ObjPin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd_u32(fd)?,
        ..ObjPin::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

fn fd_u32(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative descriptor"))
}
