//! A fake Kubernetes API server for tests: plain HTTP/1.1 on 127.0.0.1,
//! a random port, in-process.
//!
//! It speaks what kube-rs watchers and status writers use, for any kind
//! registered with [`FakeApi::register`] (core `/api/v1/...` or
//! `/apis/<group>/<version>/...`, cluster-wide or per namespace):
//!
//! - list, with the store's `resourceVersion`;
//! - watch (`watch=true&resourceVersion=N`): the events after `N`, then new
//!   ones, one JSON object a line (`ADDED`, `MODIFIED`, `DELETED`);
//! - get of one object;
//! - `PATCH .../<name>/status` with a JSON merge patch, applied and
//!   recorded ([`FakeApi::patches`]); a `metadata.resourceVersion` in the
//!   patch that is not the object's current one answers 409, as the API
//!   server's optimistic concurrency does.
//!
//! Unregistered kinds answer 404, like a CRD that is not installed. Tests
//! change objects at runtime with [`FakeApi::apply`] and
//! [`FakeApi::delete`], which the watches see.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A kind's address: `("", "v1", "services")`,
/// `("gateway.networking.k8s.io", "v1", "httproutes")`.
pub type Gvr = (String, String, String);

/// One recorded status patch.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedPatch {
    /// The kind.
    pub gvr: Gvr,
    /// The object's namespace (empty when cluster-scoped).
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The merge patch as sent.
    pub patch: Value,
}

#[derive(Default)]
struct Store {
    kinds: BTreeSet<Gvr>,
    /// Objects by kind, then `namespace/name`.
    objects: BTreeMap<Gvr, BTreeMap<String, Value>>,
    version: u64,
    /// (version, kind, namespace, event).
    history: Vec<(u64, Gvr, String, Value)>,
    patches: Vec<RecordedPatch>,
}

struct Inner {
    store: Mutex<Store>,
    events: broadcast::Sender<(u64, Gvr, String, Value)>,
}

/// The fake API server; dropping every clone stops accepting connections.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
    addr: SocketAddr,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn gvr(group: &str, version: &str, plural: &str) -> Gvr {
    (group.to_owned(), version.to_owned(), plural.to_owned())
}

impl FakeApi {
    /// Starts serving on 127.0.0.1 with a random port (inside a Tokio
    /// runtime, which keeps serving).
    pub async fn start() -> std::io::Result<Self> {
        Self::serve(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
    }

    /// Serves on `listener` (one bound inside a test's namespace, say),
    /// from the current Tokio runtime.
    pub fn serve(listener: tokio::net::TcpListener) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            store: Mutex::new(Store {
                version: 1,
                ..Store::default()
            }),
            events: broadcast::channel(1024).0,
        });
        let served = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let inner = served.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |r| serve(inner.clone(), r));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            inner,
            addr,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig file's text naming it (plain HTTP, no credentials),
    /// for a child process's `KUBECONFIG`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster: {{server: 'http://{}'}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\nusers:\n- name: fake\n  user: {{}}\n",
            self.addr
        )
    }

    /// A kube client for it (plain HTTP, no credentials).
    pub fn client(&self) -> Result<kube::Client, kube::Error> {
        let url = format!("http://{}", self.addr)
            .parse()
            .map_err(|e| kube::Error::Service(Box::new(e)))?;
        kube::Client::try_from(kube::Config::new(url))
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.inner)
    }

    /// Makes a kind known (lists and watches of unknown kinds answer 404).
    pub fn register(&self, group: &str, version: &str, plural: &str) {
        self.store().kinds.insert(gvr(group, version, plural));
    }

    /// Adds or replaces an object (`ADDED` or `MODIFIED`), registering its
    /// kind. The store sets `resourceVersion`, `uid`, `creationTimestamp`
    /// (when missing) and bumps `generation` when the spec changes.
    /// Returns the stored object.
    pub fn apply(&self, group: &str, version: &str, plural: &str, mut obj: Value) -> Value {
        let kind = gvr(group, version, plural);
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let key = format!("{ns}/{name}");
        let mut store = self.store();
        store.kinds.insert(kind.clone());
        store.version += 1;
        let rv = store.version;
        let old = store.objects.get(&kind).and_then(|m| m.get(&key)).cloned();
        let generation = match &old {
            Some(o) if o["spec"] == obj["spec"] => {
                o["metadata"]["generation"].as_i64().unwrap_or(1)
            }
            Some(o) => o["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
            None => 1,
        };
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        meta["generation"] = json!(generation);
        if meta["uid"].is_null() {
            meta["uid"] = json!(format!("uid-{}-{key}", kind.2));
        }
        if meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] = match &old {
                Some(o) => o["metadata"]["creationTimestamp"].clone(),
                None => json!("2026-01-01T00:00:00Z"),
            };
        }
        if old.is_some() && obj.get("status").is_none_or(Value::is_null) {
            // Like the API server: a spec update keeps the status.
            if let Some(status) = old.as_ref().and_then(|o| o.get("status")) {
                obj["status"] = status.clone();
            }
        }
        let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
        store
            .objects
            .entry(kind.clone())
            .or_default()
            .insert(key, obj.clone());
        emit(
            &self.inner,
            &mut store,
            rv,
            kind,
            ns,
            json!({"type": event, "object": obj}),
        );
        obj
    }

    /// Deletes an object (`DELETED`); false when there was none.
    pub fn delete(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> bool {
        let kind = gvr(group, version, plural);
        let mut store = self.store();
        let Some(mut obj) = store
            .objects
            .get_mut(&kind)
            .and_then(|m| m.remove(&format!("{namespace}/{name}")))
        else {
            return false;
        };
        store.version += 1;
        let rv = store.version;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        emit(
            &self.inner,
            &mut store,
            rv,
            kind,
            namespace.to_owned(),
            json!({"type": "DELETED", "object": obj}),
        );
        true
    }

    /// The stored object, if any.
    pub fn get(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        self.store()
            .objects
            .get(&gvr(group, version, plural))
            .and_then(|m| m.get(&format!("{namespace}/{name}")).cloned())
    }

    /// The status patches received so far, oldest first.
    pub fn patches(&self) -> Vec<RecordedPatch> {
        self.store().patches.clone()
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, Store> {
    // A test that panicked while holding the lock leaves usable data.
    inner
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn emit(inner: &Inner, store: &mut Store, rv: u64, kind: Gvr, ns: String, event: Value) {
    let entry = (rv, kind, ns, event);
    store.history.push(entry.clone());
    let _ = inner.events.send(entry);
}

fn reply(code: u16, body: &Value) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: &str) -> hyper::Response<Body> {
    reply(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": reason, "code": code, "message": message}),
    )
}

/// A request path, parsed: the kind, the namespace, the name, `/status`.
struct Target {
    kind: Gvr,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    Some(Target {
        kind: gvr(group, version, plural),
        namespace,
        name,
        status,
    })
}

async fn serve(
    inner: Arc<Inner>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, Infallible> {
    let Some(t) = parse_path(req.uri().path()) else {
        return Ok(status(404, "NotFound", "no such path"));
    };
    if !lock(&inner).kinds.contains(&t.kind) {
        return Ok(status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    if req.method() == hyper::Method::PATCH {
        return Ok(patch(&inner, t, req).await);
    }
    if req.method() != hyper::Method::GET {
        return Ok(status(
            405,
            "MethodNotAllowed",
            "only GET and PATCH .../status",
        ));
    }
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let store = lock(&inner);
    if let Some(name) = &t.name {
        let key = format!("{}/{name}", t.namespace.as_deref().unwrap_or(""));
        return Ok(match store.objects.get(&t.kind).and_then(|m| m.get(&key)) {
            Some(o) => reply(200, o),
            None => status(404, "NotFound", &format!("{} {key} not found", t.kind.2)),
        });
    }
    let in_ns = |ns: &str| t.namespace.as_deref().is_none_or(|want| want == ns);
    if query.get("watch").map(String::as_str) != Some("true") {
        let items: Vec<Value> = store
            .objects
            .get(&t.kind)
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| in_ns(k.split('/').next().unwrap_or("")))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default();
        let list = json!({"apiVersion": "v1", "kind": "List",
                          "metadata": {"resourceVersion": store.version.to_string()}, "items": items});
        return Ok(reply(200, &list));
    }
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Under the store lock: no event slips between the backlog and the
    // subscription.
    let backlog: Vec<_> = store
        .history
        .iter()
        .filter(|e| e.0 > since)
        .cloned()
        .collect();
    let mut rx = inner.events.subscribe();
    drop(store);
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let (kind, ns) = (t.kind, t.namespace);
    tokio::spawn(async move {
        let mut backlog = backlog.into_iter();
        loop {
            let (_, k, obj_ns, ev) = match backlog.next() {
                Some(e) => e,
                None => match rx.recv().await {
                    Ok(e) => e,
                    Err(_) => return,
                },
            };
            if k != kind || ns.as_deref().is_some_and(|n| n != obj_ns) {
                continue;
            }
            if tx
                .send(Ok(Frame::data(Bytes::from(format!("{ev}\n")))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let stream =
        futures_util::stream::unfold(
            body_rx,
            |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
        );
    Ok(hyper::Response::new(StreamBody::new(stream).boxed()))
}

async fn patch(
    inner: &Inner,
    t: Target,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let is_merge = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/merge-patch+json");
    let (Some(name), true, true) = (t.name.clone(), t.status, is_merge) else {
        return status(
            400,
            "BadRequest",
            "only merge patches of .../status are served",
        );
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status(400, "BadRequest", &e.to_string()),
    };
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return status(400, "BadRequest", &format!("patch is not JSON: {e}")),
    };
    let ns = t.namespace.clone().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let mut store = lock(inner);
    store.patches.push(RecordedPatch {
        gvr: t.kind.clone(),
        namespace: ns.clone(),
        name,
        patch: patch.clone(),
    });
    let Some(mut obj) = store
        .objects
        .get(&t.kind)
        .and_then(|m| m.get(&key))
        .cloned()
    else {
        return status(404, "NotFound", &format!("{key} not found"));
    };
    if let Some(want) = patch["metadata"]["resourceVersion"].as_str()
        && Some(want) != obj["metadata"]["resourceVersion"].as_str()
    {
        return status(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version",
        );
    }
    // Only the status subresource changes through this path.
    if let Some(s) = patch.get("status") {
        merge(&mut obj["status"], s);
    }
    store.version += 1;
    let rv = store.version;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    store
        .objects
        .entry(t.kind.clone())
        .or_default()
        .insert(key, obj.clone());
    emit(
        inner,
        &mut store,
        rv,
        t.kind,
        ns,
        json!({"type": "MODIFIED", "object": obj}),
    );
    reply(200, &obj)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
#[path = "kubeapi_tests.rs"]
mod tests;
