//! Per-container checks: ports, probes, security context, mounts and
//! the names a container must be given.

use super::*;
pub(super) fn check_pod(
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

pub(super) fn paths_of(field: &str) -> &'static [&'static str] {
    HTTP_PATHS
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, p)| *p)
        .unwrap_or(&[])
}

pub(super) fn check_ports(run: &Run<'_>, out: &mut Vec<Problem>) {
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

pub(super) fn check_security(run: &Run<'_>, out: &mut Vec<Problem>) {
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
    // Istio's ztunnel chart also grants NET_RAW; Ambit's ztunnel drops it at
    // start (it keeps only what it needs), so the chart's spec stays valid.
    let tolerated: BTreeSet<&str> = if run.bin.name == "ztunnel" {
        BTreeSet::from(["NET_RAW"])
    } else {
        BTreeSet::new()
    };
    if !added.is_superset(&wanted) || !added.difference(&wanted).all(|c| tolerated.contains(c)) {
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
pub(super) fn check_paths(
    run: &Run<'_>,
    runs: &[(Run<'_>, bool)],
    facts: &mut Facts,
    out: &mut Vec<Problem>,
) {
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
                // istio/ztunnel's form `host:port` means https://host:port.
                if addr.starts_with("http://") {
                    continue;
                }
                // Unset, the root is Istio's default path (relative to the
                // image's working directory, /).
                let root = run
                    .value(root_f)
                    .unwrap_or("./var/run/secrets/istio/root-cert.pem");
                if root == "SYSTEM" {
                    continue;
                }
                check_root_cert(run, root_f, root.trim_start_matches('.'), out);
            }
            if istiod {
                // AUTH_TOKEN (Istio's) when it is a path, else Ambit's
                // AUTH_TOKEN_PATH; relative to the image's working dir (/).
                let token = run
                    .value("auth_token")
                    .filter(|t| t.starts_with('/') || t.starts_with("./"))
                    .or_else(|| run.value("auth_token_path"))
                    .unwrap_or("");
                check_token(run, token.trim_start_matches('.'), out);
            }
            if let Some(t) = run
                .value("termination_grace_period_seconds")
                .and_then(|d| d.parse::<i64>().ok())
            {
                let grace = spec.termination_grace_period_seconds.unwrap_or(30);
                if t != grace {
                    out.push(run.problem(format!(
                        "TERMINATION_GRACE_PERIOD_SECONDS {t} is not the pod's terminationGracePeriodSeconds {grace}: the drain deadline is derived from it"
                    )));
                }
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

pub(super) fn zds_socket(run: &Run<'_>, field: &str, facts: &mut Facts, out: &mut Vec<Problem>) {
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

pub(super) fn check_root_cert(run: &Run<'_>, field: &str, path: &str, out: &mut Vec<Problem>) {
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

pub(super) fn check_token(run: &Run<'_>, path: &str, out: &mut Vec<Problem>) {
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

pub(super) fn check_names(run: &Run<'_>, parsed: &[Parsed], sa: &str, out: &mut Vec<Problem>) {
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
    if run.bin.name == "waypoint" {
        check_waypoint_rbac(run, parsed, sa, out);
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
pub(super) fn may(
    parsed: &[Parsed],
    sa: &str,
    ns: Option<&str>,
    resource: &str,
    verb: &str,
) -> bool {
    may_in(parsed, sa, ns, "", resource, verb)
}

/// [`may`] for a resource of API group `group`.
pub(super) fn may_in(
    parsed: &[Parsed],
    sa: &str,
    ns: Option<&str>,
    group: &str,
    resource: &str,
    verb: &str,
) -> bool {
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
                        has(&rule.api_groups, group)
                            && has(&rule.resources, resource)
                            && rule.verbs.iter().any(|v| v == verb || v == "*")
                    })
                }
                _ => false,
            })
    })
}

/// A waypoint taking its routes from the Kubernetes API (`routes_from`
/// kube, or auto without a file: in a cluster that is kube) must be
/// allowed to list and watch what it reads, and to patch route status
/// unless it is told not to write it.
fn check_waypoint_rbac(run: &Run<'_>, parsed: &[Parsed], sa: &str, out: &mut Vec<Problem>) {
    let from = run.value("routes_from").unwrap_or("auto");
    let kube = from == "kube" || (from == "auto" && run.value("config").is_none());
    if !kube {
        return;
    }
    let ns = run.pod.owner.namespace.as_deref();
    for (group, resource) in super::istiod::WAYPOINT_WATCHES {
        for verb in ["list", "watch"] {
            if !may_in(parsed, sa, ns, group, resource, verb) {
                out.push(run.problem(format!(
                    "service account {sa} may not {verb} {resource} ({group:?}): the waypoint's routes come from the Kubernetes API"
                )));
            }
        }
    }
    if run.value("write_status") != Some("false") {
        for (group, resource) in super::istiod::WAYPOINT_STATUS {
            if !may_in(parsed, sa, ns, group, resource, "patch") {
                out.push(run.problem(format!(
                    "service account {sa} may not patch {resource} ({group:?}): the waypoint writes route status (or set WAYPOINT_WRITE_STATUS=false)"
                )));
            }
        }
    }
}
