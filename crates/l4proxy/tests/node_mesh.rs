//! Two nodes, each with a ztunnel netns and pods, node-level capture
//! applied through ambit-redirect, and a ztunnel (this crate) in each
//! ztunnel netns: pod-to-pod and pod-to-VIP traffic crosses nodes inside
//! HBONE, policy is enforced, and same-node traffic goes through ztunnel.
//!
//! Layout (harness addresses):
//!   node a: pod 0 = ztunnel 10.244.0.2, pod 1 = sleep 10.244.0.3, pod 2 = local-srv 10.244.0.4
//!   node b: pod 0 = ztunnel 10.244.1.2, pod 1 = productpage 10.244.1.3

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_identity::{CertManager, LocalCa, ManagerConfig};
use ambit_l4proxy::{Capture, Listeners, Local, Proxy, ProxyConfig, Sockets};
use ambit_mesh::{Config, MeshState};
use ambit_netns::harness::{Cluster, Pod};
use ambit_netns::{NetNs, NsTask};
use ambit_redirect::Backend;
use ambit_redirect::profiles::{self, NodeConfig, PodRef, ZtunnelConfig};
use ambit_tunnel::IstioTunnels;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MESH: &str = r#"
workloads:
- {uid: sleep, name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["10.244.0.3"], protocol: HBONE, node: a}
- {uid: local-srv, name: local-srv, namespace: default, serviceAccount: srv, workloadIps: ["10.244.0.4"], protocol: HBONE, node: a}
- {uid: pp, name: productpage, namespace: default, serviceAccount: productpage, workloadIps: ["10.244.1.3"], protocol: HBONE, node: b,
   services: {"default/productpage.default.svc.cluster.local": {9080: 9080}}}
services:
- {name: productpage, namespace: default, hostname: productpage.default.svc.cluster.local, vips: ["/10.96.0.10"], ports: {9080: 9080}}
"#;

struct Ztunnel {
    state: Arc<RwLock<MeshState>>,
    metrics: ambit_l4proxy::Metrics,
    stop: Arc<tokio::sync::Notify>,
    task: Option<NsTask<()>>,
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.task.take() {
            t.join();
        }
    }
}

fn sh(ns: &NetNs, args: &[&str]) -> String {
    let out = ns
        .output(Command::new(args[0]).args(&args[1..]))
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Node-level capture on node `i` with its ztunnel pod 0, enrolling `pods`.
fn capture(cluster: &Cluster, i: usize, pods: &[usize]) {
    let node = cluster.node(i);
    let zt = cluster.pod(i, 0);
    let tunnels = IstioTunnels::vxlan();
    let port = tunnels
        .apply_host_side(node.ns(), IpAddr::V4(zt.ip()))
        .expect("host tunnels")
        .port;
    tunnels
        .apply_ztunnel_side(zt.ns(), IpAddr::V4(node.pod_gateway()), port)
        .expect("zt tunnels");
    let mut cfg = NodeConfig::new(node.pod_gateway(), zt.host_veth(), zt.ip());
    cfg.tunnel_port = port;
    let plan = profiles::node_host(&cfg).expect("plan");
    plan.apply(node.ns(), Backend::Nft).expect("host rules");
    profiles::ztunnel_ns(&ZtunnelConfig::new(node.pod_gateway(), zt.ip()))
        .expect("plan")
        .apply(zt.ns(), Backend::Nft)
        .expect("ztunnel rules");
    let refs: Vec<PodRef> = pods
        .iter()
        .map(|&j| {
            let p = cluster.pod(i, j);
            PodRef {
                ip: p.ip(),
                uid: p.name().into(),
                host_veth: Some(p.host_veth()),
            }
        })
        .collect();
    profiles::enrol(node.ns(), Backend::Nft, &plan, &cfg, &refs).expect("enrol");
}

fn start_ztunnel(pod: &Pod, node_name: &str, ca: Arc<LocalCa>) -> Ztunnel {
    let state = Arc::new(RwLock::new(MeshState::from_config(
        Config::parse(MESH, "test").expect("mesh"),
    )));
    let stop = Arc::new(tokio::sync::Notify::new());
    let cfg = ProxyConfig {
        node_name: node_name.into(),
        drain_deadline: Duration::from_secs(1),
        ..ProxyConfig::default()
    };
    let (st, sp) = (state.clone(), stop.clone());
    let (mtx, mrx) = std::sync::mpsc::channel();
    let task = pod
        .spawn_async(move || async move {
            let certs = Arc::new(CertManager::new(ca, ManagerConfig::default()));
            let proxy = Proxy::new(cfg, st, certs);
            let _ = mtx.send(proxy.metrics().clone());
            let sockets = Sockets::new();
            let listeners = Listeners::bind(
                &sockets,
                IpAddr::from([0, 0, 0, 0]),
                Default::default(),
                Capture::Tproxy,
            )
            .expect("listeners");
            proxy
                .serve(
                    listeners,
                    Capture::Tproxy,
                    Local::Node(node_name_owned(&proxy)),
                    sockets,
                    async move { sp.notified().await },
                )
                .await;
        })
        .expect("ztunnel task");
    let metrics = mrx
        .recv_timeout(Duration::from_secs(10))
        .expect("proxy started");
    Ztunnel {
        state,
        metrics,
        stop,
        task: Some(task),
    }
}

fn node_name_owned(p: &Proxy) -> String {
    format!("{p:?}")
        .split('"')
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// An echo server in `pod` that reports each client's address.
fn echo_server(pod: &Pod, port: u16) -> (NsTask<()>, std::sync::mpsc::Receiver<SocketAddr>) {
    let listener = pod
        .ns()
        .tcp_listener((pod.ip(), port).into())
        .expect("bind");
    let (tx, rx) = std::sync::mpsc::channel();
    let task = pod
        .spawn_async(move || async move {
            listener.set_nonblocking(true).expect("nb");
            let l = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((mut s, peer)) = l.accept().await {
                let _ = tx.send(peer);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        })
        .expect("server");
    (task, rx)
}

/// Sends `msg` from `pod` to `to` and returns the echo, or the error.
fn echo(pod: &Pod, to: SocketAddr, msg: &'static [u8]) -> Result<Vec<u8>, String> {
    pod.spawn_async(move || async move {
        let mut s =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(to))
                .await
                .map_err(|_| "connect timeout".to_string())?
                .map_err(|e| e.to_string())?;
        s.write_all(msg).await.map_err(|e| e.to_string())?;
        s.shutdown().await.map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .map_err(|_| "read timeout".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(got)
    })
    .expect("client")
    .join()
}

fn counter(ns: &NetNs, name: &str) -> u64 {
    let out = sh(ns, &["nft", "list", "chain", "inet", "wire", "watch"]);
    out.lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn pods_talk_across_nodes_through_ztunnels() {
    let cluster = Cluster::builder()
        .nodes(2)
        .pods_per_node(3)
        .build()
        .expect("cluster");
    capture(&cluster, 0, &[1, 2]);
    capture(&cluster, 1, &[1]);
    // Count what crosses node b's underlay interface, by destination port.
    let b = cluster.node(1).ns();
    let watch = "add table inet wire\nadd chain inet wire watch { type filter hook prerouting priority -400; }\n\
        add rule inet wire watch iifname eth0 tcp dport 15008 counter comment \"hbone\"\n\
        add rule inet wire watch iifname eth0 tcp dport 9080 counter comment \"plain\"\n";
    let mut child = b
        .spawn_command(
            Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped()),
        )
        .expect("nft");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), watch.as_bytes())
        .expect("write");
    assert!(child.wait().expect("nft").success());

    let ca = Arc::new(LocalCa::generate("cluster.local").expect("ca"));
    let zt_a = start_ztunnel(cluster.pod(0, 0), "a", ca.clone());
    let zt_b = start_ztunnel(cluster.pod(1, 0), "b", ca);
    let (sleep, pp, local_srv) = (cluster.pod(0, 1), cluster.pod(1, 1), cluster.pod(0, 2));
    let (_srv, seen) = echo_server(pp, 9080);
    let (_srv2, seen_local) = echo_server(local_srv, 8080);

    // By pod IP: echoed, and the server sees the client's own address.
    assert_eq!(
        echo(sleep, (pp.ip(), 9080).into(), b"by-pod-ip").as_deref(),
        Ok(&b"by-pod-ip"[..])
    );
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(5))
            .expect("seen")
            .ip(),
        IpAddr::V4(sleep.ip())
    );
    // By service VIP.
    assert_eq!(
        echo(sleep, "10.96.0.10:9080".parse().expect("vip"), b"by-vip").as_deref(),
        Ok(&b"by-vip"[..])
    );
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(5))
            .expect("seen")
            .ip(),
        IpAddr::V4(sleep.ip())
    );
    // On the wire into node b: only HBONE (15008), never the app port.
    assert!(counter(b, "hbone") > 0, "no HBONE packets seen");
    assert_eq!(
        counter(b, "plain"),
        0,
        "plaintext app traffic crossed the underlay"
    );

    // Same node, through ztunnel a.
    assert_eq!(
        echo(sleep, (local_srv.ip(), 8080).into(), b"same-node").as_deref(),
        Ok(&b"same-node"[..])
    );
    assert_eq!(
        seen_local
            .recv_timeout(Duration::from_secs(5))
            .expect("seen")
            .ip(),
        IpAddr::V4(sleep.ip())
    );

    // A DENY policy on node b blocks it; removing it restores it.
    let deny = Config::parse(
        "policies:\n- {name: deny-sleep, namespace: default, action: Deny, rules: [[[{principals: [{Exact: cluster.local/ns/default/sa/sleep}]}]]]}\n",
        "policy",
    )
    .expect("policy");
    zt_b.state.write().expect("lock").load(deny);
    let r = echo(sleep, (pp.ip(), 9080).into(), b"denied");
    assert!(
        r.as_ref().map(|v| v.is_empty()).unwrap_or(true),
        "denied connection carried data: {r:?}"
    );
    assert!(
        seen.recv_timeout(Duration::from_millis(300)).is_err(),
        "the server was reached"
    );
    let m = zt_b.metrics.encode();
    assert!(
        m.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("response_flags=\"DENY\"")),
        "{m}"
    );
    zt_b.state
        .write()
        .expect("lock")
        .remove_policy("default/deny-sleep");
    assert_eq!(
        echo(sleep, (pp.ip(), 9080).into(), b"allowed").as_deref(),
        Ok(&b"allowed"[..])
    );

    // Metrics carry Istio's names and labels.
    let m = zt_a.metrics.encode();
    assert!(
        m.contains("istio_tcp_sent_bytes_total")
            && m.contains("connection_security_policy=\"mutual_tls\""),
        "{m}"
    );
    assert!(
        m.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\""),
        "{m}"
    );
    drop(zt_a);
    drop(zt_b);
}
