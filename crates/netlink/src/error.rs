use std::io;

/// A failure of the transport itself: the socket could not be opened, sent
/// on or read from, or the kernel's reply did not parse.
///
/// A kernel that answers a request with an error is not a transport
/// failure: that answer is a [`Nack`], returned per message.
///
/// Every variant names the namespace (its [`ambit_netns::NetNs::label`], or
/// `current`). The enum is exhaustive on purpose: each user maps every case
/// into its own error type, with its own wording.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Entering the namespace to open the socket failed.
    #[error("opening netlink socket (protocol {protocol}): {source}")]
    Netns {
        /// The netlink protocol (`NETLINK_ROUTE`, `NETLINK_NETFILTER`, ...).
        protocol: isize,
        /// The namespace error (it names the namespace).
        #[source]
        source: ambit_netns::Error,
    },

    /// Creating, binding or configuring the socket failed.
    #[error("opening netlink socket (protocol {protocol}) in {ns}: {source}")]
    Open {
        /// The netlink protocol.
        protocol: isize,
        /// The namespace label.
        ns: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },

    /// Sending a request or reading a reply failed.
    #[error("{op} in {ns}: {source}")]
    Io {
        /// What was being done, e.g. `sending netlink request`.
        op: &'static str,
        /// The namespace label.
        ns: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },

    /// A reply that is not a well-formed sequence of netlink messages.
    #[error("malformed netlink reply to {op} in {ns}: {reason}")]
    Decode {
        /// What the reply answered: `acks`, `dump` or `batch acks`.
        op: &'static str,
        /// The namespace label.
        ns: String,
        /// What was wrong.
        reason: String,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kernel's refusal of one message: an `NLMSG_ERROR` with a non-zero
/// code, or an `NLMSG_DONE` ending a dump with one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the kernel refused the request: {}{}", self.to_io(), ext_text(self.ext.as_deref()))]
pub struct Nack {
    /// The positive errno (or a subsystem's private code, such as ipset's
    /// 4096 and up).
    pub errno: i32,
    /// The kernel's extended-ack message (`NLMSGERR_ATTR_MSG`), if it sent one.
    pub ext: Option<String>,
}

impl Nack {
    /// The errno as an [`io::Error`] (`raw_os_error()` is the errno; the
    /// extended-ack message is not included).
    pub fn to_io(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

fn ext_text(ext: Option<&str>) -> String {
    ext.map(|m| format!(": kernel says {m:?}"))
        .unwrap_or_default()
}
