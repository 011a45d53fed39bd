//! Decode + apply time for a full push of workloads, and memory per
//! workload held. Run in release mode:
//!
//! ```text
//! cargo run --release -p ambit-xds --example decode_bench
//! ```
//!
//! "Apply" is inserting each decoded `Workload` into a `HashMap` by uid
//! (the mesh model lives in another crate). Memory is the growth of the
//! resident set while holding the decoded workloads.

use std::{collections::HashMap, time::Instant};

use ambit_xds::{
    ADDRESS_TYPE_URL, decode_address,
    proto::{
        discovery::{DeltaDiscoveryResponse, Resource},
        istio::workload::{Address, Port, PortList, Workload, address},
    },
    to_any,
};
use prost::Message;

/// A workload shaped like what istiod sends for a pod.
fn workload(i: usize) -> Workload {
    let ns = format!("ns-{}", i % 100);
    Workload {
        uid: format!("Kubernetes//Pod/{ns}/app-{i}-7c9d8f6b5-x2k4q"),
        name: format!("app-{i}-7c9d8f6b5-x2k4q"),
        namespace: ns.clone(),
        addresses: vec![vec![10, (i >> 16) as u8, (i >> 8) as u8, i as u8]],
        network: String::new(),
        tunnel_protocol: 1,
        trust_domain: "cluster.local".into(),
        service_account: format!("app-{}", i % 500),
        node: format!("worker-{}", i % 50),
        canonical_name: format!("app-{}", i % 500),
        canonical_revision: "v1".into(),
        workload_type: 0,
        workload_name: format!("app-{i}"),
        services: HashMap::from([(
            format!("{ns}/app-{}.{ns}.svc.cluster.local", i % 500),
            PortList {
                ports: vec![Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]),
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    }
}

fn push(n: usize) -> Vec<u8> {
    DeltaDiscoveryResponse {
        type_url: ADDRESS_TYPE_URL.into(),
        resources: (0..n)
            .map(|i| {
                let w = workload(i);
                Resource {
                    name: w.uid.clone(),
                    version: "1".into(),
                    resource: Some(to_any(&Address {
                        r#type: Some(address::Type::Workload(w)),
                    })),
                    ..Default::default()
                }
            })
            .collect(),
        nonce: "1".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn decode_and_apply(bytes: &[u8]) -> HashMap<String, Workload> {
    let response = DeltaDiscoveryResponse::decode(bytes).expect("decodes");
    let mut held = HashMap::with_capacity(response.resources.len());
    for r in response.resources {
        let Some(any) = r.resource.as_ref() else {
            continue;
        };
        let address = decode_address(&r.name, any).expect("an address");
        if let Some(address::Type::Workload(w)) = address.r#type {
            held.insert(w.uid.clone(), w);
        }
    }
    held
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    const N: usize = 10_000;
    let bytes = push(N);
    println!(
        "push of {N} workloads: {} bytes on the wire ({} B per workload)",
        bytes.len(),
        bytes.len() / N
    );

    let mut times = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        let held = decode_and_apply(&bytes);
        times.push(start.elapsed());
        assert_eq!(held.len(), N);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "decode + apply {N} workloads: median {:.2} ms, min {:.2} ms over {} runs ({:.0} ns per workload)",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times.len(),
        median.as_nanos() as f64 / N as f64
    );

    // Memory: decode 100k workloads and hold them; the push bytes are
    // built first so only the held map is measured.
    const M: usize = 100_000;
    let big = push(M);
    let before = rss_bytes();
    let held = decode_and_apply(&big);
    drop(big);
    let after = rss_bytes();
    println!(
        "holding {} decoded workloads: RSS +{:.1} MiB, {} B per workload (HashMap<uid, Workload>)",
        held.len(),
        after.saturating_sub(before) as f64 / (1 << 20) as f64,
        after.saturating_sub(before) / held.len()
    );
    println!(
        "size_of::<Workload>() = {} B (heap strings and maps come on top)",
        std::mem::size_of::<Workload>()
    );
}
