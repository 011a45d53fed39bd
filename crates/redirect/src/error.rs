use std::io;
use std::net::IpAddr;

/// Errors from building, applying, verifying or removing capture state.
///
/// Validation errors name the offending item; kernel errors name the
/// operation (the rule, route, set or batch) and the namespace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A mark whose value has bits outside its mask.
    #[error("invalid mark {value:#x}/{mask:#x}: the value has bits outside the mask")]
    InvalidMark {
        /// The value.
        value: u32,
        /// The mask.
        mask: u32,
    },

    /// A routing table that must not be managed (0 unspec, 253 default,
    /// 254 main, 255 local).
    #[error("invalid routing table {table}: tables 0 and 253-255 are reserved by the kernel")]
    InvalidTable {
        /// The table number.
        table: u32,
    },

    /// An ipset or nftables set name the kernel would refuse.
    #[error("invalid set name {name:?}: {reason}")]
    InvalidSetName {
        /// The name (truncated for display).
        name: String,
        /// Why.
        reason: &'static str,
    },

    /// An address of the wrong family for a set, rule or route.
    #[error("{addr} does not fit {item}: address family mismatch")]
    FamilyMismatch {
        /// The item (set, rule, route) it was meant for.
        item: String,
        /// The address.
        addr: IpAddr,
    },

    /// An interface that does not exist in the namespace.
    #[error("unknown interface {name:?} in network namespace {ns}")]
    UnknownInterface {
        /// The interface name.
        name: String,
        /// The namespace searched.
        ns: String,
    },

    /// Any other invalid parameter.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The item.
        what: String,
        /// Why.
        reason: String,
    },

    /// Entering or using a network namespace failed.
    #[error(transparent)]
    Netns(#[from] ambit_netns::Error),

    /// The kernel refused a netlink request.
    #[error("{op} in network namespace {ns}: {}{}", errno_text(*errno), ext_text(ext.as_deref()))]
    Netlink {
        /// What was being done, naming the item (e.g. `adding rule 101 ...`).
        op: String,
        /// The namespace.
        ns: String,
        /// The positive errno (or ipset's private code, 4096+).
        errno: i32,
        /// The kernel's extended-ack message, if it sent one.
        ext: Option<String>,
    },

    /// A netlink reply that does not parse.
    #[error("malformed netlink reply to {op}: {reason}")]
    Decode {
        /// The request the reply answered.
        op: String,
        /// What was wrong.
        reason: String,
    },

    /// Loading, attaching or updating the eBPF capture failed.
    #[error("eBPF capture: {op}: {reason}")]
    Ebpf {
        /// What was being done.
        op: String,
        /// Why it failed (the loader's or kernel's error chain).
        reason: String,
    },

    /// Consecutive dumps of the same object kept disagreeing, so no
    /// consistent listing could be taken.
    #[error("{op}: {attempts} dumps in a row disagreed; the object kept changing")]
    Unstable {
        /// The listing that was attempted.
        op: String,
        /// How many dumps were taken.
        attempts: u32,
    },

    /// Socket I/O failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The error.
        #[source]
        source: io::Error,
    },

    /// An external tool (`nft`, `iptables-restore`) failed.
    #[error("`{program}` failed while {op}: {stderr}")]
    Tool {
        /// The program.
        program: String,
        /// What was being applied.
        op: String,
        /// Its diagnostics.
        stderr: String,
    },
}

/// ipset's own error codes (`IPSET_ERR_*`), returned as negative errnos.
fn ipset_errno_text(errno: i32) -> Option<&'static str> {
    Some(match errno {
        4097 => "ipset protocol version not supported by the kernel",
        4098 => "ipset set type not supported by the kernel",
        4099 => "maximum number of ipsets reached",
        4100 => "ipset is busy (referenced by a rule or swap in progress)",
        4101 => "the second set of the swap does not exist",
        4102 => "the sets have different types",
        4103 => "element or set already exists (or is missing for test)",
        4104 => "invalid CIDR",
        4105 => "invalid netmask",
        4106 => "address family does not match the set",
        4107 => "timeout not enabled for this set",
        4108 => "set is referenced by an iptables rule and cannot be destroyed",
        4109 => "invalid IPv4 address",
        4110 => "invalid IPv6 address",
        4112 => "comments not enabled for this set",
        _ => return None,
    })
}

fn errno_text(errno: i32) -> String {
    if let Some(t) = ipset_errno_text(errno) {
        return format!("{t} (ipset error {errno})");
    }
    let e = io::Error::from_raw_os_error(errno);
    let name = nix_name(errno);
    format!("{e}{}", name.map(|n| format!(" ({n})")).unwrap_or_default())
}

fn nix_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        17 => "EEXIST",
        19 => "ENODEV",
        22 => "EINVAL",
        95 => "EOPNOTSUPP",
        101 => "ENETUNREACH",
        _ => return None,
    })
}

fn ext_text(ext: Option<&str>) -> String {
    ext.map(|m| format!(": kernel says {m:?}"))
        .unwrap_or_default()
}

impl Error {
    /// The kernel's refusal of the request `op` (which names the item) in
    /// the namespace labelled `ns`.
    pub(crate) fn nack(nack: ambit_netlink::Nack, op: impl Into<String>, ns: &str) -> Self {
        Self::Netlink {
            op: op.into(),
            ns: ns.to_owned(),
            errno: nack.errno,
            ext: nack.ext,
        }
    }

    /// The errno of a netlink failure, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The transport's failures, in this crate's words: the operation with its
/// namespace, and the socket error or the reason the reply did not parse.
impl From<ambit_netlink::Error> for Error {
    fn from(e: ambit_netlink::Error) -> Self {
        use ambit_netlink::Error as Nl;
        match e {
            Nl::Netns { source, .. } => Self::Netns(source),
            Nl::Open {
                protocol,
                ns,
                source,
            } => Self::Io {
                op: format!("opening netlink socket (protocol {protocol}) in {ns}"),
                source,
            },
            Nl::Io { op, ns, source } => Self::Io {
                op: format!("{op} in {ns}"),
                source,
            },
            Nl::Decode { op, ns, reason } => Self::Decode {
                op: format!("{op} in {ns}"),
                reason,
            },
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
