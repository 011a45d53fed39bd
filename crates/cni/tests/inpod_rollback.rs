//! In-pod enrolment is per pod: a pod whose enrolment fails after its
//! rules went in is rolled back, and pods enrolled before are untouched;
//! a namespace that is not the one recorded for the pod is refused. Real
//! namespaces and nftables; needs root.
#![cfg(feature = "inpod")]

use std::process::Command;

use ambit_cni::inpod::{InpodDataplane, InpodSettings};
use ambit_cni::{Dataplane, NetnsId};
use ambit_netns::NetNs;
use ambit_redirect::Backend;
use ambit_redirect::profiles::{self, InpodConfig};

mod support;

use support::{Cleanup, pod};

fn ruleset(ns: &NetNs) -> String {
    let out = ns
        .output(Command::new("nft").args(["list", "ruleset"]))
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn failed_pod_is_rolled_back_others_stay_enrolled() {
    let id = std::process::id();
    let names: Vec<String> = ["host", "a", "b"]
        .iter()
        .map(|n| format!("ambit-rb-{id}-{n}"))
        .collect();
    let dir = std::env::temp_dir().join(format!("ambit-rb-{id}"));
    let _cleanup = Cleanup(names.clone(), dir.clone());
    std::fs::create_dir_all(&dir).expect("mkdir");
    let host = NetNs::create_named(&names[0]).expect("host ns");
    let a_ns = NetNs::create_named(&names[1]).expect("pod a ns");
    let b_ns = NetNs::create_named(&names[2]).expect("pod b ns");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut dp = InpodDataplane::new(InpodSettings {
        host: host.try_clone().expect("clone"),
        backend: Backend::Nft,
        config: InpodConfig::default(),
        zds_socket: dir.join("zds.sock"),
        runtime: rt.handle().clone(),
        rule_writes: Default::default(),
    })
    .expect("data plane");
    dp.start().expect("start");
    let plan = profiles::inpod(&InpodConfig::default()).expect("plan");

    let a = pod("a", &names[1], &["10.78.0.1"], None);
    let results = dp.enrol(std::slice::from_ref(&a));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(plan.verify(&a_ns, Backend::Nft).expect("verify").is_empty());

    // The host's probe set disappears behind the agent's back: b's rules
    // go in, then adding its address fails — b is rolled back, a stays.
    let out = host
        .output(Command::new("nft").args(["flush", "ruleset"]))
        .expect("nft");
    assert!(out.status.success());
    let b = pod("b", &names[2], &["10.78.0.2"], None);
    let results = dp.enrol(std::slice::from_ref(&b));
    assert_eq!(results.len(), 1);
    let err = results[0].as_ref().expect_err("b cannot be enrolled");
    assert!(err.to_string().contains("shop/b"), "{err}");
    assert_eq!(ruleset(&b_ns), "", "b's rules rolled back");
    assert!(
        plan.verify(&a_ns, Backend::Nft).expect("verify").is_empty(),
        "a is untouched"
    );

    // A namespace that is not the one recorded for the pod is refused
    // before anything is applied in it.
    let mut wrong = pod("b", &names[2], &["10.78.0.2"], None);
    wrong.netns_id = Some(NetnsId { dev: 0, ino: 1 });
    let results = dp.enrol(std::slice::from_ref(&wrong));
    let err = results[0].as_ref().expect_err("identity mismatch");
    assert!(
        err.to_string().contains("another network namespace"),
        "{err}"
    );
    assert_eq!(ruleset(&b_ns), "");
    let _ = dp.stop(false);
}
