//! The eBPF capture backend with real sockets in a harness cluster: the
//! in-pod capture cases of `capture.rs`, carried out by cgroup hooks and
//! sk_lookup instead of netfilter.
//!
//! The programs attach to the root cgroup v2 and act only on enrolled
//! namespaces, so other tests running at the same time are untouched. Each
//! test mounts its own bpf filesystem on a temporary directory and takes
//! everything away at the end, pass or fail.
#![cfg(feature = "ebpf")]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV6, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_netns::harness::Cluster;
use ambit_redirect::Backend;
use ambit_redirect::ebpf::{self, EbpfCapture, EbpfConfig};
use ambit_redirect::profiles::{self, InpodConfig};
use socket2::{Domain, Protocol, Type};

mod common;
use common::{
    dual_listener, marked_connect, nothing_on, original_dst4 as original_dst, original_dst6,
    ztunnel_listeners,
};

/// The accepted stream alone.
fn accept(l: &TcpListener) -> TcpStream {
    common::accept(l).0
}

const SERVER_PORT: u16 = 8080;

/// A private bpf filesystem, unmounted and removed on drop.
struct BpfFs {
    root: PathBuf,
}

impl BpfFs {
    fn new(tag: &str) -> Self {
        Self::sweep_dead();
        let root = std::env::temp_dir().join(format!("ambit-bpffs-{}-{tag}", std::process::id()));
        ebpf::ensure_bpffs(&root).expect("mount a bpf filesystem");
        Self { root }
    }

    fn pin_dir(&self) -> PathBuf {
        self.root.join("ambit")
    }

    /// Removes the filesystems of test processes that were killed before
    /// their `Drop` ran (their programs stay attached to the root cgroup
    /// until the pins go, and would run on every socket of the machine).
    fn sweep_dead() {
        let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("ambit-bpffs-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let stale = BpfFs { root: e.path() };
            eprintln!("removing {} (process {pid} is gone)", stale.root.display());
            drop(stale);
        }
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = ebpf::remove(&self.pin_dir());
        let _ = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// Whether this kernel can run the programs; prints why not.
fn supported() -> bool {
    match ebpf::supported() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipping: eBPF capture is not available here: {why}");
            false
        }
    }
}

/// A bpf filesystem and a cluster of `nodes` × `pods`, or `None` (with
/// the reason printed) where eBPF capture is not available.
fn setup(tag: &str, nodes: usize, pods: usize, ipv6: bool) -> Option<(BpfFs, Cluster)> {
    if !supported() {
        return None;
    }
    let fs = BpfFs::new(tag);
    let cluster = Cluster::builder()
        .nodes(nodes)
        .pods_per_node(pods)
        .ipv6(ipv6)
        .build()
        .expect("cluster");
    Some((fs, cluster))
}

/// Drops the capture and removes its pins; nothing may be left.
fn teardown(cap: EbpfCapture, fs: &BpfFs) {
    drop(cap);
    ebpf::remove(&fs.pin_dir()).expect("remove");
    ebpf::remove(&fs.pin_dir()).expect("remove again");
    assert!(!fs.pin_dir().exists());
}

fn config(fs: &BpfFs) -> EbpfConfig {
    EbpfConfig {
        pin_dir: fs.pin_dir(),
        ..EbpfConfig::default()
    }
}

fn ids(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn ebpf_captures_outbound_and_inbound_and_leaves_the_rest() {
    let Some((fs, cluster)) = setup("capture", 2, 2, false) else {
        return;
    };
    let (pod, other, remote) = (cluster.pod(0, 0), cluster.pod(0, 1), cluster.pod(1, 0));
    let mut cap = EbpfCapture::start(config(&fs)).expect("start");
    // Starting again replaces the node links in place.
    let mut cap2 = EbpfCapture::start(config(&fs)).expect("start again");
    assert_eq!(
        ids(&fs.pin_dir().join("links")),
        ["connect4", "connect6", "getsockopt", "sockops"]
    );
    // The return path of ztunnel's original-source deliveries stays in
    // netfilter (two mangle rules and a policy route).
    let ret = profiles::inpod_return_path(&InpodConfig::default()).expect("plan");
    ret.apply(pod.ns(), Backend::Nft).expect("return path");
    cap.enroll("pod-a", pod.ns(), &[IpAddr::V4(pod.ip())])
        .expect("enroll");
    cap2.enroll("pod-a", pod.ns(), &[IpAddr::V4(pod.ip())])
        .expect("enroll again");
    assert!(cap.verify().expect("verify").is_empty());
    assert_eq!(cap.enrolled().expect("list").len(), 1);

    // ztunnel's listeners, opened in the pod after enrolment.
    let [l15001, l15006, l15008] = ztunnel_listeners(pod.ns());
    assert_eq!(cap.listeners().expect("listeners"), 1);
    let target = SocketAddr::from((remote.ip(), SERVER_PORT));
    let real = remote.ns().tcp_listener(target).expect("server");

    // Outbound from the app → 15001 on the pod's address, original
    // destination kept, the source still the pod.
    let mut c = pod.ns().tcp_connect(target).expect("connect");
    c.write_all(b"x").expect("write");
    let s = accept(&l15001);
    assert_eq!(original_dst(&s), target);
    assert_eq!(s.peer_addr().expect("peer"), c.local_addr().expect("local"));
    assert_eq!(c.peer_addr().expect("peer"), (pod.ip(), 15001).into());
    assert_eq!(s.peer_addr().expect("peer").ip(), IpAddr::V4(pod.ip()));

    // ztunnel's own sockets (SO_MARK 1337) go straight out.
    let _zt = marked_connect(pod.ns(), target);
    let (_, peer) = real.accept().expect("real server");
    assert_eq!(peer.ip(), IpAddr::V4(pod.ip()));

    // Loopback and the pod's own address are not captured.
    let own = pod.ns().tcp_listener((pod.ip(), 9999).into()).expect("own");
    let c = pod.ns().tcp_connect((pod.ip(), 9999).into()).expect("self");
    assert_eq!(c.peer_addr().expect("peer"), (pod.ip(), 9999).into());
    accept(&own);
    // ztunnel delivering inbound traffic: marked, from the original
    // client's address (IP_TRANSPARENT), to the app on the pod's address.
    let deliver = pod
        .ns()
        .socket(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .expect("socket");
    deliver.set_mark(1337).expect("SO_MARK");
    deliver.set_ip_transparent_v4(true).expect("IP_TRANSPARENT");
    deliver
        .bind(&SocketAddr::from((remote.ip(), 0)).into())
        .expect("bind spoofed");
    deliver
        .connect(&SocketAddr::from((pod.ip(), 9999)).into())
        .expect("deliver");
    let (s, peer) = own.accept().expect("app gets the delivery");
    assert_eq!(peer.ip(), IpAddr::V4(remote.ip()));
    drop(s);
    assert!(nothing_on(&l15006));

    // An unenrolled pod on the same node is untouched.
    let _c = other.ns().tcp_connect(target).expect("unenrolled");
    let (_, peer) = real.accept().expect("direct");
    assert_eq!(peer.ip(), IpAddr::V4(other.ip()));
    assert!(nothing_on(&l15001));

    // Inbound plaintext → 15006, the destination kept as the local address
    // and answered as SO_ORIGINAL_DST; HBONE 15008 is not redirected.
    let app = SocketAddr::from((pod.ip(), 80));
    let mut ic = remote.ns().tcp_connect(app).expect("inbound");
    ic.write_all(b"in").expect("write");
    let s = accept(&l15006);
    assert_eq!(s.local_addr().expect("local"), app);
    assert_eq!(original_dst(&s), app);
    assert_eq!(
        s.peer_addr().expect("peer"),
        ic.local_addr().expect("local")
    );
    let mut buf = [0u8; 2];
    (&s).read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"in");
    let _h = remote
        .ns()
        .tcp_connect((pod.ip(), 15008).into())
        .expect("hbone");
    let s = accept(&l15008);
    assert_eq!(s.local_addr().expect("local").port(), 15008);

    // Unenrolled: traffic goes straight out again, nothing else changed.
    cap.unenroll("pod-a").expect("unenroll");
    cap.unenroll("pod-a").expect("unenroll again");
    assert!(cap.enrolled().expect("list").is_empty());
    assert_eq!(cap.listeners().expect("listeners"), 0);
    let _c = pod.ns().tcp_connect(target).expect("connect");
    let (_, peer) = real.accept().expect("direct");
    assert_eq!(peer.ip(), IpAddr::V4(pod.ip()));
    ret.remove(pod.ns(), Backend::Nft)
        .expect("remove return path");
    // Removed: verify now reports everything it owns as missing.
    assert!(
        !ret.verify(pod.ns(), Backend::Nft)
            .expect("verify")
            .is_empty()
    );
    drop(cap2);
    teardown(cap, &fs);
}

#[test]
fn ebpf_captures_both_families_on_dual_stack_listeners() {
    let Some((fs, cluster)) = setup("dual", 1, 2, true) else {
        return;
    };
    let (pod, peer) = (cluster.pod(0, 0), cluster.pod(0, 1));
    let (pod6, peer6) = (pod.ip6().expect("ipv6"), peer.ip6().expect("ipv6"));
    let mut cap = EbpfCapture::start(config(&fs)).expect("start");
    cap.enroll("pod-6", pod.ns(), &[IpAddr::V4(pod.ip()), IpAddr::V6(pod6)])
        .expect("enroll");
    let l15001 = dual_listener(pod.ns(), 15001);
    let l15006 = dual_listener(pod.ns(), 15006);
    let real = dual_listener(peer.ns(), SERVER_PORT);

    // Outbound IPv6 → 15001 on the pod's IPv6 address, destination kept.
    let target6 = SocketAddr::V6(SocketAddrV6::new(peer6, SERVER_PORT, 0, 0));
    let _c = pod.ns().tcp_connect(target6).expect("connect v6");
    let s = accept(&l15001);
    assert_eq!(original_dst6(&s), target6);
    assert_eq!(s.peer_addr().expect("peer").ip(), IpAddr::V6(pod6));
    // Outbound IPv4 lands on the same listener, IPv4-mapped.
    let target4 = SocketAddr::from((peer.ip(), SERVER_PORT));
    let _c4 = pod.ns().tcp_connect(target4).expect("connect v4");
    let s = accept(&l15001);
    assert_eq!(original_dst(&s), target4);
    assert!(nothing_on(&real), "captured, not delivered");

    // Inbound, both families → the one dual-stack 15006 listener.
    let in6 = SocketAddr::V6(SocketAddrV6::new(pod6, 80, 0, 0));
    let _i6 = peer.ns().tcp_connect(in6).expect("inbound v6");
    let s = accept(&l15006);
    assert_eq!(original_dst6(&s), in6);
    assert_eq!(s.peer_addr().expect("peer").ip(), IpAddr::V6(peer6));
    let in4 = SocketAddr::from((pod.ip(), 80));
    let _i4 = peer.ns().tcp_connect(in4).expect("inbound v4");
    let s = accept(&l15006);
    assert_eq!(original_dst(&s), in4);

    cap.unenroll("pod-6").expect("unenroll");
    teardown(cap, &fs);
}

#[test]
fn same_namespace_splice_carries_bytes_and_eof_both_ways() {
    let Some((fs, cluster)) = setup("splice", 2, 1, false) else {
        return;
    };
    let (pod, remote) = (cluster.pod(0, 0), cluster.pod(1, 0));
    let mut cap = EbpfCapture::start(EbpfConfig {
        splice_local: true,
        ..config(&fs)
    })
    .expect("start");
    cap.enroll("pod-s", pod.ns(), &[IpAddr::V4(pod.ip())])
        .expect("enroll");
    let l15001 = pod
        .ns()
        .tcp_listener(([0, 0, 0, 0], 15001).into())
        .expect("15001");
    let target = SocketAddr::from((remote.ip(), SERVER_PORT));

    // The app's connection to ztunnel: both ends in the pod, both spliced.
    let mut c = pod.ns().tcp_connect(target).expect("connect");
    let mut s = accept(&l15001);
    assert_eq!(original_dst(&s), target);
    assert_eq!(cap.spliced_sockets().expect("count"), 2);
    let up: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = up.iter().rev().copied().collect();
    let writer = {
        let (mut c2, up) = (c.try_clone().expect("clone"), up.clone());
        std::thread::spawn(move || {
            c2.write_all(&up).expect("write up");
            c2.shutdown(std::net::Shutdown::Write).expect("shutdown");
        })
    };
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read up to EOF");
    writer.join().expect("writer");
    assert!(
        got == up,
        "upstream bytes intact ({} of {})",
        got.len(),
        up.len()
    );
    s.write_all(&down).expect("write down");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("read down to EOF");
    assert!(
        back == down,
        "downstream bytes intact ({} of {})",
        back.len(),
        down.len()
    );
    drop((c, s));

    // A connection leaving the pod is never spliced.
    let real = remote.ns().tcp_listener(target).expect("server");
    let _zt = marked_connect(pod.ns(), target);
    let _r = accept(&real);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(cap.spliced_sockets().expect("count"), 0);

    cap.unenroll("pod-s").expect("unenroll");
    teardown(cap, &fs);
}

#[test]
fn capture_survives_the_agent_and_the_next_start_cleans_up() {
    let Some((fs, cluster)) = setup("restart", 2, 1, false) else {
        return;
    };
    let (pod, remote) = (cluster.pod(0, 0), cluster.pod(1, 0));
    let target = SocketAddr::from((remote.ip(), SERVER_PORT));
    let real = remote.ns().tcp_listener(target).expect("server");
    {
        let mut cap = EbpfCapture::start(config(&fs)).expect("start");
        cap.enroll("pod-a", pod.ns(), &[IpAddr::V4(pod.ip())])
            .expect("enroll");
        // The agent goes away without removing anything (a crash).
    }
    let l15001 = pod
        .ns()
        .tcp_listener(([0, 0, 0, 0], 15001).into())
        .expect("15001");
    let _c = pod.ns().tcp_connect(target).expect("connect");
    assert_eq!(original_dst(&accept(&l15001)), target, "still captured");

    // The next start finds the pod, and drops it once told it is gone.
    let mut cap = EbpfCapture::start(config(&fs)).expect("restart");
    let pods = cap.enrolled().expect("list");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].key, "pod-a");
    assert!(cap.verify().expect("verify").is_empty());
    // A stale pod known only by its address goes as well.
    cap.enroll("pod-b", remote.ns(), &[IpAddr::V4(remote.ip())])
        .expect("enroll b");
    assert_eq!(
        cap.unenroll_addresses(&[IpAddr::V4(remote.ip())])
            .expect("by address"),
        ["pod-b"]
    );
    assert_eq!(cap.retain(|_| false).expect("retain"), ["pod-a"]);
    assert!(cap.verify().expect("verify").is_empty());
    let _c = pod.ns().tcp_connect(target).expect("connect");
    real.accept().expect("direct after cleanup");
    assert!(nothing_on(&l15001));

    // Bad input: a key that cannot be a file name changes nothing.
    let e = cap
        .enroll("../x", pod.ns(), &[IpAddr::V4(pod.ip())])
        .expect_err("bad key");
    assert!(e.to_string().contains("pod key"), "{e}");
    assert!(cap.enrolled().expect("list").is_empty());

    // Removal takes the programs away even from a pod still enrolled.
    cap.enroll("pod-a", pod.ns(), &[IpAddr::V4(pod.ip())])
        .expect("enroll");
    teardown(cap, &fs);
    let _c = pod.ns().tcp_connect(target).expect("connect");
    real.accept().expect("direct after removal");
    assert!(nothing_on(&l15001));
}

#[test]
fn bad_pin_dir_or_cgroup_is_refused_and_leaves_nothing() {
    if !supported() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ambit-not-bpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let e = EbpfCapture::start(EbpfConfig {
        pin_dir: dir.join("ambit"),
        ..EbpfConfig::default()
    })
    .expect_err("not bpffs");
    assert!(e.to_string().contains("not on a bpf filesystem"), "{e}");
    assert!(!dir.join("ambit").exists());
    let _ = std::fs::remove_dir(&dir);

    // A "cgroup" that is a plain directory: attaching fails, and a first
    // start leaves no pin behind.
    let fs = BpfFs::new("badcg");
    let e = EbpfCapture::start(EbpfConfig {
        cgroup: Some(std::env::temp_dir()),
        ..config(&fs)
    })
    .expect_err("not a cgroup");
    assert!(e.to_string().contains("attaching"), "{e}");
    assert!(!fs.pin_dir().exists(), "nothing half-applied");
}
