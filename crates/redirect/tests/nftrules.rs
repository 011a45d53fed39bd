//! The nft backend's in-process writer and reader ([`RuleWrites::Netlink`])
//! against `nft` itself: the same table as `nft -f` writes (nft prints the
//! same text), each path verifying the other's table, drift found, and
//! removal exact. Needs root.

use std::net::Ipv4Addr;
use std::process::Command;

use ambit_netns::NetNs;
use ambit_redirect::profiles::{self, InpodConfig, NodeConfig, ZtunnelConfig};
use ambit_redirect::{Backend, Drift, Plan, RuleWrites, Step};

fn nft(ns: &NetNs, args: &[&str]) -> String {
    let out = ns.output(Command::new("nft").args(args)).expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn with(plan: &Plan, how: RuleWrites) -> Plan {
    let mut p = plan.clone();
    p.rule_writes = how;
    p
}

fn plans() -> Vec<Plan> {
    let mut node = NodeConfig::new(
        Ipv4Addr::new(10, 244, 0, 1),
        "veth0",
        Ipv4Addr::new(10, 244, 0, 2),
    );
    node.capture_dns = true;
    let mut v = Vec::new();
    for (dns, v6) in [(false, false), (true, true)] {
        let inpod = InpodConfig {
            capture_dns: dns,
            ipv6: v6,
            ..InpodConfig::default()
        };
        v.push(profiles::inpod(&inpod).expect("plan"));
        v.push(profiles::inpod_host_probes(&inpod).expect("plan"));
    }
    v.push(profiles::node_host(&node).expect("plan"));
    v.push(
        profiles::ztunnel_ns(&ZtunnelConfig::new(
            Ipv4Addr::new(10, 244, 0, 1),
            Ipv4Addr::new(10, 244, 0, 2),
        ))
        .expect("plan"),
    );
    v.push(profiles::sidecar(&Default::default()).expect("plan"));
    v
}

/// A fresh namespace with an up loopback. Only the packet-filter step is
/// applied: routes and ip rules are not what these tests are about.
fn scratch() -> NetNs {
    let ns = NetNs::create_anonymous().expect("netns (run as root)");
    let out = ns
        .output(Command::new("ip").args(["link", "set", "lo", "up"]))
        .expect("ip");
    assert!(out.status.success(), "ip link set lo up");
    ns
}

/// The packet-filter drift only.
fn netfilter_drift(plan: &Plan, ns: &NetNs) -> Vec<Drift> {
    plan.verify(ns, Backend::Nft)
        .expect("verify")
        .into_iter()
        .filter(|d| matches!(d, Drift::Netfilter(_)))
        .collect()
}

fn apply(plan: &Plan, ns: &NetNs) {
    plan.apply_step(ns, Backend::Nft, Step::Netfilter)
        .expect("apply");
}

#[test]
fn in_process_table_is_the_one_nft_writes() {
    for plan in plans() {
        let table = plan.netfilter.nft_table.clone();
        let (ours, theirs) = (scratch(), scratch());
        let netlink = with(&plan, RuleWrites::Netlink);
        let command = with(&plan, RuleWrites::NftCommand);
        apply(&netlink, &ours);
        apply(&netlink, &ours);
        apply(&command, &theirs);
        // nft decodes both tables to the same text: the same bytecode.
        let list = |ns: &NetNs| nft(ns, &["-s", "list", "table", "inet", &table]);
        assert_eq!(list(&ours), list(&theirs), "{}", plan.name);
        // Each reader finds the other writer's table in place.
        for ns in [&ours, &theirs] {
            for p in [&netlink, &command] {
                let drift = netfilter_drift(p, ns);
                assert!(drift.is_empty(), "{}: {drift:#?}", plan.name);
            }
        }
        netlink.remove(&ours, Backend::Nft).expect("remove");
        netlink.remove(&ours, Backend::Nft).expect("remove again");
        assert_eq!(nft(&ours, &["list", "ruleset"]).trim(), "", "{}", plan.name);
    }
}

#[test]
fn in_process_verify_finds_drift() {
    let cfg = InpodConfig {
        capture_dns: true,
        ipv6: true,
        ..InpodConfig::default()
    };
    let plan = with(&profiles::inpod(&cfg).expect("plan"), RuleWrites::Netlink);
    let t = plan.netfilter.nft_table.clone();
    let ns = scratch();
    let netfilter = |ns: &NetNs| netfilter_drift(&plan, ns);
    // Nothing applied: the missing table is drift.
    assert_eq!(netfilter(&ns).len(), 1);
    apply(&plan, &ns);
    assert!(netfilter(&ns).is_empty());
    // A rule added by hand, a rule gone, a chain gone, another policy.
    let edits: [&[&str]; 4] = [
        &["add", "rule", "inet", &t, "nat-ISTIO_OUTPUT", "accept"],
        &["flush", "chain", "inet", &t, "raw-ISTIO_PRERT"],
        &["delete", "table", "inet", &t],
        &[
            "add",
            "chain",
            "inet",
            &t,
            "nat-output",
            "{",
            "type",
            "nat",
            "hook",
            "output",
            "priority",
            "-100",
            ";",
            "policy",
            "drop",
            ";",
            "}",
        ],
    ];
    for edit in edits {
        nft(&ns, edit);
        assert_eq!(netfilter(&ns).len(), 1, "after nft {edit:?}");
        apply(&plan, &ns);
        assert!(netfilter(&ns).is_empty(), "after repairing nft {edit:?}");
    }
    // The counters' values are not drift.
    ns.run(|| {
        // To another loopback address: `oifname lo accept` counts it.
        let to = std::net::SocketAddr::from(([127, 0, 0, 2], 9));
        let _ = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_millis(200));
    })
    .expect("enter netns");
    let counted = nft(&ns, &["list", "table", "inet", &t]);
    assert!(
        counted
            .split("counter packets ")
            .skip(1)
            .any(|c| !c.starts_with("0 ")),
        "{counted}"
    );
    assert!(netfilter(&ns).is_empty());
    // Set elements are not part of the table's listing either.
    let probes = with(
        &profiles::inpod_host_probes(&cfg).expect("plan"),
        RuleWrites::Netlink,
    );
    apply(&probes, &ns);
    probes
        .add_members(
            &ns,
            Backend::Nft,
            "istio-inpod-probes-v4",
            &[ambit_redirect::ipset::IpSetEntry::new(
                "10.0.0.9".parse().expect("ip"),
                "uid".to_owned(),
            )],
        )
        .expect("add member");
    assert!(netfilter_drift(&probes, &ns).is_empty());
    probes.remove(&ns, Backend::Nft).expect("remove");
    plan.remove(&ns, Backend::Nft).expect("remove");
}
