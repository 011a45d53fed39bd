//! Polling the child processes' loopback HTTP endpoints from inside their
//! namespaces: readiness (`:15021/healthz/ready`) and the agent's
//! Prometheus metrics (`:15014/metrics`).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_netns::NetNs;
use anyhow::bail;

/// One `GET path` to `addr` from inside `ns` (1 s read timeout); the whole
/// response as text, or `None` if the connection or the request failed.
pub(crate) fn get(ns: &NetNs, addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = ns.tcp_connect(addr).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    Some(r)
}

/// Reads one metric sample from `127.0.0.1:15014/metrics` in `ns`.
pub(crate) fn read_metric(ns: &NetNs, name: &str) -> Option<f64> {
    get(ns, "127.0.0.1:15014".parse().ok()?, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

/// Waits until the agent in `ns` reports `want` for metric `name`.
pub(crate) fn wait_metric(ns: &NetNs, name: &str, want: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        last = read_metric(ns, name);
        if last == Some(want) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{name} is {last:?}, want {want}")
}

/// Polls a proxy's readiness endpoint from inside its namespace.
pub(crate) fn wait_ready(ns: &NetNs, timeout: Duration) -> anyhow::Result<()> {
    wait_ready_at(ns, 15021, timeout)
}

/// Waits for `/healthz/ready` on `127.0.0.1:port` inside `ns`.
pub(crate) fn wait_ready_at(ns: &NetNs, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while start.elapsed() < timeout {
        if get(ns, addr, "/healthz/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("not ready after {timeout:?}")
}
