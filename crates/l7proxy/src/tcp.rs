//! Opaque TCP through the waypoint: L4 authorization (the service's
//! policies with only L4 facts, see [`authz`](crate::authz)), then one
//! endpoint, one HBONE stream and a bidirectional copy with half-close.

use std::time::Instant;

use ambit_hbone::{HboneStream, copy_bidirectional};
use ambit_mesh::Workload;
use tokio::io::AsyncWriteExt;

use crate::authz::{self, AuthzFacts};
use crate::config::{Backend, LoadBalancer};
use crate::idle::Tracked;
use crate::metrics::{Metrics, TcpLabels};
use crate::proxy::{Conn, Waypoint};
use crate::sniff::Rewind;

impl Waypoint {
    /// Authorizes and forwards one opaque TCP connection. A denied
    /// connection is closed without dialing anything.
    pub(crate) async fn forward_tcp(self, conn: Conn, mut io: Rewind<Tracked<HboneStream>>) {
        let routes = self.routes();
        let source = self.source(&conn);
        let metrics = &self.inner.metrics;
        let mut labels = tcp_labels(&conn, source.as_deref(), None);
        if let Some(cfg) = routes.service(&conn.service.hostname) {
            let ip = Some(conn.client.ip());
            let facts = AuthzFacts {
                peer: Some(&conn.peer),
                source_ip: ip,
                remote_ip: ip,
                port: conn.port,
                http: None,
            };
            let verdict = authz::authorize(&cfg.policies, &facts);
            if !verdict.allowed() {
                tracing::info!(
                    ?verdict,
                    service = %conn.service.hostname,
                    port = conn.port,
                    client = %conn.client,
                    "tcp: connection denied"
                );
                labels.response_flags = "DENY".into();
                metrics.tcp_opened(&labels);
                metrics.tcp_closed(&labels);
                let _ = io.shutdown().await;
                return;
            }
        }
        let Some(candidate) = self.pick(
            &conn,
            &routes,
            &Backend::default_for(),
            &[],
            LoadBalancer::RoundRobin,
        ) else {
            tracing::info!(service = %conn.service.hostname, "tcp: no healthy endpoint");
            labels.response_flags = "UH".into();
            metrics.tcp_opened(&labels);
            metrics.tcp_closed(&labels);
            return;
        };
        let (ep, key) = (&candidate.endpoint, &candidate.key);
        let labels = tcp_labels(&conn, source.as_deref(), Some(&ep.workload));
        let mut up = match self.connect(ep, conn.client).await {
            Ok(s) => s,
            Err(error) => {
                self.inner.balancer.report(key, true, Instant::now());
                tracing::info!(%error, service = %conn.service.hostname, "tcp: upstream connect failed");
                let labels = TcpLabels {
                    response_flags: "UF".into(),
                    ..labels
                };
                metrics.tcp_opened(&labels);
                metrics.tcp_closed(&labels);
                return;
            }
        };
        metrics.tcp_opened(&labels);
        // Counted closed however the copy ends, including when the idle
        // timeout drops this future mid-copy.
        let _closed = ClosedOnDrop(metrics, &labels);
        match copy_bidirectional(&mut io, &mut up).await {
            Ok(stats) => tracing::info!(
                service = %conn.service.hostname,
                endpoint = %key,
                sent = stats.a_to_b,
                received = stats.b_to_a,
                "tcp connection closed"
            ),
            Err(error) => tracing::debug!(%error, "tcp copy failed"),
        }
    }
}

/// Counts its connection closed when dropped.
struct ClosedOnDrop<'a>(&'a Metrics, &'a TcpLabels);

impl Drop for ClosedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.tcp_closed(self.1);
    }
}

/// The TCP metric labels of `conn`, to `destination` when known.
fn tcp_labels(conn: &Conn, source: Option<&Workload>, destination: Option<&Workload>) -> TcpLabels {
    let name = |w: Option<&Workload>| {
        w.map_or_else(
            || "unknown".to_owned(),
            |w| crate::forward::workload_name(w).to_owned(),
        )
    };
    TcpLabels {
        reporter: "waypoint".into(),
        source_workload: name(source),
        source_workload_namespace: conn.peer.namespace().to_owned(),
        source_principal: conn.peer.to_string(),
        destination_workload: name(destination),
        destination_workload_namespace: destination
            .map_or_else(|| "unknown".to_owned(), |w| w.namespace.clone()),
        destination_service: conn.service.hostname.clone(),
        destination_service_name: conn.service.name.clone(),
        destination_service_namespace: conn.service.namespace.clone(),
        request_protocol: "tcp".into(),
        response_flags: "-".into(),
        connection_security_policy: "mutual_tls".into(),
    }
}
