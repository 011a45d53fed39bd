//! The agent's desired-state model, with no I/O: pod records from the pod
//! source and sandboxes from plugin events go in; the pods to enrol and the
//! enrolments to remove come out. [`crate::agent`] carries the changes out
//! through a [`crate::Dataplane`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use crate::event::PodEvent;
use crate::pod::{EnrolledPod, NetnsId, PodKey, PodRecord};

/// One enrolment to take away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The pod's uid, when known (unknown for stale kernel entries found
    /// after a restart).
    pub uid: Option<String>,
    /// The addresses to remove.
    pub ips: Vec<IpAddr>,
    /// The pod's netns, when known.
    pub netns: Option<PathBuf>,
    /// That netns's identity when it was enrolled: a namespace now found at
    /// the same path with another identity is someone else's.
    pub netns_id: Option<NetnsId>,
}

/// What a reconcile must do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Pods to enrol (new, changed, or missing from the kernel).
    pub add: Vec<EnrolledPod>,
    /// Enrolments to remove (gone, changed, or stale in the kernel).
    pub remove: Vec<Removal>,
}

impl Changes {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Why a pod is or is not enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It should be enrolled, as this.
    Enrol(EnrolledPod),
    /// The pod source does not know it.
    Unknown,
    /// The enrolment rules say no.
    NotAmbient,
    /// Known, but with no address or netns to act on yet.
    NotReady,
}

/// Desired and applied state.
#[derive(Debug, Default)]
pub struct State {
    /// Pod records from the pod source.
    pub source: BTreeMap<PodKey, PodRecord>,
    /// Sandboxes announced by the plugin (ADD), by pod.
    pub sandboxes: BTreeMap<PodKey, PodEvent>,
    /// What this agent has applied, by uid.
    pub enrolled: BTreeMap<String, EnrolledPod>,
    /// The data plane acts inside pods (in-pod capture): a pod whose
    /// network namespace is not known yet is not ready.
    pub require_netns: bool,
    /// Network namespaces found by scanning `/proc` for pods that were
    /// running before the agent (no sandbox event), by pod uid.
    pub found: BTreeMap<String, (PathBuf, NetnsId)>,
    /// The data plane's observed addresses include IPv6 ones (in-pod
    /// capture with IPv6). When not, pods' IPv6 addresses are never
    /// expected among them, so a dual-stack pod is not re-enrolled at every
    /// resync for an address the data plane does not track.
    pub observes_ipv6: bool,
}

impl State {
    /// The decision for one pod.
    pub fn decide(&self, key: &PodKey) -> Decision {
        let Some(record) = self.source.get(key) else {
            return Decision::Unknown;
        };
        if !record.wants_ambient() {
            return Decision::NotAmbient;
        }
        // A sandbox of an earlier pod with the same name does not count.
        let sandbox = self
            .sandboxes
            .get(key)
            .filter(|e| e.pod_uid.as_ref().is_none_or(|u| *u == record.uid));
        let ips = match sandbox {
            Some(e) if !e.ips.is_empty() => e.ips.clone(),
            _ => record.ips.clone(),
        };
        let (netns, netns_id) = match sandbox.filter(|e| !e.netns.is_empty()) {
            Some(e) => (Some(PathBuf::from(&e.netns)), e.netns_id),
            None => match (&record.netns, self.found.get(&record.uid)) {
                (Some(path), _) => (Some(path.clone()), None),
                (None, Some((path, id))) => (Some(path.clone()), Some(*id)),
                (None, None) => (None, None),
            },
        };
        if (ips.is_empty() && netns.is_none()) || (self.require_netns && netns.is_none()) {
            return Decision::NotReady;
        }
        Decision::Enrol(EnrolledPod {
            uid: record.uid.clone(),
            name: record.name.clone(),
            namespace: record.namespace.clone(),
            service_account: record.service_account.clone(),
            ips,
            netns,
            netns_id,
            dns_capture: record.dns_capture().ok().flatten(),
        })
    }

    /// Ambient pods the data plane cannot act on yet only because their
    /// network namespace is unknown (no sandbox event, no `netns` in the
    /// record, not found yet): pods that were running before the agent.
    pub fn without_netns(&self) -> Vec<&PodRecord> {
        if !self.require_netns {
            return Vec::new();
        }
        self.source
            .iter()
            .filter(|(k, r)| {
                r.wants_ambient()
                    && r.netns.is_none()
                    && !self.found.contains_key(&r.uid)
                    && !self.sandboxes.get(*k).is_some_and(|e| {
                        !e.netns.is_empty() && e.pod_uid.as_ref().is_none_or(|u| *u == r.uid)
                    })
            })
            .map(|(_, r)| r)
            .collect()
    }

    /// Every pod that should be enrolled, by uid.
    pub fn desired(&self) -> BTreeMap<String, EnrolledPod> {
        self.source
            .keys()
            .filter_map(|k| match self.decide(k) {
                Decision::Enrol(p) => Some((p.uid.clone(), p)),
                _ => None,
            })
            .collect()
    }

    /// The changes that bring the applied state to the desired one. With
    /// `observed` (pod addresses found in the kernel), pods missing from
    /// the kernel are re-enrolled and addresses nobody wants are removed.
    pub fn changes(&self, observed: Option<&BTreeSet<IpAddr>>) -> Changes {
        let desired = self.desired();
        let mut c = Changes::default();
        for (uid, have) in &self.enrolled {
            if let Some(r) = removal(uid, have, desired.get(uid)) {
                c.remove.push(r);
            }
        }
        for (uid, want) in &desired {
            let missing = observed.is_some_and(|o| {
                want.ips
                    .iter()
                    .any(|ip| (ip.is_ipv4() || self.observes_ipv6) && !o.contains(ip))
            });
            if self.enrolled.get(uid) != Some(want) || missing {
                c.add.push(want.clone());
            }
        }
        if let Some(observed) = observed {
            let wanted: BTreeSet<IpAddr> = desired.values().flat_map(|p| p.ips.clone()).collect();
            let removed: BTreeSet<IpAddr> = c.remove.iter().flat_map(|r| r.ips.clone()).collect();
            let stale: Vec<IpAddr> = observed
                .iter()
                .filter(|ip| !wanted.contains(ip) && !removed.contains(ip))
                .copied()
                .collect();
            if !stale.is_empty() {
                c.remove.push(Removal {
                    uid: None,
                    ips: stale,
                    netns: None,
                    netns_id: None,
                });
            }
        }
        c
    }

    /// [`State::changes`] without `observed`, looking only at the pods of
    /// `keys` (those whose sandboxes changed): cost by the number of keys,
    /// not of pods.
    ///
    /// Exact only while every other pod's applied state is its desired one
    /// (the caller's to know: the last reconcile left nothing to do, and
    /// only the sandboxes of `keys` changed since). `None` when the keys
    /// alone cannot tell: an enrolment of the uid made under another pod
    /// name.
    pub fn changes_for<'a>(&self, keys: impl IntoIterator<Item = &'a PodKey>) -> Option<Changes> {
        let mut c = Changes::default();
        let mut seen = BTreeSet::new();
        for key in keys {
            // A pod the source does not know is not enrolled (the
            // precondition), and is not to be.
            let Some(record) = self.source.get(key) else {
                continue;
            };
            if !seen.insert(&record.uid) {
                continue;
            }
            let want = match self.decide(key) {
                Decision::Enrol(p) => Some(p),
                _ => None,
            };
            let have = self.enrolled.get(&record.uid);
            if let Some(h) = have
                && (&h.namespace, &h.name) != (&key.0, &key.1)
            {
                return None;
            }
            if let Some(r) = have.and_then(|h| removal(&record.uid, h, want.as_ref())) {
                c.remove.push(r);
            }
            if let Some(want) = want
                && have != Some(&want)
            {
                c.add.push(want);
            }
        }
        Some(c)
    }
}

/// What must be taken away of enrolment `have` (of `uid`) when the pod
/// should now be enrolled as `want` (or not at all).
fn removal(uid: &str, have: &EnrolledPod, want: Option<&EnrolledPod>) -> Option<Removal> {
    match want {
        None => Some(Removal {
            uid: Some(uid.to_owned()),
            ips: have.ips.clone(),
            netns: have.netns.clone(),
            netns_id: have.netns_id,
        }),
        // Same sandbox, same addresses, another choice (the DNS
        // annotation): nothing to take away, the data plane re-applies in
        // place when the pod is enrolled again.
        Some(want)
            if want != have
                && have.ips.iter().all(|ip| want.ips.contains(ip))
                && have.netns == want.netns
                && have.netns_id == want.netns_id =>
        {
            None
        }
        Some(want) if want != have => Some(Removal {
            uid: Some(uid.to_owned()),
            ips: have
                .ips
                .iter()
                .filter(|ip| !want.ips.contains(ip))
                .copied()
                .collect(),
            // The rules live in the old namespace only if it is not the
            // one the pod keeps.
            netns: have
                .netns
                .clone()
                .filter(|_| have.netns != want.netns || have.netns_id != want.netns_id),
            netns_id: have.netns_id,
        }),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::DATAPLANE_MODE_LABEL;

    fn rec(name: &str, ip: Option<&str>, ambient: bool) -> PodRecord {
        PodRecord {
            name: name.into(),
            namespace: "ns".into(),
            uid: format!("uid-{name}"),
            ips: ip.map(|i| i.parse().expect("ip")).into_iter().collect(),
            netns: None,
            node: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            namespace_labels: if ambient {
                [(DATAPLANE_MODE_LABEL.to_owned(), "ambient".to_owned())].into()
            } else {
                BTreeMap::new()
            },
            service_account: "default".into(),
        }
    }

    fn ev(name: &str, ip: &str) -> PodEvent {
        PodEvent {
            netns: format!("/run/netns/{name}"),
            container_id: "c".into(),
            ifname: "eth0".into(),
            pod_name: name.into(),
            pod_namespace: "ns".into(),
            pod_uid: None,
            ips: vec![ip.parse().expect("ip")],
            netns_id: None,
        }
    }

    fn key(name: &str) -> PodKey {
        ("ns".into(), name.into())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn commit(s: &mut State, c: &Changes) {
        for r in &c.remove {
            if let Some(u) = &r.uid {
                s.enrolled.remove(u);
            }
        }
        for p in &c.add {
            s.enrolled.insert(p.uid.clone(), p.clone());
        }
    }

    fn sorted(mut c: Changes) -> Changes {
        c.add.sort_by(|a, b| a.uid.cmp(&b.uid));
        c.remove.sort_by(|a, b| a.uid.cmp(&b.uid));
        c
    }

    #[test]
    fn changes_for_some_pods_match_the_full_changes() {
        let mut s = State {
            require_netns: true,
            ..State::default()
        };
        for n in ["a", "b", "c", "d"] {
            s.source.insert(key(n), rec(n, None, n != "d"));
        }
        s.sandboxes.insert(key("a"), ev("a", "10.0.0.1"));
        s.sandboxes.insert(key("b"), ev("b", "10.0.0.2"));
        let c = s.changes(None);
        assert_eq!(c.add.len(), 2);
        commit(&mut s, &c);
        // ADD of c and d (d not ambient), DEL of a, a recreated b, and an
        // event for a pod the source does not know.
        s.sandboxes.insert(key("c"), ev("c", "10.0.0.3"));
        s.sandboxes.insert(key("d"), ev("d", "10.0.0.4"));
        s.sandboxes.remove(&key("a"));
        let mut b = ev("b", "10.0.0.5");
        b.netns_id = Some(NetnsId { dev: 4, ino: 9 });
        s.sandboxes.insert(key("b"), b);
        s.sandboxes.insert(key("x"), ev("x", "10.0.0.6"));
        let keys = [key("a"), key("b"), key("c"), key("d"), key("x"), key("b")];
        let some = s.changes_for(&keys).expect("decidable");
        assert_eq!(sorted(some.clone()), sorted(s.changes(None)));
        assert_eq!(some.add.len(), 2, "b again and c");
        assert_eq!(some.remove.len(), 2, "a, and b's old sandbox");
        commit(&mut s, &some);
        assert!(s.changes(None).is_empty());
        assert_eq!(s.changes_for(&keys), Some(Changes::default()));
        // An enrolment of the uid under another pod name: not decidable.
        let mut moved = s.enrolled["uid-b"].clone();
        moved.name = "e".into();
        s.enrolled.insert("uid-b".into(), moved);
        assert_eq!(s.changes_for(&[key("b")]), None);
    }

    #[test]
    fn decisions() {
        let mut s = State::default();
        assert_eq!(s.decide(&key("a")), Decision::Unknown);
        s.source.insert(key("a"), rec("a", None, true));
        assert_eq!(s.decide(&key("a")), Decision::NotReady);
        s.sandboxes.insert(key("a"), ev("a", "10.0.0.5"));
        let Decision::Enrol(p) = s.decide(&key("a")) else {
            panic!("should enrol")
        };
        assert_eq!(p.ips, vec![ip("10.0.0.5")]);
        assert_eq!(p.netns, Some(PathBuf::from("/run/netns/a")));
        s.source.insert(key("b"), rec("b", Some("10.0.0.6"), false));
        assert_eq!(s.decide(&key("b")), Decision::NotAmbient);
        // A sandbox left by a previous pod of the same name is ignored.
        let mut old = ev("c", "10.0.0.7");
        old.pod_uid = Some("uid-old".into());
        s.sandboxes.insert(key("c"), old);
        s.source.insert(key("c"), rec("c", None, true));
        assert_eq!(s.decide(&key("c")), Decision::NotReady);
        // In-pod capture: an address alone is not enough, the netns is.
        s.source.insert(key("d"), rec("d", Some("10.0.0.8"), true));
        assert!(matches!(s.decide(&key("d")), Decision::Enrol(_)));
        s.require_netns = true;
        assert_eq!(s.decide(&key("d")), Decision::NotReady);
        s.sandboxes.insert(key("d"), ev("d", "10.0.0.8"));
        assert!(matches!(s.decide(&key("d")), Decision::Enrol(_)));
    }

    #[test]
    fn changes_add_remove_and_update() {
        let mut s = State::default();
        s.source.insert(key("a"), rec("a", Some("10.0.0.1"), true));
        s.source.insert(key("b"), rec("b", Some("10.0.0.2"), true));
        let c = s.changes(None);
        assert_eq!(c.add.len(), 2);
        assert!(c.remove.is_empty());
        commit(&mut s, &c);
        assert!(s.changes(None).is_empty(), "converged");

        // b leaves, a changes address.
        s.source.remove(&key("b"));
        s.source.insert(key("a"), rec("a", Some("10.0.0.9"), true));
        let c = s.changes(None);
        assert_eq!(c.add.len(), 1);
        assert_eq!(c.add[0].ips, vec![ip("10.0.0.9")]);
        let mut removed: Vec<_> = c.remove.iter().flat_map(|r| r.ips.clone()).collect();
        removed.sort();
        assert_eq!(removed, vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        commit(&mut s, &c);
        assert!(s.changes(None).is_empty());
    }

    #[test]
    fn a_recreated_sandbox_replaces_the_enrolment_and_a_repeat_is_a_no_op() {
        let mut s = State {
            require_netns: true,
            ..State::default()
        };
        s.source.insert(key("a"), rec("a", None, true));
        let mut first = ev("a", "10.0.0.5");
        first.pod_uid = Some("uid-a".into());
        first.netns_id = Some(NetnsId { dev: 4, ino: 100 });
        s.sandboxes.insert(key("a"), first.clone());
        let c = s.changes(None);
        assert_eq!(c.add.len(), 1);
        commit(&mut s, &c);
        // The same sandbox again: nothing to do.
        s.sandboxes.insert(key("a"), first.clone());
        assert!(s.changes(None).is_empty());
        // Same uid, same path, new namespace: the old enrolment goes (its
        // namespace named with the old identity), the new one comes.
        let mut second = first;
        second.container_id = "c2".into();
        second.netns_id = Some(NetnsId { dev: 4, ino: 200 });
        s.sandboxes.insert(key("a"), second);
        let c = s.changes(None);
        assert_eq!(c.remove.len(), 1);
        assert_eq!(c.remove[0].uid.as_deref(), Some("uid-a"));
        assert_eq!(c.remove[0].netns_id, Some(NetnsId { dev: 4, ino: 100 }));
        assert!(
            c.remove[0].netns.is_some(),
            "the old namespace's rules are removed"
        );
        assert_eq!(c.add.len(), 1);
        assert_eq!(c.add[0].netns_id, Some(NetnsId { dev: 4, ino: 200 }));
    }

    #[test]
    fn pods_without_a_netns_are_looked_up_until_found() {
        let mut s = State {
            require_netns: true,
            ..State::default()
        };
        s.source.insert(key("a"), rec("a", Some("10.0.0.5"), true));
        s.source.insert(key("b"), rec("b", Some("10.0.0.6"), false));
        let wanted: Vec<_> = s.without_netns().iter().map(|r| r.uid.clone()).collect();
        assert_eq!(wanted, ["uid-a"], "ambient pods only");
        s.found.insert(
            "uid-a".into(),
            (PathBuf::from("/proc/1/ns/net"), NetnsId { dev: 4, ino: 7 }),
        );
        assert!(s.without_netns().is_empty());
        let Decision::Enrol(p) = s.decide(&key("a")) else {
            panic!("found pods enrol")
        };
        assert_eq!(p.netns, Some(PathBuf::from("/proc/1/ns/net")));
        assert_eq!(p.netns_id, Some(NetnsId { dev: 4, ino: 7 }));
    }

    #[test]
    fn ipv6_addresses_count_only_when_observed() {
        let mut s = State::default();
        let mut r = rec("a", Some("10.0.0.1"), true);
        r.ips.push(ip("fd00::1"));
        s.source.insert(key("a"), r);
        let c = s.changes(None);
        commit(&mut s, &c);
        let v4: BTreeSet<IpAddr> = [ip("10.0.0.1")].into();
        assert!(s.changes(Some(&v4)).is_empty(), "v6 not tracked");
        s.observes_ipv6 = true;
        assert_eq!(s.changes(Some(&v4)).add.len(), 1, "v6 tracked and missing");
        let both: BTreeSet<IpAddr> = [ip("10.0.0.1"), ip("fd00::1")].into();
        assert!(s.changes(Some(&both)).is_empty());
    }

    #[test]
    fn a_dns_annotation_change_re_enrols_in_place() {
        let mut s = State::default();
        s.source.insert(key("a"), rec("a", Some("10.0.0.1"), true));
        let c = s.changes(None);
        commit(&mut s, &c);
        let mut r = rec("a", Some("10.0.0.1"), true);
        r.annotations
            .insert(crate::pod::DNS_CAPTURE_ANNOTATION.into(), "false".into());
        s.source.insert(key("a"), r);
        let c = s.changes(None);
        assert!(c.remove.is_empty(), "nothing taken away: {c:?}");
        assert_eq!(c.add.len(), 1);
        assert_eq!(c.add[0].dns_capture, Some(false));
        commit(&mut s, &c);
        assert!(s.changes(None).is_empty());
    }

    #[test]
    fn restart_reconcile_uses_the_kernel() {
        // A fresh agent: nothing applied in memory; the kernel has a (still
        // wanted, but missing its route) and z (deleted while down).
        let mut s = State::default();
        s.source.insert(key("a"), rec("a", Some("10.0.0.1"), true));
        s.source.insert(key("n"), rec("n", Some("10.0.0.3"), true));
        let observed: BTreeSet<IpAddr> = [ip("10.0.0.1"), ip("10.0.0.99")].into();
        let c = s.changes(Some(&observed));
        let added: Vec<_> = c.add.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(added, vec!["a", "n"]);
        assert_eq!(
            c.remove,
            vec![Removal {
                uid: None,
                ips: vec![ip("10.0.0.99")],
                netns: None,
                netns_id: None,
            }]
        );
        commit(&mut s, &c);
        let all: BTreeSet<IpAddr> = [ip("10.0.0.1"), ip("10.0.0.3")].into();
        assert!(s.changes(Some(&all)).is_empty());
        // An entry removed behind our back is put back.
        let partial: BTreeSet<IpAddr> = [ip("10.0.0.1")].into();
        assert_eq!(s.changes(Some(&partial)).add.len(), 1);
    }
}
