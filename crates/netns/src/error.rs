use std::io;

/// Errors from opening, creating, entering or deleting a network namespace.
///
/// Every variant names the namespace (by name, path or pid) and, where a system
/// call failed, which one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The namespace file could not be opened.
    #[error("opening network namespace {ns}: {source}{hint}", hint = io_hint(source))]
    Open {
        /// The namespace, as the caller named it.
        ns: String,
        /// The error from `open(2)`.
        #[source]
        source: io::Error,
    },

    /// The file exists but is not a namespace file.
    #[error("{ns} is not a network namespace file (not on nsfs)")]
    NotNamespace {
        /// The path that was opened.
        ns: String,
    },

    /// A system call on the namespace failed.
    #[error("{syscall} for network namespace {ns}: {source}{hint}", hint = errno_hint(*source))]
    Syscall {
        /// The namespace the call was about.
        ns: String,
        /// The failing call, e.g. `setns(CLONE_NEWNET)`.
        syscall: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },

    /// A file operation around the namespace (bind-mount target, sysctl) failed.
    #[error("{op} {path} for network namespace {ns}: {source}{hint}", hint = io_hint(source))]
    Io {
        /// The namespace the operation was about.
        ns: String,
        /// What was being done, e.g. `writing`.
        op: &'static str,
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The name cannot be used for a named namespace.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A named namespace with this name already exists.
    #[error("network namespace {name} already exists")]
    Exists {
        /// The name in `/run/netns`.
        name: String,
    },

    /// The helper thread that enters the namespace could not be started.
    #[error("spawning a thread for network namespace {ns}: {source}")]
    Thread {
        /// The namespace the thread was for.
        ns: String,
        /// The error from `std::thread::Builder::spawn`.
        #[source]
        source: io::Error,
    },
}

fn errno_hint(e: nix::Error) -> &'static str {
    match e {
        nix::Error::EPERM => {
            " (needs CAP_SYS_ADMIN in the namespace's user namespace: run as root)"
        }
        nix::Error::EINVAL => " (the descriptor is not a network namespace)",
        _ => "",
    }
}

fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => " (permission denied: run as root)",
        io::ErrorKind::NotFound => " (no such namespace)",
        _ => "",
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
