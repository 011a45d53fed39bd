//! Argument groups every binary flattens into its own `Args`.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

/// Log line format (Istio's `LOG_FORMAT`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (Istio's `plain`).
    #[value(alias = "plain")]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// Installs the global `tracing` subscriber: `RUST_LOG` filters (default
/// `info`); JSON lines carry the event's fields at the top level (as
/// Istio's, e.g. `"src.addr"`); lines go to stderr when `stderr` (a CNI plugin's stdout is its
/// answer), else stdout.
pub fn init_tracing(format: LogFormat, stderr: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    match (format, stderr) {
        (LogFormat::Json, true) => b
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .init(),
        (LogFormat::Json, false) => b.json().flatten_event(true).init(),
        (LogFormat::Text, true) => b.with_writer(std::io::stderr).init(),
        (LogFormat::Text, false) => b.init(),
    }
}

/// The admin (15000), metrics (15020) and readiness (15021) endpoints, and
/// the drain after a stop.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin endpoint (config_dump, quitquitquit).
    #[arg(long, env = "ADMIN_ADDRESS", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Prometheus metrics endpoint.
    #[arg(long, env = "STATS_ADDRESS", default_value = "0.0.0.0:15020")]
    pub stats_addr: SocketAddr,
    /// Readiness endpoint (/healthz/ready).
    #[arg(long, env = "READINESS_ADDRESS", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// How long connections may continue after SIGTERM (seconds).
    #[arg(long, env = "DRAIN_DURATION", default_value_t = 5)]
    pub drain_seconds: u64,
}
