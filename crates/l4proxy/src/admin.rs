//! ztunnel's admin surface: the responders for admin (15000) and metrics
//! (15020), and `/config_dump`. The HTTP server itself is
//! [`ambit_server::admin`].

use std::collections::HashMap;
use std::sync::Arc;

use ambit_server::admin::{Responder, not_found, prometheus, reply};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::proxy::Proxy;

impl Proxy {
    /// The admin endpoint (15000): `/config_dump`, `/quitquitquit`.
    pub fn admin_responder(&self, quit: Arc<Notify>) -> Responder {
        let me = self.clone();
        Arc::new(move |method, path, _| match (method.as_str(), path) {
            (_, "/config_dump") => reply(
                StatusCode::OK,
                "application/json",
                me.config_dump().to_string(),
            ),
            ("POST", "/quitquitquit") => {
                quit.notify_one();
                reply(StatusCode::OK, "text/plain", "OK\n")
            }
            (_, "/") => reply(
                StatusCode::OK,
                "text/plain",
                "/config_dump\n/quitquitquit (POST)\n/logging (POST)\n",
            ),
            _ => not_found(),
        })
    }

    /// The metrics endpoint (15020): `/metrics`, `/stats/prometheus`.
    pub fn metrics_responder(&self) -> Responder {
        let m = self.inner.metrics.clone();
        prometheus(move || m.encode())
    }

    /// Workloads, services, policies and certificates as JSON.
    pub fn config_dump(&self) -> Value {
        let Ok(st) = self.inner.state.read() else {
            return json!({"error": "state lock poisoned"});
        };
        let mut workloads: Vec<Value> = st
            .workloads()
            .map(|w| {
                json!({
                    "uid": w.uid, "name": w.name, "namespace": w.namespace,
                    "workloadIps": w.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "protocol": format!("{:?}", w.protocol), "node": w.node, "network": w.network,
                    "identity": w.identity().map(|i| i.as_str().to_owned()),
                    "services": w.services.iter().map(|(k, ps)| (k.clone(), ps.iter().map(|p| (p.service_port.to_string(), p.target())).collect::<HashMap<_, _>>())).collect::<HashMap<_, _>>(),
                    "status": format!("{:?}", w.status),
                    "waypoint": w.waypoint.as_ref().map(|g| format!("{g:?}")),
                })
            })
            .collect();
        workloads.sort_by(|a, b| a["uid"].as_str().cmp(&b["uid"].as_str()));
        let mut services: Vec<Value> = st
            .services()
            .map(|s| {
                json!({
                    "name": s.name, "namespace": s.namespace, "hostname": s.hostname,
                    "vips": s.vips.iter().map(|(n, ip)| format!("{n}/{ip}")).collect::<Vec<_>>(),
                    "ports": s.ports.iter().map(|p| (p.service_port.to_string(), p.target())).collect::<HashMap<_, _>>(),
                    "endpoints": s.ports.first().map(|p| st.endpoints(s, p.service_port).len()).unwrap_or(0),
                    "waypoint": s.waypoint.as_ref().map(|g| format!("{g:?}")),
                })
            })
            .collect();
        services.sort_by(|a, b| a["hostname"].as_str().cmp(&b["hostname"].as_str()));
        let mut policies: Vec<Value> = st
            .policies()
            .map(|p| {
                json!({
                    "name": p.name, "namespace": p.namespace, "scope": format!("{:?}", p.scope),
                    "action": format!("{:?}", p.action), "rules": p.rules.len(), "dryRun": p.dry_run,
                })
            })
            .collect();
        policies.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let certs: Vec<Value> = self
            .inner
            .certs
            .identities()
            .into_iter()
            .filter_map(|id| {
                let c = self.inner.certs.current(&id)?;
                Some(json!({
                    "identity": id.as_str(),
                    "notBefore": format!("{:?}", c.not_before()),
                    "notAfter": format!("{:?}", c.not_after()),
                    "chainLength": c.chain().len(),
                }))
            })
            .collect();
        json!({"workloads": workloads, "services": services, "policies": policies, "certificates": certs})
    }
}
