//! In-pod mode: the agent installs the in-pod rules in each pod and hands
//! the pod's netns to a test ZDS client (ztunnel's side from ambit-xds),
//! which opens a listener inside it; a reconnecting client receives the
//! full snapshot again. Needs root.

mod common;

use std::time::Duration;

use ambit_netns::NetNs;
use ambit_netns::harness::Cluster;
use ambit_redirect::Backend;
use ambit_redirect::profiles::{self, InpodConfig};
use ambit_xds::{ZdsClient, ZdsMessage};
use common::*;

/// Receives until `SnapshotSent`, acking each; returns the adds' uids and
/// checks a listener can be opened in every received netns.
async fn snapshot(client: &mut ZdsClient) -> Vec<String> {
    let mut uids = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), client.recv())
            .await
            .expect("zds message in time")
            .expect("recv")
            .expect("open")
            .expect("valid");
        match msg {
            ZdsMessage::Add { uid, netns, .. } => {
                let ns = NetNs::from_fd(netns, uid.clone()).expect("netns from fd");
                let l = ns
                    .tcp_listener(([127, 0, 0, 1], 15001).into())
                    .expect("listener inside the pod");
                drop(l);
                uids.push(uid);
            }
            ZdsMessage::SnapshotSent => {
                client.ack(None).await.expect("ack");
                uids.sort();
                return uids;
            }
            other => panic!("unexpected {}", other.describe()),
        }
        client.ack(None).await.expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_ztunnel_over_zds_and_reconnects_get_the_snapshot() {
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(2)
        .build()
        .expect("cluster");
    let tmp = TempDir::new("inpod");
    let (run, pods) = (tmp.sub("run"), tmp.sub("pods"));
    let zds = tmp.0.join("ztunnel.sock");
    for j in 0..2 {
        let p = cluster.pod(0, j);
        let netns = format!("/run/netns/{}", p.name());
        write_record(
            &pods,
            &format!("app-{j}"),
            "shop",
            &format!("uid-{j}"),
            true,
            &[&p.ip().to_string()],
            Some(&netns),
        );
    }
    let args: Vec<String> = vec![
        "--mode".into(),
        "inpod".into(),
        "--netns".into(),
        format!("/run/netns/{}", cluster.node(0).name()),
        "--pod-dir".into(),
        pods.display().to_string(),
        "--zds-socket".into(),
        zds.display().to_string(),
    ];
    let mut agent = AgentProc::start(&run, &args);

    // Both pods carry the in-pod rules; the host has the probe rule and set.
    // The agent captures IPv6 by default (AMBIENT_IPV6), and the harness
    // namespaces have it.
    let cfg = InpodConfig {
        ipv6: true,
        ..InpodConfig::default()
    };
    let pod_plan = profiles::inpod(&cfg).expect("plan");
    let host_plan = profiles::inpod_host_probes(&cfg).expect("plan");
    for j in 0..2 {
        let drift = pod_plan
            .verify(cluster.pod(0, j).ns(), Backend::Nft)
            .expect("verify");
        assert!(drift.is_empty(), "{drift:?}");
    }
    assert!(
        host_plan
            .verify(cluster.node(0).ns(), Backend::Nft)
            .expect("verify")
            .is_empty()
    );
    let probes = host_plan
        .members(cluster.node(0).ns(), Backend::Nft, "istio-inpod-probes-v4")
        .expect("members");
    assert_eq!(probes.len(), 2);

    // ztunnel connects (late: the pods were enrolled before) and gets both.
    let mut client = ZdsClient::connect(&zds).await.expect("connect");
    assert_eq!(snapshot(&mut client).await, ["uid-0", "uid-1"]);

    // ztunnel restarts: the new connection gets the full snapshot again.
    drop(client);
    let mut client = ZdsClient::connect(&zds).await.expect("reconnect");
    assert_eq!(snapshot(&mut client).await, ["uid-0", "uid-1"]);

    // A pod leaving the source is deleted over ZDS and from the probe set.
    std::fs::remove_file(pods.join("shop-app-1.json")).expect("rm");
    let msg = tokio::time::timeout(Duration::from_secs(15), client.recv())
        .await
        .expect("in time")
        .expect("recv")
        .expect("open")
        .expect("valid");
    assert!(
        matches!(&msg, ZdsMessage::Del { uid } if uid == "uid-1"),
        "{}",
        msg.describe()
    );
    client.ack(None).await.expect("ack");
    let only_app0 = vec![std::net::IpAddr::V4(cluster.pod(0, 0).ip())];
    eventually("app-1 out of the probe set", || {
        host_plan
            .members(cluster.node(0).ns(), Backend::Nft, "istio-inpod-probes-v4")
            .expect("members")
            == only_app0
    });
    assert!(
        !pod_plan
            .verify(cluster.pod(0, 1).ns(), Backend::Nft)
            .expect("verify")
            .is_empty(),
        "rules removed from the unenrolled pod"
    );
    assert!(
        pod_plan
            .verify(cluster.pod(0, 0).ns(), Backend::Nft)
            .expect("verify")
            .is_empty()
    );

    assert!(agent.stop());
    let nft = cluster
        .node(0)
        .ns()
        .output(std::process::Command::new("nft").args(["list", "ruleset"]))
        .expect("nft");
    assert!(
        String::from_utf8_lossy(&nft.stdout).trim().is_empty(),
        "host half removed"
    );
}
