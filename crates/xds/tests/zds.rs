//! ZDS over a real unix SOCK_SEQPACKET socket: a netns descriptor crosses
//! it and the receiver enters that namespace. Needs root (creates network
//! namespaces).

use std::{
    os::fd::AsFd,
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
};

use ambit_netns::NetNs;
use ambit_xds::{
    HandlerError, ZdsClient, ZdsError, ZdsHandler, ZdsListener, ZdsMessage,
    proto::istio::workload::zds::{Version, WorkloadInfo},
    zds::SnapshotItem,
};

/// A socket path in a directory of its own, removed (with the directory)
/// when the guard drops — also when the test fails.
fn socket_path(name: &str) -> (TempDir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ambit-xds-{}-{name}", std::process::id()));
    let path = dir.join("ztunnel.sock");
    (TempDir(dir), path)
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Records what it receives; for adds, enters the received namespace and
/// lists its links there.
#[derive(Default, Clone)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
}

impl ZdsHandler for Recorder {
    async fn handle(&mut self, message: ZdsMessage) -> Result<(), HandlerError> {
        let entry = match message {
            ZdsMessage::Add { uid, info, netns } => {
                if uid == "fail-me" {
                    return Err("cannot open listeners in fail-me".into());
                }
                let ns = NetNs::from_fd(netns, format!("pod {uid}"))?;
                let out = ns.output(Command::new("ip").args(["-o", "link", "show"]))?;
                let links = String::from_utf8_lossy(&out.stdout);
                let names: Vec<&str> = links
                    .lines()
                    .filter_map(|l| l.split(": ").nth(1))
                    .map(|n| n.split('@').next().unwrap_or(n))
                    .collect();
                format!(
                    "add {uid} {} links={}",
                    info.map(|i| i.name).unwrap_or_default(),
                    names.join(",")
                )
            }
            other => other.describe(),
        };
        self.log.lock().expect("lock").push(entry);
        Ok(())
    }
}

#[tokio::test]
async fn a_netns_crosses_the_socket_and_can_be_entered() {
    let pod = NetNs::create_anonymous().expect("netns (needs root)");
    let out = pod
        .output(Command::new("ip").args([
            "link", "add", "podveth0", "type", "veth", "peer", "name", "podveth1",
        ]))
        .expect("ip link add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (_dir, path) = socket_path("cross");
    let listener = ZdsListener::bind(&path).expect("bind");
    let recorder = Recorder::default();
    let mut handler = recorder.clone();
    let client_path = path.clone();
    let client = tokio::spawn(async move {
        let client = ZdsClient::connect(&client_path).await.expect("connect");
        client.run(&mut handler).await
    });

    let mut conn = listener.accept().await.expect("accept");
    assert_eq!(conn.version(), Version::V1);
    let info = WorkloadInfo {
        name: "web-0".into(),
        namespace: "default".into(),
        service_account: "web".into(),
    };
    conn.send_snapshot([
        SnapshotItem::Add {
            uid: "uid-1".into(),
            info: Some(info.clone()),
            netns: pod.as_fd(),
        },
        SnapshotItem::Keep {
            uid: "uid-0".into(),
        },
    ])
    .await
    .expect("snapshot acked");
    conn.del("uid-0").await.expect("del acked");

    // The handler's error comes back in the ack.
    let err = conn
        .add("fail-me", None, pod.as_fd())
        .await
        .expect_err("rejected");
    assert!(
        matches!(&err, ZdsError::Rejected { request, error }
            if request == "add fail-me" && error == "cannot open listeners in fail-me"),
        "{err}"
    );

    drop(conn);
    client.await.expect("join").expect("client ends cleanly");
    let log = recorder.log.lock().expect("lock").clone();
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(log[0].starts_with("add uid-1 web-0 links="), "{log:?}");
    let links = log[0].rsplit("links=").next().unwrap_or_default();
    assert!(links.split(',').any(|l| l == "podveth0"), "{log:?}");
    assert!(links.split(',').any(|l| l == "podveth1"), "{log:?}");
    assert!(links.split(',').any(|l| l == "lo"), "{log:?}");
    assert_eq!(&log[1..], ["keep uid-0", "snapshot-sent", "del uid-0"]);
    drop(listener);
    assert!(!path.exists(), "the listener removes its socket file");
}

#[tokio::test]
async fn bind_refuses_a_regular_file_and_replaces_a_stale_socket() {
    let (_dir, path) = socket_path("bind");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    std::fs::write(&path, b"not a socket").expect("file");
    let err = ZdsListener::bind(&path).expect_err("regular file");
    assert!(err.to_string().contains("not a socket"), "{err}");
    std::fs::remove_file(&path).expect("rm");

    let first = ZdsListener::bind(&path).expect("bind");
    std::mem::forget(first); // leave a stale socket file behind
    let second = ZdsListener::bind(&path).expect("rebind over a stale socket");
    drop(second);
}

/// A ztunnel that says hello and then never acks cannot block the agent:
/// each request fails with a timeout after `ACK_TIMEOUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_ztunnel_times_out_instead_of_blocking_the_agent() {
    let (_dir, path) = socket_path("silent");
    let listener = ZdsListener::bind(&path).expect("bind");
    let client_path = path.clone();
    let client = tokio::spawn(async move {
        let c = ZdsClient::connect(&client_path).await.expect("connect");
        // Hold the connection open without ever reading or acking.
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        drop(c);
    });
    let mut conn = listener.accept().await.expect("accept");
    let started = std::time::Instant::now();
    let err = conn.del("pod-1").await.expect_err("no ack");
    assert!(matches!(err, ZdsError::Timeout { .. }), "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= ambit_xds::zds::ACK_TIMEOUT && waited < ambit_xds::zds::ACK_TIMEOUT * 2,
        "{waited:?}"
    );
    client.abort();
}
