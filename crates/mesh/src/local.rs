//! ztunnel's local configuration file (`LOCAL_XDS_PATH`): YAML with
//! camelCase keys and unknown keys rejected, so existing ztunnel local
//! configs load unchanged.
//!
//! Every field istio/ztunnel's `LocalConfig` reads is accepted: workloads
//! (with `networkMode`, `nativeTunnel`, `applicationTunnel`, `capacity`,
//! `locality`, gateways as `network/ip`, `namespace/hostname` or
//! `{namespace, hostname}`, ...), services (with `endpoints`,
//! `loadBalancer`, `ipFamilies`, `canonical`, ...) and authorization
//! policies. Enum values take ztunnel's spelling (`HostNetwork`, `Strict`,
//! `IPv4`) or the protobuf one (`HOST_NETWORK`, `STRICT`, `IPV4_ONLY`).
//!
//! The state part of a `/config_dump` ([`crate::dump::state`]) loads too:
//! there a workload's `services` is a list of `namespace/hostname` and the
//! ports live in the services' `endpoints` (or in `stagedServices` for
//! services not known); parsing folds them back onto the workloads (see
//! [`Config::parse`]).
//!
//! ```yaml
//! workloads:
//! - uid: cluster1//v1/Pod/default/local
//!   name: local
//!   namespace: default
//!   serviceAccount: default
//!   workloadIps: ["127.0.0.1"]
//!   protocol: HBONE
//!   services: {"default/example.com": {80: 8080}}
//! policies:
//! - name: deny-9999
//!   namespace: default
//!   scope: Namespace
//!   action: Deny
//!   rules: [[[{destinationPorts: [9999]}]]]
//! services:
//! - name: example
//!   namespace: default
//!   hostname: example.com
//!   vips: ["/127.10.0.1"]
//!   ports: {80: 8080}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::{Policy, Service, Workload};

mod raw;

pub use self::raw::network_address;

/// Why a local config did not load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading local config {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse or has unknown keys (the message carries the
    /// line and column).
    #[error("local config {path}: {error}")]
    Parse {
        /// The path, or `<inline>`.
        path: String,
        /// The parser's error, with location (shown in the message, so not
        /// also chained as a source).
        error: serde_yaml_ng::Error,
    },
    /// A value is invalid.
    #[error("local config {path}: {item}: {reason}")]
    Invalid {
        /// The path.
        path: String,
        /// The offending item.
        item: String,
        /// Why.
        reason: String,
    },
}

/// A parsed local config, converted to the mesh model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Services.
    pub services: Vec<Service>,
    /// Policies.
    pub policies: Vec<Policy>,
}

impl Config {
    /// Reads and parses a local config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text (YAML, or the JSON of a dump); `origin` names it
    /// in errors.
    ///
    /// A service endpoint (in a service's `endpoints` or in a dump's
    /// `stagedServices`) for a workload of the same text that lists the
    /// service is folded onto the workload: its port map becomes the
    /// workload's ports for the service, and the entry is dropped when its
    /// status is the workload's. So a dump parses to the model it was made
    /// from, and each fact has one place in the model.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: raw::LocalConfig = if text.trim().is_empty() {
            raw::LocalConfig::default()
        } else {
            // Enums such as StringMatch are written as one-key maps
            // (`{Exact: foo}`), as ztunnel's files have them.
            serde_yaml_ng::with::singleton_map_recursive::deserialize(
                serde_yaml_ng::Deserializer::from_str(text),
            )
            .map_err(|error| ConfigError::Parse {
                path: origin.to_owned(),
                error,
            })?
        };
        let invalid = |item: String, reason: String| ConfigError::Invalid {
            path: origin.to_owned(),
            item,
            reason,
        };
        let mut out = Config::default();
        for w in raw.workloads {
            let item = if w.uid.is_empty() {
                "workload".to_owned()
            } else {
                format!("workload {}", w.uid)
            };
            out.workloads
                .push(w.into_model().map_err(|r| invalid(item, r))?);
        }
        for s in raw.services {
            let item = format!("service {}/{}", s.namespace, s.hostname);
            out.services
                .push(s.into_model().map_err(|r| invalid(item, r))?);
        }
        out.policies
            .extend(raw.policies.into_iter().map(raw::LocalPolicy::into_model));
        let mut by_uid: BTreeMap<String, usize> = BTreeMap::new();
        for (i, w) in out.workloads.iter().enumerate() {
            by_uid.insert(w.uid.clone(), i);
        }
        for svc in &mut out.services {
            let key = svc.key();
            svc.endpoints.retain(|uid, ep| {
                let Some(w) = by_uid.get(uid).and_then(|i| out.workloads.get_mut(*i)) else {
                    return true;
                };
                let Some(ports) = w.services.get_mut(&key) else {
                    return true;
                };
                ports.clone_from(&ep.ports);
                ep.status != w.status
            });
        }
        for (key, eps) in raw.staged_services {
            for (uid, ep) in eps {
                let item = format!("stagedServices {key}");
                let (uid, ep) = ep
                    .into_model(Some(uid))
                    .map_err(|r| invalid(item.clone(), r))?;
                let w = by_uid
                    .get(&uid)
                    .and_then(|i| out.workloads.get_mut(*i))
                    .ok_or_else(|| invalid(item.clone(), format!("{uid:?} is no workload")))?;
                if ep.status != w.status {
                    return Err(invalid(
                        item,
                        format!("{uid:?}: endpoint status differs from the workload's"),
                    ));
                }
                w.services.insert(key.clone(), ep.ports);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GatewayAddress, Port, StringMatch, TunnelProtocol};

    const SAMPLE: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  trustDomain: cluster.local
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: local
  network: ""
  services: {"default/example.com": {80: 8080}}
policies:
- name: deny-9999
  namespace: default
  scope: Namespace
  action: Allow
  rules: [[[{notDestinationPorts: [9999]}]]]
- name: sleep-only
  namespace: default
  action: Deny
  rules: [[[{principals: [{Exact: cluster.local/ns/default/sa/sleep}], sourceIps: ["10.0.0.0/8"]}]]]
services:
- name: local
  namespace: default
  hostname: example.com
  vips: ["/127.10.0.1"]
  ports: {80: 8080}
  subjectAltNames: [spiffe://cluster.local/ns/default/sa/local]
  waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008}
"#;

    #[test]
    fn ztunnel_sample_loads() {
        let c = Config::parse(SAMPLE, "sample").expect("parse");
        assert_eq!(c.workloads.len(), 1);
        let w = &c.workloads[0];
        assert_eq!(w.protocol, TunnelProtocol::Hbone);
        assert_eq!(
            w.services["default/example.com"],
            vec![Port {
                service_port: 80,
                target_port: 8080
            }]
        );
        assert_eq!(
            w.identity().expect("id").as_str(),
            "spiffe://cluster.local/ns/default/sa/default"
        );
        assert_eq!(
            c.services[0].vips,
            vec![(String::new(), "127.10.0.1".parse().expect("ip"))]
        );
        assert!(matches!(
            c.services[0].waypoint,
            Some(GatewayAddress::Address {
                hbone_port: 15008,
                ..
            })
        ));
        assert_eq!(
            c.policies[0].rules[0].clauses[0].matches[0].not_destination_ports,
            vec![9999]
        );
        assert_eq!(
            c.policies[1].rules[0].clauses[0].matches[0].principals,
            vec![StringMatch::Exact(
                "cluster.local/ns/default/sa/sleep".into()
            )]
        );
    }

    #[test]
    fn unknown_key_names_its_line() {
        let bad = "workloads:\n- uid: a\n  workloadIps: [\"10.0.0.1\"]\n  colour: blue\n";
        let e = Config::parse(bad, "ztunnel.yaml").expect_err("unknown key");
        let msg = e.to_string();
        assert!(msg.contains("colour") && msg.contains("line 4"), "{msg}");
        assert!(msg.starts_with("local config ztunnel.yaml"), "{msg}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse(
            "services:\n- {name: a, namespace: b, hostname: h, vips: [\"10.0.0.1\"]}\n",
            "x",
        )
        .expect_err("vip without network");
        assert!(e.to_string().contains("service b/h"), "{e}");
        let e = Config::parse("workloads:\n- uid: a\n", "x").expect_err("no address");
        assert!(e.to_string().contains("workload a"), "{e}");
        assert!(
            Config::parse(
                "workloads:\n- uid: a\n  workloadIps: [\"300.1.1.1\"]\n",
                "x"
            )
            .is_err()
        );
        assert_eq!(Config::parse("", "x").expect("empty"), Config::default());
    }

    #[test]
    fn unknown_keys_in_new_fields_name_their_line() {
        for (bad, line) in [
            (
                "workloads:\n- uid: a\n  workloadIps: [10.0.0.1]\n  applicationTunnel:\n    protocol: PROXY\n    colour: blue\n",
                "line 6",
            ),
            (
                "services:\n- name: s\n  namespace: n\n  hostname: h\n  loadBalancer:\n    mode: Strict\n    colour: blue\n",
                "line 7",
            ),
            (
                "services:\n- name: s\n  namespace: n\n  hostname: h\n  endpoints:\n    u:\n      port: {80: 80}\n      colour: blue\n",
                "line 8",
            ),
        ] {
            let msg = Config::parse(bad, "x").expect_err(bad).to_string();
            assert!(msg.contains("colour") && msg.contains(line), "{msg}");
        }
        let msg = Config::parse(
            "workloads:\n- uid: a\n  workloadIps: [10.0.0.1]\n  networkMode: Bridge\n",
            "x",
        )
        .expect_err("unknown network mode")
        .to_string();
        assert!(msg.contains("Bridge") && msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn inconsistent_endpoints_are_named() {
        let e = Config::parse(
            "services:\n- {name: s, namespace: n, hostname: h, endpoints: {u: {workloadUid: v}}}\n",
            "x",
        )
        .expect_err("key and uid differ");
        assert!(e.to_string().contains("service n/h"), "{e}");
        let e = Config::parse("stagedServices: {n/h: {u: {port: {80: 80}}}}\n", "x")
            .expect_err("no such workload");
        assert!(e.to_string().contains("stagedServices n/h"), "{e}");
        let e = Config::parse(
            "workloads:\n- {uid: a, workloadIps: [10.0.0.1], waypoint: {destination: nowhere}}\n",
            "x",
        )
        .expect_err("bad gateway");
        assert!(e.to_string().contains("workload a"), "{e}");
    }
}
