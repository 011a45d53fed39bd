//! In-pod mode: each pod's netns reaches ztunnel over ZDS, ztunnel opens
//! the pod's listeners inside it, and the pod's REDIRECT rules (applied
//! with ambit-redirect's in-pod profile) send its traffic there.
//!
//! node a: pod 1 = sleep 10.244.0.3; node b: pod 1 = productpage 10.244.1.3.
//! Each node's ztunnel runs in the node's namespace; a ZDS listener in the
//! test stands in for the node agent.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_identity::{CertManager, LocalCa, ManagerConfig};
use ambit_l4proxy::{INPOD_MARK, InPod, Proxy, ProxyConfig};
use ambit_mesh::{Config, MeshState};
use ambit_netns::harness::{Cluster, Pod};
use ambit_redirect::Backend;
use ambit_redirect::profiles::{self, InpodConfig};
use ambit_xds::ZdsListener;
use ambit_xds::proto::istio::workload::zds::WorkloadInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MESH: &str = r#"
workloads:
- {uid: "Kubernetes//Pod/default/sleep", name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["10.244.0.3"], protocol: HBONE, node: a}
- {uid: "Kubernetes//Pod/default/productpage", name: productpage, namespace: default, serviceAccount: productpage, workloadIps: ["10.244.1.3"], protocol: HBONE, node: b}
"#;

fn enrol(pod: &Pod) {
    profiles::inpod(&InpodConfig::default())
        .expect("plan")
        .apply(pod.ns(), Backend::Nft)
        .expect("in-pod rules");
}

#[test]
fn inpod_traffic_crosses_nodes_through_pod_listeners() {
    let cluster = Cluster::builder()
        .nodes(2)
        .pods_per_node(2)
        .build()
        .expect("cluster");
    let (sleep, pp) = (cluster.pod(0, 1), cluster.pod(1, 1));
    enrol(sleep);
    enrol(pp);
    let dir = std::env::temp_dir().join(format!("ambit-inpod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = Arc::new(LocalCa::generate("cluster.local").expect("ca"));

    // The node agent's side: it owns the ZDS socket, ztunnel connects, and
    // the agent adds the pod with its netns fd.
    let mut zts = Vec::new();
    for (node, pod, app, n) in [
        (cluster.node(0), sleep, "sleep", "a"),
        (cluster.node(1), pp, "productpage", "b"),
    ] {
        let sock = dir.join(format!("{n}-agent.sock"));
        let fd = pod.ns().try_clone().expect("fd");
        let app = app.to_owned();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (acked_tx, acked_rx) = std::sync::mpsc::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<()>();
        let agent_sock = sock.clone();
        let agent = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            let conn = rt.block_on(async move {
                let listener = ZdsListener::bind(&agent_sock).expect("bind");
                let _ = bound_tx.send(());
                let mut conn = listener.accept().await.expect("accept ztunnel");
                let info = WorkloadInfo {
                    name: app.clone(),
                    namespace: "default".into(),
                    service_account: app,
                };
                conn.add(&format!("pod-uid-{n}"), Some(info), fd.as_fd())
                    .await
                    .expect("add acked");
                conn.snapshot_sent().await.expect("snapshot acked");
                conn
            });
            let _ = acked_tx.send(());
            // Keep the connection (and so the pod) until the test is done.
            let _ = done_rx.recv_timeout(Duration::from_secs(60));
            drop(conn);
        });
        bound_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("agent listening");
        let stop = Arc::new(tokio::sync::Notify::new());
        let st = stop.clone();
        let ca = ca.clone();
        let s2 = sock.clone();
        let zt = node
            .ns()
            .spawn_async(move || async move {
                let state = Arc::new(RwLock::new(MeshState::from_config(
                    Config::parse(MESH, "mesh").expect("mesh"),
                )));
                let certs = Arc::new(CertManager::new(ca, ManagerConfig::default()));
                let proxy = Proxy::new(
                    ProxyConfig {
                        drain_deadline: Duration::from_millis(200),
                        ..ProxyConfig::default()
                    },
                    state,
                    certs,
                );
                let mut inpod = InPod::new(proxy, INPOD_MARK);
                let client = ambit_xds::ZdsClient::connect(&s2)
                    .await
                    .expect("zds connect");
                tokio::select! {
                    r = client.run(&mut inpod) => { let _ = r; }
                    _ = st.notified() => {}
                }
            })
            .expect("ztunnel");
        acked_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("pod acknowledged by ztunnel");
        zts.push((zt, stop, agent, done_tx));
    }

    // productpage echoes; it must see sleep's own address.
    let l = pp
        .ns()
        .tcp_listener(SocketAddr::new(IpAddr::V4(pp.ip()), 9080))
        .expect("bind");
    let server = pp
        .spawn_async(move || async move {
            l.set_nonblocking(true).expect("nb");
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            let (mut s, peer) = l.accept().await.expect("accept");
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            peer
        })
        .expect("server");
    let to = SocketAddr::new(IpAddr::V4(pp.ip()), 9080);
    let got = sleep
        .spawn_async(move || async move {
            let mut s = tokio::net::TcpStream::connect(to).await.expect("connect");
            s.write_all(b"in-pod").await.expect("write");
            s.shutdown().await.expect("fin");
            let mut v = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut v))
                .await
                .expect("timeout")
                .expect("read");
            v
        })
        .expect("client")
        .join();
    assert_eq!(got, b"in-pod");
    let peer = server.join();
    assert_eq!(
        peer.ip(),
        IpAddr::V4(sleep.ip()),
        "server saw the original source"
    );
    for (zt, stop, agent, done) in zts {
        stop.notify_one();
        zt.join();
        let _ = done.send(());
        let _ = agent.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
