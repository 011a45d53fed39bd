//! The elements of nftables sets, in process: add, delete and list over
//! nfnetlink (the codec is [`codec`]), with no `nft` process.
//!
//! Adds go as one batch (one transaction, one `sendmsg`) holding as few
//! `NEWSETELEM` messages as fit; elements already there are kept. Deletes
//! go one element per `DELSETELEM` message, 256 to a batch: if some are
//! missing the kernel refuses the batch naming each missing one, and the
//! batch is sent again without them — no listing of the set. Everything is checked before the first byte is
//! sent, so bad input changes nothing.

pub mod codec;

use std::net::IpAddr;

use ambit_netlink::{NETLINK_NETFILTER, Socket as NlSocket};
use ambit_netns::NetNs;

use self::codec::{ElemOp, Element, EncodeError};
use crate::error::{Error, Result};

const ENOENT: i32 = 2;

/// Most bytes sent in one batch: the kernel refuses a `sendmsg` larger
/// than the socket's send buffer (about 208 KiB by default).
const MAX_BATCH_BYTES: usize = 128 * 1024;

/// Most messages in one batch: the kernel acks each, and thousands of
/// acks at once overflow the socket's receive buffer (`ENOBUFS`).
const MAX_BATCH_MSGS: usize = 256;

/// Most dumps [`NftSets::list`] takes while waiting for two that agree.
pub const LIST_ATTEMPTS: u32 = 8;

/// How a plan's nftables set members are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SetUpdates {
    /// In process, as nfnetlink batches ([`NftSets`]); the default.
    #[default]
    Netlink,
    /// One `nft -f -` process per update (the former path, which also
    /// lists the set before a delete). Kept as the benchmarks' baseline.
    NftCommand,
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::Name(what, reason) => Error::Invalid {
                what: format!("nft {what} name"),
                reason: reason.to_owned(),
            },
            EncodeError::Comment(ip, reason) => Error::Invalid {
                what: format!("comment of set element {ip}"),
                reason: reason.to_owned(),
            },
        }
    }
}

/// A handle on the nftables sets of one namespace (an nfnetlink socket
/// opened inside it). Keep it to save opening a socket per update.
#[derive(Debug)]
pub struct NftSets {
    sock: NlSocket,
    seq: u32,
}

impl NftSets {
    /// Opens the handle in `ns` (or the caller's namespace).
    pub fn open(ns: Option<&NetNs>) -> Result<Self> {
        let sock = NlSocket::open(ns, NETLINK_NETFILTER)?;
        // Batch sequence numbers are ours; start where another process's
        // are unlikely to be (replies go to this socket only anyway).
        let seq = std::process::id().wrapping_mul(0x9e37_79b9);
        Ok(Self { sock, seq })
    }

    /// Adds elements to set `set` of `inet` table `table`
    /// (`nft add element inet TABLE SET { ... }`); present elements stay
    /// as they are (with their old comment). One transaction per 128 KiB
    /// of elements (about 2,000 with pod-UID comments).
    pub fn add(&mut self, table: &str, set: &str, elements: &[Element]) -> Result<()> {
        check(table, set, elements)?;
        let parts = codec::split(elements, ElemOp::Add);
        let msgs: Vec<(Vec<u8>, &[Element])> = parts
            .into_iter()
            .map(|p| (codec::setelem_message(ElemOp::Add, table, set, p, true), p))
            .collect();
        self.send(ElemOp::Add, table, set, msgs).map(drop)
    }

    /// Deletes elements from set `set` of `inet` table `table`; missing
    /// elements are skipped (`nft delete` would fail on one).
    pub fn del(&mut self, table: &str, set: &str, ips: &[IpAddr]) -> Result<()> {
        let elements: Vec<Element> = ips
            .iter()
            .map(|ip| Element {
                ip: *ip,
                comment: None,
            })
            .collect();
        check(table, set, &elements)?;
        let mut todo = elements;
        // Each round either finishes or drops at least one missing element.
        while !todo.is_empty() {
            let msgs = todo
                .iter()
                .map(|e| {
                    let one = std::slice::from_ref(e);
                    let m = codec::setelem_message(ElemOp::Del, table, set, one, true);
                    (m, one)
                })
                .collect();
            todo = self.send(ElemOp::Del, table, set, msgs)?;
        }
        Ok(())
    }

    /// The elements of set `set` of `inet` table `table`
    /// (`nft list set inet TABLE SET`), sorted by address.
    ///
    /// A set element dump spans several netlink reads and the kernel resumes
    /// it by position. A hash set that grows past its table size is resized
    /// by a kernel worker shortly after the insert returns; a dump that
    /// crosses the resize can skip or repeat elements without saying so. The
    /// listing is therefore repeated until two dumps in a row agree (at most
    /// [`LIST_ATTEMPTS`] dumps), which costs one extra dump on a quiet set.
    pub fn list(&mut self, table: &str, set: &str) -> Result<Vec<Element>> {
        check(table, set, &[])?;
        let mut last = self.list_once(table, set)?;
        for attempt in 1..LIST_ATTEMPTS {
            let next = self.list_once(table, set)?;
            if next == last {
                return Ok(next);
            }
            last = next;
            std::thread::sleep(std::time::Duration::from_millis(1 << attempt.min(6)));
        }
        Err(Error::Unstable {
            op: format!("listing set {set} of table inet {table}"),
            attempts: LIST_ATTEMPTS,
        })
    }

    fn list_once(&mut self, table: &str, set: &str) -> Result<Vec<Element>> {
        let op = || format!("listing set {set} of table inet {table}");
        let replies = self
            .sock
            .dump(codec::list_request(table, set))?
            .map_err(|e| Error::nack(e, op(), self.sock.ns()))?;
        let mut out = Vec::new();
        for r in replies {
            out.extend(
                codec::parse_setelem(&r).map_err(|reason| Error::Decode { op: op(), reason })?,
            );
        }
        out.sort_by(|a, b| a.ip.cmp(&b.ip).then_with(|| a.comment.cmp(&b.comment)));
        out.dedup();
        Ok(out)
    }

    /// Sends `msgs` (each with the elements it carries) as batches of at
    /// most [`MAX_BATCH_BYTES`] and [`MAX_BATCH_MSGS`]. A batch whose only refusals are
    /// `DELSETELEM`s of missing elements (`ENOENT`) applied nothing: its
    /// other elements come back, to be sent again. Any other refusal is an
    /// error naming the element(s).
    fn send(
        &mut self,
        op: ElemOp,
        table: &str,
        set: &str,
        msgs: Vec<(Vec<u8>, &[Element])>,
    ) -> Result<Vec<Element>> {
        let mut retry = Vec::new();
        let mut rest = msgs.as_slice();
        while !rest.is_empty() {
            let mut size = 0;
            let n = rest
                .iter()
                .take(MAX_BATCH_MSGS)
                .take_while(|(m, _)| {
                    size += m.len();
                    size <= MAX_BATCH_BYTES
                })
                .count()
                .max(1);
            let (now, later) = rest.split_at(n);
            rest = later;
            let mut bytes: Vec<Vec<u8>> = now.iter().map(|(m, _)| m.clone()).collect();
            let (buf, seqs) = codec::batch(&mut bytes, self.seq);
            self.seq = seqs.end.wrapping_add(1);
            let errors = self.sock.send_batch(&buf, seqs.clone())?;
            let mut missing = Vec::new();
            for (seq, nack) in &errors {
                let (seq, nack) = (*seq, nack.clone());
                let els = seq
                    .checked_sub(seqs.start)
                    .and_then(|i| now.get(i as usize))
                    .map_or(&[][..], |(_, e)| *e);
                if op == ElemOp::Del && nack.errno == ENOENT && els.len() == 1 {
                    missing.push(els[0].ip);
                    continue;
                }
                let what = match els {
                    [] => format!("message {seq}"),
                    [one] => one.ip.to_string(),
                    [first, .., last] => {
                        format!("{} elements ({} ... {})", els.len(), first.ip, last.ip)
                    }
                };
                let verb = match op {
                    ElemOp::Add => "adding",
                    ElemOp::Del => "deleting",
                };
                return Err(Error::nack(
                    nack,
                    format!("{verb} {what} in set {set} of table inet {table}"),
                    self.sock.ns(),
                ));
            }
            if !errors.is_empty() {
                retry.extend(
                    now.iter()
                        .flat_map(|(_, e)| e.iter())
                        .filter(|e| !missing.contains(&e.ip))
                        .cloned(),
                );
            }
        }
        Ok(retry)
    }
}

fn check(table: &str, set: &str, elements: &[Element]) -> Result<()> {
    codec::check_name("table", table)?;
    codec::check_name("set", set)?;
    for e in elements {
        codec::check_element(e)?;
    }
    Ok(())
}
