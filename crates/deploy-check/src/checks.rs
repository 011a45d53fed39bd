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
//! PodDisruptionBudget and HPA, the waypoint Gateway, and the
//! kustomizations listing every file and image.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::binaries::{ArgDef, Binaries, Binary};
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
/// responders, the waypoint's main.rs, cni-node's metrics.rs).
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

/// The image without tag or digest.
fn image_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => no_digest,
    }
}

/// A pod template inside a workload.
struct Pod<'a> {
    owner: &'a Parsed,
    spec: &'a PodSpec,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
}

fn pod_of(p: &Parsed) -> Option<Pod<'_>> {
    let (template, selector) = match &p.object {
        Object::DaemonSet(d) => {
            let s = d.spec.as_ref()?;
            (&s.template, &s.selector)
        }
        Object::Deployment(d) => {
            let s = d.spec.as_ref()?;
            (&s.template, &s.selector)
        }
        _ => return None,
    };
    let meta = template.metadata.clone().unwrap_or_default();
    Some(Pod {
        owner: p,
        spec: template.spec.as_ref()?,
        labels: meta.labels.unwrap_or_default(),
        annotations: meta.annotations.unwrap_or_default(),
        selector: selector.match_labels.clone().unwrap_or_default(),
    })
}

/// Init containers first, each with whether it is one.
fn containers(spec: &PodSpec) -> Vec<(&Container, bool)> {
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| (c, true))
        .chain(spec.containers.iter().map(|c| (c, false)))
        .collect()
}

/// Where a setting's effective value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Default(String),
    Env(String),
    Flag(String),
    /// `valueFrom`: the downward API field path, or `""` for other sources.
    FieldRef(String),
}

impl Setting {
    fn literal(&self) -> Option<&str> {
        match self {
            Self::Default(s) | Self::Env(s) | Self::Flag(s) => Some(s),
            Self::FieldRef(_) => None,
        }
    }
}

/// A container running one of the binaries, with its effective settings.
struct Run<'a> {
    pod: &'a Pod<'a>,
    c: &'a Container,
    bin: &'a Binary,
    sub: Option<String>,
    settings: BTreeMap<String, Setting>,
    /// Non-loopback and loopback listeners: field → address.
    listeners: Vec<(String, SocketAddr)>,
}

impl Run<'_> {
    fn what(&self) -> String {
        match &self.sub {
            Some(s) => format!("container {} ({} {s})", self.c.name, self.bin.name),
            None => format!("container {} ({})", self.c.name, self.bin.name),
        }
    }

    fn problem(&self, msg: impl fmt::Display) -> Problem {
        self.pod.owner.problem(format!("{}: {msg}", self.what()))
    }

    fn value(&self, field: &str) -> Option<&str> {
        self.settings.get(field).and_then(Setting::literal)
    }

    /// The listener serving `port` (a number, or a containerPort name).
    fn listener_for(&self, port: &IntOrString) -> Result<&(String, SocketAddr), String> {
        let n = match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => self
                .c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| {
                    format!("port name {name:?} is not a containerPort of this container")
                })?,
        };
        self.listeners
            .iter()
            .find(|(_, a)| i32::from(a.port()) == n)
            .ok_or_else(|| {
                format!(
                    "port {n} is not one {} listens on ({})",
                    self.bin.name,
                    self.listeners
                        .iter()
                        .map(|(f, a)| format!("{f}={a}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    fn sub_is(&self, s: &str) -> bool {
        self.sub.as_deref() == Some(s)
    }
}

/// Reads a container: which binary, which subcommand, the effective value
/// of every argument. Problems go to `out`; `None` if it runs no binary.
fn read_run<'a>(
    pod: &'a Pod<'a>,
    c: &'a Container,
    bins: &'a Binaries,
    out: &mut Vec<Problem>,
) -> Option<Run<'a>> {
    let p = pod.owner;
    let image = c.image.as_deref().unwrap_or("");
    if image_name(image) == PAUSE_IMAGE && c.command.is_none() && c.env.is_none() {
        return None;
    }
    let Some(cmd) = c.command.as_ref().and_then(|v| v.first()) else {
        out.push(p.problem(format!(
            "container {}: no `command`; name the binary (e.g. /usr/local/bin/ztunnel) so it can be checked",
            c.name
        )));
        return None;
    };
    let bin_name = cmd.rsplit('/').next().unwrap_or(cmd);
    let Some(bin) = bins.get(bin_name) else {
        out.push(p.problem(format!(
            "container {}: command {cmd:?} is none of the binaries ({})",
            c.name,
            bins.bins.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
        return None;
    };
    let image_base = image_name(image).rsplit('/').next().unwrap_or("");
    if image_base != bin.name {
        out.push(p.problem(format!(
            "container {}: runs {} from image {image:?}; the image should be named after the binary",
            c.name, bin.name
        )));
    }
    let mut argv: Vec<&str> = c
        .command
        .iter()
        .flatten()
        .skip(1)
        .chain(c.args.iter().flatten())
        .map(String::as_str)
        .collect();
    let sub = if bin.subcommands.is_empty() {
        None
    } else {
        match argv.first() {
            Some(s) if bin.subcommands.contains_key(*s) => {
                let s = (*s).to_owned();
                argv.remove(0);
                Some(s)
            }
            other => {
                out.push(p.problem(format!(
                    "container {}: {} needs a subcommand first ({}), got {other:?}",
                    c.name,
                    bin.name,
                    bin.subcommands.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
                return None;
            }
        }
    };
    let mut run = Run {
        pod,
        c,
        bin,
        sub,
        settings: BTreeMap::new(),
        listeners: Vec::new(),
    };
    let args: Vec<&ArgDef> = bin.args(run.sub.as_deref());
    for a in &args {
        if let Some(d) = &a.default {
            run.settings
                .insert(a.field.clone(), Setting::Default(d.clone()));
        }
    }
    if c.env_from.is_some() {
        out.push(run.problem("envFrom hides which variables are set; list them under env"));
    }
    for e in c.env.iter().flatten() {
        if e.name == "CNI_COMMAND" {
            out.push(run.problem("sets CNI_COMMAND, which turns cni-node into the CNI plugin"));
            continue;
        }
        if !bin.reads_env(run.sub.as_deref(), &e.name) {
            out.push(run.problem(format!(
                "env {} is not read by {}{} (not an `env = ...` of its clap arguments, nor read by hand)",
                e.name,
                bin.name,
                run.sub.as_deref().map(|s| format!(" {s}")).unwrap_or_default()
            )));
            continue;
        }
        let setting = match (&e.value, &e.value_from) {
            (Some(v), None) => Setting::Env(v.clone()),
            (None, Some(from)) => Setting::FieldRef(
                from.field_ref
                    .as_ref()
                    .map(|f| f.field_path.clone())
                    .unwrap_or_default(),
            ),
            (None, None) => Setting::Env(String::new()),
            (Some(_), Some(_)) => {
                out.push(run.problem(format!("env {}: both value and valueFrom", e.name)));
                continue;
            }
        };
        if let Some((_, want)) = DOWNWARD.iter().find(|(n, _)| *n == e.name) {
            match &setting {
                Setting::FieldRef(path) if path == want => {}
                other => out.push(run.problem(format!(
                    "env {} must come from the downward API fieldRef {want}, not {other:?}",
                    e.name
                ))),
            }
        }
        if let Some(a) = args
            .iter()
            .find(|a| a.env.as_deref() == Some(e.name.as_str()))
        {
            run.settings.insert(a.field.clone(), setting);
        }
    }
    let mut i = 0;
    while i < argv.len() {
        let word = argv[i];
        i += 1;
        let Some(flag) = word.strip_prefix("--") else {
            out.push(run.problem(format!("unexpected argument {word:?}")));
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag, None),
        };
        let Some(a) = args.iter().find(|a| a.long.as_deref() == Some(name)) else {
            out.push(run.problem(format!("flag --{name} is not one {} accepts", bin.name)));
            continue;
        };
        let value = match inline {
            Some(v) => v,
            None if i < argv.len() && !argv[i].starts_with("--") => {
                i += 1;
                argv[i - 1].to_owned()
            }
            None => "true".to_owned(),
        };
        run.settings.insert(a.field.clone(), Setting::Flag(value));
    }
    for a in &args {
        if a.required && !run.settings.contains_key(&a.field) {
            out.push(run.problem(format!(
                "required argument {} is not set ({})",
                a.field,
                a.env
                    .as_deref()
                    .map(|e| format!("env {e}"))
                    .or(a.long.as_deref().map(|l| format!("--{l}")))
                    .unwrap_or_default()
            )));
        }
    }
    for (field, s) in &run.settings {
        if let Some(addr) = s.literal().and_then(|v| v.parse::<SocketAddr>().ok()) {
            run.listeners.push((field.clone(), addr));
        }
    }
    for (b, sub, names) in NEEDS_DOWNWARD {
        if *b != bin.name || sub.is_some() && *sub != run.sub.as_deref() {
            continue;
        }
        for n in *names {
            if bin.reads_env(run.sub.as_deref(), n) && !c.env.iter().flatten().any(|e| e.name == *n)
            {
                out.push(run.problem(format!("env {n} is not set (from the downward API)")));
            }
        }
    }
    Some(run)
}

/// The mount holding `path` (longest mountPath that is a prefix on a
/// component boundary), its volume and the rest of the path.
fn mount_for<'a>(
    spec: &'a PodSpec,
    c: &'a Container,
    path: &str,
) -> Option<(&'a VolumeMount, &'a Volume, String)> {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| {
            let mp = m.mount_path.trim_end_matches('/');
            path == mp || path.starts_with(&format!("{mp}/"))
        })
        .max_by_key(|m| m.mount_path.len())?;
    let v = spec.volumes.iter().flatten().find(|v| v.name == m.name)?;
    let rest = path[m.mount_path.trim_end_matches('/').len()..]
        .trim_start_matches('/')
        .to_owned();
    Some((m, v, rest))
}

/// The host path behind `path` if it is on a hostPath mount.
fn host_path(spec: &PodSpec, c: &Container, path: &str) -> Option<(String, bool)> {
    let (m, v, rest) = mount_for(spec, c, path)?;
    if m.sub_path.is_some() || m.sub_path_expr.is_some() {
        return None;
    }
    let hp = v.host_path.as_ref()?;
    let base = hp.path.trim_end_matches('/');
    let full = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{rest}")
    };
    Some((full, m.read_only == Some(true)))
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/')
        .map(|(d, _)| d)
        .filter(|d| !d.is_empty())
        .unwrap_or("/")
}

/// Facts gathered across objects for the cross-object checks.
#[derive(Default)]
struct Facts {
    /// (binary, host path of the ZDS socket, where).
    zds: Vec<(String, String, Problem)>,
}

/// Checks the parsed objects (see the module documentation).
pub fn check_objects(parsed: &[Parsed], bins: &Binaries) -> Vec<Problem> {
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

fn check_pod(
    pod: &Pod<'_>,
    parsed: &[Parsed],
    bins: &Binaries,
    facts: &mut Facts,
    out: &mut Vec<Problem>,
) {
    let owner = pod.owner;
    for (k, v) in &pod.selector {
        if pod.labels.get(k) != Some(v) {
            out.push(owner.problem(format!(
                "selector {k}={v} does not match the pod template's labels"
            )));
        }
    }
    let sa = pod
        .spec
        .service_account_name
        .as_deref()
        .unwrap_or("default");
    if sa != "default"
        && !parsed.iter().any(|q| {
            matches!(q.object, Object::ServiceAccount(_))
                && q.object.name() == sa
                && q.namespace == owner.namespace
        })
    {
        out.push(owner.problem(format!(
            "serviceAccountName {sa} has no ServiceAccount in these manifests (namespace {:?})",
            owner.namespace
        )));
    }
    let runs: Vec<(Run<'_>, bool)> = containers(pod.spec)
        .into_iter()
        .filter_map(|(c, init)| read_run(pod, c, bins, out).map(|r| (r, init)))
        .collect();
    for (run, _) in &runs {
        check_ports(run, out);
        check_security(run, out);
        check_paths(run, &runs, facts, out);
        check_names(run, parsed, sa, out);
    }
    // Prometheus scrape annotations name a metrics listener.
    if pod
        .annotations
        .get("prometheus.io/scrape")
        .map(String::as_str)
        == Some("true")
    {
        let port = pod.annotations.get("prometheus.io/port");
        let path = pod
            .annotations
            .get("prometheus.io/path")
            .map(String::as_str)
            .unwrap_or("/metrics");
        let ok = runs.iter().any(|(r, _)| {
            r.listeners.iter().any(|(f, a)| {
                METRICS_FIELDS.contains(&f.as_str())
                    && port.is_some_and(|p| *p == a.port().to_string())
                    && !a.ip().is_loopback()
                    && paths_of(f).contains(&path)
            })
        });
        if !ok {
            out.push(owner.problem(format!(
                "prometheus.io/port {port:?} path {path:?} is not a metrics listener of the pod's binaries"
            )));
        }
    }
}

fn paths_of(field: &str) -> &'static [&'static str] {
    HTTP_PATHS
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, p)| *p)
        .unwrap_or(&[])
}

fn check_ports(run: &Run<'_>, out: &mut Vec<Problem>) {
    for p in run.c.ports.iter().flatten() {
        match run.listener_for(&IntOrString::Int(p.container_port)) {
            Ok((f, a)) if a.ip().is_loopback() => out.push(run.problem(format!(
                "containerPort {} is bound to {a} ({f}): unreachable from outside the pod",
                p.container_port
            ))),
            Ok(_) => {}
            Err(e) => out.push(run.problem(format!("containerPort: {e}"))),
        }
    }
    let probes = [
        ("readinessProbe", &run.c.readiness_probe),
        ("livenessProbe", &run.c.liveness_probe),
        ("startupProbe", &run.c.startup_probe),
    ];
    for (what, probe) in probes {
        let Some(probe) = probe else { continue };
        let (port, path) = if let Some(h) = &probe.http_get {
            (&h.port, Some(h.path.as_deref().unwrap_or("/")))
        } else if let Some(t) = &probe.tcp_socket {
            (&t.port, None)
        } else {
            out.push(run.problem(format!(
                "{what}: only httpGet and tcpSocket probes can be checked"
            )));
            continue;
        };
        match run.listener_for(port) {
            Err(e) => out.push(run.problem(format!("{what}: {e}"))),
            Ok((f, a)) => {
                if a.ip().is_loopback() && run.pod.spec.host_network != Some(true) {
                    out.push(run.problem(format!(
                        "{what}: {f} is bound to {a}, the kubelet cannot reach it"
                    )));
                }
                if let Some(path) = path
                    && !paths_of(f).contains(&path)
                {
                    out.push(run.problem(format!(
                        "{what}: {f} ({a}) does not serve {path:?} (it serves {:?})",
                        paths_of(f)
                    )));
                }
            }
        }
    }
}

fn check_security(run: &Run<'_>, out: &mut Vec<Problem>) {
    let Some((_, _, want, run_as)) = SECURITY
        .iter()
        .find(|(b, s, _, _)| *b == run.bin.name && (s.is_none() || *s == run.sub.as_deref()))
    else {
        out.push(
            run.problem("no entry in the checker's SECURITY table for this binary/subcommand"),
        );
        return;
    };
    let sc = run.c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    if !caps.drop.iter().flatten().any(|d| d == "ALL") {
        out.push(run.problem("securityContext.capabilities.drop must contain ALL"));
    }
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    let wanted: BTreeSet<&str> = want.iter().copied().collect();
    if added != wanted {
        out.push(run.problem(format!(
            "capabilities.add is {added:?}; {} needs exactly {wanted:?}",
            run.bin.name
        )));
    }
    if sc.privileged == Some(true) {
        out.push(run.problem("privileged: true; the capabilities above are all it needs"));
    }
    if wanted.contains("SYS_ADMIN") && sc.allow_privilege_escalation == Some(false) {
        out.push(run.problem(
            "allowPrivilegeEscalation: false with CAP_SYS_ADMIN is rejected by the API server",
        ));
    }
    if wanted.is_empty() && sc.allow_privilege_escalation != Some(false) {
        out.push(run.problem("allowPrivilegeEscalation must be false (it needs no capability)"));
    }
    let psc = run.pod.spec.security_context.clone().unwrap_or_default();
    let user = sc.run_as_user.or(psc.run_as_user);
    let non_root = sc.run_as_non_root.or(psc.run_as_non_root);
    match run_as {
        RunAs::Root if user != Some(0) || non_root == Some(true) => out.push(run.problem(
            "must run as root (runAsUser: 0, stated): see SECURITY in ambit-deploy-check",
        )),
        RunAs::NonRoot if non_root != Some(true) || user.unwrap_or(0) == 0 => out.push(
            run.problem("must run as non-root (runAsNonRoot: true and a non-zero runAsUser)"),
        ),
        _ => {}
    }
}

/// Mount and mode checks per binary.
fn check_paths(run: &Run<'_>, runs: &[(Run<'_>, bool)], facts: &mut Facts, out: &mut Vec<Problem>) {
    let spec = run.pod.spec;
    let host_network = spec.host_network == Some(true);
    match run.bin.name.as_str() {
        "ztunnel" | "waypoint" => {
            let mut istiod = false;
            for (addr_f, root_f) in [
                ("xds_address", "xds_root_cert"),
                ("ca_address", "ca_root_cert"),
            ] {
                let Some(addr) = run.value(addr_f) else {
                    continue;
                };
                istiod = true;
                if !(addr.starts_with("https://") || addr.starts_with("http://")) {
                    out.push(run.problem(format!(
                        "{addr_f} {addr:?} must start with https:// or http:// (the binary refuses a bare host:port)"
                    )));
                }
                if !addr.starts_with("https://") {
                    continue;
                }
                let Some(root) = run.value(root_f) else {
                    out.push(run.problem(format!("{addr_f} is https:// but {root_f} is not set")));
                    continue;
                };
                check_root_cert(run, root_f, root, out);
            }
            if istiod {
                let token = run.value("auth_token_path").unwrap_or("");
                check_token(run, token, out);
            }
            if let Some(d) = run
                .value("drain_seconds")
                .and_then(|d| d.parse::<i64>().ok())
            {
                let grace = spec.termination_grace_period_seconds.unwrap_or(30);
                if grace <= d + 1 {
                    out.push(run.problem(format!(
                        "terminationGracePeriodSeconds {grace} must exceed the drain ({d} s) + 1 s, or draining connections are killed"
                    )));
                }
            }
            if run.bin.name == "ztunnel" {
                if run.value("inpod") != Some("true") {
                    out.push(run.problem("INPOD_ENABLED must be true: these manifests deploy in-pod capture (Istio 1.21+) only"));
                }
                if host_network {
                    out.push(run.problem("hostNetwork must be off for in-pod ztunnel (it works in the pods' namespaces)"));
                }
                zds_socket(run, "inpod_uds", facts, out);
            }
        }
        "cni-node" if run.sub_is("run") => {
            if run.value("mode") != Some("inpod") {
                out.push(run.problem("--mode / AMBIENT_CAPTURE_MODE must be inpod (the only mode these manifests support)"));
            }
            if !host_network {
                out.push(run.problem(
                    "hostNetwork must be on: the agent programs the node's own namespace",
                ));
            }
            zds_socket(run, "zds_socket", facts, out);
            let dir = run.value("run_dir").unwrap_or("");
            match host_path(spec, run.c, dir) {
                Some((h, ro)) if h == dir && !ro => {}
                Some((h, ro)) => out.push(run.problem(format!(
                    "run dir {dir} is host path {h}{}: the plugin on the host dials {dir}/pluginevent.sock, so both must be the same and writable",
                    if ro { " (read-only)" } else { "" }
                ))),
                None => out.push(run.problem(format!("run dir {dir} is not on a hostPath volume"))),
            }
            let netns_ok = run.c.volume_mounts.iter().flatten().any(|m| {
                let mp = m.mount_path.trim_end_matches('/');
                (mp == "/var/run/netns" || mp == "/run/netns")
                    && host_path(spec, run.c, mp).is_some_and(|(h, _)| h == mp)
                    && matches!(
                        m.mount_propagation.as_deref(),
                        Some("HostToContainer" | "Bidirectional")
                    )
            });
            if !netns_ok {
                out.push(run.problem(
                    "pods' netns paths (CNI_NETNS, e.g. /var/run/netns/cni-…) must be visible at the same path: mount hostPath /var/run/netns at /var/run/netns with mountPropagation HostToContainer",
                ));
            }
        }
        "cni-node" => {
            for field in ["cni_net_dir", "cni_bin_dir"] {
                let dir = run.value(field).unwrap_or("");
                match host_path(spec, run.c, dir) {
                    Some((_, false)) => {}
                    Some((h, true)) => out.push(
                        run.problem(format!("{field} {dir} (host {h}) is mounted read-only")),
                    ),
                    None => {
                        out.push(run.problem(format!("{field} {dir} is not on a hostPath volume")))
                    }
                }
            }
            if run.sub_is("install") {
                let mine = run.value("run_dir");
                for (other, _) in runs
                    .iter()
                    .filter(|(r, _)| r.bin.name == "cni-node" && r.sub_is("run"))
                {
                    if other.value("run_dir") != mine {
                        out.push(run.problem(format!(
                            "writes cni_agent_run_dir {mine:?} into the CNI config, but the agent in container {} uses {:?}",
                            other.c.name,
                            other.value("run_dir")
                        )));
                    }
                }
                if !runs
                    .iter()
                    .any(|(r, _)| r.bin.name == "cni-node" && r.sub_is("run"))
                {
                    out.push(run.problem("installs the plugin but no container of this pod runs the agent (`cni-node run`)"));
                }
            }
        }
        _ => {}
    }
}

fn zds_socket(run: &Run<'_>, field: &str, facts: &mut Facts, out: &mut Vec<Problem>) {
    let sock = run.value(field).unwrap_or("");
    match host_path(run.pod.spec, run.c, parent(sock)) {
        Some((h, false)) => facts.zds.push((
            run.bin.name.clone(),
            format!("{h}/{}", sock.rsplit('/').next().unwrap_or("")),
            run.problem(format!("ZDS socket {sock}")),
        )),
        Some((_, true)) => out.push(run.problem(format!("the ZDS socket's directory {} is read-only", parent(sock)))),
        None => out.push(run.problem(format!(
            "the ZDS socket {sock}: its directory is not on a hostPath volume shared by cni-node and ztunnel"
        ))),
    }
}

fn check_root_cert(run: &Run<'_>, field: &str, path: &str, out: &mut Vec<Problem>) {
    let Some((_, v, rest)) = mount_for(run.pod.spec, run.c, path) else {
        out.push(run.problem(format!("{field} {path} is not on any volume mount")));
        return;
    };
    let Some(cm) = &v.config_map else {
        out.push(run.problem(format!(
            "{field} {path} is on volume {}, not the {} ConfigMap",
            v.name, ROOT_CONFIGMAP.0
        )));
        return;
    };
    let key = match &cm.items {
        Some(items) => items
            .iter()
            .find(|i| i.path == rest)
            .map(|i| i.key.as_str()),
        None => Some(rest.as_str()),
    };
    if cm.name != ROOT_CONFIGMAP.0 || key != Some(ROOT_CONFIGMAP.1) {
        out.push(run.problem(format!(
            "{field} {path} is key {key:?} of ConfigMap {}; istiod's root is key {} of {}",
            cm.name, ROOT_CONFIGMAP.1, ROOT_CONFIGMAP.0
        )));
    }
}

fn check_token(run: &Run<'_>, path: &str, out: &mut Vec<Problem>) {
    let ok = mount_for(run.pod.spec, run.c, path).is_some_and(|(_, v, rest)| {
        v.projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .any(|s| {
                s.service_account_token.as_ref().is_some_and(|t| {
                    t.path == rest && t.audience.as_deref() == Some(TOKEN_AUDIENCE)
                })
            })
    });
    if !ok {
        out.push(run.problem(format!(
            "AUTH_TOKEN_PATH {path} is not a projected serviceAccountToken with audience {TOKEN_AUDIENCE}"
        )));
    }
}

fn check_names(run: &Run<'_>, parsed: &[Parsed], sa: &str, out: &mut Vec<Problem>) {
    let owner = run.pod.owner;
    for n in ISTIO_NAMES {
        let (name, (lk, lv), want_sa) = (n.workload, n.label, n.service_account);
        if n.bin != run.bin.name || n.sub.is_some() && n.sub != run.sub.as_deref() {
            continue;
        }
        if owner.object.name() != name {
            out.push(run.problem(format!(
                "the workload should be named {name}, as Istio names it"
            )));
        }
        if run.pod.labels.get(lk).map(String::as_str) != Some(lv) {
            out.push(run.problem(format!(
                "the pod template needs label {lk}: {lv}, as Istio's"
            )));
        }
        if sa != want_sa {
            out.push(run.problem(format!(
                "serviceAccountName should be {want_sa}, as Istio's"
            )));
        }
        if owner.namespace.as_deref() != Some(ISTIO_NAMESPACE) {
            out.push(run.problem(format!(
                "must be in namespace {ISTIO_NAMESPACE}, is in {:?}",
                owner.namespace
            )));
        }
    }
    if run.bin.name == "cni-node" && run.sub_is("run") {
        for resource in ["pods", "namespaces"] {
            for verb in ["get", "list", "watch"] {
                if !may(parsed, sa, owner.namespace.as_deref(), resource, verb) {
                    out.push(run.problem(format!(
                        "service account {sa} may not {verb} {resource} (the agent's pod source watches them)"
                    )));
                }
            }
        }
        if !may(
            parsed,
            sa,
            owner.namespace.as_deref(),
            "pods/status",
            "patch",
        ) {
            out.push(run.problem(format!(
                "service account {sa} may not patch pods/status (the agent sets ambient.istio.io/redirection on enrolled pods)"
            )));
        }
    }
}

/// Whether `sa` in `ns` is bound (ClusterRoleBinding → ClusterRole) to a
/// rule allowing `verb` on core `resource`.
fn may(parsed: &[Parsed], sa: &str, ns: Option<&str>, resource: &str, verb: &str) -> bool {
    let has = |v: &Option<Vec<String>>, x: &str| v.iter().flatten().any(|s| s == x || s == "*");
    parsed.iter().any(|b| {
        let Object::ClusterRoleBinding(b) = &b.object else {
            return false;
        };
        let bound =
            b.subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == ns
            });
        bound
            && parsed.iter().any(|r| match &r.object {
                Object::ClusterRole(role)
                    if role.metadata.name.as_deref() == Some(b.role_ref.name.as_str()) =>
                {
                    role.rules.iter().flatten().any(|rule| {
                        has(&rule.api_groups, "")
                            && has(&rule.resources, resource)
                            && rule.verbs.iter().any(|v| v == verb || v == "*")
                    })
                }
                _ => false,
            })
    })
}

fn check_binding(p: &Parsed, parsed: &[Parsed], out: &mut Vec<Problem>) {
    let (role_ref, subjects) = match &p.object {
        Object::ClusterRoleBinding(b) => (&b.role_ref, &b.subjects),
        Object::RoleBinding(b) => (&b.role_ref, &b.subjects),
        _ => return,
    };
    let role_exists = parsed
        .iter()
        .any(|r| match (&r.object, role_ref.kind.as_str()) {
            (Object::ClusterRole(_), "ClusterRole") => r.object.name() == role_ref.name,
            (Object::Role(_), "Role") => {
                r.object.name() == role_ref.name && r.namespace == p.namespace
            }
            _ => false,
        });
    if !role_exists {
        out.push(p.problem(format!(
            "roleRef {} {} is not in these manifests",
            role_ref.kind, role_ref.name
        )));
    }
    for s in subjects
        .iter()
        .flatten()
        .filter(|s| s.kind == "ServiceAccount")
    {
        let ns = s.namespace.clone().or(p.namespace.clone());
        if !parsed.iter().any(|q| {
            matches!(q.object, Object::ServiceAccount(_))
                && q.object.name() == s.name
                && q.namespace == ns
        }) {
            out.push(p.problem(format!(
                "subject ServiceAccount {} (namespace {ns:?}) is not in these manifests",
                s.name
            )));
        }
    }
}

/// Pods (workloads) in `ns` whose template labels include `selector`.
fn selected<'a>(
    pods: &'a [Pod<'a>],
    ns: &Option<String>,
    selector: &BTreeMap<String, String>,
) -> Vec<&'a Pod<'a>> {
    if selector.is_empty() {
        return Vec::new();
    }
    pods.iter()
        .filter(|p| {
            &p.owner.namespace == ns && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        })
        .collect()
}

fn check_service(p: &Parsed, pods: &[Pod<'_>], bins: &Binaries, out: &mut Vec<Problem>) {
    let Object::Service(s) = &p.object else {
        return;
    };
    let Some(spec) = &s.spec else {
        out.push(p.problem("no spec"));
        return;
    };
    let selector = spec.selector.clone().unwrap_or_default();
    let targets = selected(pods, &p.namespace, &selector);
    if targets.is_empty() {
        out.push(p.problem(format!(
            "selector {selector:?} matches no workload in these manifests"
        )));
        return;
    }
    for port in spec.ports.iter().flatten() {
        let target = port
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(port.port));
        for pod in &targets {
            let mut sink = Vec::new();
            let served = containers(pod.spec).into_iter().any(|(c, init)| {
                !init
                    && read_run(pod, c, bins, &mut sink).is_some_and(|r| {
                        r.listener_for(&target)
                            .is_ok_and(|(_, a)| !a.ip().is_loopback())
                    })
            });
            if !served {
                out.push(p.problem(format!(
                    "port {} → targetPort {target:?}: no container of {} listens there",
                    port.port,
                    pod.owner.label()
                )));
            }
        }
    }
}

fn check_pdb(p: &Parsed, parsed: &[Parsed], pods: &[Pod<'_>], out: &mut Vec<Problem>) {
    let Object::PodDisruptionBudget(pdb) = &p.object else {
        return;
    };
    let spec = pdb.spec.clone().unwrap_or_default();
    let selector = spec
        .selector
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    let targets = selected(pods, &p.namespace, &selector);
    if targets.is_empty() {
        out.push(p.problem("selector matches no workload in these manifests"));
    }
    let Some(IntOrString::Int(min)) = spec.min_available else {
        return;
    };
    for t in targets {
        let Object::Deployment(d) = &t.owner.object else {
            continue;
        };
        let hpa_min = parsed.iter().find_map(|h| match &h.object {
            Object::HorizontalPodAutoscaler(h) => h
                .spec
                .as_ref()
                .filter(|s| s.scale_target_ref.name == t.owner.object.name())
                .map(|s| s.min_replicas.unwrap_or(1)),
            _ => None,
        });
        let floor =
            hpa_min.unwrap_or_else(|| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1));
        if floor <= min {
            out.push(p.problem(format!(
                "minAvailable {min} with at least {floor} replica(s) of {}: no pod could ever be evicted (node drains hang)",
                t.owner.label()
            )));
        }
    }
}

fn check_hpa(p: &Parsed, parsed: &[Parsed], out: &mut Vec<Problem>) {
    let Object::HorizontalPodAutoscaler(h) = &p.object else {
        return;
    };
    let Some(spec) = &h.spec else {
        out.push(p.problem("no spec"));
        return;
    };
    let r = &spec.scale_target_ref;
    let target = parsed.iter().find(|q| {
        matches!(q.object, Object::Deployment(_))
            && r.kind == "Deployment"
            && q.object.name() == r.name
            && q.namespace == p.namespace
    });
    let Some(target) = target else {
        out.push(p.problem(format!(
            "scaleTargetRef {} {} is not a Deployment in these manifests",
            r.kind, r.name
        )));
        return;
    };
    if spec.min_replicas.unwrap_or(1) > spec.max_replicas {
        out.push(p.problem("minReplicas > maxReplicas"));
    }
    let Some(pod) = pod_of(target) else { return };
    for m in spec.metrics.iter().flatten() {
        let Some(res) = &m.resource else { continue };
        if res.target.type_ != "Utilization" {
            continue;
        }
        for (c, init) in containers(pod.spec) {
            let has = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some_and(|q| q.contains_key(&res.name));
            if !init && !has {
                out.push(p.problem(format!(
                    "scales on {} utilization but container {} of {} requests no {}",
                    res.name,
                    c.name,
                    target.label(),
                    res.name
                )));
            }
        }
    }
}

fn check_gateway(
    p: &Parsed,
    parsed: &[Parsed],
    pods: &[Pod<'_>],
    bins: &Binaries,
    out: &mut Vec<Problem>,
) {
    let Object::Gateway(g) = &p.object else {
        return;
    };
    if g.spec.gateway_class_name != "istio-waypoint" {
        out.push(p.problem("gatewayClassName must be istio-waypoint"));
    }
    let ns = p.namespace.clone().unwrap_or_default();
    let [addr] = g.spec.addresses.as_slice() else {
        out.push(p.problem(
            "needs exactly one address of type Hostname (the waypoint Service): without it istiod deploys its own Envoy waypoint",
        ));
        return;
    };
    let service = addr
        .value
        .strip_suffix(&format!(".{ns}.svc.cluster.local"))
        .filter(|_| addr.type_.as_deref() == Some("Hostname"));
    let svc = service.and_then(|name| {
        parsed.iter().find(|q| {
            matches!(q.object, Object::Service(_))
                && q.object.name() == name
                && q.namespace == p.namespace
        })
    });
    let Some(svc) = svc else {
        out.push(p.problem(format!(
            "address {:?} must be Hostname <service>.{ns}.svc.cluster.local of a Service in these manifests",
            addr.value
        )));
        return;
    };
    let Object::Service(s) = &svc.object else {
        return;
    };
    let spec = s.spec.clone().unwrap_or_default();
    let targets = selected(
        pods,
        &svc.namespace,
        &spec.selector.clone().unwrap_or_default(),
    );
    for l in &g.spec.listeners {
        if l.protocol != "HBONE" {
            out.push(p.problem(format!("listener {}: protocol must be HBONE", l.name)));
            continue;
        }
        let Some(port) = spec
            .ports
            .iter()
            .flatten()
            .find(|sp| sp.port == i32::from(l.port))
        else {
            out.push(p.problem(format!(
                "listener {}: port {} is not a port of {}",
                l.name,
                l.port,
                svc.label()
            )));
            continue;
        };
        let target = port
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(port.port));
        let hbone = targets.iter().any(|pod| {
            let mut sink = Vec::new();
            containers(pod.spec).into_iter().any(|(c, _)| {
                read_run(pod, c, bins, &mut sink).is_some_and(|r| {
                    r.listener_for(&target)
                        .is_ok_and(|(f, _)| f == "hbone_addr")
                })
            })
        });
        if !hbone {
            out.push(p.problem(format!(
                "listener {}: {} port {} does not reach a waypoint's HBONE listener",
                l.name,
                svc.label(),
                l.port
            )));
        }
    }
}
