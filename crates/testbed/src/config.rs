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

/// Addresses of the waypoints services name.
pub(crate) fn waypoint_ips(config: &ambit_mesh::Config) -> Vec<IpAddr> {
    config
        .services
        .iter()
        .filter_map(|s| s.waypoint.as_ref())
        .filter_map(|g| match g {
            ambit_mesh::model::GatewayAddress::Address { ip, .. } => Some(*ip),
            ambit_mesh::model::GatewayAddress::Hostname { .. } => None,
        })
        .collect()
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
