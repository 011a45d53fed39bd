//! ztunnel's memory per connection: RSS with many proxied connections
//! held open (each has echoed a byte, so its stream is fully set up),
//! against RSS before they were opened, in the same run.

use std::time::Duration;

use ambit_testbed::rss_kib;

use crate::Client;

/// What memory figures a run produced.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Memory {
    /// Idle connections opened for the per-connection figure.
    pub(crate) idle_conns: usize,
    /// Bytes of ztunnel RSS per idle proxied connection, per ztunnel (one
    /// end of the tunnel).
    pub(crate) per_conn_bytes: f64,
    /// The many-streams figure is for this many concurrent streams.
    pub(crate) streams: usize,
    /// Streams actually held open (fewer than `streams` when the
    /// open-files limit cannot hold them all; the figure is then scaled
    /// linearly from the idle RSS).
    pub(crate) streams_held: usize,
    /// RSS per ztunnel (KiB) with `streams` streams open through it.
    pub(crate) streams_rss_kib: f64,
}

fn rss(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| rss_kib(*p)).sum::<u64>() as f64
}

/// Measures both figures with `meshed`. `ends` is how many tunnel ends the
/// processes in `pids` hold between them (two in both topologies: one
/// process with both ends on loopback, two ztunnels with one each in the
/// capture mesh); figures are per end. At most `fit` streams are held at
/// once (every stream costs two descriptors in this process and in a
/// ztunnel, and the open-files limit may not be raisable).
pub(crate) fn measure(
    meshed: &dyn Client,
    pids: &[u32],
    ends: f64,
    idle: usize,
    streams: usize,
    fit: usize,
) -> anyhow::Result<Memory> {
    let settle = || std::thread::sleep(Duration::from_millis(500));
    settle();
    let before = rss(pids);
    let held = meshed.hold(idle)?;
    settle();
    let after = rss(pids);
    drop(held);
    let per_conn_bytes = (after - before).max(0.0) * 1024.0 / idle as f64 / ends;
    settle();
    let base = rss(pids);
    let streams_held = streams.min(fit);
    let held = meshed.hold(streams_held)?;
    settle();
    let with = rss(pids);
    drop(held);
    let scale = streams as f64 / streams_held.max(1) as f64;
    let streams_rss_kib = (base + (with - base).max(0.0) * scale) / ends;
    Ok(Memory {
        idle_conns: idle,
        per_conn_bytes,
        streams,
        streams_held,
        streams_rss_kib,
    })
}
