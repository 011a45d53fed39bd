//! A container's effective settings: which binary and subcommand it runs,
//! and each argument's value from its flag, env or clap default.

use super::*;
/// The image without tag or digest.
pub(super) fn image_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => no_digest,
    }
}

/// A pod template inside a workload.
pub(super) struct Pod<'a> {
    pub(super) owner: &'a Parsed,
    pub(super) spec: &'a PodSpec,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) annotations: BTreeMap<String, String>,
    pub(super) selector: BTreeMap<String, String>,
}

pub(super) fn pod_of(p: &Parsed) -> Option<Pod<'_>> {
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
pub(super) fn containers(spec: &PodSpec) -> Vec<(&Container, bool)> {
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| (c, true))
        .chain(spec.containers.iter().map(|c| (c, false)))
        .collect()
}

/// Where a setting's effective value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Setting {
    Default(String),
    Env(String),
    Flag(String),
    /// `valueFrom`: the downward API field path, or `""` for other sources.
    FieldRef(String),
}

impl Setting {
    pub(super) fn literal(&self) -> Option<&str> {
        match self {
            Self::Default(s) | Self::Env(s) | Self::Flag(s) => Some(s),
            Self::FieldRef(_) => None,
        }
    }
}

/// A container running one of the binaries, with its effective settings.
pub(super) struct Run<'a> {
    pub(super) pod: &'a Pod<'a>,
    pub(super) c: &'a Container,
    pub(super) bin: &'a Binary,
    pub(super) sub: Option<String>,
    pub(super) settings: BTreeMap<String, Setting>,
    /// Non-loopback and loopback listeners: field → address.
    pub(super) listeners: Vec<(String, SocketAddr)>,
}

impl Run<'_> {
    pub(super) fn what(&self) -> String {
        match &self.sub {
            Some(s) => format!("container {} ({} {s})", self.c.name, self.bin.name),
            None => format!("container {} ({})", self.c.name, self.bin.name),
        }
    }

    pub(super) fn problem(&self, msg: impl fmt::Display) -> Problem {
        self.pod.owner.problem(format!("{}: {msg}", self.what()))
    }

    pub(super) fn value(&self, field: &str) -> Option<&str> {
        self.settings.get(field).and_then(Setting::literal)
    }

    /// The listener serving `port` (a number, or a containerPort name).
    pub(super) fn listener_for(&self, port: &IntOrString) -> Result<&(String, SocketAddr), String> {
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

    pub(super) fn sub_is(&self, s: &str) -> bool {
        self.sub.as_deref() == Some(s)
    }
}

/// Reads a container: which binary, which subcommand, the effective value
/// of every argument. Problems go to `out`; `None` if it runs no binary.
pub(super) fn read_run<'a>(
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
    let image_base = image_name(image).rsplit('/').next().unwrap_or("");
    // Without `command` the image's entrypoint runs: each of Ambit's
    // images (deploy/Dockerfile) has its binary as ENTRYPOINT and is named
    // after it, as Istio's chart expects of the ztunnel image.
    let entrypoint = format!("/usr/local/bin/{image_base}");
    let cmd = match c.command.as_ref().and_then(|v| v.first()) {
        Some(cmd) => cmd.as_str(),
        None if bins.get(image_base).is_some() => entrypoint.as_str(),
        None => {
            out.push(p.problem(format!(
                "container {}: no `command` and image {image:?} is none of Ambit's; name the binary (e.g. /usr/local/bin/ztunnel) so it can be checked",
                c.name
            )));
            return None;
        }
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
    let mut positionals = args.iter().filter(|a| a.positional);
    let mut i = 0;
    while i < argv.len() {
        let word = argv[i];
        i += 1;
        let Some(flag) = word.strip_prefix("--") else {
            match positionals.next() {
                Some(a) if a.values.is_empty() || a.values.iter().any(|v| v == word) => {
                    run.settings
                        .insert(a.field.clone(), Setting::Flag(word.to_owned()));
                }
                Some(a) => out.push(run.problem(format!(
                    "argument {word:?} is not a value of {} ({})",
                    a.field,
                    a.values.join(", ")
                ))),
                None => out.push(run.problem(format!("unexpected argument {word:?}"))),
            }
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
pub(super) fn mount_for<'a>(
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
pub(super) fn host_path(spec: &PodSpec, c: &Container, path: &str) -> Option<(String, bool)> {
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

pub(super) fn parent(path: &str) -> &str {
    path.rsplit_once('/')
        .map(|(d, _)| d)
        .filter(|d| !d.is_empty())
        .unwrap_or("/")
}
