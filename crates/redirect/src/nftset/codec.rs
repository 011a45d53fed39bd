//! nftables set elements over nfnetlink (subsystem 10): the add, delete and
//! list messages for the elements of an `inet` set, and the batch that
//! carries them. Messages as bytes, with `emit` and `parse`; no sockets.
//!
//! Facts of the wire format (`linux/netfilter/nf_tables.h`, and checked
//! against `strace -f -e trace=sendmsg -xx nft add element inet T S { ... }`
//! captures in the tests below):
//! - changes travel inside a batch: `NFNL_MSG_BATCH_BEGIN` and
//!   `NFNL_MSG_BATCH_END` (types 16 and 17, `res_id` = the subsystem, 10,
//!   big endian) around `NFT_MSG_NEWSETELEM` (12) / `NFT_MSG_DELSETELEM`
//!   (14) messages of type `10 << 8 | msg`; the kernel commits the batch
//!   all or nothing and keeps processing after a refused message, so every
//!   refusal is reported;
//! - the `nfgenmsg` family is `NFPROTO_INET` (1) for an `inet` table;
//! - `NEWSETELEM` with `NLM_F_CREATE` and without `NLM_F_EXCL` accepts an
//!   element that is already there; `DELSETELEM` of a missing element is
//!   `ENOENT`, and stops at the first one, so deletions go one element per
//!   message (the refusal then names the element);
//! - `ELEMENTS` and each `LIST_ELEM` and `KEY` are nested (`NLA_F_NESTED`);
//!   the key is the address in network order inside `NFTA_DATA_VALUE`;
//! - a comment is nft's user-data TLV in `NFTA_SET_ELEM_USERDATA`: type 0
//!   (`NFTNL_UDATA_SET_ELEM_COMMENT`), one length byte, the text and a NUL;
//!   nft allows 128 characters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use ambit_netlink::{Messages, NLMSG_HDRLEN, align4, header};

/// `NFNL_SUBSYS_NFTABLES`.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` (`NLMSG_MIN_TYPE`).
pub const NFNL_MSG_BATCH_BEGIN: u16 = 16;
/// `NFNL_MSG_BATCH_END`.
pub const NFNL_MSG_BATCH_END: u16 = 17;
/// `NFT_MSG_NEWSETELEM`.
pub const NFT_MSG_NEWSETELEM: u16 = 12;
/// `NFT_MSG_GETSETELEM`.
pub const NFT_MSG_GETSETELEM: u16 = 13;
/// `NFT_MSG_DELSETELEM`.
pub const NFT_MSG_DELSETELEM: u16 = 14;
/// `NFPROTO_INET`: the family of an `inet` table.
pub const NFPROTO_INET: u8 = 1;
/// `NLM_F_CREATE`.
pub const NLM_F_CREATE: u16 = 0x400;
/// Longest comment nft accepts (`NFTNL_UDATA_COMMENT_MAXLEN`), in bytes.
pub const MAX_COMMENT_LEN: usize = 128;
/// Longest table or set name (`NFT_NAME_MAXLEN` 256, NUL included).
pub const MAX_NAME_LEN: usize = 255;

/// Most bytes of element attributes put in one message: an attribute's
/// length is 16 bits, and `ELEMENTS` holds them all.
const MAX_ELEMENTS_LEN: usize = 60 * 1024;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NFGENMSG_LEN: usize = 4;

// enum nft_set_elem_list_attributes
const LIST_TABLE: u16 = 1;
const LIST_SET: u16 = 2;
const LIST_ELEMENTS: u16 = 3;
// enum nft_list_attributes
const LIST_ELEM: u16 = 1;
// enum nft_set_elem_attributes
const ELEM_KEY: u16 = 1;
const ELEM_USERDATA: u16 = 6;
// enum nft_data_attributes
const DATA_VALUE: u16 = 1;
// NFTNL_UDATA_SET_ELEM_COMMENT
const UDATA_COMMENT: u8 = 0;

/// Which change a message makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemOp {
    /// `NFT_MSG_NEWSETELEM` with `NLM_F_CREATE`: add, keep present ones.
    Add,
    /// `NFT_MSG_DELSETELEM`: delete (a missing element is `ENOENT`).
    Del,
}

impl ElemOp {
    /// The nfnetlink message type (`subsystem << 8 | msg`).
    pub fn msg_type(self) -> u16 {
        let msg = match self {
            Self::Add => NFT_MSG_NEWSETELEM,
            Self::Del => NFT_MSG_DELSETELEM,
        };
        NFNL_SUBSYS_NFTABLES << 8 | msg
    }

    fn flags(self, ack: bool) -> u16 {
        let ack = if ack { ambit_netlink::NLM_F_ACK } else { 0 };
        let create = match self {
            Self::Add => NLM_F_CREATE,
            Self::Del => 0,
        };
        ambit_netlink::NLM_F_REQUEST | create | ack
    }
}

/// One set element: an address and an optional comment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    /// The key.
    pub ip: IpAddr,
    /// The comment (nft's `comment "..."`), at most [`MAX_COMMENT_LEN`] bytes.
    pub comment: Option<String>,
}

/// Why input cannot be encoded (checked before anything is sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A table or set name that is empty, too long or contains NUL.
    Name(&'static str, &'static str),
    /// A comment that is too long or contains NUL.
    Comment(IpAddr, &'static str),
}

/// Checks a table or set name (`what` says which).
pub fn check_name(what: &'static str, name: &str) -> Result<(), EncodeError> {
    if name.is_empty() {
        Err(EncodeError::Name(what, "empty"))
    } else if name.len() > MAX_NAME_LEN {
        Err(EncodeError::Name(what, "longer than 255 bytes"))
    } else if name.contains('\0') {
        Err(EncodeError::Name(what, "contains NUL"))
    } else {
        Ok(())
    }
}

/// Checks an element's comment.
pub fn check_element(e: &Element) -> Result<(), EncodeError> {
    match e.comment.as_deref() {
        Some(c) if c.len() > MAX_COMMENT_LEN => {
            Err(EncodeError::Comment(e.ip, "longer than 128 bytes"))
        }
        Some(c) if c.contains('\0') => Err(EncodeError::Comment(e.ip, "contains NUL")),
        _ => Ok(()),
    }
}

pub(crate) fn put_attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

pub(crate) fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    put_attr(buf, ty, &v);
}

/// Opens a nested attribute; [`end_nest`] writes its length.
pub(crate) fn begin_nest(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

pub(crate) fn end_nest(buf: &mut [u8], at: usize) {
    let len = u16::try_from(buf.len() - at).unwrap_or(u16::MAX);
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// One element as a list attribute. nft numbers them 1, 2, ... (libnftnl
/// nests each under its index); the kernel reads them in order whatever
/// the number, and reports them as `LIST_ELEM` (1).
fn emit_element(buf: &mut Vec<u8>, index: usize, e: &Element, with_comment: bool) {
    let ty = u16::try_from(index + 1).unwrap_or(LIST_ELEM) & NLA_TYPE_MASK;
    let elem = begin_nest(buf, ty);
    let key = begin_nest(buf, ELEM_KEY);
    put_attr(buf, DATA_VALUE, &ip_bytes(e.ip));
    end_nest(buf, key);
    if let (true, Some(c)) = (with_comment, &e.comment) {
        let mut udata = Vec::with_capacity(c.len() + 3);
        udata.push(UDATA_COMMENT);
        // Checked: at most 128 bytes, so length + NUL fits a byte.
        udata.push(u8::try_from(c.len() + 1).unwrap_or(u8::MAX));
        udata.extend_from_slice(c.as_bytes());
        udata.push(0);
        put_attr(buf, ELEM_USERDATA, &udata);
    }
    end_nest(buf, elem);
}

pub(crate) fn nfgen(buf: &mut Vec<u8>, family: u8, res_id: u16) {
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
}

pub(crate) fn fix_len(msg: &mut [u8]) {
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    msg[..4].copy_from_slice(&len.to_ne_bytes());
}

/// One `NEWSETELEM`/`DELSETELEM` message for `elements` of set `set` in
/// `inet` table `table` (sequence number 0; [`batch`] numbers them).
/// Comments ride on adds only. Inputs must have passed [`check_name`] and
/// [`check_element`]; the caller keeps a message's elements under 60 KiB
/// ([`split`] does).
pub fn setelem_message(
    op: ElemOp,
    table: &str,
    set: &str,
    elements: &[Element],
    ack: bool,
) -> Vec<u8> {
    let mut m = header(op.msg_type(), op.flags(ack), 0);
    nfgen(&mut m, NFPROTO_INET, 0);
    put_str(&mut m, LIST_TABLE, table);
    put_str(&mut m, LIST_SET, set);
    let nest = begin_nest(&mut m, LIST_ELEMENTS);
    for (i, e) in elements.iter().enumerate() {
        emit_element(&mut m, i, e, op == ElemOp::Add);
    }
    end_nest(&mut m, nest);
    fix_len(&mut m);
    m
}

/// The encoded size of one element, to split long lists.
fn element_len(e: &Element, op: ElemOp) -> usize {
    let key = 4 + 4 + align4(ip_bytes(e.ip).len());
    let comment = match (&e.comment, op) {
        (Some(c), ElemOp::Add) => 4 + align4(c.len() + 3),
        _ => 0,
    };
    4 + key + comment
}

/// Splits `elements` into runs that each fit one message.
pub fn split(elements: &[Element], op: ElemOp) -> Vec<&[Element]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, e) in elements.iter().enumerate() {
        let n = element_len(e, op);
        if i > start && size + n > MAX_ELEMENTS_LEN {
            out.push(&elements[start..i]);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < elements.len() {
        out.push(&elements[start..]);
    }
    out
}

/// Sets or clears `NLM_F_ACK` in a message's header (`nlmsg_flags`, bytes
/// 6..8); a message too short to have a header is left alone.
fn set_ack(m: &mut [u8], on: bool) {
    if let Some(f) = m.get_mut(6..8) {
        let mut flags = u16::from_ne_bytes([f[0], f[1]]);
        if on {
            flags |= ambit_netlink::NLM_F_ACK;
        } else {
            flags &= !ambit_netlink::NLM_F_ACK;
        }
        f.copy_from_slice(&flags.to_ne_bytes());
    }
}

fn batch_marker(ty: u16, seq: u32) -> Vec<u8> {
    let mut m = header(ty, ambit_netlink::NLM_F_REQUEST, NFGENMSG_LEN);
    ambit_netlink::set_seq(&mut m, seq);
    nfgen(&mut m, 0, NFNL_SUBSYS_NFTABLES);
    m
}

/// Wraps `msgs` in `BATCH_BEGIN`/`BATCH_END`, numbering everything from
/// `first_seq` on; returns the bytes and the sequence numbers of `msgs`
/// (what the kernel answers). Only the last message asks for an ack: the
/// kernel answers a failed message whether or not it asked, and the one
/// ack, sent after the whole batch, says it was applied (one answer to read
/// instead of one per message).
pub fn batch(msgs: &mut [Vec<u8>], first_seq: u32) -> (Vec<u8>, Range<u32>) {
    let total: usize = msgs.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total + 2 * (NLMSG_HDRLEN + NFGENMSG_LEN));
    out.extend_from_slice(&batch_marker(NFNL_MSG_BATCH_BEGIN, first_seq));
    let mut seq = first_seq;
    let last = msgs.len().saturating_sub(1);
    for (i, m) in msgs.iter_mut().enumerate() {
        seq = seq.wrapping_add(1);
        ambit_netlink::set_seq(m, seq);
        set_ack(m, i == last);
        out.extend_from_slice(m);
    }
    let end = seq.wrapping_add(1);
    out.extend_from_slice(&batch_marker(NFNL_MSG_BATCH_END, end));
    (out, first_seq.wrapping_add(1)..end)
}

/// A `GETSETELEM` dump request for the elements of `set` in `inet`
/// table `table` (`nft list set inet T S`).
pub fn list_request(table: &str, set: &str) -> Vec<u8> {
    let flags = ambit_netlink::NLM_F_REQUEST | ambit_netlink::NLM_F_DUMP;
    let mut m = header(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM, flags, 0);
    nfgen(&mut m, NFPROTO_INET, 0);
    put_str(&mut m, LIST_TABLE, table);
    put_str(&mut m, LIST_SET, set);
    fix_len(&mut m);
    m
}

/// Iterates over the attributes in `data` as `(type, value)`; an `Err`
/// names the first malformed one.
pub(crate) fn attrs(data: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), String>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            let e = format!("attribute {ty} of length {len} in {} bytes", rest.len());
            rest = &[];
            return Some(Err(e));
        }
        let value = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some(Ok((ty, value)))
    })
}

fn parse_element(data: &[u8]) -> Result<Option<Element>, String> {
    let (mut ip, mut comment) = (None, None);
    for a in attrs(data) {
        let (ty, v) = a?;
        match ty {
            ELEM_KEY => {
                for k in attrs(v) {
                    let (kt, kv) = k?;
                    if kt == DATA_VALUE {
                        ip = match kv.len() {
                            4 => Some(IpAddr::V4(Ipv4Addr::new(kv[0], kv[1], kv[2], kv[3]))),
                            16 => {
                                let mut o = [0u8; 16];
                                o.copy_from_slice(kv);
                                Some(IpAddr::V6(Ipv6Addr::from(o)))
                            }
                            n => return Err(format!("a key of {n} bytes is not an address")),
                        };
                    }
                }
            }
            ELEM_USERDATA => comment = parse_comment(v),
            _ => {}
        }
    }
    Ok(ip.map(|ip| Element { ip, comment }))
}

/// The comment in an element's user data (TLVs of one type byte and one
/// length byte), if any.
fn parse_comment(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (ty, len) = (udata[0], udata[1] as usize);
        let value = udata.get(2..2 + len)?;
        if ty == UDATA_COMMENT {
            let text = value.split(|&b| b == 0).next().unwrap_or(value);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        udata = &udata[2 + len..];
    }
    None
}

/// Parses one reply message (header included) of a [`list_request`]
/// dump into its elements. Elements without an address key (none in an
/// address set) are skipped.
pub fn parse_setelem(msg: &[u8]) -> Result<Vec<Element>, String> {
    let m = Messages::new(msg)
        .next()
        .ok_or_else(|| "empty reply".to_owned())??;
    if m.ty != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM {
        return Err(format!("unexpected message type {:#x}", m.ty));
    }
    let body = m
        .payload
        .get(NFGENMSG_LEN..)
        .ok_or_else(|| "shorter than nfgenmsg".to_owned())?;
    let mut out = Vec::new();
    for a in attrs(body) {
        let (ty, v) = a?;
        if ty != LIST_ELEMENTS {
            continue;
        }
        for e in attrs(v) {
            let (_, ev) = e?;
            out.extend(parse_element(ev)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(ip: &str, comment: Option<&str>) -> Element {
        Element {
            ip: ip.parse().expect("ip"),
            comment: comment.map(str::to_owned),
        }
    }

    /// Unescapes strace's `-xx` byte strings.
    fn hex(s: &str) -> Vec<u8> {
        s.split("\\x")
            .filter(|p| !p.is_empty())
            .map(|p| u8::from_str_radix(p, 16).expect("hex"))
            .collect()
    }

    /// The message body after the header and nfgenmsg.
    fn attrs_of(m: &[u8]) -> &[u8] {
        &m[NLMSG_HDRLEN + NFGENMSG_LEN..]
    }

    #[test]
    fn add_matches_what_nft_sends() {
        // `strace -f -e trace=sendmsg -xx nft add element inet T S
        //  { 10.0.0.1 comment "uid-1", 10.0.0.2 }` (nft 1.0.6, kernel 6.18):
        // NEWSETELEM, NLM_F_REQUEST|NLM_F_CREATE, nfgen family 1, then
        // TABLE "T", SET "S", SET_ID 1 (which we leave out: the set
        // exists), ELEMENTS as below.
        let m = setelem_message(
            ElemOp::Add,
            "T",
            "S",
            &[el("10.0.0.1", Some("uid-1")), el("10.0.0.2", None)],
            false,
        );
        assert_eq!(m.len(), 92 - 8, "nft's 92 bytes less the SET_ID attribute");
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 10 << 8 | 12);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 0x401);
        assert_eq!(&m[16..20], &[1, 0, 0, 0]);
        let mut want = Vec::new();
        want.extend_from_slice(&hex("\\x06\\x00\\x01\\x00\\x54\\x00\\x00\\x00"));
        want.extend_from_slice(&hex("\\x06\\x00\\x02\\x00\\x53\\x00\\x00\\x00"));
        want.extend_from_slice(&hex("\\x30\\x00\\x03\\x80"));
        want.extend_from_slice(&hex(
            "\\x1c\\x00\\x01\\x80\\x0c\\x00\\x01\\x80\\x08\\x00\\x01\\x00\\x0a\\x00\\x00\\x01\\x0c\\x00\\x06\\x00\\x00\\x06\\x75\\x69\\x64\\x2d\\x31\\x00\\x10\\x00\\x02\\x80\\x0c\\x00\\x01\\x80\\x08\\x00\\x01\\x00\\x0a\\x00\\x00\\x02",
        ));
        assert_eq!(attrs_of(&m), want.as_slice());
    }

    #[test]
    fn delete_and_ipv6_match_what_nft_sends() {
        // `nft delete element inet T S { 10.0.0.1 }`: DELSETELEM,
        // NLM_F_REQUEST only, 56 bytes, no SET_ID.
        let m = setelem_message(ElemOp::Del, "T", "S", &[el("10.0.0.1", Some("x"))], false);
        assert_eq!(m.len(), 56);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 10 << 8 | 14);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 0x1);
        assert!(attrs_of(&m).ends_with(&hex(
            "\\x14\\x00\\x03\\x80\\x10\\x00\\x01\\x80\\x0c\\x00\\x01\\x80\\x08\\x00\\x01\\x00\\x0a\\x00\\x00\\x01"
        )));
        // `nft add element inet T S6 { fd00::1 }`: the 16-byte key.
        let m = setelem_message(ElemOp::Add, "T", "S6", &[el("fd00::1", None)], false);
        assert!(attrs_of(&m).ends_with(&hex(
            "\\x20\\x00\\x03\\x80\\x1c\\x00\\x01\\x80\\x18\\x00\\x01\\x80\\x14\\x00\\x01\\x00\\xfd\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01"
        )));
    }

    #[test]
    fn batch_is_framed_as_nft_frames_it() {
        // BATCH_BEGIN: 20 bytes, NLM_F_REQUEST, nfgen {AF_UNSPEC, 0, htons(10)}.
        let mut msgs = vec![setelem_message(
            ElemOp::Add,
            "T",
            "S",
            &[el("10.0.0.1", None)],
            true,
        )];
        let (bytes, seqs) = batch(&mut msgs, 100);
        assert_eq!(seqs, 101..102);
        let parsed: Vec<_> = Messages::new(&bytes)
            .map(|m| m.expect("valid"))
            .map(|m| (m.ty, m.seq, m.payload.len()))
            .collect();
        assert_eq!(parsed[0], (16, 100, 4));
        assert_eq!(parsed[1].0, 10 << 8 | 12);
        assert_eq!(parsed[1].1, 101);
        assert_eq!(parsed[2], (17, 102, 4));
        assert_eq!(&bytes[16..20], &[0, 0, 0, 10]);
    }

    #[test]
    fn only_the_last_message_of_a_batch_asks_for_an_ack() {
        let mut msgs: Vec<Vec<u8>> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .iter()
            .map(|ip| setelem_message(ElemOp::Add, "T", "S", &[el(ip, None)], true))
            .collect();
        // A message built without an ack gets one when it comes last.
        msgs.push(setelem_message(
            ElemOp::Del,
            "T",
            "S",
            &[el("10.0.0.4", None)],
            false,
        ));
        let (bytes, seqs) = batch(&mut msgs, 7);
        let acks: Vec<(u32, bool)> = Messages::new(&bytes)
            .map(|m| m.expect("valid"))
            .map(|m| (m.seq, m.flags & ambit_netlink::NLM_F_ACK != 0))
            .collect();
        assert_eq!(seqs, 8..12);
        assert_eq!(
            acks,
            [
                (7, false),
                (8, false),
                (9, false),
                (10, false),
                (11, true),
                (12, false)
            ]
        );
    }

    #[test]
    fn long_lists_split_under_the_attribute_limit() {
        let many: Vec<Element> = (0..5000u32)
            .map(|i| Element {
                ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                comment: Some("5b8f0c1e-0000-4000-8000-000000000000".into()),
            })
            .collect();
        let parts = split(&many, ElemOp::Add);
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), many.len());
        for p in parts {
            let m = setelem_message(ElemOp::Add, "T", "S", p, true);
            assert!(m.len() < 64 * 1024, "{}", m.len());
        }
        assert!(split(&[], ElemOp::Add).is_empty());
    }

    #[test]
    fn parses_its_own_elements_back() {
        // A NEWSETELEM reply has the same layout as the add request.
        let want = vec![el("10.0.0.1", Some("uid-1")), el("fd00::2", None)];
        let m = setelem_message(ElemOp::Add, "T", "S", &want, false);
        assert_eq!(parse_setelem(&m).expect("parse"), want);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let good = setelem_message(ElemOp::Add, "T", "S", &[el("10.0.0.1", None)], false);
        for cut in 0..good.len() {
            let mut bad = good[..cut].to_vec();
            if bad.len() >= 4 {
                fix_len(&mut bad);
            }
            let _ = parse_setelem(&bad);
        }
        let mut odd_key = good.clone();
        let n = odd_key.len();
        odd_key[n - 8] = 7; // the DATA_VALUE length: 3 bytes of key
        assert!(parse_setelem(&odd_key).is_err());
    }

    #[test]
    fn bad_names_and_comments_are_refused() {
        assert!(check_name("set", "").is_err());
        assert!(check_name("set", "a\0b").is_err());
        assert!(check_name("table", &"t".repeat(256)).is_err());
        assert!(check_name("set", "ztunnel-pods-ips").is_ok());
        assert!(check_element(&el("10.0.0.1", Some(&"c".repeat(129)))).is_err());
        assert!(check_element(&el("10.0.0.1", Some("a\0"))).is_err());
        assert!(check_element(&el("10.0.0.1", Some(&"c".repeat(128)))).is_ok());
    }
}
