use serde_json::json;

use super::*;
use crate::objects::Object;
use crate::services::WaypointPort;
use crate::translate::translate;

fn svc(name: &str) -> WaypointService {
    WaypointService {
        hostname: format!("{name}.ns.svc.cluster.local"),
        namespace: "ns".into(),
        name: name.into(),
        kind: ServiceKind::Service,
        ports: vec![WaypointPort {
            port: 9080,
            name: None,
            app_protocol: None,
        }],
    }
}

fn policy(name: &str, spec: Value) -> AuthorizationPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"}, "spec": spec}))
        .expect("policy")
}

fn snap(policies: Vec<AuthorizationPolicy>) -> Snapshot {
    Snapshot {
        policies,
        ..Default::default()
    }
}

fn id() -> WaypointIdentity {
    WaypointIdentity::new("ns", "wp")
}

const GW: &str = "gateway.networking.k8s.io";

#[test]
fn gateway_target_applies_to_every_service_and_service_target_to_one() {
    let s = snap(vec![
        policy(
            "all",
            json!({"targetRefs": [{"group": GW, "kind": "Gateway", "name": "wp"}], "action": "DENY",
                             "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
        ),
        policy(
            "one",
            json!({"targetRef": {"group": "", "kind": "Service", "name": "b"}, "action": "DENY",
                             "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/x/sa/evil"]}}]}]}),
        ),
        policy(
            "other-gw",
            json!({"targetRefs": [{"group": GW, "kind": "Gateway", "name": "not-me"}], "rules": [{}]}),
        ),
        policy(
            "workload",
            json!({"selector": {"matchLabels": {"app": "a"}}, "action": "DENY", "rules": [{}]}),
        ),
    ]);
    let t = translate(&s, &id(), &[svc("a"), svc("b")]);
    assert!(t.error.is_none(), "{:?}\n{}", t.error, t.yaml);
    let names = |host: &str| -> Vec<String> {
        t.config
            .service(host)
            .map(|s| s.policies.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(names("a.ns.svc.cluster.local"), ["ns/all"]);
    assert_eq!(names("b.ns.svc.cluster.local"), ["ns/all", "ns/one"]);
    assert_eq!(t.policies.len(), 2, "{:?}", t.policies);
    assert!(
        t.policies.iter().all(|r| r.problems.is_empty()),
        "{:?}",
        t.policies
    );
}

fn policies(t: &crate::Translation) -> &[ambit_l7proxy::config::L7Policy] {
    t.config
        .service("a.ns.svc.cluster.local")
        .map(|s| s.policies.as_slice())
        .unwrap_or_default()
}

#[test]
fn path_principal_and_port_denies() {
    let target = json!([{"group": GW, "kind": "Gateway", "name": "wp"}]);
    let s = snap(vec![
        policy(
            "paths",
            json!({"targetRefs": target, "action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"], "paths": ["/admin*"]}}]}]}),
        ),
        policy(
            "who",
            json!({"targetRefs": target, "action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/x/sa/evil"]}}]}]}),
        ),
        policy(
            "port",
            json!({"targetRefs": target, "action": "DENY", "rules": [{"to": [{"operation": {"ports": ["9999"]}}]}]}),
        ),
    ]);
    let t = translate(&s, &id(), &[svc("a")]);
    assert!(t.error.is_none(), "{:?}", t.error);
    use ambit_l7proxy::config::Action;
    let p = policies(&t);
    assert_eq!(p.len(), 3);
    assert!(p.iter().all(|p| p.action == Action::Deny));
    let by = |n: &str| p.iter().find(|p| p.name == n).expect(n);
    let op = &by("ns/paths").rules[0].to[0].operation;
    assert_eq!(
        (op.methods.as_slice(), op.paths.as_slice()),
        (&["DELETE".to_owned()][..], &["/admin*".to_owned()][..])
    );
    assert_eq!(
        by("ns/who").rules[0].from[0].source.principals,
        ["cluster.local/ns/x/sa/evil"]
    );
    assert_eq!(by("ns/port").rules[0].to[0].operation.ports, [9999]);
}

#[test]
fn unsupported_fields_fail_closed() {
    let target = json!([{"group": GW, "kind": "Gateway", "name": "wp"}]);
    let s = snap(vec![
        // ALLOW with a JWT field: the rule is dropped, so nothing is allowed.
        policy(
            "jwt-allow",
            json!({"targetRefs": target, "action": "ALLOW",
            "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}),
        ),
        // DENY with an unknown `when` key: the key is ignored, so it denies
        // everything on /private.
        policy(
            "claim-deny",
            json!({"targetRefs": target, "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/private"]}}], "when": [{"key": "request.auth.claims[grp]", "values": ["x"]}]}]}),
        ),
        policy(
            "audit",
            json!({"targetRefs": target, "action": "AUDIT", "rules": [{}]}),
        ),
    ]);
    let t = translate(&s, &id(), &[svc("a")]);
    assert!(t.error.is_none(), "{:?}", t.error);
    let report = |n: &str| t.policies.iter().find(|r| r.name == n).expect(n).clone();
    assert!(
        report("jwt-allow")
            .problems
            .iter()
            .any(|p| p.contains("dropped"))
    );
    assert!(
        report("claim-deny")
            .problems
            .iter()
            .any(|p| p.contains("matches more"))
    );
    assert!(report("audit").applied_to.is_empty());
    let allow = policies(&t)
        .iter()
        .find(|p| p.name == "ns/jwt-allow")
        .expect("allow");
    assert!(
        allow.rules.is_empty(),
        "an ALLOW with no rules allows nothing"
    );
    let deny = policies(&t)
        .iter()
        .find(|p| p.name == "ns/claim-deny")
        .expect("deny");
    assert!(deny.rules[0].when.is_empty());
    assert_eq!(deny.rules[0].to[0].operation.paths, ["/private"]);
}

#[test]
fn malformed_spec_denies_its_targets() {
    let bad: AuthorizationPolicy = Object::new(
        serde_json::from_value(json!({"name": "bad", "namespace": "ns"})).expect("meta"),
        json!({"targetRefs": [{"group": GW, "kind": "Gateway", "name": "wp"}], "rules": "oops"}),
    );
    let t = translate(&snap(vec![bad]), &id(), &[svc("a")]);
    assert!(t.error.is_none(), "{:?}", t.error);
    let p = &policies(&t)[0];
    assert_eq!(p.action, ambit_l7proxy::config::Action::Deny);
    assert_eq!(p.rules.len(), 1, "one empty rule: matches every request");
    assert!(p.rules[0].from.is_empty() && p.rules[0].to.is_empty() && p.rules[0].when.is_empty());
    assert!(t.policies[0].problems[0].contains("does not parse"));
}

#[test]
fn address_blocks_and_not_ports_reach_the_engine() {
    use ambit_l7proxy::authz::{AuthzFacts, HttpFacts, authorize};
    let target = json!([{"group": GW, "kind": "Gateway", "name": "wp"}]);
    let s = snap(vec![
        policy(
            "blocks",
            json!({"targetRefs": target, "action": "DENY", "rules": [
            {"from": [{"source": {"ipBlocks": ["10.1.0.0/16"], "notRemoteIpBlocks": ["192.168.0.0/16"]}}]}]}),
        ),
        policy(
            "ports",
            json!({"targetRefs": target, "action": "DENY", "rules": [
            {"to": [{"operation": {"notPorts": ["9080"]}}], "when": [{"key": "source.ip", "values": ["10.9.0.0/16"]}]}]}),
        ),
    ]);
    let t = translate(&s, &id(), &[svc("a")]);
    assert!(t.error.is_none(), "{:?}\n{}", t.error, t.yaml);
    assert!(
        t.policies.iter().all(|r| r.problems.is_empty()),
        "{:?}",
        t.policies
    );
    let headers = http::HeaderMap::new();
    let allowed = |source: [u8; 4], remote: [u8; 4], port: u16| {
        let facts = AuthzFacts {
            peer: None,
            source_ip: Some(source.into()),
            remote_ip: Some(remote.into()),
            port,
            http: Some(HttpFacts {
                method: "GET",
                path: "/",
                host: "a",
                headers: &headers,
            }),
        };
        authorize(policies(&t), &facts).allowed()
    };
    assert!(allowed([10, 2, 0, 1], [10, 2, 0, 1], 9080));
    assert!(
        !allowed([10, 1, 0, 1], [10, 1, 0, 1], 9080),
        "ipBlocks deny"
    );
    assert!(
        allowed([10, 1, 0, 1], [192, 168, 1, 1], 9080),
        "notRemoteIpBlocks exempts"
    );
    assert!(
        !allowed([10, 9, 0, 1], [10, 9, 0, 1], 9090),
        "notPorts + source.ip deny"
    );
    assert!(allowed([10, 9, 0, 1], [10, 9, 0, 1], 9080));
}
