//! L4 authorization with Istio's semantics.
//!
//! For a connection to a workload, the policies that apply are the global
//! ones, the ones scoped to the workload's namespace, and the ones the
//! workload selects by name. Dry-run policies are evaluated for the log but
//! never enforced. Then: any matching DENY denies; otherwise, if any ALLOW
//! policy applies, one of them must match; with no ALLOW policy, allow.

use std::net::IpAddr;

use ambit_identity::Identity;

use crate::model::{Match, Policy, PolicyAction, PolicyScope, Rule, Workload};

/// The facts of a connection that policies can match on.
#[derive(Debug, Clone)]
pub struct Connection<'a> {
    /// The peer's verified identity (None for plaintext).
    pub src_identity: Option<&'a Identity>,
    /// The peer's address.
    pub src_ip: IpAddr,
    /// The destination address.
    pub dst_ip: IpAddr,
    /// The destination port.
    pub dst_port: u16,
}

/// The outcome of authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; names the ALLOW policy that matched, if one was needed.
    Allow(Option<String>),
    /// Denied; names the DENY policy that matched, or says no ALLOW matched.
    Deny(DenyReason),
}

/// Why a connection was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// A DENY policy matched (`namespace/name`).
    DenyPolicy(String),
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
}

impl Decision {
    /// Whether the connection may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }
}

/// Whether `policy` applies to `workload`. `root_namespace` holds policies
/// that act as global ones (Istio's `istio-system`).
pub fn applies(policy: &Policy, workload: &Workload) -> bool {
    match policy.scope {
        PolicyScope::Global => true,
        PolicyScope::Namespace => policy.namespace == workload.namespace,
        PolicyScope::WorkloadSelector => workload
            .authorization_policies
            .iter()
            .any(|k| *k == policy.key()),
    }
}

/// Evaluates the policies for a connection to `workload`.
pub fn authorize<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    workload: &Workload,
    conn: &Connection<'_>,
) -> Decision {
    let mut allow_applies = false;
    let mut allowed_by = None;
    for p in policies
        .into_iter()
        .filter(|p| applies(p, workload) && !p.dry_run)
    {
        match p.action {
            PolicyAction::Deny => {
                if policy_matches(p, conn) {
                    return Decision::Deny(DenyReason::DenyPolicy(p.key()));
                }
            }
            PolicyAction::Allow => {
                allow_applies = true;
                if allowed_by.is_none() && policy_matches(p, conn) {
                    allowed_by = Some(p.key());
                }
            }
        }
    }
    match (allow_applies, allowed_by) {
        (false, _) => Decision::Allow(None),
        (true, Some(p)) => Decision::Allow(Some(p)),
        (true, None) => Decision::Deny(DenyReason::NoAllowMatched),
    }
}

/// A policy matches when any of its rules does.
pub fn policy_matches(p: &Policy, conn: &Connection<'_>) -> bool {
    p.rules.iter().any(|r| rule_matches(r, conn))
}

fn rule_matches(r: &Rule, conn: &Connection<'_>) -> bool {
    r.clauses
        .iter()
        .all(|c| c.matches.iter().any(|m| match_matches(m, conn)))
}

/// The principal string Istio policies are written against: the SPIFFE id
/// without `spiffe://` (`cluster.local/ns/default/sa/sleep`).
fn principal(id: &Identity) -> &str {
    id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str())
}

fn match_matches(m: &Match, c: &Connection<'_>) -> bool {
    let id = c.src_identity;
    let ns = id.map(|i| i.namespace()).unwrap_or("");
    let pr = id.map(principal).unwrap_or("");
    let any = |v: &[crate::model::StringMatch], s: &str| v.iter().any(|x| x.matches(s));
    let sa_any = |v: &[crate::model::ServiceAccountMatch]| {
        id.is_some_and(|i| {
            v.iter()
                .any(|x| x.namespace == i.namespace() && x.service_account == i.service_account())
        })
    };
    // Positive fields: empty means "any"; a non-empty field needs a hit.
    (m.namespaces.is_empty() || (id.is_some() && any(&m.namespaces, ns)))
        && (m.principals.is_empty() || (id.is_some() && any(&m.principals, pr)))
        && (m.service_accounts.is_empty() || sa_any(&m.service_accounts))
        && (m.source_ips.is_empty() || m.source_ips.iter().any(|n| n.contains(&c.src_ip)))
        && (m.destination_ips.is_empty() || m.destination_ips.iter().any(|n| n.contains(&c.dst_ip)))
        && (m.destination_ports.is_empty() || m.destination_ports.contains(&c.dst_port))
        // Negative fields: no hit allowed.
        && !(id.is_some() && any(&m.not_namespaces, ns))
        && !(id.is_some() && any(&m.not_principals, pr))
        && !sa_any(&m.not_service_accounts)
        && !m.not_source_ips.iter().any(|n| n.contains(&c.src_ip))
        && !m.not_destination_ips.iter().any(|n| n.contains(&c.dst_ip))
        && !m.not_destination_ports.contains(&c.dst_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Clause, StringMatch};

    fn wl() -> Workload {
        Workload {
            uid: "w".into(),
            namespace: "default".into(),
            ..Workload::default()
        }
    }

    fn pol(action: PolicyAction, m: Match) -> Policy {
        Policy {
            name: format!("{action:?}").to_lowercase(),
            namespace: "default".into(),
            scope: PolicyScope::Namespace,
            action,
            rules: vec![Rule {
                clauses: vec![Clause { matches: vec![m] }],
            }],
            dry_run: false,
        }
    }

    fn conn<'a>(id: Option<&'a Identity>, port: u16) -> Connection<'a> {
        Connection {
            src_identity: id,
            src_ip: "10.0.0.1".parse().expect("ip"),
            dst_ip: "10.0.1.1".parse().expect("ip"),
            dst_port: port,
        }
    }

    #[test]
    fn table_of_cases() {
        let sleep = Identity::new("cluster.local", "default", "sleep").expect("id");
        let other = Identity::new("cluster.local", "other", "x").expect("id");
        let deny_9999 = pol(
            PolicyAction::Deny,
            Match {
                destination_ports: vec![9999],
                ..Match::default()
            },
        );
        let allow_sleep = pol(
            PolicyAction::Allow,
            Match {
                principals: vec![StringMatch::Exact(
                    "cluster.local/ns/default/sa/sleep".into(),
                )],
                ..Match::default()
            },
        );
        let allow_not_9999 = pol(
            PolicyAction::Allow,
            Match {
                not_destination_ports: vec![9999],
                ..Match::default()
            },
        );
        let allow_ns = pol(
            PolicyAction::Allow,
            Match {
                namespaces: vec![StringMatch::Prefix("def".into())],
                not_source_ips: vec!["10.0.0.0/30".parse().expect("net")],
                ..Match::default()
            },
        );
        let w = wl();
        let cases: Vec<(&str, Vec<&Policy>, Connection<'_>, bool)> = vec![
            ("no policy allows", vec![], conn(None, 80), true),
            (
                "deny matches port",
                vec![&deny_9999],
                conn(Some(&sleep), 9999),
                false,
            ),
            (
                "deny does not match",
                vec![&deny_9999],
                conn(Some(&sleep), 80),
                true,
            ),
            (
                "allow by principal",
                vec![&allow_sleep],
                conn(Some(&sleep), 80),
                true,
            ),
            (
                "allow needs principal",
                vec![&allow_sleep],
                conn(Some(&other), 80),
                false,
            ),
            (
                "plaintext has no principal",
                vec![&allow_sleep],
                conn(None, 80),
                false,
            ),
            (
                "deny beats allow",
                vec![&allow_sleep, &deny_9999],
                conn(Some(&sleep), 9999),
                false,
            ),
            (
                "not_ports allow",
                vec![&allow_not_9999],
                conn(None, 80),
                true,
            ),
            (
                "not_ports deny",
                vec![&allow_not_9999],
                conn(None, 9999),
                false,
            ),
            (
                "ns prefix but excluded source",
                vec![&allow_ns],
                conn(Some(&sleep), 80),
                false,
            ),
        ];
        for (name, ps, c, want) in cases {
            assert_eq!(authorize(ps, &w, &c).allowed(), want, "{name}");
        }
    }

    #[test]
    fn scope_and_dry_run() {
        let mut p = pol(PolicyAction::Deny, Match::default());
        let w = wl();
        let c = conn(None, 80);
        assert!(!authorize([&p], &w, &c).allowed());
        p.dry_run = true;
        assert!(authorize([&p], &w, &c).allowed());
        p.dry_run = false;
        p.namespace = "elsewhere".into();
        assert!(authorize([&p], &w, &c).allowed(), "namespace scope");
        p.scope = PolicyScope::Global;
        assert!(!authorize([&p], &w, &c).allowed(), "global scope");
        p.scope = PolicyScope::WorkloadSelector;
        assert!(authorize([&p], &w, &c).allowed(), "not selected");
        let mut w2 = wl();
        w2.authorization_policies.push(p.key());
        assert!(!authorize([&p], &w2, &c).allowed(), "selected");
    }

    #[test]
    fn empty_rule_matches_everything_and_reason_is_named() {
        let p = Policy {
            name: "deny-all".into(),
            namespace: "default".into(),
            action: PolicyAction::Deny,
            rules: vec![Rule::default()],
            ..Policy::default()
        };
        assert_eq!(
            authorize([&p], &wl(), &conn(None, 1)),
            Decision::Deny(DenyReason::DenyPolicy("default/deny-all".into()))
        );
        let no_rules = Policy { rules: vec![], ..p };
        assert!(
            authorize([&no_rules], &wl(), &conn(None, 1)).allowed(),
            "a policy without rules matches nothing"
        );
    }
}
