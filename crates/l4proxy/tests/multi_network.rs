//! Multi-network: a client on network A reaches an app on network B only
//! through B's east-west gateway, with double HBONE.
//!
//! Three network namespaces of this test's own:
//!   net-a: sleep 10.1.0.2, with ztunnel A (network net-a) and its SOCKS5
//!          front door on 10.1.0.2:15080
//!   gw:    the east-west gateway stand-in, 10.1.0.1 (towards A) and
//!          10.2.0.1 (towards B); no forwarding
//!   net-b: the app (echo-b) 10.2.0.2:7000, with ztunnel B (network net-b)
//!          on 10.2.0.2:15008
//!
//! A has no route to 10.2.0.0/24, so the app's IP is not even routable
//! from it. The gateway stand-in is an HBONE server: it terminates the
//! outer CONNECT (routing on its `svc-hostname:port` authority, as an
//! Istio east-west gateway does) and relays the inner stream, still
//! encrypted, to ztunnel B, which terminates the inner HBONE and delivers
//! to the app.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ambit_hbone::{
    AuthorityOptions, Decision, InboundRequest, Rejection, Server, ServerConfig, handler_fn,
};
use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig};
use ambit_l4proxy::socks5::{Reply, VERSION};
use ambit_l4proxy::{Capture, Listeners, Local, Proxy, ProxyConfig, Sockets};
use ambit_mesh::{Config, MeshState};
use ambit_netns::{NetNs, NsTask};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MESH: &str = r#"
workloads:
- {uid: sleep, name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["10.1.0.2"], protocol: HBONE, node: a, network: net-a}
- {uid: ewgw, name: ewgw, namespace: istio-system, serviceAccount: eastwest, workloadIps: ["10.1.0.1"], protocol: TCP, node: gw, network: net-b,
   services: {"istio-system/eastwest.istio-system.svc.cluster.local": {15008: 15008}}}
- {uid: echo-b, name: echo-b, namespace: default, serviceAccount: echo, workloadIps: ["10.2.0.2"], protocol: HBONE, node: b, network: net-b,
   networkGateway: {destination: {namespace: istio-system, hostname: eastwest.istio-system.svc.cluster.local}, hboneMtlsPort: 15008},
   services: {"default/echo.default.svc.cluster.local": {80: 7000}}}
- {uid: echo-c, name: echo-c, namespace: default, serviceAccount: echo, workloadIps: ["10.3.0.2"], protocol: HBONE, node: c, network: net-c,
   services: {"default/island.default.svc.cluster.local": {80: 7000}}}
services:
- {name: eastwest, namespace: istio-system, hostname: eastwest.istio-system.svc.cluster.local, vips: ["net-b/10.1.0.100"], ports: {15008: 15008}}
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: ["net-a/10.96.0.1"], ports: {80: 7000}}
- {name: island, namespace: default, hostname: island.default.svc.cluster.local, vips: ["net-a/10.96.0.2"], ports: {80: 7000}}
"#;

const SLEEP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const APP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/eastwest";

fn sh(ns: &NetNs, args: &[&str]) {
    let out = ns
        .output(Command::new(args[0]).args(&args[1..]))
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/proc/<pid>/fd/<fd>` of `ns`, for `ip link set ... netns`.
fn ns_path(ns: &NetNs) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), ns.as_fd().as_raw_fd())
}

/// A long-running task in a namespace, stopped (and joined) on drop, so a
/// failing assertion still tears everything down.
struct Running {
    stop: Arc<tokio::sync::Notify>,
    task: Option<NsTask<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.task.take() {
            t.join();
        }
    }
}

fn mesh() -> Arc<RwLock<MeshState>> {
    Arc::new(RwLock::new(MeshState::from_config(
        Config::parse(MESH, "test").expect("mesh"),
    )))
}

fn proxy_config(node: &str, network: &str) -> ProxyConfig {
    ProxyConfig {
        node_name: node.into(),
        network: network.into(),
        spoof_source: false,
        drain_deadline: Duration::from_secs(1),
        ..ProxyConfig::default()
    }
}

/// ztunnel A on 10.1.0.2 with its SOCKS5 listener on 10.1.0.2:15080.
fn ztunnel_a(ns: &NetNs, ca: Arc<LocalCa>) -> Running {
    let stop = Arc::new(tokio::sync::Notify::new());
    let sp = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let task = ns
        .spawn_async(move || async move {
            let certs = Arc::new(CertManager::new(ca, ManagerConfig::default()));
            let proxy = Proxy::new(proxy_config("a", "net-a"), mesh(), certs);
            let sockets = Sockets::new();
            let ip = IpAddr::V4(SLEEP);
            let listeners = Listeners::bind(&sockets, ip, Default::default(), Capture::Redirect)
                .expect("listeners");
            let socks_l = TcpListener::bind((ip, 15080)).await.expect("bind 15080");
            let local = Local::Node("a".into());
            let _ = tx.send(());
            let (p, s, l) = (proxy.clone(), sockets.clone(), local.clone());
            let serve = tokio::spawn(async move {
                p.serve(listeners, Capture::Redirect, l, s, std::future::pending())
                    .await;
            });
            proxy
                .serve_socks5(socks_l, local, sockets, async move { sp.notified().await })
                .await;
            serve.abort();
        })
        .expect("ztunnel a");
    rx.recv_timeout(Duration::from_secs(10)).expect("a started");
    Running {
        stop,
        task: Some(task),
    }
}

/// ztunnel B on 10.2.0.2 and the app on 10.2.0.2:7000, which reports
/// each client's address.
fn network_b(ns: &NetNs, ca: Arc<LocalCa>, peers: Arc<Mutex<Vec<SocketAddr>>>) -> Running {
    let stop = Arc::new(tokio::sync::Notify::new());
    let sp = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let task = ns
        .spawn_async(move || async move {
            let app = TcpListener::bind((APP, 7000)).await.expect("bind app");
            tokio::spawn(async move {
                while let Ok((mut s, peer)) = app.accept().await {
                    peers.lock().expect("lock").push(peer);
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            let certs = Arc::new(CertManager::new(ca, ManagerConfig::default()));
            let proxy = Proxy::new(proxy_config("b", "net-b"), mesh(), certs);
            let sockets = Sockets::new();
            let listeners = Listeners::bind(
                &sockets,
                IpAddr::V4(APP),
                Default::default(),
                Capture::Redirect,
            )
            .expect("listeners");
            let _ = tx.send(());
            proxy
                .serve(
                    listeners,
                    Capture::Redirect,
                    Local::Node("b".into()),
                    sockets,
                    async move { sp.notified().await },
                )
                .await;
        })
        .expect("network b");
    rx.recv_timeout(Duration::from_secs(10)).expect("b started");
    Running {
        stop,
        task: Some(task),
    }
}

/// The east-west gateway stand-in on 10.1.0.1:15008: it routes
/// `echo.default.svc.cluster.local:80` to ztunnel B's 10.2.0.2:15008,
/// relaying the inner stream untouched, and records every outer authority.
fn gateway(ns: &NetNs, ca: Arc<LocalCa>, seen: Arc<Mutex<Vec<String>>>) -> Running {
    let stop = Arc::new(tokio::sync::Notify::new());
    let sp = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let task = ns
        .spawn_async(move || async move {
            let certs = CertManager::new(ca, ManagerConfig::default());
            let id: Identity = GATEWAY_ID.parse().expect("id");
            let tls = Arc::new(certs.server_config(&id).await.expect("gateway tls"));
            let handler = handler_fn(move |req: InboundRequest| {
                let authority = req.authority.to_string();
                seen.lock().expect("lock").push(authority.clone());
                async move {
                    if authority != "echo.default.svc.cluster.local:80" {
                        return Decision::reject(Rejection::BadRequest);
                    }
                    Decision::accept(|mut stream| async move {
                        if let Ok(mut up) = TcpStream::connect((APP, 15008)).await {
                            let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
                        }
                    })
                }
            });
            let mut config = ServerConfig::default();
            config.authority = AuthorityOptions::WITH_HOSTNAMES;
            let server = Server::new(tls, config, handler);
            let l = TcpListener::bind(("10.1.0.1", 15008))
                .await
                .expect("bind gateway");
            let _ = tx.send(());
            server.run(l, async move { sp.notified().await }).await;
        })
        .expect("gateway");
    rx.recv_timeout(Duration::from_secs(10))
        .expect("gateway started");
    Running {
        stop,
        task: Some(task),
    }
}

/// A SOCKS5 CONNECT from sleep (10.1.0.2) to `ip:port`: the reply code,
/// and the echo of `msg` when it succeeded.
async fn socks(ip: [u8; 4], port: u16, msg: &[u8]) -> (u8, Vec<u8>) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind((SLEEP, 0).into()).expect("bind");
    let mut s = sock
        .connect((SLEEP, 15080).into())
        .await
        .expect("connect 15080");
    s.write_all(&[VERSION, 1, 0]).await.expect("greeting");
    let mut method = [0u8; 2];
    s.read_exact(&mut method).await.expect("method");
    let mut req = vec![VERSION, 1, 0, 1];
    req.extend_from_slice(&ip);
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.expect("request");
    let mut reply = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut reply))
        .await
        .expect("reply in time")
        .expect("reply");
    if reply[1] != Reply::Succeeded as u8 {
        return (reply[1], Vec::new());
    }
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    (reply[1], back)
}

#[test]
fn another_network_is_reached_through_its_gateway() {
    let (a, g, b) = (
        NetNs::create_anonymous().expect("netns (run as root)"),
        NetNs::create_anonymous().expect("netns"),
        NetNs::create_anonymous().expect("netns"),
    );
    for ns in [&a, &g, &b] {
        sh(ns, &["ip", "link", "set", "lo", "up"]);
    }
    sh(&g, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    let gp = ns_path(&g);
    sh(
        &a,
        &[
            "ip", "link", "add", "va", "type", "veth", "peer", "name", "ga",
        ],
    );
    sh(&a, &["ip", "link", "set", "ga", "netns", &gp]);
    sh(
        &b,
        &[
            "ip", "link", "add", "vb", "type", "veth", "peer", "name", "gb",
        ],
    );
    sh(&b, &["ip", "link", "set", "gb", "netns", &gp]);
    for (ns, dev, addr) in [
        (&a, "va", "10.1.0.2/24"),
        (&g, "ga", "10.1.0.1/24"),
        (&g, "gb", "10.2.0.1/24"),
        (&b, "vb", "10.2.0.2/24"),
    ] {
        sh(ns, &["ip", "addr", "add", addr, "dev", dev]);
        sh(ns, &["ip", "link", "set", dev, "up"]);
    }
    // Count every packet from network A that reaches network B's side.
    sh(&b, &["nft", "add", "table", "inet", "mnet"]);
    sh(
        &b,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "mnet",
            "watch",
            "{ type filter hook prerouting priority -300; }",
        ],
    );
    sh(
        &b,
        &[
            "nft",
            "add",
            "rule",
            "inet",
            "mnet",
            "watch",
            "ip",
            "saddr",
            "10.1.0.0/24",
            "counter",
        ],
    );

    let ca = Arc::new(LocalCa::generate("cluster.local").expect("ca"));
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _b = network_b(&b, ca.clone(), peers.clone());
    let _g = gateway(&g, ca.clone(), seen.clone());
    let _a = ztunnel_a(&a, ca);

    let results = a
        .spawn_async(|| async {
            // The app's IP is not routable from network A.
            let direct =
                tokio::time::timeout(Duration::from_secs(3), TcpStream::connect((APP, 7000))).await;
            let direct_failed = !matches!(direct, Ok(Ok(_)));
            let via_gateway = socks([10, 96, 0, 1], 80, b"across networks").await;
            let no_gateway = socks([10, 96, 0, 2], 80, b"").await;
            (direct_failed, via_gateway, no_gateway)
        })
        .expect("client")
        .join();
    let (direct_failed, (code, echoed), (refused, _)) = results;
    assert!(direct_failed, "the app's IP is not routable from network A");
    assert_eq!(code, Reply::Succeeded as u8, "through the gateway");
    assert_eq!(echoed, b"across networks");
    assert_eq!(
        *seen.lock().expect("lock"),
        vec!["echo.default.svc.cluster.local:80".to_owned()],
        "one outer CONNECT, to the service hostname; none for the refused one"
    );
    let peers = peers.lock().expect("lock").clone();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(
        peers[0].ip(),
        IpAddr::V4(APP),
        "the app was reached by ztunnel B, not from network A"
    );
    assert_eq!(
        refused,
        Reply::HostUnreachable as u8,
        "a workload on a network without a gateway is refused"
    );
    let out = b
        .output(Command::new("nft").args(["list", "chain", "inet", "mnet", "watch"]))
        .expect("nft");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("packets 0 "),
        "no packet from network A reached network B: {listing}"
    );
}
