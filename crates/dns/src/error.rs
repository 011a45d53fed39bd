//! Errors.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What can go wrong in this crate's fallible calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a resolv.conf file failed.
    #[error("reading resolver configuration {path}: {source}")]
    ReadResolvConf {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket operation towards an upstream resolver failed.
    #[error("upstream {upstream} over {transport}: {what}: {source}")]
    Upstream {
        /// The upstream resolver.
        upstream: SocketAddr,
        /// `udp` or `tcp`.
        transport: &'static str,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An upstream resolver did not answer in time.
    #[error("upstream {upstream} over {transport}: no answer within {timeout:?}")]
    UpstreamTimeout {
        /// The upstream resolver.
        upstream: SocketAddr,
        /// `udp` or `tcp`.
        transport: &'static str,
        /// The per-try timeout.
        timeout: std::time::Duration,
    },
    /// An upstream resolver answered with something that is not a reply to
    /// the query sent.
    #[error("upstream {upstream} over {transport}: bad reply: {reason}")]
    BadReply {
        /// The upstream resolver.
        upstream: SocketAddr,
        /// `udp` or `tcp`.
        transport: &'static str,
        /// Why the reply was rejected.
        reason: String,
    },
    /// No upstream resolver is configured.
    #[error("no upstream resolver configured")]
    NoUpstreams,
    /// Encoding a DNS message failed.
    #[error("encoding a DNS message: {0}")]
    Encode(String),
}
