//! The manifests under `deploy/` against k8s-openapi's types and the
//! binaries' clap definitions; then broken copies of them, to show the
//! checker catches what it claims to.

use std::path::{Path, PathBuf};

use ambit_deploy_check::{Binaries, Object, SourceFile, check, load_dir, parse_files};

fn root() -> PathBuf {
    // Read at run time (cargo sets it for tests): a test binary reused from
    // a shared target directory may have been built in another checkout.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    Path::new(&dir).join("../..")
}

fn load() -> (Vec<SourceFile>, Binaries) {
    let files = load_dir(&root().join("deploy")).expect("reading deploy/");
    let bins = Binaries::introspect();
    (files, bins)
}

fn report(problems: &[ambit_deploy_check::Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_manifest_is_typed_and_agrees_with_the_binaries() {
    let (files, bins) = load();
    let problems = check(&files, &bins);
    assert!(
        problems.is_empty(),
        "{} problem(s) in deploy/:\n{}",
        problems.len(),
        report(&problems)
    );
    // The checker saw what it should have: guard against a vacuous pass.
    let (parsed, _) = parse_files(&files);
    let kinds: std::collections::BTreeSet<&str> = parsed.iter().map(|p| p.object.kind()).collect();
    for k in [
        "DaemonSet",
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Gateway",
        "Kustomization",
    ] {
        assert!(kinds.contains(k), "no {k} under deploy/ ({kinds:?})");
    }
    let daemonsets: Vec<&str> = parsed
        .iter()
        .filter(|p| matches!(p.object, Object::DaemonSet(_)))
        .map(|p| p.object.name())
        .collect();
    assert!(daemonsets.contains(&"ztunnel") && daemonsets.contains(&"istio-cni-node"));
}

#[test]
fn the_binaries_definitions_are_read() {
    let (_, bins) = load();
    let z = bins.get("ztunnel").expect("ztunnel");
    for env in [
        "XDS_ADDRESS",
        "CA_ADDRESS",
        "AUTH_TOKEN_PATH",
        "INPOD_ENABLED",
        "INPOD_UDS",
    ] {
        assert!(z.reads_env(None, env), "ztunnel should read {env}");
    }
    assert!(
        z.reads_env(None, "ISTIO_META_ANYTHING"),
        "node identity metadata"
    );
    let admin = z
        .global
        .iter()
        .find(|a| a.field == "admin_addr")
        .expect("admin_addr");
    assert_eq!(admin.default.as_deref(), Some("127.0.0.1:15000"));
    let node = z
        .global
        .iter()
        .find(|a| a.field == "node_name")
        .expect("node_name");
    assert!(node.required, "NODE_NAME has no default");
    let cni = bins.get("cni-node").expect("cni-node");
    assert!(cni.subcommands.contains_key("run") && cni.subcommands.contains_key("install"));
    let run_dir = cni.subcommands["run"]
        .iter()
        .find(|a| a.field == "run_dir")
        .expect("run_dir");
    assert_eq!(
        run_dir.default.as_deref(),
        Some("/var/run/istio-cni"),
        "spec::DEFAULT_RUN_DIR resolved"
    );
    assert!(cni.reads_env(Some("install"), "MOUNTED_CNI_NET_DIR"));
    assert!(
        !cni.reads_env(Some("install"), "ZTUNNEL_UDS_ADDRESS"),
        "per subcommand"
    );
    let w = bins.get("waypoint").expect("waypoint");
    let hbone = w
        .global
        .iter()
        .find(|a| a.field == "hbone_addr")
        .expect("hbone_addr");
    assert_eq!(hbone.default.as_deref(), Some("0.0.0.0:15008"));
}

/// Replaces `old` (which must occur) by `new` once in `file`, checks, and
/// returns the messages.
fn broken(file: &str, old: &str, new: &str) -> Vec<String> {
    let (mut files, bins) = load();
    let f = files
        .iter_mut()
        .find(|f| f.path == file)
        .unwrap_or_else(|| panic!("no deploy/{file}"));
    assert!(
        f.text.contains(old),
        "deploy/{file} no longer contains {old:?}"
    );
    f.text = f.text.replacen(old, new, 1);
    check(&files, &bins)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn assert_caught(problems: &[String], needles: &[&str]) {
    assert!(
        problems
            .iter()
            .any(|p| needles.iter().all(|n| p.contains(n))),
        "expected a problem containing {needles:?}, got:\n{}",
        problems.join("\n")
    );
}

#[test]
fn catches_a_typoed_field() {
    let p = broken(
        "ztunnel.yaml",
        "containerPort: 15020",
        "containerPrt: 15020",
    );
    // k8s-openapi fails on the missing required field; the round trip names the typo.
    assert_caught(
        &p,
        &["deploy/ztunnel.yaml", "DaemonSet ztunnel", "containerPrt"],
    );
    let p = broken(
        "waypoint-manual/waypoint.yaml",
        "  minAvailable: 1",
        "  minAvaliable: 1",
    );
    assert_caught(
        &p,
        &[
            "PodDisruptionBudget waypoint",
            "spec.minAvaliable: unknown field",
        ],
    );
    let p = broken("istio-cni.yaml", "mountPropagation:", "mountPropogation:");
    assert_caught(
        &p,
        &[
            "DaemonSet istio-cni-node",
            "mountPropogation: unknown field",
        ],
    );
}

#[test]
fn catches_a_wrong_port() {
    let p = broken("ztunnel.yaml", "port: 15021\n", "port: 15022\n");
    assert_caught(
        &p,
        &[
            "DaemonSet ztunnel",
            "readinessProbe",
            "port 15022 is not one ztunnel listens on",
        ],
    );
    let p = broken(
        "waypoint-manual/waypoint.yaml",
        "containerPort: 15008",
        "containerPort: 15009",
    );
    assert_caught(&p, &["Deployment waypoint", "containerPort", "15009"]);
    assert_caught(&p, &["Gateway waypoint", "HBONE"]);
    let p = broken(
        "ztunnel.yaml",
        "prometheus.io/port: \"15020\"",
        "prometheus.io/port: \"15000\"",
    );
    assert_caught(&p, &["prometheus.io/port", "15000"]);
    // The admin port is bound to 127.0.0.1: exposing it is a mistake.
    let p = broken(
        "ztunnel.yaml",
        "containerPort: 15020",
        "containerPort: 15000",
    );
    assert_caught(&p, &["containerPort 15000 is bound to 127.0.0.1:15000"]);
}

#[test]
fn catches_an_unknown_env_var() {
    let p = broken("ztunnel.yaml", "name: RUST_LOG", "name: ZTUNNEL_RUST_LOG");
    assert_caught(
        &p,
        &[
            "container istio-proxy (ztunnel)",
            "env ZTUNNEL_RUST_LOG is not read by ztunnel",
        ],
    );
    // Read by cni-node, but by `run`, not by `install`.
    let p = broken(
        "istio-cni.yaml",
        "name: EXCLUDE_NAMESPACES",
        "name: ZTUNNEL_UDS_ADDRESS",
    );
    assert_caught(
        &p,
        &[
            "cni-node install",
            "env ZTUNNEL_UDS_ADDRESS is not read by cni-node install",
        ],
    );
}

#[test]
fn catches_drift_between_manifests_and_binaries() {
    // The ZDS socket ztunnel dials is not the one cni-node serves.
    let p = broken(
        "ztunnel.yaml",
        "value: \"true\"\n            - name: TERMINATION",
        "value: \"true\"\n            - name: INPOD_UDS\n              value: /var/run/ztunnel/zds.sock\n            - name: TERMINATION",
    );
    assert_caught(
        &p,
        &["ztunnel's ZDS socket is /var/run/ztunnel/zds.sock on the host"],
    );
    // The token is mounted elsewhere than AUTH_TOKEN_PATH.
    let p = broken(
        "waypoint-manual/waypoint.yaml",
        "mountPath: /var/run/secrets/tokens",
        "mountPath: /var/run/secrets/token",
    );
    assert_caught(&p, &["AUTH_TOKEN_PATH /var/run/secrets/tokens/istio-token"]);
    // A capability too many.
    let p = broken(
        "ztunnel.yaml",
        "- SYS_ADMIN",
        "- SYS_ADMIN\n                - SYS_PTRACE",
    );
    assert_caught(&p, &["capabilities.add", "SYS_PTRACE"]);
    // The plugin would dial another run dir than the agent serves.
    let p = broken(
        "istio-cni.yaml",
        "value: /var/run/istio-cni\n",
        "value: /run/istio-cni\n",
    );
    assert_caught(&p, &["cni_agent_run_dir"]);
    // The drain derived from another grace period than the pod's.
    let p = broken("ztunnel.yaml", "value: \"30\"", "value: \"40\"");
    assert_caught(
        &p,
        &["TERMINATION_GRACE_PERIOD_SECONDS 40 is not the pod's terminationGracePeriodSeconds 30"],
    );
    // A missing required argument.
    let p = broken("ztunnel.yaml", "name: NODE_NAME", "name: NETWORK");
    assert_caught(&p, &["required argument node_name is not set"]);
    // A flag the binary does not have.
    let p = broken(
        "istio-cni.yaml",
        "\"--keep-rules\"]",
        "\"--keep-rules\", \"--pod-sauce=kubernetes\"]",
    );
    assert_caught(&p, &["flag --pod-sauce is not one cni-node accepts"]);
    // RBAC: the agent cannot watch namespaces.
    let p = broken(
        "istio-cni.yaml",
        "resources: [\"pods\", \"namespaces\"]",
        "resources: [\"pods\"]",
    );
    assert_caught(&p, &["may not watch namespaces"]);
}

#[test]
fn catches_unknown_kinds_and_unlisted_files() {
    let (mut files, bins) = load();
    files.push(SourceFile {
        path: "extra.yaml".into(),
        text: "apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n".into(),
    });
    let p: Vec<String> = check(&files, &bins)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_caught(
        &p,
        &["deploy/extra.yaml, document 1 (Secret x)", "unknown kind"],
    );
    assert_caught(&p, &["resources does not list extra.yaml"]);
}

#[test]
fn checks_the_waypoint_istiod_deploys_as_patched() {
    // Without the args line istiod's `proxy waypoint --domain ...` stays.
    let p = broken(
        "waypoint/waypoint.yaml",
        "              args: [\"--routes-from\", \"kube\"]\n",
        "",
    );
    assert_caught(
        &p,
        &[
            "Deployment waypoint (istiod's, for Gateway waypoint, patched by ConfigMap ambit-waypoint)",
            "is not one waypoint accepts",
        ],
    );
    // A typo in the patch's env.
    let p = broken(
        "waypoint/waypoint.yaml",
        "name: XDS_ADDRESS",
        "name: XDS_ADRESS",
    );
    assert_caught(&p, &["istiod's", "env XDS_ADRESS is not read by waypoint"]);
    // The Gateway names a ConfigMap that is not there.
    let p = broken(
        "waypoint/waypoint.yaml",
        "      name: ambit-waypoint\n",
        "      name: ambit-waypoint-typo\n",
    );
    assert_caught(
        &p,
        &[
            "Gateway waypoint",
            "ConfigMap ambit-waypoint-typo, which is not in these manifests",
        ],
    );
    // No patch at all: istiod's Envoy would run.
    let p = broken(
        "waypoint/waypoint.yaml",
        "  infrastructure:\n    parametersRef:\n      group: \"\"\n      kind: ConfigMap\n      name: ambit-waypoint\n",
        "",
    );
    assert_caught(&p, &["Gateway waypoint", "parametersRef"]);
    // RBAC: the routes' watches and status writes.
    let p = broken(
        "waypoint/rbac.yaml",
        "\"httproutes\", \"grpcroutes\",",
        "\"httproutes\",",
    );
    assert_caught(
        &p,
        &[
            "may not list grpcroutes",
            "routes come from the Kubernetes API",
        ],
    );
    let p = broken(
        "waypoint/rbac.yaml",
        "resources: [\"httproutes/status\", \"grpcroutes/status\"]",
        "resources: [\"httproutes/status\"]",
    );
    assert_caught(&p, &["may not patch grpcroutes/status"]);
    // The HBONE listener must be the port the waypoint serves HBONE on.
    let p = broken(
        "waypoint/waypoint.yaml",
        "      port: 15008\n      protocol: HBONE",
        "      port: 15009\n      protocol: HBONE",
    );
    assert_caught(
        &p,
        &["Gateway waypoint", "port 15009 is not the HBONE listener"],
    );
}
