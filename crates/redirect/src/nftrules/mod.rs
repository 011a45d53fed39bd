//! The nft backend's table in process, in Rust: written as one nfnetlink
//! batch over our own socket inside the namespace, and read back over
//! nfnetlink for verification — no `nft` process, no C library.
//!
//! The messages are the ones the `nftnl` backend has libnftnl build (the
//! same chains, the same expressions in the same order as
//! `nft --debug=netlink` shows nft 1.0.6 emitting for our rule text), so
//! `nft list table` prints the same text whichever way the table was
//! written. Wire facts (`linux/netfilter/nf_tables.h`): every `u32`
//! attribute is big endian; data values nest under `NFTA_DATA_VALUE`,
//! verdicts under `NFTA_DATA_VERDICT`; registers are the legacy 16-byte
//! `NFT_REG_1`/`NFT_REG_2`; a rule is appended with `NLM_F_APPEND`, and a
//! `DELRULE` naming only table and chain flushes the chain.
//!
//! Verification reads the table back (the table, its sets, chains and
//! rules) and renders it canonically: handles, use counts and counter
//! values dropped, chains and sets sorted by name, rules in chain order.
//! The reference — what the kernel holds for the ruleset applied alone —
//! is made once per ruleset and process in a scratch namespace and kept
//! ([`reference`]), so verifying a pod costs one table read.

mod expr;
mod read;
pub(crate) mod wire;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ambit_netlink::{NETLINK_NETFILTER, NLMSG_HDRLEN, Socket as NlSocket, header};
use ambit_netns::NetNs;

use crate::error::{Error, Result};
use crate::mark::Mark;
use crate::netfilter::{Dir, Hook, Match, Proto, Rule, Ruleset, Table, Target};
use crate::nftset::codec::{
    self, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, attrs, begin_nest, end_nest, fix_len, nfgen,
    put_attr, put_str,
};
use crate::route::Family;

use self::expr::{Expr, rule_exprs, u32a, verdict};
pub(crate) use self::read::{cached, listing_on, reference};
use self::wire::*;

/// How the nft backend's table is written and read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RuleWrites {
    /// In process over nfnetlink (this module), verified by reading the
    /// table back over nfnetlink.
    #[default]
    Netlink,
    /// By `nft -f -` processes, verified with `nft list` (the former path).
    NftCommand,
}

fn hook_num(h: Hook) -> u32 {
    match h {
        Hook::Prerouting => 0,
        Hook::Input => 1,
        Hook::Forward => 2,
        Hook::Output => 3,
        Hook::Postrouting => 4,
    }
}

fn hook_name(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    }
}

/// The chain type and priority standing in for `table`'s `hook` (the same
/// as the text backend's).
fn base(table: Table, hook: Hook) -> (&'static str, i32) {
    match (table, hook) {
        (Table::Raw, _) => ("filter", -300),
        (Table::Mangle, Hook::Output) => ("route", -150),
        (Table::Mangle, _) => ("filter", -150),
        (Table::Nat, Hook::Prerouting | Hook::Output) => ("nat", -100),
        (Table::Nat, _) => ("nat", 100),
        (Table::Filter, _) => ("filter", 0),
    }
}

fn base_name(t: Table, h: Hook) -> String {
    format!("{}-{}", t.name(), hook_name(h))
}

fn user_name(t: Table, n: &str) -> String {
    format!("{}-{n}", t.name())
}

/// A message of type `msg` with `flags` (request and ack added), family
/// `inet`, built by `body`.
fn message(msg: u16, flags: u16, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut m = header(NFNL_SUBSYS_NFTABLES << 8 | msg, F_REQUEST | flags, 0);
    nfgen(&mut m, NFPROTO_INET, 0);
    body(&mut m);
    fix_len(&mut m);
    m
}

/// A batch under construction: each message with what it does, for errors.
#[derive(Default)]
struct Batch {
    msgs: Vec<Vec<u8>>,
    what: Vec<String>,
}

impl Batch {
    fn push(&mut self, msg: Vec<u8>, what: String) {
        self.msgs.push(msg);
        self.what.push(what);
    }

    fn table(&mut self, table: &str, op: u16) {
        let flags = if op == NEWTABLE {
            F_ACK | F_CREATE
        } else {
            F_ACK
        };
        self.push(
            message(op, flags, |b| put_str(b, TABLE_NAME, table)),
            format!("table inet {table}"),
        );
    }

    /// Adds (or deletes) a chain; `hook` makes it a base chain.
    fn chain(&mut self, table: &str, name: &str, hook: Option<(Table, Hook)>, op: u16) {
        let flags = if op == NEWCHAIN {
            F_ACK | F_CREATE
        } else {
            F_ACK
        };
        let m = message(op, flags, |b| {
            put_str(b, CHAIN_TABLE, table);
            put_str(b, CHAIN_NAME, name);
            if let Some((t, h)) = hook {
                let (ty, prio) = base(t, h);
                let n = begin_nest(b, CHAIN_HOOK);
                u32a(b, HOOK_HOOKNUM, hook_num(h));
                put_attr(b, HOOK_PRIORITY, &prio.to_be_bytes());
                end_nest(b, n);
                if op == NEWCHAIN {
                    // Accept, as nft's default: a policy changed by hand
                    // is put back by the next apply.
                    u32a(b, CHAIN_POLICY, NF_ACCEPT as u32);
                }
                put_str(b, CHAIN_TYPE, ty);
            }
        });
        let verb = if op == NEWCHAIN { "" } else { "deleting " };
        let kind = if hook.is_some() {
            "base chain"
        } else {
            "chain"
        };
        self.push(m, format!("{verb}{kind} {name}"));
    }

    fn flush(&mut self, table: &str, chain: &str) {
        let m = message(DELRULE, F_ACK, |b| {
            put_str(b, RULE_TABLE, table);
            put_str(b, RULE_CHAIN, chain);
        });
        self.push(m, format!("flushing {chain}"));
    }

    fn rule(&mut self, table: &str, chain: &str, exprs: &[Expr], what: String) {
        let m = message(NEWRULE, F_ACK | F_CREATE | F_APPEND, |b| {
            put_str(b, RULE_TABLE, table);
            put_str(b, RULE_CHAIN, chain);
            let list = begin_nest(b, RULE_EXPRESSIONS);
            for e in exprs {
                let el = begin_nest(b, LIST_ELEM);
                put_str(b, EXPR_NAME, e.name);
                let d = begin_nest(b, EXPR_DATA);
                b.extend_from_slice(&e.data);
                end_nest(b, d);
                end_nest(b, el);
            }
            end_nest(b, list);
        });
        self.push(m, what);
    }

    fn set(&mut self, table: &str, name: &str, fam: Family, id: u32) {
        let (ty, len) = match fam {
            Family::V4 => (TYPE_IPADDR, 4),
            Family::V6 => (TYPE_IP6ADDR, 16),
        };
        let m = message(NEWSET, F_ACK | F_CREATE, |b| {
            put_str(b, SET_TABLE, table);
            put_str(b, SET_NAME, name);
            u32a(b, SET_KEY_TYPE, ty);
            u32a(b, SET_KEY_LEN, len);
            u32a(b, SET_ID, id);
            put_attr(b, SET_USERDATA, &set_key_byteorder_udata());
        });
        self.push(m, format!("set {name}"));
    }

    /// Sends the batch inside `ns`; all or nothing.
    fn send(self, ns: &NetNs, op: &str) -> Result<()> {
        self.send_on(&mut NlSocket::open(Some(ns), NETLINK_NETFILTER)?, op)
    }

    /// Sends the batch on `sock` (a netfilter socket); all or nothing.
    fn send_on(mut self, sock: &mut NlSocket, op: &str) -> Result<()> {
        let n = u32::try_from(self.msgs.len() + 2).unwrap_or(u32::MAX);
        let first = next_seqs(n);
        let (bytes, seqs) = codec::batch(&mut self.msgs, first);
        send_batch_on(sock, &bytes, seqs, &self.what, op)
    }
}

/// The first of `n` fresh sequence numbers for a batch (its markers
/// included), shared by every batch this module sends.
fn next_seqs(n: u32) -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    SEQ.fetch_add(n, Ordering::Relaxed)
}

/// Sends an nf_tables batch (`seqs`: its acknowledged messages, described
/// in order by `what`) inside `ns`; all or nothing. A refusal names the
/// message the kernel refused.
#[cfg(feature = "nftnl")]
pub(crate) fn send_batch(
    ns: &NetNs,
    bytes: &[u8],
    seqs: std::ops::Range<u32>,
    what: &[String],
    op: &str,
) -> Result<()> {
    let mut sock = NlSocket::open(Some(ns), NETLINK_NETFILTER)?;
    send_batch_on(&mut sock, bytes, seqs, what, op)
}

/// [`send_batch`] on a netfilter socket already open in the namespace.
pub(crate) fn send_batch_on(
    sock: &mut NlSocket,
    bytes: &[u8],
    seqs: std::ops::Range<u32>,
    what: &[String],
    op: &str,
) -> Result<()> {
    let errors = sock.send_batch(bytes, seqs.clone())?;
    if let Some((seq, e)) = errors.into_iter().next() {
        let what = seq
            .checked_sub(seqs.start)
            .and_then(|i| what.get(i as usize))
            .cloned()
            .unwrap_or_else(|| format!("the batch as a whole (message {seq}, its commit)"));
        return Err(Error::nack(
            e,
            format!("{op}: the kernel refused {what}; nothing was applied"),
            sock.ns(),
        ));
    }
    Ok(())
}

/// nft's user data for an address set: the key's byte order, big endian
/// (what `nft -f` writes, and what makes `nft list` print addresses).
pub(crate) fn set_key_byteorder_udata() -> Vec<u8> {
    let mut udata = vec![UDATA_SET_KEYBYTEORDER, 4];
    udata.extend_from_slice(&BYTEORDER_BIG_ENDIAN.to_ne_bytes());
    udata
}

/// Applies the ruleset as one batch: the table and sets are created if
/// missing, every chain is created and flushed, then the jumps and rules
/// are added (what `nft -f` does with [`Ruleset::nft_script`]). Set
/// elements already there stay. All or nothing.
pub(crate) fn apply(ns: &NetNs, rs: &Ruleset) -> Result<()> {
    rs.validate()?;
    apply_on(&mut NlSocket::open(Some(ns), NETLINK_NETFILTER)?, rs)
}

/// [`apply`] on a netfilter socket already open in the namespace.
pub(crate) fn apply_on(sock: &mut NlSocket, rs: &Ruleset) -> Result<()> {
    let encoded = encoded_apply(rs)?;
    let n = u32::try_from(encoded.offsets.len()).unwrap_or(u32::MAX);
    let (bytes, seqs) = encoded.stamped(next_seqs(n));
    let op = format!("applying nft table inet {}", rs.nft_table);
    send_batch_on(sock, &bytes, seqs, &encoded.what, &op)
}

/// An encoded apply batch: the bytes (sequence numbers to be filled in),
/// where each message starts, and what each message between the markers
/// does, for errors.
struct Encoded {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    what: Vec<String>,
}

impl Encoded {
    /// The batch with sequence numbers from `first` (the begin marker's),
    /// and the range of the messages acknowledged (those between the
    /// markers), as [`codec::batch`] makes them.
    fn stamped(&self, first: u32) -> (Vec<u8>, std::ops::Range<u32>) {
        let mut bytes = self.bytes.clone();
        for (i, &at) in self.offsets.iter().enumerate() {
            let seq = first.wrapping_add(u32::try_from(i).unwrap_or(u32::MAX));
            if let Some(m) = bytes.get_mut(at..) {
                ambit_netlink::set_seq(m, seq);
            }
        }
        let n = u32::try_from(self.offsets.len()).unwrap_or(u32::MAX);
        (
            bytes,
            first.wrapping_add(1)..first.wrapping_add(n.saturating_sub(1)),
        )
    }
}

/// The apply batch of `rs`, encoded once per ruleset and process: the same
/// ruleset always makes the same messages, and the in-pod agent applies
/// one of a handful of rulesets to every pod, so encoding (and describing)
/// every rule again each time is wasted work.
fn encoded_apply(rs: &Ruleset) -> Result<Arc<Encoded>> {
    static CACHE: Mutex<Vec<(Ruleset, Arc<Encoded>)>> = Mutex::new(Vec::new());
    memo(
        &CACHE,
        16,
        |r| r == rs,
        || rs.clone(),
        || {
            let mut b = apply_batch(rs)?;
            let (bytes, _) = codec::batch(&mut b.msgs, 0);
            let mut offsets = Vec::with_capacity(b.msgs.len() + 2);
            let mut at = 0;
            while let Some(len) = bytes.get(at..at + 4) {
                offsets.push(at);
                let len = u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize;
                // Messages are padded to 4 bytes; a zero length cannot happen
                // in what `codec::batch` made, but must not loop forever.
                at += len.max(4).next_multiple_of(4);
            }
            Ok(Arc::new(Encoded {
                bytes,
                offsets,
                what: b.what,
            }))
        },
    )
}

/// A small process-wide cache: the value of the entry `is_it` finds, else
/// `make`'s, kept under `key()`. A handful of entries are expected; once
/// there are `bound`, all are dropped.
pub(crate) fn memo<K, V: Clone>(
    cache: &Mutex<Vec<(K, V)>>,
    bound: usize,
    is_it: impl Fn(&K) -> bool,
    key: impl FnOnce() -> K,
    make: impl FnOnce() -> Result<V>,
) -> Result<V> {
    let hit = |c: &Vec<(K, V)>| c.iter().find(|(k, _)| is_it(k)).map(|(_, v)| v.clone());
    if let Some(v) = cache.lock().ok().and_then(|c| hit(&c)) {
        return Ok(v);
    }
    let v = make()?;
    if let Ok(mut c) = cache.lock() {
        if c.len() >= bound {
            c.clear();
        }
        if hit(&c).is_none() {
            c.push((key(), v.clone()));
        }
    }
    Ok(v)
}

/// The apply batch of `rs`, as messages.
fn apply_batch(rs: &Ruleset) -> Result<Batch> {
    rs.validate()?;
    // Every expression first, so an unrenderable rule fails before
    // anything is sent.
    let rules = rs
        .rules
        .iter()
        .map(rule_exprs)
        .collect::<Result<Vec<_>>>()?;
    let t = rs.nft_table.as_str();
    let mut b = Batch::default();
    b.table(t, NEWTABLE);
    for (i, (name, fam)) in rs.sets.iter().enumerate() {
        b.set(t, name, *fam, u32::try_from(i + 1).unwrap_or(u32::MAX));
    }
    for (table, hook) in rs.base_chains() {
        let name = base_name(table, hook);
        b.chain(t, &name, Some((table, hook)), NEWCHAIN);
        b.flush(t, &name);
    }
    for (table, name) in &rs.chains {
        let name = user_name(*table, name);
        b.chain(t, &name, None, NEWCHAIN);
        b.flush(t, &name);
    }
    for j in &rs.jumps {
        let target = user_name(j.table, &j.chain);
        b.rule(
            t,
            &base_name(j.table, j.hook),
            &[verdict(NFT_JUMP, Some(&target))],
            format!("jump {} -> {}", j.hook.chain(), j.chain),
        );
    }
    for (r, exprs) in rs.rules.iter().zip(&rules) {
        b.rule(
            t,
            &user_name(r.table, &r.chain),
            exprs,
            format!("rule `{r}`"),
        );
    }
    Ok(b)
}

/// Deletes from `old`'s table what `old` has and `newer` lacks (see
/// [`Ruleset::nft_surplus_script`]). Each chain is added first, so absent
/// chains are fine. One batch, on `sock` (a netfilter socket open in the
/// namespace).
pub(crate) fn remove_surplus_on(sock: &mut NlSocket, old: &Ruleset, newer: &Ruleset) -> Result<()> {
    old.validate()?;
    let (bases, users) = old.surplus(newer);
    if bases.is_empty() && users.is_empty() {
        return Ok(());
    }
    let t = old.nft_table.as_str();
    let mut b = Batch::default();
    b.table(t, NEWTABLE);
    for (table, hook) in bases {
        let name = base_name(table, hook);
        b.chain(t, &name, Some((table, hook)), NEWCHAIN);
        b.chain(t, &name, None, DELCHAIN);
    }
    for (table, name) in users {
        let name = user_name(*table, name);
        b.chain(t, &name, None, NEWCHAIN);
        b.chain(t, &name, None, DELCHAIN);
    }
    b.send_on(sock, &format!("deleting chains from nft table inet {t}"))
}

/// Deletes the ruleset's table; an absent table is not an error.
pub(crate) fn remove(ns: &NetNs, rs: &Ruleset) -> Result<()> {
    let t = rs.nft_table.as_str();
    let mut b = Batch::default();
    b.table(t, DELTABLE);
    match b.send(ns, &format!("deleting nft table inet {t}")) {
        Err(Error::Netlink { errno: ENOENT, .. }) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::{InpodConfig, inpod};

    /// The cached encoding, stamped, is byte for byte the batch made from
    /// scratch with the same first sequence number, for every in-pod
    /// variant; and a second lookup returns the same encoding.
    #[test]
    fn cached_apply_batch_matches_a_fresh_one() {
        for (capture_dns, ipv6) in [(false, false), (true, false), (false, true), (true, true)] {
            let cfg = InpodConfig {
                capture_dns,
                ipv6,
                ..InpodConfig::default()
            };
            let rs = inpod(&cfg).expect("plan").netfilter;
            for first in [1, 77, u32::MAX - 3] {
                let mut fresh = apply_batch(&rs).expect("batch");
                let (want, want_seqs) = codec::batch(&mut fresh.msgs, first);
                let e = encoded_apply(&rs).expect("encoded");
                let (have, seqs) = e.stamped(first);
                assert_eq!(have, want, "dns {capture_dns} ipv6 {ipv6} first {first}");
                assert_eq!(seqs, want_seqs);
                assert_eq!(e.what, fresh.what);
                assert_eq!(e.offsets.len(), fresh.msgs.len() + 2);
                assert!(Arc::ptr_eq(&e, &encoded_apply(&rs).expect("again")));
            }
        }
    }
}
