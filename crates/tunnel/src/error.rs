use std::io;

/// Errors from validating, creating, inspecting or deleting tunnel links.
///
/// Every variant names the link (or the request) and the network namespace
/// it was about, and, for kernel failures, the operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The desired tunnel is invalid; nothing was sent to the kernel.
    #[error("invalid tunnel {link}: {item} {reason}")]
    Invalid {
        /// The link name as given (truncated to 64 characters).
        link: String,
        /// The offending item: `name`, `vni`, `port`, `remote`, `local`, ...
        item: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The kernel cannot create Geneve links.
    #[error(
        "creating geneve link {link} in network namespace {ns}: the kernel has no geneve \
         support (CONFIG_GENEVE is off or the geneve module is not available); \
         use TunnelKind::Vxlan, which carries the same tunnel over VXLAN"
    )]
    GeneveUnsupported {
        /// The link that was being created.
        link: String,
        /// The namespace the request was sent in.
        ns: String,
        /// The kernel's answer (EOPNOTSUPP, "Unknown device type" in iproute2).
        #[source]
        source: io::Error,
    },

    /// A link of another type already has the name; it is left alone.
    #[error(
        "link {link} in network namespace {ns} exists as type {kind}, not a geneve or vxlan \
         tunnel; refusing to replace it"
    )]
    NameTaken {
        /// The contested name.
        link: String,
        /// The namespace.
        ns: String,
        /// The existing link's type (`veth`, `bridge`, ... or `unknown`).
        kind: String,
    },

    /// A link the operation needs does not exist.
    #[error("{op} link {link} in network namespace {ns}: no such link")]
    NotFound {
        /// The missing link.
        link: String,
        /// The namespace.
        ns: String,
        /// What was being done.
        op: &'static str,
    },

    /// The kernel refused a request, or the netlink socket failed.
    #[error("{op} {link} in network namespace {ns}: {source}")]
    Netlink {
        /// The link (or `*` for namespace-wide requests such as dumps).
        link: String,
        /// The namespace.
        ns: String,
        /// The operation, e.g. `creating link`, `adding address 192.168.126.1/30 to`.
        op: String,
        /// The errno, or the socket error.
        #[source]
        source: io::Error,
    },

    /// A kernel reply could not be decoded.
    #[error("decoding the kernel's reply to {op} {link} in network namespace {ns}: {reason}")]
    Decode {
        /// The link (or `*`).
        link: String,
        /// The namespace.
        ns: String,
        /// The request.
        op: String,
        /// The decoder's message.
        reason: String,
    },

    /// Entering the namespace, or writing a sysctl inside it, failed.
    #[error("{op} for link {link}: {source}")]
    Netns {
        /// The link.
        link: String,
        /// What was being done, e.g. `opening netlink socket`, `setting rp_filter`.
        op: &'static str,
        /// The namespace error (it names the namespace).
        #[source]
        source: ambit_netns::Error,
    },

    /// No free UDP port is left at or above the start port.
    #[error("no free {kind} udp port at or above {from} in network namespace {ns}")]
    NoFreePort {
        /// The tunnel type.
        kind: crate::TunnelKind,
        /// The first port tried.
        from: u16,
        /// The namespace.
        ns: String,
    },
}

impl Error {
    /// A failure of the netlink transport while doing `op` to `link`.
    pub(crate) fn transport(e: ambit_netlink::Error, link: &str, op: &str) -> Self {
        use ambit_netlink::Error as Nl;
        match e {
            Nl::Netns { source, .. } => Self::Netns {
                link: link.to_owned(),
                op: "opening a netlink socket",
                source,
            },
            Nl::Open { ns, source, .. } => Self::Netlink {
                link: link.to_owned(),
                ns,
                op: "opening a netlink socket for".into(),
                source,
            },
            Nl::Io { ns, source, .. } => Self::Netlink {
                link: link.to_owned(),
                ns,
                op: op.to_owned(),
                source,
            },
            Nl::Decode { ns, reason, .. } => Self::decode(link, &ns, op, reason),
        }
    }

    /// The kernel's refusal of `op` on `link` in the namespace labelled `ns`;
    /// the errno is the source.
    pub(crate) fn nack(nack: &ambit_netlink::Nack, link: &str, ns: &str, op: &str) -> Self {
        Self::Netlink {
            link: link.to_owned(),
            ns: ns.to_owned(),
            op: op.to_owned(),
            source: nack.to_io(),
        }
    }

    /// A reply to `op` on `link` that does not decode.
    pub(crate) fn decode(link: &str, ns: &str, op: &str, reason: String) -> Self {
        Self::Decode {
            link: link.to_owned(),
            ns: ns.to_owned(),
            op: op.to_owned(),
            reason,
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
