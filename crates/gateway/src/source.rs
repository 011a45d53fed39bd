//! The Kubernetes source: watches the waypoint's objects, translates them
//! when something changes, hands the config to the engine, then writes
//! the routes' status.
//!
//! Same discipline as the node agent's pod source (`ambit-cni`): one
//! kube-runtime watcher per kind, each folding its events into an
//! in-memory copy; a relist (`Init` … `InitDone`) replaces that kind's copy
//! at once; nothing is translated before every watch has completed a
//! first listing (a config built from half the objects would drop routes
//! and policies). A kind whose list answers 404 — its CRD is not
//! installed — counts as listed and empty, and the watcher keeps retrying
//! with its backoff, so installing the CRD later brings the objects in.
//!
//! Changes are debounced (100 ms by default) so a burst of events costs
//! one translation. The services that use the waypoint come from the mesh
//! state ([`MeshServices`]), polled once a second (or at once after
//! [`GatewaySource::nudge`]); a change there re-translates too.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ambit_l7proxy::RouteConfig;
use ambit_mesh::MeshState;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::objects::{Kind, Object};
use crate::services::{WaypointIdentity, WaypointService, fill_ports, waypoint_services};
use crate::status::{self, CONTROLLER_NAME};
use crate::translate::{RouteKind, Snapshot, Translation, Translator};

/// Why the source is not ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Some watches have not completed a first listing in time.
    #[error(
        "the Kubernetes watches of {kinds:?} have not listed within {timeout:?}; check the API \
         server address and that the service account may list and watch them"
    )]
    NotSynced {
        /// The kinds still waiting.
        kinds: Vec<&'static str>,
        /// How long was waited.
        timeout: Duration,
    },
}

/// How the source runs.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// This waypoint's Gateway.
    pub waypoint: WaypointIdentity,
    /// Quiet time after a change before translating.
    pub debounce: Duration,
    /// How often the mesh state's services are compared.
    pub mesh_poll: Duration,
    /// Whether route status is written (needs `patch` on
    /// `httproutes/status` and `grpcroutes/status`).
    pub write_status: bool,
    /// The `controllerName` of the status entries.
    pub controller_name: String,
}

impl SourceConfig {
    /// Defaults for the waypoint `id`: 100 ms debounce, mesh polled every
    /// second, status written as [`CONTROLLER_NAME`].
    pub fn new(waypoint: WaypointIdentity) -> Self {
        Self {
            waypoint,
            debounce: Duration::from_millis(100),
            mesh_poll: Duration::from_secs(1),
            write_status: true,
            controller_name: CONTROLLER_NAME.to_owned(),
        }
    }
}

/// Where the services that use this waypoint come from.
pub trait MeshServices: Send + Sync + 'static {
    /// The services now (cheap: called on every poll).
    fn services(&self) -> Vec<WaypointService>;
}

impl<F> MeshServices for F
where
    F: Fn() -> Vec<WaypointService> + Send + Sync + 'static,
{
    fn services(&self) -> Vec<WaypointService> {
        self()
    }
}

/// The waypoint binary's mesh state (fed by xDS) as [`MeshServices`].
#[derive(Debug, Clone)]
pub struct MeshStateServices {
    /// The shared state.
    pub state: Arc<RwLock<MeshState>>,
    /// The waypoint whose services are wanted.
    pub waypoint: WaypointIdentity,
}

impl MeshServices for MeshStateServices {
    fn services(&self) -> Vec<WaypointService> {
        match self.state.read() {
            Ok(s) => waypoint_services(&s, &self.waypoint),
            Err(p) => waypoint_services(&p.into_inner(), &self.waypoint),
        }
    }
}

/// One kind's objects, with the relist buffer.
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

impl<T> Store<T> {
    /// Applies one event; true when the visible objects changed.
    fn apply(&mut self, event: Event<(String, T)>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply((k, v)) => {
                if let Some(buf) = self.relist.as_mut() {
                    buf.insert(k, v);
                }
                false
            }
            Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply((k, v)) => {
                self.objects.insert(k, v);
                true
            }
            Event::Delete((k, _)) => self.objects.remove(&k).is_some(),
        }
    }

    /// The kind is not installed: listed, empty.
    fn missing(&mut self) -> bool {
        let changed = !self.synced || !self.objects.is_empty();
        self.objects.clear();
        self.relist = None;
        self.synced = true;
        changed
    }

    fn values(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.objects.values().cloned().collect()
    }
}

#[derive(Default)]
struct Cache {
    gateways: Store<crate::objects::Gateway>,
    http_routes: Store<crate::objects::HttpRoute>,
    grpc_routes: Store<crate::objects::GrpcRoute>,
    grants: Store<crate::objects::ReferenceGrant>,
    policies: Store<crate::objects::AuthorizationPolicy>,
    services: Store<Service>,
    generation: u64,
}

impl Cache {
    fn unsynced(&self) -> Vec<&'static str> {
        let all = [
            ("gateways", self.gateways.synced),
            ("httproutes", self.http_routes.synced),
            ("grpcroutes", self.grpc_routes.synced),
            ("referencegrants", self.grants.synced),
            ("authorizationpolicies", self.policies.synced),
            ("services", self.services.synced),
        ];
        all.iter().filter(|(_, s)| !s).map(|(k, _)| *k).collect()
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            gateways: self.gateways.values(),
            http_routes: self.http_routes.values(),
            grpc_routes: self.grpc_routes.values(),
            reference_grants: self.grants.values(),
            policies: self.policies.values(),
            services: self.services.values(),
        }
    }
}

#[derive(Default)]
struct Shared {
    cache: Mutex<Cache>,
    changed: Notify,
    synced: Notify,
    last: Mutex<Option<Translation>>,
}

/// The running source; dropping it stops the watches.
pub struct GatewaySource {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Debug for GatewaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySource").finish_non_exhaustive()
    }
}

impl Drop for GatewaySource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl GatewaySource {
    /// Starts the watches and the translation loop on the current Tokio
    /// runtime. `apply` receives every new config (not called before every
    /// kind has listed once, nor for a config equal to the last).
    pub fn start(
        client: Client,
        cfg: SourceConfig,
        mesh: impl MeshServices,
        apply: impl Fn(RouteConfig) + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let tasks = vec![
            spawn_crd(&client, &shared, "gateways", |c| &mut c.gateways),
            spawn_crd(&client, &shared, "httproutes", |c| &mut c.http_routes),
            spawn_crd(&client, &shared, "grpcroutes", |c| &mut c.grpc_routes),
            spawn_crd(&client, &shared, "referencegrants", |c| &mut c.grants),
            spawn_crd(&client, &shared, "authorizationpolicies", |c| {
                &mut c.policies
            }),
            tokio::spawn(run_watch(
                Api::<Service>::all(client.clone()),
                shared.clone(),
                "services",
                |c| &mut c.services,
            )),
            tokio::spawn(run_loop(
                client,
                cfg,
                shared.clone(),
                Box::new(mesh),
                Box::new(apply),
            )),
        ];
        Self { shared, tasks }
    }

    /// Every watch has completed a first listing.
    pub fn is_synced(&self) -> bool {
        self.shared
            .cache
            .lock()
            .is_ok_and(|c| c.unsynced().is_empty())
    }

    /// Waits up to `timeout` for every watch's first listing.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), Error> {
        let wait = async {
            loop {
                let notified = self.shared.synced.notified();
                if self.is_synced() {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            let kinds = self
                .shared
                .cache
                .lock()
                .map(|c| c.unsynced())
                .unwrap_or_default();
            return Err(Error::NotSynced { kinds, timeout });
        }
        Ok(())
    }

    /// The last translation (config, YAML, route statuses, policy reports).
    pub fn last(&self) -> Option<Translation> {
        self.shared.last.lock().ok().and_then(|l| l.clone())
    }

    /// Re-reads the mesh services now instead of at the next poll.
    pub fn nudge(&self) {
        self.shared.changed.notify_one();
    }
}

fn spawn_crd<K: Kind>(
    client: &Client,
    shared: &Arc<Shared>,
    what: &'static str,
    store: fn(&mut Cache) -> &mut Store<Object<K>>,
) -> JoinHandle<()> {
    tokio::spawn(run_watch(
        Api::<Object<K>>::all(client.clone()),
        shared.clone(),
        what,
        store,
    ))
}

/// Runs one watch until aborted, folding its events into the cache.
async fn run_watch<K>(
    api: Api<K>,
    shared: Arc<Shared>,
    what: &'static str,
    store: fn(&mut Cache) -> &mut Store<K>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let key = |o: &K| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(mut cache) = shared.cache.lock() else {
            return;
        };
        let changed = match event {
            Ok(e) => {
                let e = match e {
                    Event::Init => Event::Init,
                    Event::InitDone => Event::InitDone,
                    Event::InitApply(o) => Event::InitApply((key(&o), o)),
                    Event::Apply(o) => Event::Apply((key(&o), o)),
                    Event::Delete(o) => Event::Delete((key(&o), o)),
                };
                store(&mut cache).apply(e)
            }
            Err(watcher::Error::InitialListFailed(kube::Error::Api(e))) if e.code == 404 => {
                debug!(
                    watch = what,
                    "not installed (404); treated as empty, retried with backoff"
                );
                store(&mut cache).missing()
            }
            Err(e) => {
                warn!(watch = what, error = %e, "kubernetes watch failed; retrying with backoff");
                false
            }
        };
        if changed {
            cache.generation += 1;
            shared.changed.notify_one();
        }
        let synced = store(&mut cache).synced;
        drop(cache);
        if synced {
            shared.synced.notify_waiters();
        }
    }
}

type Apply = Box<dyn Fn(RouteConfig) + Send + Sync>;

async fn run_loop(
    client: Client,
    cfg: SourceConfig,
    shared: Arc<Shared>,
    mesh: Box<dyn MeshServices>,
    apply: Apply,
) {
    let mut translator = Translator::new();
    let mut seen: Option<(u64, Vec<WaypointService>)> = None;
    let mut applied: Option<String> = None;
    let mut sent: BTreeMap<(RouteKind, String), serde_json::Value> = BTreeMap::new();
    let mut poll = tokio::time::interval(cfg.mesh_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.changed.notified() => tokio::time::sleep(cfg.debounce).await,
            _ = poll.tick() => {}
        }
        let (snap, generation) = {
            let Ok(cache) = shared.cache.lock() else {
                return;
            };
            if !cache.unsynced().is_empty() {
                continue;
            }
            (cache.snapshot(), cache.generation)
        };
        let mut services = mesh.services();
        fill_ports(&mut services, &snap.services);
        if seen
            .as_ref()
            .is_some_and(|(g, s)| *g == generation && *s == services)
        {
            continue;
        }
        seen = Some((generation, services.clone()));
        let t = translator.translate(&snap, &cfg.waypoint, &services);
        if let Ok(mut last) = shared.last.lock() {
            *last = Some(t.clone());
        }
        match &t.error {
            Some(e) => {
                warn!(error = %e, "the translated waypoint config does not validate; keeping the previous one")
            }
            None if applied.as_ref() != Some(&t.yaml) => {
                info!(
                    services = t.config.services.len(),
                    routes = t.routes.len(),
                    "waypoint config from Kubernetes applied"
                );
                apply(t.config.clone());
                applied = Some(t.yaml.clone());
            }
            None => {}
        }
        for p in t.policies.iter().filter(|p| !p.problems.is_empty()) {
            debug!(policy = %format!("{}/{}", p.namespace, p.name), problems = ?p.problems, "authorization policy translated with problems");
        }
        if cfg.write_status {
            write_status(&client, &cfg.controller_name, &snap, &t, &mut sent).await;
        }
    }
}

/// Patches the status of every route whose entries for this controller
/// differ from what the API server holds.
async fn write_status(
    client: &Client,
    controller: &str,
    snap: &Snapshot,
    t: &Translation,
    sent: &mut BTreeMap<(RouteKind, String), serde_json::Value>,
) {
    let now = status::now();
    let mut live = Vec::new();
    for r in &snap.http_routes {
        live.push(patch_one(client, controller, RouteKind::Http, r, t, sent, &now).await);
    }
    for r in &snap.grpc_routes {
        live.push(patch_one(client, controller, RouteKind::Grpc, r, t, sent, &now).await);
    }
    sent.retain(|k, _| live.contains(k));
}

async fn patch_one<K: Kind>(
    client: &Client,
    controller: &str,
    kind: RouteKind,
    obj: &Object<K>,
    t: &Translation,
    sent: &mut BTreeMap<(RouteKind, String), serde_json::Value>,
    now: &str,
) -> (RouteKind, String) {
    let key = (kind, obj.key());
    let parents = t
        .routes
        .iter()
        .find(|s| s.kind == kind && s.namespace == obj.namespace() && s.name == obj.name())
        .map(|s| s.parents.as_slice())
        .unwrap_or_default();
    let rv = obj.metadata.resource_version.as_deref();
    let Some(patch) =
        status::route_patch(&obj.status, rv, controller, parents, obj.generation(), now)
    else {
        sent.remove(&key);
        return key;
    };
    if sent.get(&key) == Some(&patch) {
        return key;
    }
    let api: Api<Object<K>> = Api::namespaced(client.clone(), obj.namespace());
    match api
        .patch_status(obj.name(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            debug!(route = %format!("{} {}", kind.as_str(), key.1), "route status written");
            sent.insert(key.clone(), patch);
        }
        // Changed or gone meanwhile: the watch brings the news and a retry.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            debug!(route = %key.1, code = e.code, "route status not written; retried after the next change");
        }
        Err(e) => warn!(
            route = %format!("{} {}", kind.as_str(), key.1),
            error = %e,
            "writing route status (needs patch on {}/status); retried after the next change",
            K::PLURAL
        ),
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relists_replace_and_missing_kinds_are_empty() {
        let mut s: Store<u32> = Store::default();
        let kv = |k: &str, v: u32| (k.to_owned(), v);
        assert!(!s.apply(Event::Init));
        assert!(!s.apply(Event::InitApply(kv("a", 1))));
        assert!(s.apply(Event::InitDone));
        assert!(s.synced);
        assert!(s.apply(Event::Apply(kv("b", 2))));
        s.apply(Event::Init);
        s.apply(Event::InitApply(kv("c", 3)));
        assert_eq!(
            s.objects.len(),
            2,
            "old objects visible until the relist completes"
        );
        s.apply(Event::InitDone);
        assert_eq!(s.objects.keys().collect::<Vec<_>>(), ["c"]);
        assert!(s.apply(Event::Delete(kv("c", 0))));
        assert!(!s.apply(Event::Delete(kv("c", 0))));
        let mut m: Store<u32> = Store::default();
        assert!(
            m.missing(),
            "the first 404 is news: the kind counts as listed"
        );
        assert!(m.synced && !m.missing(), "a second one is not");
    }
}
