//! ZDS: how Istio's node agent hands ztunnel each pod's network namespace.
//!
//! A unix `SOCK_SEQPACKET` socket (default [`DEFAULT_ZDS_PATH`]); every
//! packet is one protobuf message of `istio.workload.zds`. ztunnel
//! connects and sends `ZdsHello`; the agent then sends a snapshot — one
//! `AddWorkload` (with exactly one netns fd in `SCM_RIGHTS`) or
//! `KeepWorkload` per pod — then `SnapshotSent`, and afterwards single
//! adds and deletes. ztunnel answers every request with an `Ack` whose
//! `error` is empty on success.
//!
//! Layers, bottom up: [`codec`] (bytes + fds ↔ messages, with the
//! validation rules; no sockets, so it fuzzes cleanly), a small
//! seqpacket transport, then the two ends: [`ZdsListener`] /
//! [`ZdsConnection`] for the agent and [`ZdsClient`] for ztunnel.

mod agent;
pub mod codec;
mod proxy;
mod socket;

use std::path::PathBuf;

pub use self::{
    agent::{SnapshotItem, ZdsConnection, ZdsListener},
    codec::ZdsMessage,
    proxy::{ZdsClient, ZdsHandler},
};

/// Where ztunnel looks for the node agent's socket (env `INPOD_UDS`).
pub const DEFAULT_ZDS_PATH: &str = "/var/run/ztunnel/ztunnel.sock";

/// How long the agent waits for ztunnel's hello and for each ack: a
/// ztunnel that stops answering must not block the agent (and with it
/// every pod's enrolment) forever.
pub const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest packet accepted; longer ones are truncated by the kernel and
/// rejected.
pub const MAX_PACKET: usize = 16 * 1024;

/// Errors of the ZDS protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZdsError {
    /// A socket operation failed.
    #[error("zds socket {context}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A packet is not a valid protobuf of the expected message.
    #[error("invalid zds {what}")]
    Decode {
        /// The message expected.
        what: &'static str,
        /// What prost found wrong.
        #[source]
        source: prost::DecodeError,
    },
    /// A packet decoded but breaks the protocol's rules.
    #[error("invalid zds message: {reason}")]
    Invalid {
        /// The broken rule.
        reason: String,
    },
    /// A packet did not fit the receive buffer.
    #[error("zds packet truncated (over {max} bytes)")]
    Truncated {
        /// The buffer size.
        max: usize,
    },
    /// The peer answered a request with an error.
    #[error("ztunnel rejected {request}: {error}")]
    Rejected {
        /// The request, e.g. `add uid-1`.
        request: String,
        /// `Ack.error`.
        error: String,
    },
    /// The peer closed the connection.
    #[error("zds peer closed the connection")]
    Closed,
    /// The peer did not answer in time (see [`ACK_TIMEOUT`]).
    #[error("ztunnel did not answer {what} within {after:?}")]
    Timeout {
        /// What was awaited, e.g. `the ack of add uid-1`.
        what: String,
        /// How long was waited.
        after: std::time::Duration,
    },
    /// The socket path is unusable.
    #[error("zds socket path {path:?}: {reason}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ZdsError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self::Invalid {
            reason: reason.into(),
        }
    }
}
