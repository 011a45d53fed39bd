//! Prometheus metrics with Istio's names and labels, and access logs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The labels of Istio's TCP metrics, named and ordered as istio/ztunnel
/// writes them (what Istio's dashboards and Kiali group by). `unknown`
/// where a value is not known.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
pub struct TcpLabels {
    /// `source` or `destination`: which side's proxy reports.
    pub reporter: String,
    /// Source workload name.
    pub source_workload: String,
    /// Source canonical service (the `app` label).
    pub source_canonical_service: String,
    /// Source canonical revision (the `version` label).
    pub source_canonical_revision: String,
    /// Source workload namespace.
    pub source_workload_namespace: String,
    /// Source SPIFFE id.
    pub source_principal: String,
    /// Source app (Istio fills it with the canonical service).
    pub source_app: String,
    /// Source version (the canonical revision).
    pub source_version: String,
    /// Source cluster id.
    pub source_cluster: String,
    /// Destination service hostname.
    pub destination_service: String,
    /// Destination service namespace.
    pub destination_service_namespace: String,
    /// Destination service name.
    pub destination_service_name: String,
    /// Destination workload name.
    pub destination_workload: String,
    /// Destination canonical service.
    pub destination_canonical_service: String,
    /// Destination canonical revision.
    pub destination_canonical_revision: String,
    /// Destination workload namespace.
    pub destination_workload_namespace: String,
    /// Destination SPIFFE id.
    pub destination_principal: String,
    /// Destination app.
    pub destination_app: String,
    /// Destination version.
    pub destination_version: String,
    /// Destination cluster id.
    pub destination_cluster: String,
    /// `tcp`.
    pub request_protocol: String,
    /// `-` on success; `DENY`, `CONNECT`, ... on failure.
    pub response_flags: String,
    /// `mutual_tls` or `none`.
    pub connection_security_policy: String,
}

/// The labels of `istio_build`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: String,
    tag: String,
}

/// The proxy's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    failed: Family<TcpLabels, Counter>,
    active: Gauge,
    inpod: InPodMetrics,
    dns: ambit_dns::Metrics,
    /// One shared copy of every label set a connection has carried: an
    /// open connection keeps a pointer to it rather than its own twenty
    /// strings (the families keep one copy of each set anyway).
    label_sets: Arc<Mutex<HashSet<Arc<TcpLabels>>>>,
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
            label_sets: Arc::default(),
            registry: Arc::new(r),
            opened,
            closed,
            received,
            sent,
            failed,
            active,
            inpod,
            dns,
        }
    }

    /// The shared copy of `l` (made now if this set is new).
    pub(crate) fn intern(&self, l: TcpLabels) -> Arc<TcpLabels> {
        let Ok(mut sets) = self.label_sets.lock() else {
            return Arc::new(l);
        };
        if let Some(shared) = sets.get(&l) {
            return shared.clone();
        }
        let shared = Arc::new(l);
        sets.insert(shared.clone());
        shared
    }

    /// A connection opened.
    pub fn opened(&self, l: &TcpLabels) {
        self.opened.get_or_create(l).inc();
        self.active.inc();
    }

    /// A connection closed after moving these bytes.
    pub fn closed(&self, l: &TcpLabels, received: u64, sent: u64) {
        self.closed.get_or_create(l).inc();
        self.received.get_or_create(l).inc_by(received);
        self.sent.get_or_create(l).inc_by(sent);
        self.active.dec();
    }

    /// A connection failed (counted once, besides opened and closed).
    pub fn failed(&self, l: &TcpLabels) {
        self.failed.get_or_create(l).inc();
    }

    pub(crate) fn dns(&self) -> &ambit_dns::Metrics {
        &self.dns
    }

    pub(crate) fn inpod(&self) -> &InPodMetrics {
        &self.inpod
    }

    /// Connections being proxied now.
    pub fn active(&self) -> i64 {
        self.active.get()
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
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
        let duration = format!("{}ms", self.duration.as_millis());
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
