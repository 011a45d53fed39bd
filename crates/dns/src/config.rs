//! The proxy's configuration and the resolv.conf parser.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::Error;

/// Istio's TTL for the answers it gives for mesh names, in seconds.
pub const DEFAULT_TTL: u32 = 30;

/// How the proxy serves and forwards. Build it with [`Config::default`] or
/// [`Config::from_resolv_conf`] and adjust fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Upstream resolvers, tried in order, for every name the
    /// [`MeshResolver`](crate::MeshResolver) does not answer. Empty means
    /// such queries get SERVFAIL.
    pub upstreams: Vec<SocketAddr>,
    /// How long one try to one upstream may take (resolv.conf `timeout`),
    /// including a retry over TCP when the UDP answer was truncated.
    pub timeout: Duration,
    /// How many rounds over all upstreams a forwarded query gets
    /// (resolv.conf `attempts`). A query that gets no answer takes at most
    /// `timeout × attempts × upstreams.len()` before SERVFAIL.
    pub attempts: u32,
    /// TTL of the records answered for mesh names (Istio: 30 s).
    pub ttl: u32,
    /// Most forwarded queries in flight at once, over UDP and TCP together;
    /// a query beyond it gets SERVFAIL at once.
    pub max_in_flight: usize,
    /// Most TCP client connections served at once; more are closed on
    /// accept.
    pub max_tcp_connections: usize,
    /// Most forwarded queries in flight on one TCP connection; the
    /// connection is not read further until one completes.
    pub max_in_flight_per_connection: usize,
    /// How long a TCP client connection may sit with no query started.
    pub tcp_idle_timeout: Duration,
    /// How long a TCP client may take to send one whole query once its
    /// length arrived, and to accept one whole reply (slow clients are cut).
    pub tcp_request_timeout: Duration,
    /// Largest UDP reply sent, whatever a client's EDNS payload size says
    /// (never below 512). 1232 is the DNS Flag Day 2020 value.
    pub max_udp_payload: u16,
    /// How long TCP connections and forwards may go on once shutdown starts.
    pub drain_deadline: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            ttl: DEFAULT_TTL,
            max_in_flight: 1024,
            max_tcp_connections: 256,
            max_in_flight_per_connection: 16,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_request_timeout: Duration::from_secs(5),
            max_udp_payload: 1232,
            drain_deadline: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// The defaults with the upstreams, timeout and attempts of a parsed
    /// resolv.conf.
    pub fn from_resolv_conf(conf: &ResolvConf) -> Self {
        Self {
            upstreams: conf.upstreams(),
            timeout: conf.timeout,
            attempts: conf.attempts,
            ..Self::default()
        }
    }

    /// The defaults with explicit upstreams.
    pub fn with_upstreams(upstreams: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            upstreams: upstreams.into_iter().collect(),
            ..Self::default()
        }
    }
}

/// What a resolv.conf says, read as glibc does: unknown lines and options
/// are ignored, the last `search`/`domain` line wins, at most three
/// nameservers are kept, and options are clamped to glibc's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` addresses (port 53), at most three.
    pub nameservers: Vec<IpAddr>,
    /// The `search` list (or the one `domain`), without trailing dots.
    pub search: Vec<String>,
    /// `options ndots:N` (default 1, at most 15). Not used by the proxy
    /// itself: a [`MeshResolver`](crate::MeshResolver) may use it with
    /// [`search`](Self::search) to expand short names.
    pub ndots: u8,
    /// `options timeout:N` seconds (default 5, at most 30).
    pub timeout: Duration,
    /// `options attempts:N` (default 2, at most 5).
    pub attempts: u32,
}

impl Default for ResolvConf {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// Most nameservers glibc uses (`MAXNS`).
const MAX_NAMESERVERS: usize = 3;

impl ResolvConf {
    /// The system's resolver configuration file.
    pub const SYSTEM_PATH: &'static str = "/etc/resolv.conf";

    /// Parses resolv.conf text. Never fails: what is not understood is
    /// skipped, as glibc does.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.trim_start();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok())
                        && conf.nameservers.len() < MAX_NAMESERVERS
                    {
                        conf.nameservers.push(ip);
                    }
                }
                Some("search") => {
                    conf.search = words
                        .take_while(|w| !w.starts_with('#') && !w.starts_with(';'))
                        .map(|w| w.trim_end_matches('.').to_owned())
                        .filter(|w| !w.is_empty())
                        .collect();
                }
                Some("domain") => {
                    conf.search = words
                        .next()
                        .map(|w| w.trim_end_matches('.').to_owned())
                        .filter(|w| !w.is_empty())
                        .into_iter()
                        .collect();
                }
                Some("options") => {
                    for option in words {
                        conf.apply_option(option);
                    }
                }
                _ => {}
            }
        }
        conf
    }

    fn apply_option(&mut self, option: &str) {
        let Some((key, value)) = option.split_once(':') else {
            return;
        };
        let Ok(value) = value.parse::<u32>() else {
            return;
        };
        match key {
            // glibc clamps rather than rejects.
            "ndots" => self.ndots = value.min(15) as u8,
            "timeout" => self.timeout = Duration::from_secs(u64::from(value.clamp(1, 30))),
            "attempts" => self.attempts = value.clamp(1, 5),
            _ => {}
        }
    }

    /// Reads and parses a resolv.conf file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        std::fs::read_to_string(path)
            .map(|text| Self::parse(&text))
            .map_err(|source| Error::ReadResolvConf {
                path: path.to_owned(),
                source,
            })
    }

    /// Reads [`/etc/resolv.conf`](Self::SYSTEM_PATH).
    pub fn system() -> Result<Self, Error> {
        Self::read(Self::SYSTEM_PATH)
    }

    /// The nameservers as socket addresses on port 53.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.nameservers
            .iter()
            .map(|ip| SocketAddr::new(*ip, 53))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kubernetes_resolv_conf() {
        let conf = ResolvConf::parse(
            "# generated\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\noptions ndots:5 timeout:2 attempts:3 rotate\n",
        );
        assert_eq!(
            conf.nameservers,
            vec!["10.96.0.10".parse::<IpAddr>().expect("test value")]
        );
        assert_eq!(
            conf.search,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(conf.ndots, 5);
        assert_eq!(conf.timeout, Duration::from_secs(2));
        assert_eq!(conf.attempts, 3);
        let config = Config::from_resolv_conf(&conf);
        assert_eq!(
            config.upstreams,
            vec!["10.96.0.10:53".parse().expect("test value")]
        );
        assert_eq!(config.attempts, 3);
    }

    #[test]
    fn is_lenient_and_clamps_like_glibc() {
        let conf = ResolvConf::parse(
            "nameserver 1.1.1.1\nnameserver not-an-ip\nnameserver ::1\nnameserver 2.2.2.2\n\
             nameserver 3.3.3.3\nsearch a.example. b.example\ndomain only.example\n\
             options ndots:99 timeout:0 attempts:9 bogus:x\n; comment\ngarbage line\n",
        );
        assert_eq!(conf.nameservers.len(), 3);
        assert_eq!(
            conf.nameservers[1],
            "::1".parse::<IpAddr>().expect("test value")
        );
        assert_eq!(conf.search, ["only.example"]);
        assert_eq!(conf.ndots, 15);
        assert_eq!(conf.timeout, Duration::from_secs(1));
        assert_eq!(conf.attempts, 5);
        assert_eq!(ResolvConf::parse(""), ResolvConf::default());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = ResolvConf::read("/nonexistent/resolv.conf").expect_err("missing file");
        assert!(
            err.to_string().contains("/nonexistent/resolv.conf"),
            "{err}"
        );
    }
}
