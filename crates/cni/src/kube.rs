//! The Kubernetes pod source: a watch of this node's pods
//! (`fieldSelector=spec.nodeName=<node>`) and of every namespace's labels,
//! turned into [`PodRecord`]s for Istio's enrolment rules.
//!
//! Two kube-runtime watchers run as tasks on the caller's runtime and keep
//! an in-memory copy of what they saw; [`KubeSource::poll`] only reads
//! that copy, so the agent never waits on the API server while it holds
//! its lock. A watch that fails is retried with kube-runtime's backoff;
//! after a relist (`Init` … `InitDone`) objects not listed again are
//! dropped. Until both watches have completed their first listing the
//! source answers "no news": an empty answer would unenrol every pod.
//!
//! Like Istio's node agent, the source marks enrolled pods with the
//! annotation `ambient.istio.io/redirection: enabled` (a merge patch on the
//! pod's `status` subresource, so RBAC needs `patch` on `pods/status`) and
//! removes it when a pod leaves the mesh; istiod only sends HBONE to pods
//! that carry it. The patches run as tasks and are retried by the next
//! reconcile if they fail.
//!
//! What is skipped, as Istio's node agent does: host-network pods (their
//! traffic is the node's) and pods in a terminal phase (`Succeeded`,
//! `Failed`), whose addresses may already belong to someone else.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::pod::{PodKey, PodRecord, REDIRECTION_ANNOTATION};
use crate::source::{PodSource, Scan};

/// Watches pods on one node, and namespaces, through the API server.
pub struct KubeSource {
    node: String,
    shared: Arc<Shared>,
    seen: u64,
    tasks: Vec<JoinHandle<()>>,
    pods: Api<Pod>,
    runtime: tokio::runtime::Handle,
    /// Annotation patches under way, by pod uid.
    patching: Arc<Mutex<BTreeSet<String>>>,
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<Cache>,
    notify: Arc<Notify>,
    /// Wakes [`KubeSource::start`] when a first listing completes.
    synced: Notify,
}

#[derive(Default)]
struct Cache {
    pods: Store<PodRecord>,
    namespaces: Store<BTreeMap<String, String>>,
    /// Bumped on every change.
    generation: u64,
}

/// One watch's objects, with the relist buffer.
struct Store<T> {
    objects: BTreeMap<String, T>,
    relist: Option<BTreeMap<String, T>>,
    synced: bool,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<T: PartialEq + Clone> Store<T> {
    /// Applies one watch event (already converted); true when the visible
    /// objects changed.
    fn apply(&mut self, event: Event<(String, Option<T>)>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply((key, value)) => {
                if let (Some(buf), Some(v)) = (self.relist.as_mut(), value) {
                    buf.insert(key, v);
                }
                false
            }
            Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let changed = !self.synced || fresh != self.objects;
                self.objects = fresh;
                self.synced = true;
                changed
            }
            Event::Apply((key, Some(v))) => {
                self.objects.insert(key, v.clone()).as_ref() != Some(&v)
            }
            Event::Apply((key, None)) | Event::Delete((key, _)) => {
                self.objects.remove(&key).is_some()
            }
        }
    }
}

impl KubeSource {
    /// Starts watching with a client built the usual way (in-cluster
    /// service account, else `KUBECONFIG` / `~/.kube/config`), and waits up
    /// to `sync_timeout` for the first complete listing of pods and
    /// namespaces. Must be called inside a Tokio runtime, which keeps
    /// running the watches.
    pub async fn connect(node: impl Into<String>, sync_timeout: Duration) -> Result<Self, Error> {
        let client = Client::try_default().await.map_err(|e| {
            Error::invalid(
                "kubernetes client",
                format!("no in-cluster config or kubeconfig usable: {e}"),
            )
        })?;
        Self::start(client, node, sync_timeout).await
    }

    /// Starts watching through `client`, and waits up to `sync_timeout` for
    /// the first complete listing of pods and namespaces.
    pub async fn start(
        client: Client,
        node: impl Into<String>,
        sync_timeout: Duration,
    ) -> Result<Self, Error> {
        let node = node.into();
        let shared = Arc::new(Shared::default());
        let pods: Api<Pod> = Api::all(client.clone());
        let pod_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let namespaces: Api<Namespace> = Api::all(client);
        let tasks = vec![
            tokio::spawn(run_watch(
                pods.clone(),
                pod_cfg,
                shared.clone(),
                "pods",
                |c| &mut c.pods,
                pod_record,
            )),
            tokio::spawn(run_watch(
                namespaces,
                watcher::Config::default(),
                shared.clone(),
                "namespaces",
                |c| &mut c.namespaces,
                |ns: &Namespace| Some(ns.labels().clone()),
            )),
        ];
        let source = Self {
            node,
            shared,
            seen: 0,
            tasks,
            pods,
            runtime: tokio::runtime::Handle::current(),
            patching: Arc::default(),
        };
        let synced = async {
            loop {
                let wait = source.shared.synced.notified();
                if source.is_synced() {
                    return;
                }
                wait.await;
            }
        };
        if tokio::time::timeout(sync_timeout, synced).await.is_err() {
            return Err(Error::invalid(
                "kubernetes pod source",
                format!(
                    "no complete listing of pods on node {} and namespaces within {:?}; \
                     check the API server address and that the service account may \
                     list and watch pods and namespaces",
                    source.node, sync_timeout
                ),
            ));
        }
        info!(node = %source.node, "kubernetes pod source synced");
        Ok(source)
    }

    /// Both watches have completed a first listing.
    pub fn is_synced(&self) -> bool {
        self.shared
            .state
            .lock()
            .is_ok_and(|c| c.pods.synced && c.namespaces.synced)
    }

    /// The node whose pods are watched.
    pub fn node(&self) -> &str {
        &self.node
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl PodSource for KubeSource {
    fn poll(&mut self) -> Result<Option<Scan>, Error> {
        let cache = self
            .shared
            .state
            .lock()
            .map_err(|_| Error::invalid("kubernetes pod source", "a watch task panicked"))?;
        if !(cache.pods.synced && cache.namespaces.synced) || cache.generation == self.seen {
            return Ok(None);
        }
        self.seen = cache.generation;
        let pods = cache
            .pods
            .objects
            .values()
            .map(|p| {
                let mut p = p.clone();
                p.namespace_labels = cache
                    .namespaces
                    .objects
                    .get(&p.namespace)
                    .cloned()
                    .unwrap_or_default();
                (p.key(), p)
            })
            .collect::<BTreeMap<PodKey, PodRecord>>();
        Ok(Some(Scan {
            pods,
            errors: Vec::new(),
        }))
    }

    fn describe(&self) -> String {
        format!("kubernetes (pods on node {})", self.node)
    }

    fn changed(&self) -> Option<Arc<Notify>> {
        Some(self.shared.notify.clone())
    }

    fn enrolled(&mut self, uids: &BTreeMap<String, crate::pod::EnrolledPod>) {
        let Ok(cache) = self.shared.state.lock() else {
            return;
        };
        for pod in cache.pods.objects.values() {
            let have = pod
                .annotations
                .get(REDIRECTION_ANNOTATION)
                .map(String::as_str);
            let value = match (uids.contains_key(&pod.uid), have) {
                (true, Some("enabled" | "disabled")) | (false, None | Some("disabled")) => continue,
                (true, _) => serde_json::Value::from("enabled"),
                (false, Some(_)) => serde_json::Value::Null,
            };
            let Ok(mut patching) = self.patching.lock() else {
                return;
            };
            if !patching.insert(pod.uid.clone()) {
                continue;
            }
            drop(patching);
            let (api, name, ns, uid) = (
                self.pods.clone(),
                pod.name.clone(),
                pod.namespace.clone(),
                pod.uid.clone(),
            );
            let patching = self.patching.clone();
            self.runtime.spawn(async move {
                let body = serde_json::json!({
                    "metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}
                });
                let api: Api<Pod> = Api::namespaced(api.into_client(), &ns);
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                {
                    Ok(_) => debug!(pod = %format!("{ns}/{name}"), %value, "redirection annotation"),
                    // Gone already: nothing to mark.
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => warn!(
                        pod = %format!("{ns}/{name}"),
                        error = %e,
                        "setting {REDIRECTION_ANNOTATION} (needs patch on pods/status); retried on the next reconcile"
                    ),
                }
                if let Ok(mut p) = patching.lock() {
                    p.remove(&uid);
                }
            });
        }
    }
}

/// Runs one watch until the task is aborted, folding its events into the
/// cache through `store` after converting objects with `convert` (`None`:
/// the object is not wanted, as if absent).
async fn run_watch<K, T>(
    api: Api<K>,
    cfg: watcher::Config,
    shared: Arc<Shared>,
    what: &'static str,
    store: fn(&mut Cache) -> &mut Store<T>,
    convert: fn(&K) -> Option<T>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: PartialEq + Clone,
{
    // Namespaced objects by `namespace/name`, cluster-scoped ones by name.
    let key = |o: &K| match o.namespace() {
        Some(ns) => format!("{ns}/{}", o.name_any()),
        None => o.name_any(),
    };
    let mut events = watcher::watcher(api, cfg).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(watch = what, error = %e, "kubernetes watch failed; retrying with backoff");
                continue;
            }
        };
        let event = match event {
            Event::Init => Event::Init,
            Event::InitDone => Event::InitDone,
            Event::InitApply(o) => Event::InitApply((key(&o), convert(&o))),
            Event::Apply(o) => Event::Apply((key(&o), convert(&o))),
            Event::Delete(o) => Event::Delete((key(&o), None)),
        };
        let done = matches!(event, Event::InitDone);
        let Ok(mut cache) = shared.state.lock() else {
            return;
        };
        if store(&mut cache).apply(event) {
            cache.generation += 1;
            debug!(
                watch = what,
                generation = cache.generation,
                "pod source changed"
            );
            shared.notify.notify_one();
        }
        drop(cache);
        if done {
            shared.synced.notify_waiters();
        }
    }
}

/// The plugin's membership source inside a cluster: reads the pod and its
/// namespace through the API server with a kubeconfig, as Istio's plugin
/// does with the kubeconfig its agent writes next to the CNI config. The
/// plugin is a short-lived process, so each lookup runs on its own
/// single-threaded runtime, bounded by a timeout.
#[derive(Debug, Clone)]
pub struct KubeMembership {
    kubeconfig: std::path::PathBuf,
    timeout: Duration,
}

impl KubeMembership {
    /// Reads pods with the kubeconfig at `kubeconfig`; lookups give up
    /// after five seconds.
    pub fn new(kubeconfig: std::path::PathBuf) -> Self {
        Self {
            kubeconfig,
            timeout: Duration::from_secs(5),
        }
    }

    /// The same, with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn fetch(&self, namespace: &str, name: &str) -> Result<Option<PodRecord>, String> {
        let path = self.kubeconfig.display();
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| format!("reading {path}: {e}"))?;
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {path}: {e}"))?;
        let client = Client::try_from(cfg).map_err(|e| format!("kubernetes client: {e}"))?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let Some(pod) = pods
            .get_opt(name)
            .await
            .map_err(|e| format!("reading pod {namespace}/{name}: {e}"))?
        else {
            return Ok(None);
        };
        let Some(mut record) = pod_record(&pod) else {
            return Ok(None);
        };
        let namespaces: Api<Namespace> = Api::all(client);
        record.namespace_labels = namespaces
            .get_opt(namespace)
            .await
            .map_err(|e| format!("reading namespace {namespace}: {e}"))?
            .map(|ns| ns.labels().clone())
            .unwrap_or_default();
        Ok(Some(record))
    }
}

impl crate::membership::Membership for KubeMembership {
    fn describe(&self) -> String {
        format!("kubernetes {}", self.kubeconfig.display())
    }

    fn lookup(&self, namespace: &str, name: &str) -> Result<Option<PodRecord>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting a runtime: {e}"))?;
        rt.block_on(async {
            tokio::time::timeout(self.timeout, self.fetch(namespace, name))
                .await
                .map_err(|_| format!("no answer from the API server within {:?}", self.timeout))?
        })
    }
}

/// A pod object as a [`PodRecord`] (without its namespace's labels, which
/// come from the namespace watch); `None` for pods the agent must ignore.
pub fn pod_record(pod: &Pod) -> Option<PodRecord> {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let status = pod.status.as_ref();
    if status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
    {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|i| i.parse().ok())
    {
        ips.push(ip);
    }
    Some(PodRecord {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_else(|| "default".into()),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        ips,
        netns: None,
        node: spec.and_then(|s| s.node_name.clone()),
        labels: pod.labels().clone(),
        annotations: pod.annotations().clone(),
        namespace_labels: BTreeMap::new(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod json")
    }

    #[test]
    fn pod_objects_become_records() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u1",
                         "labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "web", "containers": []},
            "status": {"phase": "Running", "podIP": "10.0.0.7",
                       "podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00::7"}]}
        }));
        let r = pod_record(&p).expect("record");
        assert_eq!(r.key(), ("shop".to_owned(), "web-0".to_owned()));
        assert_eq!(r.uid, "u1");
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.node.as_deref(), Some("n1"));
        assert_eq!(r.service_account, "web");
        assert_eq!(r.labels.get("app").map(String::as_str), Some("web"));

        let pending = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x", "uid": "u2"},
            "spec": {"containers": []}
        }));
        let r = pod_record(&pending).expect("pending pods are known, not ready");
        assert!(r.ips.is_empty());
        assert_eq!(r.service_account, "default");

        let host = pod(serde_json::json!({
            "metadata": {"name": "h", "namespace": "x"},
            "spec": {"hostNetwork": true, "containers": []}
        }));
        assert!(pod_record(&host).is_none());
        let done = pod(serde_json::json!({
            "metadata": {"name": "d", "namespace": "x"},
            "spec": {"containers": []},
            "status": {"phase": "Succeeded", "podIP": "10.0.0.9"}
        }));
        assert!(pod_record(&done).is_none());
        let bad_ip = pod(serde_json::json!({
            "metadata": {"name": "b", "namespace": "x"},
            "spec": {"containers": []},
            "status": {"podIP": "not-an-ip"}
        }));
        assert!(pod_record(&bad_ip).expect("record").ips.is_empty());
    }

    #[test]
    fn relists_replace_and_watch_events_update() {
        let mut s: Store<u32> = Store::default();
        let kv = |k: &str, v: Option<u32>| (k.to_owned(), v);
        assert!(!s.apply(Event::Init));
        assert!(!s.apply(Event::InitApply(kv("a", Some(1)))));
        assert!(!s.apply(Event::InitApply(kv("skipped", None))));
        assert!(
            s.apply(Event::InitDone),
            "the first listing is news even if empty"
        );
        assert!(s.synced);
        assert_eq!(s.objects.len(), 1);
        assert!(s.apply(Event::Apply(kv("b", Some(2)))));
        assert!(!s.apply(Event::Apply(kv("b", Some(2)))), "no change");
        assert!(s.apply(Event::Apply(kv("b", None))), "became unwanted");
        assert!(!s.apply(Event::Delete(kv("zz", None))));
        // A relist that no longer has `a` drops it; the old objects stay
        // visible until the relist completes.
        s.apply(Event::Init);
        s.apply(Event::InitApply(kv("c", Some(3))));
        assert!(s.objects.contains_key("a"));
        assert!(s.apply(Event::InitDone));
        assert_eq!(s.objects.keys().collect::<Vec<_>>(), ["c"]);
    }
}
