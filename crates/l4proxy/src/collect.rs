//! Metrics read at scrape time rather than counted: the process's own
//! (`process_*`, as Prometheus client libraries export them) and the xDS
//! client's (istio/ztunnel's `istio_xds_connection_terminations`,
//! `istio_message_types`, `istio_total_messages_size`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux's fixed user-space clock tick (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_threads`, `process_start_time_seconds`, from `/proc/self`.
/// A value that cannot be read is left out of the scrape.
#[derive(Debug, Default)]
pub(crate) struct ProcessCollector;

/// What `/proc/self/stat` says, from the field after the command name.
struct Stat {
    cpu_seconds: f64,
    threads: i64,
    start_ticks: u64,
}

fn stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command may hold spaces and parentheses: fields start after the
    // last ')'. Field 3 (state) is index 0 here.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        cpu_seconds: (num(11)? + num(12)?) as f64 / TICKS_PER_SECOND,
        threads: i64::try_from(num(17)?).ok()?,
        start_ticks: num(19)?,
    })
}

/// `VmRSS`/`VmSize` of `/proc/self/status`, in bytes.
fn status_bytes(key: &str) -> Option<i64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_fds() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn open_fds() -> Option<i64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    i64::try_from(n).ok()
}

fn gauge<N>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: Option<N>,
) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    if let Some(v) = v {
        let g = ConstGauge::new(v);
        g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
    }
    Ok(())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let st = stat();
        if let Some(s) = &st {
            let c = ConstCounter::new(s.cpu_seconds);
            c.encode(enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?)?;
        }
        gauge(
            &mut enc,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            status_bytes("VmRSS:"),
        )?;
        gauge(
            &mut enc,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            status_bytes("VmSize:"),
        )?;
        gauge(
            &mut enc,
            "process_open_fds",
            "Number of open file descriptors",
            open_fds(),
        )?;
        gauge(
            &mut enc,
            "process_max_fds",
            "Maximum number of open file descriptors",
            max_fds(),
        )?;
        gauge(
            &mut enc,
            "process_threads",
            "Number of OS threads in the process",
            st.as_ref().map(|s| s.threads),
        )?;
        let start = st
            .as_ref()
            .zip(boot_time())
            .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / TICKS_PER_SECOND);
        gauge(
            &mut enc,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            start,
        )
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UrlLabel {
    url: String,
}

/// The ADS client's counters ([`ambit_xds::ads::client_stats`]) under
/// istio/ztunnel's names.
#[derive(Debug, Default)]
pub(crate) struct XdsCollector;

impl Collector for XdsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        use ambit_xds::ads::{Termination, client_stats};
        let s = client_stats();
        let mut fam = enc.encode_descriptor(
            "istio_xds_connection_terminations",
            "The total number of completed connections to xds server (unstable)",
            None,
            MetricType::Counter,
        )?;
        for why in Termination::ALL {
            let l = ReasonLabel {
                reason: why.as_str().to_owned(),
            };
            ConstCounter::new(s.terminations(why)).encode(fam.encode_family(&l)?)?;
        }
        let mut fam = enc.encode_descriptor(
            "istio_message_types",
            "Total number of messages received (unstable)",
            None,
            MetricType::Counter,
        )?;
        for (url, n) in s.messages() {
            ConstCounter::new(n).encode(fam.encode_family(&UrlLabel { url })?)?;
        }
        ConstCounter::new(s.bytes()).encode(enc.encode_descriptor(
            "istio_total_messages_size",
            "Total number of bytes received (unstable)",
            None,
            MetricType::Counter,
        )?)
    }
}
