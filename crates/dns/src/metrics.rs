//! istio/ztunnel's DNS metrics, with its names and labels.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::Protocol;
use crate::resolver::ClientLabels;

/// Upper bounds of the upstream duration histogram, in seconds (Istio's).
const DURATION_BUCKETS: [f64; 6] = [0.001, 0.005, 0.01, 0.1, 1.0, 5.0];

/// The labels of every DNS metric, as istio/ztunnel writes them.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// The query type in lower case: `a`, `aaaa`, `srv`, ...
    pub request_query_type: String,
    /// `udp` or `tcp`: how the client asked.
    pub request_protocol: String,
    /// The client's canonical service, `unknown` if not known.
    pub source_canonical_service: String,
    /// The client's canonical revision, `unknown` if not known.
    pub source_canonical_revision: String,
}

impl DnsLabels {
    pub(crate) fn new(query_type: &str, protocol: Protocol, client: ClientLabels) -> Self {
        Self {
            request_query_type: query_type.to_ascii_lowercase(),
            request_protocol: protocol.as_str().to_owned(),
            source_canonical_service: client.canonical_service,
            source_canonical_revision: client.canonical_revision,
        }
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The proxy's metrics. Cheap to clone (the series are shared).
///
/// | Name | Type | Counts |
/// |---|---|---|
/// | `istio_dns_requests_total` | counter | every well-formed query, answered or forwarded |
/// | `istio_dns_upstream_requests_total` | counter | queries forwarded upstream |
/// | `istio_dns_upstream_failures_total` | counter | forwarded queries that got no upstream answer |
/// | `istio_dns_upstream_request_duration_seconds` | histogram | time to an upstream answer (or failure) |
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<DnsLabels, Counter>,
    upstream_requests: Family<DnsLabels, Counter>,
    upstream_failures: Family<DnsLabels, Counter>,
    upstream_duration: Family<DnsLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under Istio's
    /// names.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "istio_dns_requests",
            "Total number of DNS requests (unstable)",
            metrics.requests.clone(),
        );
        registry.register(
            "istio_dns_upstream_requests",
            "Total number of DNS requests forwarded to upstream (unstable)",
            metrics.upstream_requests.clone(),
        );
        registry.register(
            "istio_dns_upstream_failures",
            "Total number of DNS requests that failed to forward upstream (unstable)",
            metrics.upstream_failures.clone(),
        );
        registry.register_with_unit(
            "istio_dns_upstream_request_duration",
            "Total time in seconds Istio takes to get DNS response from upstream (unstable)",
            Unit::Seconds,
            metrics.upstream_duration.clone(),
        );
        metrics
    }

    /// Metrics that are counted but registered nowhere (tests, fuzzing).
    pub fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            upstream_duration: Family::new_with_constructor(duration_histogram),
        }
    }

    pub(crate) fn request(&self, labels: &DnsLabels) {
        self.requests.get_or_create(labels).inc();
    }

    pub(crate) fn upstream_request(&self, labels: &DnsLabels) {
        self.upstream_requests.get_or_create(labels).inc();
    }

    pub(crate) fn upstream_done(&self, labels: &DnsLabels, took: Duration, failed: bool) {
        self.upstream_duration
            .get_or_create(labels)
            .observe(took.as_secs_f64());
        if failed {
            self.upstream_failures.get_or_create(labels).inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::unregistered()
    }
}
