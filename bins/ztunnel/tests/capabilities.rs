//! Least privilege: ztunnel started as root (full capabilities) keeps only
//! what it uses, in every thread — `CAP_NET_ADMIN` in node mode, plus
//! `CAP_SYS_ADMIN` in in-pod mode — and the bounding, inheritable and
//! ambient sets do not let anything back.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_identity::LocalCa;
use ambit_netns::NetNs;
use ambit_netns::harness::ChildGuard;

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;

const MESH: &str = r#"
workloads:
- {uid: local, name: local, namespace: default, serviceAccount: local, workloadIps: ["127.0.0.1"],
   protocol: HBONE, node: local}
"#;

fn caps_of(status: &str, set: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{set}:\t")))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {set} in {status}"))
}

/// Starts ztunnel as root in a fresh namespace, waits until its readiness
/// port answers, and returns `/proc/<pid>/task/*/status` of every thread.
fn thread_statuses(name: &str, inpod: bool) -> Vec<String> {
    let own = std::fs::read_to_string("/proc/self/status").expect("status");
    assert_eq!(
        caps_of(&own, "CapEff") & (CAP_NET_ADMIN | CAP_SYS_ADMIN),
        CAP_NET_ADMIN | CAP_SYS_ADMIN,
        "the test must run as root"
    );
    let ns = NetNs::create_anonymous().expect("netns");
    ns.output(Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("lo up");
    let dir = std::env::temp_dir().join(format!("ambit-caps-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = LocalCa::generate("cluster.local").expect("ca");
    std::fs::write(dir.join("ca.pem"), ca.root_pem()).expect("ca.pem");
    std::fs::write(dir.join("ca-key.pem"), ca.key_pem()).expect("key");
    std::fs::write(dir.join("mesh.yaml"), MESH).expect("mesh");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ztunnel"));
    cmd.env_clear()
        .env("NODE_NAME", "local")
        .env("LOCAL_XDS_PATH", dir.join("mesh.yaml"))
        .env("LOCAL_CA_CERT", dir.join("ca.pem"))
        .env("LOCAL_CA_KEY", dir.join("ca-key.pem"))
        .env("INPOD_ENABLED", inpod.to_string())
        .env("INPOD_UDS", dir.join("absent.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = ChildGuard::new(ns.spawn_command(&mut cmd).expect("spawn"));
    let pid = child.child().id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            child.child().try_wait().expect("wait").is_none(),
            "ztunnel exited"
        );
        if let Ok(mut s) = ns.tcp_connect("127.0.0.1:15021".parse().expect("addr")) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = [0u8; 12];
            if s.read(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "ztunnel not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let statuses: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .collect();
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    statuses
}

fn check(name: &str, inpod: bool, want: u64) {
    let statuses = thread_statuses(name, inpod);
    assert!(statuses.len() > 1, "a multi-threaded runtime");
    for s in &statuses {
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(caps_of(s, set), want, "{name}: {set} of a thread:\n{s}");
        }
        for set in ["CapInh", "CapAmb"] {
            assert_eq!(caps_of(s, set), 0, "{name}: {set} of a thread:\n{s}");
        }
    }
    println!(
        "{name}: {} threads, CapEff/CapPrm/CapBnd {want:016x}, CapInh/CapAmb 0",
        statuses.len()
    );
}

#[test]
fn node_mode_keeps_only_net_admin() {
    check("node", false, CAP_NET_ADMIN);
}

#[test]
fn inpod_mode_keeps_net_admin_and_sys_admin() {
    check("inpod", true, CAP_NET_ADMIN | CAP_SYS_ADMIN);
}
