//! The Kubernetes pod source against a small in-process API server that
//! speaks the list/watch protocol over plain HTTP on loopback: the first
//! listing, watch events for pods and namespaces, the node field selector,
//! relists after a dropped watch, and the agent enrolling and unenrolling
//! pods from the watch alone.
#![cfg(feature = "kube")]
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_cni::kube::KubeSource;
use ambit_cni::state::Removal;
use ambit_cni::{Agent, AgentConfig, Dataplane, EnrolledPod, Error, Metrics, PodSource};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Objects by resource ("pods", "namespaces") and name, with a resource
/// version counter, the history of watch events (a watch from version N
/// replays what came after N, as the API server does) and a channel of
/// new ones.
struct Api {
    objects: Mutex<BTreeMap<&'static str, BTreeMap<String, Value>>>,
    version: Mutex<u64>,
    history: Mutex<Vec<Event>>,
    events: broadcast::Sender<Event>,
    requests: Mutex<Vec<String>>,
}

/// (resource version, resource, watch event).
type Event = (u64, &'static str, Value);

impl Api {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            objects: Mutex::new(BTreeMap::new()),
            version: Mutex::new(1),
            history: Mutex::new(Vec::new()),
            events: broadcast::channel(64).0,
            requests: Mutex::new(Vec::new()),
        })
    }

    fn bump(&self) -> u64 {
        let mut v = self.version.lock().unwrap();
        *v += 1;
        *v
    }

    /// Adds, changes (`ADDED`/`MODIFIED`) or deletes (`DELETED`) an object
    /// and tells the watchers.
    fn put(&self, resource: &'static str, kind: &str, mut obj: Value) {
        // Under the objects lock, so lists and watches see a consistent
        // (objects, version, history).
        let mut all = self.objects.lock().unwrap();
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = format!(
            "{}/{}",
            obj["metadata"]["namespace"].as_str().unwrap_or(""),
            obj["metadata"]["name"].as_str().unwrap()
        );
        let map = all.entry(resource).or_default();
        if kind == "DELETED" {
            map.remove(&key);
        } else {
            map.insert(key, obj.clone());
        }
        let event = (rv, resource, json!({"type": kind, "object": obj}));
        self.history.lock().unwrap().push(event.clone());
        let _ = self.events.send(event);
    }

    fn on_node(obj: &Value, selector: Option<&str>) -> bool {
        match selector {
            Some(node) => obj["spec"]["nodeName"].as_str() == Some(node),
            None => true,
        }
    }

    async fn serve(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<Body>, Infallible> {
        let uri = req.uri().clone();
        self.requests
            .lock()
            .unwrap()
            .push(format!("{} {uri}", req.method()));
        if req.method() == hyper::Method::PATCH {
            return Ok(self.patch(req).await);
        }
        // A single object: /api/v1/namespaces/NS/pods/NAME or /api/v1/namespaces/NAME.
        let parts: Vec<&str> = uri.path().split('/').collect();
        let single = match parts.as_slice() {
            ["", "api", "v1", "namespaces", ns, "pods", name] => {
                Some(("pods", format!("{ns}/{name}")))
            }
            ["", "api", "v1", "namespaces", name] => Some(("namespaces", format!("/{name}"))),
            _ => None,
        };
        if let Some((resource, key)) = single {
            let found = self
                .objects
                .lock()
                .unwrap()
                .get(resource)
                .and_then(|m| m.get(&key).cloned());
            let (code, body) = match found {
                Some(obj) => (200, obj),
                None => (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
            };
            let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
            *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
            return Ok(r);
        }
        let resource: &'static str = match uri.path() {
            "/api/v1/pods" => "pods",
            "/api/v1/namespaces" => "namespaces",
            _ => {
                let body = Full::new(Bytes::from_static(b"{}")).boxed();
                let mut r = hyper::Response::new(body);
                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                return Ok(r);
            }
        };
        let query: BTreeMap<String, String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=")))
            .collect();
        let node = query
            .get("fieldSelector")
            .and_then(|s| s.strip_prefix("spec.nodeName="))
            .map(str::to_owned);
        let kind = if resource == "pods" {
            "PodList"
        } else {
            "NamespaceList"
        };
        if query.get("watch").map(String::as_str) != Some("true") {
            let all = self.objects.lock().unwrap();
            let items: Vec<Value> = all
                .get(resource)
                .map(|m| {
                    m.values()
                        .filter(|o| Self::on_node(o, node.as_deref()))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let version = self.version.lock().unwrap().to_string();
            drop(all);
            let list = json!({"apiVersion": "v1", "kind": kind,
                              "metadata": {"resourceVersion": version}, "items": items});
            return Ok(hyper::Response::new(
                Full::new(Bytes::from(list.to_string())).boxed(),
            ));
        }
        // A watch: what came after the asked version, then new events; one
        // JSON object a line.
        let since: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (mut rx, backlog) = {
            let _all = self.objects.lock().unwrap();
            let backlog: Vec<Event> = self
                .history
                .lock()
                .unwrap()
                .iter()
                .filter(|(rv, _, _)| *rv > since)
                .cloned()
                .collect();
            (self.events.subscribe(), backlog)
        };
        let stream = async_stream(move |tx| async move {
            let mut backlog = backlog.into_iter();
            loop {
                let (_, r, ev) = match backlog.next() {
                    Some(e) => e,
                    None => match rx.recv().await {
                        Ok(e) => e,
                        Err(_) => break,
                    },
                };
                if r == resource && Self::on_node(&ev["object"], node.as_deref()) {
                    let line = format!("{ev}\n");
                    if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(hyper::Response::new(StreamBody::new(stream).boxed()))
    }
}

impl Api {
    /// A JSON merge patch of a pod's annotations through its status
    /// subresource, as the source sends it.
    async fn patch(&self, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Body> {
        let reply = |code: u16, body: Value| {
            let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())).boxed());
            *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
            r
        };
        let path: Vec<String> = req.uri().path().split('/').map(str::to_owned).collect();
        // ["", "api", "v1", "namespaces", ns, "pods", name, "status"]
        let ok_shape =
            path.len() == 8 && path[3] == "namespaces" && path[5] == "pods" && path[7] == "status";
        let is_merge = req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/merge-patch+json");
        if !ok_shape || !is_merge {
            return reply(
                400,
                json!({"kind": "Status", "code": 400, "message": "bad patch"}),
            );
        }
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let patch: Value = serde_json::from_slice(&body).unwrap();
        let key = format!("{}/{}", path[4], path[6]);
        let current = self
            .objects
            .lock()
            .unwrap()
            .get("pods")
            .and_then(|m| m.get(&key).cloned());
        let Some(mut pod) = current else {
            return reply(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "reason": "NotFound", "code": 404, "message": "not found"}),
            );
        };
        for (k, v) in patch["metadata"]["annotations"].as_object().unwrap() {
            let ann = pod["metadata"]
                .as_object_mut()
                .unwrap()
                .entry("annotations")
                .or_insert_with(|| json!({}));
            if v.is_null() {
                ann.as_object_mut().unwrap().remove(k);
            } else {
                ann[k] = v.clone();
            }
        }
        self.put("pods", "MODIFIED", pod.clone());
        reply(200, pod)
    }

    fn annotation(&self, ns: &str, name: &str) -> Option<String> {
        let all = self.objects.lock().unwrap();
        all.get("pods")?.get(&format!("{ns}/{name}"))?["metadata"]["annotations"]
            ["ambient.istio.io/redirection"]
            .as_str()
            .map(str::to_owned)
    }
}

/// A body stream fed by a task.
fn async_stream<F, Fut>(
    f: F,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

async fn start_api(api: Arc<Api>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let api = api.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r| api.clone().serve(r));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn client(addr: SocketAddr) -> kube::Client {
    let cfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(cfg).unwrap()
}

fn namespace(name: &str, ambient: bool) -> Value {
    let labels = if ambient {
        json!({"istio.io/dataplane-mode": "ambient"})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "uid": format!("ns-{name}"), "labels": labels}})
}

fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
           "spec": {"nodeName": node, "serviceAccountName": name, "containers": []},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

async fn next_scan(src: &mut KubeSource) -> ambit_cni::Scan {
    let notify = src.changed().expect("kube source notifies");
    for _ in 0..50 {
        if let Some(scan) = src.poll().unwrap() {
            return scan;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), notify.notified()).await;
    }
    panic!("no change seen from the kubernetes source");
}

fn ambient(scan: &ambit_cni::Scan) -> BTreeSet<String> {
    scan.pods
        .values()
        .filter(|p| p.wants_ambient())
        .map(|p| p.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_follows_pods_and_namespace_labels() {
    let api = Api::new();
    api.put("namespaces", "ADDED", namespace("mesh", true));
    api.put("namespaces", "ADDED", namespace("plain", false));
    api.put("pods", "ADDED", pod("mesh", "a", "n1", "10.0.0.1"));
    api.put("pods", "ADDED", pod("plain", "b", "n1", "10.0.0.2"));
    api.put("pods", "ADDED", pod("mesh", "elsewhere", "n2", "10.0.0.3"));
    let addr = start_api(api.clone()).await;

    let mut src = KubeSource::start(client(addr), "n1", Duration::from_secs(10))
        .await
        .expect("synced");
    assert!(src.is_synced());
    let scan = next_scan(&mut src).await;
    assert_eq!(
        scan.pods.keys().map(|k| k.1.clone()).collect::<Vec<_>>(),
        ["a", "b"],
        "only this node's pods"
    );
    assert_eq!(ambient(&scan), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        scan.pods[&("mesh".into(), "a".into())].ips,
        [IpAddr::from([10, 0, 0, 1])]
    );
    assert!(src.poll().unwrap().is_none(), "no news, no scan");
    assert!(
        api.requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains("fieldSelector=spec.nodeName%3Dn1")),
        "the pod watch asks the API server for this node's pods only"
    );

    // Labelling the namespace enrols b; deleting a removes it; a new pod appears.
    api.put("namespaces", "MODIFIED", namespace("plain", true));
    let scan = next_scan(&mut src).await;
    assert_eq!(
        ambient(&scan),
        BTreeSet::from(["a".to_owned(), "b".to_owned()])
    );
    api.put("pods", "DELETED", pod("mesh", "a", "n1", "10.0.0.1"));
    api.put("pods", "ADDED", pod("mesh", "c", "n1", "10.0.0.4"));
    let mut scan = next_scan(&mut src).await;
    while scan.pods.len() != 2 || !scan.pods.contains_key(&("mesh".into(), "c".into())) {
        scan = next_scan(&mut src).await;
    }
    assert_eq!(
        ambient(&scan),
        BTreeSet::from(["b".to_owned(), "c".to_owned()])
    );
    // A pod that finished is dropped even before it is deleted.
    let mut done = pod("mesh", "c", "n1", "10.0.0.4");
    done["status"]["phase"] = json!("Succeeded");
    api.put("pods", "MODIFIED", done);
    let mut scan = next_scan(&mut src).await;
    while scan.pods.contains_key(&("mesh".into(), "c".into())) {
        scan = next_scan(&mut src).await;
    }
    assert_eq!(ambient(&scan), BTreeSet::from(["b".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_never_lists_is_a_clear_error() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let err = KubeSource::start(client(addr), "n1", Duration::from_millis(700))
        .await
        .expect_err("cannot sync");
    let msg = err.to_string();
    assert!(
        msg.contains("node n1") && msg.contains("list and watch"),
        "{msg}"
    );
}

/// Records enrolments instead of touching the kernel.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<BTreeSet<IpAddr>>>);

impl Dataplane for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn start(&mut self) -> Result<(), Error> {
        Ok(())
    }
    fn observed(&mut self) -> Result<BTreeSet<IpAddr>, Error> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn enrol(&mut self, pods: &[EnrolledPod]) -> Vec<Result<(), Error>> {
        self.0
            .lock()
            .unwrap()
            .extend(pods.iter().flat_map(|p| p.ips.clone()));
        pods.iter().map(|_| Ok(())).collect()
    }
    fn unenrol(&mut self, pods: &[Removal]) -> Result<(), Error> {
        let mut s = self.0.lock().unwrap();
        for ip in pods.iter().flat_map(|p| &p.ips) {
            s.remove(ip);
        }
        Ok(())
    }
    fn stop(&mut self, _keep_rules: bool) -> Result<(), Error> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_enrols_from_the_watch_alone() {
    let api = Api::new();
    api.put("namespaces", "ADDED", namespace("mesh", true));
    api.put("pods", "ADDED", pod("mesh", "a", "n1", "10.0.0.1"));
    let addr = start_api(api.clone()).await;
    let src = KubeSource::start(client(addr), "n1", Duration::from_secs(10))
        .await
        .expect("synced");
    let kernel = Recorder::default();
    let agent = Agent::start(AgentConfig {
        dataplane: Box::new(kernel.clone()),
        source: Some(Box::new(src)),
        sandbox_dir: None,
        metrics: Metrics::default(),
    })
    .expect("agent");
    assert_eq!(
        *kernel.0.lock().unwrap(),
        BTreeSet::from([IpAddr::from([10, 0, 0, 1])])
    );

    let dir = std::env::temp_dir().join(format!("ambit-kube-agent-{}", std::process::id()));
    let socket = dir.join("pluginevent.sock");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(ambit_cni::agent::serve(
        agent.clone(),
        socket,
        Duration::from_secs(3600), // the watch's notifier must do the work
        Duration::from_secs(3600),
        async {
            let _ = stop_rx.await;
        },
    ));
    let wait_for = |want: BTreeSet<IpAddr>| {
        let kernel = kernel.clone();
        async move {
            for _ in 0..100 {
                if *kernel.0.lock().unwrap() == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "kernel never reached {want:?}: {:?}",
                kernel.0.lock().unwrap()
            );
        }
    };
    // The poll tick is an hour away: the first tick fires at once, then
    // only the source's notifier can drive these.
    api.put("pods", "ADDED", pod("mesh", "b", "n1", "10.0.0.2"));
    wait_for(BTreeSet::from([
        IpAddr::from([10, 0, 0, 1]),
        IpAddr::from([10, 0, 0, 2]),
    ]))
    .await;
    // Enrolled pods carry Istio's annotation, set by the agent.
    let annotated = |want: Option<&'static str>| {
        let api = api.clone();
        async move {
            for _ in 0..100 {
                if api.annotation("mesh", "a").as_deref() == want
                    && api.annotation("mesh", "b").as_deref() == want
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("annotation never became {want:?}");
        }
    };
    annotated(Some("enabled")).await;
    api.put("namespaces", "MODIFIED", namespace("mesh", false));
    wait_for(BTreeSet::new()).await;
    annotated(None).await;
    api.put("namespaces", "MODIFIED", namespace("mesh", true));
    api.put("pods", "DELETED", pod("mesh", "a", "n1", "10.0.0.1"));
    wait_for(BTreeSet::from([IpAddr::from([10, 0, 0, 2])])).await;

    let _ = stop_tx.send(());
    served.await.unwrap().unwrap();
    agent.shutdown(false).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_reads_membership_from_the_api_server() {
    use ambit_cni::kube::KubeMembership;
    use ambit_cni::membership::Membership;
    let api = Api::new();
    api.put("namespaces", "ADDED", namespace("mesh", true));
    api.put("namespaces", "ADDED", namespace("plain", false));
    api.put("pods", "ADDED", pod("mesh", "a", "n1", "10.0.0.1"));
    api.put("pods", "ADDED", pod("plain", "b", "n1", "10.0.0.2"));
    let mut opted_out = pod("mesh", "w", "n1", "10.0.0.3");
    opted_out["metadata"]["labels"] = json!({"istio.io/dataplane-mode": "none"});
    api.put("pods", "ADDED", opted_out);
    let addr = start_api(api).await;
    let dir = std::env::temp_dir().join(format!("ambit-kube-membership-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\nclusters:\n- name: t\n  cluster: {{server: 'http://{addr}'}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t}}\nusers:\n- name: t\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let m = KubeMembership::new(kubeconfig.clone());
    // The plugin is a plain process: the lookup runs its own runtime.
    let answers = tokio::task::spawn_blocking(move || {
        ["a", "b", "w", "gone"]
            .iter()
            .zip(["mesh", "plain", "mesh", "mesh"])
            .map(|(name, ns)| m.lookup(ns, name).map(|r| r.map(|r| r.wants_ambient())))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        answers,
        vec![Ok(Some(true)), Ok(Some(false)), Ok(Some(false)), Ok(None)],
        "ambient namespace, plain namespace, pod opted out, unknown pod"
    );
    // An API server that is not there: an error (the agent then decides).
    let dead = KubeMembership::new(dir.join("missing-kubeconfig"))
        .with_timeout(Duration::from_millis(500));
    let r = tokio::task::spawn_blocking(move || dead.lookup("mesh", "a"))
        .await
        .unwrap();
    assert!(r.is_err(), "{r:?}");
}
