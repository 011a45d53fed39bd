//! The small plugin (`ambit-cni-plugin`) with a configuration that names a
//! kubeconfig: the agent is asked first, and an ADD its answer does not
//! settle is handed to the full plugin with the same environment and stdin,
//! whose answer and exit status become the small plugin's.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

use common::{BIN, SMALL, TempDir};
use serde_json::Value;

const PREV: &str = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]}"#;

/// The network configuration: a kubeconfig that does not exist (so the
/// full plugin cannot read the API server either), and `kube_plugin`.
fn conf(run: &Path, kube_plugin: &Path) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"istio-cni","ambient_enabled":true,"cni_agent_run_dir":"{}","kubernetes":{{"kubeconfig":"/nonexistent/ambit-kubeconfig"}},"kube_plugin":"{}","prevResult":{PREV}}}"#,
        run.display(),
        kube_plugin.display()
    )
}

/// Runs the small plugin's ADD: (exit status, stdout).
fn add(stdin: &str) -> (i32, String) {
    let env = [
        ("PATH", "/usr/bin:/bin"),
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0"),
    ];
    let (code, out) = common::run_plugin(SMALL, &env, stdin);
    (code, out.trim().to_owned())
}

/// The answer of an ADD that must wait: exit 1, code 11, a message with
/// `says` in it.
fn assert_try_again((status, out): (i32, String), says: &str) {
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(status, 1, "{out}");
    assert_eq!(v["code"], 11, "{out}");
    assert!(v["msg"].as_str().is_some_and(|m| m.contains(says)), "{out}");
}

/// A stand-in agent on `<run>/pluginevent.sock`: answers one event with
/// `answer` and returns the request it read.
fn agent(run: &Path, answer: &'static str) -> JoinHandle<String> {
    let listener = UnixListener::bind(run.join("pluginevent.sock")).expect("bind");
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then Content-Length bytes of body.
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
        s.write_all(reply.as_bytes()).expect("reply");
        String::from_utf8_lossy(&req).into_owned()
    })
}

/// A full plugin stand-in: records its stdin and `CNI_COMMAND`, prints a
/// marker result and exits with `code`.
fn stand_in(dir: &Path, code: u8) -> PathBuf {
    let path = dir.join(format!("full-{code}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ncat > '{d}/stdin'\necho \"$CNI_COMMAND\" > '{d}/cmd'\necho '{{\"handed\":\"over\"}}'\nexit {code}\n",
            d = dir.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn an_add_the_agent_settles_needs_no_api_server() {
    let tmp = TempDir::new("small-settled");
    let run = tmp.sub("run");
    let full = stand_in(&tmp.0, 0);
    for answer in ["enrolled", "not-ambient"] {
        let seen = agent(&run, answer);
        let (status, out) = add(&conf(&run, &full));
        let req = seen.join().expect("agent");
        std::fs::remove_file(run.join("pluginevent.sock")).expect("rm socket");
        assert_eq!(status, 0, "{answer}: {out}");
        assert_eq!(out, PREV, "{answer}: prevResult passes through");
        assert!(req.starts_with("POST /cmdadd HTTP/1.1\r\n"), "{req}");
        let body: Value =
            serde_json::from_str(req.split_once("\r\n\r\n").expect("body").1).expect("json");
        assert_eq!(body["pod_name"], "web-0");
        assert_eq!(body["pod_namespace"], "shop");
        assert_eq!(body["ips"][0], "10.1.0.5");
        assert!(
            !tmp.0.join("cmd").exists(),
            "{answer}: the full plugin was not run"
        );
    }
}

#[test]
fn an_unsettled_add_is_handed_to_the_full_plugin() {
    let tmp = TempDir::new("small-handed");
    let run = tmp.sub("run");
    // The agent does not know the pod yet: the full plugin decides, and
    // its answer and status are the small plugin's.
    for code in [0u8, 3] {
        let full = stand_in(&tmp.0, code);
        let seen = agent(&run, "unknown");
        let stdin = conf(&run, &full);
        let (status, out) = add(&stdin);
        seen.join().expect("agent");
        std::fs::remove_file(run.join("pluginevent.sock")).expect("rm socket");
        assert_eq!(status, i32::from(code));
        assert_eq!(out, r#"{"handed":"over"}"#);
        assert_eq!(
            std::fs::read_to_string(tmp.0.join("stdin")).expect("stdin"),
            stdin,
            "the same stdin"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.0.join("cmd")).expect("cmd"),
            "ADD\n"
        );
    }
    // No agent at all, with the real full plugin: it cannot read the API
    // server either, so the pod must wait (code 11), in cni-node's words.
    assert_try_again(
        add(&conf(&run, Path::new(BIN))),
        "node agent is not reachable",
    );
    // The full plugin is missing: a clear error naming it, not a crash.
    let missing = tmp.0.join("no-such-plugin");
    assert_try_again(add(&conf(&run, &missing)), &missing.display().to_string());
}

#[test]
fn install_puts_the_full_plugin_beside_the_small_one_when_it_reads_the_api() {
    let tmp = TempDir::new("small-install");
    let (net_d, bin) = (tmp.sub("net.d"), tmp.sub("bin"));
    std::fs::write(
        net_d.join("10-k8s.conflist"),
        r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}"#,
    )
    .expect("conf");
    let cni_node = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--cni-net-dir")
            .arg(&net_d)
            .arg("--cni-bin-dir")
            .arg(&bin)
            .output()
            .expect("cni-node");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cni_node(&[
        "install",
        "--plugin-kubeconfig",
        "/etc/cni/net.d/ambit-kubeconfig",
    ]);
    let read = |p: &Path| std::fs::read(p).expect("read");
    assert_eq!(read(&bin.join("istio-cni")), read(Path::new(SMALL)));
    assert_eq!(read(&bin.join("istio-cni-kube")), read(Path::new(BIN)));
    let list: Value = serde_json::from_slice(&read(&net_d.join("10-k8s.conflist"))).expect("json");
    assert_eq!(
        list["plugins"][1]["kubernetes"]["kubeconfig"],
        "/etc/cni/net.d/ambit-kubeconfig"
    );
    cni_node(&["uninstall"]);
    assert_eq!(std::fs::read_dir(&bin).expect("bin").count(), 0);
}
