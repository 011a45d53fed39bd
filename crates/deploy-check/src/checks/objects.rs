//! Cross-object checks: RBAC bindings, Services, the PodDisruptionBudget,
//! the HPA and the waypoint Gateway.

use super::*;
pub(super) fn check_binding(p: &Parsed, parsed: &[Parsed], out: &mut Vec<Problem>) {
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

/// Pods (workloads) in `ns` whose template labels include `selector`,
/// among those applied with `by` (the same `deploy/` directory: each is
/// one `kubectl apply -k`, and two directories may be alternatives).
pub(super) fn selected<'a>(
    pods: &'a [Pod<'a>],
    by: &Parsed,
    selector: &BTreeMap<String, String>,
) -> Vec<&'a Pod<'a>> {
    if selector.is_empty() {
        return Vec::new();
    }
    pods.iter()
        .filter(|p| {
            p.owner.namespace == by.namespace
                && dir_of(&p.owner.file) == dir_of(&by.file)
                && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        })
        .collect()
}

pub(super) fn check_service(p: &Parsed, pods: &[Pod<'_>], bins: &Binaries, out: &mut Vec<Problem>) {
    let Object::Service(s) = &p.object else {
        return;
    };
    let Some(spec) = &s.spec else {
        out.push(p.problem("no spec"));
        return;
    };
    let selector = spec.selector.clone().unwrap_or_default();
    let targets = selected(pods, p, &selector);
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

pub(super) fn check_pdb(p: &Parsed, parsed: &[Parsed], pods: &[Pod<'_>], out: &mut Vec<Problem>) {
    let Object::PodDisruptionBudget(pdb) = &p.object else {
        return;
    };
    let spec = pdb.spec.clone().unwrap_or_default();
    let selector = spec
        .selector
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    let targets = selected(pods, p, &selector);
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

pub(super) fn check_hpa(p: &Parsed, parsed: &[Parsed], out: &mut Vec<Problem>) {
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

pub(super) fn check_gateway(
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
    if g.spec.addresses.is_empty() {
        // istiod deploys it: its Service maps each listener port to the
        // same port of the Deployment it renders (checked as such).
        check_istiod_gateway(p, pods, bins, out);
        return;
    }
    let [addr] = g.spec.addresses.as_slice() else {
        out.push(p.problem(
            "needs exactly one address of type Hostname (the waypoint Service), or none (istiod deploys it, patched by infrastructure.parametersRef)",
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
                && dir_of(&q.file) == dir_of(&p.file)
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
    let targets = selected(pods, svc, &spec.selector.clone().unwrap_or_default());
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

fn check_istiod_gateway(p: &Parsed, pods: &[Pod<'_>], bins: &Binaries, out: &mut Vec<Problem>) {
    let Object::Gateway(g) = &p.object else {
        return;
    };
    // The rendered Deployment (absent when the reference or patch is bad,
    // which is reported already).
    let Some(pod) = pods.iter().find(|pod| {
        matches!(pod.owner.object, Object::Deployment(_))
            && pod.owner.object.name() == p.object.name()
            && pod.owner.namespace == p.namespace
            && dir_of(&pod.owner.file) == dir_of(&p.file)
            && pod
                .labels
                .get("gateway.networking.k8s.io/gateway-name")
                .map(String::as_str)
                == Some(p.object.name())
    }) else {
        return;
    };
    for l in &g.spec.listeners {
        if l.protocol != "HBONE" {
            out.push(p.problem(format!("listener {}: protocol must be HBONE", l.name)));
            continue;
        }
        let mut sink = Vec::new();
        let hbone = containers(pod.spec).into_iter().any(|(c, _)| {
            read_run(pod, c, bins, &mut sink).is_some_and(|r| {
                r.listener_for(&IntOrString::Int(i32::from(l.port)))
                    .is_ok_and(|(f, _)| f == "hbone_addr")
            })
        });
        if !hbone {
            out.push(p.problem(format!(
                "listener {}: port {} is not the HBONE listener of the waypoint istiod deploys",
                l.name, l.port
            )));
        }
    }
}
