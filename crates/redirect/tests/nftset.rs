//! nftables set elements over nfnetlink against the real kernel, inside
//! throwaway namespaces, cross-checked with `nft -j list set`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use ambit_netns::NetNs;
use ambit_redirect::nftset::NftSets;
use ambit_redirect::nftset::codec::Element;
use ambit_redirect::{Backend, Error, SetUpdates, profiles};

fn sh(ns: &NetNs, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = match stdin {
        None => ns.output(&mut cmd).expect("run tool"),
        Some(text) => {
            cmd.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = ns.spawn_command(&mut cmd).expect("spawn");
            std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
                .expect("write");
            child.wait_with_output().expect("wait")
        }
    };
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The set as nft lists it: address → comment.
fn nft_elements(ns: &NetNs, set: &str) -> BTreeMap<IpAddr, Option<String>> {
    let out = sh(ns, &["nft", "-j", "list", "set", "inet", "T", set], None);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let mut m = BTreeMap::new();
    for item in v["nftables"].as_array().expect("array") {
        for el in item["set"]["elem"].as_array().into_iter().flatten() {
            let (val, comment) = match el.get("elem") {
                Some(e) => (&e["val"], e["comment"].as_str().map(str::to_owned)),
                None => (el, None),
            };
            m.insert(val.as_str().expect("addr").parse().expect("ip"), comment);
        }
    }
    m
}

fn el(ip: &str, comment: Option<&str>) -> Element {
    Element {
        ip: ip.parse().expect("ip"),
        comment: comment.map(str::to_owned),
    }
}

fn table(ns: &NetNs) {
    sh(
        ns,
        &["nft", "-f", "-"],
        Some(
            "add table inet T\nadd set inet T S { type ipv4_addr; }\n\
             add set inet T S6 { type ipv6_addr; }\n",
        ),
    );
}

#[test]
fn elements_add_list_delete_as_nft_sees_them() {
    let ns = NetNs::create_anonymous().expect("netns");
    table(&ns);
    let mut sets = NftSets::open(Some(&ns)).expect("socket");
    let add = [el("10.0.0.1", Some("uid-1")), el("10.0.0.2", None)];
    sets.add("T", "S", &add).expect("add");
    let want: BTreeMap<IpAddr, Option<String>> =
        add.iter().map(|e| (e.ip, e.comment.clone())).collect();
    assert_eq!(nft_elements(&ns, "S"), want);
    // Adding what is there (even with another comment) is fine and changes nothing.
    sets.add("T", "S", &[el("10.0.0.1", Some("other"))])
        .expect("add again");
    assert_eq!(nft_elements(&ns, "S"), want);
    // Our listing agrees with nft's.
    let mut listed = sets.list("T", "S").expect("list");
    listed.sort_by_key(|e| e.ip);
    assert_eq!(listed, add.to_vec());

    // Deleting a mix of present and missing elements deletes the present ones.
    sets.del(
        "T",
        "S",
        &[
            "10.0.0.9".parse().expect("ip"),
            "10.0.0.1".parse().expect("ip"),
        ],
    )
    .expect("delete with a missing element");
    assert_eq!(
        nft_elements(&ns, "S").into_keys().collect::<Vec<_>>(),
        vec!["10.0.0.2".parse::<IpAddr>().expect("ip")]
    );
    sets.del("T", "S", &["10.0.0.1".parse().expect("ip")])
        .expect("deleting only missing elements is fine");
    // Deleting from a set (or table) that is not there is nothing to do.
    sets.del("T", "nope", &["10.0.0.2".parse().expect("ip")])
        .expect("missing set");

    // IPv6.
    sets.add("T", "S6", &[el("fd00::1", Some("uid-6"))])
        .expect("add v6");
    assert_eq!(
        nft_elements(&ns, "S6"),
        BTreeMap::from([("fd00::1".parse().expect("ip"), Some("uid-6".to_owned()))])
    );
    sets.del("T", "S6", &["fd00::1".parse().expect("ip")])
        .expect("del v6");
    assert!(nft_elements(&ns, "S6").is_empty());
}

/// `read()` repeated until two results in a row agree (at most ten reads).
fn settled<T: PartialEq>(mut read: impl FnMut() -> T) -> T {
    let mut last = read();
    for _ in 0..10 {
        let next = read();
        if next == last {
            return next;
        }
        last = next;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    last
}

#[test]
fn thousands_of_elements_in_few_batches() {
    let ns = NetNs::create_anonymous().expect("netns");
    table(&ns);
    let mut sets = NftSets::open(Some(&ns)).expect("socket");
    let many: Vec<Element> = (0..5000u32)
        .map(|i| Element {
            ip: IpAddr::V4(std::net::Ipv4Addr::from(0x0a01_0000 + i)),
            comment: Some(format!("5b8f0c1e-0000-4000-8000-{i:012}")),
        })
        .collect();
    sets.add("T", "S", &many).expect("add 5000");
    // Growing the hash set to 5000 makes the kernel resize it in a worker
    // after the add returns, and a dump crossing the resize may skip
    // elements: read nft's view until two listings agree.
    assert_eq!(settled(|| nft_elements(&ns, "S").len()), 5000);
    assert_eq!(sets.list("T", "S").expect("list").len(), 5000);
    // Delete 3000 of them plus 10 that were never there.
    let gone: Vec<IpAddr> = many[..3000]
        .iter()
        .map(|e| e.ip)
        .chain((0..10u32).map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a02_0000 + i))))
        .collect();
    sets.del("T", "S", &gone).expect("delete");
    assert_eq!(settled(|| nft_elements(&ns, "S").len()), 2000);
}

#[test]
fn bad_input_changes_nothing() {
    let ns = NetNs::create_anonymous().expect("netns");
    table(&ns);
    let mut sets = NftSets::open(Some(&ns)).expect("socket");
    sets.add("T", "S", &[el("10.0.0.1", None)]).expect("add");
    // A comment too long for nft: refused before anything is sent.
    let long = "c".repeat(200);
    let e = sets
        .add(
            "T",
            "S",
            &[el("10.0.0.2", None), el("10.0.0.3", Some(&long))],
        )
        .expect_err("too long");
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    // An IPv6 address in an IPv4 set: the kernel refuses the batch, so the
    // good element in the same batch is not added either.
    let e = sets
        .add("T", "S", &[el("10.0.0.4", None), el("fd00::9", None)])
        .expect_err("family");
    assert!(e.to_string().contains("set S of table inet T"), "{e}");
    // A set that does not exist.
    let e = sets
        .add("T", "missing", &[el("10.0.0.5", None)])
        .expect_err("no set");
    assert_eq!(e.errno(), Some(2), "{e}");
    assert_eq!(
        nft_elements(&ns, "S").into_keys().collect::<Vec<_>>(),
        vec!["10.0.0.1".parse::<IpAddr>().expect("ip")]
    );
}

#[test]
fn plan_members_in_process_match_the_nft_command_path() {
    // The node plan's set, written both ways, lists the same.
    let cfg = profiles::NodeConfig::new(
        "10.244.0.1".parse().expect("ip"),
        "lo",
        "10.244.0.2".parse().expect("ip"),
    );
    let mut plan = profiles::node_host(&cfg).expect("plan");
    let entries = vec![
        ambit_redirect::ipset::IpSetEntry::new("10.244.0.7".parse().expect("ip"), "uid-7"),
        ambit_redirect::ipset::IpSetEntry::new("10.244.0.8".parse().expect("ip"), "uid-8"),
    ];
    let mut listings = Vec::new();
    for how in [SetUpdates::Netlink, SetUpdates::NftCommand] {
        let ns = NetNs::create_anonymous().expect("netns");
        plan.set_updates = how;
        plan.apply_step(&ns, Backend::Nft, ambit_redirect::Step::Netfilter)
            .expect("table");
        plan.add_members(&ns, Backend::Nft, &cfg.set_name, &entries)
            .expect("add");
        plan.add_members(&ns, Backend::Nft, &cfg.set_name, &entries)
            .expect("add again");
        let table = plan.netfilter.nft_table.clone();
        listings.push(sh(
            &ns,
            &["nft", "list", "set", "inet", &table, &cfg.set_name],
            None,
        ));
        let mut m = plan
            .members(&ns, Backend::Nft, &cfg.set_name)
            .expect("members");
        m.sort();
        assert_eq!(m, entries.iter().map(|e| e.ip).collect::<Vec<_>>());
        plan.del_members(
            &ns,
            Backend::Nft,
            &cfg.set_name,
            &[
                "10.244.0.7".parse().expect("ip"),
                "10.244.0.9".parse().expect("ip"),
            ],
        )
        .expect("del");
        let m = plan
            .members(&ns, Backend::Nft, &cfg.set_name)
            .expect("members");
        assert_eq!(m, vec!["10.244.0.8".parse::<IpAddr>().expect("ip")]);
    }
    assert_eq!(listings[0], listings[1]);
}
