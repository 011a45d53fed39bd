//! Pod sources: where the agent learns which pods run on its node and
//! whether they belong in the mesh. [`DirSource`] is a directory of pod
//! records (one per file, `.yaml`, `.yml` or `.json`), re-read when any
//! file changes (an inotify watch says when something may have, so a quiet
//! directory costs one `read` per poll, not a `stat` per file) — what tests
//! and local runs use; with the `kube` feature,
//! [`crate::kube::KubeSource`] watches the Kubernetes API. Both produce the
//! same [`PodRecord`]s through the [`PodSource`] trait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::error::Error;
use crate::pod::{PodKey, PodRecord};

/// Something that lists this node's pods.
///
/// The agent calls [`PodSource::poll`] under its state lock (from a
/// blocking thread), on every poll tick and whenever the source's
/// [`PodSource::changed`] notifier fires; a source must therefore answer
/// from what it already holds and never block on the network.
pub trait PodSource: Send + 'static {
    /// The full set of pods if anything changed since the last call,
    /// `Ok(None)` when nothing did. A source that has not completed its
    /// first listing must return `Ok(None)` — an empty scan would unenrol
    /// every pod.
    fn poll(&mut self) -> Result<Option<Scan>, Error>;

    /// A short description for logs (`dir /var/lib/pods`, `kubernetes node a`).
    fn describe(&self) -> String;

    /// Fires when the source has news, so the agent reacts without waiting
    /// for the next poll tick. `None`: poll on the tick only.
    fn changed(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// Told after every reconcile which pods (by uid) are enrolled now, so
    /// a source can publish it — the Kubernetes source sets Istio's
    /// `ambient.istio.io/redirection: enabled` annotation, which istiod
    /// reads to send HBONE to the pod. Must not block.
    fn enrolled(&mut self, _enrolled: &BTreeMap<String, crate::pod::EnrolledPod>) {}
}

impl PodSource for DirSource {
    fn poll(&mut self) -> Result<Option<Scan>, Error> {
        DirSource::poll(self)
    }

    fn describe(&self) -> String {
        format!("dir {}", self.dir.display())
    }
}

/// A directory of pod records.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    node: Option<String>,
    /// File name → (mtime, length) at the last read, to skip unchanged scans.
    stamp: BTreeMap<PathBuf, (SystemTime, u64)>,
    /// Whether a scan has been returned yet.
    scanned: bool,
    /// Watches the directory; `None` until it could be set up (the
    /// directory may not exist yet) or after it went stale. Without it,
    /// every poll stats every file.
    watch: Option<Inotify>,
}

/// What the watch reports about the directory since the last look.
enum Watched {
    /// Nothing happened: the files are as last scanned.
    Quiet,
    /// Something may have changed: scan.
    Changed,
    /// The watch is gone (the directory was removed or moved, the queue
    /// overflowed, or reading failed): scan, and set up a new watch first.
    Lost,
}

/// Directory events that can change a scan's outcome.
fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// One scan's outcome.
#[derive(Debug, Default)]
pub struct Scan {
    /// The records, by `(namespace, name)`.
    pub pods: BTreeMap<PodKey, PodRecord>,
    /// Files that could not be read or parsed (they are skipped, not fatal:
    /// one bad record must not unenrol every other pod).
    pub errors: Vec<Error>,
}

impl DirSource {
    /// Watches `dir`; records with a `node` other than `node` are ignored.
    pub fn new(dir: impl Into<PathBuf>, node: Option<String>) -> Self {
        Self {
            dir: dir.into(),
            node,
            stamp: BTreeMap::new(),
            scanned: false,
            watch: None,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory if anything changed since the last call;
    /// `Ok(None)` when nothing did. A missing directory reads as empty.
    ///
    /// The files are stat'ed only when the directory's inotify watch has
    /// seen an event since the last call (or there is no watch); the
    /// stamps then decide, as without a watch. The watch is set up before
    /// the scan it vouches for, so a change during the scan is seen next
    /// time.
    pub fn poll(&mut self) -> Result<Option<Scan>, Error> {
        match self.watched() {
            Watched::Quiet if self.scanned => return Ok(None),
            Watched::Quiet | Watched::Changed => {}
            Watched::Lost => self.watch = Self::watch(&self.dir),
        }
        let stamp = self.stamps()?;
        if self.scanned && stamp == self.stamp {
            return Ok(None);
        }
        self.stamp = stamp;
        self.scanned = true;
        Ok(Some(self.read()))
    }

    /// Reads every record now.
    pub fn read(&self) -> Scan {
        let mut scan = Scan::default();
        for path in self.stamp.keys() {
            match read_record(path) {
                Ok(p) => {
                    if self.node.is_some() && p.node.is_some() && p.node != self.node {
                        continue;
                    }
                    scan.pods.insert(p.key(), p);
                }
                Err(e) => scan.errors.push(e),
            }
        }
        scan
    }

    /// A watch on `dir`, or `None` (no inotify, or no directory yet).
    fn watch(dir: &Path) -> Option<Inotify> {
        let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        watch.add_watch(dir, watch_mask()).ok()?;
        Some(watch)
    }

    /// Drains the watch's events.
    fn watched(&self) -> Watched {
        let Some(watch) = &self.watch else {
            return Watched::Lost;
        };
        let mut changed = false;
        loop {
            match watch.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    let gone = AddWatchFlags::IN_Q_OVERFLOW
                        | AddWatchFlags::IN_IGNORED
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF;
                    if events.iter().any(|e| e.mask.intersects(gone)) {
                        return Watched::Lost;
                    }
                    changed = true;
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => return Watched::Lost,
            }
        }
        if changed {
            Watched::Changed
        } else {
            Watched::Quiet
        }
    }

    fn stamps(&self) -> Result<BTreeMap<PathBuf, (SystemTime, u64)>, Error> {
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("reading {}", self.dir.display()), e)),
        };
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("reading {}", self.dir.display()), e))?;
            let path = entry.path();
            let is_record = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if !is_record {
                continue;
            }
            // A file removed between listing and stat is simply gone.
            if let Ok(meta) = entry.metadata()
                && meta.is_file()
            {
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.insert(path, (mtime, meta.len()));
            }
        }
        Ok(out)
    }
}

/// Parses one record file (JSON if it ends in `.json`, YAML otherwise).
pub fn read_record(path: &Path) -> Result<PodRecord, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())
    };
    parsed.map_err(|reason| Error::Record {
        path: path.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ambit-cni-src-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn directory_scan_sees_adds_edits_removals_and_skips_bad_files() {
        let d = tmpdir("scan");
        let mut s = DirSource::new(&d, Some("n0".into()));
        assert!(s.poll().expect("poll").expect("first scan").pods.is_empty());
        assert!(s.poll().expect("poll").is_none());
        std::fs::write(
            d.join("a.yaml"),
            "name: a\nnamespace: x\nuid: ua\nips: [10.0.0.1]\n",
        )
        .expect("write");
        std::fs::write(
            d.join("b.json"),
            r#"{"name":"b","namespace":"x","uid":"ub","node":"n1"}"#,
        )
        .expect("write");
        std::fs::write(d.join("c.yaml"), "name: [").expect("write");
        std::fs::write(d.join("notes.txt"), "ignored").expect("write");
        let scan = s.poll().expect("poll").expect("changed");
        assert_eq!(scan.pods.len(), 1, "b is on another node");
        assert_eq!(scan.errors.len(), 1, "c is malformed");
        assert!(s.poll().expect("poll").is_none(), "unchanged");
        std::fs::remove_file(d.join("a.yaml")).expect("rm");
        let scan = s.poll().expect("poll").expect("changed");
        assert!(scan.pods.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn in_place_edits_and_a_replaced_directory_are_seen() {
        use std::io::Write;
        let d = tmpdir("watch");
        let mut s = DirSource::new(&d, None);
        assert!(s.poll().expect("poll").expect("first scan").pods.is_empty());
        std::fs::write(d.join("a.yaml"), "name: a\nnamespace: x\nuid: ua\n").expect("write");
        assert_eq!(s.poll().expect("poll").expect("added").pods.len(), 1);
        assert!(s.poll().expect("poll").is_none(), "quiet");
        // Edited in place (no rename): the watch sees the write.
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("a.yaml"))
            .and_then(|mut f| f.write_all(b"ips: [10.0.0.9]\n"))
            .expect("append");
        let scan = s.poll().expect("poll").expect("edited");
        let pod = scan.pods.values().next().expect("pod");
        assert_eq!(
            pod.ips,
            vec!["10.0.0.9".parse::<std::net::IpAddr>().expect("ip")]
        );
        // The directory removed, then made again with another record.
        std::fs::remove_dir_all(&d).expect("rm dir");
        assert!(s.poll().expect("poll").expect("gone").pods.is_empty());
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("b.yaml"), "name: b\nnamespace: x\nuid: ub\n").expect("write");
        let scan = s.poll().expect("poll").expect("back");
        assert_eq!(scan.pods.len(), 1);
        assert!(s.poll().expect("poll").is_none(), "quiet again");
        std::fs::remove_file(d.join("b.yaml")).expect("rm");
        assert!(s.poll().expect("poll").expect("removed").pods.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }
}
