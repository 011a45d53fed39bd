//! Helpers shared by the integration tests: temporary directories, the
//! agent as a child process, and a container runtime's way of invoking a
//! CNI chain.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ambit_netns::NetNs;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_cni-node");
/// The small plugin (what `install` puts in the CNI bin dir).
pub const SMALL: &str = env!("CARGO_BIN_EXE_ambit-cni-plugin");
pub const SYSTEM_PLUGINS: &str = "/usr/lib/cni";

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ambit-cni-it-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        Self(p)
    }

    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A named namespace deleted on drop (for pods the bridge plugin wires).
pub struct NamedNs(pub String, pub NetNs);

impl NamedNs {
    pub fn new(name: &str) -> Self {
        let ns = NetNs::create_named(name).expect("create netns");
        Self(name.to_owned(), ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for NamedNs {
    fn drop(&mut self) {
        let _ = NetNs::delete_named(&self.0);
    }
}

/// A named namespace held by its name only, deleted on drop: for benches
/// that make thousands. An open descriptor per pod in the process that
/// spawns the plugin would cost every spawn (each is copied into the child
/// and closed at its exec), which a container runtime does not pay.
pub struct NsName(pub String);

impl NsName {
    pub fn new(name: &str) -> Self {
        drop(NetNs::create_named(name).expect("create netns"));
        Self(name.to_owned())
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// The namespace, opened now.
    pub fn open(&self) -> NetNs {
        NetNs::open(self.path()).expect("open netns")
    }
}

impl Drop for NsName {
    fn drop(&mut self) {
        let _ = NetNs::delete_named(&self.0);
    }
}

/// The agent as a child process; stopped with SIGTERM on drop.
pub struct AgentProc {
    pub child: Option<Child>,
    pub socket: PathBuf,
}

impl AgentProc {
    pub fn start(run_dir: &Path, args: &[String]) -> Self {
        let socket = run_dir.join("pluginevent.sock");
        let _ = std::fs::remove_file(&socket);
        // `AMBIT_BENCH_AGENT=<path>` runs another build of the agent (the
        // benchmarks' A/B runs); the tests leave it unset.
        let bin = std::env::var_os("AMBIT_BENCH_AGENT")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| BIN.into());
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("--run-dir").arg(run_dir);
        if !args.iter().any(|a| a == "--metrics-addr") {
            cmd.args(["--metrics-addr", "127.0.0.1:0"]);
        }
        let child = cmd
            .args(["--poll-ms", "100"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn agent");
        let mut a = Self {
            child: Some(child),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !a.socket.exists() {
            if let Some(c) = a.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("agent exited early: {status}");
            }
            assert!(Instant::now() < deadline, "agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        a
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a plugin binary as a runtime would, inside `runtime_ns`.
pub fn exec_plugin(
    runtime_ns: &NetNs,
    binary: &Path,
    env: &[(&str, String)],
    stdin: &str,
) -> Output {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = runtime_ns.spawn_command(&mut cmd).expect("spawn plugin");
    {
        use std::io::Write;
        let mut i = child.stdin.take().expect("stdin");
        i.write_all(stdin.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("plugin output")
}

/// Finds a plugin by type in CNI_PATH, as libcni does.
pub fn find_plugin(cni_path: &str, ty: &str) -> PathBuf {
    cni_path
        .split(':')
        .map(|d| Path::new(d).join(ty))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("plugin {ty} not in {cni_path}"))
}

/// One pod sandbox the "runtime" attaches.
pub struct Sandbox<'a> {
    pub container_id: String,
    pub netns: String,
    pub pod: (&'a str, &'a str),
    pub uid: &'a str,
}

impl Sandbox<'_> {
    fn env(&self, cmd: &str, cni_path: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.into()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.clone()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_PATH", cni_path.into()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    self.pod.0, self.pod.1, self.container_id, self.uid
                ),
            ),
        ]
    }
}

/// Invokes every plugin of a conflist as libcni does: ADD in order, each
/// with the previous result as `prevResult`. Returns every plugin's stdout.
pub fn chain_add(
    runtime_ns: &NetNs,
    conflist: &Value,
    cni_path: &str,
    sb: &Sandbox<'_>,
) -> Vec<String> {
    let mut prev: Option<Value> = None;
    let mut outs = Vec::new();
    for plugin in conflist["plugins"].as_array().expect("plugins") {
        let stdin = plugin_stdin(conflist, plugin, prev.as_ref());
        let ty = plugin["type"].as_str().expect("type");
        let out = exec_plugin(
            runtime_ns,
            &find_plugin(cni_path, ty),
            &sb.env("ADD", cni_path),
            &stdin,
        );
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success(),
            "{ty} ADD failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        prev = Some(serde_json::from_str(&stdout).expect("result json"));
        outs.push(stdout);
    }
    outs
}

/// DEL in reverse order with the cached result, as libcni does.
pub fn chain_del(
    runtime_ns: &NetNs,
    conflist: &Value,
    cni_path: &str,
    sb: &Sandbox<'_>,
    result: &Value,
) {
    for plugin in conflist["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .rev()
    {
        let stdin = plugin_stdin(conflist, plugin, Some(result));
        let ty = plugin["type"].as_str().expect("type");
        let out = exec_plugin(
            runtime_ns,
            &find_plugin(cni_path, ty),
            &sb.env("DEL", cni_path),
            &stdin,
        );
        assert!(
            out.status.success(),
            "{ty} DEL failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn plugin_stdin(conflist: &Value, plugin: &Value, prev: Option<&Value>) -> String {
    let mut conf = plugin.clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    conf.to_string()
}

/// Writes a pod record into the local pod source.
pub fn write_record(
    dir: &Path,
    name: &str,
    ns: &str,
    uid: &str,
    ambient: bool,
    ips: &[&str],
    netns: Option<&str>,
) {
    let mut rec = json!({
        "name": name,
        "namespace": ns,
        "uid": uid,
        "ips": ips,
        "service_account": "sa-".to_owned() + name,
        "namespace_labels": if ambient { json!({"istio.io/dataplane-mode": "ambient"}) } else { json!({}) },
    });
    if let Some(n) = netns {
        rec["netns"] = json!(n);
    }
    let tmp = dir.join(format!(".{ns}-{name}.tmp"));
    std::fs::write(&tmp, rec.to_string()).expect("write record");
    std::fs::rename(&tmp, dir.join(format!("{ns}-{name}.json"))).expect("rename record");
}

/// Polls `f` until it returns true.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback port free right now (for the agent's metrics endpoint).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The value of one metric line (`name` exactly, no labels) from the
/// agent's `/metrics`; 0 when absent.
pub fn metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs the plugin binary alone for one ADD, as the last plugin of a
/// chain whose primary plugin gave `ip`; returns (exit code, stdout JSON).
pub fn plugin_add(
    conf_extra: &str,
    run_dir: &Path,
    netns: &str,
    pod: (&str, &str),
    uid: &str,
    container: &str,
    ip: &str,
) -> (i32, Value) {
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s","type":"istio-cni","ambient_enabled":true,"cni_agent_run_dir":"{}"{conf_extra},"prevResult":{{"cniVersion":"1.0.0","ips":[{{"address":"{ip}/32"}}]}}}}"#,
        run_dir.display()
    );
    let args = format!(
        "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={uid}",
        pod.0, pod.1
    );
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", &args),
    ];
    let (code, out) = run_plugin(BIN, &env, &conf);
    (code, serde_json::from_str(&out).unwrap_or(Value::Null))
}

/// Runs a plugin binary as a runtime does: only `env` in its environment,
/// `stdin` written to it; returns (exit code, stdout).
pub fn run_plugin(bin: &str, env: &[(&str, &str)], stdin: &str) -> (i32, String) {
    use std::io::Write;
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("plugin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
