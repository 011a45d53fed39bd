//! The [`NetNs`] handle.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};

/// Where `ip netns` keeps named namespaces (bind mounts of nsfs files).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `statfs(2)` magic of the namespace filesystem (`NSFS_MAGIC` in `linux/magic.h`).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The longest name a named namespace may have (a file name in `/run/netns`).
const MAX_NAME_LEN: usize = 255;

/// A handle to a Linux network namespace, held open as a file descriptor.
///
/// The namespace lives at least as long as the handle. Entering it leaves
/// the calling thread where it was: [`NetNs::run`] and friends do their
/// work on a short-lived dedicated thread that has joined the namespace,
/// and [`NetNs::socket`] returns the calling thread to its own namespace
/// before it returns, so the handle is safe to use from async code and from
/// threads that must stay where they are.
pub struct NetNs {
    fd: OwnedFd,
    /// Human-readable identity for errors and logs: a name, path or pid.
    label: String,
    /// For named namespaces, the bind-mount path under [`NETNS_RUN_DIR`].
    path: Option<PathBuf>,
}

impl fmt::Debug for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetNs")
            .field("label", &self.label)
            .field("fd", &self.fd)
            .finish()
    }
}

impl fmt::Display for NetNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl NetNs {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Self> {
        Self::open_labelled("/proc/thread-self/ns/net", "current".into())
    }

    /// Opens a namespace file by path (`/run/netns/NAME`, `/proc/PID/ns/net`,
    /// a CNI `CNI_NETNS` path, ...).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::open_labelled(path, path.display().to_string())
    }

    /// Opens the named namespace `name`, as created by `ip netns add NAME`.
    pub fn named(name: &str) -> Result<Self> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let mut ns = Self::open_labelled(&path, name.to_owned())?;
        ns.path = Some(path);
        Ok(ns)
    }

    /// Opens the namespace of process `pid`.
    pub fn from_pid(pid: u32) -> Result<Self> {
        Self::open_labelled(format!("/proc/{pid}/ns/net"), format!("of pid {pid}"))
    }

    /// Wraps a descriptor that refers to a network namespace, e.g. one received
    /// over a unix socket. `label` is used in errors and logs.
    pub fn from_fd(fd: OwnedFd, label: impl Into<String>) -> Result<Self> {
        let label = label.into();
        check_nsfs(fd.as_fd(), &label)?;
        Ok(Self {
            fd,
            label,
            path: None,
        })
    }

    fn open_labelled(path: impl AsRef<Path>, label: String) -> Result<Self> {
        let file = File::open(path.as_ref()).map_err(|source| Error::Open {
            ns: label.clone(),
            source,
        })?;
        let fd = OwnedFd::from(file);
        check_nsfs(fd.as_fd(), &label)?;
        Ok(Self {
            fd,
            label,
            path: None,
        })
    }

    /// Creates a new anonymous namespace. It exists while this handle (or a
    /// socket or process inside it) does, and is not listed by `ip netns`.
    pub fn create_anonymous() -> Result<Self> {
        let label = String::from("anonymous");
        let fd = on_thread(&label, || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|source| Error::Syscall {
                ns: "anonymous".into(),
                syscall: "unshare(CLONE_NEWNET)",
                source,
            })?;
            File::open("/proc/thread-self/ns/net")
                .map(OwnedFd::from)
                .map_err(|source| Error::Open {
                    ns: "anonymous".into(),
                    source,
                })
        })??;
        Ok(Self {
            fd,
            label,
            path: None,
        })
    }

    /// Creates a named namespace, like `ip netns add NAME`: a new namespace
    /// bind-mounted at `/run/netns/NAME`, where `ip netns`, `ip -n` and other
    /// tools find it. Fails with [`Error::Exists`] if the name is taken.
    pub fn create_named(name: &str) -> Result<Self> {
        validate_name(name)?;
        prepare_run_dir(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists { name: name.into() });
            }
            Err(source) => {
                return Err(Error::Io {
                    ns: name.into(),
                    op: "creating",
                    path: path.display().to_string(),
                    source,
                });
            }
        }
        let mounted = on_thread(name, || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|source| Error::Syscall {
                ns: name.into(),
                syscall: "unshare(CLONE_NEWNET)",
                source,
            })?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| Error::Syscall {
                ns: name.into(),
                syscall: "mount(MS_BIND)",
                source,
            })
        })
        .and_then(|r| r);
        if let Err(e) = mounted {
            // Leave nothing half-made: the placeholder file goes too.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Self::named(name)
    }

    /// Deletes the named namespace `name`, like `ip netns delete NAME`: the
    /// bind mount and its file are removed. The namespace itself is freed by
    /// the kernel once no handle, socket or process refers to it. Deleting a
    /// name that does not exist is not an error.
    pub fn delete_named(name: &str) -> Result<()> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a stale file); ENOENT: already gone.
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(source) => {
                return Err(Error::Syscall {
                    ns: name.into(),
                    syscall: "umount2(MNT_DETACH)",
                    source,
                });
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                ns: name.into(),
                op: "removing",
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Lists the named namespaces in `/run/netns`, like `ip netns list`.
    pub fn list_named() -> Result<Vec<String>> {
        let entries = match fs::read_dir(NETNS_RUN_DIR) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    ns: "*".into(),
                    op: "listing",
                    path: NETNS_RUN_DIR.into(),
                    source,
                });
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The label used in errors: the name, path or pid the handle was opened by.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// For a named namespace, its name in `/run/netns`.
    pub fn name(&self) -> Option<&str> {
        self.path
            .as_deref()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
    }

    /// For a named namespace, the path of its bind mount.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Duplicates the handle (a new descriptor for the same namespace).
    pub fn try_clone(&self) -> Result<Self> {
        let fd = self.fd.try_clone().map_err(|source| Error::Io {
            ns: self.label.clone(),
            op: "duplicating",
            path: "descriptor".into(),
            source,
        })?;
        Ok(Self {
            fd,
            label: self.label.clone(),
            path: self.path.clone(),
        })
    }

    /// Whether two handles refer to the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &NetNs) -> Result<bool> {
        let a =
            nix::sys::stat::fstat(self.fd.as_fd()).map_err(|source| self.sys("fstat", source))?;
        let b =
            nix::sys::stat::fstat(other.fd.as_fd()).map_err(|source| other.sys("fstat", source))?;
        Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }

    fn sys(&self, syscall: &'static str, source: nix::Error) -> Error {
        Error::Syscall {
            ns: self.label.clone(),
            syscall,
            source,
        }
    }

    /// Joins the namespace on the calling thread. Only for threads owned by
    /// this crate, which exit afterwards.
    fn enter(&self) -> Result<()> {
        nix::sched::setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|source| self.sys("setns(CLONE_NEWNET)", source))
    }

    /// Runs `f` inside the namespace on a dedicated thread and returns its
    /// result. The calling thread's namespace is untouched. A panic in `f` is
    /// propagated to the caller.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        on_thread(&self.label, || {
            self.enter()?;
            Ok(f())
        })?
    }

    /// Whether the calling thread is in this namespace now (same nsfs
    /// inode); false when either cannot be read.
    fn is_current_thread_ns(&self) -> bool {
        let here = nix::sys::stat::stat("/proc/thread-self/ns/net");
        let mine = nix::sys::stat::fstat(self.fd.as_fd());
        matches!((here, mine), (Ok(a), Ok(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }

    /// Runs `f` inside the namespace on a long-lived worker thread, which
    /// joins the namespace for `f` and returns to the process's namespace
    /// afterwards; the calling thread's namespace is untouched, as with
    /// [`NetNs::run`], but no thread is created per call (a thread costs far
    /// more than the two `setns` calls).
    ///
    /// For short work that leaves the thread as it found it: `f` must not
    /// change the thread's credentials, namespaces, signal mask or
    /// thread-locals, nor block for long (calls from every thread share
    /// the one worker, one at a time). Anything else belongs in
    /// [`NetNs::run`]. A panic in `f` is propagated to the caller.
    ///
    /// When the calling thread is already in the namespace, `f` runs right
    /// there. Whenever the worker cannot run `f` — it cannot be started, cannot
    /// join the namespace (the error is then the one [`NetNs::run`] gives
    /// from the calling thread), or the call comes from inside such an `f`
    /// — `f` runs through [`NetNs::run`] instead.
    pub fn run_reused<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.is_current_thread_ns() {
            // Already inside (the caller joined it, or it is the process's
            // own namespace): nothing to join, and `f` leaves the thread as
            // it found it.
            return Ok(f());
        }
        if worker::unusable() {
            return self.run(f);
        }
        // `f` stays reachable from here until the worker takes it, so
        // every way the worker can fail leaves it to run on a fresh thread.
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let theirs = std::sync::Arc::clone(&slot);
        let job: worker::Job = Box::new(move |entered| {
            let taken = if entered {
                theirs.lock().ok().and_then(|mut f| f.take())
            } else {
                None
            };
            let out = taken.map(|f| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
            // The caller is waiting for this (unless it panicked meanwhile).
            let _ = tx.send(out);
        });
        let submitted = self.fd.try_clone().is_ok_and(|fd| worker::submit(fd, job));
        let ran = if submitted {
            rx.recv().ok().flatten()
        } else {
            None
        };
        match ran {
            Some(Ok(v)) => Ok(v),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => {
                let f = slot.lock().ok().and_then(|mut f| f.take());
                match f {
                    Some(f) => self.run(f),
                    // Taken but no answer: the worker died running it.
                    None => Err(Error::Thread {
                        ns: self.label.clone(),
                        source: io::Error::other("the namespace worker thread stopped"),
                    }),
                }
            }
        }
    }

    /// Starts `f` on a new thread inside the namespace and returns its handle.
    /// The thread fails with the setns error if the namespace cannot be entered.
    pub fn spawn<T, F>(&self, f: F) -> Result<thread::JoinHandle<Result<T>>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let me = self.try_clone()?;
        thread::Builder::new()
            .name(thread_name(&self.label))
            .spawn(move || {
                me.enter()?;
                Ok(f())
            })
            .map_err(|source| Error::Thread {
                ns: self.label.clone(),
                source,
            })
    }

    /// Creates a socket inside the namespace, like `socket(2)`. A socket
    /// keeps the namespace it was created in, so only the creation needs
    /// the namespace: the calling thread joins it for that one call and
    /// returns to its own straight after (five system calls, where a thread
    /// per socket as in [`NetNs::run`] costs ten times more, which matters
    /// to a proxy opening a socket per connection). Should the thread fail
    /// to return, the process aborts: a thread left in another namespace
    /// would open every later socket there.
    pub fn socket(&self, domain: Domain, ty: Type, protocol: Option<Protocol>) -> Result<Socket> {
        let home = self.home()?;
        self.enter()?;
        let created = Socket::new(domain, ty, protocol);
        self.go_home(&home);
        created.map_err(|source| self.io_err("creating socket", source))
    }

    /// Runs `f` inside the namespace on the calling thread, which joins the
    /// namespace for `f` and returns to its own straight after, as
    /// [`NetNs::socket`] does: no other thread is woken, where
    /// [`NetNs::run_reused`] hands `f` to its worker and waits for the
    /// answer (two thread switches, the larger cost of short work).
    ///
    /// For short, synchronous work that leaves the thread as it found it:
    /// making sockets, reading a file under `/proc/thread-self/net`. `f`
    /// must not change the thread's credentials, namespaces or signal mask,
    /// and must not wait on other tasks: on a tokio worker nothing else runs
    /// on the thread meanwhile. A panic in `f` is propagated once the thread
    /// is back; should the thread fail to return, the process aborts, as
    /// with [`NetNs::socket`]. When the calling thread is already in the
    /// namespace, `f` runs with no `setns` at all.
    pub fn run_here<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T,
    {
        let home = self.home()?;
        let same = match (
            nix::sys::stat::fstat(home.as_fd()),
            nix::sys::stat::fstat(self.fd.as_fd()),
        ) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        };
        if same {
            return Ok(f());
        }
        self.enter()?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        self.go_home(&home);
        match out {
            Ok(v) => Ok(v),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The calling thread's namespace, to return to after a brief visit.
    fn home(&self) -> Result<File> {
        File::open("/proc/thread-self/ns/net")
            .map_err(|source| self.io_err("opening this thread's namespace", source))
    }

    /// Returns the calling thread to `home` (retried once), or aborts: a
    /// thread left in another namespace would open every later socket there.
    fn go_home(&self, home: &File) {
        let back = nix::sched::setns(home.as_fd(), CloneFlags::CLONE_NEWNET)
            .or_else(|_| nix::sched::setns(home.as_fd(), CloneFlags::CLONE_NEWNET));
        if let Err(e) = back {
            eprintln!(
                "ambit-netns: a thread cannot return from namespace {} to its own: {e}; aborting",
                self.label
            );
            std::process::abort();
        }
    }

    /// Binds a TCP listener inside the namespace.
    pub fn tcp_listener(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.run(|| TcpListener::bind(addr))?
            .map_err(|source| self.io_err_at("binding", addr, source))
    }

    /// Connects a TCP stream from inside the namespace.
    pub fn tcp_connect(&self, addr: SocketAddr) -> Result<TcpStream> {
        self.run(|| TcpStream::connect(addr))?
            .map_err(|source| self.io_err_at("connecting to", addr, source))
    }

    /// Binds a UDP socket inside the namespace.
    pub fn udp_socket(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.run(|| UdpSocket::bind(addr))?
            .map_err(|source| self.io_err_at("binding", addr, source))
    }

    /// Spawns a child process inside the namespace. The child inherits the
    /// namespace of the thread that forks it; that thread is a dedicated one.
    pub fn spawn_command(&self, cmd: &mut Command) -> Result<Child> {
        let prog = cmd.get_program().to_string_lossy().into_owned();
        self.run(|| cmd.spawn())?.map_err(|source| Error::Io {
            ns: self.label.clone(),
            op: "spawning",
            path: prog,
            source,
        })
    }

    /// Runs a command inside the namespace to completion and returns its output.
    pub fn output(&self, cmd: &mut Command) -> Result<std::process::Output> {
        let prog = cmd.get_program().to_string_lossy().into_owned();
        self.run(|| cmd.output())?.map_err(|source| Error::Io {
            ns: self.label.clone(),
            op: "running",
            path: prog,
            source,
        })
    }

    /// Reads a sysctl of this namespace, as a path (`net/ipv4/conf/eth0.5/rp_filter`)
    /// or in sysctl(8)'s dotted form when it holds no slash (`net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let at = path.clone();
        self.run_reused(move || fs::read_to_string(&at))?
            .map(|s| s.trim_end().to_owned())
            .map_err(|source| Error::Io {
                ns: self.label.clone(),
                op: "reading",
                path: path.display().to_string(),
                source,
            })
    }

    /// Writes a sysctl of this namespace, e.g. `net/ipv4/conf/all/rp_filter`.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        self.run(|| {
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(value.as_bytes()))
        })?
        .map_err(|source| Error::Io {
            ns: self.label.clone(),
            op: "writing",
            path: path.display().to_string(),
            source,
        })
    }

    fn io_err(&self, op: &'static str, source: io::Error) -> Error {
        Error::Io {
            ns: self.label.clone(),
            op,
            path: String::new(),
            source,
        }
    }

    fn io_err_at(&self, op: &'static str, addr: SocketAddr, source: io::Error) -> Error {
        Error::Io {
            ns: self.label.clone(),
            op,
            path: addr.to_string(),
            source,
        }
    }
}

#[cfg(feature = "tokio")]
mod async_support;

#[cfg(feature = "tokio")]
pub use async_support::NsTask;

/// The long-lived thread of [`NetNs::run_reused`].
///
/// One per process, started on first use. It joins the process's namespace
/// (that of the main thread) when it starts, and for each job joins the
/// job's namespace, runs it and joins the process's again. If it cannot get
/// back (which would take an allocation failure in the kernel), it stops,
/// and the next job starts a new worker: a job never runs on a thread left
/// in another namespace. If a worker cannot be started at all, the process
/// stops trying and every call falls back to a fresh thread.
mod worker;

/// Runs `f` on a fresh scoped thread, so namespace changes never leak into
/// the caller's thread. Panics in `f` propagate.
fn on_thread<T: Send>(label: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    thread::scope(|s| {
        let handle = thread::Builder::new()
            .name(thread_name(label))
            .spawn_scoped(s, f)
            .map_err(|source| Error::Thread {
                ns: label.to_owned(),
                source,
            })?;
        match handle.join() {
            Ok(v) => Ok(v),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn thread_name(label: &str) -> String {
    // Linux truncates thread names to 15 bytes; keep the tail, which is the
    // most specific part of generated names.
    let tail: String = label
        .chars()
        .rev()
        .take(11)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("ns:{tail}")
}

fn check_nsfs(fd: BorrowedFd<'_>, label: &str) -> Result<()> {
    let st = nix::sys::statfs::fstatfs(fd).map_err(|source| Error::Syscall {
        ns: label.to_owned(),
        syscall: "fstatfs",
        source,
    })?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    if st.filesystem_type().0 as i64 != NSFS_MAGIC {
        return Err(Error::NotNamespace {
            ns: label.to_owned(),
        });
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "reserved"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains NUL"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.chars().take(64).collect(),
        reason,
    })
}

/// Makes `/run/netns` exist and be a shared mount point, as iproute2 does,
/// so namespaces mounted there are visible in every mount namespace.
fn prepare_run_dir(name: &str) -> Result<()> {
    let dir = Path::new(NETNS_RUN_DIR);
    fs::create_dir_all(dir).map_err(|source| Error::Io {
        ns: name.into(),
        op: "creating",
        path: NETNS_RUN_DIR.into(),
        source,
    })?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match nix::mount::mount(None::<&str>, dir, Some("none"), shared, None::<&str>) {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself, then make it shared.
        Err(nix::Error::EINVAL) => nix::mount::mount(
            Some(dir),
            dir,
            Some("none"),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| nix::mount::mount(None::<&str>, dir, Some("none"), shared, None::<&str>))
        .map_err(|source| Error::Syscall {
            ns: name.into(),
            syscall: "mount(/run/netns, MS_SHARED)",
            source,
        }),
        Err(source) => Err(Error::Syscall {
            ns: name.into(),
            syscall: "mount(/run/netns, MS_SHARED)",
            source,
        }),
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    // With slashes the key is a path (interface names may hold dots);
    // otherwise it is sysctl(8)'s dotted form.
    let rel = if key.contains('/') {
        key.trim_start_matches('/').to_owned()
    } else {
        key.replace('.', "/")
    };
    Path::new("/proc/sys").join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(validate_name(&"x".repeat(256)).is_err());
        assert!(validate_name("ambit-node-1").is_ok());
    }

    #[test]
    fn sysctl_keys_accept_dots_and_slashes() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/all/rp_filter"),
            Path::new("/proc/sys/net/ipv4/conf/all/rp_filter")
        );
    }

    #[test]
    fn thread_names_fit_linux_limit() {
        assert!(thread_name("ambit-t12345-7-n0p1").len() <= 15);
    }
}
