//! In-pod capture (current Istio): the agent enters each pod's netns and
//! installs the in-pod rules there, adds the pod to the host's probe-SNAT
//! set, and hands ztunnel the pod's netns descriptor over ZDS, acting as
//! the ZDS server.
//!
//! ZDS delivery runs on its own task, which owns the socket and the
//! snapshot (every enrolled pod's uid, info and netns descriptor):
//! - while ztunnel is connected, each add or delete is sent and its ack
//!   awaited before the next;
//! - while ztunnel is away, changes only update the snapshot;
//! - whenever ztunnel (re)connects, it receives the whole snapshot and
//!   `SnapshotSent`, so nothing missed while it was away is lost.
//!
//! Enrolment completes (and the plugin's ADD succeeds) once the rules are
//! in place and the pod is in the snapshot; delivery is retried by the
//! next connection.
//!
//! Enrolment is per pod and idempotent on the kernel side: rules already
//! in place (a restarted agent re-enrolling the pods it left enrolled) are
//! verified, not re-applied; a pod whose enrolment fails part-way has its
//! rules and probe-set entry removed again. The namespace is checked
//! against the identity the agent recorded, so a sandbox recreated at the
//! same path is never mistaken for the old one, and removing an old
//! sandbox's rules never touches its replacement.
//!
//! The plan is chosen per pod, from two facts: DNS capture (the pod's
//! `ambient.istio.io/dns-capture` annotation, else the agent's setting) and
//! IPv6 (the agent's setting, and only if the pod's namespace has IPv6:
//! `::1` on an up loopback, which `net.ipv6.conf.all.disable_ipv6=1` takes
//! away; a pod without it gets the IPv4-only plan rather than a
//! half-applied dual-stack one).
//! Each combination's plan is built once. When a pod's choice changes, the
//! new plan is applied over the old one ([`Plan::apply_replacing`]): the
//! new rules are in place before the old plan's surplus (the DNS raw-table
//! chains, the IPv6 routes) is removed. After a restart the agent does not
//! know what an earlier run applied, so it replaces the superset (DNS on).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use ambit_netns::NetNs;
use ambit_redirect::ipset::IpSetEntry;
use ambit_redirect::profiles::{self, InpodConfig, PROBE_SET_V4, PROBE_SET_V6};
use ambit_redirect::route::Rtnl;
use ambit_redirect::{Backend, Drift, NsHandle, Plan, RuleWrites};
use ambit_xds::proto::istio::workload::zds::WorkloadInfo;
use ambit_xds::zds::SnapshotItem;
use ambit_xds::{ZdsConnection, ZdsListener};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::agent::Dataplane;
use crate::error::{Context, Error};
use crate::pod::{EnrolledPod, NetnsId};
use crate::state::Removal;

/// The host set of enrolled pods whose kubelet probes are SNATed (IPv4).
pub const PROBE_SET: &str = PROBE_SET_V4;

/// Which in-pod plan a pod gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodPlanKey {
    /// Redirect the pod's DNS to 15053.
    pub capture_dns: bool,
    /// Capture IPv6 too.
    pub ipv6: bool,
}

/// Whether a namespace has IPv6: its loopback is up with `::1`, which the
/// plan's `local ::/0 dev lo` route needs ([`Rtnl::loopback_has_ipv6`]).
///
/// That also answers whether the kernel has IPv6 and whether it is
/// disabled there: `net.ipv6.conf.all.disable_ipv6=1` disables every
/// interface, loopback included, and takes `::1` away. The sysctl itself is
/// not read: a lookup under `/proc/sys/net` compares the name with the
/// entry of every namespace the host has (one dentry per namespace, all in
/// one hash chain), which made it the agent's largest cost per pod with a
/// couple of thousand pods (issue 21). An address dump also costs less
/// than reading `/proc/thread-self/net/if_inet6` from inside. An error
/// reads as no IPv6.
pub fn netns_has_ipv6(ns: &NetNs) -> bool {
    Rtnl::open(Some(ns))
        .and_then(|mut r| r.loopback_has_ipv6())
        .unwrap_or(false)
}

/// What in-pod capture needs.
#[derive(Debug)]
pub struct InpodSettings {
    /// The node (host) namespace, for the probe-SNAT rule and set.
    pub host: NetNs,
    /// Packet-filter backend, on the host and in pods.
    pub backend: Backend,
    /// The in-pod profile's parameters.
    pub config: InpodConfig,
    /// The ZDS socket ztunnel connects to.
    pub zds_socket: PathBuf,
    /// The runtime the ZDS task runs on.
    pub runtime: tokio::runtime::Handle,
    /// How the nft backend's tables are written and read back: in process
    /// (default) or, as a benchmark baseline, by `nft` processes.
    pub rule_writes: RuleWrites,
}

enum ZdsCmd {
    Add {
        uid: String,
        info: WorkloadInfo,
        netns: NetNs,
    },
    Del {
        uid: String,
    },
}

/// The in-pod data plane.
pub struct InpodDataplane {
    s: InpodSettings,
    host_plan: Plan,
    /// Pod plans built so far, one per combination.
    plans: BTreeMap<PodPlanKey, Plan>,
    /// The plan this run applied in each enrolled pod, by uid.
    applied: BTreeMap<String, PodPlanKey>,
    zds: Option<(mpsc::UnboundedSender<ZdsCmd>, tokio::task::JoinHandle<()>)>,
    /// The host's netfilter socket for probe-set additions, kept between
    /// pods (no socket opened and released per pod).
    host_sets: Option<ambit_redirect::nftset::NftSets>,
    /// eBPF capture, when it replaces the in-pod NAT rules.
    #[cfg(feature = "ebpf")]
    ebpf: Option<ambit_redirect::ebpf::EbpfCapture>,
}

impl std::fmt::Debug for InpodDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InpodDataplane")
            .field("settings", &self.s)
            .finish_non_exhaustive()
    }
}

impl InpodDataplane {
    /// A data plane that will program `s` when started.
    pub fn new(s: InpodSettings) -> Result<Self, Error> {
        let mut host_plan = profiles::inpod_host_probes(&s.config)
            .context(|| "building the host probe plan".into())?;
        host_plan.rule_writes = s.rule_writes;
        let mut dp = Self {
            s,
            host_plan,
            plans: BTreeMap::new(),
            applied: BTreeMap::new(),
            zds: None,
            host_sets: None,
            #[cfg(feature = "ebpf")]
            ebpf: None,
        };
        // Build the default pod plan now, so a bad configuration fails here.
        dp.plan_for(dp.default_key())?;
        Ok(dp)
    }

    /// Captures with eBPF instead of the in-pod NAT rules: `cap` (already
    /// attached) redirects each enrolled pod's connections, and the pod
    /// plans keep only the return path of ztunnel's original-source
    /// connections ([`profiles::inpod_return_path`]). DNS is not captured
    /// in this mode.
    #[cfg(feature = "ebpf")]
    pub fn with_ebpf(mut self, cap: ambit_redirect::ebpf::EbpfCapture) -> Result<Self, Error> {
        self.ebpf = Some(cap);
        self.plans.clear();
        self.s.config.capture_dns = false;
        self.plan_for(self.default_key())?;
        Ok(self)
    }

    fn uses_ebpf(&self) -> bool {
        #[cfg(feature = "ebpf")]
        if self.ebpf.is_some() {
            return true;
        }
        false
    }

    /// Puts the pod in eBPF capture (nothing without it).
    #[allow(unused_variables)]
    fn ebpf_enrol(&mut self, uid: &str, ns: &NetNs, ips: &[IpAddr]) -> Result<(), Error> {
        #[cfg(feature = "ebpf")]
        if let Some(cap) = self.ebpf.as_mut() {
            cap.enroll(uid, ns, ips)
                .context(|| format!("eBPF capture of pod {uid}"))?;
        }
        Ok(())
    }

    /// Takes the pod out of eBPF capture (nothing without it).
    #[allow(unused_variables)]
    fn ebpf_unenrol(&mut self, uid: &str) -> Result<(), Error> {
        #[cfg(feature = "ebpf")]
        if let Some(cap) = self.ebpf.as_mut() {
            cap.unenroll(uid)
                .context(|| format!("ending eBPF capture of pod {uid}"))?;
        }
        Ok(())
    }

    /// Takes stale pods known only by address out of eBPF capture.
    #[allow(unused_variables)]
    fn ebpf_forget(&mut self, ips: &[IpAddr]) -> Result<(), Error> {
        #[cfg(feature = "ebpf")]
        if let Some(cap) = self.ebpf.as_mut() {
            let gone = cap
                .unenroll_addresses(ips)
                .context(|| "ending eBPF capture of stale pods".into())?;
            if !gone.is_empty() {
                info!(?gone, "stale pods left eBPF capture");
            }
        }
        Ok(())
    }

    /// The plan for pods that follow the agent's settings.
    fn default_key(&self) -> PodPlanKey {
        PodPlanKey {
            capture_dns: self.s.config.capture_dns,
            ipv6: self.s.config.ipv6,
        }
    }

    /// The plan applied inside pods that follow the agent's settings and
    /// have IPv6 when the agent captures it.
    pub fn pod_plan(&self) -> &Plan {
        &self.plans[&self.default_key()]
    }

    /// The plan for one combination, built on first use.
    pub fn plan_for(&mut self, key: PodPlanKey) -> Result<&Plan, Error> {
        if !self.plans.contains_key(&key) {
            let cfg = InpodConfig {
                capture_dns: key.capture_dns,
                ipv6: key.ipv6,
                ..self.s.config.clone()
            };
            let build = if self.uses_ebpf() {
                profiles::inpod_return_path
            } else {
                profiles::inpod
            };
            let mut plan = build(&cfg).context(|| format!("building the in-pod plan {key:?}"))?;
            plan.rule_writes = self.s.rule_writes;
            self.plans.insert(key, plan);
        }
        Ok(&self.plans[&key])
    }

    /// The plan `p` gets in a namespace that has IPv6 or not.
    fn key_with(&self, p: &EnrolledPod, has_ipv6: bool) -> PodPlanKey {
        PodPlanKey {
            capture_dns: p.dns_capture.unwrap_or(self.s.config.capture_dns) && !self.uses_ebpf(),
            ipv6: self.s.config.ipv6 && has_ipv6,
        }
    }

    /// The pod's sockets (one trip into the namespace) and whether its
    /// namespace has IPv6 (when the agent captures it), asked over them.
    fn open_pod<'a>(&self, ns: &'a NetNs) -> Result<(NsHandle<'a>, bool), Error> {
        let mut h = NsHandle::open(ns).context(|| format!("opening netlink sockets in {ns}"))?;
        let v6 = self.s.config.ipv6
            && h.loopback_has_ipv6()
                .context(|| format!("checking for IPv6 in {ns}"))?;
        Ok((h, v6))
    }

    /// What may be applied in a pod now: what this run applied, else the
    /// superset (DNS on) of the family it would get.
    fn previous_key(&self, uid: &str, want: PodPlanKey) -> PodPlanKey {
        self.applied.get(uid).copied().unwrap_or(PodPlanKey {
            capture_dns: !self.uses_ebpf(),
            ipv6: want.ipv6,
        })
    }

    /// Brings the pod's rules to `want`: applied when `force`, when the
    /// check just made found `drift`, or when this run knows another plan
    /// is in place, over whatever may be there (what the check saw in the
    /// kernel says whether the other plan's chains can be there at all).
    fn put_rules(
        &mut self,
        p: &EnrolledPod,
        h: &mut NsHandle<'_>,
        want: PodPlanKey,
        drift: &[Drift],
        force: bool,
    ) -> Result<(), Error> {
        let known_other = self.applied.get(&p.uid).is_some_and(|k| *k != want);
        if !force && drift.is_empty() && !known_other {
            return Ok(());
        }
        let old = self.previous_key(&p.uid, want);
        self.plan_for(old)?;
        let (plan, was) = (&self.plans[&want], &self.plans[&old]);
        plan.apply_replacing_verified(was, h, self.s.backend, drift)
            .context(|| format!("applying in-pod rules ({want:?}) in {}", h.ns()))
    }

    /// The probe-set entries of a pod, by set.
    fn probe_entries(&self, p: &EnrolledPod) -> Vec<(&'static str, Vec<IpSetEntry>)> {
        let entries = |v6: bool| -> Vec<IpSetEntry> {
            p.ips
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| IpSetEntry::new(*ip, p.uid.clone()))
                .collect()
        };
        let mut v = vec![(PROBE_SET_V4, entries(false))];
        if self.s.config.ipv6 {
            v.push((PROBE_SET_V6, entries(true)));
        }
        v.retain(|(_, e)| !e.is_empty());
        v
    }

    /// Removes addresses from the probe sets they belong to.
    fn del_probe_members(&self, ips: &[IpAddr]) -> Result<(), Error> {
        let v4: Vec<IpAddr> = ips.iter().copied().filter(IpAddr::is_ipv4).collect();
        let v6: Vec<IpAddr> = ips.iter().copied().filter(IpAddr::is_ipv6).collect();
        let mut sets = vec![(PROBE_SET_V4, v4)];
        if self.s.config.ipv6 {
            sets.push((PROBE_SET_V6, v6));
        }
        for (set, ips) in sets {
            if ips.is_empty() {
                continue;
            }
            self.host_plan
                .del_members(&self.s.host, self.s.backend, set, &ips)
                .context(|| format!("removing {} address(es) from {set}", ips.len()))?;
        }
        Ok(())
    }

    /// The plan applied in the host namespace.
    pub fn host_plan(&self) -> &Plan {
        &self.host_plan
    }

    /// Opens the pod's namespace, checking it is the one the agent recorded.
    fn open_pod_netns(p: &EnrolledPod) -> Result<NetNs, Error> {
        let path = p.netns.as_ref().ok_or_else(|| {
            Error::invalid(
                format!("pod {}/{}", p.namespace, p.name),
                "no network namespace to enter",
            )
        })?;
        let ns = NetNs::open(path).context(|| format!("opening {}", path.display()))?;
        if let Some(want) = p.netns_id {
            let have = netns_id(&ns)?;
            if have != want {
                return Err(Error::invalid(
                    format!("pod {}/{}", p.namespace, p.name),
                    format!(
                        "{} is now another network namespace ({have}, the pod's was {want})",
                        path.display()
                    ),
                ));
            }
        }
        Ok(ns)
    }

    /// Enrols one pod; on failure, removes what this call put in place.
    fn enrol_one(&mut self, p: &EnrolledPod) -> Result<(), Error> {
        let ns = Self::open_pod_netns(p)?;
        let where_ = || format!("pod {}/{} ({})", p.namespace, p.name, ns);
        // One route and one netfilter socket in the pod for the check and
        // the apply, and the IPv6 check, in one trip into its namespace.
        let (mut h, has_ipv6) = self.open_pod(&ns)?;
        let want = self.key_with(p, has_ipv6);
        if self.s.config.ipv6 && !want.ipv6 {
            debug!(pod = %where_(), "no IPv6 in the pod's namespace; IPv4-only rules");
        }
        let backend = self.s.backend;
        let drift = self
            .plan_for(want)?
            .verify_in(&mut h, backend)
            .context(|| format!("checking in-pod rules in {}", where_()))?;
        let sets = self.probe_entries(p);
        let rest = (|| {
            self.put_rules(p, &mut h, want, &drift, false)?;
            self.ebpf_enrol(&p.uid, &ns, &p.ips)?;
            for (set, entries) in &sets {
                self.host_plan
                    .add_members_reusing(
                        &self.s.host,
                        self.s.backend,
                        set,
                        entries,
                        &mut self.host_sets,
                    )
                    .context(|| format!("adding {} to {set}", where_()))?;
            }
            let netns = ns
                .try_clone()
                .context(|| format!("duplicating the netns handle of {}", where_()))?;
            self.send(ZdsCmd::Add {
                uid: p.uid.clone(),
                info: WorkloadInfo {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    service_account: p.service_account.clone(),
                },
                netns,
            })
        })();
        match &rest {
            Ok(()) => {
                self.applied.insert(p.uid.clone(), want);
            }
            Err(_) => {
                // Roll this pod back: it is not enrolled, so nothing of it
                // stays, whichever plan was in place before.
                let old = self.previous_key(&p.uid, want);
                let backend = self.s.backend;
                for key in [want, old] {
                    if let Err(e) = self.plan_for(key).and_then(|plan| {
                        plan.remove(&ns, backend)
                            .context(|| format!("removing in-pod rules in {}", where_()))
                    }) {
                        warn!(pod = %where_(), error = %e, "rolling back in-pod rules");
                    }
                }
                self.applied.remove(&p.uid);
                if let Err(e) = self.ebpf_unenrol(&p.uid) {
                    warn!(pod = %where_(), error = %e, "rolling back eBPF capture");
                }
                if let Err(e) = self.del_probe_members(&p.ips) {
                    warn!(pod = %where_(), error = %e, "rolling back the probe-set entries");
                }
            }
        }
        rest
    }

    fn send(&self, cmd: ZdsCmd) -> Result<(), Error> {
        match &self.zds {
            Some((tx, _)) => tx.send(cmd).map_err(|_| Error::Stopped),
            None => Err(Error::invalid("in-pod data plane", "not started")),
        }
    }

    fn try_start(&mut self) -> Result<(), Error> {
        self.host_plan
            .apply(&self.s.host, self.s.backend)
            .context(|| format!("applying the probe rules in {}", self.s.host))?;
        let listener = {
            let _rt = self.s.runtime.enter();
            ZdsListener::bind(&self.s.zds_socket)
                .context(|| format!("binding {}", self.s.zds_socket.display()))?
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = self.s.runtime.spawn(zds_loop(listener, rx));
        self.zds = Some((tx, task));
        info!(socket = %self.s.zds_socket.display(), "in-pod capture ready; waiting for ztunnel");
        Ok(())
    }
}

impl Dataplane for InpodDataplane {
    fn name(&self) -> &'static str {
        "inpod"
    }

    fn needs_netns(&self) -> bool {
        true
    }

    fn start(&mut self) -> Result<(), Error> {
        let r = self.try_start();
        if r.is_err()
            && let Err(e) = self.stop(false)
        {
            warn!(error = %e, "undoing a failed start");
        }
        r
    }

    fn observed(&mut self) -> Result<BTreeSet<IpAddr>, Error> {
        let mut sets = vec![PROBE_SET_V4];
        if self.s.config.ipv6 {
            sets.push(PROBE_SET_V6);
        }
        let mut all = BTreeSet::new();
        for set in sets {
            all.extend(
                self.host_plan
                    .members(&self.s.host, self.s.backend, set)
                    .context(|| format!("listing {set}"))?,
            );
        }
        Ok(all)
    }

    fn observes_ipv6(&self) -> bool {
        self.s.config.ipv6
    }

    fn enrol(&mut self, pods: &[EnrolledPod]) -> Vec<Result<(), Error>> {
        pods.iter().map(|p| self.enrol_one(p)).collect()
    }

    fn host_netns(&self) -> Option<NetnsId> {
        netns_id(&self.s.host).ok()
    }

    fn repair(&mut self, p: &EnrolledPod) -> Result<bool, Error> {
        let ns = Self::open_pod_netns(p)?;
        let (mut h, has_ipv6) = self.open_pod(&ns)?;
        let want = self.key_with(p, has_ipv6);
        let backend = self.s.backend;
        let drift = self
            .plan_for(want)?
            .verify_in(&mut h, backend)
            .context(|| format!("checking in-pod rules in {ns}"))?;
        if drift.is_empty() && self.applied.get(&p.uid) == Some(&want) {
            return Ok(false);
        }
        warn!(pod = %format!("{}/{}", p.namespace, p.name), differences = drift.len(), "in-pod rules drifted; re-applying");
        debug!(?drift, "in-pod drift");
        self.put_rules(p, &mut h, want, &drift, true)?;
        self.applied.insert(p.uid.clone(), want);
        Ok(true)
    }

    fn unenrol(&mut self, pods: &[Removal]) -> Result<(), Error> {
        for r in pods {
            if let Some(path) = &r.netns {
                // A pod whose sandbox is gone took its rules with it; a new
                // namespace at the same path is someone else's.
                match NetNs::open(path) {
                    Ok(ns)
                        if r.netns_id
                            .is_some_and(|id| netns_id(&ns).is_ok_and(|now| now != id)) =>
                    {
                        info!(netns = %path.display(), "pod netns replaced; the old one took its rules with it");
                    }
                    Ok(ns) => {
                        let ipv6 = self.s.config.ipv6 && netns_has_ipv6(&ns);
                        let key = r
                            .uid
                            .as_ref()
                            .and_then(|u| self.applied.get(u).copied())
                            .unwrap_or(PodPlanKey {
                                capture_dns: !self.uses_ebpf(),
                                ipv6,
                            });
                        let backend = self.s.backend;
                        self.plan_for(key)?
                            .remove(&ns, backend)
                            .context(|| format!("removing in-pod rules in {}", path.display()))?;
                    }
                    Err(e) => info!(netns = %path.display(), error = %e, "pod netns already gone"),
                }
                if let Some(uid) = &r.uid {
                    self.applied.remove(uid);
                }
            }
            match &r.uid {
                Some(uid) => self.ebpf_unenrol(uid)?,
                None => self.ebpf_forget(&r.ips)?,
            }
            if let Some(uid) = &r.uid {
                self.send(ZdsCmd::Del { uid: uid.clone() })?;
            }
        }
        let ips: Vec<IpAddr> = pods.iter().flat_map(|r| r.ips.iter().copied()).collect();
        self.del_probe_members(&ips)
    }

    fn stop(&mut self, keep_rules: bool) -> Result<(), Error> {
        if let Some((tx, task)) = self.zds.take() {
            drop(tx);
            task.abort();
        }
        // eBPF capture stays while pods are enrolled in it, as their in-pod
        // rules do: the next agent takes the pins over. With no pod left,
        // the programs go (unless asked to keep everything).
        #[cfg(feature = "ebpf")]
        if let Some(cap) = self.ebpf.take() {
            let dir = cap.config().pin_dir.clone();
            let pods = cap
                .enrolled()
                .context(|| "listing eBPF-captured pods".into())?;
            drop(cap);
            if keep_rules || !pods.is_empty() {
                info!(pods = pods.len(), pin_dir = %dir.display(), "eBPF capture left in place for the next agent");
            } else {
                ambit_redirect::ebpf::remove(&dir)
                    .context(|| format!("removing eBPF capture ({})", dir.display()))?;
            }
        }
        if keep_rules {
            return Ok(());
        }
        self.host_plan
            .remove(&self.s.host, self.s.backend)
            .context(|| format!("removing the probe rules from {}", self.s.host))
    }
}

/// The identity of an open namespace (through `/proc/self/fd`).
fn netns_id(ns: &NetNs) -> Result<NetnsId, Error> {
    use std::os::fd::AsRawFd;
    let link = format!("/proc/self/fd/{}", ns.as_fd().as_raw_fd());
    NetnsId::of_path(std::path::Path::new(&link))
        .map_err(|e| Error::io(format!("identifying {ns}"), e))
}

/// Owns the ZDS socket and the snapshot; see the module docs.
async fn zds_loop(listener: ZdsListener, mut rx: mpsc::UnboundedReceiver<ZdsCmd>) {
    let mut pods: BTreeMap<String, (WorkloadInfo, NetNs)> = BTreeMap::new();
    let mut conn: Option<ZdsConnection> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(mut c) => {
                    let mut items: Vec<SnapshotItem<'_>> = Vec::with_capacity(pods.len());
                    for (uid, (info, ns)) in &pods {
                        items.push(SnapshotItem::Add {
                            uid: uid.clone(),
                            info: Some(info.clone()),
                            netns: ns.as_fd(),
                        });
                    }
                    match c.send_snapshot(items).await {
                        Ok(()) => {
                            info!(pods = pods.len(), "zds snapshot sent to ztunnel");
                            conn = Some(c);
                        }
                        Err(e) => warn!(error = %e, "zds snapshot failed; waiting for ztunnel to reconnect"),
                    }
                }
                Err(e) => warn!(error = %e, "accepting a zds connection"),
            },
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let sent = match (&cmd, conn.as_mut()) {
                    (ZdsCmd::Add { uid, info, netns }, Some(c)) => {
                        Some(c.add(uid, Some(info.clone()), netns.as_fd()).await)
                    }
                    (ZdsCmd::Del { uid }, Some(c)) => Some(c.del(uid).await),
                    (_, None) => None,
                };
                match sent {
                    Some(Ok(())) | None => {}
                    Some(Err(ambit_xds::ZdsError::Rejected { request, error })) => {
                        warn!(%request, %error, "ztunnel rejected a zds request");
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "zds connection lost; the next connection gets a snapshot");
                        conn = None;
                    }
                }
                match cmd {
                    ZdsCmd::Add { uid, info, netns } => {
                        pods.insert(uid, (info, netns));
                    }
                    ZdsCmd::Del { uid } => {
                        pods.remove(&uid);
                    }
                }
            }
        }
    }
}
