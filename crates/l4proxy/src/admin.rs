//! ztunnel's admin surface: the responders for admin (15000) and metrics
//! (15020), and `/config_dump` in istio/ztunnel's JSON shape, so
//! `istioctl ztunnel-config workloads|services|policies|certificates|
//! connections` reads it: the mesh state ([`ambit_mesh::dump::state`]:
//! `workloads`, `services`, `policies`, `stagedServices`), `certificates`
//! (`identity`, `state`, `certChain` and `rootCerts` of `pem`,
//! `serialNumber`, `validFrom`, `expirationTime`), `workloadState` (per
//! local workload uid: `state`, `info`, `connections` with `inbound` and
//! `outbound` lists of `src`, `originalDst`, `actualDst`, `protocol`),
//! `config` (what the binary passes) and `version`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ambit_server::admin::{Responder, not_found, prometheus, reply};
use base64::Engine;
use http::StatusCode;
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::proxy::Proxy;

impl Proxy {
    /// The admin endpoint (15000): `/config_dump` (with `config` as its
    /// `config` section: the settings the binary runs with),
    /// `/quitquitquit`.
    pub fn admin_responder(&self, quit: Arc<Notify>, config: Value) -> Responder {
        let me = self.clone();
        let config = Arc::new(config);
        Arc::new(move |method, path, _| match (method.as_str(), path) {
            (_, "/config_dump") => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&me.config_dump(&config)).unwrap_or_default(),
            ),
            (_, "/workloadmanager") => reply(
                StatusCode::OK,
                "application/json",
                me.workload_state().to_string(),
            ),
            ("POST", "/quitquitquit") => {
                quit.notify_one();
                reply(StatusCode::OK, "text/plain", "shutdown now\n")
            }
            (_, "/") => reply(
                StatusCode::OK,
                "text/plain",
                "/config_dump\n/workloadmanager\n/quitquitquit (POST)\n/logging (POST)\n",
            ),
            _ => not_found(),
        })
    }

    /// The metrics endpoint (15020): `/metrics`, `/stats/prometheus`.
    pub fn metrics_responder(&self) -> Responder {
        let m = self.inner.metrics.clone();
        prometheus(move || m.encode())
    }

    /// The whole dump (see the module docs).
    pub fn config_dump(&self, config: &Value) -> Value {
        let mut dump = match self.inner.state.read() {
            Ok(st) => ambit_mesh::dump::state(&st),
            Err(_) => json!({"error": "state lock poisoned"}),
        };
        if let Value::Object(m) = &mut dump {
            m.insert("certificates".into(), self.certificates());
            m.insert("workloadState".into(), self.workload_state());
            m.insert("config".into(), config.clone());
            m.insert(
                "version".into(),
                json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "gitRevision": "unknown",
                    "rustVersion": "unknown",
                    "buildProfile": if cfg!(debug_assertions) { "debug" } else { "release" },
                    "buildStatus": "Clean",
                    "gitTag": env!("CARGO_PKG_VERSION"),
                    "istioVersion": "unknown",
                }),
            );
        }
        dump
    }

    /// `certificates`: every identity the proxy holds or is fetching,
    /// sorted.
    fn certificates(&self) -> Value {
        let certs = &self.inner.certs;
        let mut ids = certs.identities();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Value::Array(
            ids.into_iter()
                .map(|id| match certs.current(&id) {
                    Some(c) => json!({
                        "identity": id.as_str(),
                        "state": "Available",
                        "certChain": c.chain().iter().map(cert_entry).collect::<Vec<_>>(),
                        "rootCerts": c.roots().iter().map(cert_entry).collect::<Vec<_>>(),
                    }),
                    None => json!({
                        "identity": id.as_str(),
                        "state": "Initializing",
                        "certChain": [],
                        "rootCerts": [],
                    }),
                })
                .collect(),
        )
    }

    /// `workloadState`: in in-pod mode the pods served; in node mode the
    /// HBONE workloads of this node. Each with the inbound connections
    /// open to it (outbound connections are not tracked: empty).
    fn workload_state(&self) -> Value {
        let Ok(st) = self.inner.state.read() else {
            return json!({});
        };
        let mut out: BTreeMap<String, Value> = BTreeMap::new();
        let served: Vec<(String, Option<Arc<ambit_mesh::Workload>>)> = match &*self.inner.pods() {
            Some(pods) => pods
                .iter()
                .map(|(uid, (name, ns))| {
                    let w = st.workload(uid).or_else(|| {
                        st.workloads()
                            .find(|w| !name.is_empty() && w.name == *name && w.namespace == *ns)
                            .cloned()
                    });
                    (uid.clone(), w)
                })
                .collect(),
            None => st
                .workloads()
                .filter(|w| {
                    w.node == self.inner.cfg.node_name
                        && w.protocol == ambit_mesh::model::TunnelProtocol::Hbone
                })
                .map(|w| (w.uid.clone(), Some(w.clone())))
                .collect(),
        };
        let open = self.inner.registry.snapshot();
        for (uid, w) in served {
            let inbound: Vec<Value> = open
                .iter()
                .filter(|f| w.as_ref().is_some_and(|w| w.uid == f.workload))
                .map(|f| {
                    json!({
                        "src": f.src_ip.to_string(),
                        "originalDst": f.dst.to_string(),
                        "actualDst": f.dst.to_string(),
                        "protocol": if f.src_identity.is_some() { "HBONE" } else { "TCP" },
                    })
                })
                .collect();
            let info = w.as_ref().map_or_else(
                || json!({"name": "", "namespace": "", "trustDomain": "", "serviceAccount": ""}),
                |w| {
                    json!({
                        "name": w.name,
                        "namespace": w.namespace,
                        "trustDomain": if w.trust_domain.is_empty() { "cluster.local" } else { &w.trust_domain },
                        "serviceAccount": if w.service_account.is_empty() { "default" } else { &w.service_account },
                    })
                },
            );
            out.insert(
                uid,
                json!({
                    "state": "Up",
                    "info": info,
                    "connections": {"inbound": inbound, "outbound": []},
                }),
            );
        }
        json!(out)
    }
}

/// One certificate as istio/ztunnel dumps it: `pem` is the base64 of the
/// PEM text; times are RFC 3339 (seconds, UTC); the serial is decimal.
fn cert_entry(der: &CertificateDer<'_>) -> Value {
    let pem = pem_text(der);
    let pem = base64::engine::general_purpose::STANDARD.encode(pem);
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => {
            let v = c.validity();
            json!({
                "pem": pem,
                "serialNumber": c.tbs_certificate.serial.to_string(),
                "validFrom": rfc3339(v.not_before.timestamp()),
                "expirationTime": rfc3339(v.not_after.timestamp()),
            })
        }
        Err(e) => json!({
            "pem": pem,
            "serialNumber": format!("<unparsable certificate: {e}>"),
            "validFrom": "",
            "expirationTime": "",
        }),
    }
}

fn pem_text(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
