#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use kube::api::{
    Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, WatchEvent, WatchParams,
};

use super::*;

fn routes_resource() -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

fn route(ns: &str, name: &str, weight: u32) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"rules": [{"backendRefs": [{"name": "b", "port": 80, "weight": weight}]}]}})
}

const G: &str = "gateway.networking.k8s.io";

#[tokio::test]
async fn lists_by_namespace_and_unknown_kinds_are_404() {
    let api = FakeApi::start().await.unwrap();
    api.apply(G, "v1", "httproutes", route("a", "r1", 1));
    api.apply(G, "v1", "httproutes", route("b", "r2", 1));
    let client = api.client().unwrap();
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &routes_resource());
    let list = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    assert!(list.metadata.resource_version.is_some());
    let in_a: Api<DynamicObject> = Api::namespaced_with(client.clone(), "a", &routes_resource());
    let list = in_a.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].metadata.generation, Some(1));
    let got = in_a.get("r1").await.unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("r1"));

    let mut missing = routes_resource();
    missing.plural = "grpcroutes".into();
    let grpc: Api<DynamicObject> = Api::all_with(client, &missing);
    match grpc.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test]
async fn watches_replay_and_stream_changes() {
    let api = FakeApi::start().await.unwrap();
    api.register(G, "v1", "httproutes");
    let client = api.client().unwrap();
    let routes: Api<DynamicObject> = Api::namespaced_with(client, "a", &routes_resource());
    let rv = routes
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    // Before the watch starts: replayed from the history.
    api.apply(G, "v1", "httproutes", route("a", "r", 1));
    let mut events = routes
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let next = |e: Option<Result<WatchEvent<DynamicObject>, kube::Error>>| e.unwrap().unwrap();
    assert!(
        matches!(next(events.next().await), WatchEvent::Added(o) if o.metadata.name.as_deref() == Some("r"))
    );
    // Another namespace's change is not seen; a spec change bumps the generation.
    api.apply(G, "v1", "httproutes", route("b", "other", 1));
    let stored = api.apply(G, "v1", "httproutes", route("a", "r", 5));
    assert_eq!(stored["metadata"]["generation"], 2);
    match next(events.next().await) {
        WatchEvent::Modified(o) => {
            assert_eq!(o.data["spec"]["rules"][0]["backendRefs"][0]["weight"], 5);
            assert_eq!(o.metadata.generation, Some(2));
        }
        other => panic!("{other:?}"),
    }
    assert!(api.delete(G, "v1", "httproutes", "a", "r"));
    assert!(!api.delete(G, "v1", "httproutes", "a", "r"));
    assert!(matches!(next(events.next().await), WatchEvent::Deleted(_)));
}

#[tokio::test]
async fn status_patches_merge_record_and_conflict() {
    let api = FakeApi::start().await.unwrap();
    let stored = api.apply(G, "v1", "httproutes", route("a", "r", 1));
    let routes: Api<DynamicObject> =
        Api::namespaced_with(api.client().unwrap(), "a", &routes_resource());
    let patch = json!({"status": {"parents": [{"controllerName": "x", "conditions": []}]}});
    let after = routes
        .patch_status("r", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(after.data["status"]["parents"][0]["controllerName"], "x");
    assert_eq!(after.data["spec"], stored["spec"], "the spec is untouched");
    let recorded = api.patches();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (recorded[0].namespace.as_str(), recorded[0].name.as_str()),
        ("a", "r")
    );
    assert_eq!(recorded[0].patch, patch);

    let stale = json!({"metadata": {"resourceVersion": "1"}, "status": {"parents": []}});
    match routes
        .patch_status("r", &PatchParams::default(), &Patch::Merge(&stale))
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        api.get(G, "v1", "httproutes", "a", "r").unwrap()["status"]["parents"][0]["controllerName"],
        "x"
    );
    match routes
        .patch_status("nope", &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[test]
fn merge_patch_follows_rfc_7386() {
    let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
    merge(&mut doc, &json!({"a": "z", "c": {"f": null}}));
    assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
    merge(&mut doc, &json!({"a": [1]}));
    assert_eq!(doc["a"], json!([1]));
}
