//! The harness leaves nothing behind, including when a test panics mid-way.
//! One test in its own binary, so nothing else runs beside it.

use std::process::Command;

use ambit_netns::NetNs;
use ambit_netns::harness::Cluster;

fn host_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

fn netns_list() -> Vec<String> {
    NetNs::list_named().expect("list netns")
}

#[test]
fn nothing_leaks_even_after_a_panic() {
    let (ns_before, links_before) = (netns_list(), host_links());

    let built = {
        let cluster = Cluster::builder()
            .nodes(3)
            .pods_per_node(2)
            .build()
            .expect("cluster");
        let names = cluster.netns_names();
        assert_eq!(names.len(), 1 + 3 + 6);
        for n in &names {
            assert!(netns_list().contains(n), "{n} missing while cluster lives");
        }
        names
    };

    let panicked = std::thread::spawn(|| {
        let cluster = Cluster::builder()
            .nodes(2)
            .pods_per_node(1)
            .build()
            .expect("cluster");
        let names = cluster.netns_names();
        std::panic::panic_any(names);
    })
    .join()
    .expect_err("the thread panics");
    let names_in_panic = panicked.downcast::<Vec<String>>().expect("names payload");

    let ns_after = netns_list();
    for n in built.iter().chain(names_in_panic.iter()) {
        assert!(!ns_after.contains(n), "{n} leaked");
    }
    assert_eq!(ns_before, ns_after, "ip netns list changed");
    assert_eq!(links_before, host_links(), "host links changed");
}
