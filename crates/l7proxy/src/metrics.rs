//! Prometheus metrics with Istio's HTTP names and labels.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The labels of Istio's HTTP metrics (reporter `waypoint`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
pub struct HttpLabels {
    /// `waypoint`.
    pub reporter: String,
    /// Source workload name (by the original client address), or `unknown`.
    pub source_workload: String,
    /// Source namespace (from the peer identity).
    pub source_workload_namespace: String,
    /// Source SPIFFE id.
    pub source_principal: String,
    /// Destination workload name.
    pub destination_workload: String,
    /// Destination workload namespace.
    pub destination_workload_namespace: String,
    /// Destination version (`canonicalRevision`).
    pub destination_version: String,
    /// Destination service hostname.
    pub destination_service: String,
    /// Destination service name.
    pub destination_service_name: String,
    /// `http` or `grpc`.
    pub request_protocol: String,
    /// The status answered.
    pub response_code: String,
    /// `-`, or Envoy-style flags: `NR` no route, `UH` no healthy upstream,
    /// `UF` connect failure, `UC` reset, `UT` timeout, `FI` fault, `DENY`.
    pub response_flags: String,
    /// `mutual_tls`.
    pub connection_security_policy: String,
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// The waypoint's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<HttpLabels, Counter>,
    duration: HistogramFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn duration_histogram() -> Histogram {
    // Istio's default buckets for request duration (milliseconds).
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

impl Metrics {
    /// Registers `istio_requests_total` and
    /// `istio_request_duration_milliseconds`.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        r.register("istio_requests", "HTTP requests", requests.clone());
        r.register(
            "istio_request_duration_milliseconds",
            "HTTP request duration in milliseconds",
            duration.clone(),
        );
        Self {
            registry: Arc::new(r),
            requests,
            duration,
        }
    }

    /// Records one finished request.
    pub fn record(&self, labels: &HttpLabels, elapsed: Duration) {
        self.requests.get_or_create(labels).inc();
        self.duration
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64() * 1000.0);
    }

    /// Records one finished request through `cache`: the label set is
    /// built and hashed only the first time a connection sees a
    /// combination of the per-request values (`key`); `base` gives the
    /// labels that are fixed for the connection. Same series as
    /// [`Metrics::record`].
    pub(crate) fn record_cached(
        &self,
        cache: &SeriesCache,
        key: &SeriesKey<'_>,
        base: impl FnOnce() -> HttpLabels,
        elapsed: Duration,
    ) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let mut entries = match cache.entries.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        if let Some(c) = entries.iter().find(|c| c.is(key)) {
            c.requests.inc();
            c.duration.observe(ms);
            return;
        }
        let labels = HttpLabels {
            source_workload: key.source_workload.to_owned(),
            destination_workload: key.destination_workload.to_owned(),
            destination_workload_namespace: key.destination_workload_namespace.to_owned(),
            destination_version: key.destination_version.to_owned(),
            response_code: key.response_code.to_string(),
            response_flags: key.response_flags.to_owned(),
            ..base()
        };
        let requests = self.requests.get_or_create(&labels).clone();
        let duration = self.duration.get_or_create(&labels).clone();
        requests.inc();
        duration.observe(ms);
        if entries.len() < SERIES_CACHE_MAX {
            entries.push(CachedSeries {
                source_workload: labels.source_workload,
                destination_workload: labels.destination_workload,
                destination_workload_namespace: labels.destination_workload_namespace,
                destination_version: labels.destination_version,
                response_code: key.response_code,
                response_flags: key.response_flags,
                requests,
                duration,
            });
        }
    }

    /// The count of requests with `labels`.
    pub fn requests(&self, labels: &HttpLabels) -> u64 {
        self.requests.get_or_create(labels).get()
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut s, &self.registry) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        s
    }
}

/// The most series one connection caches handles for; more are recorded
/// through the families directly.
const SERIES_CACHE_MAX: usize = 32;

/// The label values that vary from request to request on one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeriesKey<'a> {
    pub(crate) source_workload: &'a str,
    pub(crate) destination_workload: &'a str,
    pub(crate) destination_workload_namespace: &'a str,
    pub(crate) destination_version: &'a str,
    pub(crate) response_code: u16,
    pub(crate) response_flags: &'static str,
}

/// Handles to the series one connection has recorded, by the values that
/// vary per request (the other labels are fixed per connection).
#[derive(Debug, Default)]
pub(crate) struct SeriesCache {
    entries: Mutex<Vec<CachedSeries>>,
}

#[derive(Debug)]
struct CachedSeries {
    source_workload: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_version: String,
    response_code: u16,
    response_flags: &'static str,
    requests: Counter,
    duration: Histogram,
}

impl CachedSeries {
    fn is(&self, k: &SeriesKey<'_>) -> bool {
        self.response_code == k.response_code
            && self.response_flags == k.response_flags
            && self.destination_workload == k.destination_workload
            && self.source_workload == k.source_workload
            && self.destination_workload_namespace == k.destination_workload_namespace
            && self.destination_version == k.destination_version
    }
}
