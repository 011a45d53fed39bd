//! The real CNI chain (Debian's `bridge` + `host-local`, then our plugin,
//! installed by `cni-node install`) driving the node agent in node-level
//! mode inside a harness node. Needs root and containernetworking-plugins.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ambit_netns::NetNs;
use ambit_netns::harness::Cluster;
use ambit_redirect::profiles::{self, NodeConfig, ZtunnelConfig};
use ambit_redirect::route::{Family, Rtnl};
use ambit_redirect::{Backend, Plan};
use common::*;
use serde_json::{Value, json};

const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const PORT: u16 = 6081;

fn plans(zt_ip: Ipv4Addr) -> (NodeConfig, Plan, Plan) {
    let mut cfg = NodeConfig::new(HOST_IP, "veth0", zt_ip);
    cfg.tunnel_port = PORT;
    let host = profiles::node_host(&cfg).expect("host plan");
    let zt = profiles::ztunnel_ns(&ZtunnelConfig::new(HOST_IP, zt_ip)).expect("zt plan");
    (cfg, host, zt)
}

fn members(ns: &NetNs, plan: &Plan, cfg: &NodeConfig) -> BTreeSet<IpAddr> {
    plan.members(ns, Backend::Nft, &cfg.set_name)
        .expect("members")
        .into_iter()
        .collect()
}

fn pod_routes(ns: &NetNs) -> BTreeSet<IpAddr> {
    Rtnl::open(Some(ns))
        .expect("rtnl")
        .routes(Family::V4, 100)
        .expect("routes")
        .into_iter()
        .filter(|r| r.dev.as_deref() == Some("istioin"))
        .map(|r| r.dst.addr())
        .collect()
}

fn ips(v: &[&str]) -> BTreeSet<IpAddr> {
    v.iter().map(|s| s.parse().expect("ip")).collect()
}

fn agent_args(cluster: &Cluster, pods: &std::path::Path, keep: bool) -> Vec<String> {
    let mut v: Vec<String> = [
        "--mode",
        "node",
        "--tunnel",
        "vxlan",
        "--tunnel-port",
        "6081",
        "--ztunnel-ip",
        "10.244.0.2",
        "--host-ip",
        "10.244.0.1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.extend([
        "--netns".into(),
        format!("/run/netns/{}", cluster.node(0).name()),
        "--ztunnel-netns".into(),
        format!("/run/netns/{}", cluster.pod(0, 0).name()),
        "--pod-dir".into(),
        pods.display().to_string(),
    ]);
    if keep {
        v.push("--keep-rules".into());
    }
    v
}

#[test]
fn cni_chain_enrols_and_unenrols_pods_and_restart_reconciles() {
    let cluster = Cluster::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("cluster");
    let node = cluster.node(0);
    let zt = cluster.pod(0, 0);
    let tmp = TempDir::new("node");
    let (net_d, bin, run, pods, ipam) = (
        tmp.sub("net.d"),
        tmp.sub("bin"),
        tmp.sub("run"),
        tmp.sub("pods"),
        tmp.sub("ipam"),
    );
    // The primary network: a single-plugin .conf, as many clusters ship.
    let primary = json!({
        "cniVersion": "1.0.0",
        "name": format!("{}-net", cluster.id()),
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.244.0.128/25", "dataDir": ipam},
    });
    std::fs::write(net_d.join("10-bridge.conf"), primary.to_string()).expect("conf");
    let out = std::process::Command::new(BIN)
        .args(["install", "--cni-net-dir"])
        .arg(&net_d)
        .arg("--cni-bin-dir")
        .arg(&bin)
        .arg("--run-dir")
        .arg(&run)
        .output()
        .expect("install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(net_d.join("10-bridge.conflist")).expect("conflist"))
            .expect("json");
    assert_eq!(conflist["plugins"][1]["type"], "istio-cni");
    // The small plugin is what the runtime runs; no kubeconfig, no helper.
    assert_eq!(
        std::fs::read(bin.join("istio-cni")).expect("plugin"),
        std::fs::read(SMALL).expect("small plugin")
    );
    assert!(!bin.join("istio-cni-kube").exists());
    let cni_path = format!("{}:{SYSTEM_PLUGINS}", bin.display());

    let (cfg, host_plan, zt_plan) = plans(zt.ip());
    let mut agent = AgentProc::start(&run, &agent_args(&cluster, &pods, false));
    assert!(
        host_plan
            .verify(node.ns(), Backend::Nft)
            .expect("verify")
            .is_empty()
    );
    assert!(
        zt_plan
            .verify(zt.ns(), Backend::Nft)
            .expect("verify")
            .is_empty()
    );

    // Three pods: two in an ambient namespace, one not.
    let names = ["web-0", "web-1", "db-0"];
    let sandboxes: Vec<NamedNs> = (0..3)
        .map(|i| NamedNs::new(&format!("{}-cni{i}", cluster.id())))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let ns = if i < 2 { "shop" } else { "legacy" };
        write_record(&pods, name, ns, &format!("uid-{name}"), i < 2, &[], None);
    }
    let mut results = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let sb = Sandbox {
            container_id: format!("ctr-{i}"),
            netns: sandboxes[i].path(),
            pod: (if i < 2 { "shop" } else { "legacy" }, name),
            uid: "",
        };
        let outs = chain_add(node.ns(), &conflist, &cni_path, &sb);
        // Our plugin returns the bridge's result unchanged.
        let r: Value = serde_json::from_str(&outs[1]).expect("json");
        let bridge: Value = serde_json::from_str(&outs[0]).expect("json");
        assert_eq!(r, bridge, "prevResult passes through");
        let ip: IpAddr = r["ips"][0]["address"]
            .as_str()
            .expect("address")
            .split('/')
            .next()
            .expect("ip")
            .parse()
            .expect("ip");
        results.push((sb, r, ip));
    }
    let pod_ips: Vec<IpAddr> = results.iter().map(|r| r.2).collect();
    // The pod really is wired by the bridge plugin.
    assert!(
        sandboxes[0]
            .1
            .output(std::process::Command::new("ip").args(["-4", "addr", "show", "eth0"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&pod_ips[0].to_string()))
            .expect("ip addr")
    );
    let enrolled: BTreeSet<IpAddr> = pod_ips[..2].iter().copied().collect();
    assert_eq!(members(node.ns(), &host_plan, &cfg), enrolled);
    assert_eq!(pod_routes(node.ns()), enrolled);
    assert!(
        host_plan
            .verify(node.ns(), Backend::Nft)
            .expect("verify")
            .is_empty()
    );

    // DEL of web-0: exactly its entries go; DEL again is fine.
    let (sb0, r0, _) = &results[0];
    chain_del(node.ns(), &conflist, &cni_path, sb0, r0);
    let left: BTreeSet<IpAddr> = [pod_ips[1]].into();
    eventually("web-0 unenrolled", || {
        members(node.ns(), &host_plan, &cfg) == left
    });
    assert_eq!(pod_routes(node.ns()), left);
    chain_del(node.ns(), &conflist, &cni_path, sb0, r0);

    // Stop with --keep-rules semantics: restart the agent keeping rules.
    assert!(agent.stop(), "agent exits cleanly");
    // Without --keep-rules everything went; start again with it.
    assert!(
        !node
            .ns()
            .output(std::process::Command::new("ip").args(["link", "show", "istioin"]))
            .expect("ip")
            .status
            .success(),
        "tunnels removed at stop"
    );
    let mut agent = AgentProc::start(&run, &agent_args(&cluster, &pods, true));
    // The sandbox of web-1 was remembered across the restart.
    eventually("web-1 re-enrolled", || {
        members(node.ns(), &host_plan, &cfg) == left
    });
    assert!(agent.stop());
    assert_eq!(members(node.ns(), &host_plan, &cfg), left, "kept");

    // While the agent is down: web-1 is deleted, late-0 appears.
    std::fs::remove_file(pods.join("shop-web-1.json")).expect("rm");
    write_record(
        &pods,
        "late-0",
        "shop",
        "uid-late-0",
        true,
        &["10.244.0.250"],
        None,
    );
    let mut agent = AgentProc::start(&run, &agent_args(&cluster, &pods, false));
    let now = ips(&["10.244.0.250"]);
    assert_eq!(members(node.ns(), &host_plan, &cfg), now);
    assert_eq!(pod_routes(node.ns()), now);
    assert!(
        host_plan
            .verify(node.ns(), Backend::Nft)
            .expect("verify")
            .is_empty()
    );
    assert!(
        zt_plan
            .verify(zt.ns(), Backend::Nft)
            .expect("verify")
            .is_empty()
    );

    // A final stop removes the host half: no table, rules, links left.
    assert!(agent.stop());
    let rules = node
        .ns()
        .output(std::process::Command::new("ip").arg("rule"))
        .expect("ip rule");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains("lookup 101"), "{rules}");
    let nft = node
        .ns()
        .output(std::process::Command::new("nft").args(["list", "ruleset"]))
        .expect("nft");
    assert!(!String::from_utf8_lossy(&nft.stdout).contains("ambit-node"));
    let zt_nft = zt
        .ns()
        .output(std::process::Command::new("nft").args(["list", "ruleset"]))
        .expect("nft");
    assert!(String::from_utf8_lossy(&zt_nft.stdout).trim().is_empty());

    // The remaining sandboxes are torn down by the runtime as usual.
    for (sb, r, _) in &results[1..] {
        chain_del(node.ns(), &conflist, &cni_path, sb, r);
    }
    let out = std::process::Command::new(BIN)
        .args(["uninstall", "--cni-net-dir"])
        .arg(&net_d)
        .arg("--cni-bin-dir")
        .arg(&bin)
        .output()
        .expect("uninstall");
    assert!(out.status.success());
    assert!(net_d.join("10-bridge.conf").exists() && !net_d.join("10-bridge.conflist").exists());
    assert!(!bin.join("istio-cni").exists(), "plugin removed");
}
