//! A plan: everything one capture mode needs in one namespace, as data.
//!
//! `apply` is idempotent and resumable — every step converges on its part of
//! the plan whatever state it finds, so a process killed between steps is
//! repaired by the next `apply`. `verify` reports drift; `remove` deletes
//! everything the plan owns and nothing else.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use ambit_netlink::{NETLINK_NETFILTER, NETLINK_ROUTE, Socket as NlSocket};
use ambit_netns::NetNs;

use crate::backend::{self, Backend};
use crate::error::{Error, Result};
use crate::ipset::{IpSetEntry, IpSetSpec, Ipset};
use crate::netfilter::Ruleset;
use crate::nftrules::{self, RuleWrites};
use crate::nftset::codec::Element;
use crate::nftset::{NftSets, SetUpdates};
use crate::route::{IpRule, Route, Rtnl, route_satisfies};

/// The steps of [`Plan::apply`], in order. Sets and packet-filter rules come
/// before routes and ip rules, so no traffic is diverted before the rules
/// that handle it exist; removal runs in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Write sysctls.
    Sysctls,
    /// Create sets (ipsets for iptables; nft sets live in the nft table).
    Sets,
    /// Write the packet-filter rules atomically.
    Netfilter,
    /// Add or replace routes.
    Routes,
    /// Add ip rules.
    Rules,
}

impl Step {
    /// Every step, in apply order.
    pub const ALL: [Step; 5] = [
        Step::Sysctls,
        Step::Sets,
        Step::Netfilter,
        Step::Routes,
        Step::Rules,
    ];
}

/// One difference between a plan and the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// A sysctl has another value.
    Sysctl {
        /// Key.
        key: String,
        /// Planned value.
        want: String,
        /// Kernel value (or the read error).
        have: String,
    },
    /// A planned set does not exist (or has another type or family).
    Set(String),
    /// The packet-filter rules differ: lines in the plan but not the
    /// kernel (`+`), and in the kernel but not the plan (`-`).
    Netfilter(Vec<String>),
    /// A planned route is missing.
    Route(Route),
    /// A planned ip rule is missing.
    Rule(IpRule),
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sysctl { key, want, have } => {
                write!(f, "sysctl {key} is {have:?}, want {want:?}")
            }
            Self::Set(s) => write!(f, "set {s} missing or different"),
            Self::Netfilter(lines) => {
                write!(f, "packet-filter rules differ:\n  {}", lines.join("\n  "))
            }
            Self::Route(r) => write!(f, "missing route: {r}"),
            Self::Rule(r) => write!(f, "missing rule: {r}"),
        }
    }
}

/// The netlink sockets of one namespace, opened on first use and kept for
/// every plan call given the same handle: a verify followed by an apply
/// (what enrolling a pod does) shares one route and one netfilter socket
/// instead of opening five, and [`NsHandle::open`] makes both in one trip
/// into the namespace.
#[derive(Debug)]
pub struct NsHandle<'a> {
    ns: &'a NetNs,
    rtnl: Option<Rtnl>,
    nft: Option<NlSocket>,
}

impl<'a> NsHandle<'a> {
    /// A handle on `ns` that opens each socket when first needed.
    pub fn lazy(ns: &'a NetNs) -> Self {
        Self {
            ns,
            rtnl: None,
            nft: None,
        }
    }

    /// A handle on `ns` with its route and netfilter sockets opened now,
    /// joining the namespace once for both.
    pub fn open(ns: &'a NetNs) -> Result<Self> {
        Self::open_with(ns, || ()).map(|(h, ())| h)
    }

    /// [`NsHandle::open`], running `also` inside the namespace in the same
    /// trip, and returning its result too.
    pub fn open_with<T, F>(ns: &'a NetNs, also: F) -> Result<(Self, T)>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let mut h = Self::lazy(ns);
        let (socks, extra) =
            NlSocket::open_many_with(Some(ns), &[NETLINK_ROUTE, NETLINK_NETFILTER], also)?;
        let mut socks = socks.into_iter();
        h.rtnl = socks.next().map(Rtnl::from_socket);
        h.nft = socks.next();
        Ok((h, extra))
    }

    /// The namespace.
    pub fn ns(&self) -> &'a NetNs {
        self.ns
    }

    /// Whether IPv6 is there and enabled in the namespace (its loopback
    /// holds `::1`), over the handle's route socket
    /// ([`Rtnl::loopback_has_ipv6`]).
    pub fn loopback_has_ipv6(&mut self) -> Result<bool> {
        self.rtnl()?.loopback_has_ipv6()
    }

    fn rtnl(&mut self) -> Result<&mut Rtnl> {
        match &mut self.rtnl {
            Some(r) => Ok(r),
            slot => Ok(slot.insert(Rtnl::open(Some(self.ns))?)),
        }
    }

    fn nft(&mut self) -> Result<&mut NlSocket> {
        match &mut self.nft {
            Some(s) => Ok(s),
            slot => Ok(slot.insert(NlSocket::open(Some(self.ns), NETLINK_NETFILTER)?)),
        }
    }
}

/// Everything one capture mode needs in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What this plan is, for messages (e.g. `node host`).
    pub name: String,
    /// Sysctls as `(key, value)`, key in path or dotted form.
    pub sysctls: Vec<(String, String)>,
    /// Sets of pod addresses.
    pub sets: Vec<IpSetSpec>,
    /// Packet-filter chains, jumps and rules.
    pub netfilter: Ruleset,
    /// Routes.
    pub routes: Vec<Route>,
    /// ip rules.
    pub rules: Vec<IpRule>,
    /// How members of the plan's nft sets are written (in process by
    /// default).
    pub set_updates: SetUpdates,
    /// How the nft backend's table (sets, chains, rules) is written and
    /// read back for [`Plan::verify`] (in process by default).
    pub rule_writes: RuleWrites,
}

impl Plan {
    /// An empty plan whose nft rendering lives in `inet nft_table`.
    pub fn new(name: impl Into<String>, nft_table: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            sysctls: Vec::new(),
            sets: Vec::new(),
            netfilter: Ruleset::new(nft_table),
            routes: Vec::new(),
            rules: Vec::new(),
            set_updates: SetUpdates::default(),
            rule_writes: RuleWrites::default(),
        }
    }

    /// The ruleset as the backend sees it (nft sets declared in the table).
    fn ruleset(&self, backend: Backend) -> Cow<'_, Ruleset> {
        let declared = |name: &str| self.netfilter.sets.iter().any(|(n, _)| n == name);
        if !backend.nft_sets() || self.sets.iter().all(|s| declared(&s.name)) {
            // Nothing to add: no copy (this runs several times per pod).
            return Cow::Borrowed(&self.netfilter);
        }
        let mut rs = self.netfilter.clone();
        for s in &self.sets {
            if !rs.sets.iter().any(|(n, _)| n == &s.name) {
                rs.sets.push((s.name.clone(), s.family));
            }
        }
        Cow::Owned(rs)
    }

    /// Checks the whole plan without touching the kernel.
    pub fn validate(&self) -> Result<()> {
        for s in &self.sets {
            crate::ipset::check_set_name(&s.name)?;
        }
        self.netfilter.validate()?;
        for r in &self.routes {
            crate::route::check_table(r.table)?;
        }
        Ok(())
    }

    /// Applies every step. Idempotent.
    pub fn apply(&self, ns: &NetNs, backend: Backend) -> Result<()> {
        self.apply_in(&mut NsHandle::lazy(ns), backend)
    }

    /// [`Plan::apply`] with the sockets of `h`.
    pub fn apply_in(&self, h: &mut NsHandle<'_>, backend: Backend) -> Result<()> {
        self.validate()?;
        for step in Step::ALL {
            self.apply_step_in(h, backend, step)?;
        }
        Ok(())
    }

    /// Applies one step (see [`Step`]). Each step is idempotent on its own.
    pub fn apply_step(&self, ns: &NetNs, backend: Backend, step: Step) -> Result<()> {
        self.apply_step_in(&mut NsHandle::lazy(ns), backend, step)
    }

    fn apply_step_in(&self, h: &mut NsHandle<'_>, backend: Backend, step: Step) -> Result<()> {
        let ns = h.ns();
        match step {
            Step::Sysctls => {
                for (k, v) in &self.sysctls {
                    ns.set_sysctl(k, v)?;
                }
            }
            Step::Sets => {
                if !backend.nft_sets() && !self.sets.is_empty() {
                    let mut ipset = Ipset::open(Some(ns))?;
                    for s in &self.sets {
                        ipset.create(s)?;
                    }
                }
            }
            Step::Netfilter => match backend {
                Backend::Nft => match self.rule_writes {
                    RuleWrites::Netlink => nftrules::apply_on(h.nft()?, &self.ruleset(backend))?,
                    RuleWrites::NftCommand => backend::nft_apply(ns, &self.ruleset(backend))?,
                },
                Backend::Iptables => backend::xt_apply(ns, &self.ruleset(backend))?,
                #[cfg(feature = "nftnl")]
                Backend::Nftnl => crate::nftnl_backend::apply(ns, &self.ruleset(backend))?,
            },
            Step::Routes => {
                if !self.routes.is_empty() {
                    h.rtnl()?.add_routes(&self.routes)?;
                }
            }
            Step::Rules => {
                if !self.rules.is_empty() {
                    h.rtnl()?.add_rules(&self.rules)?;
                }
            }
        }
        Ok(())
    }

    /// Applies this plan in a namespace where `old` may be applied (another
    /// plan for the same nft table, such as the same profile with other
    /// options), then removes what `old` has and this plan lacks: its ip
    /// rules and routes, the chains this plan does not declare (with their
    /// jumps and rules), and with iptables, `old`'s ip6tables chains when
    /// this plan has no IPv6. Sets and sysctls are left alone.
    ///
    /// Traffic is never left uncaptured: the new rules are in place before
    /// anything of the old plan goes. Idempotent; with `old == self` it is
    /// [`Plan::apply`].
    pub fn apply_replacing(&self, old: &Plan, ns: &NetNs, backend: Backend) -> Result<()> {
        self.apply_replacing_in(old, &mut NsHandle::lazy(ns), backend)
    }

    /// [`Plan::apply_replacing`] with the sockets of `h`.
    pub fn apply_replacing_in(
        &self,
        old: &Plan,
        h: &mut NsHandle<'_>,
        backend: Backend,
    ) -> Result<()> {
        self.replace(old, h, backend, true)
    }

    /// [`Plan::apply_replacing_in`] right after a [`Plan::verify_in`] of
    /// this plan, in the same namespace, that found `drift`. With the nft
    /// backend the check listed the whole table, so when `old` shares it
    /// and no drift line shows something in the kernel that this plan
    /// lacks (a `-` line: always so in a namespace neither plan was ever
    /// applied in), there is nothing of `old` to delete from it and the
    /// deleting batch is not sent. `old`'s surplus ip rules and routes are
    /// removed as with [`Plan::apply_replacing_in`].
    pub fn apply_replacing_verified(
        &self,
        old: &Plan,
        h: &mut NsHandle<'_>,
        backend: Backend,
        drift: &[Drift],
    ) -> Result<()> {
        let kernel_has_more = drift.iter().any(|d| match d {
            Drift::Netfilter(lines) => lines.iter().any(|l| l.starts_with('-')),
            _ => false,
        });
        let same_table = old.netfilter.nft_table == self.netfilter.nft_table;
        let table_surplus = !(backend == Backend::Nft && same_table && !kernel_has_more);
        self.replace(old, h, backend, table_surplus)
    }

    /// Applies, then removes what `old` has beyond this plan; the packet
    /// filter's surplus only when `table_surplus`.
    fn replace(
        &self,
        old: &Plan,
        h: &mut NsHandle<'_>,
        backend: Backend,
        table_surplus: bool,
    ) -> Result<()> {
        self.apply_in(h, backend)?;
        if old == self {
            return Ok(());
        }
        let ns = h.ns();
        let rt = h.rtnl()?;
        let rules: Vec<IpRule> = old
            .rules
            .iter()
            .filter(|r| !self.rules.contains(r))
            .copied()
            .collect();
        rt.del_rules(&rules)?;
        let routes: Vec<Route> = old
            .routes
            .iter()
            .filter(|r| !self.routes.contains(r))
            .cloned()
            .collect();
        rt.del_routes(&routes)?;
        if !table_surplus {
            return Ok(());
        }
        let (was, now) = (old.ruleset(backend), self.ruleset(backend));
        match backend {
            Backend::Nft => match self.rule_writes {
                RuleWrites::Netlink => nftrules::remove_surplus_on(h.nft()?, &was, &now)?,
                RuleWrites::NftCommand => backend::nft_remove_surplus(ns, &was, &now)?,
            },
            Backend::Iptables => {
                backend::xt_remove(ns, &was.surplus_over(&now))?;
                if was.ipv6 && !now.ipv6 {
                    backend::xt_remove_family(ns, &was, crate::route::Family::V6)?;
                }
            }
            #[cfg(feature = "nftnl")]
            Backend::Nftnl => crate::nftnl_backend::remove_surplus(ns, &was, &now)?,
        }
        Ok(())
    }

    /// Removes everything the plan owns: ip rules, routes, the packet-filter
    /// table or chains, and the sets. Sysctls are left as they are (they
    /// are shared with other users of the namespace). Idempotent.
    pub fn remove(&self, ns: &NetNs, backend: Backend) -> Result<()> {
        let mut rt = Rtnl::open(Some(ns))?;
        rt.del_rules(&self.rules)?;
        rt.del_routes(&self.routes)?;
        match backend {
            Backend::Nft => match self.rule_writes {
                RuleWrites::Netlink => nftrules::remove(ns, &self.ruleset(backend))?,
                RuleWrites::NftCommand => backend::nft_remove(ns, &self.ruleset(backend))?,
            },
            Backend::Iptables => backend::xt_remove(ns, &self.ruleset(backend))?,
            #[cfg(feature = "nftnl")]
            Backend::Nftnl => crate::nftnl_backend::remove(ns, &self.ruleset(backend))?,
        }
        if !backend.nft_sets() && !self.sets.is_empty() {
            let mut ipset = Ipset::open(Some(ns))?;
            for s in &self.sets {
                ipset.destroy(&s.name)?;
            }
        }
        Ok(())
    }

    /// The packet-filter part as the kernel shows it, for this plan
    /// applied alone in a scratch namespace: the canonical text to compare
    /// with. Made once per ruleset and process (the text of a ruleset
    /// determines it), not once per check.
    fn reference_listing(&self, backend: Backend) -> Result<Option<String>> {
        let rs = self.ruleset(backend);
        match (backend, self.rule_writes) {
            (Backend::Iptables, _) => {
                let sets = format!("{:?}", self.sets);
                nftrules::cached("iptables", &rs, &sets, || {
                    let scratch = NetNs::create_anonymous()?;
                    let mut ipset = Ipset::open(Some(&scratch))?;
                    for s in &self.sets {
                        ipset.create(s)?;
                    }
                    backend::xt_apply(&scratch, &rs)?;
                    backend::xt_listing(&scratch, &rs)
                })
            }
            (Backend::Nft, RuleWrites::Netlink) => nftrules::reference(&rs),
            _ => nftrules::cached("nft -f", &rs, "", || {
                let scratch = NetNs::create_anonymous()?;
                backend::nft_apply(&scratch, &rs)?;
                backend::nft_listing(&scratch, &rs.nft_table)
            }),
        }
    }

    /// Compares the plan with the kernel; an empty list means no drift.
    pub fn verify(&self, ns: &NetNs, backend: Backend) -> Result<Vec<Drift>> {
        self.verify_in(&mut NsHandle::lazy(ns), backend)
    }

    /// [`Plan::verify`] with the sockets of `h`.
    pub fn verify_in(&self, h: &mut NsHandle<'_>, backend: Backend) -> Result<Vec<Drift>> {
        let ns = h.ns();
        let mut drift = Vec::new();
        for (k, v) in &self.sysctls {
            let have = ns.sysctl(k).unwrap_or_else(|e| e.to_string());
            if have != *v {
                drift.push(Drift::Sysctl {
                    key: k.clone(),
                    want: v.clone(),
                    have,
                });
            }
        }
        let rs = self.ruleset(backend);
        if backend.nft_sets() {
            // nft sets are part of the table listing compared below.
        } else {
            let mut ipset = Ipset::open(Some(ns))?;
            for s in &self.sets {
                let ok = ipset
                    .list(&s.name)?
                    .is_some_and(|i| i.type_name == "hash:ip" && i.family == Some(s.family));
                if !ok {
                    drift.push(Drift::Set(s.name.clone()));
                }
            }
        }
        let want = self.reference_listing(backend)?;
        let have = match (backend, self.rule_writes) {
            (Backend::Iptables, _) => backend::xt_listing(ns, &rs)?,
            (Backend::Nft, RuleWrites::Netlink) => nftrules::listing_on(h.nft()?, &rs.nft_table)?,
            _ => backend::nft_listing(ns, &rs.nft_table)?,
        };
        if want != have {
            drift.push(Drift::Netfilter(diff_lines(
                want.as_deref(),
                have.as_deref(),
            )));
        }
        let rt = h.rtnl()?;
        let mut tables: Vec<(crate::route::Family, u32)> =
            self.routes.iter().map(|r| (r.family(), r.table)).collect();
        tables.sort();
        tables.dedup();
        let mut have_routes = Vec::new();
        for (f, t) in tables {
            have_routes.extend(rt.routes(f, t)?);
        }
        for r in &self.routes {
            if !have_routes.iter().any(|h| route_satisfies(h, r)) {
                drift.push(Drift::Route(r.clone()));
            }
        }
        let mut have_rules = rt.rules(crate::route::Family::V4)?;
        have_rules.extend(rt.rules(crate::route::Family::V6)?);
        for r in &self.rules {
            if !have_rules.contains(r) {
                drift.push(Drift::Rule(*r));
            }
        }
        Ok(drift)
    }

    /// Adds members to one of the plan's sets, with the backend's set kind.
    pub fn add_members(
        &self,
        ns: &NetNs,
        backend: Backend,
        set: &str,
        entries: &[IpSetEntry],
    ) -> Result<()> {
        self.add_members_reusing(ns, backend, set, entries, &mut None)
    }

    /// [`Plan::add_members`] for a caller that adds members often (an agent,
    /// per pod): when the set is written over nfnetlink, `sets` keeps the
    /// namespace's netfilter socket between calls (opened on first use), so
    /// a call costs no socket. A failed call drops it; the next opens anew.
    pub fn add_members_reusing(
        &self,
        ns: &NetNs,
        backend: Backend,
        set: &str,
        entries: &[IpSetEntry],
        sets: &mut Option<NftSets>,
    ) -> Result<()> {
        let spec = self.set(set)?;
        if backend.nft_sets() {
            for e in entries {
                if crate::route::Family::of(e.ip) != spec.family {
                    return Err(Error::FamilyMismatch {
                        item: format!("set {set}"),
                        addr: e.ip,
                    });
                }
            }
            let table = &self.netfilter.nft_table;
            match self.set_updates {
                SetUpdates::Netlink => {
                    let els: Vec<Element> = entries
                        .iter()
                        .map(|e| Element {
                            ip: e.ip,
                            comment: e.comment.clone(),
                        })
                        .collect();
                    let handle = match sets.take() {
                        Some(h) => h,
                        None => NftSets::open(Some(ns))?,
                    };
                    let h = sets.insert(handle);
                    let added = h.add(table, set, &els);
                    if added.is_err() {
                        *sets = None;
                    }
                    added
                }
                SetUpdates::NftCommand => backend::nft_add_elements(ns, table, set, entries),
            }
        } else {
            Ipset::open(Some(ns))?.add(spec, entries)
        }
    }

    /// Removes members from one of the plan's sets; absent ones are ignored.
    pub fn del_members(
        &self,
        ns: &NetNs,
        backend: Backend,
        set: &str,
        ips: &[std::net::IpAddr],
    ) -> Result<()> {
        let spec = self.set(set)?;
        if backend.nft_sets() {
            let table = &self.netfilter.nft_table;
            match self.set_updates {
                SetUpdates::Netlink => NftSets::open(Some(ns))?.del(table, set, ips),
                SetUpdates::NftCommand => backend::nft_del_elements(ns, table, set, ips),
            }
        } else {
            let entries: Vec<IpSetEntry> = ips
                .iter()
                .map(|ip| IpSetEntry {
                    ip: *ip,
                    comment: None,
                })
                .collect();
            Ipset::open(Some(ns))?.del(spec, &entries)
        }
    }

    /// Members of one of the plan's sets.
    pub fn members(
        &self,
        ns: &NetNs,
        backend: Backend,
        set: &str,
    ) -> Result<Vec<std::net::IpAddr>> {
        self.set(set)?;
        if backend.nft_sets() {
            let table = &self.netfilter.nft_table;
            match self.set_updates {
                SetUpdates::Netlink => Ok(NftSets::open(Some(ns))?
                    .list(table, set)?
                    .into_iter()
                    .map(|e| e.ip)
                    .collect()),
                SetUpdates::NftCommand => backend::nft_elements(ns, table, set),
            }
        } else {
            Ok(Ipset::open(Some(ns))?
                .list(set)?
                .map(|i| i.entries.into_iter().map(|e| e.ip).collect())
                .unwrap_or_default())
        }
    }

    fn set(&self, name: &str) -> Result<&IpSetSpec> {
        self.sets
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::Invalid {
                what: format!("set {name}"),
                reason: format!("not part of plan {}", self.name),
            })
    }

    /// The plan as nft text plus the `ip`/`sysctl` commands, for humans.
    pub fn render_nft(&self) -> Result<String> {
        let mut s = self.render_header();
        s += &self.ruleset(Backend::Nft).nft_text()?;
        Ok(s)
    }

    /// The plan as `iptables-save` text plus the `ipset`/`ip`/`sysctl`
    /// commands, for humans and for hosts that keep iptables.
    pub fn render_iptables(&self) -> Result<String> {
        let mut s = self.render_header();
        for set in &self.sets {
            let _ = writeln!(s, "# {set}");
        }
        s += &self.netfilter.iptables_text(crate::route::Family::V4)?;
        if self.netfilter.ipv6 {
            s += "# ip6tables\n";
            s += &self.netfilter.iptables_text(crate::route::Family::V6)?;
        }
        Ok(s)
    }

    fn render_header(&self) -> String {
        let mut s = format!("# plan: {}\n", self.name);
        for (k, v) in &self.sysctls {
            let _ = writeln!(s, "# sysctl -w {}={v}", k.replace('/', "."));
        }
        for r in &self.routes {
            let _ = writeln!(s, "# {r}");
        }
        for r in &self.rules {
            let _ = writeln!(s, "# {r}");
        }
        s
    }
}

fn diff_lines(want: Option<&str>, have: Option<&str>) -> Vec<String> {
    let w: Vec<&str> = want.unwrap_or("").lines().collect();
    let h: Vec<&str> = have.unwrap_or("").lines().collect();
    let mut out: Vec<String> = w
        .iter()
        .filter(|l| !h.contains(l))
        .map(|l| format!("+ {l}"))
        .collect();
    out.extend(
        h.iter()
            .filter(|l| !w.contains(l))
            .map(|l| format!("- {l}")),
    );
    if out.is_empty() {
        out.push("(same lines, different order)".into());
    }
    out
}
