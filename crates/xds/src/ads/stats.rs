//! Process-wide counters of the ADS client, for the metrics istio/ztunnel
//! exports about its xDS connection (`istio_xds_connection_terminations`,
//! `istio_message_types`, `istio_total_messages_size`). Every
//! [`super::AdsClient`] of the process adds to the same counters, as a
//! proxy has one xDS connection.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why an xDS stream ended, in istio/ztunnel's label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Termination {
    /// The connection to the server could not be made.
    ConnectionError,
    /// The stream failed.
    Error,
    /// The proxy ended the stream to reconnect.
    Reconnect,
    /// The server closed the stream.
    Complete,
}

impl Termination {
    /// Every reason, in label order.
    pub const ALL: [Termination; 4] = [
        Self::ConnectionError,
        Self::Error,
        Self::Reconnect,
        Self::Complete,
    ];

    /// The label value (`ConnectionError`, `Error`, `Reconnect`, `Complete`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionError => "ConnectionError",
            Self::Error => "Error",
            Self::Reconnect => "Reconnect",
            Self::Complete => "Complete",
        }
    }
}

/// The counters; see [`client_stats`].
#[derive(Debug, Default)]
pub struct ClientStats {
    terminations: [AtomicU64; 4],
    messages: Mutex<BTreeMap<String, u64>>,
    bytes: AtomicU64,
}

static STATS: ClientStats = ClientStats {
    terminations: [const { AtomicU64::new(0) }; 4],
    messages: Mutex::new(BTreeMap::new()),
    bytes: AtomicU64::new(0),
};

/// The process's ADS client counters.
pub fn client_stats() -> &'static ClientStats {
    &STATS
}

impl ClientStats {
    pub(crate) fn terminated(&self, why: Termination) {
        self.terminations[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn message(&self, type_url: &str, resource_bytes: u64) {
        let mut m = match self.messages.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *m.entry(type_url.to_owned()).or_default() += 1;
        self.bytes.fetch_add(resource_bytes, Ordering::Relaxed);
    }

    /// Streams ended for `why`.
    pub fn terminations(&self, why: Termination) -> u64 {
        self.terminations[why as usize].load(Ordering::Relaxed)
    }

    /// Responses received, by type URL.
    pub fn messages(&self) -> BTreeMap<String, u64> {
        match self.messages.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Bytes of resources received.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
