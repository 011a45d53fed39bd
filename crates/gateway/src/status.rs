//! Route status as the Gateway API shapes it: `status.parents[]` entries
//! (`parentRef`, `controllerName`, `conditions`) written with a JSON merge
//! patch on the route's `/status` subresource.
//!
//! The entries carry this waypoint's own controller name,
//! [`CONTROLLER_NAME`] (`ambit.dev/waypoint`), not Istio's: istiod's
//! gateway controller already writes status for routes attached to
//! waypoints (the `istio-waypoint` class is `istio.io/mesh-controller`),
//! and two writers of one `(parentRef, controllerName)` entry would
//! overwrite each other on every reconcile. With distinct names both
//! entries coexist, as the spec intends for several controllers.
//!
//! A merge patch replaces a list whole, so the patch carries the current
//! list with only this controller's entries replaced, plus the object's
//! `metadata.resourceVersion`: if another controller wrote in between,
//! the API server answers 409 and the next round retries from the fresh
//! object. Nothing is sent when this controller's entries would not
//! change; a condition's `lastTransitionTime` moves only when its status
//! does.

use serde_json::{Value, json};

use crate::translate::ParentStatus;

/// The controller name of this waypoint's status entries.
pub const CONTROLLER_NAME: &str = "ambit.dev/waypoint";

/// The merge patch that makes `current` (the route's `status` as the API
/// server holds it) carry `parents` as `controller`'s entries, or `None`
/// when it already does. `now` is an RFC 3339 time for new transitions.
pub fn route_patch(
    current: &Value,
    resource_version: Option<&str>,
    controller: &str,
    parents: &[ParentStatus],
    generation: i64,
    now: &str,
) -> Option<Value> {
    let existing: Vec<Value> = current
        .get("parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (ours, others): (Vec<Value>, Vec<Value>) = existing
        .into_iter()
        .partition(|e| e.get("controllerName").and_then(Value::as_str) == Some(controller));
    let fresh: Vec<Value> = parents
        .iter()
        .map(|p| entry(p, &ours, controller, generation, now))
        .collect();
    if same(&ours, &fresh) {
        return None;
    }
    let mut list = others;
    list.extend(fresh);
    let mut patch = json!({"status": {"parents": list}});
    if let Some(rv) = resource_version {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    Some(patch)
}

/// One parent's entry, keeping the transition time of conditions whose
/// status did not change.
fn entry(p: &ParentStatus, ours: &[Value], controller: &str, generation: i64, now: &str) -> Value {
    let parent_ref = serde_json::to_value(&p.parent_ref).unwrap_or(Value::Null);
    let previous = ours
        .iter()
        .find(|e| e.get("parentRef") == Some(&parent_ref));
    let conditions: Vec<Value> = p
        .conditions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let since = previous
                .and_then(|e| e.get("conditions")?.as_array())
                .and_then(|cs| {
                    cs.iter().find(|old| {
                        old.get("type").and_then(Value::as_str) == Some(c.type_.as_str())
                            && old.get("status").and_then(Value::as_str) == Some(status)
                    })
                })
                .and_then(|old| old.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| json!(now));
            json!({
                "type": c.type_,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation,
                "lastTransitionTime": since,
            })
        })
        .collect();
    json!({"parentRef": parent_ref, "controllerName": controller, "conditions": conditions})
}

/// Equal as sets of entries (the API server may reorder nothing, but a
/// human may have).
fn same(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// Now, to the second, as RFC 3339.
pub fn now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ParentRef;
    use crate::translate::Condition;

    fn parent(resolved: bool) -> ParentStatus {
        ParentStatus {
            parent_ref: ParentRef {
                group: Some(String::new()),
                kind: Some("Service".into()),
                name: "reviews".into(),
                ..ParentRef::default()
            },
            conditions: vec![
                Condition {
                    type_: "Accepted".into(),
                    status: true,
                    reason: "Accepted".into(),
                    message: "ok".into(),
                },
                Condition {
                    type_: "ResolvedRefs".into(),
                    status: resolved,
                    reason: if resolved {
                        "ResolvedRefs"
                    } else {
                        "BackendNotFound"
                    }
                    .into(),
                    message: "m".into(),
                },
            ],
        }
    }

    #[test]
    fn keeps_other_controllers_and_sends_only_changes() {
        let istio = json!({"parentRef": {"name": "reviews"}, "controllerName": "istio.io/mesh-controller", "conditions": []});
        let current = json!({"parents": [istio]});
        let p = route_patch(
            &current,
            Some("7"),
            CONTROLLER_NAME,
            &[parent(true)],
            3,
            "T1",
        )
        .expect("first write");
        assert_eq!(p["metadata"]["resourceVersion"], "7");
        let list = p["status"]["parents"].as_array().expect("list");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0], istio);
        assert_eq!(list[1]["controllerName"], CONTROLLER_NAME);
        assert_eq!(list[1]["conditions"][1]["observedGeneration"], 3);
        assert_eq!(
            list[1]["parentRef"],
            json!({"group": "", "kind": "Service", "name": "reviews"})
        );

        // Applied: nothing more to send, even at a later time.
        let applied = p["status"].clone();
        assert!(
            route_patch(
                &applied,
                Some("8"),
                CONTROLLER_NAME,
                &[parent(true)],
                3,
                "T2"
            )
            .is_none()
        );

        // ResolvedRefs flips: only its transition time moves.
        let p = route_patch(&applied, None, CONTROLLER_NAME, &[parent(false)], 4, "T3")
            .expect("change");
        let ours = &p["status"]["parents"][1]["conditions"];
        assert_eq!(ours[0]["lastTransitionTime"], "T1");
        assert_eq!(ours[1]["lastTransitionTime"], "T3");
        assert_eq!(ours[1]["reason"], "BackendNotFound");
        assert!(p.get("metadata").is_none());

        // No parents left: our entries are removed, istio's stay.
        let p = route_patch(&applied, None, CONTROLLER_NAME, &[], 4, "T4").expect("cleanup");
        assert_eq!(p["status"]["parents"], json!([istio]));
        assert!(route_patch(&json!({}), None, CONTROLLER_NAME, &[], 1, "T").is_none());
        assert!(now().ends_with('Z'));
    }
}
