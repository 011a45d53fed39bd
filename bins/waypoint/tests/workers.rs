//! The waypoint binary sizes its per-core workers as Istio's agent sizes
//! Envoy (`--concurrency`, `PROXY_CONFIG`'s `concurrency`,
//! `ISTIO_CPU_LIMIT`), runs one thread per worker, refuses a bad
//! `PROXY_CONFIG` as bad configuration, and drains on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A temp directory with a local CA and an empty mesh, removed on drop.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(tag: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("ambit-waypoint-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = ambit_identity::LocalCa::generate("cluster.local").expect("ca");
    std::fs::write(dir.join("ca.pem"), ca.root_pem()).expect("ca.pem");
    std::fs::write(dir.join("ca-key.pem"), ca.key_pem()).expect("ca-key.pem");
    std::fs::write(dir.join("mesh.yaml"), "workloads: []\nservices: []\n").expect("mesh");
    Dir(dir)
}

/// The waypoint on loopback ports of the kernel's choosing, with `env`.
fn command(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_waypoint"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LOCAL_XDS_PATH", dir.join("mesh.yaml"))
        .env("LOCAL_CA_CERT", dir.join("ca.pem"))
        .env("LOCAL_CA_KEY", dir.join("ca-key.pem"))
        .env("WAYPOINT_ROUTES_FROM", "file")
        .env("WAYPOINT_HBONE_ADDRESS", "127.0.0.1:0")
        .env("ADMIN_ADDRESS", "127.0.0.1:0")
        .env("STATS_ADDRESS", "127.0.0.1:0")
        .env("READINESS_ADDRESS", "127.0.0.1:0")
        .env("DRAIN_DURATION", "1")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A running waypoint, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the waypoint and returns it with its "waypoint ready" log line.
fn start_ready(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (Running, String) {
    let mut child = Running(command(dir, env, args).spawn().expect("spawn waypoint"));
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("waypoint ready") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the waypoint logs `waypoint ready`");
    (child, line)
}

/// The names of the process's threads.
fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect()
}

fn workers_of(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
    v["workers"].as_u64().expect("a workers field")
}

fn sigterm_exits_zero(mut r: Running) {
    let pid = r.0.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let t = Instant::now();
    loop {
        if let Some(status) = r.0.try_wait().expect("wait") {
            assert!(status.success(), "exit after SIGTERM: {status}");
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn workers_follow_istio_settings_and_each_has_a_thread() {
    let dir = setup("sizes");
    for (env, args, want) in [
        (vec![("PROXY_CONFIG", r#"{"concurrency": 3}"#)], vec![], 3),
        (
            vec![("ISTIO_CPU_LIMIT", "1500m"), ("PROXY_CONFIG", "{}")],
            vec![],
            2,
        ),
        (
            vec![("PROXY_CONFIG", r#"{"concurrency": 3}"#)],
            vec!["--concurrency", "1"],
            1,
        ),
    ] {
        let (r, line) = start_ready(&dir.0, &env, &args);
        assert_eq!(workers_of(&line), want, "{env:?} {args:?}: {line}");
        let names = threads(r.0.id());
        let n = names.iter().filter(|n| n.starts_with("waypoint-")).count();
        assert_eq!(n as u64, want, "worker threads: {names:?}");
        sigterm_exits_zero(r);
    }
}

#[test]
fn a_bad_proxy_config_is_bad_configuration() {
    let dir = setup("bad");
    let out = command(
        &dir.0,
        &[("PROXY_CONFIG", r#"{"concurrency": "many"}"#)],
        &[],
    )
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid configuration") && err.contains("PROXY_CONFIG concurrency"),
        "{err}"
    );
}
