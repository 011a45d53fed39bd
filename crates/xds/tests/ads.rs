//! The delta ADS client against the server over real TCP sockets.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use ambit_xds::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, AdsClient, AdsConfig, AdsServer, Backoff,
    HandlerError, NodeIdentity, Store, Subscription, XdsResource, decode_address,
    proto::{
        discovery::{
            DeltaDiscoveryRequest, DeltaDiscoveryResponse,
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        },
        istio::{
            security::Authorization,
            workload::{Address, Service, Workload, address},
        },
    },
    to_any,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

const WORKLOADS: usize = 10_000;
const SERVICES: usize = 1_000;

fn workload(i: usize, octet: u8) -> (String, Address) {
    let uid = format!("cluster1//v1/Pod/ns{}/w{i}", i % 50);
    let w = Workload {
        uid: uid.clone(),
        name: format!("w{i}"),
        namespace: format!("ns{}", i % 50),
        addresses: vec![vec![10, (i >> 8) as u8, i as u8, octet]],
        service_account: "default".into(),
        trust_domain: "cluster.local".into(),
        tunnel_protocol: 1,
        node: "worker-1".into(),
        ..Default::default()
    };
    (
        uid,
        Address {
            r#type: Some(address::Type::Workload(w)),
        },
    )
}

fn service(i: usize) -> (String, Address) {
    let ns = format!("ns{}", i % 50);
    let hostname = format!("svc{i}.{ns}.svc.cluster.local");
    let s = Service {
        name: format!("svc{i}"),
        namespace: ns.clone(),
        hostname: hostname.clone(),
        ..Default::default()
    };
    (
        format!("{ns}/{hostname}"),
        Address {
            r#type: Some(address::Type::Service(s)),
        },
    )
}

/// What the client holds: the handler's applied state.
type Held = Arc<Mutex<HashMap<String, Address>>>;

/// A handler that refuses any workload named `reject-me`, applying nothing
/// of that response (all-or-nothing).
fn address_handler(
    held: Held,
) -> impl FnMut(Vec<XdsResource<Address>>, Vec<String>) -> Result<(), HandlerError> + Send + 'static
{
    move |updated, removed| {
        for r in &updated {
            if let Some(address::Type::Workload(w)) = &r.resource.r#type
                && w.name == "reject-me"
            {
                return Err(format!("workload {}: refused by the test handler", r.name).into());
            }
        }
        let mut held = held.lock().expect("lock");
        for name in removed {
            held.remove(&name);
        }
        for r in updated {
            held.insert(r.name, r.resource);
        }
        Ok(())
    }
}

struct RunningServer {
    server: AdsServer,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn start_server(store: Store, addr: SocketAddr) -> RunningServer {
    // The previous server on this port may still be releasing it.
    let mut tries = 0;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if tries < 50 => {
                tries += 1;
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    };
    let server = AdsServer::new(store);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(server.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let task = tokio::spawn(async move {
        task.await.expect("join").expect("serve");
    });
    RunningServer { server, stop, task }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expected(store: &Store) -> HashMap<String, Address> {
    store
        .names(ADDRESS_TYPE_URL)
        .into_iter()
        .map(|name| {
            let (_, any) = store.get(ADDRESS_TYPE_URL, &name).expect("present");
            let address = decode_address(&name, &any).expect("decodes");
            (name, address)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_update_remove_nack_and_resume_after_restart() {
    let store = Store::new();
    store.update(
        ADDRESS_TYPE_URL,
        (0..WORKLOADS)
            .map(|i| workload(i, 1))
            .chain((0..SERVICES).map(service))
            .map(|(name, a)| (name, to_any(&a))),
        [],
    );
    for i in 0..5 {
        store.insert_message(
            format!("ns{i}/allow"),
            &Authorization {
                name: "allow".into(),
                namespace: format!("ns{i}"),
                ..Default::default()
            },
        );
    }

    // A free port, so the server can be restarted on the same one.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("probe")
        .local_addr()
        .expect("addr");
    let server = start_server(store.clone(), addr).await;

    let dir = std::env::temp_dir().join(format!("ambit-xds-ads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let token = dir.join("token");
    std::fs::write(&token, "token-one\n").expect("token");

    let held: Held = Arc::default();
    let policies: Arc<Mutex<HashMap<String, Authorization>>> = Arc::default();
    let mut config = AdsConfig::new(
        format!("http://{addr}"),
        NodeIdentity::new("10.0.0.7", "ztunnel-a", "istio-system", "worker-1"),
    );
    config.token_path = Some(token.clone());
    config.cluster_id = Some("cluster1".into());
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    let policies_in = policies.clone();
    let client = AdsClient::builder(config)
        .watch::<Address, _>(Subscription::Wildcard, address_handler(held.clone()))
        .watch::<Authorization, _>(
            Subscription::Wildcard,
            move |updated: Vec<XdsResource<Authorization>>, removed: Vec<String>| {
                let mut p = policies_in.lock().expect("lock");
                for name in removed {
                    p.remove(&name);
                }
                for r in updated {
                    p.insert(r.name, r.resource);
                }
                Ok(())
            },
        )
        .build()
        .expect("client");
    let mut ready = client.ready();
    let (stop_client, client_stopped) = oneshot::channel::<()>();
    let client_task = tokio::spawn(client.run(async move {
        let _ = client_stopped.await;
    }));

    // Full push: 10,000 workloads and 1,000 services, plus policies.
    tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| *r))
        .await
        .expect("ready in time")
        .expect("ready");
    assert_eq!(held.lock().expect("lock").len(), WORKLOADS + SERVICES);
    assert_eq!(policies.lock().expect("lock").len(), 5);
    let stats = server.server.stats();
    assert_eq!(stats.stream_headers.len(), 1);
    assert_eq!(
        stats.stream_headers[0].authorization.as_deref(),
        Some("Bearer token-one")
    );
    assert_eq!(
        stats.stream_headers[0].cluster_id.as_deref(),
        Some("cluster1")
    );

    // An update propagates.
    let (uid7, new7) = workload(7, 99);
    store.insert(ADDRESS_TYPE_URL, uid7.clone(), to_any(&new7));
    eventually("update", || {
        held.lock().expect("lock").get(&uid7) == Some(&new7)
    })
    .await;

    // A removal propagates.
    let (svc3, _) = service(3);
    assert!(store.remove(ADDRESS_TYPE_URL, &svc3));
    eventually("removal", || {
        !held.lock().expect("lock").contains_key(&svc3)
    })
    .await;
    let good = held.lock().expect("lock").clone();
    assert_eq!(good.len(), WORKLOADS + SERVICES - 1);

    // A rejected resource is NACKed with the handler's text; the client
    // keeps its last good state.
    let (_, mut bad) = workload(WORKLOADS + 1, 1);
    if let Some(address::Type::Workload(w)) = &mut bad.r#type {
        w.name = "reject-me".into();
        w.uid = "bad-uid".into();
    }
    store.insert(ADDRESS_TYPE_URL, "bad-uid", to_any(&bad));
    eventually("nack", || !server.server.stats().nacks.is_empty()).await;
    let nack = server.server.stats().nacks[0].clone();
    assert_eq!(nack.type_url, ADDRESS_TYPE_URL);
    assert_eq!(nack.error, "workload bad-uid: refused by the test handler");
    assert_eq!(
        nack.node_id,
        "ztunnel~10.0.0.7~ztunnel-a.istio-system~istio-system.svc.cluster.local"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*held.lock().expect("lock"), good);

    // Kill the server; change things while it is down; restart on the
    // same port. The client resumes with what it holds and converges.
    let acks_before = server.server.stats().acks;
    assert!(acks_before >= 4, "acks {acks_before}");
    let _ = server.stop.send(());
    server.task.await.expect("server stops");
    std::fs::write(&token, "token-two\n").expect("token");
    let (uid8, new8) = workload(8, 77);
    store.insert(ADDRESS_TYPE_URL, uid8.clone(), to_any(&new8));
    let (uid9, _) = workload(9, 1);
    store.remove(ADDRESS_TYPE_URL, &uid9);
    store.remove(ADDRESS_TYPE_URL, "bad-uid");

    let restarted = start_server(store.clone(), addr).await;
    let want = expected(&store);
    eventually("converge after restart", || {
        *held.lock().expect("lock") == want
    })
    .await;
    assert_eq!(policies.lock().expect("lock").len(), 5);

    let stats = restarted.server.stats();
    let resume = stats
        .resumes
        .iter()
        .find(|r| r.type_url == ADDRESS_TYPE_URL)
        .expect("address resumed with initial_resource_versions");
    assert_eq!(resume.initial_resource_versions.len(), good.len());
    assert_eq!(
        resume.initial_resource_versions.get(&uid7),
        store.get(ADDRESS_TYPE_URL, &uid7).map(|(v, _)| v).as_ref()
    );
    assert!(
        stats
            .resumes
            .iter()
            .any(|r| r.type_url == AUTHORIZATION_TYPE_URL
                && r.initial_resource_versions.len() == 5)
    );
    // Only the difference travelled: one update, one removal.
    assert_eq!(stats.resources_sent, 1, "{stats:?}");
    assert_eq!(stats.removals_sent, 1);
    assert_eq!(
        stats.stream_headers[0].authorization.as_deref(),
        Some("Bearer token-two"),
        "the token file is read again on reconnect"
    );

    let _ = stop_client.send(());
    client_task.await.expect("client stops");
    let _ = restarted.stop.send(());
    restarted.task.await.expect("stops");
    let _ = std::fs::remove_dir_all(dir);
}

/// Drives the server with a raw delta stream to check named subscriptions.
#[tokio::test]
async fn named_subscribe_and_unsubscribe() {
    let store = Store::new();
    for name in ["a", "b", "c"] {
        let (_, w) = workload(name.len(), name.as_bytes()[0]);
        store.insert(ADDRESS_TYPE_URL, name, to_any(&w));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = AdsServer::new(store.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.clone().serve(listener, async move {
        let _ = stopped.await;
    }));

    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: vec!["a".into(), "b".into()],
        ..Default::default()
    })
    .expect("send");
    let mut inbound = client
        .delta_aggregated_resources(outbound)
        .await
        .expect("stream")
        .into_inner();
    let mut next = async || -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open")
    };
    let names = |r: &DeltaDiscoveryResponse| {
        let mut n: Vec<_> = r.resources.iter().map(|r| r.name.clone()).collect();
        n.sort();
        n
    };
    let first = next().await;
    assert_eq!(names(&first), ["a", "b"]);
    let ack = |nonce: &str| DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    tx.send(ack(&first.nonce)).expect("ack");

    // Unsubscribe a, subscribe c: c arrives; a change to a is not pushed.
    tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: vec!["c".into()],
        resource_names_unsubscribe: vec!["a".into()],
        ..Default::default()
    })
    .expect("send");
    let second = next().await;
    assert_eq!(names(&second), ["c"]);
    assert!(second.removed_resources.is_empty());
    tx.send(ack(&second.nonce)).expect("ack");
    store.insert(ADDRESS_TYPE_URL, "a", to_any(&workload(50, 50).1));
    store.insert(ADDRESS_TYPE_URL, "b", to_any(&workload(51, 51).1));
    let third = next().await;
    assert_eq!(names(&third), ["b"], "a is no longer subscribed");
    store.remove(ADDRESS_TYPE_URL, "c");
    let fourth = next().await;
    assert_eq!(fourth.removed_resources, ["c"]);
    assert_eq!(server.stats().acks, 2);

    drop(tx);
    let _ = stop.send(());
    task.await.expect("join").expect("serve");
}
