//! Waypoints that istiod deploys: a Gateway of class `istio-waypoint`
//! without an address makes istiod create the Deployment, ServiceAccount
//! and Service itself, from its waypoint template, patched by the
//! ConfigMap the Gateway names in `spec.infrastructure.parametersRef`
//! (key `deployment`, a strategic merge patch) — Istio's supported way to
//! run another image there. To check that Deployment like any other, it
//! is rendered here: the template's parts the binaries care about (the
//! `istio-proxy` container's ports, env, probes, mounts and volumes, the
//! service account named after the Gateway, the pod labels), then the
//! ConfigMap's patch merged in.

use serde_json::{Value, json};

use super::*;

/// Env istiod's template sets that Ambit's waypoint does not read; they
/// are istiod's, not the manifests' (Envoy's agent reads them).
const TEMPLATE_ENV: &[&str] = &[
    "PILOT_CERT_PROVIDER",
    "CA_ADDR",
    "HOST_IP",
    "GOMEMLIMIT",
    "GOMAXPROCS",
];

/// The ConfigMap key holding the Deployment patch.
pub(super) const DEPLOYMENT_KEY: &str = "deployment";

/// An istiod-deployed waypoint found in the manifests.
pub(super) struct Rendered {
    /// The Deployment istiod would create, with the patch applied.
    pub(super) deployment: Parsed,
    /// Its ServiceAccount (named after the Gateway).
    pub(super) service_account: Parsed,
    /// `Gateway name`, for messages.
    pub(super) gateway: String,
    /// `ConfigMap name`, for messages.
    pub(super) config_map: String,
}

/// The ConfigMap named by a Gateway's `parametersRef`, if it names one.
fn parameters<'a>(g: &Parsed, parsed: &'a [Parsed]) -> Result<Option<&'a Parsed>, String> {
    let Object::Gateway(gw) = &g.object else {
        return Ok(None);
    };
    let Some(r) = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    else {
        return Ok(None);
    };
    if !r.group.is_empty() || r.kind != "ConfigMap" {
        return Err(format!(
            "infrastructure.parametersRef must name a ConfigMap (group \"\"), names {} {:?}",
            r.kind, r.group
        ));
    }
    parsed
        .iter()
        .find(|q| {
            matches!(q.object, Object::ConfigMap(_))
                && q.object.name() == r.name
                && q.namespace == g.namespace
        })
        .map(Some)
        .ok_or_else(|| {
            format!(
                "infrastructure.parametersRef names ConfigMap {}, which is not in these manifests (namespace {:?})",
                r.name, g.namespace
            )
        })
}

/// Renders every istiod-deployed waypoint (a Gateway without addresses).
/// Problems with the Gateway's reference or the patch go to `out`.
pub(super) fn render_all(parsed: &[Parsed], out: &mut Vec<Problem>) -> Vec<Rendered> {
    let mut all = Vec::new();
    for g in parsed {
        let Object::Gateway(gw) = &g.object else {
            continue;
        };
        if !gw.spec.addresses.is_empty() {
            continue;
        }
        let cm = match parameters(g, parsed) {
            Ok(Some(cm)) => cm,
            Ok(None) => {
                out.push(g.problem(
                    "istiod deploys this waypoint (no address) with its own Envoy image: point spec.infrastructure.parametersRef at a ConfigMap whose `deployment` patch runs Ambit's waypoint",
                ));
                continue;
            }
            Err(e) => {
                out.push(g.problem(e));
                continue;
            }
        };
        match render(g, cm) {
            Ok(r) => all.push(r),
            Err(e) => out.push(cm.problem(e)),
        }
    }
    all
}

fn render(g: &Parsed, cm: &Parsed) -> Result<Rendered, String> {
    let Object::ConfigMap(c) = &cm.object else {
        return Err("not a ConfigMap".into());
    };
    let text = c
        .data
        .as_ref()
        .and_then(|d| d.get(DEPLOYMENT_KEY))
        .ok_or_else(|| format!("no `{DEPLOYMENT_KEY}` key: istiod would run its own image"))?;
    let patch: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| format!("`{DEPLOYMENT_KEY}` is not YAML: {e}"))?;
    let name = g.object.name().to_owned();
    let ns = g.namespace.clone().unwrap_or_default();
    let mut base = template(&name, &ns);
    merge(&mut base, &patch);
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(base).map_err(|e| {
            format!("`{DEPLOYMENT_KEY}` patched onto istiod's waypoint Deployment: {e}")
        })?;
    let sa: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns}
    }))
    .map_err(|e| format!("service account: {e}"))?;
    let at = |object| Parsed {
        file: cm.file.clone(),
        doc: cm.doc,
        object,
        namespace: g.namespace.clone(),
    };
    Ok(Rendered {
        deployment: at(Object::Deployment(Box::new(deployment))),
        service_account: at(Object::ServiceAccount(Box::new(sa))),
        gateway: g.label(),
        config_map: cm.label(),
    })
}

/// What istiod's waypoint template renders for Gateway `name` in `ns`
/// (the parts that matter to the checks; names, ports, paths and env are
/// Istio's).
fn template(name: &str, ns: &str) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let env = json!([
        {"name": "ISTIO_META_SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
        {"name": "ISTIO_META_NODE_NAME", "valueFrom": field("spec.nodeName")},
        {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
        {"name": "CA_ADDR", "value": "istiod.istio-system.svc:15012"},
        {"name": "POD_NAME", "valueFrom": field("metadata.name")},
        {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
        {"name": "INSTANCE_IP", "valueFrom": field("status.podIP")},
        {"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
        {"name": "HOST_IP", "valueFrom": field("status.hostIP")},
        {"name": "ISTIO_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}},
        {"name": "PROXY_CONFIG", "value": "{}"},
        {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1"}}},
        {"name": "GOMAXPROCS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}},
        {"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"},
        {"name": "ISTIO_META_INTERCEPTION_MODE", "value": "REDIRECT"},
        {"name": "ISTIO_META_WORKLOAD_NAME", "value": name},
        {"name": "ISTIO_META_OWNER", "value": format!("kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{name}")},
        {"name": "TRUST_DOMAIN", "value": "cluster.local"}
    ]);
    let probe = json!({"httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"}});
    let labels = json!({
        "gateway.networking.k8s.io/gateway-name": name,
        "gateway.networking.k8s.io/gateway-class-name": "istio-waypoint",
        "sidecar.istio.io/inject": "false",
        "istio.io/dataplane-mode": "none"
    });
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": name}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/path": "/stats/prometheus",
                        "prometheus.io/port": "15020",
                        "prometheus.io/scrape": "true"
                    }
                },
                "spec": {
                    "serviceAccountName": name,
                    "containers": [{
                        "name": "istio-proxy",
                        "image": "docker.io/istio/proxyv2",
                        "args": ["proxy", "waypoint", "--domain", "$(POD_NAMESPACE).svc.cluster.local",
                                 "--serviceCluster", format!("{name}.$(POD_NAMESPACE)"),
                                 "--proxyLogLevel", "warning", "--proxyComponentLogLevel", "misc:error",
                                 "--log_output_level", "default:info"],
                        "ports": [
                            {"containerPort": 15020, "name": "metrics", "protocol": "TCP"},
                            {"containerPort": 15021, "name": "status-port", "protocol": "TCP"},
                            {"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}
                        ],
                        "env": env,
                        "startupProbe": probe,
                        "readinessProbe": probe,
                        "securityContext": {
                            "privileged": false, "runAsGroup": 1337, "runAsUser": 1337,
                            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}
                        },
                        "volumeMounts": [
                            {"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"},
                            {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
                            {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
                            {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
                            {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
                            {"mountPath": "/etc/istio/pod", "name": "istio-podinfo"}
                        ]
                    }],
                    "volumes": [
                        {"name": "workload-socket", "emptyDir": {}},
                        {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
                        {"name": "istio-data", "emptyDir": {}},
                        {"name": "istio-podinfo", "downwardAPI": {"items": [
                            {"fieldRef": {"fieldPath": "metadata.labels"}, "path": "labels"},
                            {"fieldRef": {"fieldPath": "metadata.annotations"}, "path": "annotations"}
                        ]}},
                        {"name": "istio-token", "projected": {"sources": [
                            {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}
                        ]}},
                        {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}
                    ]
                }
            }
        }
    })
}

/// The merge key of a list field in a strategic merge patch (Kubernetes'
/// `patchMergeKey`), for the pod fields a waypoint patch touches; other
/// lists are replaced whole.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "volumes" | "env" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// Applies a strategic merge patch: maps merge key by key (`null`
/// deletes), keyed lists merge element by element (an element with
/// `$patch: delete` removes its match), other values replace.
fn merge(base: &mut Value, patch: &Value) {
    merge_field(base, patch, "");
}

fn merge_field(base: &mut Value, patch: &Value, field: &str) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(existing) = b.get_mut(k) {
                    merge_field(existing, v, k);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (Value::Array(b), Value::Array(p)) => match merge_key(field) {
            Some(key) => {
                for item in p {
                    let at = b
                        .iter()
                        .position(|x| x.get(key).is_some() && x.get(key) == item.get(key));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (at, delete) {
                        (Some(i), true) => {
                            b.remove(i);
                        }
                        (None, true) => {}
                        (Some(i), false) => merge_field(&mut b[i], item, ""),
                        (None, false) => b.push(item.clone()),
                    }
                }
            }
            None => *b = p.clone(),
        },
        (b, p) => *b = p.clone(),
    }
}

/// Whether a problem about the rendered Deployment is only that istiod's
/// template sets env the waypoint does not read.
pub(super) fn template_env_noise(p: &Problem) -> bool {
    TEMPLATE_ENV
        .iter()
        .any(|e| p.message.contains(&format!("env {e} is not read by")))
}

/// The Gateway API and Istio objects a waypoint with routes from the
/// Kubernetes API watches: (API group, resource).
pub(super) const WAYPOINT_WATCHES: &[(&str, &str)] = &[
    ("gateway.networking.k8s.io", "gateways"),
    ("gateway.networking.k8s.io", "httproutes"),
    ("gateway.networking.k8s.io", "grpcroutes"),
    ("gateway.networking.k8s.io", "referencegrants"),
    ("security.istio.io", "authorizationpolicies"),
    ("", "services"),
];

/// The status subresources it patches.
pub(super) const WAYPOINT_STATUS: &[(&str, &str)] = &[
    ("gateway.networking.k8s.io", "httproutes/status"),
    ("gateway.networking.k8s.io", "grpcroutes/status"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_keys_containers_env_and_mounts() {
        let mut base = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "args": ["1", "2"],
             "env": [{"name": "K", "value": "1"}, {"name": "L", "value": "2"}],
             "volumeMounts": [{"mountPath": "/p", "name": "v"}]}]}});
        let patch = json!({"spec": {"containers": [
            {"name": "a", "image": "y", "args": ["3"],
             "env": [{"name": "L", "value": "9"}, {"name": "M", "value": "3"}],
             "volumeMounts": [{"mountPath": "/q", "name": "w"}]},
            {"name": "b", "image": "z"}]}});
        merge(&mut base, &patch);
        let c = &base["spec"]["containers"];
        assert_eq!(c[0]["image"], "y");
        assert_eq!(c[0]["args"], json!(["3"]));
        assert_eq!(
            c[0]["env"],
            json!([{"name": "K", "value": "1"}, {"name": "L", "value": "9"}, {"name": "M", "value": "3"}])
        );
        assert_eq!(c[0]["volumeMounts"].as_array().map(Vec::len), Some(2));
        assert_eq!(c[1]["name"], "b");
        merge(
            &mut base,
            &json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(base["spec"]["containers"].as_array().map(Vec::len), Some(1));
        merge(&mut base, &json!({"spec": {"containers": null}}));
        assert!(base["spec"].get("containers").is_none());
    }
}
