//! The default mesh the testbed serves: workloads, services and the
//! waypoint's routes, with the addresses they sit at in the harness plan.

use std::net::IpAddr;

use anyhow::Context;

/// The default mesh: `sleep` on node a; `productpage` v1 on node b and v2
/// on node a behind one VIP (L4 only); `reviews` v1 on node b and v2 on
/// node a behind another VIP, with a waypoint (node b) in front. Pod
/// addresses follow the harness plan (pod j of node i is 10.244.i.(j+2)):
/// node a: ztunnel .0.2, sleep .0.3, productpage-v2 .0.4, a client
/// outside the mesh .0.5, reviews-v2 .0.6;
/// node b: ztunnel .1.2, productpage-v1 .1.3, reviews-v1 .1.4, a server
/// outside the mesh .1.5, the waypoint .1.6 (not captured, as Istio's
/// waypoints are not).
pub const DEFAULT_MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/sleep
  name: sleep
  namespace: default
  serviceAccount: sleep
  workloadIps: ["10.244.0.3"]
  protocol: HBONE
  node: node-a
  canonicalName: sleep
- uid: cluster1//v1/Pod/default/productpage-v2
  name: productpage-v2
  namespace: default
  serviceAccount: productpage
  workloadIps: ["10.244.0.4"]
  protocol: HBONE
  node: node-a
  canonicalName: productpage
  canonicalRevision: v2
  services: {"default/productpage.default.svc.cluster.local": {9080: 9080}}
- uid: cluster1//v1/Pod/default/productpage-v1
  name: productpage-v1
  namespace: default
  serviceAccount: productpage
  workloadIps: ["10.244.1.3"]
  protocol: HBONE
  node: node-b
  canonicalName: productpage
  canonicalRevision: v1
  services: {"default/productpage.default.svc.cluster.local": {9080: 9080}}
- uid: cluster1//v1/Pod/default/reviews-v1
  name: reviews-v1
  namespace: default
  serviceAccount: reviews
  workloadIps: ["10.244.1.4"]
  protocol: HBONE
  node: node-b
  canonicalName: reviews
  canonicalRevision: v1
  services: {"default/reviews.default.svc.cluster.local": {9080: 9080}}
- uid: cluster1//v1/Pod/default/reviews-v2
  name: reviews-v2
  namespace: default
  serviceAccount: reviews
  workloadIps: ["10.244.0.6"]
  protocol: HBONE
  node: node-a
  canonicalName: reviews
  canonicalRevision: v2
  services: {"default/reviews.default.svc.cluster.local": {9080: 9080}}
- uid: cluster1//v1/Pod/default/waypoint
  name: waypoint
  namespace: default
  serviceAccount: waypoint
  workloadIps: ["10.244.1.6"]
  protocol: HBONE
  node: node-b
  canonicalName: waypoint
services:
- name: productpage
  namespace: default
  hostname: productpage.default.svc.cluster.local
  vips: ["/10.96.0.20"]
  ports: {9080: 9080}
- name: reviews
  namespace: default
  hostname: reviews.default.svc.cluster.local
  vips: ["/10.96.0.30"]
  ports: {9080: 9080}
  waypoint: {destination: "/10.244.1.6", hboneMtlsPort: 15008}
"#;

/// The waypoint's routing and L7 policy for `reviews` (ambit-l7proxy's
/// YAML): `x-version: v2` → v2; `/v1…` → v1, `/v2…` → v2; `/split…` 90/10
/// between v1 and v2; `/flaky…` retried on 5xx; `/hang…` times out after
/// 500 ms; anything else round robin; `DELETE /admin…` denied.
pub const DEFAULT_ROUTES: &str = r#"
outlierDetection: {consecutiveErrors: 0}
services:
- host: reviews.default.svc.cluster.local
  ports: {9080: http}
  routes:
  - name: header-v2
    match: [{headers: {x-version: {exact: v2}}}]
    backends: [{subset: {version: v2}}]
  - name: v1
    match: [{path: {prefix: /v1}}]
    backends: [{subset: {version: v1}}]
  - name: v2
    match: [{path: {prefix: /v2}}]
    backends: [{subset: {version: v2}}]
  - name: split
    match: [{path: {prefix: /split}}]
    backends:
    - {subset: {version: v1}, weight: 90}
    - {subset: {version: v2}, weight: 10}
  - name: flaky
    match: [{path: {prefix: /flaky}}]
    retries: {attempts: 2, retryOn: [5xx]}
  - name: hang
    match: [{path: {prefix: /hang}}]
    timeout: 500ms
  - name: default
  policies:
  - name: deny-admin-delete
    action: DENY
    rules: [{to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]}]
"#;

/// [`DEFAULT_ROUTES`]' intent as Kubernetes objects, for a waypoint that
/// takes its routes from the API server ([`kube_mesh`]'s services): an
/// HTTPRoute on the `reviews` Service and an AuthorizationPolicy on the
/// waypoint's Gateway. Gateway API precedence puts a longer path before a
/// header-only match, so `x-version: v2` is also matched together with
/// `/v1` to keep the file's "header first" outcome.
pub const DEFAULT_KUBE_ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches:
    - headers: [{name: x-version, value: v2}]
    - path: {type: PathPrefix, value: /v1}
      headers: [{name: x-version, value: v2}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: reviews-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: reviews-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
  - matches: [{path: {type: PathPrefix, value: /flaky}}]
    retry: {attempts: 2, codes: [500, 502, 503, 504]}
    backendRefs: [{name: reviews, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /hang}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: reviews, port: 9080}]
  - backendRefs: [{name: reviews, port: 9080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-delete, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]}]
"#;

/// The `reviews` service VIP (behind the waypoint) of the default mesh.
pub const REVIEWS_VIP: &str = "10.96.0.30:9080";

/// The service VIP of the default mesh.
pub const VIP: &str = "10.96.0.20:9080";

/// A server outside the mesh (node b, pod 3), for the no-mesh baseline.
pub const DIRECT_SERVER: &str = "10.244.1.5:9080";

/// The no-mesh server pod's address (node b, pod 3).
pub const DIRECT_SERVER_IP: &str = "10.244.1.5";

/// Node names, in cluster order.
pub const NODES: [&str; 2] = ["node-a", "node-b"];

/// Pods per node in the harness plan.
pub(crate) const PODS: usize = 5;

/// Addresses of the waypoints services name: a workload address as is,
/// a service VIP (as istiod names a Gateway's waypoint) resolved to the
/// addresses of that service's workloads.
pub(crate) fn waypoint_ips(config: &ambit_mesh::Config) -> Vec<IpAddr> {
    let named = config
        .services
        .iter()
        .filter_map(|s| s.waypoint.as_ref())
        .filter_map(|g| match g {
            ambit_mesh::model::GatewayAddress::Address { ip, .. } => Some(*ip),
            ambit_mesh::model::GatewayAddress::Hostname { .. } => None,
        });
    let mut out = Vec::new();
    for ip in named {
        let service = config
            .services
            .iter()
            .find(|s| s.vips.iter().any(|(_, v)| *v == ip));
        match service {
            Some(svc) => {
                let key = format!("{}/{}", svc.namespace, svc.hostname);
                out.extend(
                    config
                        .workloads
                        .iter()
                        .filter(|w| w.services.contains_key(&key))
                        .flat_map(|w| w.addresses.iter().copied()),
                );
            }
            None => out.push(ip),
        }
    }
    out
}

/// The waypoint rejects a bad routes file at start; checking that it is
/// YAML here gives a clearer error before anything is built.
pub(crate) fn check_routes_yaml(yaml: &str) -> anyhow::Result<()> {
    serde_yaml_ng::from_str::<serde_json::Value>(yaml).context("the waypoint routes YAML")?;
    Ok(())
}

/// The IPv6 twin of a harness IPv4 address: a pod address
/// `10.244.i.j` becomes `fd00:10:244:i::j` (the harness plan, hex), a
/// service VIP `10.96.a.b` becomes `fd00:10:96:a::b`. Other addresses
/// have none.
pub fn ipv6_twin(ip: std::net::Ipv4Addr) -> Option<std::net::Ipv6Addr> {
    let [a, b, c, d] = ip.octets();
    let prefix = match (a, b) {
        (10, 244) => 0x244,
        (10, 96) => 0x96,
        _ => return None,
    };
    Some(std::net::Ipv6Addr::new(
        0xfd00,
        0x10,
        prefix,
        c.into(),
        0,
        0,
        0,
        d.into(),
    ))
}

/// The waypoint's Service VIP in [`kube_mesh`].
pub const WAYPOINT_VIP: &str = "10.96.0.40";

/// The mesh for a waypoint configured from the Kubernetes API: as
/// [`DEFAULT_MESH`], but the waypoint is a Service (`waypoint.default`,
/// VIP [`WAYPOINT_VIP`], port 15008) that `reviews` names by VIP, as
/// istiod announces the waypoint of a Gateway; and each reviews version
/// is also a Service of its own (`reviews-v1`, `reviews-v2`), for routes'
/// backendRefs to name.
pub fn kube_mesh() -> String {
    let mut yaml = DEFAULT_MESH.replace(
        r#"waypoint: {destination: "/10.244.1.6", hboneMtlsPort: 15008}"#,
        &format!(r#"waypoint: {{destination: "/{WAYPOINT_VIP}", hboneMtlsPort: 15008}}"#),
    );
    for v in ["v1", "v2"] {
        yaml = yaml.replace(
            &format!(
                "  canonicalRevision: {v}\n  services: {{\"default/reviews.default.svc.cluster.local\": {{9080: 9080}}}}"
            ),
            &format!(
                "  canonicalRevision: {v}\n  services: {{\"default/reviews.default.svc.cluster.local\": {{9080: 9080}}, \"default/reviews-{v}.default.svc.cluster.local\": {{9080: 9080}}}}"
            ),
        );
    }
    yaml = yaml.replace(
        "  canonicalName: waypoint\n",
        "  canonicalName: waypoint\n  services: {\"default/waypoint.default.svc.cluster.local\": {15008: 15008}}\n",
    );
    yaml.push_str(&format!(
        "- name: waypoint\n  namespace: default\n  hostname: waypoint.default.svc.cluster.local\n  vips: [\"/{WAYPOINT_VIP}\"]\n  ports: {{15008: 15008}}\n"
    ));
    for (v, vip) in [("v1", "10.96.0.31"), ("v2", "10.96.0.32")] {
        yaml.push_str(&format!(
            "- name: reviews-{v}\n  namespace: default\n  hostname: reviews-{v}.default.svc.cluster.local\n  vips: [\"/{vip}\"]\n  ports: {{9080: 9080}}\n"
        ));
    }
    yaml
}

/// A mesh config (ztunnel local YAML, as [`DEFAULT_MESH`]) made
/// dual-stack: every workload address and service VIP in the harness plan
/// gains its IPv6 twin ([`ipv6_twin`]) after it. Lines are rewritten in
/// place, so the YAML keeps its layout.
pub fn dual_stack(yaml: &str) -> String {
    let twin = |addr: &str| -> Option<String> {
        let (net, ip) = addr.rsplit_once('/').unwrap_or(("", addr));
        let v6 = ipv6_twin(ip.parse().ok()?)?;
        Some(if addr.contains('/') {
            format!("{net}/{v6}")
        } else {
            v6.to_string()
        })
    };
    let mut out = String::with_capacity(yaml.len() * 2);
    for line in yaml.lines() {
        let list = ["workloadIps: [", "vips: ["]
            .iter()
            .find_map(|k| line.find(k).map(|at| at + k.len()));
        let rewritten = list.and_then(|start| {
            let end = start + line[start..].find(']')?;
            let items: Vec<&str> = line[start..end].split(',').map(str::trim).collect();
            let mut all: Vec<String> = Vec::new();
            for item in items.iter().filter(|i| !i.is_empty()) {
                all.push((*item).to_owned());
                let bare = item.trim_matches('"');
                if let Some(t) = twin(bare) {
                    all.push(format!("\"{t}\""));
                }
            }
            Some(format!(
                "{}{}{}",
                &line[..start],
                all.join(", "),
                &line[end..]
            ))
        });
        out += rewritten.as_deref().unwrap_or(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_mesh_names_the_waypoint_by_its_service_vip() {
        let yaml = kube_mesh();
        let c = ambit_mesh::Config::parse(&yaml, "kube").expect("parses");
        let reviews = c
            .services
            .iter()
            .find(|s| s.name == "reviews")
            .expect("reviews");
        assert!(matches!(
            reviews.waypoint,
            Some(ambit_mesh::model::GatewayAddress::Address { ip, .. })
                if ip.to_string() == WAYPOINT_VIP
        ));
        for name in ["waypoint", "reviews-v1", "reviews-v2"] {
            assert!(c.services.iter().any(|s| s.name == name), "{name}");
        }
        let members = |w: &str| {
            c.workloads
                .iter()
                .find(|x| x.name == w)
                .map(|x| x.services.len())
        };
        assert_eq!(members("reviews-v1"), Some(2));
        assert_eq!(members("reviews-v2"), Some(2));
        assert_eq!(members("waypoint"), Some(1));
    }

    #[test]
    fn dual_stack_adds_the_ipv6_twins_and_stays_valid() {
        let yaml = dual_stack(DEFAULT_MESH);
        assert!(
            yaml.contains(r#"workloadIps: ["10.244.0.3", "fd00:10:244::3"]"#),
            "{yaml}"
        );
        assert!(
            yaml.contains(r#"vips: ["/10.96.0.30", "/fd00:10:96::1e"]"#),
            "{yaml}"
        );
        let c = ambit_mesh::Config::parse(&yaml, "dual").expect("parses");
        let sleep = c
            .workloads
            .iter()
            .find(|w| w.name == "sleep")
            .expect("sleep");
        assert_eq!(sleep.addresses.len(), 2);
        assert_eq!(ipv6_twin("172.30.0.1".parse().expect("ip")), None);
    }
}
