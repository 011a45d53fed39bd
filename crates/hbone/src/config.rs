//! Settings for HBONE's HTTP/2 connections, server and client, with
//! ztunnel's values as defaults.

use std::time::Duration;

use crate::headers::AuthorityOptions;

/// HTTP/2 settings shared by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct H2Settings {
    /// SETTINGS_INITIAL_WINDOW_SIZE: each stream's receive window
    /// (default 4 MiB).
    pub stream_window: u32,
    /// The connection's receive window (default 16 MiB: 4 streams' worth,
    /// so one stalled stream cannot starve the others).
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE (default 1 MiB).
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE (default: 64 KiB on the server, 16 KiB
    /// on the client).
    pub max_header_list_size: u32,
    /// The most bytes h2 buffers per stream before a write waits
    /// (default 1 MiB).
    pub max_send_buffer: usize,
}

impl H2Settings {
    fn with_header_list(max_header_list_size: u32) -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_header_list_size,
            max_send_buffer: 1024 * 1024,
        }
    }

    /// The server's defaults.
    pub fn server() -> Self {
        Self::with_header_list(64 * 1024)
    }

    /// The client's defaults.
    pub fn client() -> Self {
        Self::with_header_list(16 * 1024)
    }
}

/// Settings of a [`Server`](crate::Server).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// HTTP/2 settings.
    pub h2: H2Settings,
    /// SETTINGS_MAX_CONCURRENT_STREAMS (default 200).
    pub max_concurrent_streams: u32,
    /// What `:authority` values are accepted (default `ip:port` only).
    pub authority: AuthorityOptions,
    /// Answer 400 when the authority's IP differs from the address the
    /// connection arrived on (the SSRF guard of ztunnel's in-pod inbound,
    /// where each pod has its own listener). Default off: a node-level
    /// listener serves many destination IPs.
    pub require_authority_ip_is_local: bool,
    /// The longest a TLS plus HTTP/2 handshake may take (default 10 s).
    pub handshake_timeout: Duration,
    /// TCP keepalive idle time on accepted connections (default 180 s;
    /// `None` disables).
    pub tcp_keepalive: Option<Duration>,
    /// How long open streams may run after shutdown begins before their
    /// connections are closed (default 30 s).
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            h2: H2Settings::server(),
            max_concurrent_streams: 200,
            authority: AuthorityOptions::STRICT,
            require_authority_ip_is_local: false,
            handshake_timeout: Duration::from_secs(10),
            tcp_keepalive: Some(Duration::from_secs(180)),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Settings of a [`Client`](crate::Client) and its pool.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// HTTP/2 settings.
    pub h2: H2Settings,
    /// The most streams opened on one pooled connection before another
    /// connection is opened (default 100).
    pub max_streams_per_connection: usize,
    /// How long an unused connection stays pooled (default 5 min).
    pub idle_timeout: Duration,
    /// The interval of HTTP/2 PING keepalives (default 10 s; `None`
    /// disables).
    pub keepalive_interval: Option<Duration>,
    /// How long to wait for a PING's answer before dropping the connection
    /// (default 20 s).
    pub keepalive_timeout: Duration,
    /// TCP keepalive idle time (default 180 s; `None` disables).
    pub tcp_keepalive: Option<Duration>,
    /// The longest TCP connect plus TLS and HTTP/2 handshakes may take
    /// (default 10 s).
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            h2: H2Settings::client(),
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(20),
            tcp_keepalive: Some(Duration::from_secs(180)),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

pub(crate) fn tune_tcp(stream: &tokio::net::TcpStream, idle: Option<Duration>) {
    let Some(idle) = idle else { return };
    let keepalive = socket2::TcpKeepalive::new().with_time(idle);
    let sock = socket2::SockRef::from(stream);
    if let Err(error) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "failed to set tcp keepalive");
    }
    if let Err(error) = sock.set_tcp_nodelay(true) {
        tracing::debug!(%error, "failed to set tcp nodelay");
    }
}
