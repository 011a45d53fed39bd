//! End to end: the local mesh of `examples/local-mesh` with this crate's
//! ztunnel binary — traffic, identities, admin endpoints and bad input.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use ambit_examples::localmesh::{self, DEFAULT_MESH, LocalMesh, VIP};
use ambit_hbone::{Client, ClientConfig, ConnectRequest};
use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig};
use ambit_netns::NetNs;

fn mesh() -> LocalMesh {
    LocalMesh::start(
        Path::new(env!("CARGO_BIN_EXE_ztunnel")),
        DEFAULT_MESH,
        |_| {},
    )
    .expect("local mesh")
}

fn http_get(ns: &NetNs, addr: &str, path: &str) -> String {
    let mut s = ns
        .tcp_connect(addr.parse().expect("addr"))
        .expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut r = String::new();
    s.read_to_string(&mut r).expect("read");
    r
}

#[test]
fn traffic_identities_and_endpoints() {
    let m = mesh();
    let vip: SocketAddr = VIP.parse().expect("vip");
    let f = localmesh::drive(m.sleep(), vip, 20, 1 << 20).expect("drive");
    assert_eq!(f.errors, 0, "{f:?}");
    // Both backends answered, and both saw the client's own address.
    assert!(
        f.greetings.iter().any(|g| g.starts_with("productpage-v1")),
        "{:?}",
        f.greetings
    );
    assert!(
        f.greetings.iter().any(|g| g.starts_with("productpage-v2")),
        "{:?}",
        f.greetings
    );
    assert!(
        f.greetings
            .iter()
            .all(|g| g.ends_with("saw source 10.244.0.3")),
        "{:?}",
        f.greetings
    );

    // Access logs are written when connections end; give the last ones a moment.
    let mut inbound = None;
    for _ in 0..40 {
        inbound = m
            .access_logs()
            .into_iter()
            .find(|(n, v)| n == "node-b" && v["fields"]["direction"] == "inbound");
        if inbound.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let inbound = inbound.expect("an inbound access log on node-b");
    assert_eq!(
        inbound.1["fields"]["src_identity"],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(
        inbound.1["fields"]["dst_identity"],
        "spiffe://cluster.local/ns/default/sa/productpage"
    );

    let zt_b = m.cluster.pod(1, 0).ns();
    let dump = http_get(zt_b, "127.0.0.1:15000", "/config_dump");
    assert!(
        dump.starts_with("HTTP/1.1 200") && dump.contains("productpage-v1"),
        "{dump}"
    );
    let metrics = http_get(zt_b, "127.0.0.1:15020", "/metrics");
    assert!(
        metrics.contains("istio_tcp_connections_opened_total{reporter=\"destination\""),
        "{metrics}"
    );
    assert!(http_get(zt_b, "127.0.0.1:15021", "/healthz/ready").starts_with("HTTP/1.1 200"));
}

#[test]
fn bad_hbone_requests_are_refused() {
    let m = mesh();
    let ca = LocalCa::from_pem(
        &std::fs::read_to_string(m.dir.join("ca.pem")).expect("ca"),
        &std::fs::read_to_string(m.dir.join("ca-key.pem")).expect("key"),
        "cluster.local",
    )
    .expect("ca");
    let zt_a = m.cluster.pod(0, 0);
    let pp: Identity = "spiffe://cluster.local/ns/default/sa/productpage"
        .parse()
        .expect("id");
    let sleep: Identity = "spiffe://cluster.local/ns/default/sa/sleep"
        .parse()
        .expect("id");
    // From ztunnel a's namespace (never captured) straight to productpage-v1's
    // 15008, which node b hands to ztunnel b.
    let statuses = zt_a
        .spawn_async(move || async move {
            let client = Client::new(
                ClientConfig::default(),
                CertManager::new(ca, ManagerConfig::default()),
            );
            let hbone: SocketAddr = "10.244.1.3:15008".parse().expect("addr");
            let mut out = Vec::new();
            for authority in [
                "10.244.1.3:9080",
                "10.244.0.3:80",
                "10.244.1.3:15008",
                "10.244.1.3:15006",
            ] {
                let req = ConnectRequest::new(
                    sleep.clone(),
                    vec![pp.clone()],
                    hbone,
                    authority.parse::<SocketAddr>().expect("a"),
                );
                out.push(match client.connect(req).await {
                    Ok(_) => 200,
                    Err(e) => e.status().map(|s| s.as_u16()).unwrap_or(0),
                });
            }
            out
        })
        .expect("client")
        .join();
    // Allowed; not on this node (L3 target differs: SSRF guard); ztunnel's own ports.
    assert_eq!(statuses, vec![200, 400, 400, 400]);
}
