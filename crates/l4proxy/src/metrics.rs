//! Prometheus metrics with Istio's names and labels, and access logs.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Declares [`TcpLabels`] and its borrowed twin `LabelsRef` from one field
/// list, so that the two cannot drift apart (a series is found by the
/// borrowed form and stored in the owned one; both must hash alike).
macro_rules! tcp_labels {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// The labels of Istio's TCP metrics, named and ordered as istio/ztunnel
        /// writes them (what Istio's dashboards and Kiali group by). `unknown`
        /// where a value is not known.
        #[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
        pub struct TcpLabels {
            $($(#[$doc])* pub $field: String,)*
        }

        /// [`TcpLabels`] borrowed from the workloads they describe: a
        /// connection finds its label set's series with it, without
        /// building twenty-three strings.
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub(crate) struct LabelsRef<'a> {
            $(pub(crate) $field: &'a str,)*
        }

        impl TcpLabels {
            /// The borrowed form.
            pub(crate) fn as_ref(&self) -> LabelsRef<'_> {
                LabelsRef { $($field: &self.$field,)* }
            }
        }

        impl LabelsRef<'_> {
            /// The owned form.
            pub(crate) fn to_labels(self) -> TcpLabels {
                TcpLabels { $($field: self.$field.to_owned(),)* }
            }
        }
    };
}

tcp_labels! {
    /// `source` or `destination`: which side's proxy reports.
    reporter,
    /// Source workload name.
    source_workload,
    /// Source canonical service (the `app` label).
    source_canonical_service,
    /// Source canonical revision (the `version` label).
    source_canonical_revision,
    /// Source workload namespace.
    source_workload_namespace,
    /// Source SPIFFE id.
    source_principal,
    /// Source app (Istio fills it with the canonical service).
    source_app,
    /// Source version (the canonical revision).
    source_version,
    /// Source cluster id.
    source_cluster,
    /// Destination service hostname.
    destination_service,
    /// Destination service namespace.
    destination_service_namespace,
    /// Destination service name.
    destination_service_name,
    /// Destination workload name.
    destination_workload,
    /// Destination canonical service.
    destination_canonical_service,
    /// Destination canonical revision.
    destination_canonical_revision,
    /// Destination workload namespace.
    destination_workload_namespace,
    /// Destination SPIFFE id.
    destination_principal,
    /// Destination app.
    destination_app,
    /// Destination version.
    destination_version,
    /// Destination cluster id.
    destination_cluster,
    /// `tcp`.
    request_protocol,
    /// `-` on success; `DENY`, `CONNECT`, ... on failure.
    response_flags,
    /// `mutual_tls` or `none`.
    connection_security_policy,
}

/// The labels of `istio_build`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: String,
    tag: String,
}

/// The proxy's metrics. Cloning shares them (one reference count).
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    failed: Family<TcpLabels, Counter>,
    active: Gauge,
    inpod: InPodMetrics,
    dns: ambit_dns::Metrics,
    /// Every label set a connection has carried, with its counters once
    /// looked up: an open connection keeps a pointer to its set rather
    /// than its own twenty-three strings, and counts without hashing them
    /// again. Sets are never removed, as the families never remove theirs.
    series: Mutex<hashbrown::HashTable<Arc<Series>>>,
    /// The series table's hash, seeded per process (label values come from
    /// peers and xDS); kept outside the lock, so that a set is hashed
    /// before the table is locked.
    series_hasher: std::hash::RandomState,
}

/// One TCP label set and its counters in the families, each looked up the
/// first time it is counted (so a family shows the set only once it has
/// counted something, as before).
#[derive(Debug)]
pub(crate) struct Series {
    labels: TcpLabels,
    opened: OnceLock<Counter>,
    closed: OnceLock<Counter>,
    received: OnceLock<Counter>,
    sent: OnceLock<Counter>,
}

impl Series {
    /// The label set.
    pub(crate) fn labels(&self) -> &TcpLabels {
        &self.labels
    }
}

/// The counter of `labels` in `family`, kept in `slot` after its first
/// lookup. The families' counters share their value with their clones, and
/// nothing removes a set from a family, so the kept handle stays the one
/// the exposition reads.
fn counter<'a>(
    slot: &'a OnceLock<Counter>,
    family: &Family<TcpLabels, Counter>,
    labels: &TcpLabels,
) -> &'a Counter {
    slot.get_or_init(|| (*family.get_or_create(labels)).clone())
}

/// istio/ztunnel's in-pod workload manager metrics
/// (`workload_manager_inpod_*`).
#[derive(Debug, Clone, Default)]
pub(crate) struct InPodMetrics {
    pub(crate) active: Gauge,
    pub(crate) pending: Gauge,
    pub(crate) started: Counter,
    pub(crate) stopped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let opened = Family::<TcpLabels, Counter>::default();
        let closed = Family::<TcpLabels, Counter>::default();
        let received = Family::<TcpLabels, Counter>::default();
        let sent = Family::<TcpLabels, Counter>::default();
        let failed = Family::<TcpLabels, Counter>::default();
        let active = Gauge::default();
        let inpod = InPodMetrics::default();
        r.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            opened.clone(),
        );
        r.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            closed.clone(),
        );
        r.register(
            "istio_tcp_received_bytes",
            "Bytes received from the source",
            received.clone(),
        );
        r.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the source",
            sent.clone(),
        );
        r.register(
            "istio_tcp_connections_failed",
            "TCP connections that failed",
            failed.clone(),
        );
        for (name, help, g) in [
            (
                "workload_manager_inpod_active_proxy_count",
                "The total number current workloads with active inpod proxies",
                &inpod.active,
            ),
            (
                "workload_manager_inpod_pending_proxy_count",
                "The total number current workloads with pending inpod proxies",
                &inpod.pending,
            ),
        ] {
            r.register(name, help, g.clone());
        }
        r.register(
            "workload_manager_inpod_proxies_started",
            "Inpod proxies started",
            inpod.started.clone(),
        );
        r.register(
            "workload_manager_inpod_proxies_stopped",
            "Inpod proxies stopped",
            inpod.stopped.clone(),
        );
        let dns = ambit_dns::Metrics::new(&mut r);
        r.register_collector(Box::new(crate::collect::XdsCollector));
        r.register_collector(Box::new(crate::collect::ProcessCollector));
        r.register(
            "ztunnel_active_connections",
            "Connections being proxied now",
            active.clone(),
        );
        // Istio's build gauge: always 1, labelled with the component and
        // its version (dashboards use it to show what runs where).
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                component: "ztunnel".into(),
                tag: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        r.register("istio_build", "Istio component build info", build);
        Self {
            inner: Arc::new(Inner {
                series: Mutex::default(),
                series_hasher: std::hash::RandomState::new(),
                registry: r,
                opened,
                closed,
                received,
                sent,
                failed,
                active,
                inpod,
                dns,
            }),
        }
    }

    /// The series of the label set `l`, made now if this set is new.
    pub(crate) fn series(&self, l: LabelsRef<'_>) -> Arc<Series> {
        let make = |l: LabelsRef<'_>| {
            Arc::new(Series {
                labels: l.to_labels(),
                opened: OnceLock::new(),
                closed: OnceLock::new(),
                received: OnceLock::new(),
                sent: OnceLock::new(),
            })
        };
        let hasher = &self.inner.series_hasher;
        let hash = hasher.hash_one(l);
        let Ok(mut table) = self.inner.series.lock() else {
            return make(l);
        };
        if let Some(s) = table.find(hash, |s| s.labels.as_ref() == l) {
            return s.clone();
        }
        let s = make(l);
        table.insert_unique(hash, s.clone(), |s| hasher.hash_one(s.labels.as_ref()));
        s
    }

    /// A connection of `s` opened.
    pub(crate) fn series_opened(&self, s: &Series) {
        counter(&s.opened, &self.inner.opened, &s.labels).inc();
        self.inner.active.inc();
    }

    /// A connection of `s` closed after moving these bytes.
    pub(crate) fn series_closed(&self, s: &Series, received: u64, sent: u64) {
        let i = &self.inner;
        counter(&s.closed, &i.closed, &s.labels).inc();
        counter(&s.received, &i.received, &s.labels).inc_by(received);
        counter(&s.sent, &i.sent, &s.labels).inc_by(sent);
        i.active.dec();
    }

    /// A connection opened.
    pub fn opened(&self, l: &TcpLabels) {
        self.inner.opened.get_or_create(l).inc();
        self.inner.active.inc();
    }

    /// A connection closed after moving these bytes.
    pub fn closed(&self, l: &TcpLabels, received: u64, sent: u64) {
        self.inner.closed.get_or_create(l).inc();
        self.inner.received.get_or_create(l).inc_by(received);
        self.inner.sent.get_or_create(l).inc_by(sent);
        self.inner.active.dec();
    }

    /// A connection failed (counted once, besides opened and closed).
    pub fn failed(&self, l: &TcpLabels) {
        self.inner.failed.get_or_create(l).inc();
    }

    pub(crate) fn dns(&self) -> &ambit_dns::Metrics {
        &self.inner.dns
    }

    pub(crate) fn inpod(&self) -> &InPodMetrics {
        &self.inner.inpod
    }

    /// Connections being proxied now.
    pub fn active(&self) -> i64 {
        self.inner.active.get()
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.inner.registry).is_err() {
            s.clear();
        }
        s
    }
}

/// One access-log line, in istio/ztunnel's field names (`scope=access`,
/// message `connection complete`): `src.addr`, `src.workload`,
/// `src.namespace`, `src.identity`, `dst.addr` (the address dialled: the
/// HBONE hop, or the destination itself), `dst.hbone_addr` (the CONNECT
/// target, HBONE only), `dst.service`, `dst.workload`, `dst.namespace`,
/// `dst.identity`, `direction`, `bytes_sent`, `bytes_recv`, `duration`
/// (`12ms`) and `error` (only when the connection failed). Unknown values
/// are left out, as Istio does.
#[derive(Debug, Clone, Default)]
pub struct AccessLog<'a> {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// Source address.
    pub src: Option<std::net::SocketAddr>,
    /// Source workload name.
    pub src_workload: Option<&'a str>,
    /// Source namespace.
    pub src_namespace: Option<&'a str>,
    /// Source identity.
    pub src_identity: Option<&'a str>,
    /// The address dialled (HBONE hop or destination).
    pub dst: Option<std::net::SocketAddr>,
    /// The CONNECT target, for HBONE.
    pub dst_hbone: Option<std::net::SocketAddr>,
    /// Destination service hostname.
    pub dst_service: Option<&'a str>,
    /// Destination workload name.
    pub dst_workload: Option<&'a str>,
    /// Destination namespace.
    pub dst_namespace: Option<&'a str>,
    /// Destination identity.
    pub dst_identity: Option<&'a str>,
    /// Bytes received from the source.
    pub bytes_recv: u64,
    /// Bytes sent to the source.
    pub bytes_sent: u64,
    /// How long it lasted.
    pub duration: Duration,
    /// Empty on success, else why it ended (`DENY ...`, `connect ...`).
    pub error: &'a str,
}

impl AccessLog<'_> {
    /// Writes the line through `tracing` (target `access`).
    pub fn emit(&self) {
        let duration = Millis(self.duration);
        tracing::info!(
            target: "access",
            scope = "access",
            src.addr = self.src.map(tracing::field::display),
            src.workload = self.src_workload,
            src.namespace = self.src_namespace,
            src.identity = self.src_identity,
            dst.addr = self.dst.map(tracing::field::display),
            dst.hbone_addr = self.dst_hbone.map(tracing::field::display),
            dst.service = self.dst_service,
            dst.workload = self.dst_workload,
            dst.namespace = self.dst_namespace,
            dst.identity = self.dst_identity,
            direction = self.direction,
            bytes_sent = self.bytes_sent,
            bytes_recv = self.bytes_recv,
            duration = %duration,
            error = (!self.error.is_empty()).then_some(self.error),
            "connection complete"
        );
    }
}

/// A duration as the access log writes it (`12ms`), formatted only when a
/// subscriber records the line.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(workload: &str) -> TcpLabels {
        TcpLabels {
            reporter: "source".into(),
            source_workload: workload.into(),
            response_flags: "-".into(),
            ..TcpLabels::default()
        }
    }

    fn lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(name)).collect()
    }

    #[test]
    fn a_label_set_has_one_series_and_counts_through_it() {
        let m = Metrics::new();
        let (a, b) = (labels("a"), labels("b"));
        let s1 = m.series(a.as_ref());
        let s2 = m.series(a.clone().as_ref());
        assert!(Arc::ptr_eq(&s1, &s2), "the same set gives the same series");
        assert!(!Arc::ptr_eq(&s1, &m.series(b.as_ref())));
        assert_eq!(s1.labels(), &a);

        // Nothing is exported before it is counted.
        let text = m.encode();
        assert!(lines(&text, "istio_tcp_connections_opened_total{").is_empty());

        m.series_opened(&s1);
        m.series_opened(&s2);
        m.series_closed(&s1, 10, 20);
        // The public per-label calls land on the same counters.
        m.opened(&a);
        m.closed(&a, 1, 2);
        let text = m.encode();
        let opened = lines(&text, "istio_tcp_connections_opened_total{");
        assert_eq!(opened.len(), 1, "{text}");
        assert!(opened[0].contains("source_workload=\"a\""), "{text}");
        assert!(opened[0].ends_with(" 3"), "{text}");
        let closed = lines(&text, "istio_tcp_connections_closed_total{");
        assert!(closed[0].ends_with(" 2"), "{text}");
        assert!(lines(&text, "istio_tcp_received_bytes_total{")[0].ends_with(" 11"));
        assert!(lines(&text, "istio_tcp_sent_bytes_total{")[0].ends_with(" 22"));
        assert!(lines(&text, "istio_tcp_connections_failed_total{").is_empty());
        assert_eq!(m.active(), 1);
    }

    #[test]
    fn a_flagged_set_is_its_own_series() {
        let m = Metrics::new();
        let plain = labels("a");
        let flagged = LabelsRef {
            response_flags: "DENY",
            ..plain.as_ref()
        };
        let s = m.series(flagged);
        assert_eq!(s.labels().response_flags, "DENY");
        assert_eq!(s.labels().source_workload, "a");
        m.series_opened(&s);
        m.series_closed(&s, 0, 0);
        m.failed(s.labels());
        let text = m.encode();
        let failed = lines(&text, "istio_tcp_connections_failed_total{");
        assert_eq!(failed.len(), 1, "{text}");
        assert!(failed[0].contains("response_flags=\"DENY\""), "{text}");
        assert!(!text.contains("response_flags=\"-\""), "{text}");
    }

    #[test]
    fn access_log_duration_is_whole_milliseconds() {
        assert_eq!(Millis(Duration::from_micros(12_900)).to_string(), "12ms");
    }
}
