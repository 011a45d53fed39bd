//! The plugin binaries (`cni-node` and the small `ambit-cni-plugin`) under
//! bad input: CNI error objects with the spec's codes on stdout, exit
//! status 1; the agent refuses bad flags with 64.

mod common;

use std::process::Command;

use common::{BIN, SMALL};
use serde_json::Value;

fn plugin(bin: &str, env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
    let (code, out) = common::run_plugin(bin, env, stdin);
    (code, serde_json::from_str(&out).unwrap_or(Value::Null))
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"istio-cni","ambient_enabled":true,"cni_agent_run_dir":"/nonexistent-ambit-run","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]}}"#;

fn env(cmd: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"),
    ]
}

/// (what, environment, stdin, expected code).
type Case = (&'static str, Vec<(&'static str, &'static str)>, String, u64);

#[test]
fn bad_input_gives_cni_error_objects() {
    let cases: Vec<Case> = vec![
        ("malformed json", env("ADD"), "{\"cniVersion\":".into(), 6),
        (
            "missing CNI_ARGS",
            env("ADD")
                .into_iter()
                .filter(|(k, _)| *k != "CNI_ARGS")
                .collect(),
            CONF.into(),
            4,
        ),
        (
            "unsupported version",
            env("ADD"),
            CONF.replace(
                "\"cniVersion\":\"1.0.0\",\"name\"",
                "\"cniVersion\":\"0.2.0\",\"name\"",
            ),
            1,
        ),
        (
            "unknown command",
            env("ADD")
                .into_iter()
                .map(|(k, v)| {
                    if k == "CNI_COMMAND" {
                        (k, "RESTART")
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            CONF.into(),
            4,
        ),
        ("agent not running", env("ADD"), CONF.into(), 11),
    ];
    for bin in [BIN, SMALL] {
        for (what, env, stdin, code) in &cases {
            let (status, v) = plugin(bin, env, stdin);
            assert_eq!(status, 1, "{bin}: {what}: exit status");
            assert_eq!(v["code"], *code, "{bin}: {what}: {v}");
            assert!(
                v["msg"].as_str().is_some_and(|m| !m.is_empty()),
                "{bin}: {what}: {v}"
            );
            assert!(v["cniVersion"].is_string(), "{bin}: {what}: {v}");
        }
        // DEL with the agent away still succeeds, twice.
        for _ in 0..2 {
            let (status, _) = plugin(bin, &env("DEL"), CONF);
            assert_eq!(status, 0, "{bin}");
        }
        let (status, v) = plugin(
            bin,
            &[("CNI_COMMAND", "VERSION")],
            r#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(status, 0, "{bin}");
        assert_eq!(v["cniVersion"], "0.4.0", "{bin}");
    }
}

#[test]
fn agent_rejects_bad_config_with_64() {
    let out = Command::new(BIN)
        .args([
            "run",
            "--mode",
            "node",
            "--run-dir",
            "/nonexistent-ambit-run",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ztunnel-netns"));
    let out = Command::new(BIN)
        .args(["run", "--mode", "inpod", "--netns", "/nonexistent/netns"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN).arg("--help").output().expect("help");
    assert!(out.status.success());
}

/// Deletes a named namespace on drop.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = ambit_netns::NetNs::delete_named(&self.0);
    }
}

#[test]
fn kubernetes_source_failures_are_clear_and_apply_nothing() {
    let name = format!("ambit-kube-bad-{}", std::process::id());
    let ns = ambit_netns::NetNs::create_named(&name).expect("netns");
    let _guard = NsGuard(name.clone());
    let dir = common::TempDir::new("kube-bad");
    // An API server that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\nclusters:\n- name: t\n  cluster: {{server: 'http://{addr}'}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t}}\nusers:\n- name: t\n  user: {{}}\n"
        ),
    )
    .expect("kubeconfig");
    let run = |node: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--mode", "inpod", "--pod-source", "kubernetes"])
            .args(["--netns", &format!("/run/netns/{name}")])
            .args(["--kube-sync-timeout", "1", "--metrics-addr", "127.0.0.1:0"])
            .arg("--run-dir")
            .arg(dir.sub("run"))
            .arg("--zds-socket")
            .arg(dir.0.join("zds.sock"))
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("NODE_NAME")
            .env_remove("KUBERNETES_SERVICE_HOST");
        if let Some(n) = node {
            cmd.args(["--node-name", n]);
        }
        cmd.output().expect("run")
    };
    let out = run(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("NODE_NAME"), "{err}");
    let out = run(Some("n1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("kubernetes pod source") && err.contains("list and watch"),
        "{err}"
    );
    drop(listener);
    // Nothing was applied in the managed namespace.
    let rules = ns
        .output(Command::new("nft").arg("list").arg("ruleset"))
        .expect("nft");
    assert!(
        String::from_utf8_lossy(&rules.stdout).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&rules.stdout)
    );
}
