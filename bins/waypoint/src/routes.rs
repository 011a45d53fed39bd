//! Where the waypoint's routes come from: the local YAML file, or the
//! Kubernetes API (Gateway API routes and AuthorizationPolicies, through
//! ambit-gateway).

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ambit_gateway::{GatewaySource, MeshStateServices, SourceConfig, WaypointIdentity};
use ambit_l7proxy::{RouteConfig, Waypoint};
use ambit_mesh::MeshState;
use anyhow::Context;

use crate::cli::{Args, RoutesFrom};

/// The label Istio (and the Gateway API) puts on a Gateway's pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The routes source, decided before serving.
#[derive(Debug)]
pub enum Plan {
    /// Routes from the file (or none).
    File(RouteConfig),
    /// Routes from the Kubernetes API for this Gateway.
    Kube(WaypointIdentity),
}

impl Plan {
    /// `file` or `kube`, for logs and `/config_dump`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Kube(_) => "kube",
        }
    }
}

/// Decides where routes come from and reads what can be read now: the
/// file, or the Gateway's name. `in_cluster` is whether
/// `KUBERNETES_SERVICE_HOST` is set.
pub fn plan(a: &Args, in_cluster: bool) -> anyhow::Result<Plan> {
    let kube = match a.routes_from {
        RoutesFrom::File => false,
        RoutesFrom::Kube => true,
        RoutesFrom::Auto => a.config.is_none() && in_cluster,
    };
    if !kube {
        let routes = match &a.config {
            Some(path) => RouteConfig::from_file(path)?,
            None => RouteConfig::parse("", "<none>")?,
        };
        return Ok(Plan::File(routes));
    }
    if a.config.is_some() {
        anyhow::bail!(
            "--config (WAYPOINT_CONFIG) is for --routes-from file; with kube the routes come from \
             the Kubernetes API"
        );
    }
    let name = match &a.gateway_name {
        Some(n) => n.clone(),
        None => gateway_name_from_file(&a.pod_labels)?,
    };
    if name.is_empty() {
        anyhow::bail!("GATEWAY_NAME is empty");
    }
    Ok(Plan::Kube(
        WaypointIdentity::new(&a.pod_namespace, name).with_domain(&a.cluster_domain),
    ))
}

fn gateway_name_from_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "routes from kube need the waypoint's Gateway name: set GATEWAY_NAME, or mount the \
             pod's labels at {} (Istio's waypoint pods have them)",
            path.display()
        )
    })?;
    gateway_name_from_labels(&text).with_context(|| {
        format!(
            "{} has no {GATEWAY_NAME_LABEL} label; set GATEWAY_NAME",
            path.display()
        )
    })
}

/// The Gateway name in a downward-API labels file: one `key="value"` a
/// line, the value quoted with `\"` and `\\` escapes.
pub fn gateway_name_from_labels(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        if key.trim() != GATEWAY_NAME_LABEL {
            return None;
        }
        let value = value.trim();
        let inner = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                out.extend(chars.next());
            } else {
                out.push(c);
            }
        }
        Some(out)
    })
}

/// Starts the Kubernetes source feeding `waypoint`, and waits until every
/// watch has listed and the first config has been applied (or `timeout`).
pub async fn start_kube(
    a: &Args,
    id: WaypointIdentity,
    state: Arc<RwLock<MeshState>>,
    waypoint: Waypoint,
) -> anyhow::Result<GatewaySource> {
    let client = kube::Client::try_default().await.context(
        "a Kubernetes client for the routes (in-cluster service account, else KUBECONFIG)",
    )?;
    let mut cfg = SourceConfig::new(id.clone());
    cfg.write_status = a.write_status;
    let mesh = MeshStateServices {
        state,
        waypoint: id.clone(),
    };
    let source = GatewaySource::start(client, cfg, mesh, move |routes| {
        waypoint.set_routes(routes);
    });
    let timeout = Duration::from_secs(a.kube_sync_timeout);
    let deadline = Instant::now() + timeout;
    source
        .wait_synced(timeout)
        .await
        .with_context(|| format!("routes for Gateway {}/{}", id.namespace, id.name))?;
    // The first translation follows the listings after the debounce.
    while source.last().is_none() {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the Kubernetes objects listed but no config was translated within {timeout:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(source)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["waypoint"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("args")
    }

    #[test]
    fn labels_file_gives_the_gateway_name() {
        let text = "app=\"x\"\ngateway.networking.k8s.io/gateway-name=\"my-wp\"\nservice.istio.io/canonical-name=\"my-wp\"\n";
        assert_eq!(gateway_name_from_labels(text).as_deref(), Some("my-wp"));
        assert_eq!(
            gateway_name_from_labels("gateway.networking.k8s.io/gateway-name=\"a\\\"b\"")
                .as_deref(),
            Some("a\"b")
        );
        assert_eq!(gateway_name_from_labels("app=\"x\"\n"), None);
        assert_eq!(gateway_name_from_labels(""), None);
    }

    #[test]
    fn auto_picks_kube_only_in_a_cluster_without_a_file() {
        let a = args(&["--gateway-name", "wp", "--pod-namespace", "shop"]);
        assert!(matches!(plan(&a, false), Ok(Plan::File(_))));
        match plan(&a, true) {
            Ok(Plan::Kube(id)) => {
                assert_eq!(id.hostname(), "wp.shop.svc.cluster.local");
            }
            other => panic!("want kube, got {other:?}"),
        }
        let a = args(&["--routes-from", "kube", "--cluster-domain", "corp"]);
        // No GATEWAY_NAME and no labels file: a clear error.
        let a = Args {
            pod_labels: "/nonexistent/labels".into(),
            ..a
        };
        let e = format!("{:#}", plan(&a, false).expect_err("no name"));
        assert!(e.contains("GATEWAY_NAME"), "{e}");
    }

    #[test]
    fn a_file_with_kube_is_refused() {
        let a = args(&[
            "--routes-from",
            "kube",
            "--gateway-name",
            "wp",
            "--config",
            "/x.yaml",
        ]);
        let e = format!("{:#}", plan(&a, true).expect_err("both"));
        assert!(e.contains("--routes-from file"), "{e}");
    }

    #[test]
    fn the_labels_file_is_read() {
        let dir = std::env::temp_dir().join(format!("ambit-wp-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("labels");
        std::fs::write(
            &path,
            "gateway.networking.k8s.io/gateway-name=\"waypoint\"\n",
        )
        .expect("write");
        let a = args(&["--routes-from", "kube", "--pod-namespace", "default"]);
        let a = Args {
            pod_labels: path,
            ..a
        };
        let got = plan(&a, false);
        let _ = std::fs::remove_dir_all(&dir);
        match got {
            Ok(Plan::Kube(id)) => assert_eq!(id.name, "waypoint"),
            other => panic!("want kube, got {other:?}"),
        }
    }
}
