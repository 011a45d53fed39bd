//! A small cluster built from network namespaces, for integration tests.
//!
//! ```text
//!                 underlay netns ({id}-ul): bridge br0
//!        ┌──────────────┴───────────────┐
//!   n0 ─ eth0 172.30.0.1/24        n1 ─ eth0 172.30.0.2/24       node netns ({id}-nI)
//!   veth0 10.244.0.1/32 ...        veth0 10.244.1.1/32 ...       one veth per pod
//!   │                              │
//!   eth0 10.244.0.2/32             eth0 10.244.1.2/32            pod netns ({id}-nIpJ)
//! ```
//!
//! Node `i` owns pod CIDR `10.244.i.0/24`; its pod-side gateway address
//! `10.244.i.1` sits on every pod veth (a point-to-point layout, as the CNI
//! `ptp` plugin builds), and pod `j` is `10.244.i.(j+2)`. Nodes route each
//! other's pod CIDRs over the underlay and forward IPv4.
//!
//! Names are unique per process and per cluster, so tests run in parallel.
//! Dropping the [`Cluster`] (including during a panic) deletes every
//! namespace it made, and with them every link inside. Namespaces left by a
//! process that was killed are swept when the next cluster is built.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Error, NetNs};

/// Every harness namespace name starts with this, followed by the owner's pid.
pub const NAME_PREFIX: &str = "ambit-t";

static NEXT_CLUSTER: AtomicUsize = AtomicUsize::new(0);

/// Errors while building a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// A namespace operation failed.
    #[error(transparent)]
    Netns(#[from] Error),
    /// An `ip` command failed.
    #[error("`ip -n {ns} {cmd}` failed: {stderr}")]
    Ip {
        /// The namespace the command ran in.
        ns: String,
        /// The command (the first line of the batch that failed).
        cmd: String,
        /// What `ip` printed.
        stderr: String,
    },
    /// The `ip` binary could not be run.
    #[error("running `ip` (iproute2) for {ns}: {source}")]
    Spawn {
        /// The namespace the command was for.
        ns: String,
        /// The error from spawning.
        #[source]
        source: std::io::Error,
    },
    /// The requested shape does not fit the address plan.
    #[error("cluster shape {nodes} nodes x {pods} pods is outside 1..=200 x 0..=200")]
    Shape {
        /// Requested node count.
        nodes: usize,
        /// Requested pods per node.
        pods: usize,
    },
}

/// Builds a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    pods_per_node: usize,
    wire_pods: bool,
    ipv6: bool,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            nodes: 2,
            pods_per_node: 1,
            wire_pods: true,
            ipv6: false,
        }
    }
}

impl ClusterBuilder {
    /// Two nodes with one pod each.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of nodes (1..=200).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Pods on every node (0..=200).
    pub fn pods_per_node(mut self, n: usize) -> Self {
        self.pods_per_node = n;
        self
    }

    /// Whether the harness wires pods (veth, address, routes; the
    /// default). Off: pods are bare namespaces with `lo` up, for a CNI
    /// chain to wire as a container runtime would — [`Pod::ip`] is then
    /// the address the plan expects the chain to give, and
    /// [`Pod::host_veth`] does not name the chain's veth.
    pub fn wire_pods(mut self, wire: bool) -> Self {
        self.wire_pods = wire;
        self
    }

    /// Dual-stack: IPv6 addresses and routes beside the IPv4 ones (see
    /// the module docs for the plan). Off by default.
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// Creates the namespaces, links, addresses and routes. On failure,
    /// whatever was created is removed again.
    pub fn build(self) -> Result<Cluster, HarnessError> {
        if !(1..=200).contains(&self.nodes) || self.pods_per_node > 200 {
            return Err(HarnessError::Shape {
                nodes: self.nodes,
                pods: self.pods_per_node,
            });
        }
        sweep_stale();
        let id = format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed)
        );
        // `cluster` owns every namespace from the moment it exists, so an
        // error below drops it and deletes what was made so far.
        let underlay_name = format!("{id}-ul");
        let underlay = create(&underlay_name)?;
        let mut cluster = Cluster {
            id,
            underlay,
            nodes: Vec::new(),
            ipv6: self.ipv6,
        };
        ip_batch(
            &underlay_name,
            &[
                "link set lo up".into(),
                "link add br0 type bridge".into(),
                "link set br0 up".into(),
            ],
        )?;
        for i in 0..self.nodes {
            let node = cluster.add_node(i)?;
            cluster.nodes.push(node);
            for j in 0..self.pods_per_node {
                let pod = cluster.make_pod(i, j, self.wire_pods)?;
                cluster.nodes[i].pods.push(pod);
            }
        }
        let n = self.nodes;
        for i in 0..n {
            let cmds: Vec<String> = (0..n)
                .filter(|&k| k != i)
                .flat_map(|k| {
                    let mut r = vec![format!(
                        "route add {} via {} dev eth0",
                        pod_cidr(k),
                        underlay_ip(k)
                    )];
                    if self.ipv6 {
                        r.push(format!(
                            "route add {} via {} dev eth0",
                            pod_cidr6(k),
                            underlay_ip6(k)
                        ));
                    }
                    r
                })
                .collect();
            if !cmds.is_empty() {
                ip_batch(&cluster.nodes[i].name, &cmds)?;
            }
        }
        Ok(cluster)
    }
}

/// A set of nodes on a shared underlay, each with pods. See the module docs
/// for the address plan. Everything is deleted when it is dropped.
#[derive(Debug)]
pub struct Cluster {
    id: String,
    underlay: NetNs,
    nodes: Vec<Node>,
    ipv6: bool,
}

/// A node: a namespace with an underlay interface `eth0`, forwarding enabled,
/// and one host-side veth (`veth<j>`) per pod.
#[derive(Debug)]
pub struct Node {
    index: usize,
    name: String,
    ns: NetNs,
    pods: Vec<Pod>,
    ipv6: bool,
}

/// A pod: a namespace with `eth0` (a /32 address) whose default route is its
/// node's pod gateway.
#[derive(Debug)]
pub struct Pod {
    node: usize,
    index: usize,
    name: String,
    ns: NetNs,
    ipv6: bool,
}

impl Cluster {
    /// A new builder.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::new()
    }

    /// The unique prefix of this cluster's namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The underlay namespace (holds bridge `br0`).
    pub fn underlay(&self) -> &NetNs {
        &self.underlay
    }

    /// All nodes, in order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`. Panics if out of range (a test bug).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Pod `j` on node `i`. Panics if out of range (a test bug).
    pub fn pod(&self, node: usize, pod: usize) -> &Pod {
        &self.nodes[node].pods[pod]
    }

    /// The names of every namespace this cluster made.
    pub fn netns_names(&self) -> Vec<String> {
        let mut v = vec![format!("{}-ul", self.id)];
        for n in &self.nodes {
            v.push(n.name.clone());
            v.extend(n.pods.iter().map(|p| p.name.clone()));
        }
        v
    }

    /// A human-readable description of the topology.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "cluster {} (underlay bridge br0 in {}-ul)\n",
            self.id, self.id
        );
        for n in &self.nodes {
            s += &format!(
                "  node {} netns {:<24} eth0 {}/24  pods {} via {}\n",
                n.index,
                n.name,
                n.underlay_ip(),
                n.pod_cidr(),
                n.pod_gateway()
            );
            for p in &n.pods {
                s += &format!(
                    "    pod {}.{} netns {:<22} eth0 {}/32  host side {}\n",
                    n.index,
                    p.index,
                    p.name,
                    p.ip(),
                    p.host_veth()
                );
            }
        }
        s
    }

    fn add_node(&mut self, i: usize) -> Result<Node, HarnessError> {
        let name = format!("{}-n{i}", self.id);
        let ns = create(&name)?;
        // Register before configuring so that a failure still cleans it up.
        let node = Node {
            index: i,
            name: name.clone(),
            ns,
            pods: Vec::new(),
            ipv6: self.ipv6,
        };
        let mut cmds = vec![
            "link set lo up".into(),
            format!(
                "link add eth0 type veth peer name n{i} netns {}-ul",
                self.id
            ),
            format!("addr add {}/24 dev eth0", underlay_ip(i)),
        ];
        if self.ipv6 {
            cmds.push(format!("addr add {}/64 dev eth0 nodad", underlay_ip6(i)));
        }
        cmds.push("link set eth0 up".into());
        ip_batch(&name, &cmds).inspect_err(|_| drop_named(&name))?;
        ip_batch(
            &format!("{}-ul", self.id),
            &[
                format!("link set n{i} master br0"),
                format!("link set n{i} up"),
            ],
        )
        .inspect_err(|_| drop_named(&name))?;
        node.ns
            .set_sysctl("net/ipv4/ip_forward", "1")
            .inspect_err(|_| drop_named(&name))?;
        if self.ipv6 {
            node.ns
                .set_sysctl("net/ipv6/conf/all/forwarding", "1")
                .inspect_err(|_| drop_named(&name))?;
        }
        Ok(node)
    }

    fn make_pod(&mut self, i: usize, j: usize, wire: bool) -> Result<Pod, HarnessError> {
        let node_name = self.nodes[i].name.clone();
        let name = format!("{node_name}p{j}");
        let ns = create(&name)?;
        let pod = Pod {
            node: i,
            index: j,
            name: name.clone(),
            ns,
            ipv6: self.ipv6,
        };
        if !wire {
            ip_batch(&name, &["link set lo up".into()]).inspect_err(|_| drop_named(&name))?;
            return Ok(pod);
        }
        let gw = pod_gateway(i);
        let ip = pod_ip(i, j);
        let mut node_cmds = vec![
            format!("link add veth{j} type veth peer name eth0 netns {name}"),
            format!("addr add {gw}/32 dev veth{j}"),
        ];
        let mut pod_cmds = vec![
            "link set lo up".into(),
            format!("addr add {ip}/32 dev eth0"),
        ];
        let v6 = self.ipv6.then(|| (pod_gateway6(i), pod_ip6(i, j)));
        if let Some((gw6, ip6)) = v6 {
            node_cmds.push(format!("addr add {gw6}/128 dev veth{j} nodad"));
            pod_cmds.push(format!("addr add {ip6}/128 dev eth0 nodad"));
        }
        node_cmds.extend([
            format!("link set veth{j} up"),
            format!("route add {ip}/32 dev veth{j} scope link"),
        ]);
        pod_cmds.extend([
            "link set eth0 up".into(),
            format!("route add {gw} dev eth0 scope link"),
            format!("route add default via {gw} dev eth0"),
        ]);
        if let Some((gw6, ip6)) = v6 {
            node_cmds.push(format!("route add {ip6}/128 dev veth{j}"));
            pod_cmds.extend([
                format!("route add {gw6} dev eth0"),
                format!("route add default via {gw6} dev eth0"),
            ]);
        }
        let r = ip_batch(&node_name, &node_cmds).and_then(|()| ip_batch(&name, &pod_cmds));
        if let Err(e) = r {
            drop_named(&name);
            return Err(e);
        }
        Ok(pod)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Deleting a namespace destroys the links inside it, and each veth
        // takes its peer with it; the underlay goes last.
        for name in self.netns_names().into_iter().rev() {
            drop_named(&name);
        }
    }
}

impl Node {
    /// Index of this node in the cluster.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The namespace name (`ip netns` / `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The node's namespace.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }
    /// The node's address on the underlay (`eth0`).
    pub fn underlay_ip(&self) -> Ipv4Addr {
        underlay_ip(self.index)
    }
    /// The node-side address on every pod veth (Istio's "HostIP").
    pub fn pod_gateway(&self) -> Ipv4Addr {
        pod_gateway(self.index)
    }
    /// The node's pod CIDR, e.g. `10.244.0.0/24`.
    pub fn pod_cidr(&self) -> String {
        pod_cidr(self.index)
    }
    /// The node's IPv6 underlay address (dual-stack clusters only).
    pub fn underlay_ip6(&self) -> Option<Ipv6Addr> {
        self.ipv6.then(|| underlay_ip6(self.index))
    }
    /// The IPv6 pod gateway (dual-stack clusters only).
    pub fn pod_gateway6(&self) -> Option<Ipv6Addr> {
        self.ipv6.then(|| pod_gateway6(self.index))
    }
    /// The node's IPv6 pod CIDR, e.g. `fd00:10:244:0::/64` (dual-stack
    /// clusters only).
    pub fn pod_cidr6(&self) -> Option<String> {
        self.ipv6.then(|| pod_cidr6(self.index))
    }
    /// The pods on this node.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
    /// Runs an `ip` batch (one command per line) in this node.
    pub fn ip(&self, cmds: &[&str]) -> Result<(), HarnessError> {
        ip_batch(
            &self.name,
            &cmds.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }
}

impl Pod {
    /// Index of the pod's node.
    pub fn node_index(&self) -> usize {
        self.node
    }
    /// Index of the pod on its node.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The pod's namespace.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }
    /// The pod's IPv4 address.
    pub fn ip(&self) -> Ipv4Addr {
        pod_ip(self.node, self.index)
    }
    /// The pod's IPv6 address (dual-stack clusters only).
    pub fn ip6(&self) -> Option<Ipv6Addr> {
        self.ipv6.then(|| pod_ip6(self.node, self.index))
    }
    /// The name of the pod's veth in the node namespace.
    pub fn host_veth(&self) -> String {
        format!("veth{}", self.index)
    }
    /// Spawns a child process in the pod. It is killed when the guard drops.
    pub fn spawn(&self, cmd: &mut Command) -> Result<ChildGuard, HarnessError> {
        Ok(ChildGuard(Some(self.ns.spawn_command(cmd)?)))
    }
    /// Runs a future inside the pod on its own runtime thread.
    pub fn spawn_async<F, Fut>(&self, make: F) -> Result<crate::NsTask<Fut::Output>, HarnessError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future,
        Fut::Output: Send + 'static,
    {
        Ok(self.ns.spawn_async(make)?)
    }
}

/// A child process that is killed and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Guards `child`: it is killed and reaped when the guard drops.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }
    /// The process.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until drop")
    }
    /// Waits for the process to exit on its own.
    pub fn wait(mut self) -> std::io::Result<std::process::ExitStatus> {
        let mut c = self.0.take().expect("child present until drop");
        c.wait()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn underlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, (i + 1) as u8)
}
fn pod_gateway(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i as u8, 1)
}
fn pod_ip(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i as u8, (j + 2) as u8)
}
fn pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}
fn underlay_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x172, 0x30, 0, 0, 0, 0, (i + 1) as u16)
}
fn pod_gateway6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, i as u16, 0, 0, 0, 1)
}
fn pod_ip6(i: usize, j: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, i as u16, 0, 0, 0, (j + 2) as u16)
}
fn pod_cidr6(i: usize) -> String {
    format!("fd00:10:244:{i:x}::/64")
}

fn create(name: &str) -> Result<NetNs, HarnessError> {
    match NetNs::create_named(name) {
        Ok(ns) => Ok(ns),
        Err(Error::Exists { .. }) => {
            // Left by an earlier cluster of a recycled pid: replace it.
            drop_named(name);
            Ok(NetNs::create_named(name)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn drop_named(name: &str) {
    let _ = NetNs::delete_named(name);
}

/// Deletes harness namespaces whose owning process no longer exists.
fn sweep_stale() {
    let Ok(names) = NetNs::list_named() else {
        return;
    };
    for name in names {
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            drop_named(&name);
        }
    }
}

/// Runs `ip -n NS -batch -` with one command per line.
fn ip_batch(ns: &str, cmds: &[String]) -> Result<(), HarnessError> {
    let spawn_err = |source| HarnessError::Spawn {
        ns: ns.to_owned(),
        source,
    };
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let input = cmds.join("\n") + "\n";
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    // iproute2 reports "Command failed -:N"; name that line.
    let line = stderr
        .rsplit_once("-:")
        .and_then(|(_, n)| n.trim().parse::<usize>().ok())
        .and_then(|n| cmds.get(n.saturating_sub(1)))
        .cloned()
        .unwrap_or_else(|| cmds.join("; "));
    Err(HarnessError::Ip {
        ns: ns.to_owned(),
        cmd: line,
        stderr,
    })
}
