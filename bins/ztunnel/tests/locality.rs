//! Locality-aware load balancing end to end: node a is zone `zone-a`,
//! node b `zone-b`; the productpage service prefers its client's zone.
//! `sleep` (zone a) reaches only productpage-v2 (zone a) while it is
//! healthy; when the control plane marks v2 unhealthy, FAILOVER moves the
//! traffic to v1 in the other zone; STRICT then has no endpoint and the
//! connection is refused. Every change is pushed over xDS.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ambit_testbed::{DEFAULT_MESH, LocalMesh, VIP, tcpapp};

/// DEFAULT_MESH with zones on every workload (by node) and a
/// load-balancer section on the productpage service.
fn mesh_yaml(mode: &str, v2_status: &str) -> String {
    let mut out = String::new();
    for line in DEFAULT_MESH.lines() {
        out += line;
        out.push('\n');
        if let Some(node) = line.trim().strip_prefix("node: node-") {
            out += &format!("  locality: {{region: region-1, zone: zone-{node}}}\n");
        }
        if line.trim() == "name: productpage-v2" {
            out += &format!("  status: {v2_status}\n");
        }
        if line.trim() == "vips: [\"/10.96.0.20\"]" {
            out += &format!("  loadBalancer: {{routingPreferences: [Zone], mode: {mode}}}\n");
        }
    }
    out
}

/// Pushes `yaml`'s workloads and services to the control plane.
fn push(m: &LocalMesh, yaml: &str) {
    let config = ambit_mesh::Config::parse(yaml, "update").expect("config");
    let cp = m.control_plane.as_ref().expect("control plane");
    ambit_testbed::publish(&cp.store, &config);
}

/// Which backends answered `n` connections to the productpage VIP, and
/// how many failed.
fn backends(m: &LocalMesh, n: usize) -> (Vec<String>, usize) {
    let vip: SocketAddr = VIP.parse().expect("vip");
    let f = tcpapp::drive(m.sleep(), vip, n, 0).expect("drive");
    let mut names: Vec<String> = f
        .greetings
        .iter()
        .filter_map(|g| g.split_whitespace().next().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    (names, f.errors)
}

/// Waits (up to 5 s) until `n` connections give `want`.
fn wait_for(m: &LocalMesh, n: usize, want: (Vec<String>, usize)) -> (Vec<String>, usize) {
    let mut got = backends(m, n);
    for _ in 0..50 {
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        got = backends(m, n);
    }
    got
}

#[test]
fn endpoints_follow_the_clients_zone_then_fail_over_and_strict_refuses() {
    let m = LocalMesh::start(
        Path::new(env!("CARGO_BIN_EXE_ztunnel")),
        &mesh_yaml("Failover", "Healthy"),
        |_| {},
    )
    .expect("local mesh");

    // Same zone first: 20 connections, every one to v2 (node a).
    let (names, errors) = backends(&m, 20);
    assert_eq!((names, errors), (vec!["productpage-v2".to_owned()], 0));

    // v2 turns unhealthy: FAILOVER takes the next-best zone.
    push(&m, &mesh_yaml("Failover", "Unhealthy"));
    let got = wait_for(&m, 10, (vec!["productpage-v1".to_owned()], 0));
    assert_eq!(got, (vec!["productpage-v1".to_owned()], 0));

    // STRICT with no healthy endpoint in the client's zone: refused.
    push(&m, &mesh_yaml("Strict", "Unhealthy"));
    let got = wait_for(&m, 5, (vec![], 5));
    assert_eq!(got, (vec![], 5), "strict must not leave the zone");

    // v2 healthy again: back in the zone under STRICT.
    push(&m, &mesh_yaml("Strict", "Healthy"));
    let got = wait_for(&m, 10, (vec!["productpage-v2".to_owned()], 0));
    assert_eq!(got, (vec!["productpage-v2".to_owned()], 0));
}
