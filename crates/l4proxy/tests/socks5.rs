//! The SOCKS5 front door end to end, in a fresh network namespace of its
//! own (only its loopback): a proxy with one workload on 127.0.0.1, its
//! 15001/15006/15008 listeners and 15080, and echo servers. A SOCKS5
//! client's connection goes outbound → HBONE to 127.0.0.1:15008 (this same
//! proxy) → inbound authorization → the echo server; failures come back as
//! RFC 1928 reply codes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_identity::{CertManager, LocalCa, ManagerConfig};
use ambit_l4proxy::socks5::{Reply, VERSION};
use ambit_l4proxy::{Capture, Listeners, Local, Proxy, ProxyConfig, Sockets};
use ambit_mesh::{Config, MeshState};
use ambit_netns::NetNs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ECHO: u16 = 7000;
const DENIED: u16 = 9999;
const CLOSED: u16 = 7001;

const MESH: &str = r#"
workloads:
- {uid: local, name: local, namespace: default, serviceAccount: local, workloadIps: ["127.0.0.1"],
   protocol: HBONE, node: local, services: {"default/echo.default.svc.cluster.local": {80: 7000}}}
services:
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 7000}}
policies:
- {name: deny-9999, namespace: default, action: Deny, rules: [[[{destinationPorts: [9999]}]]]}
"#;

async fn echo_server(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr).await.expect("bind echo")
}

fn serve_echo(l: TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// Greets, sends `request` (from its command byte on), and returns the
/// reply code with the stream.
async fn socks(request: &[u8]) -> (u8, TcpStream) {
    let mut s = TcpStream::connect("127.0.0.1:15080")
        .await
        .expect("connect 15080");
    s.write_all(&[VERSION, 1, 0]).await.expect("greeting");
    let mut method = [0u8; 2];
    s.read_exact(&mut method).await.expect("method");
    assert_eq!(method, [5, 0], "no-auth accepted");
    let mut req = vec![VERSION];
    req.extend_from_slice(request);
    s.write_all(&req).await.expect("request");
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.expect("reply head");
    assert_eq!(head[0], VERSION);
    let rest = match head[3] {
        1 => 6,
        4 => 18,
        t => panic!("reply address type {t}"),
    };
    let mut bound = vec![0u8; rest];
    s.read_exact(&mut bound).await.expect("reply address");
    (head[1], s)
}

fn connect_v4(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut r = vec![1, 0, 1];
    r.extend_from_slice(&ip);
    r.extend_from_slice(&port.to_be_bytes());
    r
}

fn connect_host(host: &str, port: u16) -> Vec<u8> {
    let mut r = vec![1, 0, 3, u8::try_from(host.len()).expect("short host")];
    r.extend_from_slice(host.as_bytes());
    r.extend_from_slice(&port.to_be_bytes());
    r
}

async fn echoes(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, msg);
}

#[test]
fn socks5_connections_take_the_mesh_path() {
    let ns = NetNs::create_anonymous().expect("netns (run as root)");
    let up = ns
        .output(Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("ip");
    assert!(up.status.success(), "lo up");
    let task = ns
        .spawn_async(|| async {
            let state = Arc::new(RwLock::new(MeshState::from_config(
                Config::parse(MESH, "test").expect("mesh"),
            )));
            let ca = Arc::new(LocalCa::generate("cluster.local").expect("ca"));
            let certs = Arc::new(CertManager::new(ca, ManagerConfig::default()));
            let proxy = Proxy::new(
                ProxyConfig {
                    node_name: "local".into(),
                    spoof_source: false,
                    drain_deadline: Duration::from_secs(1),
                    ..ProxyConfig::default()
                },
                state,
                certs,
            );
            let sockets = Sockets::new();
            let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let listeners = Listeners::bind(&sockets, lo, Default::default(), Capture::Redirect)
                .expect("listeners");
            let socks_l = TcpListener::bind("127.0.0.1:15080")
                .await
                .expect("bind 15080");
            let stop = Arc::new(tokio::sync::Notify::new());
            let local = Local::Node("local".into());
            let serve = {
                let (p, s, l, stop) = (proxy.clone(), sockets.clone(), local.clone(), stop.clone());
                tokio::spawn(async move {
                    p.serve(listeners, Capture::Redirect, l, s, async move {
                        stop.notified().await
                    })
                    .await
                })
            };
            let serve_socks = {
                let (p, stop) = (proxy.clone(), stop.clone());
                tokio::spawn(async move {
                    p.serve_socks5(
                        socks_l,
                        local,
                        sockets,
                        async move { stop.notified().await },
                    )
                    .await
                })
            };
            serve_echo(echo_server(SocketAddr::new(lo, ECHO)).await);
            serve_echo(echo_server(SocketAddr::new(lo, DENIED)).await);
            let v6 = TcpListener::bind("[::1]:7000").await.ok();
            let have_v6 = v6.is_some();
            if let Some(l) = v6 {
                serve_echo(l);
            }

            // IPv4, a workload on this node: HBONE to ourselves.
            let (code, mut s) = socks(&connect_v4([127, 0, 0, 1], ECHO)).await;
            assert_eq!(code, Reply::Succeeded as u8);
            echoes(&mut s, b"over hbone").await;
            echoes(&mut s, &vec![9u8; 1 << 20]).await;
            drop(s);
            assert!(
                proxy.client().connections_opened() >= 1,
                "the stream went through the HBONE client"
            );

            // A service hostname, resolved from the mesh state to its VIP.
            let (code, mut s) = socks(&connect_host("echo.default.svc.cluster.local", 80)).await;
            assert_eq!(code, Reply::Succeeded as u8);
            echoes(&mut s, b"by name").await;
            drop(s);
            let (code, mut s) = socks(&connect_host("echo.default", 80)).await;
            assert_eq!(code, Reply::Succeeded as u8);
            echoes(&mut s, b"short name").await;
            drop(s);

            // Unknown host, policy deny (401 inbound), refused (503 inbound).
            let (code, _) = socks(&connect_host("nope.example.com", 80)).await;
            assert_eq!(code, Reply::HostUnreachable as u8);
            let (code, _) = socks(&connect_v4([127, 0, 0, 1], DENIED)).await;
            assert_eq!(code, Reply::NotAllowed as u8);
            let (code, _) = socks(&connect_v4([127, 0, 0, 1], CLOSED)).await;
            assert_eq!(code, Reply::ConnectionRefused as u8);
            // ztunnel's own ports are never a destination.
            let (code, _) = socks(&connect_v4([127, 0, 0, 1], 15008)).await;
            assert_eq!(code, Reply::NotAllowed as u8);

            // Unsupported command and address type.
            let (code, _) = socks(&[2, 0, 1, 127, 0, 0, 1, 0, 80]).await;
            assert_eq!(code, Reply::CommandNotSupported as u8);
            let (code, _) = socks(&[1, 0, 9, 1, 2, 3]).await;
            assert_eq!(code, Reply::AddressTypeNotSupported as u8);

            // A bad greeting is closed without a reply, and the listener
            // keeps serving.
            let mut bad = TcpStream::connect("127.0.0.1:15080")
                .await
                .expect("connect");
            bad.write_all(b"GET / HTTP/1.1\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 8];
            let n = tokio::time::timeout(Duration::from_secs(10), bad.read(&mut buf))
                .await
                .expect("closed in time")
                .unwrap_or(0);
            assert_eq!(n, 0, "no reply to a non-SOCKS5 client");

            // IPv6: ::1 is not a mesh address. ztunnel's loopback is not the
            // client's, and dialling it could loop back into ztunnel: refused
            // (the self-loop guard), although something listens there.
            if have_v6 {
                let mut r = vec![1, 0, 4];
                r.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
                r.extend_from_slice(&ECHO.to_be_bytes());
                let (code, _) = socks(&r).await;
                assert_eq!(code, Reply::NotAllowed as u8);
            }

            // Both ends of the tunnel counted the meshed connection.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let m = proxy.metrics().encode();
            assert!(m.contains(r#"reporter="source""#), "{m}");
            assert!(m.contains(r#"reporter="destination""#), "{m}");
            assert!(
                m.contains(r#"connection_security_policy="mutual_tls""#),
                "{m}"
            );
            stop.notify_waiters();
            let _ = serve.await;
            let _ = serve_socks.await;
            have_v6
        })
        .expect("task in netns");
    let had_v6 = task.join();
    if !had_v6 {
        eprintln!("note: no IPv6 loopback in the test namespace; the IPv6 case was skipped");
    }
}
