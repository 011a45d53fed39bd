//! Enrolment and apply figures, each against a baseline measured in the
//! same run (run as root): `cargo bench -p ambit-redirect --bench enrol`.
//!
//! - enrol N pod IPs into a `hash:ip` set through this crate (batched
//!   netlink) vs one `ipset add` process per pod, and vs `ipset restore`;
//! - enrol N pods into the node plan's nft set (nft backend): in process
//!   over nfnetlink vs one `nft -f -` process per pod ([`SetUpdates`]);
//! - in-pod mode's per-pod work: verify then apply the in-pod plan in a
//!   fresh pod namespace (what the agent does for a new pod), and apply alone;
//! - the whole node-level host plan through each backend vs
//!   `iptables-restore` of the same rules.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_netns::NetNs;
use ambit_redirect::ipset::{IpSetEntry, IpSetSpec, Ipset};
use ambit_redirect::profiles::{self, NodeConfig};
use ambit_redirect::route::Family;
use ambit_redirect::{Backend, Plan, SetUpdates, Step};

fn pods(n: usize) -> Vec<IpSetEntry> {
    (0..n)
        .map(|i| {
            IpSetEntry::new(
                IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + i as u32)),
                format!("pod-uid-{i:08}"),
            )
        })
        .collect()
}

fn run(ns: &NetNs, args: &[&str], stdin: Option<&str>) {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = ns.spawn_command(&mut cmd).expect("spawn");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).expect("stdin");
    }
    drop(child.stdin.take());
    assert!(child.wait().expect("wait").success(), "{args:?}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn per_pod(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let ns = NetNs::create_anonymous().expect("netns (run as root)");
    let spec = IpSetSpec::new("bench-pods", Family::V4).expect("spec");
    let mut set = Ipset::open(Some(&ns)).expect("ipset socket");

    println!("enrol N pod IPs (hash:ip with comments), median of rounds, same run:");
    println!(
        "{:>6} {:>14} {:>14} {:>14} {:>10} {:>10}",
        "N", "crate", "ipset/pod", "ipset restore", "x/pod", "x restore"
    );
    for n in [1usize, 100, 10_000] {
        let entries = pods(n);
        let rounds = if n == 10_000 { 3 } else { 5 };
        let mut ours = Vec::new();
        let mut cli = Vec::new();
        let mut restore = Vec::new();
        for _ in 0..rounds {
            set.create(&spec).expect("create");
            let t = Instant::now();
            set.add(&spec, &entries).expect("add");
            ours.push(t.elapsed());
            set.destroy("bench-pods").expect("destroy");

            run(
                &ns,
                &["ipset", "create", "bench-pods", "hash:ip", "comment"],
                None,
            );
            let t = Instant::now();
            for e in &entries {
                let ip = e.ip.to_string();
                let c = e.comment.clone().unwrap_or_default();
                run(
                    &ns,
                    &["ipset", "add", "bench-pods", &ip, "comment", &c],
                    None,
                );
            }
            cli.push(t.elapsed());
            run(&ns, &["ipset", "destroy", "bench-pods"], None);

            let script: String = std::iter::once("create bench-pods hash:ip comment\n".to_owned())
                .chain(entries.iter().map(|e| {
                    format!(
                        "add bench-pods {} comment {}\n",
                        e.ip,
                        e.comment.as_deref().unwrap_or("")
                    )
                }))
                .collect();
            let t = Instant::now();
            run(&ns, &["ipset", "restore"], Some(&script));
            restore.push(t.elapsed());
            run(&ns, &["ipset", "destroy", "bench-pods"], None);
        }
        let (o, c, r) = (median(ours), median(cli), median(restore));
        println!(
            "{n:>6} {:>11.2} ms {:>11.2} ms {:>11.2} ms {:>9.1}x {:>9.1}x",
            o.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            per_pod(c, n) / per_pod(o, n),
            r.as_secs_f64() / o.as_secs_f64(),
        );
    }

    let cfg = NodeConfig::new(
        Ipv4Addr::new(10, 244, 0, 1),
        "veth0",
        Ipv4Addr::new(10, 244, 0, 2),
    );
    let mut plan = profiles::node_host(&cfg).expect("plan");
    nft_set_rows(&mut plan, &cfg.set_name);
    inpod_rows();

    println!("\nnode-level host plan (rules, sets, routes, ip rules), median of 5:");
    let (node, _keep) = node_ns();
    let text = plan
        .netfilter
        .iptables_restore(Family::V4, &[])
        .expect("render");
    let mut rows = Vec::new();
    // Only the nftnl build adds a case.
    #[cfg_attr(not(feature = "nftnl"), allow(unused_mut))]
    let mut cases = vec![
        ("iptables-restore (rules only)", None),
        ("crate, nft backend", Some(Backend::Nft)),
        ("crate, iptables backend", Some(Backend::Iptables)),
    ];
    #[cfg(feature = "nftnl")]
    cases.push(("crate, nftnl backend", Some(Backend::Nftnl)));
    for (name, backend) in cases {
        let mut v = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            match backend {
                Some(b) => plan.apply(&node, b).expect("apply"),
                None => {
                    run(
                        &node,
                        &[
                            "ipset",
                            "create",
                            "-exist",
                            "ztunnel-pods-ips",
                            "hash:ip",
                            "comment",
                        ],
                        None,
                    );
                    run(&node, &["iptables-restore", "--noflush"], Some(&text));
                }
            }
            v.push(t.elapsed());
            match backend {
                Some(b) => plan.remove(&node, b).expect("remove"),
                None => remove_xt(&node, &plan),
            }
        }
        rows.push((name, median(v)));
    }
    let base = rows[0].1;
    for (name, d) in rows {
        println!(
            "  {name:<32} {:>8.2} ms  ({:.2}x iptables-restore)",
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() / base.as_secs_f64()
        );
    }
}

/// A namespace with the interfaces the node plan routes through.
fn node_ns() -> (NetNs, ()) {
    let ns = NetNs::create_anonymous().expect("netns");
    for cmd in [
        "ip link set lo up",
        "ip link add veth0 type veth peer name eth0",
        "ip link set veth0 up",
        "ip link set eth0 up",
        "ip addr add 10.244.0.1/32 dev veth0",
        "ip link add istioin type vxlan id 1000 remote 10.244.0.2 dstport 6081",
        "ip link add istioout type vxlan id 1001 remote 10.244.0.2 dstport 6081",
        "ip addr add 192.168.126.1/30 dev istioin",
        "ip addr add 192.168.127.1/30 dev istioout",
        "ip link set istioin up",
        "ip link set istioout up",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        run(&ns, &args, None);
    }
    (ns, ())
}

fn remove_xt(ns: &NetNs, plan: &Plan) {
    plan.remove(ns, Backend::Iptables).expect("remove");
}

/// Enrols pods into the node plan's nft set one call per pod (as
/// sequential ADDs do) and all in one call, both ways.
fn nft_set_rows(plan: &mut Plan, set: &str) {
    println!("\nnft set of the node plan (nft backend), median of 3, same run:");
    println!(
        "{:>6} {:>10} {:>16} {:>16} {:>9}",
        "N", "calls", "nft -f (base)", "nfnetlink", "speedup"
    );
    for (n, one_call) in [(1usize, false), (100, false), (1000, true), (10_000, true)] {
        let entries = pods(n);
        let mut t_of = |how: SetUpdates| {
            plan.set_updates = how;
            let mut v = Vec::new();
            for _ in 0..3 {
                let ns = NetNs::create_anonymous().expect("netns");
                plan.apply_step(&ns, Backend::Nft, Step::Netfilter)
                    .expect("table");
                let t = Instant::now();
                if one_call {
                    plan.add_members(&ns, Backend::Nft, set, &entries)
                        .expect("add");
                } else {
                    for e in &entries {
                        plan.add_members(&ns, Backend::Nft, set, std::slice::from_ref(e))
                            .expect("add");
                    }
                }
                v.push(t.elapsed());
            }
            median(v)
        };
        let (old, new) = (t_of(SetUpdates::NftCommand), t_of(SetUpdates::Netlink));
        println!(
            "{n:>6} {:>10} {:>13.2} ms {:>13.2} ms {:>8.1}x",
            if one_call { "1" } else { "1 per pod" },
            old.as_secs_f64() * 1e3,
            new.as_secs_f64() * 1e3,
            old.as_secs_f64() / new.as_secs_f64()
        );
    }
    plan.set_updates = SetUpdates::default();
}

/// In-pod mode's per-pod kernel work, nft backend.
fn inpod_rows() {
    println!("\nin-pod plan in a fresh pod namespace (nft backend), median of 10:");
    let plan = profiles::inpod(&profiles::InpodConfig::default()).expect("plan");
    let (mut both, mut apply) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let pod = NetNs::create_anonymous().expect("netns");
        run(&pod, &["ip", "link", "set", "lo", "up"], None);
        let t = Instant::now();
        let drift = plan.verify(&pod, Backend::Nft).expect("verify");
        assert!(!drift.is_empty());
        plan.apply(&pod, Backend::Nft).expect("apply");
        both.push(t.elapsed());
        let pod = NetNs::create_anonymous().expect("netns");
        run(&pod, &["ip", "link", "set", "lo", "up"], None);
        let t = Instant::now();
        plan.apply(&pod, Backend::Nft).expect("apply");
        apply.push(t.elapsed());
    }
    println!(
        "  verify + apply (the agent, new pod) {:>8.2} ms",
        median(both).as_secs_f64() * 1e3
    );
    println!(
        "  apply alone                         {:>8.2} ms",
        median(apply).as_secs_f64() * 1e3
    );
}
