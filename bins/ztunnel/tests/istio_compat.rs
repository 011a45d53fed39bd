//! Drop-in compatibility with istio/ztunnel, checked against the binary:
//! every fixture of ztunnel's local config format (crates/mesh's) loads
//! and comes back unchanged through `/config_dump`; the dump has the
//! field names and JSON types `istioctl ztunnel-config` reads (a schema
//! written here from istioctl's reader); Istio's settings resolve as
//! istio/ztunnel's do, and contradictory ones are refused naming both.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_identity::LocalCa;
use ambit_mesh::Config;
use ambit_netns::NetNs;
use ambit_netns::harness::ChildGuard;
use serde_json::Value;

/// A ztunnel in a fresh network namespace, removed on drop.
struct Ztunnel {
    ns: NetNs,
    _child: ChildGuard,
    dir: PathBuf,
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn http(ns: &NetNs, method: &str, path: &str, port: u16) -> String {
    let mut s = ns
        .tcp_connect(([127, 0, 0, 1], port).into())
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

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Starts ztunnel with Istio's chart command line (`proxy ztunnel`), a
/// local CA, `env` and the local config `mesh`; waits until ready.
fn start(tag: &str, mesh: &Path, env: &[(&str, &str)]) -> Ztunnel {
    let ns = NetNs::create_anonymous().expect("netns");
    ns.output(Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("lo up");
    let dir = std::env::temp_dir().join(format!("ambit-compat-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = LocalCa::generate("cluster.local").expect("ca");
    std::fs::write(dir.join("ca.pem"), ca.root_pem()).expect("ca.pem");
    std::fs::write(dir.join("ca-key.pem"), ca.key_pem()).expect("key");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ztunnel"));
    cmd.args(["proxy", "ztunnel"])
        .env_clear()
        .current_dir(&dir)
        .env("NODE_NAME", "node-x")
        .env("LOCAL_XDS_PATH", mesh)
        .env("LOCAL_CA_CERT", dir.join("ca.pem"))
        .env("LOCAL_CA_KEY", dir.join("ca-key.pem"))
        .env("INPOD_UDS", dir.join("absent.sock"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = ChildGuard::new(ns.spawn_command(&mut cmd).expect("spawn"));
    wait_ready(&ns, &mut child, || format!("({tag})"));
    Ztunnel {
        ns,
        _child: child,
        dir,
    }
}

/// Waits up to 30 s for `child`'s readiness endpoint (15021) in `ns` to
/// answer 200; fails if it exits first. `what` adds to the failure.
fn wait_ready(ns: &NetNs, child: &mut ChildGuard, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            child.child().try_wait().expect("wait").is_none(),
            "ztunnel exited {}",
            what()
        );
        if let Ok(mut s) = ns.tcp_connect(([127, 0, 0, 1], 15021).into()) {
            let _ = s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = [0u8; 12];
            if s.read(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "ztunnel not ready {}", what());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fixtures() -> Vec<PathBuf> {
    // Read at run time (cargo sets it for tests): a test binary reused from
    // a shared target directory may have been built in another checkout.
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let dir: PathBuf = [
        manifest.as_str(),
        "..",
        "..",
        "crates",
        "mesh",
        "tests",
        "fixtures",
    ]
    .iter()
    .collect();
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    v.sort();
    assert!(v.len() >= 4, "fixtures in {}", dir.display());
    v
}

fn sorted(mut c: Config) -> Config {
    c.workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    c.services
        .sort_by(|a, b| (&a.hostname, &a.namespace).cmp(&(&b.hostname, &b.namespace)));
    c.policies.sort_by_key(|p| p.key());
    c
}

/// JSON types the reader expects.
#[derive(Debug, Clone, Copy)]
enum T {
    Str,
    Num,
    Bool,
    Arr,
    Obj,
    /// Present or absent, any type (Go `any` / omitempty).
    Any,
}

fn is(v: &Value, t: T) -> bool {
    match t {
        T::Str => v.is_string(),
        T::Num => v.is_number(),
        T::Bool => v.is_boolean(),
        T::Arr => v.is_array(),
        T::Obj => v.is_object(),
        T::Any => true,
    }
}

/// Checks `v[key]` for each `(key, type, required)`: a present key must
/// have the type; a required one must be present.
fn check(what: &str, v: &Value, fields: &[(&str, T, bool)]) {
    for (key, t, required) in fields {
        match v.get(key) {
            Some(Value::Null) if !required => {}
            Some(x) => assert!(is(x, *t), "{what}.{key} is {x}, expected {t:?}"),
            None => assert!(!required, "{what} lacks {key}: {v}"),
        }
    }
}

/// istioctl's reader of ztunnel's dump (its `ZtunnelDump`, `CertsDump`,
/// `WorkloadState` and the workload/service/policy types), as a schema.
fn check_istioctl_schema(dump: &Value) {
    use T::*;
    check(
        "dump",
        dump,
        &[
            ("workloads", Arr, true),
            ("services", Arr, true),
            ("policies", Arr, true),
            ("certificates", Arr, true),
            ("workloadState", Obj, true),
            ("config", Obj, true),
        ],
    );
    for w in dump["workloads"].as_array().into_iter().flatten() {
        check(
            "workload",
            w,
            &[
                ("uid", Str, true),
                ("workloadIps", Arr, true),
                ("protocol", Str, true),
                ("name", Str, true),
                ("namespace", Str, true),
                ("serviceAccount", Str, false),
                ("workloadName", Str, false),
                ("workloadType", Str, false),
                ("canonicalName", Str, false),
                ("canonicalRevision", Str, false),
                ("clusterId", Str, false),
                ("trustDomain", Str, false),
                ("locality", Obj, false),
                ("node", Str, false),
                ("network", Str, false),
                ("status", Str, false),
                ("hostname", Str, false),
                ("capacity", Num, false),
                ("applicationTunnel", Obj, false),
                ("waypoint", Obj, false),
                ("networkGateway", Obj, false),
                ("services", Any, false),
                ("authorizationPolicies", Arr, false),
                ("nativeTunnel", Bool, false),
                ("networkMode", Str, false),
            ],
        );
        for ip in w["workloadIps"].as_array().into_iter().flatten() {
            assert!(ip.is_string(), "workloadIps hold strings: {w}");
        }
    }
    for s in dump["services"].as_array().into_iter().flatten() {
        check(
            "service",
            s,
            &[
                ("name", Str, true),
                ("namespace", Str, true),
                ("hostname", Str, true),
                ("vips", Arr, true),
                ("ports", Obj, true),
                ("endpoints", Any, true),
                ("subjectAltNames", Arr, false),
                ("waypoint", Obj, false),
                ("loadBalancer", Obj, false),
                ("ipFamilies", Str, false),
            ],
        );
        for vip in s["vips"].as_array().into_iter().flatten() {
            assert!(
                vip.as_str().is_some_and(|v| v.contains('/')),
                "vips are network/ip: {s}"
            );
        }
    }
    for p in dump["policies"].as_array().into_iter().flatten() {
        check(
            "policy",
            p,
            &[
                ("name", Str, true),
                ("namespace", Str, true),
                ("scope", Str, true),
                ("action", Str, true),
                ("rules", Arr, true),
            ],
        );
        // rules → clauses → matches ([][][]*PolicyMatch).
        for rule in p["rules"].as_array().into_iter().flatten() {
            for clause in rule.as_array().expect("a rule is a list of clauses") {
                for m in clause.as_array().expect("a clause is a list of matches") {
                    assert!(m.is_object(), "a match is an object: {p}");
                    for key in ["namespaces", "principals", "notNamespaces", "notPrincipals"] {
                        for sm in m.get(key).and_then(Value::as_array).into_iter().flatten() {
                            let o = sm.as_object().expect("a string match is an object");
                            assert!(
                                o.keys().all(|k| ["Exact", "Prefix", "Suffix", "Presence"]
                                    .contains(&k.as_str())),
                                "string match keys: {sm}"
                            );
                        }
                    }
                }
            }
        }
    }
    for c in dump["certificates"].as_array().into_iter().flatten() {
        check(
            "certificate",
            c,
            &[
                ("identity", Str, true),
                ("state", Str, true),
                ("certChain", Arr, true),
                ("rootCerts", Arr, true),
            ],
        );
        for cert in c["certChain"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(c["rootCerts"].as_array().into_iter().flatten())
        {
            check(
                "cert",
                cert,
                &[
                    ("pem", Str, true),
                    ("serialNumber", Str, true),
                    ("validFrom", Str, true),
                    ("expirationTime", Str, true),
                ],
            );
        }
    }
    for (uid, st) in dump["workloadState"].as_object().into_iter().flatten() {
        let what = format!("workloadState[{uid}]");
        check(
            &what,
            st,
            &[
                ("state", Str, false),
                ("connections", Obj, false),
                ("info", Obj, true),
            ],
        );
        check(
            &what,
            &st["info"],
            &[
                ("name", Str, true),
                ("namespace", Str, true),
                ("trustDomain", Str, true),
                ("serviceAccount", Str, true),
            ],
        );
        for dir in ["inbound", "outbound"] {
            for conn in st["connections"][dir].as_array().into_iter().flatten() {
                check(
                    &what,
                    conn,
                    &[
                        ("src", Str, true),
                        ("originalDst", Str, true),
                        ("actualDst", Str, true),
                        ("protocol", Str, true),
                    ],
                );
            }
        }
    }
}

#[test]
fn every_local_config_fixture_round_trips_through_config_dump() {
    for (i, fixture) in fixtures().into_iter().enumerate() {
        let name = fixture.display().to_string();
        let z = start(&format!("fixture{i}"), &fixture, &[]);
        let r = http(&z.ns, "GET", "/config_dump", 15000);
        assert!(r.starts_with("HTTP/1.1 200"), "{name}: {r}");
        let dump: Value = serde_json::from_str(body(&r)).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_istioctl_schema(&dump);
        // The state sections load back as a local config, equal to the
        // fixture.
        let state = serde_json::json!({
            "workloads": dump["workloads"],
            "services": dump["services"],
            "policies": dump["policies"],
            "stagedServices": dump["stagedServices"],
        });
        let back = Config::parse(&state.to_string(), &name).unwrap_or_else(|e| panic!("{e}"));
        let want = Config::from_file(&fixture).expect("fixture");
        assert_eq!(sorted(back), sorted(want), "{name}");
    }
}

const LOCAL: &str = r#"
workloads:
- {uid: cluster1//v1/Pod/default/local, name: local, namespace: default, serviceAccount: local,
   workloadIps: ["127.0.0.1"], protocol: HBONE, node: node-x}
"#;

#[test]
fn istio_settings_reach_config_dump() {
    let dir = std::env::temp_dir().join(format!("ambit-compat-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, LOCAL).expect("mesh");
    let z = start(
        "settings",
        &mesh,
        &[
            ("RUST_LOG", "info"),
            ("RUST_BACKTRACE", "1"),
            ("ISTIO_META_CLUSTER_ID", "cluster-7"),
            ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
            ("POD_NAME", "ztunnel-abc"),
            ("POD_NAMESPACE", "istio-system"),
            ("SERVICE_ACCOUNT", "ztunnel"),
            ("ZTUNNEL_CPU_LIMIT", "4"),
            ("ZTUNNEL_WORKER_THREADS", "50%"),
            ("KEEPALIVE_TIME", "30s"),
            (
                "PROXY_CONFIG",
                r#"{"proxyMetadata": {"ISTIO_META_FOO": "bar"}}"#,
            ),
        ],
    );
    let r = http(&z.ns, "GET", "/config_dump", 15000);
    let dump: Value = serde_json::from_str(body(&r)).expect("json");
    let _ = std::fs::remove_dir_all(&dir);
    check_istioctl_schema(&dump);
    let c = &dump["config"];
    assert_eq!(c["clusterId"], "cluster-7", "{c}");
    assert_eq!(c["numWorkerThreads"], 2, "{c}");
    assert_eq!(c["selfTerminationDeadline"]["secs"], 25, "{c}");
    assert_eq!(c["socketConfig"]["keepaliveTime"]["secs"], 30, "{c}");
    assert_eq!(c["proxyMetadata"]["FOO"], "bar", "{c}");
    assert_eq!(c["proxyArgs"], "proxy ztunnel", "{c}");
    // The local workload's certificate, in istioctl's shape.
    let certs = dump["certificates"].as_array().expect("certs");
    let local = certs
        .iter()
        .find(|c| c["identity"] == "spiffe://cluster.local/ns/default/sa/local")
        .expect("the local workload's certificate");
    assert_eq!(local["state"], "Available");
    let leaf = &local["certChain"][0];
    assert!(
        leaf["validFrom"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{leaf}"
    );
    assert!(!leaf["serialNumber"].as_str().unwrap_or("").is_empty());
    assert_eq!(
        dump["workloadState"]["cluster1//v1/Pod/default/local"]["info"]["serviceAccount"],
        "local"
    );
}

/// Runs ztunnel until it exits (bad settings exit at once) and returns
/// its exit code and stderr.
fn refused(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .args(["proxy", "ztunnel"])
        .env_clear()
        .env("NODE_NAME", "n")
        .env("LOCAL_XDS_PATH", "/nonexistent.yaml")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn contradictory_settings_are_refused_naming_both() {
    for (env, names) in [
        (
            &[
                ("CONNECTION_TERMINATION_DEADLINE", "3s"),
                ("DRAIN_DURATION", "9"),
            ][..],
            &["CONNECTION_TERMINATION_DEADLINE", "DRAIN_DURATION"][..],
        ),
        (
            &[("PACKET_MARK", "7"), ("INPOD_MARK", "1337")],
            &["PACKET_MARK", "INPOD_MARK"],
        ),
        (
            &[
                ("ENABLE_ORIG_SRC", "false"),
                ("ZTUNNEL_SPOOF_SOURCE", "true"),
            ],
            &["ENABLE_ORIG_SRC", "ZTUNNEL_SPOOF_SOURCE"],
        ),
        (
            &[
                ("PROXY_MODE", "dedicated"),
                ("PROXY_WORKLOAD_INFO", "a/b/c"),
                ("INPOD_ENABLED", "true"),
            ],
            &["PROXY_MODE", "INPOD_ENABLED"],
        ),
        (&[("PROXY_MODE", "dedicated")], &["PROXY_WORKLOAD_INFO"]),
        (
            &[("ZTUNNEL_WORKER_THREADS", "lots")],
            &["ZTUNNEL_WORKER_THREADS"],
        ),
        (&[("ENABLE_PROXY", "false")], &["ENABLE_PROXY"]),
    ] {
        let (code, err) = refused(env);
        assert_eq!(code, Some(64), "{env:?}: {err}");
        for n in names {
            assert!(err.contains(n), "{env:?}: {err} should name {n}");
        }
    }
    // A bad value names its setting (clap's own check).
    let (code, err) = refused(&[("KEEPALIVE_TIME", "soon")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("KEEPALIVE_TIME") || err.contains("keepalive-time"),
        "{err}"
    );
}

/// Removes a named namespace and its `/etc/netns/<name>` files on drop.
struct NamedNs {
    name: String,
    ns: NetNs,
}

impl Drop for NamedNs {
    fn drop(&mut self) {
        let _ = NetNs::delete_named(&self.name);
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// Istio's chart, unchanged but for the image: `ztunnel proxy ztunnel`
/// with the chart's environment, istiod reached by its name
/// (`istiod.istio-system.svc:15012`, no scheme) over TLS, the root
/// certificate and token at Istio's default relative paths. The control
/// plane here is the testbed's one-port TLS ADS + CA, named by an
/// `/etc/netns/<ns>/hosts` entry (`ip netns exec` mounts it as
/// `/etc/hosts`). Only `INPOD_UDS` is added: the chart's default socket is
/// a host path other tests' node agents may serve.
#[test]
fn the_charts_command_line_and_env_start_ztunnel_against_istiod() {
    let name = format!("ambit-chart-{}", std::process::id());
    let named = NamedNs {
        ns: NetNs::create_named(&name).expect("netns"),
        name: name.clone(),
    };
    named
        .ns
        .output(Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("lo up");
    let etc = Path::new("/etc/netns").join(&name);
    std::fs::create_dir_all(&etc).expect("etc/netns");
    std::fs::write(
        etc.join("hosts"),
        "127.0.0.1 localhost\n127.0.0.1 istiod.istio-system.svc\n",
    )
    .expect("hosts");
    let ca = std::sync::Arc::new(LocalCa::generate("cluster.local").expect("ca"));
    let config = Config::parse(LOCAL, "chart").expect("config");
    let cp =
        ambit_testbed::ControlPlane::start(&named.ns, [127, 0, 0, 1].into(), ca.clone(), &config)
            .expect("control plane");
    let dir = std::env::temp_dir().join(format!("ambit-compat-chart-{}", std::process::id()));
    let secrets = dir.join("var/run/secrets");
    std::fs::create_dir_all(secrets.join("istio")).expect("dir");
    std::fs::create_dir_all(secrets.join("tokens")).expect("dir");
    std::fs::write(secrets.join("istio/root-cert.pem"), &cp.root_pem).expect("root");
    std::fs::write(secrets.join("tokens/istio-token"), "a-token").expect("token");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &name,
        env!("CARGO_BIN_EXE_ztunnel"),
        "proxy",
        "ztunnel",
    ])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .current_dir(&dir)
    .envs([
        ("CA_ADDRESS", "istiod.istio-system.svc:15012"),
        ("XDS_ADDRESS", "istiod.istio-system.svc:15012"),
        ("RUST_LOG", "info"),
        ("RUST_BACKTRACE", "1"),
        ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        ("INPOD_ENABLED", "true"),
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
        ("POD_NAME", "ztunnel-x1"),
        ("POD_NAMESPACE", "istio-system"),
        ("NODE_NAME", "node-x"),
        ("INSTANCE_IP", "127.0.0.1"),
        ("SERVICE_ACCOUNT", "ztunnel"),
        ("ZTUNNEL_CPU_LIMIT", "2"),
    ])
    .env("INPOD_UDS", dir.join("ztunnel.sock"))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::from(
        std::fs::File::create(dir.join("ztunnel.log")).expect("log"),
    ));
    let mut child = ChildGuard::new(cmd.spawn().expect("spawn"));
    wait_ready(&named.ns, &mut child, || {
        format!(
            ":\n{}",
            std::fs::read_to_string(dir.join("ztunnel.log")).unwrap_or_default()
        )
    });
    let r = http(&named.ns, "GET", "/config_dump", 15000);
    let dump: Value = serde_json::from_str(body(&r)).expect("json");
    drop(child);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
    check_istioctl_schema(&dump);
    // The workload came over xDS, its certificate from the CA: both over
    // TLS to istiod's name on one port.
    assert_eq!(
        dump["workloads"][0]["uid"], "cluster1//v1/Pod/default/local",
        "{dump}"
    );
    let certs = dump["certificates"].as_array().expect("certs");
    assert!(
        certs.iter().any(
            |c| c["identity"] == "spiffe://cluster.local/ns/default/sa/local"
                && c["state"] == "Available"
        ),
        "{certs:?}"
    );
    let c = &dump["config"];
    assert_eq!(c["xdsAddress"], "https://istiod.istio-system.svc:15012");
    assert_eq!(c["caAddress"], "https://istiod.istio-system.svc:15012");
    assert_eq!(c["selfTerminationDeadline"]["secs"], 25);
    assert_eq!(c["inpodEnabled"], true);
}

/// `PROXY_MODE=dedicated`: one workload (`PROXY_WORKLOAD_INFO`) served
/// from the proxy's own namespace; its certificate is fetched before
/// readiness and the dump says which workload it is.
#[test]
fn dedicated_mode_serves_its_one_workload() {
    let dir = std::env::temp_dir().join(format!("ambit-compat-dedicated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, LOCAL).expect("mesh");
    let z = start(
        "dedicated",
        &mesh,
        &[
            ("PROXY_MODE", "dedicated"),
            ("PROXY_WORKLOAD_INFO", "default/local/local"),
            ("NODE_NAME", "elsewhere"),
        ],
    );
    let r = http(&z.ns, "GET", "/config_dump", 15000);
    let _ = std::fs::remove_dir_all(&dir);
    let dump: Value = serde_json::from_str(body(&r)).expect("json");
    assert_eq!(dump["config"]["proxyMode"], "Dedicated");
    assert_eq!(
        dump["config"]["proxyWorkloadInformation"]["serviceAccount"],
        "local"
    );
    let certs = dump["certificates"].as_array().expect("certs");
    assert!(
        certs
            .iter()
            .any(|c| c["identity"] == "spiffe://cluster.local/ns/default/sa/local"),
        "{certs:?}"
    );
}
