//! ztunnel's local configuration file (`LOCAL_XDS_PATH`): YAML with
//! camelCase keys and unknown keys rejected, so existing ztunnel local
//! configs load unchanged.
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
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use crate::model::{
    Clause, GatewayAddress, HealthStatus, Locality, Match, Policy, PolicyAction, PolicyScope, Port,
    Rule, Service, ServiceAccountMatch, StringMatch, TunnelProtocol, Workload,
};

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

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalConfig {
    #[serde(default)]
    workloads: Vec<LocalWorkload>,
    #[serde(default)]
    policies: Vec<LocalPolicy>,
    #[serde(default)]
    services: Vec<LocalService>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalWorkload {
    uid: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    trust_domain: String,
    #[serde(default)]
    workload_ips: Vec<IpAddr>,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    protocol: Option<LocalProtocol>,
    #[serde(default)]
    node: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    services: BTreeMap<String, BTreeMap<u16, u16>>,
    #[serde(default)]
    waypoint: Option<LocalGateway>,
    #[serde(default)]
    network_gateway: Option<LocalGateway>,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: String,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    application_tunnel: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    authorization_policies: Vec<String>,
    #[serde(default)]
    status: Option<LocalStatus>,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    locality: Option<LocalLocality>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum LocalProtocol {
    Hbone,
    Tcp,
    #[serde(rename = "LegacyIstioMtls", alias = "LEGACY_ISTIO_MTLS")]
    LegacyIstioMtls,
}

#[derive(Debug, Deserialize)]
enum LocalStatus {
    Healthy,
    Unhealthy,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalLocality {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    subzone: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalGateway {
    destination: LocalDestination,
    #[serde(default = "default_hbone_port")]
    hbone_mtls_port: u16,
}

fn default_hbone_port() -> u16 {
    15008
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LocalDestination {
    /// `network/ip`.
    Address(String),
    Hostname {
        namespace: String,
        hostname: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalService {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(default)]
    vips: Vec<String>,
    #[serde(default)]
    ports: BTreeMap<u16, u16>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    #[serde(default)]
    waypoint: Option<LocalGateway>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalPolicy {
    name: String,
    namespace: String,
    #[serde(default)]
    scope: LocalScope,
    #[serde(default)]
    action: LocalAction,
    /// rules → clauses → matches.
    #[serde(default)]
    rules: Vec<Vec<Vec<LocalMatch>>>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Default, Deserialize)]
enum LocalScope {
    Global,
    #[default]
    Namespace,
    WorkloadSelector,
}

#[derive(Debug, Default, Deserialize)]
enum LocalAction {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
enum LocalStringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence(#[serde(default)] serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalSaMatch {
    namespace: String,
    service_account: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalMatch {
    #[serde(default)]
    namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    not_namespaces: Vec<LocalStringMatch>,
    #[serde(default)]
    principals: Vec<LocalStringMatch>,
    #[serde(default)]
    not_principals: Vec<LocalStringMatch>,
    #[serde(default)]
    source_ips: Vec<IpNet>,
    #[serde(default)]
    not_source_ips: Vec<IpNet>,
    #[serde(default)]
    destination_ips: Vec<IpNet>,
    #[serde(default)]
    not_destination_ips: Vec<IpNet>,
    #[serde(default)]
    destination_ports: Vec<u16>,
    #[serde(default)]
    not_destination_ports: Vec<u16>,
    #[serde(default)]
    service_accounts: Vec<LocalSaMatch>,
    #[serde(default)]
    not_service_accounts: Vec<LocalSaMatch>,
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

    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: LocalConfig = if text.trim().is_empty() {
            LocalConfig::default()
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
            let item = format!("workload {}", w.uid);
            if w.uid.is_empty() {
                return Err(invalid("workload".into(), "uid must not be empty".into()));
            }
            let wl = Workload {
                uid: w.uid,
                name: w.name,
                namespace: w.namespace,
                addresses: w.workload_ips,
                hostname: w.hostname,
                network: w.network,
                protocol: match w.protocol {
                    Some(LocalProtocol::Hbone) => TunnelProtocol::Hbone,
                    Some(LocalProtocol::LegacyIstioMtls) => TunnelProtocol::LegacyIstioMtls,
                    Some(LocalProtocol::Tcp) | None => TunnelProtocol::None,
                },
                trust_domain: w.trust_domain,
                service_account: w.service_account,
                waypoint: w
                    .waypoint
                    .map(gateway)
                    .transpose()
                    .map_err(|r| invalid(item.clone(), r))?,
                network_gateway: w
                    .network_gateway
                    .map(gateway)
                    .transpose()
                    .map_err(|r| invalid(item.clone(), r))?,
                node: w.node,
                canonical_name: w.canonical_name,
                canonical_revision: w.canonical_revision,
                workload_type: w.workload_type,
                workload_name: w.workload_name,
                services: w
                    .services
                    .into_iter()
                    .map(|(k, ports)| {
                        (
                            k,
                            ports
                                .into_iter()
                                .map(|(s, t)| Port {
                                    service_port: s,
                                    target_port: t,
                                })
                                .collect(),
                        )
                    })
                    .collect(),
                authorization_policies: w.authorization_policies,
                status: match w.status {
                    Some(LocalStatus::Unhealthy) => HealthStatus::Unhealthy,
                    _ => HealthStatus::Healthy,
                },
                cluster_id: w.cluster_id,
                locality: w.locality.map(|l| Locality {
                    region: l.region,
                    zone: l.zone,
                    subzone: l.subzone,
                }),
            };
            let _ = w.application_tunnel;
            if wl.addresses.is_empty() && wl.hostname.is_empty() {
                return Err(invalid(item, "needs workloadIps or hostname".into()));
            }
            out.workloads.push(wl);
        }
        for s in raw.services {
            let item = format!("service {}/{}", s.namespace, s.hostname);
            let vips = s
                .vips
                .iter()
                .map(|v| network_address(v).map_err(|r| invalid(item.clone(), r)))
                .collect::<Result<Vec<_>, _>>()?;
            out.services.push(Service {
                name: s.name,
                namespace: s.namespace,
                hostname: s.hostname,
                vips,
                ports: s
                    .ports
                    .into_iter()
                    .map(|(a, b)| Port {
                        service_port: a,
                        target_port: b,
                    })
                    .collect(),
                subject_alt_names: s.subject_alt_names,
                waypoint: s
                    .waypoint
                    .map(gateway)
                    .transpose()
                    .map_err(|r| invalid(item.clone(), r))?,
            });
        }
        for p in raw.policies {
            out.policies.push(Policy {
                name: p.name,
                namespace: p.namespace,
                scope: match p.scope {
                    LocalScope::Global => PolicyScope::Global,
                    LocalScope::Namespace => PolicyScope::Namespace,
                    LocalScope::WorkloadSelector => PolicyScope::WorkloadSelector,
                },
                action: match p.action {
                    LocalAction::Allow => PolicyAction::Allow,
                    LocalAction::Deny => PolicyAction::Deny,
                },
                rules: p
                    .rules
                    .into_iter()
                    .map(|clauses| Rule {
                        clauses: clauses
                            .into_iter()
                            .map(|ms| Clause {
                                matches: ms.into_iter().map(convert_match).collect(),
                            })
                            .collect(),
                    })
                    .collect(),
                dry_run: p.dry_run,
            });
        }
        Ok(out)
    }
}

fn sm(v: Vec<LocalStringMatch>) -> Vec<StringMatch> {
    v.into_iter()
        .map(|m| match m {
            LocalStringMatch::Exact(s) => StringMatch::Exact(s),
            LocalStringMatch::Prefix(s) => StringMatch::Prefix(s),
            LocalStringMatch::Suffix(s) => StringMatch::Suffix(s),
            LocalStringMatch::Presence(_) => StringMatch::Presence,
        })
        .collect()
}

fn sa(v: Vec<LocalSaMatch>) -> Vec<ServiceAccountMatch> {
    v.into_iter()
        .map(|m| ServiceAccountMatch {
            namespace: m.namespace,
            service_account: m.service_account,
        })
        .collect()
}

fn convert_match(m: LocalMatch) -> Match {
    Match {
        namespaces: sm(m.namespaces),
        not_namespaces: sm(m.not_namespaces),
        principals: sm(m.principals),
        not_principals: sm(m.not_principals),
        source_ips: m.source_ips,
        not_source_ips: m.not_source_ips,
        destination_ips: m.destination_ips,
        not_destination_ips: m.not_destination_ips,
        destination_ports: m.destination_ports,
        not_destination_ports: m.not_destination_ports,
        service_accounts: sa(m.service_accounts),
        not_service_accounts: sa(m.not_service_accounts),
    }
}

/// Parses `network/ip` (the network may be empty: `/10.0.0.1`).
pub fn network_address(s: &str) -> Result<(String, IpAddr), String> {
    let (net, ip) = s
        .rsplit_once('/')
        .ok_or_else(|| format!("{s:?} is not network/ip"))?;
    let ip = ip
        .parse()
        .map_err(|_| format!("{s:?}: {ip:?} is not an IP address"))?;
    Ok((net.to_owned(), ip))
}

fn gateway(g: LocalGateway) -> Result<GatewayAddress, String> {
    Ok(match g.destination {
        LocalDestination::Address(a) => {
            let (network, ip) = network_address(&a)?;
            GatewayAddress::Address {
                network,
                ip,
                hbone_port: g.hbone_mtls_port,
            }
        }
        LocalDestination::Hostname {
            namespace,
            hostname,
        } => GatewayAddress::Hostname {
            namespace,
            hostname,
            hbone_port: g.hbone_mtls_port,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
