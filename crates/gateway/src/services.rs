//! The services that use this waypoint: who they are (from the mesh
//! state), and how their ports speak (from the Kubernetes Services'
//! `appProtocol`, else Istio's port-name convention).

use std::net::IpAddr;

use ambit_mesh::MeshState;
use ambit_mesh::model::GatewayAddress;
use k8s_openapi::api::core::v1::Service;

/// The waypoint this process is: its Gateway's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointIdentity {
    /// The Gateway's namespace.
    pub namespace: String,
    /// The Gateway's name (also its Service's name, as Istio deploys it).
    pub name: String,
    /// The cluster DNS domain (`cluster.local`).
    pub domain: String,
}

impl WaypointIdentity {
    /// The waypoint `namespace/name` in the `cluster.local` domain.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            domain: "cluster.local".into(),
        }
    }

    /// The same, in another cluster domain.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = domain.into();
        self
    }

    /// The waypoint Service's hostname (`waypoint.ns.svc.cluster.local`),
    /// which the mesh state names as the services' waypoint.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.{}", self.name, self.namespace, self.domain)
    }
}

/// What kind of object a waypoint service is, for parentRefs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServiceKind {
    /// A Kubernetes Service (parentRef group `""`, kind `Service`).
    Service,
    /// An Istio ServiceEntry (group `networking.istio.io`).
    ServiceEntry,
}

/// A service that uses this waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointService {
    /// Hostname (`reviews.default.svc.cluster.local`).
    pub hostname: String,
    /// Namespace.
    pub namespace: String,
    /// The Service's (or ServiceEntry's) name.
    pub name: String,
    /// Service or ServiceEntry.
    pub kind: ServiceKind,
    /// Ports.
    pub ports: Vec<WaypointPort>,
}

/// A port of a waypoint service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointPort {
    /// The service port.
    pub port: u16,
    /// The port's name (`http-web`), if known.
    pub name: Option<String>,
    /// The port's `appProtocol`, if known.
    pub app_protocol: Option<String>,
}

impl WaypointPort {
    /// The engine's protocol for this port (`http`, `http2`, `grpc`,
    /// `tcp`), `None` to let the engine sniff. `appProtocol` first, then
    /// the port name's `<protocol>[-suffix]` prefix, as Istio selects.
    pub fn protocol(&self) -> Option<&'static str> {
        let by_app = self
            .app_protocol
            .as_deref()
            .map(str::to_ascii_lowercase)
            .and_then(|a| match a.as_str() {
                "http" | "http1" | "kubernetes.io/ws" => Some("http"),
                "http2" | "kubernetes.io/h2c" => Some("http2"),
                "grpc" => Some("grpc"),
                "tcp" | "tls" | "https" | "kubernetes.io/wss" | "mongo" | "mysql" | "redis" => {
                    Some("tcp")
                }
                _ => None,
            });
        by_app.or_else(|| {
            let name = self.name.as_deref()?.to_ascii_lowercase();
            match name.split('-').next()? {
                "http" => Some("http"),
                "http2" => Some("http2"),
                "grpc" => Some("grpc"),
                "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some("tcp"),
                _ => None,
            }
        })
    }
}

/// The services of `state` whose waypoint is `id`: named by hostname, or
/// by an address that is one of the waypoint Service's VIPs.
pub fn waypoint_services(state: &MeshState, id: &WaypointIdentity) -> Vec<WaypointService> {
    let host = id.hostname();
    let waypoint_vips: Vec<(String, IpAddr)> = state
        .services()
        .filter(|s| s.hostname.eq_ignore_ascii_case(&host))
        .flat_map(|s| s.vips.iter().cloned())
        .collect();
    let k8s_suffix = format!(".svc.{}", id.domain);
    let mut out: Vec<WaypointService> = state
        .services()
        .filter(|s| match &s.waypoint {
            Some(GatewayAddress::Hostname { hostname, .. }) => hostname.eq_ignore_ascii_case(&host),
            Some(GatewayAddress::Address { network, ip, .. }) => {
                waypoint_vips.iter().any(|(n, v)| n == network && v == ip)
            }
            None => false,
        })
        .map(|s| WaypointService {
            hostname: s.hostname.clone(),
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            kind: if s.hostname.ends_with(&k8s_suffix) {
                ServiceKind::Service
            } else {
                ServiceKind::ServiceEntry
            },
            ports: s
                .ports
                .iter()
                .map(|p| WaypointPort {
                    port: p.service_port,
                    name: None,
                    app_protocol: None,
                })
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    out.dedup_by(|a, b| a.hostname == b.hostname);
    out
}

/// Fills in port names and `appProtocol`s from the Kubernetes Services
/// (the mesh state carries neither).
pub fn fill_ports(services: &mut [WaypointService], k8s: &[Service]) {
    for s in services
        .iter_mut()
        .filter(|s| s.kind == ServiceKind::Service)
    {
        let Some(obj) = k8s.iter().find(|o| {
            o.metadata.namespace.as_deref() == Some(&s.namespace)
                && o.metadata.name.as_deref() == Some(&s.name)
        }) else {
            continue;
        };
        let ports = obj.spec.as_ref().and_then(|sp| sp.ports.as_ref());
        for p in &mut s.ports {
            if let Some(kp) = ports.and_then(|ps| ps.iter().find(|kp| kp.port == i32::from(p.port)))
            {
                p.name = p.name.clone().or_else(|| kp.name.clone());
                p.app_protocol = p.app_protocol.clone().or_else(|| kp.app_protocol.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: Option<&str>, app: Option<&str>) -> WaypointPort {
        WaypointPort {
            port: 80,
            name: name.map(str::to_owned),
            app_protocol: app.map(str::to_owned),
        }
    }

    #[test]
    fn app_protocol_then_port_name() {
        assert_eq!(port(None, Some("http2")).protocol(), Some("http2"));
        assert_eq!(
            port(None, Some("kubernetes.io/h2c")).protocol(),
            Some("http2")
        );
        assert_eq!(port(Some("http"), Some("grpc")).protocol(), Some("grpc"));
        assert_eq!(port(Some("grpc-api"), None).protocol(), Some("grpc"));
        assert_eq!(port(Some("http-web"), None).protocol(), Some("http"));
        assert_eq!(port(Some("web"), None).protocol(), None);
        assert_eq!(
            port(None, Some("kubernetes.io/wss")).protocol(),
            Some("tcp")
        );
        assert_eq!(port(None, None).protocol(), None);
    }

    #[test]
    fn services_pointing_at_the_waypoint() {
        use ambit_mesh::model::Port;
        let svc = |name: &str, ip: [u8; 4], waypoint: Option<GatewayAddress>| ambit_mesh::Service {
            name: name.into(),
            namespace: "ns".into(),
            hostname: format!("{name}.ns.svc.cluster.local"),
            vips: vec![(String::new(), IpAddr::from(ip))],
            ports: vec![Port {
                service_port: 9080,
                target_port: 9080,
            }],
            waypoint,
            ..Default::default()
        };
        let mut state = MeshState::new();
        state.insert_service(svc("wp", [10, 0, 0, 9], None));
        state.insert_service(svc(
            "reviews",
            [10, 0, 0, 1],
            Some(GatewayAddress::Hostname {
                namespace: "ns".into(),
                hostname: "wp.ns.svc.cluster.local".into(),
                hbone_port: 15008,
            }),
        ));
        state.insert_service(svc(
            "ratings",
            [10, 0, 0, 2],
            Some(GatewayAddress::Address {
                network: String::new(),
                ip: IpAddr::from([10, 0, 0, 9]),
                hbone_port: 15008,
            }),
        ));
        state.insert_service(svc("other", [10, 0, 0, 3], None));
        let got = waypoint_services(&state, &WaypointIdentity::new("ns", "wp"));
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1].name, "reviews");
        assert_eq!(got[0].name, "ratings", "by the waypoint's VIP");
        assert_eq!(got[0].kind, ServiceKind::Service);
        let mut got = got;
        let k8s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "reviews", "namespace": "ns"},
            "spec": {"ports": [{"port": 9080, "name": "web", "appProtocol": "grpc"}]}
        }))
        .expect("service");
        fill_ports(&mut got, &[k8s]);
        assert_eq!(got[1].ports[0].protocol(), Some("grpc"));
        assert_eq!(got[0].ports[0].protocol(), None);
    }
}
