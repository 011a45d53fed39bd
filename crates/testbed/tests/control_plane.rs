//! End to end (as root): the in-process control plane serves delta ADS and
//! the Istio CA on one TLS port as istiod does, and the local mesh's
//! proxies take their config and certificates from it configured as for
//! istiod.
//!
//! The local-mesh test runs the release binaries: `AMBIT_ZTUNNEL`, else
//! `ztunnel` beside this test's profile directory, else in `release/`
//! (build with `cargo build --release -p ztunnel -p cni-node -p waypoint`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_identity::{
    Authn, CaError, Identity, IstioCaClient, IstioCaConfig, LocalCa, ServiceAccount, TokenSet,
};
use ambit_netns::harness::Cluster;
use ambit_testbed::{CONTROL_PLANE_PORT, ControlPlane, DEFAULT_MESH, LocalMesh, VIP, tcpapp};
use ambit_xds::{
    AdsClient, AdsConfig, NodeIdentity, Subscription, XdsResource, proto::istio::workload::Address,
};

fn ztunnel() -> PathBuf {
    if let Some(p) = std::env::var_os("AMBIT_ZTUNNEL") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable");
    let profile = exe.parent().and_then(|d| d.parent()).expect("profile dir");
    let beside = profile.join("ztunnel");
    if beside.is_file() {
        return beside;
    }
    profile
        .parent()
        .map(|t| t.join("release").join("ztunnel"))
        .expect("target dir")
}

#[test]
fn local_mesh_takes_config_and_certificates_over_one_tls_port() {
    ambit_testbed::preflight().expect("preflight");
    let m = LocalMesh::start(&ztunnel(), DEFAULT_MESH, |_| {}).expect("local mesh");
    let cp = m.control_plane.as_ref().expect("control plane");
    let one_port = format!(":{CONTROL_PLANE_PORT}");
    assert!(cp.xds_address.starts_with("https://") && cp.xds_address.ends_with(&one_port));
    assert_eq!(cp.xds_address, cp.ca_address);
    // Both ztunnels and the waypoint opened an xDS stream (there is no
    // other port), and traffic between the nodes needs HBONE mTLS with
    // certificates from the CA on that port.
    let streams = cp.ads.stats().streams;
    assert!(streams >= 3, "only {streams} xds streams");
    let vip: SocketAddr = VIP.parse().expect("vip");
    let f = tcpapp::drive(m.sleep(), vip, 5, 1 << 16).expect("drive");
    assert_eq!(f.errors, 0, "traffic through the mesh failed");
}

/// A CA client of the control plane at `address`, as a proxy configured
/// for istiod: the mesh root and `ALT_CA_HOSTNAME=istiod.istio-system.svc`.
/// Call within a runtime.
fn ca_client(address: &str, root: &str, name: &str, token: Option<PathBuf>) -> IstioCaClient {
    let mut c = IstioCaConfig::default();
    c.address = address.to_owned();
    c.root_certs_pem = Some(root.to_owned());
    c.tls_server_name = Some(name.to_owned());
    c.token_path = token;
    c.impersonate = true;
    IstioCaClient::new(c).expect("ca client")
}

/// Whether a delta ADS client gets the mesh's addresses within 5 s.
async fn xds_syncs(cp_address: String, root: String, name: String, token: Option<PathBuf>) -> bool {
    let node = NodeIdentity::new("10.0.0.1", "zt", "istio-system", "node-a");
    let mut config = AdsConfig::new(cp_address, node);
    config.root_certs_pem = Some(root);
    config.tls_server_name = Some(name);
    config.token_path = token;
    let Ok(client) = AdsClient::builder(config)
        .watch::<Address, _>(
            Subscription::Wildcard,
            |_: Vec<XdsResource<Address>>, _: Vec<String>| Ok(()),
        )
        .build()
    else {
        return false;
    };
    let mut ready = client.ready();
    let task = tokio::spawn(client.run(std::future::pending()));
    let synced = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
        .await
        .is_ok_and(|r| r.is_ok());
    task.abort();
    synced
}

#[test]
fn bearer_tokens_guard_both_xds_and_the_ca_on_the_one_port() {
    ambit_testbed::preflight().expect("preflight");
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("cluster");
    let node = cluster.node(0);
    let ip = IpAddr::V4(node.underlay_ip());
    let dir = std::env::temp_dir().join(format!("ambit-cp-tokens-{}", cluster.id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (zt_token, bad_token) = (dir.join("ztunnel-token"), dir.join("bad-token"));
    std::fs::write(&zt_token, "zt-secret\n").expect("token");
    std::fs::write(&bad_token, "guess\n").expect("token");
    let tokens = TokenSet::new().with("zt-secret", ServiceAccount::new("istio-system", "ztunnel"));
    let ca = Arc::new(LocalCa::generate("cluster.local").expect("ca"));
    let config = ambit_mesh::Config::parse(DEFAULT_MESH, "mesh").expect("mesh");
    let cp = ControlPlane::start_with(node.ns(), ip, ca, &config, Authn::tokens(tokens))
        .expect("control plane");

    let web: Identity = "spiffe://cluster.local/ns/default/sa/web"
        .parse()
        .expect("id");
    let (addr, root, name) = (
        cp.xds_address.clone(),
        cp.root_pem.clone(),
        cp.tls_server_name.to_owned(),
    );
    let results = node
        .ns()
        .spawn_async(move || async move {
            let ttl = Duration::from_secs(600);
            let client = |token: Option<PathBuf>| ca_client(&addr, &root, &name, token);
            let (zt, anonymous, stranger) = (
                client(Some(zt_token.clone())),
                client(None),
                client(Some(bad_token.clone())),
            );
            (
                zt.sign(&web, ttl).await.map(|c| c.identity().clone()),
                anonymous.sign(&web, ttl).await.err(),
                stranger.sign(&web, ttl).await.err(),
                xds_syncs(addr.clone(), root.clone(), name.clone(), Some(zt_token)).await,
                xds_syncs(addr.clone(), root.clone(), name.clone(), None).await,
                xds_syncs(addr, root, name, Some(bad_token)).await,
            )
        })
        .expect("spawn")
        .join();
    let _ = std::fs::remove_dir_all(&dir);
    let (signed, anonymous, stranger, xds_ok, xds_anon, xds_bad) = results;
    assert_eq!(
        signed.expect("the node proxy's token gets a workload certificate"),
        "spiffe://cluster.local/ns/default/sa/web"
            .parse::<Identity>()
            .expect("id")
    );
    for (err, want) in [
        (anonymous, "no authorization header"),
        (stranger, "not recognized"),
    ] {
        match err {
            Some(CaError::Rejected { code, message, .. }) => {
                assert_eq!(code, "Unauthenticated");
                assert!(message.contains(want), "{message}");
            }
            other => panic!("expected Unauthenticated, got {other:?}"),
        }
    }
    assert!(xds_ok, "xds with the node proxy's token did not sync");
    assert!(!xds_anon, "xds without a token synced");
    assert!(!xds_bad, "xds with an unknown token synced");
    let seen = cp.ads.stats().stream_headers;
    assert!(
        seen.iter()
            .all(|h| h.authorization.as_deref() == Some("Bearer zt-secret")),
        "a refused stream reached the ads server: {seen:?}"
    );
}
