//! What is recorded when a request ends: the Istio request metrics and
//! one access-log event. For gRPC requests that is when the response body
//! ends (the `grpc-status` is in the trailers), or at once for a
//! trailers-only answer or the waypoint's own answer (whose gRPC status
//! follows Envoy's HTTP→gRPC mapping).

use std::sync::Arc;
use std::time::Instant;

use ambit_mesh::Workload;
use http::{Method, Response};
use http_body_util::BodyExt;

use crate::forward::workload_name;
use crate::grpc::{self, LocalReply, Observed};
use crate::metrics::{HttpLabels, SeriesKey};
use crate::proxy::{Body, Conn, Waypoint};

/// Everything the metrics and the access log need about one request.
pub(crate) struct Finish {
    pub(crate) waypoint: Waypoint,
    pub(crate) conn: Arc<Conn>,
    pub(crate) start: Instant,
    pub(crate) source: Option<Arc<Workload>>,
    pub(crate) destination: Option<Arc<Workload>>,
    /// The HTTP status answered.
    pub(crate) code: u16,
    pub(crate) flags: &'static str,
    /// Whether the request is gRPC.
    pub(crate) grpc: bool,
    /// Method, path and route name, when the access log is on.
    pub(crate) access: Option<(Method, String, Option<String>)>,
}

impl Finish {
    /// Records now, or (a gRPC response whose status is still to come)
    /// when the body ends; returns the response to send.
    pub(crate) fn attach(self, mut resp: Response<Body>) -> Response<Body> {
        if !self.grpc {
            self.record(None);
            return resp;
        }
        if let Some(LocalReply(text)) = resp.extensions().get::<LocalReply>().copied() {
            let status = grpc::annotate_local(resp.headers_mut(), self.code, text);
            self.record(Some(status));
            return resp;
        }
        if let Some(status) = grpc::status_in(resp.headers()) {
            self.record(Some(status));
            return resp;
        }
        resp.map(|body| Observed::new(body, move |status| self.record(status)).boxed_unsync())
    }

    /// Records the metrics and the access log with `grpc_status`.
    fn record(self, grpc_status: Option<u16>) {
        // A gRPC request answered with an HTTP error and no `grpc-status`:
        // what a gRPC client makes of it (the same mapping).
        let grpc_status = grpc_status.or_else(|| {
            (self.grpc && self.code != 200).then(|| grpc::http_to_grpc_status(self.code))
        });
        let elapsed = self.start.elapsed();
        let conn = &self.conn;
        let key = SeriesKey {
            source: self.source.as_deref(),
            destination: self.destination.as_deref(),
            response_code: self.code,
            response_flags: self.flags,
            protocol: if self.grpc { "grpc" } else { "http" },
            grpc_status,
        };
        self.waypoint.inner.metrics.record_cached(
            &conn.series,
            &key,
            || base_labels(conn),
            elapsed,
        );
        if let Some((method, path, route)) = &self.access {
            tracing::info!(
                target: "access",
                src = %conn.client,
                peer = %conn.peer,
                %method,
                %path,
                service = %conn.service.hostname,
                route = route.as_deref().unwrap_or("-"),
                endpoint = %self.destination.as_deref().map_or("", workload_name),
                status = self.code,
                grpc_status = %grpc_status.map(|s| s.to_string()).unwrap_or_default(),
                flags = %self.flags,
                duration_ms = elapsed.as_millis() as u64,
                "request"
            );
        }
    }
}

/// The metric labels that are fixed for `conn` (the rest are filled per
/// request).
fn base_labels(conn: &Conn) -> HttpLabels {
    HttpLabels {
        reporter: "waypoint".into(),
        source_workload: "unknown".into(),
        source_workload_namespace: conn.peer.namespace().to_owned(),
        source_principal: conn.peer.to_string(),
        destination_service: conn.service.hostname.clone(),
        destination_service_name: conn.service.name.clone(),
        destination_service_namespace: conn.service.namespace.clone(),
        request_protocol: "http".into(),
        grpc_response_status: String::new(),
        response_flags: "-".into(),
        connection_security_policy: "mutual_tls".into(),
        ..HttpLabels::default()
    }
}
