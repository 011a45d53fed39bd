//! A DNS proxy for the mesh, as istio/ztunnel runs one on port 15053.
//!
//! `ambit-dns` owns the DNS request path: it serves DNS on a UDP socket and
//! a TCP listener the caller binds (in a pod's network namespace, or its
//! own), answers `A`/`AAAA` queries for mesh hostnames itself — from a
//! [`MeshResolver`] the caller implements over its mesh state, with a short
//! TTL and as the authority — and forwards every other query to upstream
//! resolvers (from a resolv.conf, [`ResolvConf`], or given explicitly),
//! relaying their answers. Truncation and TCP fallback follow RFC 1035 and
//! RFC 7766 on both sides; malformed input gets FORMERR or is dropped;
//! forwards and TCP connections are capped. Metrics carry Istio's names
//! ([`Metrics`]).
//!
//! ```no_run
//! use std::net::{IpAddr, SocketAddr};
//! use std::sync::Arc;
//! use ambit_dns::{Config, DnsProxy, Family, MeshAnswer, Metrics, Name, ResolvConf};
//!
//! # async fn demo(shutdown: impl std::future::Future<Output = ()>) -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::from_resolv_conf(&ResolvConf::system()?);
//! let mut registry = prometheus_client::registry::Registry::default();
//! let metrics = Metrics::new(&mut registry);
//! let mesh = Name::from_ascii("reviews.default.svc.cluster.local.")?;
//! let resolver = move |_client: SocketAddr, name: &Name, family: Family| {
//!     (name == &mesh).then(|| match family {
//!         Family::V4 => MeshAnswer::addrs([IpAddr::from([10, 96, 0, 7])]),
//!         Family::V6 => MeshAnswer::default(), // exists, no IPv6: NODATA
//!     })
//! };
//! let proxy = DnsProxy::new(config, Arc::new(resolver), metrics);
//! let udp = tokio::net::UdpSocket::bind("127.0.0.1:15053").await?;
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:15053").await?;
//! proxy.serve(udp, tcp, shutdown).await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod config;
mod error;
mod forward;
mod metrics;
mod request;
mod resolver;
mod server;

pub use self::config::{Config, DEFAULT_TTL, ResolvConf};
pub use self::error::Error;
pub use self::metrics::{DnsLabels, Metrics};
pub use self::request::{Forward, Outcome, Protocol};
pub use self::resolver::{ClientLabels, Family, MeshAnswer, MeshResolver, NoMeshNames};
pub use self::server::DnsProxy;
/// The DNS name type of [`MeshResolver::lookup`] (from `hickory-proto`).
pub use hickory_proto::rr::Name;
