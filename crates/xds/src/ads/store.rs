//! The versioned in-memory resource store an [`AdsServer`](super::AdsServer)
//! serves from.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use prost::Message;
use tokio::sync::watch;

use crate::{proto::protobuf::Any, resource::to_any};

/// One stored resource.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub(super) version: String,
    pub(super) resource: Any,
}

/// Resources by type URL, then name.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Source of automatic versions; only grows.
    next_version: u64,
    pub(super) types: HashMap<String, BTreeMap<String, Entry>>,
}

/// Resources by type URL and name, each with its own version. Cheap to
/// clone (a shared handle); every change wakes the servers' streams, which
/// push the difference to their subscribers.
#[derive(Debug, Clone)]
pub struct Store {
    state: Arc<Mutex<State>>,
    /// Bumped after every effective change; each stream holds a receiver.
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere mid-update; the map
        // itself is still consistent (each update is a single insert/remove).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Inserts or replaces a resource with an automatic version; returns
    /// its version. Storing identical bytes again changes nothing.
    pub fn insert(&self, type_url: &str, name: impl Into<String>, resource: Any) -> String {
        let version = self.lock().upsert(type_url, name.into(), resource, None);
        if version.1 {
            self.notify();
        }
        version.0
    }

    /// Inserts or replaces a resource with the given version.
    pub fn insert_versioned(
        &self,
        type_url: &str,
        name: impl Into<String>,
        version: impl Into<String>,
        resource: Any,
    ) {
        let changed = self
            .lock()
            .upsert(type_url, name.into(), resource, Some(version.into()))
            .1;
        if changed {
            self.notify();
        }
    }

    /// Inserts a message under its own type URL (`M::type_url()`).
    pub fn insert_message<M: Message + prost::Name>(
        &self,
        name: impl Into<String>,
        message: &M,
    ) -> String {
        self.insert(&M::type_url(), name, to_any(message))
    }

    /// Applies many inserts and removals of one type as one change (one
    /// push to each subscriber).
    pub fn update<I, R>(&self, type_url: &str, upserts: I, removals: R)
    where
        I: IntoIterator<Item = (String, Any)>,
        R: IntoIterator<Item = String>,
    {
        let mut changed = false;
        {
            let mut state = self.lock();
            for (name, resource) in upserts {
                changed |= state.upsert(type_url, name, resource, None).1;
            }
            for name in removals {
                changed |= state.remove(type_url, &name);
            }
        }
        if changed {
            self.notify();
        }
    }

    /// Removes a resource; returns whether it existed.
    pub fn remove(&self, type_url: &str, name: &str) -> bool {
        let removed = self.lock().remove(type_url, name);
        if removed {
            self.notify();
        }
        removed
    }

    /// The version and body of a resource.
    pub fn get(&self, type_url: &str, name: &str) -> Option<(String, Any)> {
        self.lock()
            .types
            .get(type_url)
            .and_then(|m| m.get(name))
            .map(|e| (e.version.clone(), e.resource.clone()))
    }

    /// The names held for a type, sorted.
    pub fn names(&self, type_url: &str) -> Vec<String> {
        self.lock()
            .types
            .get(type_url)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// How many resources of a type are held.
    pub fn len(&self, type_url: &str) -> usize {
        self.lock().types.get(type_url).map_or(0, BTreeMap::len)
    }

    /// Whether no resource of a type is held.
    pub fn is_empty(&self, type_url: &str) -> bool {
        self.len(type_url) == 0
    }
}

impl State {
    /// Returns the resulting version and whether anything changed.
    fn upsert(
        &mut self,
        type_url: &str,
        name: String,
        resource: Any,
        version: Option<String>,
    ) -> (String, bool) {
        let entries = self.types.entry(type_url.to_owned()).or_default();
        if let Some(old) = entries.get(&name)
            && old.resource == resource
            && version.as_ref().is_none_or(|v| *v == old.version)
        {
            return (old.version.clone(), false);
        }
        let version = version.unwrap_or_else(|| {
            self.next_version += 1;
            self.next_version.to_string()
        });
        entries.insert(
            name,
            Entry {
                version: version.clone(),
                resource,
            },
        );
        (version, true)
    }

    fn remove(&mut self, type_url: &str, name: &str) -> bool {
        self.types
            .get_mut(type_url)
            .is_some_and(|m| m.remove(name).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(byte: u8) -> Any {
        Any {
            type_url: "t".into(),
            value: vec![byte],
        }
    }

    #[test]
    fn versions_change_only_with_content() {
        let store = Store::new();
        let mut changes = store.changes();
        let v1 = store.insert("t", "a", any(1));
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();
        assert_eq!(store.insert("t", "a", any(1)), v1);
        assert!(!changes.has_changed().expect("open"));
        let v2 = store.insert("t", "a", any(2));
        assert_ne!(v1, v2);
        assert_eq!(store.get("t", "a"), Some((v2, any(2))));
        assert!(store.remove("t", "a"));
        assert!(!store.remove("t", "a"));
        assert!(store.is_empty("t"));
    }

    #[test]
    fn batch_update() {
        let store = Store::new();
        store.update("t", (0..3).map(|i| (format!("n{i}"), any(i))), []);
        assert_eq!(store.names("t"), ["n0", "n1", "n2"]);
        store.update("t", [], ["n1".to_owned()]);
        assert_eq!(store.len("t"), 2);
        store.insert_versioned("t", "x", "v7", any(9));
        assert_eq!(store.get("t", "x").map(|(v, _)| v).as_deref(), Some("v7"));
    }
}
