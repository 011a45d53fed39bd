//! Argument groups every binary flattens into its own `Args`.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};
use tracing_subscriber::filter::Targets;

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
/// `info`; a level per module, `Targets` syntax, which unlike `EnvFilter`
/// needs no regex engine in the binary: a span or field filter is not
/// taken, and `info` applies), changeable at run time ([`logging`], the
/// admin `/logging`);
/// JSON lines carry the event's fields at the top level (as Istio's, e.g.
/// `"src.addr"`); lines go to stderr when `stderr` (a CNI plugin's stdout
/// is its answer), else stdout.
pub fn init_tracing(format: LogFormat, stderr: bool) {
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter::Targets, fmt, layer::SubscriberExt, reload};
    let env = std::env::var("RUST_LOG").ok();
    let parsed = env.as_deref().map(str::parse::<Targets>);
    let refused = match &parsed {
        Some(Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let (spec, filter) = match (env, parsed) {
        (Some(s), Some(Ok(f))) => (s, f),
        _ => ("info".to_owned(), info()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let output = match (format, stderr) {
        (LogFormat::Json, true) => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
        (LogFormat::Json, false) => fmt::layer().json().flatten_event(true).boxed(),
        (LogFormat::Text, true) => fmt::layer().with_writer(std::io::stderr).boxed(),
        (LogFormat::Text, false) => fmt::layer().boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok()
    {
        let _ = LOG_FILTER.set(LogFilter {
            handle,
            initial: spec.clone(),
            current: std::sync::Mutex::new(spec),
        });
        if let Some(error) = refused {
            tracing::warn!(%error, "RUST_LOG is not a level per module (`info,ambit_l4proxy=debug`): logging at info");
        }
    }
}

/// The filter when `RUST_LOG` is unset or not a filter: `info` for all.
fn info() -> Targets {
    Targets::new().with_default(tracing::Level::INFO)
}

struct LogFilter {
    handle: tracing_subscriber::reload::Handle<Targets, tracing_subscriber::Registry>,
    initial: String,
    current: std::sync::Mutex<String>,
}

static LOG_FILTER: std::sync::OnceLock<LogFilter> = std::sync::OnceLock::new();

const LOGGING_HELP: &str = "usage: POST /logging                          (list the current level)
usage: POST /logging?level=<level>            (change the global level)
usage: POST /logging?level=<mod>:<level>,...  (change some modules' levels)
usage: POST /logging?reset                    (back to the level at start)
levels: error|warn|info|debug|trace|off; modules: e.g. ambit_l4proxy::inbound
";

/// The admin `/logging` endpoint as istio/ztunnel (and Envoy) serve it:
/// `POST /logging` lists the current level, `POST /logging?level=debug`
/// changes the global level, `level=<module>:<level>,...` changes modules'
/// levels (added to the current filter), `reset` restores the level the
/// process started with. Returns the HTTP status and a text body.
pub fn logging(method: &str, query: &str) -> (u16, String) {
    if method != "POST" {
        return (405, format!("Invalid HTTP method\n{LOGGING_HELP}"));
    }
    let Some(filter) = LOG_FILTER.get() else {
        return (503, "logging is not initialised\n".into());
    };
    let mut level = None;
    let mut reset = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "level" => {
                level = Some(
                    v.replace("%3A", ":")
                        .replace("%3a", ":")
                        .replace("%2C", ",")
                        .replace("%2c", ","),
                )
            }
            "reset" => reset = true,
            _ => return (400, format!("unknown parameter {k:?}\n{LOGGING_HELP}")),
        }
    }
    let mut current = match filter.current.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if level.is_none() && !reset {
        return (200, format!("current log level is {current}\n"));
    }
    let mut next = if reset {
        filter.initial.clone()
    } else {
        current.clone()
    };
    if let Some(spec) = level {
        match directives(&spec) {
            Ok((Some(global), scoped)) => {
                next = std::iter::once(global)
                    .chain(scoped)
                    .collect::<Vec<_>>()
                    .join(",")
            }
            Ok((None, scoped)) => {
                next = std::iter::once(next)
                    .chain(scoped)
                    .collect::<Vec<_>>()
                    .join(",")
            }
            Err(e) => return (400, format!("{e}\n{LOGGING_HELP}")),
        }
    }
    match next.parse::<Targets>() {
        Ok(f) => {
            if filter.handle.reload(f).is_err() {
                return (500, "the log filter is gone\n".into());
            }
            tracing::info!(filter = %next, "log level changed");
            *current = next;
            (200, format!("current log level is {current}\n"))
        }
        Err(e) => (400, format!("invalid level {next:?}: {e}\n{LOGGING_HELP}")),
    }
}

/// Istio's `level` value → (a global level, module directives in
/// `Targets` syntax: `module=level`).
fn directives(spec: &str) -> Result<(Option<String>, Vec<String>), String> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let mut global = None;
    let mut scoped = Vec::new();
    for clause in spec.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match clause.rsplit_once(':') {
            Some((module, level)) if !module.is_empty() && LEVELS.contains(&level) => {
                scoped.push(format!("{}={level}", module.trim_end_matches(':')));
            }
            None if LEVELS.contains(&clause) => global = Some(clause.to_owned()),
            _ => return Err(format!("invalid level clause {clause:?}")),
        }
    }
    if global.is_none() && scoped.is_empty() {
        return Err("empty level".into());
    }
    Ok((global, scoped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_level_clauses() {
        assert_eq!(directives("debug"), Ok((Some("debug".into()), vec![])));
        assert_eq!(
            directives("ambit_l4proxy::inbound:trace,info"),
            Ok((
                Some("info".into()),
                vec!["ambit_l4proxy::inbound=trace".into()]
            ))
        );
        assert!(directives("loud").is_err());
        assert!(directives("x:loud").is_err());
        assert!(directives("").is_err());
        assert_eq!(logging("GET", "").0, 405);
    }

    #[test]
    fn filters_are_module_levels() {
        use tracing::Level;
        use tracing_subscriber::filter::LevelFilter;
        let f: Targets = "warn,ambit_l4proxy::inbound=trace".parse().expect("filter");
        assert!(f.would_enable("ambit_l4proxy::inbound", &Level::TRACE));
        assert!(!f.would_enable("ambit_l4proxy::outbound", &Level::INFO));
        assert!(f.would_enable("h2", &Level::WARN));
        assert_eq!(info().default_level(), Some(LevelFilter::INFO));
        // A span or field filter is not a module level: `RUST_LOG` so
        // spelled falls back to `info`, as an invalid one always did.
        assert!("[conn{peer=1}]=debug".parse::<Targets>().is_err());
        // A bare word is a module at every level, as `EnvFilter` read it.
        let f: Targets = "loud".parse().expect("filter");
        assert!(f.would_enable("loud", &Level::TRACE));
        assert!(!f.would_enable("h2", &Level::ERROR));
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
