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

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

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

const ENOENT: i32 = 2;

// Message types (enum nf_tables_msg_types).
const NEWTABLE: u16 = 0;
const GETTABLE: u16 = 1;
const DELTABLE: u16 = 2;
const NEWCHAIN: u16 = 3;
const GETCHAIN: u16 = 4;
const DELCHAIN: u16 = 5;
const NEWRULE: u16 = 6;
const GETRULE: u16 = 7;
const DELRULE: u16 = 8;
const NEWSET: u16 = 9;
const GETSET: u16 = 10;

// Netlink flags.
const F_REQUEST: u16 = 0x1;
const F_ACK: u16 = 0x4;
const F_CREATE: u16 = 0x400;
const F_APPEND: u16 = 0x800;
const F_DUMP: u16 = 0x300;

// Attributes.
const TABLE_NAME: u16 = 1;
const TABLE_FLAGS: u16 = 2;
const TABLE_USERDATA: u16 = 6;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
/// What a chain's listing compares: hook, policy, type, flags, user data.
const CHAIN_KEEP: &[u16] = &[CHAIN_HOOK, CHAIN_POLICY, CHAIN_TYPE, 10, 12];
const HOOK_HOOKNUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_EXPRESSIONS: u16 = 4;
const RULE_USERDATA: u16 = 7;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_ID: u16 = 10;
const SET_USERDATA: u16 = 13;
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const BYTEORDER_BIG_ENDIAN: u32 = 2;
/// What a set's listing compares: flags, key and data types and lengths,
/// policy, timeout, gc interval, user data, object type, expressions.
const SET_KEEP: &[u16] = &[
    3,
    SET_KEY_TYPE,
    SET_KEY_LEN,
    6,
    7,
    8,
    11,
    12,
    13,
    15,
    17,
    18,
];
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;

// Registers, verdicts and keys.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const CMP_GTE: u32 = 5;
const META_MARK: u32 = 3;
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_SKUID: u32 = 10;
const META_SKGID: u32 = 11;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const CT_MARK: u32 = 3;
const CT_ZONE: u32 = 17;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const BYTEORDER_HTON: u32 = 1;
const NAT_SNAT: u32 = 0;
const NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const LOOKUP_F_INV: u32 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const IFNAMSIZ: usize = 16;
// nft's data types for set keys.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;

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

/// One expression: its name and the attributes inside `NFTA_EXPR_DATA`.
struct Expr {
    name: &'static str,
    data: Vec<u8>,
}

fn expr(name: &'static str, build: impl FnOnce(&mut Vec<u8>)) -> Expr {
    let mut data = Vec::new();
    build(&mut data);
    Expr { name, data }
}

fn u32a(buf: &mut Vec<u8>, ty: u16, v: u32) {
    put_attr(buf, ty, &v.to_be_bytes());
}

fn value(buf: &mut Vec<u8>, ty: u16, bytes: &[u8]) {
    let n = begin_nest(buf, ty);
    put_attr(buf, DATA_VALUE, bytes);
    end_nest(buf, n);
}

fn meta_load(key: u32) -> Expr {
    expr("meta", |b| {
        u32a(b, 1, REG_1); // NFTA_META_DREG
        u32a(b, 2, key); // NFTA_META_KEY
    })
}

fn meta_set(key: u32) -> Expr {
    expr("meta", |b| {
        u32a(b, 2, key); // NFTA_META_KEY
        u32a(b, 3, REG_1); // NFTA_META_SREG
    })
}

fn ct_load(key: u32) -> Expr {
    expr("ct", |b| {
        u32a(b, 1, REG_1); // NFTA_CT_DREG
        u32a(b, 2, key); // NFTA_CT_KEY
    })
}

fn ct_set(key: u32) -> Expr {
    expr("ct", |b| {
        u32a(b, 2, key); // NFTA_CT_KEY
        u32a(b, 4, REG_1); // NFTA_CT_SREG
    })
}

fn cmp(op: u32, data: &[u8]) -> Expr {
    expr("cmp", |b| {
        u32a(b, 1, REG_1); // NFTA_CMP_SREG
        u32a(b, 2, op); // NFTA_CMP_OP
        value(b, 3, data); // NFTA_CMP_DATA
    })
}

fn bitwise(mask: &[u8], xor: &[u8]) -> Expr {
    expr("bitwise", |b| {
        u32a(b, 1, REG_1); // NFTA_BITWISE_SREG
        u32a(b, 2, REG_1); // NFTA_BITWISE_DREG
        u32a(b, 3, mask.len() as u32); // NFTA_BITWISE_LEN
        value(b, 4, mask); // NFTA_BITWISE_MASK
        value(b, 5, xor); // NFTA_BITWISE_XOR
    })
}

fn payload(base: u32, offset: u32, len: u32) -> Expr {
    expr("payload", |b| {
        u32a(b, 1, REG_1); // NFTA_PAYLOAD_DREG
        u32a(b, 2, base); // NFTA_PAYLOAD_BASE
        u32a(b, 3, offset); // NFTA_PAYLOAD_OFFSET
        u32a(b, 4, len); // NFTA_PAYLOAD_LEN
    })
}

fn immediate(reg: u32, data: &[u8]) -> Expr {
    expr("immediate", |b| {
        u32a(b, 1, reg); // NFTA_IMMEDIATE_DREG
        value(b, 2, data); // NFTA_IMMEDIATE_DATA
    })
}

fn verdict(code: i32, chain: Option<&str>) -> Expr {
    expr("immediate", |b| {
        u32a(b, 1, REG_VERDICT);
        let d = begin_nest(b, 2); // NFTA_IMMEDIATE_DATA
        let v = begin_nest(b, DATA_VERDICT);
        put_attr(b, VERDICT_CODE, &code.to_be_bytes());
        if let Some(c) = chain {
            put_str(b, VERDICT_CHAIN, c);
        }
        end_nest(b, v);
        end_nest(b, d);
    })
}

fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(IFNAMSIZ, 0);
    v
}

fn ne32(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `meta mark & M == V` and friends: load, mask unless full, compare.
fn masked_cmp(load: Expr, m: Mark, neg: bool, out: &mut Vec<Expr>) {
    out.push(load);
    if m.mask() != u32::MAX {
        out.push(bitwise(&ne32(m.mask()), &ne32(0)));
    }
    out.push(cmp(if neg { CMP_NEQ } else { CMP_EQ }, &ne32(m.value())));
}

/// `KEY set KEY & !M | V` (or `set V` for a full mask).
fn mark_set(load: Expr, set: Expr, m: Mark, out: &mut Vec<Expr>) {
    if m.mask() == u32::MAX {
        out.push(immediate(REG_1, &ne32(m.value())));
    } else {
        out.push(load);
        out.push(bitwise(&ne32(!m.mask()), &ne32(m.value())));
    }
    out.push(set);
}

fn nfproto(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        NFPROTO_IPV4
    } else {
        NFPROTO_IPV6
    }
}

/// The expressions of one rule, mirroring nft's code generation.
fn rule_exprs(r: &Rule) -> Result<Vec<Expr>> {
    let mut out = Vec::new();
    let mut nfproto_done: Option<u8> = None;
    let mut need_nfproto = |fam: u8, out: &mut Vec<Expr>| {
        if nfproto_done != Some(fam) {
            out.push(meta_load(META_NFPROTO));
            out.push(cmp(CMP_EQ, &[fam]));
            nfproto_done = Some(fam);
        }
    };
    let op = |neg: bool| if neg { CMP_NEQ } else { CMP_EQ };
    for m in &r.matches {
        match m {
            Match::InIface(n, neg) => {
                out.push(meta_load(META_IIFNAME));
                out.push(cmp(op(*neg), &ifname(n)));
            }
            Match::OutIface(n, neg) => {
                out.push(meta_load(META_OIFNAME));
                out.push(cmp(op(*neg), &ifname(n)));
            }
            Match::Proto(p) => {
                out.push(meta_load(META_L4PROTO));
                out.push(cmp(CMP_EQ, &[if *p == Proto::Tcp { 6 } else { 17 }]));
            }
            Match::DPort(p, neg) | Match::SPort(p, neg) => {
                let off = if matches!(m, Match::DPort(..)) { 2 } else { 0 };
                out.push(payload(PAYLOAD_TRANSPORT, off, 2));
                out.push(cmp(op(*neg), &p.to_be_bytes()));
            }
            Match::Src(net, neg) | Match::Dst(net, neg) => {
                let ip = net.addr();
                need_nfproto(nfproto(ip), &mut out);
                let (src_off, dst_off, len) = if ip.is_ipv4() {
                    (12, 16, 4u32)
                } else {
                    (8, 24, 16)
                };
                let off = if matches!(m, Match::Src(..)) {
                    src_off
                } else {
                    dst_off
                };
                let bytes = addr_bytes(ip);
                let prefix = u32::from(net.prefix_len());
                if prefix == 0 {
                    continue;
                }
                if prefix % 8 == 0 {
                    let n = prefix / 8;
                    out.push(payload(PAYLOAD_NETWORK, off, n));
                    out.push(cmp(op(*neg), &bytes[..n as usize]));
                } else {
                    out.push(payload(PAYLOAD_NETWORK, off, len));
                    out.push(bitwise(&addr_bytes(net.netmask()), &vec![0; len as usize]));
                    out.push(cmp(op(*neg), &addr_bytes(net.network())));
                }
            }
            Match::Mark(mk, neg) => masked_cmp(meta_load(META_MARK), *mk, *neg, &mut out),
            Match::ConnMark(mk, neg) => masked_cmp(ct_load(CT_MARK), *mk, *neg, &mut out),
            Match::Set {
                name,
                dir,
                family,
                neg,
            } => {
                let (fam, src, dst, len) = match family {
                    Family::V4 => (NFPROTO_IPV4, 12, 16, 4),
                    Family::V6 => (NFPROTO_IPV6, 8, 24, 16),
                };
                need_nfproto(fam, &mut out);
                out.push(payload(
                    PAYLOAD_NETWORK,
                    if *dir == Dir::Src { src } else { dst },
                    len,
                ));
                out.push(expr("lookup", |b| {
                    put_str(b, 1, name); // NFTA_LOOKUP_SET
                    u32a(b, 2, REG_1); // NFTA_LOOKUP_SREG
                    if *neg {
                        u32a(b, 5, LOOKUP_F_INV); // NFTA_LOOKUP_FLAGS
                    }
                }));
            }
            Match::SocketExists => {
                out.push(meta_load(META_SKUID));
                out.push(expr("byteorder", |b| {
                    u32a(b, 1, REG_1); // NFTA_BYTEORDER_SREG
                    u32a(b, 2, REG_1); // NFTA_BYTEORDER_DREG
                    u32a(b, 3, BYTEORDER_HTON); // NFTA_BYTEORDER_OP
                    u32a(b, 4, 4); // NFTA_BYTEORDER_LEN
                    u32a(b, 5, 4); // NFTA_BYTEORDER_SIZE
                }));
                out.push(cmp(CMP_GTE, &ne32(0)));
            }
            Match::SkUid(u, neg) => {
                out.push(meta_load(META_SKUID));
                out.push(cmp(op(*neg), &ne32(*u)));
            }
            Match::SkGid(g, neg) => {
                out.push(meta_load(META_SKGID));
                out.push(cmp(op(*neg), &ne32(*g)));
            }
        }
    }
    out.push(expr("counter", |_| {}));
    let chain = |c: &str| format!("{}-{c}", r.table.name());
    match &r.target {
        Target::Accept => out.push(verdict(NF_ACCEPT, None)),
        Target::Return => out.push(verdict(NFT_RETURN, None)),
        Target::Jump(c) => out.push(verdict(NFT_JUMP, Some(&chain(c)))),
        Target::SetMark(m) | Target::SetXmark(m) => {
            mark_set(meta_load(META_MARK), meta_set(META_MARK), *m, &mut out)
        }
        Target::ConnMarkSetXmark(m) => mark_set(ct_load(CT_MARK), ct_set(CT_MARK), *m, &mut out),
        Target::ConnMarkSave { nfmask, ctmask } => {
            let known = r.matches.iter().find_map(|m| match m {
                Match::Mark(mk, false) if mk.mask() == *nfmask && nfmask == ctmask => Some(*mk),
                _ => None,
            });
            let Some(mk) = known else {
                return Err(no_nft_form(r));
            };
            out.push(ct_load(CT_MARK));
            out.push(bitwise(&ne32(!ctmask), &ne32(mk.value())));
            out.push(ct_set(CT_MARK));
        }
        Target::ConnMarkRestore { nfmask, ctmask } => {
            if *nfmask != u32::MAX || *ctmask != u32::MAX {
                return Err(no_nft_form(r));
            }
            out.push(ct_load(CT_MARK));
            out.push(meta_set(META_MARK));
        }
        Target::Tproxy { ip, port, mark } => {
            mark_set(meta_load(META_MARK), meta_set(META_MARK), *mark, &mut out);
            out.push(immediate(REG_1, &addr_bytes(*ip)));
            out.push(immediate(REG_2, &port.to_be_bytes()));
            out.push(expr("tproxy", |b| {
                u32a(b, 1, u32::from(nfproto(*ip))); // NFTA_TPROXY_FAMILY
                u32a(b, 2, REG_1); // NFTA_TPROXY_REG_ADDR
                u32a(b, 3, REG_2); // NFTA_TPROXY_REG_PORT
            }));
            out.push(verdict(NF_ACCEPT, None));
        }
        Target::Redirect(p) => {
            out.push(immediate(REG_1, &p.to_be_bytes()));
            out.push(expr("redir", |b| {
                u32a(b, 1, REG_1); // NFTA_REDIR_REG_PROTO_MIN
                u32a(b, 3, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_REDIR_FLAGS
            }));
        }
        Target::Dnat(ip, p) => {
            out.push(immediate(REG_1, &addr_bytes(*ip)));
            out.push(immediate(REG_2, &p.to_be_bytes()));
            out.push(expr("nat", |b| {
                u32a(b, 1, NAT_DNAT); // NFTA_NAT_TYPE
                u32a(b, 2, u32::from(nfproto(*ip))); // NFTA_NAT_FAMILY
                u32a(b, 3, REG_1); // NFTA_NAT_REG_ADDR_MIN
                u32a(b, 5, REG_2); // NFTA_NAT_REG_PROTO_MIN
                u32a(b, 7, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_NAT_FLAGS
            }));
        }
        Target::Snat(ip) => {
            out.push(immediate(REG_1, &addr_bytes(*ip)));
            out.push(expr("nat", |b| {
                u32a(b, 1, NAT_SNAT);
                u32a(b, 2, u32::from(nfproto(*ip)));
                u32a(b, 3, REG_1);
            }));
        }
        Target::CtZone(z) => {
            out.push(immediate(REG_1, &z.to_ne_bytes()));
            out.push(ct_set(CT_ZONE));
        }
    }
    Ok(out)
}

fn no_nft_form(r: &Rule) -> Error {
    Error::Invalid {
        what: format!("rule `{}`", r.iptables()),
        reason: "this CONNMARK form has no nftables equivalent".into(),
    }
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

fn base_chains(rs: &Ruleset) -> Vec<(Table, Hook)> {
    let mut v: Vec<(Table, Hook)> = rs.jumps.iter().map(|j| (j.table, j.hook)).collect();
    v.sort();
    v.dedup();
    v
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
            // nft's user data: the key's byte order (big endian), as nft
            // writes it for address sets.
            let mut udata = vec![UDATA_SET_KEYBYTEORDER, 4];
            udata.extend_from_slice(&BYTEORDER_BIG_ENDIAN.to_ne_bytes());
            put_attr(b, SET_USERDATA, &udata);
        });
        self.push(m, format!("set {name}"));
    }

    /// Sends the batch inside `ns`; all or nothing.
    fn send(mut self, ns: &NetNs, op: &str) -> Result<()> {
        static SEQ: AtomicU32 = AtomicU32::new(1);
        let n = u32::try_from(self.msgs.len() + 2).unwrap_or(u32::MAX);
        let first = SEQ.fetch_add(n, Ordering::Relaxed);
        let (bytes, seqs) = codec::batch(&mut self.msgs, first);
        let mut sock = NlSocket::open(Some(ns), NETLINK_NETFILTER)?;
        let errors = sock.send_batch(&bytes, seqs.clone())?;
        if let Some((seq, e)) = errors.into_iter().next() {
            let what = seq
                .checked_sub(seqs.start)
                .and_then(|i| self.what.get(i as usize))
                .cloned()
                .unwrap_or_else(|| format!("message {seq}"));
            return Err(Error::nack(
                e,
                format!("{op}: the kernel refused {what}; nothing was applied"),
                sock.ns(),
            ));
        }
        Ok(())
    }
}

/// Applies the ruleset as one batch: the table and sets are created if
/// missing, every chain is created and flushed, then the jumps and rules
/// are added (what `nft -f` does with [`Ruleset::nft_script`]). Set
/// elements already there stay. All or nothing.
pub(crate) fn apply(ns: &NetNs, rs: &Ruleset) -> Result<()> {
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
    for (table, hook) in base_chains(rs) {
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
    b.send(ns, &format!("applying nft table inet {t}"))
}

/// Deletes from `old`'s table what `old` has and `newer` lacks (see
/// [`Ruleset::nft_surplus_script`]). Each chain is added first, so absent
/// chains are fine. One batch.
pub(crate) fn remove_surplus(ns: &NetNs, old: &Ruleset, newer: &Ruleset) -> Result<()> {
    old.validate()?;
    let keep = base_chains(newer);
    let bases: Vec<(Table, Hook)> = base_chains(old)
        .into_iter()
        .filter(|b| !keep.contains(b))
        .collect();
    let users: Vec<&(Table, String)> = old
        .chains
        .iter()
        .filter(|c| !newer.chains.contains(c))
        .collect();
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
    b.send(ns, &format!("deleting chains from nft table inet {t}"))
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

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reply's attributes (after the netlink and nfgen headers).
fn payload_of(msg: &[u8]) -> &[u8] {
    msg.get(NLMSG_HDRLEN + 4..).unwrap_or(&[])
}

fn msg_type(msg: &[u8]) -> u16 {
    msg.get(4..6)
        .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]) & 0xff)
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(v)).into_owned()
}

/// The attributes of `data` that are in `keep`, as `type=hex`, plus the
/// value of `name_attr`, if `table_attr` (when not 0) names `table`. Only
/// what the ruleset decides is kept: handles, use and element counts,
/// counters and the kernel's choice of set backend are left out.
fn canon(
    data: &[u8],
    keep: &[u16],
    name_attr: u16,
    table_attr: u16,
    table: &str,
) -> std::result::Result<Option<(String, String)>, String> {
    let (mut name, mut parts, mut ours) = (String::new(), Vec::new(), table_attr == 0);
    for a in attrs(data) {
        let (ty, v) = a?;
        if ty == table_attr {
            ours = text(v) == table;
        } else if ty == name_attr {
            name = text(v);
        } else if keep.contains(&ty) {
            parts.push(format!("{ty}={}", hex(v)));
        }
    }
    Ok(ours.then(|| (name.clone(), parts.join(" "))))
}

/// A rule's chain and canonical text: each expression by name with its
/// data, counters without their values.
fn canon_rule(data: &[u8], table: &str) -> std::result::Result<Option<(String, String)>, String> {
    let (mut chain, mut parts, mut ours) = (String::new(), Vec::new(), false);
    for a in attrs(data) {
        let (ty, v) = a?;
        match ty {
            RULE_TABLE => ours = text(v) == table,
            RULE_CHAIN => chain = text(v),
            RULE_EXPRESSIONS => {
                for e in attrs(v) {
                    let (_, e) = e?;
                    let (mut name, mut body) = (String::new(), "");
                    let mut data = String::new();
                    for x in attrs(e) {
                        let (xt, xv) = x?;
                        match xt {
                            EXPR_NAME => name = text(xv),
                            EXPR_DATA => data = hex(xv),
                            _ => {}
                        }
                    }
                    if name != "counter" {
                        body = &data;
                    }
                    parts.push(format!("{name}({body})"));
                }
            }
            RULE_USERDATA => parts.push(format!("{ty}={}", hex(v))),
            _ => {}
        }
    }
    Ok(ours.then(|| (chain, parts.join(" "))))
}

/// The table as the kernel holds it, canonically (see the module docs);
/// `None` when there is no such table. Set elements are not part of it.
pub(crate) fn listing(ns: &NetNs, table: &str) -> Result<Option<String>> {
    let mut sock = NlSocket::open(Some(ns), NETLINK_NETFILTER)?;
    let op = |what: &str| format!("reading {what} of nft table inet {table}");
    let decode = |what: &str, reason: String| Error::Decode {
        op: op(what),
        reason,
    };
    let get = message(GETTABLE, 0, |b| put_str(b, TABLE_NAME, table));
    let tables = match sock.dump(get)? {
        Ok(t) => t,
        Err(e) if e.errno == ENOENT => return Ok(None),
        Err(e) => return Err(Error::nack(e, op("the table"), sock.ns())),
    };
    let mut lines = Vec::new();
    for m in tables.iter().filter(|m| msg_type(m) == NEWTABLE) {
        let c = canon(
            payload_of(m),
            &[TABLE_FLAGS, TABLE_USERDATA],
            TABLE_NAME,
            0,
            table,
        )
        .map_err(|r| decode("the table", r))?;
        if let Some((_, attrs)) = c {
            lines.push(format!("table inet {table} {attrs}"));
        }
    }
    let mut dump = |msg: u16, filter: u16, what: &str| -> Result<Vec<Vec<u8>>> {
        let req = message(msg, F_DUMP, |b| put_str(b, filter, table));
        sock.dump(req)?
            .map_err(|e| Error::nack(e, op(what), &format!("{ns}")))
    };
    let sets = dump(GETSET, SET_TABLE, "the sets")?;
    let chains = dump(GETCHAIN, CHAIN_TABLE, "the chains")?;
    let rules = dump(GETRULE, RULE_TABLE, "the rules")?;
    let mut set_lines = Vec::new();
    for m in sets.iter().filter(|m| msg_type(m) == NEWSET) {
        if let Some((name, attrs)) = canon(payload_of(m), SET_KEEP, SET_NAME, SET_TABLE, table)
            .map_err(|r| decode("the sets", r))?
        {
            set_lines.push(format!("set {name} {attrs}"));
        }
    }
    set_lines.sort();
    lines.extend(set_lines);
    let mut by_chain: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for m in chains.iter().filter(|m| msg_type(m) == NEWCHAIN) {
        if let Some((name, attrs)) =
            canon(payload_of(m), CHAIN_KEEP, CHAIN_NAME, CHAIN_TABLE, table)
                .map_err(|r| decode("the chains", r))?
        {
            by_chain.entry(name.clone()).or_default().0 = format!("chain {name} {attrs}");
        }
    }
    for m in rules.iter().filter(|m| msg_type(m) == NEWRULE) {
        if let Some((chain, body)) =
            canon_rule(payload_of(m), table).map_err(|r| decode("the rules", r))?
        {
            by_chain
                .entry(chain)
                .or_default()
                .1
                .push(format!("  {body}"));
        }
    }
    for (_, (head, body)) in by_chain {
        lines.push(head);
        lines.extend(body);
    }
    Ok(Some(lines.join("\n")))
}

/// What [`listing`] shows for `rs` applied alone (by [`apply`] in a
/// scratch namespace), made once per ruleset and process.
pub(crate) fn reference(rs: &Ruleset) -> Result<Option<String>> {
    cached(&format!("netlink\n{}", rs.nft_script()?), || {
        let scratch = NetNs::create_anonymous()?;
        apply(&scratch, rs)?;
        listing(&scratch, &rs.nft_table)
    })
}

/// The value of `make` for `key`, made once per process. The text of a
/// ruleset determines what the kernel shows for it, so a reference made
/// once serves every later comparison.
pub(crate) fn cached(
    key: &str,
    make: impl FnOnce() -> Result<Option<String>>,
) -> Result<Option<String>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(v) = cache.lock().ok().and_then(|c| c.get(key).cloned()) {
        return Ok(v);
    }
    let v = make()?;
    if let Ok(mut c) = cache.lock() {
        // A handful of plans per process; bound it all the same.
        if c.len() >= 64 {
            c.clear();
        }
        c.insert(key.to_owned(), v.clone());
    }
    Ok(v)
}
