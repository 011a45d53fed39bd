//! The invariants the binaries rely on, checked on the typed objects.
//!
//! Every container must run one of the binaries (its `command` names it,
//! its image is named after it). From that binary's clap definition:
//! every env var set is one the binary reads (for that subcommand), every
//! `--flag` exists, every required argument is given, and the effective
//! value of each setting (flag, else env, else the clap default) drives the
//! rest: container ports, probes and Prometheus annotations must name ports
//! the binary listens on (not on loopback), mounts must put the token, the
//! root certificate, the CNI directories, the agent's run directory and
//! the ZDS socket where the binary looks for them, and the capabilities
//! and user must be exactly what the binary needs ([`SECURITY`]). Across
//! objects: selectors, service accounts, RBAC, Services, the
//! PodDisruptionBudget and HPA, the waypoint Gateway (a waypoint istiod
//! deploys is checked as the Deployment istiod renders, patched by the
//! Gateway's `parametersRef` ConfigMap; one taking routes from the
//! Kubernetes API must be allowed its watches and status writes), and the
//! kustomizations listing every file and image.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::binaries::{ArgDef, Binaries, Binary};

mod istiod;
mod objects;
mod pod;
mod run;

use self::objects::*;
use self::pod::*;
use self::run::*;
use crate::manifest::{Object, Parsed, SourceFile, dir_of, parse_files};

/// Something wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to `deploy/`.
    pub file: String,
    /// The document in the file (from 1), if it is about one.
    pub doc: Option<usize>,
    /// `Kind name` of the object, if known.
    pub object: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    pub(crate) fn file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            doc: None,
            object: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "deploy/{}", self.file)?;
        if let Some(d) = self.doc {
            write!(f, ", document {d}")?;
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What each binary (and subcommand) needs from its security context.
/// Every container drops `ALL` and adds exactly these.
///
/// - cni-node `run`: NET_ADMIN for nftables (`nft -f -`), ipsets and
///   routes over netlink in the host and in each pod's netns; SYS_ADMIN
///   for `setns` into pods' network namespaces (opened from
///   /var/run/netns). Root: it owns /var/run/istio-cni and the ZDS socket.
/// - cni-node `install`/`uninstall`: no capability; root because the
///   host's CNI directories belong to root.
/// - ztunnel (in-pod): NET_ADMIN for SO_MARK 1337 on every socket and
///   IP_TRANSPARENT (original-source connects); SYS_ADMIN for `setns` into
///   the pod netns received over ZDS. Root because cni-node (root, umask
///   022) creates the ZDS socket and connecting needs write permission.
/// - waypoint: nothing; ports above 1024; runs as non-root.
pub const SECURITY: &[(&str, Option<&str>, &[&str], RunAs)] = &[
    (
        "cni-node",
        Some("run"),
        &["NET_ADMIN", "SYS_ADMIN"],
        RunAs::Root,
    ),
    ("cni-node", Some("install"), &[], RunAs::Root),
    ("cni-node", Some("uninstall"), &[], RunAs::Root),
    ("ztunnel", None, &["NET_ADMIN", "SYS_ADMIN"], RunAs::Root),
    ("waypoint", None, &[], RunAs::NonRoot),
];

/// Which user a container must run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    /// `runAsUser: 0`, stated explicitly.
    Root,
    /// `runAsNonRoot: true` and a non-zero `runAsUser`.
    NonRoot,
}

/// HTTP paths served per listener field (ambit-l4proxy's admin
/// responders, the waypoint's and cni-node's admin servers).
const HTTP_PATHS: &[(&str, &[&str])] = &[
    ("readiness_addr", &["/healthz/ready"]),
    ("stats_addr", &["/metrics", "/stats/prometheus"]),
    ("metrics_addr", &["/metrics", "/healthz/ready"]),
    ("admin_addr", &["/config_dump", "/quitquitquit"]),
];

/// Listener fields that carry Prometheus metrics.
const METRICS_FIELDS: &[&str] = &["stats_addr", "metrics_addr"];

/// Downward API sources for the identity variables.
const DOWNWARD: &[(&str, &str)] = &[
    ("NODE_NAME", "spec.nodeName"),
    ("POD_NAME", "metadata.name"),
    ("POD_NAMESPACE", "metadata.namespace"),
    ("INSTANCE_IP", "status.podIP"),
    ("SERVICE_ACCOUNT", "spec.serviceAccountName"),
];

/// Identity variables each binary must get from the downward API (the
/// xDS node id, the CA's view of who asks, the agent's node filter).
const NEEDS_DOWNWARD: &[(&str, Option<&str>, &[&str])] = &[
    (
        "ztunnel",
        None,
        &["NODE_NAME", "POD_NAME", "POD_NAMESPACE", "INSTANCE_IP"],
    ),
    (
        "waypoint",
        None,
        &[
            "POD_NAME",
            "POD_NAMESPACE",
            "SERVICE_ACCOUNT",
            "INSTANCE_IP",
        ],
    ),
    ("cni-node", Some("run"), &["NODE_NAME"]),
];

/// Istio's names for a node component, so istiod's defaults
/// (`CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel`), Istio's docs and
/// tooling find it.
struct IstioName {
    bin: &'static str,
    sub: Option<&'static str>,
    workload: &'static str,
    label: (&'static str, &'static str),
    service_account: &'static str,
}

const ISTIO_NAMES: &[IstioName] = &[
    IstioName {
        bin: "ztunnel",
        sub: None,
        workload: "ztunnel",
        label: ("app", "ztunnel"),
        service_account: "ztunnel",
    },
    IstioName {
        bin: "cni-node",
        sub: Some("run"),
        workload: "istio-cni-node",
        label: ("k8s-app", "istio-cni-node"),
        service_account: "istio-cni",
    },
];

/// The namespace the node components must live in (the CNI plugin skips
/// its own and ztunnel's pods there; istiod trusts `istio-system/ztunnel`).
const ISTIO_NAMESPACE: &str = "istio-system";

/// The ConfigMap istiod writes into every namespace with its root
/// certificate, and the key holding it.
const ROOT_CONFIGMAP: (&str, &str) = ("istio-ca-root-cert", "root-cert.pem");

/// The audience istiod accepts on the projected token.
const TOKEN_AUDIENCE: &str = "istio-ca";

/// Images allowed beside the binaries (the uninstall DaemonSet's idle
/// container).
const PAUSE_IMAGE: &str = "registry.k8s.io/pause";

/// Parses and checks everything: the typed round trip, the kustomizations
/// against the file list, then [`check_objects`].
pub fn check(files: &[SourceFile], bins: &Binaries) -> Vec<Problem> {
    let (parsed, mut problems) = parse_files(files);
    problems.extend(check_kustomizations(files, &parsed));
    problems.extend(check_objects(&parsed, bins));
    problems
}

/// Every `kustomization.yaml` lists exactly the manifests of its directory
/// (and existing subdirectories), every manifest is in a directory with a
/// kustomization, and every image used there has an `images` entry.
fn check_kustomizations(files: &[SourceFile], parsed: &[Parsed]) -> Vec<Problem> {
    let mut out = Vec::new();
    let kustomized: BTreeSet<&str> = files
        .iter()
        .filter(|f| f.is_kustomization())
        .map(|f| dir_of(&f.path))
        .collect();
    for f in files {
        if !f.is_kustomization() && !kustomized.contains(dir_of(&f.path)) {
            out.push(Problem::file(
                &f.path,
                "no kustomization.yaml in its directory: `kubectl apply -k` would never apply it",
            ));
        }
    }
    for p in parsed {
        let Object::Kustomization(k) = &p.object else {
            continue;
        };
        let dir = dir_of(&p.file);
        let join = |r: &str| {
            if dir.is_empty() {
                r.to_owned()
            } else {
                format!("{dir}/{r}")
            }
        };
        let listed: BTreeSet<String> = k
            .resources
            .iter()
            .map(|r| join(r.trim_end_matches('/')))
            .collect();
        for r in &listed {
            let is_file = files.iter().any(|f| &f.path == r);
            let is_dir = kustomized.contains(r.as_str());
            if !is_file && !is_dir {
                out.push(p.problem(format!(
                    "resources lists {r:?}, which is neither a manifest nor a directory with a kustomization"
                )));
            }
        }
        for f in files {
            if dir_of(&f.path) == dir && !f.is_kustomization() && !listed.contains(&f.path) {
                out.push(p.problem(format!("resources does not list {}", f.path)));
            }
        }
        let names: BTreeSet<&str> = k.images.iter().map(|i| i.name.as_str()).collect();
        for q in parsed.iter().filter(|q| dir_of(&q.file) == dir) {
            for (c, _) in pod_of(q)
                .map(|pod| containers(pod.spec))
                .unwrap_or_default()
            {
                let image = image_name(c.image.as_deref().unwrap_or(""));
                if !image.is_empty() && !names.contains(image) {
                    out.push(q.problem(format!(
                        "container {}: image {image} has no `images` entry in {}: `kustomize edit set image` could not retarget it",
                        c.name, p.file
                    )));
                }
            }
        }
    }
    out
}

/// Facts gathered across objects for the cross-object checks.
#[derive(Default)]
struct Facts {
    /// (binary, host path of the ZDS socket, where).
    pub(super) zds: Vec<(String, String, Problem)>,
}

/// Checks the parsed objects (see the module documentation).
pub fn check_objects(parsed: &[Parsed], bins: &Binaries) -> Vec<Problem> {
    let mut out = Vec::new();
    // Waypoints istiod deploys are checked as the Deployment it renders.
    let rendered = istiod::render_all(parsed, &mut out);
    let mut all: Vec<Parsed> = parsed.to_vec();
    for r in &rendered {
        all.push(r.deployment.clone());
        all.push(r.service_account.clone());
    }
    let mut problems = check_all(&all, bins);
    for p in &mut problems {
        let Some(r) = rendered.iter().find(|r| {
            p.file == r.deployment.file
                && p.doc == Some(r.deployment.doc)
                && p.object.as_deref() == Some(r.deployment.label().as_str())
        }) else {
            continue;
        };
        p.object = Some(format!(
            "{} (istiod's, for {}, patched by {})",
            r.deployment.label(),
            r.gateway,
            r.config_map
        ));
    }
    problems.retain(|p| !istiod::template_env_noise(p));
    out.extend(problems);
    out
}

fn check_all(parsed: &[Parsed], bins: &Binaries) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut facts = Facts::default();
    let pods: Vec<Pod<'_>> = parsed.iter().filter_map(pod_of).collect();
    for pod in &pods {
        check_pod(pod, parsed, bins, &mut facts, &mut out);
    }
    // One ZDS socket: the agent's and ztunnel's paths on the host agree.
    let agent: BTreeSet<&str> = facts
        .zds
        .iter()
        .filter(|z| z.0 == "cni-node")
        .map(|z| z.1.as_str())
        .collect();
    for (bin, path, at) in &facts.zds {
        if bin == "ztunnel" && !agent.is_empty() && !agent.contains(path.as_str()) {
            let mut p = at.clone();
            p.message = format!(
                "{}: ztunnel's ZDS socket is {path} on the host, cni-node serves {:?}",
                p.message,
                agent.iter().collect::<Vec<_>>()
            );
            out.push(p);
        }
    }
    for p in parsed {
        match &p.object {
            Object::Service(_) => check_service(p, &pods, bins, &mut out),
            Object::ClusterRoleBinding(_) | Object::RoleBinding(_) => {
                check_binding(p, parsed, &mut out)
            }
            Object::PodDisruptionBudget(_) => check_pdb(p, parsed, &pods, &mut out),
            Object::HorizontalPodAutoscaler(_) => check_hpa(p, parsed, &mut out),
            Object::Gateway(_) => check_gateway(p, parsed, &pods, bins, &mut out),
            _ => {}
        }
    }
    out
}
