//! The Kubernetes API the waypoint reads its routes from when
//! [`Options::kube_routes`](super::Options::kube_routes) is set: the
//! testbed's fake API server, served from node a's namespace on its
//! underlay address (reachable from every pod, as the control plane is),
//! with the Gateway API and Istio kinds registered, the waypoint's
//! Gateway and a Kubernetes Service for every mesh service.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use serde_json::{Value, json};

use crate::kubeapi::FakeApi;
use crate::serve::tokio_listener;

/// The fake API server's port.
pub(super) const PORT: u16 = 6443;

/// The Gateway API group.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The waypoint's Gateway name (and namespace `default`).
pub(super) const GATEWAY_NAME: &str = "waypoint";

/// The fake API server and the runtime serving it.
pub(super) struct MeshKube {
    api: Option<FakeApi>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MeshKube {
    /// Serves on `ip:6443` inside `ns`, registers the kinds the waypoint
    /// watches and adds the Gateway and the mesh's Services.
    pub(super) fn start(
        ns: &ambit_netns::NetNs,
        ip: IpAddr,
        config: &ambit_mesh::Config,
        objects: &str,
    ) -> anyhow::Result<Self> {
        let listener = ns
            .tcp_listener(SocketAddr::new(ip, PORT))
            .context("binding the fake Kubernetes API server")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("fake-kube-api")
            .build()?;
        let api = runtime.block_on(async { FakeApi::serve(tokio_listener(listener)?) })?;
        for (group, version, plural) in [
            (GATEWAY_GROUP, "v1", "gateways"),
            (GATEWAY_GROUP, "v1", "httproutes"),
            (GATEWAY_GROUP, "v1", "grpcroutes"),
            (GATEWAY_GROUP, "v1beta1", "referencegrants"),
            ("security.istio.io", "v1", "authorizationpolicies"),
            ("", "v1", "services"),
        ] {
            api.register(group, version, plural);
        }
        api.apply(
            GATEWAY_GROUP,
            "v1",
            "gateways",
            json!({"metadata": {"name": GATEWAY_NAME, "namespace": "default",
                                "labels": {"istio.io/waypoint-for": "service"}},
                   "spec": {"gatewayClassName": "istio-waypoint",
                            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}),
        );
        for s in &config.services {
            api.apply("", "v1", "services", service(s));
        }
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(objects).enumerate() {
            let obj = <Value as serde::Deserialize>::deserialize(doc)
                .with_context(|| format!("Kubernetes object {} of the mesh's", i + 1))?;
            if obj.is_null() {
                continue;
            }
            let (group, version, plural) = address(&obj)
                .with_context(|| format!("Kubernetes object {} of the mesh's", i + 1))?;
            api.apply(group, version, plural, obj.clone());
        }
        Ok(Self {
            api: Some(api),
            runtime: Some(runtime),
        })
    }

    /// The API server (apply, delete, get objects; read the status
    /// patches).
    pub(super) fn api(&self) -> Option<&FakeApi> {
        self.api.as_ref()
    }
}

impl Drop for MeshKube {
    fn drop(&mut self) {
        self.api = None;
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Where an object lives in the API: its group, version and plural, for
/// the kinds the waypoint watches.
fn address(obj: &Value) -> anyhow::Result<(&str, &str, &'static str)> {
    let api = obj["apiVersion"].as_str().unwrap_or("");
    let (group, version) = api.rsplit_once('/').unwrap_or(("", api));
    let plural = match obj["kind"].as_str().unwrap_or("") {
        "Gateway" => "gateways",
        "HTTPRoute" => "httproutes",
        "GRPCRoute" => "grpcroutes",
        "ReferenceGrant" => "referencegrants",
        "AuthorizationPolicy" => "authorizationpolicies",
        "Service" => "services",
        other => anyhow::bail!("kind {other:?} ({api}) is none the waypoint watches"),
    };
    Ok((group, version, plural))
}

/// The Kubernetes Service of a mesh service: its ports named `http-<port>`
/// when a waypoint serves it (HTTP, as the testbed's apps speak), else
/// `tcp-<port>`.
fn service(s: &ambit_mesh::model::Service) -> Value {
    let proto = if s.waypoint.is_some() || s.name.starts_with("reviews") {
        "http"
    } else {
        "tcp"
    };
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            let p = p.service_port;
            json!({"name": format!("{proto}-{p}"), "port": p, "protocol": "TCP"})
        })
        .collect();
    let vips: Vec<String> = s.vips.iter().map(|(_, ip)| ip.to_string()).collect();
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": s.name, "namespace": s.namespace},
           "spec": {"ports": ports, "clusterIP": vips.first()}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_kube_routes_have_addresses() {
        let mut kinds = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(crate::config::DEFAULT_KUBE_ROUTES) {
            let obj = <Value as serde::Deserialize>::deserialize(doc).expect("yaml");
            let (group, version, plural) = address(&obj).expect("watched kind");
            kinds.push(format!("{group}/{version}/{plural}"));
        }
        assert_eq!(
            kinds,
            [
                "gateway.networking.k8s.io/v1/httproutes",
                "security.istio.io/v1/authorizationpolicies"
            ]
        );
        let bad = json!({"apiVersion": "v1", "kind": "Secret"});
        assert!(address(&bad).is_err());
    }
}
