//! The node identity and metadata ztunnel presents to istiod.

use std::collections::BTreeMap;

use crate::proto::{
    core::Node,
    protobuf::{Struct, Value, value::Kind},
};

/// Prefix of environment variables copied (without it) into node metadata.
pub const ISTIO_META_PREFIX: &str = "ISTIO_META_";

/// Who this proxy is, as ztunnel reports it in `Node`: built from the
/// environment (`INSTANCE_IP`, `POD_NAME`, `POD_NAMESPACE`, `NODE_NAME`,
/// `ISTIO_META_*`) or by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeIdentity {
    /// The proxy pod's IPs; the first is used in the node id.
    pub instance_ips: Vec<String>,
    /// The proxy pod's name.
    pub pod_name: String,
    /// The proxy pod's namespace.
    pub pod_namespace: String,
    /// The Kubernetes node it runs on.
    pub node_name: String,
    /// Extra metadata: every `ISTIO_META_<KEY>` variable as `<KEY>`.
    pub metadata: BTreeMap<String, String>,
    /// The node id's proxy type: empty means `ztunnel`; a waypoint (an
    /// Envoy "router" to istiod) uses `router`.
    pub proxy_type: String,
}

impl NodeIdentity {
    /// The environment variables [`NodeIdentity::from_env`] reads by name
    /// (besides every `ISTIO_META_*`, see [`ISTIO_META_PREFIX`]).
    pub const ENV: [&'static str; 4] = ["INSTANCE_IP", "POD_NAME", "POD_NAMESPACE", "NODE_NAME"];

    /// Builds an identity from explicit values, with no extra metadata.
    pub fn new(
        instance_ip: impl Into<String>,
        pod_name: impl Into<String>,
        pod_namespace: impl Into<String>,
        node_name: impl Into<String>,
    ) -> Self {
        Self {
            instance_ips: vec![instance_ip.into()],
            pod_name: pod_name.into(),
            pod_namespace: pod_namespace.into(),
            node_name: node_name.into(),
            metadata: BTreeMap::new(),
            proxy_type: String::new(),
        }
    }

    /// Reads the process environment (see [`NodeIdentity::from_vars`]).
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// Builds an identity from `(name, value)` pairs shaped like the
    /// environment, so tests need not touch the real one. `INSTANCE_IP`
    /// may hold several comma-separated IPs.
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut node = Self::default();
        for (key, value) in vars {
            let key = key.as_ref();
            let value = value.into();
            match key {
                "INSTANCE_IP" => {
                    node.instance_ips = value
                        .split(',')
                        .map(str::trim)
                        .filter(|ip| !ip.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "POD_NAME" => node.pod_name = value,
                "POD_NAMESPACE" => node.pod_namespace = value,
                "NODE_NAME" => node.node_name = value,
                _ => {
                    if let Some(meta) = key.strip_prefix(ISTIO_META_PREFIX)
                        && !meta.is_empty()
                    {
                        node.metadata.insert(meta.to_owned(), value);
                    }
                }
            }
        }
        node
    }

    /// The same identity with another proxy type in the node id
    /// (`router` for a waypoint).
    pub fn with_proxy_type(mut self, proxy_type: impl Into<String>) -> Self {
        self.proxy_type = proxy_type.into();
        self
    }

    /// The node id:
    /// `<type>~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local`,
    /// type `ztunnel` unless [`NodeIdentity::with_proxy_type`] set another.
    pub fn node_id(&self) -> String {
        let ip = self.instance_ips.first().map(String::as_str).unwrap_or("");
        let kind = if self.proxy_type.is_empty() {
            "ztunnel"
        } else {
            &self.proxy_type
        };
        format!(
            "{kind}~{ip}~{}.{}~{}.svc.cluster.local",
            self.pod_name, self.pod_namespace, self.pod_namespace
        )
    }

    /// The metadata as sent: `NAME`, `NAMESPACE`, `INSTANCE_IPS` (comma
    /// separated), `NODE_NAME`, then the `ISTIO_META_*` keys (which cannot
    /// override the four above).
    pub fn metadata_map(&self) -> BTreeMap<String, String> {
        let mut map = self.metadata.clone();
        map.insert("NAME".into(), self.pod_name.clone());
        map.insert("NAMESPACE".into(), self.pod_namespace.clone());
        map.insert("INSTANCE_IPS".into(), self.instance_ips.join(","));
        map.insert("NODE_NAME".into(), self.node_name.clone());
        map
    }

    /// The Envoy `Node` sent in the first request of each stream.
    pub fn to_node(&self) -> Node {
        let fields = self
            .metadata_map()
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    Value {
                        kind: Some(Kind::StringValue(v)),
                    },
                )
            })
            .collect();
        Node {
            id: self.node_id(),
            metadata: Some(Struct { fields }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_and_metadata_follow_ztunnel() {
        let node = NodeIdentity::from_vars([
            ("INSTANCE_IP", "10.0.0.7"),
            ("POD_NAME", "ztunnel-abcde"),
            ("POD_NAMESPACE", "istio-system"),
            ("NODE_NAME", "worker-1"),
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ("ISTIO_META_", "ignored"),
            ("ISTIO_META_NAME", "cannot-override"),
            ("HOME", "/root"),
        ]);
        assert_eq!(
            node.node_id(),
            "ztunnel~10.0.0.7~ztunnel-abcde.istio-system~istio-system.svc.cluster.local"
        );
        let meta = node.metadata_map();
        assert_eq!(meta["NAME"], "ztunnel-abcde");
        assert_eq!(meta["NAMESPACE"], "istio-system");
        assert_eq!(meta["INSTANCE_IPS"], "10.0.0.7");
        assert_eq!(meta["NODE_NAME"], "worker-1");
        assert_eq!(meta["CLUSTER_ID"], "Kubernetes");
        assert_eq!(meta.len(), 5);

        let envoy = node.to_node();
        assert_eq!(envoy.id, node.node_id());
        let fields = &envoy.metadata.expect("metadata").fields;
        assert_eq!(
            fields["CLUSTER_ID"].kind,
            Some(Kind::StringValue("Kubernetes".into()))
        );
    }

    #[test]
    fn several_instance_ips() {
        let node = NodeIdentity::from_vars([("INSTANCE_IP", "10.0.0.7, fd00::7")]);
        assert_eq!(node.instance_ips, ["10.0.0.7", "fd00::7"]);
        assert_eq!(node.metadata_map()["INSTANCE_IPS"], "10.0.0.7,fd00::7");
        assert!(node.node_id().starts_with("ztunnel~10.0.0.7~"));
        let wp = node.clone().with_proxy_type("router");
        assert!(
            wp.node_id().starts_with("router~10.0.0.7~"),
            "{}",
            wp.node_id()
        );
    }
}
