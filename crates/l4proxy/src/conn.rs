//! One record per proxied connection: its Istio metric labels, the
//! opened/closed counters and the access-log line, written in one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ambit_identity::Identity;
use ambit_mesh::Workload;

use crate::metrics::{AccessLog, LabelsRef, Metrics, Series};

const UNKNOWN: &str = "unknown";

/// Which proxy reports, in Istio's `reporter` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reporter {
    /// The source side (outbound).
    Source,
    /// The destination side (inbound).
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// Who talks to whom, as the metric labels see it.
pub(crate) struct Peers<'a> {
    pub(crate) reporter: Reporter,
    pub(crate) source: Option<&'a Workload>,
    pub(crate) source_principal: Option<&'a Identity>,
    pub(crate) destination: Option<&'a Workload>,
    pub(crate) service: Option<&'a ambit_mesh::Service>,
    pub(crate) mtls: bool,
}

impl<'a> Peers<'a> {
    /// Istio's TCP label set, borrowed from the peers; `dst_principal` is
    /// the destination's identity, when it has one.
    pub(crate) fn labels(&self, dst_principal: Option<&'a str>) -> LabelsRef<'a> {
        fn or_unknown(v: &str) -> &str {
            if v.is_empty() { UNKNOWN } else { v }
        }
        let name = |w: Option<&'a Workload>| {
            w.map_or(UNKNOWN, |w| {
                if w.workload_name.is_empty() {
                    &w.name
                } else {
                    &w.workload_name
                }
            })
        };
        let namespace = |w: Option<&'a Workload>| w.map_or(UNKNOWN, |w| w.namespace.as_str());
        let canonical =
            |w: Option<&'a Workload>| w.map_or(UNKNOWN, |w| or_unknown(&w.canonical_name));
        let revision =
            |w: Option<&'a Workload>| w.map_or(UNKNOWN, |w| or_unknown(&w.canonical_revision));
        let cluster = |w: Option<&'a Workload>| w.map_or(UNKNOWN, |w| or_unknown(&w.cluster_id));
        let (src, dst) = (self.source, self.destination);
        let service = self.service;
        let svc = |f: fn(&'a ambit_mesh::Service) -> &'a str| {
            service.map_or(UNKNOWN, |s| or_unknown(f(s)))
        };
        LabelsRef {
            reporter: self.reporter.as_str(),
            source_workload: name(src),
            source_canonical_service: canonical(src),
            source_canonical_revision: revision(src),
            source_workload_namespace: namespace(src),
            source_principal: self.source_principal.map_or(UNKNOWN, Identity::as_str),
            source_app: canonical(src),
            source_version: revision(src),
            source_cluster: cluster(src),
            destination_service: svc(|s| &s.hostname),
            destination_service_namespace: svc(|s| &s.namespace),
            destination_service_name: svc(|s| &s.name),
            destination_workload: name(dst),
            destination_canonical_service: canonical(dst),
            destination_canonical_revision: revision(dst),
            destination_workload_namespace: namespace(dst),
            destination_principal: dst_principal.unwrap_or(UNKNOWN),
            destination_app: canonical(dst),
            destination_version: revision(dst),
            destination_cluster: cluster(dst),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: if self.mtls { "mutual_tls" } else { "none" },
        }
    }
}

/// The record of one connection, from its decision to its end. Metrics
/// count it only once [`ConnRecord::open`] is called (a connection refused
/// by the route decision without a policy verdict is only logged); the
/// access-log line is written by [`ConnRecord::close`], exactly once.
pub(crate) struct ConnRecord {
    metrics: Metrics,
    series: Option<Arc<Series>>,
    opened: bool,
    direction: &'static str,
    src: SocketAddr,
    dst: SocketAddr,
    via: Option<SocketAddr>,
    hbone_target: Option<SocketAddr>,
    src_identity: Option<Identity>,
    started: Instant,
}

impl ConnRecord {
    /// A record for a connection from `src` to `dst`.
    pub(crate) fn new(
        metrics: &Metrics,
        direction: &'static str,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Self {
        Self {
            metrics: metrics.clone(),
            series: None,
            opened: false,
            direction,
            src,
            dst,
            via: None,
            hbone_target: None,
            src_identity: None,
            started: Instant::now(),
        }
    }

    /// Sets the metric labels (and the identities the log shows).
    pub(crate) fn with_peers(mut self, peers: &Peers<'_>) -> Self {
        self.src_identity = peers.source_principal.cloned();
        let dst_principal = peers.destination.and_then(Workload::identity);
        let dst_principal = dst_principal.as_ref().map(|i| i.as_str());
        self.series = Some(self.metrics.series(peers.labels(dst_principal)));
        self
    }

    /// Sets the source identity the log shows, without metric labels.
    pub(crate) fn with_source_identity(mut self, id: Option<&Identity>) -> Self {
        self.src_identity = id.cloned();
        self
    }

    /// Sets the hop actually dialled.
    pub(crate) fn with_via(mut self, via: Option<SocketAddr>) -> Self {
        self.via = via;
        self
    }

    /// Sets the HBONE CONNECT target (`dst.hbone_addr`), when it differs
    /// from the connection's destination (an endpoint chosen behind a VIP).
    pub(crate) fn with_hbone_target(mut self, target: Option<SocketAddr>) -> Self {
        self.hbone_target = target;
        self
    }

    /// Counts the connection as opened.
    pub(crate) fn open(&mut self) {
        if let Some(l) = &self.series
            && !self.opened
        {
            self.metrics.series_opened(l);
            self.opened = true;
        }
    }

    /// Sets Istio's `response_flags` (`REJECT`, `DENY`, `CONNECT`).
    pub(crate) fn flag(&mut self, flag: &str) {
        if let Some(s) = &self.series {
            // The flagged set's series from here on (refusals and failures).
            let flagged = LabelsRef {
                response_flags: flag,
                ..s.labels().as_ref()
            };
            self.series = Some(self.metrics.series(flagged));
        }
    }

    /// Refused by a decision: counted (opened and closed at once) with
    /// `flag`, and logged with `reason`.
    pub(crate) fn refuse(mut self, flag: &str, reason: &str) {
        self.flag(flag);
        self.open();
        self.close(0, 0, reason);
    }

    /// Failed after it was accepted (dialling the upstream): `CONNECT`.
    pub(crate) fn fail(mut self, reason: &str) {
        if self.series.is_some() {
            self.flag("CONNECT");
            self.open();
        }
        self.close(0, 0, reason);
    }

    /// The connection ended after moving these bytes (`received` from the
    /// source, `sent` to it); `reason` is empty on a clean end.
    pub(crate) fn close(self, received: u64, sent: u64, reason: &str) {
        if self.opened
            && let Some(s) = &self.series
        {
            self.metrics.series_closed(s, received, sent);
            if !reason.is_empty() {
                self.metrics.failed(s.labels());
            }
        }
        let l = self.series.as_ref().map(|s| s.labels());
        AccessLog {
            direction: self.direction,
            src: Some(self.src),
            src_workload: l.and_then(|l| known(&l.source_workload)),
            src_namespace: l.and_then(|l| known(&l.source_workload_namespace)),
            src_identity: self.src_identity.as_ref().map(Identity::as_str),
            dst: Some(self.via.unwrap_or(self.dst)),
            dst_hbone: self.via.map(|_| self.hbone_target.unwrap_or(self.dst)),
            dst_service: l.and_then(|l| known(&l.destination_service)),
            dst_workload: l.and_then(|l| known(&l.destination_workload)),
            dst_namespace: l.and_then(|l| known(&l.destination_workload_namespace)),
            dst_identity: l.and_then(|l| known(&l.destination_principal)),
            bytes_recv: received,
            bytes_sent: sent,
            duration: self.started.elapsed(),
            error: reason,
        }
        .emit();
    }
}

/// `v` unless it is Istio's `unknown` placeholder or empty.
fn known(v: &str) -> Option<&str> {
    (v != UNKNOWN && !v.is_empty()).then_some(v)
}
