//! The node agent: applies a capture mode's host half, keeps pods enrolled
//! as the pod source and plugin events say, and reconciles with the kernel.
//!
//! Invariants:
//! - every change to kernel state goes through the one [`Dataplane`] held
//!   under `core`'s lock, so events, source polls and resyncs never
//!   interleave; plugin events wait in a queue (`inbox`) and the next
//!   holder of the lock handles all of them with one reconcile, so a
//!   burst of ADDs becomes one set update;
//! - `State::enrolled` only ever lists what the data plane has confirmed;
//!   a failed enrolment is retried by the next reconcile;
//! - enrolment is per pod: one pod that cannot be enrolled (its netns is
//!   gone, its rules do not apply) is logged, counted
//!   (`ambit_cni_pod_enrol_failures_total`) and left out — rolled back by
//!   the data plane — while every other pod is enrolled; it never stops the
//!   agent from starting;
//! - a remembered sandbox whose network namespace is gone (or is now
//!   another namespace at the same path) is skipped at start with a log
//!   line, counted (`ambit_cni_stale_records_total`) and its record
//!   removed;
//! - in-pod capture: ambient pods with no known netns (running before the
//!   agent) are looked up in `/proc` ([`crate::netns_finder`]) at start,
//!   at each resync and whenever the pod source changes; each resync also
//!   verifies the rules inside every enrolled pod and repairs drift
//!   (`ambit_cni_pod_rule_repairs_total`);
//! - if starting the host half fails part-way, what was applied is removed
//!   again before the error is returned.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, info, warn};

use crate::error::Error;
use crate::event::{AddAnswer, EventKind, PodEvent};
use crate::pod::{EnrolledPod, NetnsId, PodKey};
use crate::source::PodSource;
use crate::state::{Changes, Decision, Removal, State};

mod inbox;
mod journal;
mod metrics;
mod serve;
use self::inbox::Inbox;
pub use self::inbox::Queued;
pub use self::metrics::Metrics;
pub use self::serve::{EventThread, serve, serve_on};

/// A capture mode's kernel side. Every method may block (netlink,
/// subprocesses, entering namespaces); the agent calls them off the async
/// runtime's workers.
pub trait Dataplane: Send {
    /// The mode's name, for logs.
    fn name(&self) -> &'static str;
    /// Whether enrolling a pod needs its network namespace (in-pod
    /// capture); such pods wait for their sandbox's CNI ADD.
    fn needs_netns(&self) -> bool {
        false
    }
    /// Whether [`Dataplane::observed`] lists pods' IPv6 addresses too.
    fn observes_ipv6(&self) -> bool {
        false
    }
    /// Applies the host half (idempotent). On error, whatever part was
    /// applied must have been removed again.
    fn start(&mut self) -> Result<(), Error>;
    /// Pod addresses enrolled in the kernel now.
    fn observed(&mut self) -> Result<BTreeSet<IpAddr>, Error>;
    /// Enrols pods (idempotent), each on its own: one result per pod, in
    /// order. A pod that failed has nothing of its enrolment left applied;
    /// the others are unaffected.
    fn enrol(&mut self, pods: &[EnrolledPod]) -> Vec<Result<(), Error>>;
    /// Removes enrolments (absent ones are fine).
    fn unenrol(&mut self, pods: &[Removal]) -> Result<(), Error>;
    /// The host namespace's identity, never taken for a pod's when
    /// scanning `/proc` (in-pod capture).
    fn host_netns(&self) -> Option<NetnsId> {
        None
    }
    /// Checks an enrolled pod's kernel state and repairs drift; `Ok(true)`
    /// when something had to be repaired. Data planes with nothing inside
    /// pods have nothing to check.
    fn repair(&mut self, _pod: &EnrolledPod) -> Result<bool, Error> {
        Ok(false)
    }
    /// Removes the host half, unless `keep_rules`.
    fn stop(&mut self, keep_rules: bool) -> Result<(), Error>;
}

/// What happened to one plugin event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// The pod is enrolled.
    Enrolled,
    /// The pod is not enrolled, and why.
    Skipped(Decision),
    /// The sandbox was forgotten (DEL).
    Removed,
}

impl EventOutcome {
    /// The answer the plugin reads.
    pub fn answer(&self) -> AddAnswer {
        match self {
            Self::Enrolled => AddAnswer::Enrolled,
            Self::Skipped(Decision::NotAmbient) => AddAnswer::NotAmbient,
            Self::Skipped(Decision::Unknown) => AddAnswer::Unknown,
            Self::Skipped(Decision::NotReady | Decision::Enrol(_)) => AddAnswer::NotReady,
            Self::Removed => AddAnswer::Removed,
        }
    }
}

/// Pods whose enrolment failed in one reconcile, by uid.
type Failed = BTreeMap<String, Error>;

struct Core {
    state: State,
    dataplane: Box<dyn Dataplane>,
    source: Option<Box<dyn PodSource>>,
    sandbox_dir: Option<PathBuf>,
    metrics: Metrics,
    /// The source changed since the last `/proc` scan.
    source_dirty: bool,
    /// The remembered sandboxes on disk (with a sandbox directory), once
    /// loaded.
    journal: Option<journal::Journal>,
    /// The last reconcile left every pod as desired, and since then only
    /// plugin events changed the state: the next events' reconcile may look
    /// at their pods only ([`State::changes_for`]).
    converged: bool,
}

/// The node agent. Share it as `Arc<Agent>`.
pub struct Agent {
    core: Mutex<Core>,
    /// Plugin events waiting for the core lock, and the answers to events
    /// another handler took from the queue. Locked briefly, and only
    /// inside `core` when both are held.
    inbox: Mutex<Inbox>,
    metrics: Metrics,
    source_changed: Option<Arc<tokio::sync::Notify>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").finish_non_exhaustive()
    }
}

/// How the agent is put together.
pub struct AgentConfig {
    /// The capture mode.
    pub dataplane: Box<dyn Dataplane>,
    /// The pod source, if any ([`crate::DirSource`], or
    /// `crate::kube::KubeSource` with the `kube` feature).
    pub source: Option<Box<dyn PodSource>>,
    /// Where plugin sandboxes are remembered across restarts (a journal,
    /// `sandboxes.jsonl`; see `agent::journal`); `None` keeps them in
    /// memory only.
    pub sandbox_dir: Option<PathBuf>,
    /// Metrics to update.
    pub metrics: Metrics,
}

impl Agent {
    /// Applies the host half, loads remembered sandboxes and the pod
    /// source, and reconciles against the kernel: missing enrolments are
    /// added and stale ones deleted. If this fails, nothing stays applied.
    pub fn start(cfg: AgentConfig) -> Result<Arc<Self>, Error> {
        let source_changed = cfg.source.as_ref().and_then(|s| s.changed());
        if let Some(s) = &cfg.source {
            info!(source = %s.describe(), "pod source");
        }
        let state = State {
            require_netns: cfg.dataplane.needs_netns(),
            observes_ipv6: cfg.dataplane.observes_ipv6(),
            ..State::default()
        };
        let mut core = Core {
            state,
            dataplane: cfg.dataplane,
            source: cfg.source,
            sandbox_dir: cfg.sandbox_dir,
            metrics: cfg.metrics.clone(),
            source_dirty: false,
            journal: None,
            converged: false,
        };
        core.dataplane.start()?;
        let started = (|| {
            core.load_sandboxes()?;
            core.scan_source()?;
            // Pods that fail are logged and retried; they do not stop the start.
            core.reconcile(true).map(drop)
        })();
        if let Err(e) = started {
            if let Err(undo) = core.dataplane.stop(false) {
                warn!(error = %undo, "removing the host half after a failed start");
            }
            return Err(e);
        }
        info!(
            mode = core.dataplane.name(),
            enrolled = core.state.enrolled.len(),
            "node agent started"
        );
        Ok(Arc::new(Self {
            core: Mutex::new(core),
            inbox: Mutex::new(Inbox::default()),
            metrics: cfg.metrics,
            source_changed,
        }))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Core>, Error> {
        self.core
            .lock()
            .map_err(|_| Error::invalid("agent state", "a previous operation panicked"))
    }

    /// Re-reads the pod source if it changed, and reconciles.
    pub fn poll_source(&self) -> Result<(), Error> {
        let mut core = self.lock()?;
        if core.scan_source()? {
            core.reconcile(false)?;
        }
        Ok(())
    }

    /// A full reconcile against the kernel.
    pub fn resync(&self) -> Result<(), Error> {
        let mut core = self.lock()?;
        core.scan_source()?;
        core.reconcile(true).map(drop)
    }

    /// The pods enrolled now.
    pub fn enrolled(&self) -> Result<Vec<EnrolledPod>, Error> {
        Ok(self.lock()?.state.enrolled.values().cloned().collect())
    }

    /// Stops: removes the host half unless `keep_rules` (pod enrolments
    /// then stay for the next start to reconcile).
    pub fn shutdown(&self, keep_rules: bool) -> Result<(), Error> {
        let mut core = self.lock()?;
        core.dataplane.stop(keep_rules)?;
        if !keep_rules {
            core.state.enrolled.clear();
            core.converged = false;
        }
        info!(keep_rules, "node agent stopped");
        Ok(())
    }
}

impl Core {
    /// Handles queued plugin events with one reconcile; one result per
    /// ticket. Only an event's own pod failing fails the event.
    fn handle_events(
        &mut self,
        queued: Vec<(u64, EventKind, PodEvent)>,
        metrics: &Metrics,
    ) -> BTreeMap<u64, Result<EventOutcome, Error>> {
        let mut early: BTreeMap<u64, Result<EventOutcome, Error>> = BTreeMap::new();
        let kinds: BTreeMap<u64, EventKind> = queued.iter().map(|(t, k, _)| (*t, *k)).collect();
        let mut taken = Vec::new();
        // Every event's pod, taken or not (a failed DEL may have forgotten
        // the sandbox already).
        let mut keys = BTreeSet::new();
        for (ticket, kind, event) in queued {
            let key = (event.pod_namespace.clone(), event.pod_name.clone());
            keys.insert(key.clone());
            match self.take_event(kind, event) {
                Ok(outcome) => taken.push((ticket, kind, key, outcome)),
                Err(e) => {
                    early.insert(ticket, Err(e));
                }
            }
        }
        // Pods the source did not know: the record may have been written a
        // moment ago; re-read it once for all of them, then decide again.
        let unknown = taken.iter().any(|(_, k, key, _)| {
            *k == EventKind::Add && self.state.decide(key) == Decision::Unknown
        });
        let scanned = if unknown {
            self.scan_source().map(drop)
        } else {
            Ok(())
        };
        self.compact_journal();
        let reconciled = scanned.and_then(|()| self.reconcile_pods(Some(&keys)));
        let mut out = early;
        let mut failed = match reconciled {
            Ok(f) => Some(f),
            Err(e) => {
                // The kernel could not be read at all: every event fails.
                let msg = e.to_string();
                for (ticket, ..) in &taken {
                    out.insert(*ticket, Err(Error::invalid("reconcile", msg.clone())));
                }
                None
            }
        };
        if let Some(failed) = failed.as_mut() {
            for (ticket, kind, key, outcome) in taken {
                let outcome = match (kind, outcome) {
                    (EventKind::Add, _) => match self.state.decide(&key) {
                        Decision::Enrol(_) => EventOutcome::Enrolled,
                        d => EventOutcome::Skipped(d),
                    },
                    (_, o) => o,
                };
                let result = match &outcome {
                    EventOutcome::Enrolled => match self.state.decide(&key) {
                        Decision::Enrol(p) => failed.remove(&p.uid).map_or(Ok(()), Err),
                        _ => Ok(()),
                    },
                    _ => Ok(()),
                };
                out.insert(ticket, result.map(|()| outcome));
            }
        }
        for (ticket, r) in &out {
            let event = kinds
                .get(ticket)
                .map_or("", |k| k.path().trim_start_matches('/'));
            let result = if r.is_ok() { "ok" } else { "error" };
            metrics
                .events
                .get_or_create(&vec![
                    ("event".to_owned(), event.to_owned()),
                    ("result".to_owned(), result.to_owned()),
                ])
                .inc();
        }
        out
    }

    /// Records one event's sandbox (ADD) or forgets it (DEL), before the
    /// reconcile that acts on it.
    fn take_event(&mut self, kind: EventKind, mut event: PodEvent) -> Result<EventOutcome, Error> {
        let key = (event.pod_namespace.clone(), event.pod_name.clone());
        match kind {
            EventKind::Add => {
                if !event.netns.is_empty() {
                    let id = NetnsId::of_path(Path::new(&event.netns)).map_err(|e| {
                        Error::io(
                            format!("pod {}/{}: network namespace {}", key.0, key.1, event.netns),
                            e,
                        )
                    })?;
                    event.netns_id = Some(id);
                }
                self.remember(&event)?;
                self.state.sandboxes.insert(key, event);
                // Decided after the reconcile.
                Ok(EventOutcome::Skipped(Decision::Unknown))
            }
            EventKind::Del => {
                let same = self
                    .state
                    .sandboxes
                    .get(&key)
                    .is_some_and(|s| s.container_id == event.container_id);
                if same {
                    self.state.sandboxes.remove(&key);
                    self.forget(&key)?;
                }
                Ok(EventOutcome::Removed)
            }
        }
    }

    /// Reads the source if it changed; true when it did.
    fn scan_source(&mut self) -> Result<bool, Error> {
        let Some(src) = self.source.as_mut() else {
            return Ok(false);
        };
        let Some(scan) = src.poll()? else {
            return Ok(false);
        };
        for e in &scan.errors {
            warn!(error = %e, "skipping a pod record");
        }
        self.state.source = scan.pods;
        self.source_dirty = true;
        Ok(true)
    }

    /// Brings the kernel to the desired state; the pods that could not be
    /// enrolled come back (each was logged, counted and rolled back). `Err`
    /// only when the kernel could not be read at all.
    fn reconcile(&mut self, with_kernel: bool) -> Result<Failed, Error> {
        let r = self.reconcile_kernel(with_kernel, None);
        if let Some(src) = self.source.as_mut() {
            src.enrolled(&self.state.enrolled);
        }
        r
    }

    /// A reconcile after plugin events for the pods of `keys`: it looks at
    /// those pods only when nothing else can have changed (the last
    /// reconcile converged, the source is as it was), else at every pod.
    fn reconcile_pods(&mut self, keys: Option<&BTreeSet<PodKey>>) -> Result<Failed, Error> {
        let r = self.reconcile_kernel(false, keys);
        if let Some(src) = self.source.as_mut() {
            src.enrolled(&self.state.enrolled);
        }
        r
    }

    fn reconcile_kernel(
        &mut self,
        with_kernel: bool,
        keys: Option<&BTreeSet<PodKey>>,
    ) -> Result<Failed, Error> {
        let some = keys
            .filter(|_| !with_kernel && !self.source_dirty && self.converged)
            .and_then(|k| self.state.changes_for(k));
        if with_kernel || self.source_dirty {
            self.source_dirty = false;
            self.find_running();
        }
        let observed = if with_kernel {
            Some(self.dataplane.observed()?)
        } else {
            None
        };
        let changes = match some {
            Some(c) => c,
            None => self.state.changes(observed.as_ref()),
        };
        // Only a reconcile that failed nowhere leaves every pod as desired.
        self.converged = false;
        for p in &changes.add {
            let record = self
                .state
                .source
                .get(&(p.namespace.clone(), p.name.clone()));
            if let Some(Err(value)) = record.map(|r| r.dns_capture()) {
                warn!(
                    pod = %format!("{}/{}", p.namespace, p.name),
                    annotation = crate::pod::DNS_CAPTURE_ANNOTATION,
                    value,
                    "only true or false is supported; ignoring the annotation"
                );
            }
        }
        let mut failed = Failed::new();
        if !changes.is_empty() {
            failed = self.apply(&changes);
            self.metrics.reconciles.inc();
            if !failed.is_empty() {
                self.metrics.failures.inc();
            }
            self.metrics
                .pods_enrolled
                .set(i64::try_from(self.state.enrolled.len()).unwrap_or(i64::MAX));
        }
        self.converged = failed.is_empty();
        if with_kernel {
            self.repair_drift(&changes);
        }
        Ok(failed)
    }

    /// Looks in `/proc` for the netns of ambient pods that have none yet
    /// (running before the agent); forgets finds for pods that left.
    fn find_running(&mut self) {
        let uids: BTreeSet<&String> = self.state.source.values().map(|r| &r.uid).collect();
        let found = std::mem::take(&mut self.state.found);
        self.state.found = found
            .into_iter()
            .filter(|(uid, _)| uids.contains(uid))
            .collect();
        let wanted: BTreeMap<String, Vec<IpAddr>> = self
            .state
            .without_netns()
            .into_iter()
            .map(|r| (r.uid.clone(), r.ips.clone()))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let mut skip = BTreeSet::new();
        skip.extend(self.dataplane.host_netns());
        skip.extend(NetnsId::of_path(Path::new("/proc/self/ns/net")).ok());
        let found = crate::netns_finder::find(
            Path::new("/proc"),
            &wanted,
            &skip,
            crate::netns_finder::holds_address,
        );
        for (uid, f) in found {
            info!(%uid, netns = %f.path.display(), id = %f.id, "found the network namespace of a pod running before the agent");
            self.metrics.found_running.inc();
            self.state.found.insert(uid, (f.path, f.id));
        }
    }

    /// Verifies every enrolled pod not (re)enrolled just now, repairing drift.
    fn repair_drift(&mut self, changes: &Changes) {
        let fresh: BTreeSet<&String> = changes.add.iter().map(|p| &p.uid).collect();
        let pods: Vec<EnrolledPod> = self
            .state
            .enrolled
            .values()
            .filter(|p| !fresh.contains(&p.uid))
            .cloned()
            .collect();
        for p in pods {
            let pod = format!("{}/{}", p.namespace, p.name);
            match self.dataplane.repair(&p) {
                Ok(true) => {
                    self.metrics.rule_repairs.inc();
                    info!(%pod, "capture rules inside the pod had drifted; repaired");
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(%pod, error = %e, "checking the pod's capture rules failed; retrying at the next resync")
                }
            }
        }
    }

    fn apply(&mut self, c: &Changes) -> Failed {
        let mut failed = Failed::new();
        // One call for every removal; if it fails, one by one, so a bad
        // one does not keep the others in place.
        if !c.remove.is_empty() {
            let results = match self.dataplane.unenrol(&c.remove) {
                Ok(()) => c.remove.iter().map(|_| Ok(())).collect(),
                Err(_) => c
                    .remove
                    .iter()
                    .map(|r| self.dataplane.unenrol(std::slice::from_ref(r)))
                    .collect::<Vec<_>>(),
            };
            for (r, result) in c.remove.iter().zip(results) {
                let uid = r.uid.as_deref().unwrap_or("(stale)");
                match result {
                    Ok(()) => {
                        if let Some(uid) = &r.uid {
                            self.state.enrolled.remove(uid);
                        }
                        info!(uid, ips = ?r.ips, "unenrolled");
                    }
                    Err(e) => {
                        warn!(uid, ips = ?r.ips, error = %e, "unenrolling failed; retrying at the next reconcile");
                        if let Some(uid) = &r.uid {
                            failed.insert(uid.clone(), e);
                        }
                    }
                }
            }
        }
        if !c.add.is_empty() {
            let mut results = self.dataplane.enrol(&c.add).into_iter();
            let mut ok = 0usize;
            for p in &c.add {
                let pod = format!("{}/{}", p.namespace, p.name);
                let result = results.next().unwrap_or_else(|| {
                    Err(Error::invalid(
                        format!("pod {pod}"),
                        "the data plane gave no result for it",
                    ))
                });
                match result {
                    Ok(()) => {
                        debug!(%pod, ips = ?p.ips, "enrolled");
                        failed.remove(&p.uid);
                        self.state.enrolled.insert(p.uid.clone(), p.clone());
                        ok += 1;
                    }
                    Err(e) => {
                        warn!(%pod, uid = %p.uid, error = %e, "enrolling the pod failed; it was rolled back and is retried at the next reconcile; other pods are not affected");
                        self.metrics.enrol_failures.inc();
                        self.state.enrolled.remove(&p.uid);
                        // A namespace found in /proc may be stale: look again.
                        self.state.found.remove(&p.uid);
                        failed.insert(p.uid.clone(), e);
                    }
                }
            }
            if ok > 0 {
                info!(count = ok, "pods enrolled");
            }
        }
        failed
    }

    fn remember(&mut self, e: &PodEvent) -> Result<(), Error> {
        match &mut self.journal {
            Some(j) => j.add(e),
            None => Ok(()),
        }
    }

    fn forget(&mut self, key: &PodKey) -> Result<(), Error> {
        match &mut self.journal {
            Some(j) => j.del(key),
            None => Ok(()),
        }
    }

    /// Rewrites the sandbox journal with the live sandboxes when it has
    /// grown enough; a failure is logged (the journal stays as it was).
    fn compact_journal(&mut self) {
        if let Some(j) = &mut self.journal
            && j.due(self.state.sandboxes.len())
            && let Err(e) = j.rewrite(self.state.sandboxes.values())
        {
            warn!(error = %e, "rewriting the sandbox journal; it keeps growing until the next try");
        }
    }

    /// Loads the remembered sandboxes: the journal, and records of the
    /// former layout (one JSON file per pod), which the journal then takes
    /// over. Sandboxes whose namespace is gone or replaced are dropped.
    fn load_sandboxes(&mut self) -> Result<(), Error> {
        let Some(dir) = self.sandbox_dir.clone() else {
            return Ok(());
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        // Where each sandbox was read from, for messages.
        let mut found: BTreeMap<PodKey, (PodEvent, PathBuf)> = BTreeMap::new();
        let mut legacy = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<PodEvent>(&b).ok());
            let Some(e) = parsed else {
                warn!(path = %path.display(), "ignoring an unreadable sandbox record");
                continue;
            };
            legacy.push(path.clone());
            found.insert((e.pod_namespace.clone(), e.pod_name.clone()), (e, path));
        }
        let mut journal = journal::Journal::new(&dir);
        let journal_path = dir.join(journal::FILE);
        // The journal is newer than any record of the former layout.
        for (key, e) in journal.read()? {
            found.insert(key, (e, journal_path.clone()));
        }
        for (key, (mut e, path)) in found {
            if !e.netns.is_empty() {
                let now = NetnsId::of_path(Path::new(&e.netns));
                let stale = match (&now, e.netns_id) {
                    (Err(err), _) => Some(format!("its network namespace is gone ({err})")),
                    (Ok(id), Some(was)) if *id != was => Some(format!(
                        "its network namespace path now names another namespace ({was} then, {id} now)"
                    )),
                    _ => None,
                };
                if let Some(why) = stale {
                    warn!(
                        pod = %format!("{}/{}", e.pod_namespace, e.pod_name),
                        netns = %e.netns,
                        record = %path.display(),
                        "stale sandbox record skipped and removed: {why}"
                    );
                    self.metrics.stale_records.inc();
                    continue;
                }
                e.netns_id = now.ok();
            }
            self.state.sandboxes.insert(key, e);
        }
        // The journal now holds every live sandbox; the former records go.
        journal.rewrite(self.state.sandboxes.values())?;
        for path in legacy {
            if let Err(err) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), error = %err, "removing a sandbox record the journal took over");
            }
        }
        self.journal = Some(journal);
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming to {}", path.display()), e))
}
