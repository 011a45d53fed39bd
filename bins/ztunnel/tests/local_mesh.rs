//! End to end: the local mesh of `examples/local-mesh` with this crate's
//! ztunnel binary — traffic, identities, admin endpoints and bad input.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use ambit_hbone::{Client, ClientConfig, ConnectRequest};
use ambit_identity::{CertManager, Identity, LocalCa, ManagerConfig};
use ambit_netns::NetNs;
use ambit_testbed::{DEFAULT_MESH, LocalMesh, VIP, tcpapp};

fn mesh() -> LocalMesh {
    LocalMesh::start(
        Path::new(env!("CARGO_BIN_EXE_ztunnel")),
        DEFAULT_MESH,
        |_| {},
    )
    .expect("local mesh")
}

fn http_get(ns: &NetNs, addr: &str, path: &str) -> String {
    http(ns, "GET", addr, path)
}

fn http(ns: &NetNs, method: &str, addr: &str, path: &str) -> String {
    let mut s = ns
        .tcp_connect(addr.parse().expect("addr"))
        .expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut r = String::new();
    s.read_to_string(&mut r).expect("read");
    r
}

/// The local mesh's CA, loaded from the files it wrote.
fn mesh_ca(m: &LocalMesh) -> LocalCa {
    LocalCa::from_pem(
        &std::fs::read_to_string(m.dir.join("ca.pem")).expect("ca"),
        &std::fs::read_to_string(m.dir.join("ca-key.pem")).expect("key"),
        "cluster.local",
    )
    .expect("ca")
}

/// The SPIFFE identity of service account `sa` in `default`.
fn id(sa: &str) -> Identity {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .expect("id")
}

#[test]
fn traffic_identities_and_endpoints() {
    let m = mesh();
    let vip: SocketAddr = VIP.parse().expect("vip");
    let f = tcpapp::drive(m.sleep(), vip, 20, 1 << 20).expect("drive");
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
    let inbound = m
        .wait_access_log(|n, v| n == "node-b" && v["direction"] == "inbound")
        .expect("an inbound access log on node-b");
    assert_eq!(
        inbound.1["src.identity"],
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(
        inbound.1["dst.identity"],
        "spiffe://cluster.local/ns/default/sa/productpage"
    );
    // istio/ztunnel's access-log shape: flat JSON, its field names and types.
    let line = &inbound.1;
    assert_eq!(line["scope"], "access");
    assert_eq!(line["message"], "connection complete");
    for key in [
        "src.addr",
        "src.workload",
        "src.namespace",
        "src.identity",
        "dst.addr",
        "dst.hbone_addr",
        "dst.workload",
        "dst.namespace",
        "dst.identity",
        "direction",
        "duration",
    ] {
        assert!(line[key].is_string(), "{key} in {line}");
    }
    for key in ["bytes_sent", "bytes_recv"] {
        assert!(line[key].is_u64(), "{key} in {line}");
    }
    assert!(line["duration"].as_str().is_some_and(|d| d.ends_with("ms")));
    assert!(line.get("error").is_none(), "no error on success: {line}");
    assert_eq!(line["dst.namespace"], "default");
    assert!(
        line["dst.addr"]
            .as_str()
            .is_some_and(|a| a.ends_with(":15008")),
        "{line}"
    );
    let outbound = m
        .access_logs()
        .into_iter()
        .find(|(n, v)| {
            n == "node-a" && v["direction"] == "outbound" && v["dst.service"].is_string()
        })
        .expect("an outbound access log with the service on node-a");
    assert_eq!(
        outbound.1["dst.service"],
        "productpage.default.svc.cluster.local"
    );

    // A connection to a port nothing listens on fails at node b's dial:
    // istio_tcp_connections_failed counts it.
    if let Ok(mut s) = m
        .sleep()
        .ns()
        .tcp_connect("10.244.1.3:9".parse().expect("addr"))
    {
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    m.wait_access_log(|n, v| n == "node-b" && v["error"].is_string())
        .expect("a failed inbound connection logged on node-b");
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
    // Every label Istio's dashboards and Kiali group by, in a scrape.
    for label in [
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_service",
        "destination_service_namespace",
        "destination_service_name",
        "destination_workload",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_cluster",
        "request_protocol",
        "response_flags",
        "connection_security_policy",
    ] {
        assert!(metrics.contains(&format!("{label}=\"")), "{label} missing");
    }
    assert!(metrics.contains("connection_security_policy=\"mutual_tls\""));
    assert!(
        metrics.contains("istio_build{component=\"ztunnel\",tag=\""),
        "{metrics}"
    );
    // istio/ztunnel's other families: failures, the xDS client, the in-pod
    // workload manager, and the process.
    for family in [
        "istio_tcp_connections_failed_total{reporter=\"destination\"",
        "istio_xds_connection_terminations_total{reason=\"Complete\"}",
        "istio_message_types_total{url=\"type.googleapis.com/istio.workload.Address\"}",
        "istio_total_messages_size_total ",
        "workload_manager_inpod_active_proxy_count ",
        "workload_manager_inpod_proxies_started_total ",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_threads ",
        "process_start_time_seconds ",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    assert!(http_get(zt_b, "127.0.0.1:15021", "/healthz/ready").starts_with("HTTP/1.1 200"));
    // Istio's /logging: list, change, change a module, reset; POST only.
    let admin = "127.0.0.1:15000";
    assert!(http(zt_b, "POST", admin, "/logging").ends_with("current log level is info\n"));
    assert!(
        http(zt_b, "POST", admin, "/logging?level=debug").ends_with("current log level is debug\n")
    );
    assert!(
        http(
            zt_b,
            "POST",
            admin,
            "/logging?level=ambit_l4proxy::inbound:trace"
        )
        .ends_with("current log level is debug,ambit_l4proxy::inbound=trace\n")
    );
    assert!(http(zt_b, "POST", admin, "/logging?level=loud").starts_with("HTTP/1.1 400"));
    assert!(http(zt_b, "POST", admin, "/logging?reset").ends_with("current log level is info\n"));
    assert!(http_get(zt_b, admin, "/logging").starts_with("HTTP/1.1 405"));
}

#[test]
fn bad_hbone_requests_are_refused() {
    let m = mesh();
    let ca = mesh_ca(&m);
    let zt_a = m.cluster.pod(0, 0);
    let (pp, sleep) = (id("productpage"), id("sleep"));
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

/// Security: a peer holding a valid certificate cannot claim another
/// source address with `forwarded`. Only a waypoint that mesh state names
/// for the destination is believed; here the peer is ztunnel a's namespace
/// claiming to be sleep (10.244.0.3), and productpage must see the real
/// TCP peer instead.
#[test]
fn forged_forwarded_source_is_not_believed() {
    use tokio::io::AsyncReadExt;
    let m = mesh();
    let ca = mesh_ca(&m);
    let zt_a = m.cluster.pod(0, 0);
    let real = zt_a.ip().to_string();
    let (pp, sleep) = (id("productpage"), id("sleep"));
    let greeting = zt_a
        .spawn_async(move || async move {
            let client = Client::new(
                ClientConfig::default(),
                CertManager::new(ca, ManagerConfig::default()),
            );
            let forged = ambit_hbone::ConnectHeaders {
                forwarded: Some(ambit_hbone::Forwarded::new(
                    "10.244.0.3:40000".parse().expect("addr"),
                )),
                ..Default::default()
            };
            let req = ConnectRequest::new(
                sleep,
                vec![pp],
                "10.244.1.3:15008".parse().expect("addr"),
                "10.244.1.3:9080".parse::<SocketAddr>().expect("a"),
            )
            .with_headers(forged);
            let mut s = client.connect(req).await.expect("connect");
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).await.expect("read") == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            String::from_utf8_lossy(&line).into_owned()
        })
        .expect("client")
        .join();
    assert_eq!(greeting, format!("productpage-v1 saw source {real}"));
}

/// Security: an app that dials ztunnel's own address on its capture port
/// is refused at once instead of being passed back into ztunnel again (a
/// loop that chains until descriptors run out).
#[test]
fn connection_to_ztunnel_itself_is_refused_not_looped() {
    use std::time::{Duration, Instant};
    let m = mesh();
    let zt_a = m.cluster.pod(0, 0).ip();
    let to = SocketAddr::new(zt_a.into(), 15001);
    let started = Instant::now();
    let got = (|| -> std::io::Result<usize> {
        let mut s = m
            .sleep()
            .ns()
            .tcp_connect(to)
            .map_err(std::io::Error::other)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = s.write_all(b"hello");
        let mut buf = [0u8; 16];
        s.read(&mut buf)
    })();
    // Closed (EOF or reset) well before the 5 s read timeout.
    assert!(
        matches!(got, Ok(0))
            || matches!(&got, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut),
        "{got:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    let (_, log) = m
        .wait_access_log(|n, v| {
            n == "node-a" && v["error"].as_str().is_some_and(|r| r.contains("self-loop"))
        })
        .expect("a self-loop refusal in ztunnel a's access log");
    assert_eq!(log["dst.addr"], to.to_string());
    // Exactly one connection was seen: no chain.
    let outbound = m
        .access_logs()
        .into_iter()
        .filter(|(n, v)| n == "node-a" && v["dst.addr"] == to.to_string())
        .count();
    assert_eq!(outbound, 1);
}

/// One long-lived connection from sleep to productpage-v1: returns a
/// sender of messages and a receiver of their echoes.
fn long_lived(
    m: &LocalMesh,
) -> (
    std::sync::mpsc::Sender<Vec<u8>>,
    std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (etx, erx) = std::sync::mpsc::channel();
    let to: SocketAddr = "10.244.1.3:9080".parse().expect("addr");
    let task = m
        .sleep()
        .spawn_async(move || async move {
            let mut s = match tokio::net::TcpStream::connect(to).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = etx.send(Err(e));
                    return;
                }
            };
            // The greeting line.
            let mut b = [0u8; 1];
            loop {
                match s.read(&mut b).await {
                    Ok(1) if b[0] != b'\n' => continue,
                    _ => break,
                }
            }
            // This thread runs only this task, so blocking between messages is fine.
            while let Ok(msg) = rx.recv() {
                let r = async {
                    s.write_all(&msg).await?;
                    let mut back = vec![0u8; msg.len()];
                    s.read_exact(&mut back).await?;
                    Ok(back)
                }
                .await;
                let failed = r.is_err();
                let _ = etx.send(r);
                if failed {
                    break;
                }
            }
        })
        .expect("client");
    std::mem::forget(task);
    (tx, erx)
}

fn ping(
    tx: &std::sync::mpsc::Sender<Vec<u8>>,
    rx: &std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    msg: &[u8],
) {
    tx.send(msg.to_vec()).expect("send");
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("echo in time")
        .expect("echo");
    assert_eq!(got, msg);
}

#[test]
fn control_plane_restart_and_certificate_rotation_lose_nothing() {
    // Certificates live 4 s and are refreshed at half life, while traffic runs.
    let mut m = LocalMesh::start_with(
        Path::new(env!("CARGO_BIN_EXE_ztunnel")),
        DEFAULT_MESH,
        4,
        |_| {},
    )
    .expect("local mesh");
    let (tx, rx) = long_lived(&m);
    ping(&tx, &rx, b"before");
    let pp: SocketAddr = "10.244.1.3:9080".parse().expect("addr");

    // The control plane goes away: existing and new connections still work.
    m.stop_control_plane();
    ping(&tx, &rx, b"control plane down");
    assert_eq!(tcpapp::drive(m.sleep(), pp, 5, 0).expect("drive").errors, 0);

    // It comes back empty-handed; the ztunnels resync, and a change pushed
    // now (a DENY for sleep) takes effect for new connections.
    m.restart_control_plane().expect("restart");
    ping(&tx, &rx, b"control plane back");
    let deny = ambit_mesh::Config::parse(
        "policies:\n- {name: deny-sleep, namespace: default, action: Deny, rules: [[[{principals: [{Exact: cluster.local/ns/default/sa/sleep}]}]]]}\n",
        "deny",
    )
    .expect("policy");
    let cp = m.control_plane.as_ref().expect("control plane");
    ambit_testbed::publish(&cp.store, &deny);
    let mut denied = false;
    for _ in 0..50 {
        if tcpapp::drive(m.sleep(), pp, 1, 0).expect("drive").errors == 1 {
            denied = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        denied,
        "the policy pushed after the restart never took effect"
    );
    cp.store.remove(
        "type.googleapis.com/istio.security.Authorization",
        "default/deny-sleep",
    );
    let mut allowed = false;
    for _ in 0..50 {
        if tcpapp::drive(m.sleep(), pp, 1, 0).expect("drive").errors == 0 {
            allowed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(allowed, "removing the policy did not restore traffic");
    // The DENY closed the long-lived connection (the policy watcher; see
    // `a_new_deny_cuts_an_established_connection`): open another one.
    let (tx, rx) = long_lived(&m);
    ping(&tx, &rx, b"after the policy");

    // Run past two certificate lifetimes with traffic throughout.
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < std::time::Duration::from_secs(9) {
        ping(&tx, &rx, format!("tick {n}").as_bytes());
        assert_eq!(
            tcpapp::drive(m.sleep(), pp, 2, 0).expect("drive").errors,
            0,
            "new connections during rotation"
        );
        n += 1;
    }
    ping(&tx, &rx, b"after rotation");
    drop(tx);
}

/// Security: authorization is not only checked at connect time. A DENY
/// pushed while a connection is open closes it within a second, on the
/// destination's ztunnel (Istio's policy watcher); removing the policy lets
/// new connections in again.
#[test]
fn a_new_deny_cuts_an_established_connection() {
    use std::time::{Duration, Instant};
    let m = mesh();
    let (tx, rx) = long_lived(&m);
    ping(&tx, &rx, b"before the policy");
    let deny = ambit_mesh::Config::parse(
        "policies:\n- {name: deny-sleep, namespace: default, action: Deny, rules: [[[{principals: [{Exact: cluster.local/ns/default/sa/sleep}]}]]]}\n",
        "deny",
    )
    .expect("policy");
    let cp = m.control_plane.as_ref().expect("control plane");
    let pushed = Instant::now();
    ambit_testbed::publish(&cp.store, &deny);
    // Ping until the connection fails; it must within 1 s of the push.
    let mut cut = None;
    while pushed.elapsed() < Duration::from_secs(5) {
        tx.send(b"still there?".to_vec()).expect("send");
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(_)) => std::thread::sleep(Duration::from_millis(20)),
            Ok(Err(_)) | Err(_) => {
                cut = Some(pushed.elapsed());
                break;
            }
        }
    }
    let cut = cut.expect("the established connection was never closed");
    assert!(cut < Duration::from_secs(1), "closed after {cut:?}");
    let logged = m.access_logs().into_iter().any(|(n, v)| {
        n == "node-b"
            && v["error"]
                .as_str()
                .is_some_and(|r| r.contains("policy change"))
    });
    assert!(logged, "node b's access log names the policy change");
}

/// Lifecycle: a rolling upgrade of node b's ztunnel (the new process
/// starts beside the old one, shares its listeners through SO_REUSEPORT,
/// and the old one drains on SIGTERM) refuses or resets no connection
/// under continuous new-connection load.
#[test]
fn node_mode_upgrade_refuses_no_connection() {
    let mut m = mesh();
    let c = m.churn_across_upgrade(1).expect("upgrade under load");
    eprintln!("connections across the upgrade: {c:?}");
    assert!(c.ok > 50, "load ran: {c:?}");
    assert_eq!(c.failed, 0, "{c:?}");
    let pp: SocketAddr = "10.244.1.3:9080".parse().expect("addr");
    assert_eq!(tcpapp::drive(m.sleep(), pp, 5, 0).expect("drive").errors, 0);
}

#[test]
fn ztunnel_restart_reestablishes_traffic() {
    let mut m = mesh();
    let pp: SocketAddr = "10.244.1.3:9080".parse().expect("addr");
    assert_eq!(tcpapp::drive(m.sleep(), pp, 3, 0).expect("drive").errors, 0);
    // A crash: node b's ztunnel is killed without draining, then replaced.
    // Its rules stay in place and point at the new process, which binds the
    // same transparent listeners; new connections work again.
    m.restart_ztunnel(1).expect("restart");
    let f = tcpapp::drive(m.sleep(), pp, 10, 1 << 20).expect("drive");
    assert_eq!(f.errors, 0, "{f:?}");
    assert!(
        f.greetings
            .iter()
            .all(|g| g.ends_with("saw source 10.244.0.3")),
        "{:?}",
        f.greetings
    );
}
