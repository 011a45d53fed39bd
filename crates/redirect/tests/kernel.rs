//! The netlink layers against the real kernel, inside throwaway namespaces,
//! cross-checked with the kernel's own tools (`ipset`, `ip -j`).

use std::net::IpAddr;
use std::process::Command;

use ambit_netns::NetNs;
use ambit_redirect::Error;
use ambit_redirect::ipset::{IpSetEntry, IpSetSpec, Ipset};
use ambit_redirect::mark::Mark;
use ambit_redirect::route::{Family, IpRule, Route, Rtnl, Scope};

fn sh(ns: &NetNs, args: &[&str]) -> String {
    let out = ns
        .output(Command::new(args[0]).args(&args[1..]))
        .expect("run tool");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn ipset_lifecycle_matches_ipset_tool() {
    let ns = NetNs::create_anonymous().expect("netns");
    let mut set = Ipset::open(Some(&ns)).expect("socket");
    let spec = IpSetSpec::new("ztunnel-pods-ips", Family::V4).expect("spec");
    set.create(&spec).expect("create");
    set.create(&spec).expect("create again is a no-op");

    let entries = vec![
        IpSetEntry::new(ip("10.244.0.2"), "uid-a"),
        IpSetEntry::new(ip("10.244.0.3"), "uid-b"),
        IpSetEntry::new(ip("10.244.1.9"), "uid-c"),
    ];
    set.add(&spec, &entries).expect("add");
    set.add(&spec, &entries)
        .expect("adding present entries is fine");
    assert!(
        set.test("ztunnel-pods-ips", ip("10.244.0.3"))
            .expect("test")
    );
    assert!(
        !set.test("ztunnel-pods-ips", ip("10.244.0.4"))
            .expect("test")
    );

    let info = set.list("ztunnel-pods-ips").expect("list").expect("exists");
    assert_eq!(info.type_name, "hash:ip");
    assert!(info.comments);
    let mut got = info.entries.clone();
    got.sort_by_key(|e| e.ip);
    assert_eq!(got, entries);

    let xml = sh(&ns, &["ipset", "list", "ztunnel-pods-ips", "-o", "xml"]);
    for e in &entries {
        assert!(
            xml.contains(&format!(
                "<elem>{}</elem><comment>\"{}\"</comment>",
                e.ip,
                e.comment.as_deref().unwrap_or("")
            )),
            "{xml}"
        );
    }
    assert!(
        set.names()
            .expect("names")
            .contains(&"ztunnel-pods-ips".to_owned())
    );

    // Wrong family: a clear error naming the set, nothing sent.
    let err = set
        .add(&spec, &[IpSetEntry::new(ip("fd00::1"), "v6")])
        .expect_err("family");
    assert!(matches!(err, Error::FamilyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("ztunnel-pods-ips"), "{err}");

    set.del(&spec, &entries[..1]).expect("del");
    set.del(&spec, &entries[..1])
        .expect("deleting absent entries is fine");
    assert!(
        !set.test("ztunnel-pods-ips", ip("10.244.0.2"))
            .expect("test")
    );

    // Swap with a second set, then flush and destroy both.
    let other = IpSetSpec::new("ztunnel-pods-ips-new", Family::V4).expect("spec");
    set.create(&other).expect("create other");
    set.add(&other, &[IpSetEntry::new(ip("10.9.9.9"), "x")])
        .expect("add");
    set.swap("ztunnel-pods-ips", "ztunnel-pods-ips-new")
        .expect("swap");
    assert!(set.test("ztunnel-pods-ips", ip("10.9.9.9")).expect("test"));
    set.flush("ztunnel-pods-ips").expect("flush");
    assert!(
        set.list("ztunnel-pods-ips")
            .expect("list")
            .expect("exists")
            .entries
            .is_empty()
    );
    set.destroy("ztunnel-pods-ips").expect("destroy");
    set.destroy("ztunnel-pods-ips-new").expect("destroy");
    set.destroy("ztunnel-pods-ips")
        .expect("destroying a missing set is fine");
    assert_eq!(set.list("ztunnel-pods-ips").expect("list"), None);
    assert_eq!(sh(&ns, &["ipset", "list", "-n"]).trim(), "");
}

#[test]
fn ipv6_sets_and_big_batches() {
    let ns = NetNs::create_anonymous().expect("netns");
    let mut set = Ipset::open(Some(&ns)).expect("socket");
    let spec = IpSetSpec::new("v6pods", Family::V6).expect("spec");
    set.create(&spec).expect("create");
    let entries: Vec<IpSetEntry> = (0..3000u32)
        .map(|i| {
            IpSetEntry::new(
                IpAddr::from([0xfd00, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16]),
                format!("pod-{i}"),
            )
        })
        .collect();
    set.add(&spec, &entries).expect("add 3000");
    let info = set.list("v6pods").expect("list").expect("exists");
    assert_eq!(info.entries.len(), 3000);
    assert_eq!(info.family, Some(Family::V6));
    let err = set
        .add(&spec, &[IpSetEntry::new(ip("10.0.0.1"), "v4")])
        .expect_err("family");
    assert!(
        err.to_string().contains("10.0.0.1 does not fit set v6pods"),
        "{err}"
    );
    set.destroy("v6pods").expect("destroy");
}

#[test]
fn rules_are_idempotent_and_match_ip_rule() {
    let ns = NetNs::create_anonymous().expect("netns");
    let mut rt = Rtnl::open(Some(&ns)).expect("socket");
    let rules = vec![
        IpRule::goto(100, 32766)
            .expect("rule")
            .fwmark(Mark::bits(0x200)),
        IpRule::lookup(101, 101)
            .expect("rule")
            .fwmark(Mark::bits(0x100)),
        IpRule::lookup(102, 102)
            .expect("rule")
            .fwmark(Mark::bits(0x040)),
        IpRule::lookup(103, 100).expect("rule"),
        IpRule::lookup(20000, 100)
            .expect("rule")
            .fwmark(Mark::new(0x400, 0xfff).expect("mark")),
        IpRule::lookup(32764, 100)
            .expect("rule")
            .fwmark(Mark::new(0x111, 0xfff).expect("mark"))
            .family(Family::V6),
    ];
    rt.add_rules(&rules).expect("add");
    rt.add_rules(&rules).expect("add again");
    let mut have = rt.rules(Family::V4).expect("list");
    have.extend(rt.rules(Family::V6).expect("list v6"));
    for r in &rules {
        assert_eq!(have.iter().filter(|h| *h == r).count(), 1, "{r} once");
    }
    let json = sh(&ns, &["ip", "-j", "rule", "show"]);
    for want in [
        r#"{"priority":100,"src":"all","fwmark":"0x200","fwmask":"0x200","goto":32766}"#,
        r#"{"priority":101,"src":"all","fwmark":"0x100","fwmask":"0x100","table":"101"}"#,
        r#"{"priority":103,"src":"all","table":"100"}"#,
        r#"{"priority":20000,"src":"all","fwmark":"0x400","fwmask":"0xfff","table":"100"}"#,
    ] {
        assert!(json.contains(want), "{want} in {json}");
    }

    rt.del_rules(&rules).expect("del");
    rt.del_rules(&rules).expect("del again");
    let left = rt.rules(Family::V4).expect("list");
    assert!(rules.iter().all(|r| !left.contains(r)));
}

#[test]
fn routes_in_custom_tables() {
    let ns = NetNs::create_anonymous().expect("netns");
    sh(&ns, &["ip", "link", "set", "lo", "up"]);
    sh(
        &ns,
        &[
            "ip", "link", "add", "vz", "type", "veth", "peer", "name", "vh",
        ],
    );
    sh(&ns, &["ip", "addr", "add", "10.1.0.1/24", "dev", "vz"]);
    sh(&ns, &["ip", "link", "set", "vz", "up"]);
    sh(&ns, &["ip", "link", "set", "vh", "up"]);
    let mut rt = Rtnl::open(Some(&ns)).expect("socket");
    let routes = vec![
        Route::local("0.0.0.0/0".parse().expect("net"), 100).expect("route"),
        Route::new("10.1.0.9/32".parse().expect("net"), 101)
            .expect("route")
            .dev("vz")
            .scope(Scope::Link),
        Route::new("0.0.0.0/0".parse().expect("net"), 101)
            .expect("route")
            .via(ip("10.1.0.2"))
            .expect("gw")
            .dev("vz"),
        Route::new("0.0.0.0/0".parse().expect("net"), 102)
            .expect("route")
            .via(ip("192.168.200.1"))
            .expect("gw")
            .dev("vz")
            .onlink(),
        Route::new("10.244.0.7/32".parse().expect("net"), 1000)
            .expect("route")
            .via(ip("10.1.0.2"))
            .expect("gw")
            .dev("vz")
            .src(ip("10.1.0.1"))
            .expect("src"),
    ];
    rt.add_routes(&routes).expect("add");
    rt.add_routes(&routes).expect("add again");
    for r in &routes {
        let have = rt.routes(Family::V4, r.table).expect("list");
        assert!(
            have.iter()
                .any(|h| ambit_redirect::route::route_satisfies(h, r)),
            "{r} in {have:?}"
        );
    }
    let t100 = sh(&ns, &["ip", "-j", "route", "show", "table", "100"]);
    assert!(
        t100.contains(r#""type":"local","dst":"default","dev":"lo""#),
        "{t100}"
    );
    let t102 = sh(&ns, &["ip", "-j", "route", "show", "table", "102"]);
    assert!(
        t102.contains(r#""gateway":"192.168.200.1""#) && t102.contains("onlink"),
        "{t102}"
    );
    let t1000 = sh(&ns, &["ip", "-j", "route", "show", "table", "1000"]);
    assert!(t1000.contains(r#""prefsrc":"10.1.0.1""#), "{t1000}");

    let err = rt
        .add_routes(&[Route::new("0.0.0.0/0".parse().expect("net"), 103)
            .expect("r")
            .dev("nosuchdev0")])
        .expect_err("unknown dev");
    assert!(matches!(err, Error::UnknownInterface { .. }), "{err:?}");
    assert!(err.to_string().contains("nosuchdev0"), "{err}");

    // A gateway that is not reachable is refused by the kernel; the error names the route.
    let err = rt
        .add_routes(&[Route::new("0.0.0.0/0".parse().expect("net"), 104)
            .expect("r")
            .via(ip("172.31.0.1"))
            .expect("gw")
            .dev("vz")])
        .expect_err("unreachable gateway");
    assert!(
        err.to_string().contains("via 172.31.0.1 dev vz table 104"),
        "{err}"
    );

    rt.del_routes(&routes).expect("del");
    rt.del_routes(&routes).expect("del again");
    for t in [100, 101, 102, 1000] {
        assert!(
            rt.routes(Family::V4, t).expect("list").is_empty(),
            "table {t}"
        );
    }
}

#[test]
fn listing_one_table_ignores_the_others_and_missing_tables_are_empty() {
    let ns = NetNs::create_anonymous().expect("netns");
    sh(&ns, &["ip", "link", "set", "lo", "up"]);
    let mut rt = Rtnl::open(Some(&ns)).expect("socket");
    // Never used: empty, not an error, for both families.
    assert!(rt.routes(Family::V4, 4242).expect("v4").is_empty());
    assert!(rt.routes(Family::V6, 4242).expect("v6").is_empty());
    let r = Route::local("0.0.0.0/0".parse().expect("net"), 4243).expect("route");
    rt.add_routes(std::slice::from_ref(&r)).expect("add");
    sh(
        &ns,
        &[
            "ip",
            "route",
            "add",
            "local",
            "10.9.0.0/16",
            "dev",
            "lo",
            "table",
            "4244",
        ],
    );
    let got = rt.routes(Family::V4, 4243).expect("list");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].table, 4243);
}

#[test]
fn loopback_ipv6_is_seen_only_when_up_and_enabled() {
    let ns = NetNs::create_anonymous().expect("netns");
    let mut rt = Rtnl::open(Some(&ns)).expect("socket");
    // A new namespace's loopback is down: no ::1.
    assert!(!rt.loopback_has_ipv6().expect("dump"));
    sh(&ns, &["ip", "link", "set", "lo", "up"]);
    assert!(rt.loopback_has_ipv6().expect("dump"));
    // An address elsewhere does not count: only lo's ::1 does.
    sh(
        &ns,
        &[
            "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ],
    );
    sh(&ns, &["ip", "link", "set", "d0", "up"]);
    sh(
        &ns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00::1/64",
            "dev",
            "d0",
            "nodad",
        ],
    );
    sh(&ns, &["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"]);
    assert!(!rt.loopback_has_ipv6().expect("dump"));
    sh(&ns, &["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0"]);
    assert!(rt.loopback_has_ipv6().expect("dump"));
    sh(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
    assert!(!rt.loopback_has_ipv6().expect("dump"));
}
