//! Request mirroring (Istio `mirror`, Gateway API `RequestMirror`): a copy
//! of the request, its authority's host suffixed `-shadow`, sent to each
//! mirror destination in its own task. The answer is read and dropped; a
//! mirror never delays or fails the request. Bodies are copied up to
//! `WaypointConfig::max_mirror_body`; a larger body, or one of unknown
//! length, is not mirrored.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, request::Parts};
use http_body_util::{BodyExt, Full};

use crate::config::{Backend, LoadBalancer, Route};
use crate::head;
use crate::proxy::{Conn, Waypoint};
use crate::route;
use crate::upstream::Upstream;

/// How long a mirror may take when the route sets no timeout.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

impl Waypoint {
    /// Starts the mirrors of `route` that fire for this request. `head` is
    /// the upstream head (after the route's edits), `body` the buffered body
    /// or `None` when it could not be copied.
    pub(crate) fn mirror(
        &self,
        conn: &Arc<Conn>,
        route: &Route,
        head: &Parts,
        body: Option<&Bytes>,
        version: Upstream,
        policy: LoadBalancer,
    ) {
        let metrics = &self.inner.metrics;
        for m in &route.mirrors {
            if !route::fires(m.percentage, fastrand::f64() * 100.0) {
                continue;
            }
            let Some(body) = body else {
                metrics.mirror("skipped_body");
                continue;
            };
            let mut head = head.clone();
            head::shadow(&mut head);
            let backend = Backend {
                host: m.host.clone(),
                port: m.port,
                subset: m.subset.clone(),
                weight: 1,
            };
            let req = Request::from_parts(
                head,
                Full::new(body.clone())
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            );
            let this = self.clone();
            let conn = Arc::clone(conn);
            let limit = route.timeout.unwrap_or(MIRROR_TIMEOUT);
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(
                    limit,
                    this.mirror_one(&conn, &backend, req, version, policy),
                )
                .await
                .unwrap_or("failed");
                this.inner.metrics.mirror(outcome);
            });
        }
    }

    /// Sends one mirror request; its outcome label.
    async fn mirror_one(
        &self,
        conn: &Conn,
        backend: &Backend,
        req: Request<crate::Body>,
        version: Upstream,
        policy: LoadBalancer,
    ) -> &'static str {
        let routes = self.routes();
        let Some(c) = self.pick(conn, &routes, backend, &[], policy) else {
            tracing::debug!(?backend, "mirror: no healthy endpoint");
            return "no_endpoint";
        };
        match self
            .send(&c.endpoint, &c.key, c.pool, conn.client, req, version)
            .await
        {
            Ok(resp) => {
                // Read to the end so an HTTP/1.1 connection can be reused.
                let _ = resp.into_body().collect().await;
                "sent"
            }
            Err(outcome) => {
                tracing::debug!(?outcome, endpoint = %c.key, "mirror request failed");
                "failed"
            }
        }
    }
}
