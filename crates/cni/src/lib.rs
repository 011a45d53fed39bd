//! The CNI plugin protocol and the node agent of an Istio-ambient-compatible
//! mesh.
//!
//! `ambit-cni` owns what happens between a container runtime creating a pod
//! sandbox and that pod's traffic being captured:
//!
//! - [`spec`] and [`plugin`]: the CNI protocol (spec 0.4.0 and 1.0.x) as
//!   pure data and logic — environment, network configuration,
//!   `prevResult` passed through byte for byte, error objects with the
//!   spec's codes — and the chained plugin's ADD/DEL/CHECK/VERSION as
//!   Istio's `istio-cni` behaves in ambient mode;
//! - [`event`]: the pod event the plugin posts to the agent over
//!   `<run_dir>/pluginevent.sock`;
//! - [`pod`], [`source`], [`state`]: pod records, Istio's enrolment rules,
//!   the local directory pod source, and the desired-state model;
//! - `kube` (feature `kube`): the Kubernetes pod source, a watch of this
//!   node's pods and the namespaces' labels;
//! - [`agent`]: the node agent — plugin-event server, source polling,
//!   kernel reconcile — over a [`Dataplane`]: [`node::NodeDataplane`]
//!   (node-level capture with tunnels) or, with the `inpod` feature,
//!   [`inpod::InpodDataplane`] (in-pod rules plus ZDS to ztunnel);
//! - [`install`]: writing the chained entry into the host's CNI config;
//! - [`runtime`]: the runtime's side — running a conflist's plugins as
//!   libcni does (for tests and local meshes without a kubelet).
#![forbid(unsafe_code)]

pub mod agent;
mod error;
pub mod event;
#[cfg(feature = "inpod")]
pub mod inpod;
pub mod install;
#[cfg(feature = "kube")]
pub mod kube;
pub mod membership;
pub mod netns_finder;
pub mod node;
pub mod plugin;
pub mod pod;
pub mod runtime;
pub mod source;
pub mod spec;
pub mod state;

pub use self::{
    agent::{Agent, AgentConfig, Dataplane, EventOutcome, Metrics},
    error::Error,
    event::{AddAnswer, EventKind, EventSink, PodEvent, PostError, UnixHttpSink},
    pod::{EnrolledPod, NetnsId, PodRecord},
    source::{DirSource, PodSource, Scan},
    spec::{CniError, ErrorCode},
    state::{Removal, State},
};
