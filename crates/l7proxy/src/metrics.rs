//! Prometheus metrics with Istio's HTTP names and labels.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The labels of Istio's HTTP metrics (`istio_requests_total`,
/// `istio_request_duration_milliseconds`), every one Istio's dashboards and
/// Kiali group by, in Istio's order; `unknown` where a value is not known.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
pub struct HttpLabels {
    /// `waypoint`.
    pub reporter: String,
    /// Source workload name (by the original client address).
    pub source_workload: String,
    /// Source canonical service.
    pub source_canonical_service: String,
    /// Source canonical revision.
    pub source_canonical_revision: String,
    /// Source namespace (from the peer identity).
    pub source_workload_namespace: String,
    /// Source SPIFFE id.
    pub source_principal: String,
    /// Source app (the canonical service).
    pub source_app: String,
    /// Source version (the canonical revision).
    pub source_version: String,
    /// Source cluster id.
    pub source_cluster: String,
    /// Destination workload name.
    pub destination_workload: String,
    /// Destination workload namespace.
    pub destination_workload_namespace: String,
    /// Destination SPIFFE id.
    pub destination_principal: String,
    /// Destination app (the canonical service).
    pub destination_app: String,
    /// Destination version (`canonicalRevision`).
    pub destination_version: String,
    /// Destination service hostname.
    pub destination_service: String,
    /// Destination canonical service.
    pub destination_canonical_service: String,
    /// Destination canonical revision.
    pub destination_canonical_revision: String,
    /// Destination service name.
    pub destination_service_name: String,
    /// Destination service namespace.
    pub destination_service_namespace: String,
    /// Destination cluster id.
    pub destination_cluster: String,
    /// `http` or `grpc`.
    pub request_protocol: String,
    /// The status answered.
    pub response_code: String,
    /// The gRPC status code (`0`–`16`; empty when the response carried
    /// none).
    pub grpc_response_status: String,
    /// `-`, or Envoy-style flags: `NR` no route, `UH` no healthy upstream,
    /// `UF` connect failure, `UC` reset, `UT` timeout, `FI` fault, `DENY`.
    pub response_flags: String,
    /// `mutual_tls`.
    pub connection_security_policy: String,
}

const UNKNOWN: &str = "unknown";

/// A workload's label values: (workload, canonical service, canonical
/// revision, namespace, principal, cluster), `unknown` where empty.
fn side(w: Option<&ambit_mesh::Workload>) -> [String; 6] {
    let or = |v: &str| {
        if v.is_empty() {
            UNKNOWN.to_owned()
        } else {
            v.to_owned()
        }
    };
    match w {
        None => std::array::from_fn(|_| UNKNOWN.to_owned()),
        Some(w) => [
            or(if w.workload_name.is_empty() {
                &w.name
            } else {
                &w.workload_name
            }),
            or(&w.canonical_name),
            or(&w.canonical_revision),
            or(&w.namespace),
            w.identity()
                .map_or_else(|| UNKNOWN.to_owned(), |i| i.as_str().to_owned()),
            or(&w.cluster_id),
        ],
    }
}

/// The labels of Istio's TCP connection metrics
/// (`istio_tcp_connections_opened_total`, `..._closed_total`) for opaque
/// TCP connections through the waypoint.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
pub struct TcpLabels {
    /// `waypoint`.
    pub reporter: String,
    /// Source workload name (by the client address), or `unknown`.
    pub source_workload: String,
    /// Source namespace (from the peer identity).
    pub source_workload_namespace: String,
    /// Source SPIFFE id.
    pub source_principal: String,
    /// Destination workload name, or `unknown`.
    pub destination_workload: String,
    /// Destination workload namespace, or `unknown`.
    pub destination_workload_namespace: String,
    /// Destination service hostname.
    pub destination_service: String,
    /// Destination service name.
    pub destination_service_name: String,
    /// Destination service namespace.
    pub destination_service_namespace: String,
    /// `tcp`.
    pub request_protocol: String,
    /// `-`, or `DENY` (authorization), `UH` (no healthy upstream), `UF`
    /// (connect failure).
    pub response_flags: String,
    /// `mutual_tls`.
    pub connection_security_policy: String,
}

/// The label of `ambit_waypoint_mirror_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    /// `sent` (the mirror answered), `failed` (connect failure, error or
    /// timeout), `no_endpoint` (no healthy endpoint), `skipped_body` (the
    /// body was larger than `max_mirror_body` or of unknown length).
    pub outcome: &'static str,
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// The waypoint's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<HttpLabels, Counter>,
    duration: HistogramFamily,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    mirrors: Family<MirrorLabels, Counter>,
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
    /// Registers `istio_requests_total`,
    /// `istio_request_duration_milliseconds`, the TCP connection counters
    /// and `ambit_waypoint_mirror_requests_total`.
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
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let mirrors = Family::<MirrorLabels, Counter>::default();
        r.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        r.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        r.register(
            "ambit_waypoint_mirror_requests",
            "Mirrored (shadow) requests by outcome",
            mirrors.clone(),
        );
        Self {
            registry: Arc::new(r),
            requests,
            duration,
            tcp_opened,
            tcp_closed,
            mirrors,
        }
    }

    /// Counts a TCP connection opened.
    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// Counts a TCP connection closed.
    pub fn tcp_closed(&self, labels: &TcpLabels) {
        self.tcp_closed.get_or_create(labels).inc();
    }

    /// Counts a mirror request by outcome.
    pub fn mirror(&self, outcome: &'static str) {
        self.mirrors.get_or_create(&MirrorLabels { outcome }).inc();
    }

    /// Mirror requests with `outcome` so far.
    pub fn mirrors(&self, outcome: &'static str) -> u64 {
        self.mirrors.get_or_create(&MirrorLabels { outcome }).get()
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
        let base = base();
        let [src_wl, src_cs, src_cr, src_ns, _, src_cluster] = side(key.source);
        let [dst_wl, dst_cs, dst_cr, dst_ns, dst_principal, dst_cluster] = side(key.destination);
        let labels = HttpLabels {
            source_workload: src_wl,
            source_app: src_cs.clone(),
            source_canonical_service: src_cs,
            source_version: src_cr.clone(),
            source_canonical_revision: src_cr,
            // The namespace of the verified peer identity when the source
            // workload is not known by address.
            source_workload_namespace: if key.source.is_some() {
                src_ns
            } else {
                base.source_workload_namespace.clone()
            },
            source_cluster: src_cluster,
            destination_workload: dst_wl,
            destination_workload_namespace: dst_ns,
            destination_principal: dst_principal,
            destination_app: dst_cs.clone(),
            destination_canonical_service: dst_cs,
            destination_version: dst_cr.clone(),
            destination_canonical_revision: dst_cr,
            destination_cluster: dst_cluster,
            response_code: key.response_code.to_string(),
            response_flags: key.response_flags.to_owned(),
            request_protocol: key.protocol.to_owned(),
            grpc_response_status: key.grpc_status.map(|s| s.to_string()).unwrap_or_default(),
            ..base
        };
        let requests = self.requests.get_or_create(&labels).clone();
        let duration = self.duration.get_or_create(&labels).clone();
        requests.inc();
        duration.observe(ms);
        if entries.len() < SERIES_CACHE_MAX {
            entries.push(CachedSeries {
                source: key.source.map(|w| w.uid.clone()),
                destination: key.destination.map(|w| w.uid.clone()),
                response_code: key.response_code,
                response_flags: key.response_flags,
                protocol: key.protocol,
                grpc_status: key.grpc_status,
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
    pub(crate) source: Option<&'a ambit_mesh::Workload>,
    pub(crate) destination: Option<&'a ambit_mesh::Workload>,
    pub(crate) response_code: u16,
    pub(crate) response_flags: &'static str,
    /// `http` or `grpc`.
    pub(crate) protocol: &'static str,
    /// The gRPC status, when the response carried one.
    pub(crate) grpc_status: Option<u16>,
}

/// Handles to the series one connection has recorded, by the values that
/// vary per request (the other labels are fixed per connection).
#[derive(Debug, Default)]
pub(crate) struct SeriesCache {
    entries: Mutex<Vec<CachedSeries>>,
}

#[derive(Debug)]
struct CachedSeries {
    source: Option<String>,
    destination: Option<String>,
    response_code: u16,
    response_flags: &'static str,
    protocol: &'static str,
    grpc_status: Option<u16>,
    requests: Counter,
    duration: Histogram,
}

impl CachedSeries {
    fn is(&self, k: &SeriesKey<'_>) -> bool {
        self.response_code == k.response_code
            && self.response_flags == k.response_flags
            && self.grpc_status == k.grpc_status
            && self.protocol == k.protocol
            && self.destination.as_deref() == k.destination.map(|w| w.uid.as_str())
            && self.source.as_deref() == k.source.map(|w| w.uid.as_str())
    }
}
