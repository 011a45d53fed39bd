//! The sandbox journal: the plugin sandboxes the agent remembers across
//! restarts, as one append-only file of JSON lines in the sandbox
//! directory (`sandboxes.jsonl`): `{"add":EVENT}` when an ADD is taken,
//! `{"del":[NAMESPACE,NAME]}` when a DEL forgets it.
//!
//! One append per event instead of a new file per pod: creating a file
//! costs an inode, ~0.2 ms each on this project's ext4 test machine
//! (a quarter of the agent's time per pod, issue 21), an append a few
//! microseconds. The file is rewritten (through a temporary file and a
//! rename) with only the live sandboxes at start and whenever it holds
//! more than twice as many lines as there are sandboxes (plus a margin),
//! so it stays proportional to the pods on the node.
//!
//! A line cut short by a crash (the last one, written before its ADD was
//! answered) is skipped when read. Records of the former layout (one JSON
//! file per pod) are still read at start and removed once the journal
//! holds them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::Error;
use crate::event::PodEvent;
use crate::pod::PodKey;

/// The journal's file name in the sandbox directory.
pub(crate) const FILE: &str = "sandboxes.jsonl";

/// Lines beyond twice the live sandboxes before a rewrite.
const SLACK: usize = 1024;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Add(PodEvent),
    Del(String, String),
}

/// The journal of one sandbox directory.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    /// Open for appending once the first line is written.
    file: Option<File>,
    /// Lines in the file.
    lines: usize,
    /// An append failed and may have left part of a line: rewrite before
    /// appending again, so the next line does not run into it.
    torn: bool,
}

impl Journal {
    /// The journal in `dir` (nothing is opened yet).
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE),
            file: None,
            lines: 0,
            torn: false,
        }
    }

    /// The sandboxes the journal holds, by pod, in the order written; a
    /// missing file holds none. Unreadable lines are skipped (with a log
    /// line unless it is a last line cut short).
    pub(crate) fn read(&mut self) -> Result<BTreeMap<PodKey, PodEvent>, Error> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(format!("reading {}", self.path.display()), e)),
        };
        let mut out = BTreeMap::new();
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        self.lines = lines.len();
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<Entry>(line) {
                Ok(Entry::Add(e)) => {
                    out.insert((e.pod_namespace.clone(), e.pod_name.clone()), e);
                }
                Ok(Entry::Del(ns, name)) => {
                    out.remove(&(ns, name));
                }
                Err(_) if i + 1 == lines.len() && !complete => {}
                Err(e) => {
                    warn!(journal = %self.path.display(), line = i + 1, error = %e, "skipping an unreadable sandbox journal line");
                }
            }
        }
        Ok(out)
    }

    /// Appends that `e`'s sandbox was taken.
    pub(crate) fn add(&mut self, e: &PodEvent) -> Result<(), Error> {
        self.append(&Entry::Add(e.clone()))
    }

    /// Appends that the sandbox of `key` was forgotten.
    pub(crate) fn del(&mut self, key: &PodKey) -> Result<(), Error> {
        self.append(&Entry::Del(key.0.clone(), key.1.clone()))
    }

    fn append(&mut self, entry: &Entry) -> Result<(), Error> {
        if self.torn {
            return Err(Error::invalid(
                format!("{}", self.path.display()),
                "a previous append failed; waiting for the journal to be rewritten",
            ));
        }
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| Error::invalid("sandbox journal entry", e.to_string()))?;
        line.push(b'\n');
        let at = || format!("appending to {}", self.path.display());
        let file = match &mut self.file {
            Some(f) => f,
            slot => slot.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| Error::io(at(), e))?,
            ),
        };
        // One write: an O_APPEND write of a line lands whole or, cut by a
        // crash, as the last line (skipped when read).
        if let Err(e) = file.write_all(&line) {
            self.file = None;
            self.torn = true;
            return Err(Error::io(at(), e));
        }
        self.lines += 1;
        Ok(())
    }

    /// Whether the journal has grown enough over `live` sandboxes to be
    /// rewritten.
    pub(crate) fn due(&self, live: usize) -> bool {
        self.torn || self.lines > 2 * live + SLACK
    }

    /// Rewrites the journal to hold exactly `live`, atomically (a
    /// temporary file renamed over it).
    pub(crate) fn rewrite<'a>(
        &mut self,
        live: impl IntoIterator<Item = &'a PodEvent>,
    ) -> Result<(), Error> {
        let mut text = Vec::new();
        let mut n = 0;
        for e in live {
            let line = serde_json::to_vec(&Entry::Add(e.clone()))
                .map_err(|e| Error::invalid("sandbox journal entry", e.to_string()))?;
            text.extend_from_slice(&line);
            text.push(b'\n');
            n += 1;
        }
        // The handle on the old file must not take the next appends.
        self.file = None;
        super::write_atomic(&self.path, &text)?;
        self.lines = n;
        self.torn = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str) -> PodEvent {
        PodEvent {
            netns: format!("/run/netns/{name}"),
            container_id: "c".into(),
            ifname: "eth0".into(),
            pod_name: name.into(),
            pod_namespace: "ns".into(),
            pod_uid: Some(format!("uid-{name}")),
            ips: vec!["10.0.0.1".parse().expect("ip")],
            netns_id: None,
        }
    }

    #[test]
    fn replays_adds_and_dels_skips_a_torn_last_line_and_rewrites() {
        let dir = std::env::temp_dir().join(format!("ambit-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut j = Journal::new(&dir);
        assert!(j.read().expect("read").is_empty(), "no file, no sandboxes");
        j.add(&ev("a")).expect("add");
        j.add(&ev("b")).expect("add");
        let mut a2 = ev("a");
        a2.container_id = "c2".into();
        j.add(&a2).expect("add");
        j.del(&("ns".into(), "b".into())).expect("del");
        // A crash in the middle of the next line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(FILE))
            .expect("open");
        f.write_all(br#"{"add":{"netns":"/run/ne"#).expect("torn");
        drop(f);
        let mut j = Journal::new(&dir);
        let got = j.read().expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(got[&("ns".into(), "a".into())], a2);
        assert!(!j.due(1));
        j.rewrite(got.values()).expect("rewrite");
        j.add(&ev("c")).expect("add after rewrite");
        let text = std::fs::read_to_string(dir.join(FILE)).expect("read");
        assert_eq!(text.lines().count(), 2, "{text}");
        let got = Journal::new(&dir).read().expect("read");
        assert_eq!(got.len(), 2);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
