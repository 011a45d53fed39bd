//! nftables in process through libnftnl (feature `nftnl`).
//!
//! Builds the same table as the `nft -f -` backend — same chains, same
//! expressions in the same order as `nft --debug=netlink` shows nft 1.0.6
//! emitting for our rule text — and sends it as one nfnetlink batch over
//! our own netlink socket inside the namespace. Because the bytecode is
//! the same, `nft list table` prints the same text for both backends, and
//! [`crate::Plan::verify`] compares them directly.
//!
//! libnftnl only serialises; nftnl (the crate) lacks tproxy, redir, ct zone
//! and byteorder expressions, so every expression here goes through one
//! small generic [`Expr`] that sets libnftnl attributes by number.

use std::ffi::{CStr, CString};
use std::net::IpAddr;
use std::ptr::NonNull;

use ambit_netns::NetNs;
use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::set::Set;
use nftnl::{
    Batch, Chain, ChainType, Hook as NfHook, MsgType, ProtoFamily, Rule as NfRule, Table as NfTable,
};

use crate::error::{Error, Result};
use crate::mark::Mark;
use crate::netfilter::{Dir, Hook, Match, Proto, Rule, Ruleset, Table, Target};
use crate::nftrules::wire::*;
use crate::route::Family;

/// An attribute value of a libnftnl expression.
enum Val {
    U32(u32),
    Data(Vec<u8>),
    Str(CString),
}

/// Gives an address set nft's user data — the key's byte order, big
/// endian — so the set is the one `nft -f` and the in-process writer
/// create (and `nft list` prints its elements as addresses).
fn set_key_byteorder<K>(s: &Set<'_, K>) {
    let udata = crate::nftrules::set_key_byteorder_udata();
    #[allow(unsafe_code)]
    // SAFETY: `s` owns a live set; libnftnl copies the data.
    unsafe {
        sys::nftnl_set_set_data(
            s.as_ptr().as_ptr(),
            sys::NFTNL_SET_USERDATA as u16,
            udata.as_ptr().cast(),
            udata.len() as u32,
        );
    }
}

/// One expression: a libnftnl expression name and its attributes.
struct Expr {
    name: &'static CStr,
    attrs: Vec<(u32, Val)>,
}

impl Expression for Expr {
    #[allow(unsafe_code)]
    fn to_expr(&self, _rule: &NfRule<'_>) -> NonNull<sys::nftnl_expr> {
        // SAFETY: `name` is a NUL-terminated static string; the expression
        // pointer is checked for NULL before use; every setter copies its
        // input (libnftnl duplicates strings and data), so the borrowed
        // buffers only need to live for the call. Ownership of the returned
        // expression passes to the rule (nftnl's `Rule::add_expr`).
        unsafe {
            let Some(e) = NonNull::new(sys::nftnl_expr_alloc(self.name.as_ptr())) else {
                // The same policy as nftnl's own expressions: out of memory.
                std::process::abort();
            };
            for (attr, v) in &self.attrs {
                let attr = *attr as u16;
                match v {
                    Val::U32(x) => sys::nftnl_expr_set_u32(e.as_ptr(), attr, *x),
                    Val::Data(d) => {
                        sys::nftnl_expr_set(e.as_ptr(), attr, d.as_ptr().cast(), d.len() as u32);
                    }
                    Val::Str(s) => {
                        sys::nftnl_expr_set_str(e.as_ptr(), attr, s.as_ptr());
                    }
                }
            }
            e
        }
    }
}

fn expr(name: &'static CStr, attrs: Vec<(u32, Val)>) -> Expr {
    Expr { name, attrs }
}

fn meta_load(key: u32) -> Expr {
    expr(
        c"meta",
        vec![
            (sys::NFTNL_EXPR_META_KEY, Val::U32(key)),
            (sys::NFTNL_EXPR_META_DREG, Val::U32(REG_1)),
        ],
    )
}

fn meta_set(key: u32) -> Expr {
    expr(
        c"meta",
        vec![
            (sys::NFTNL_EXPR_META_KEY, Val::U32(key)),
            (sys::NFTNL_EXPR_META_SREG, Val::U32(REG_1)),
        ],
    )
}

fn ct_load(key: u32) -> Expr {
    expr(
        c"ct",
        vec![
            (sys::NFTNL_EXPR_CT_KEY, Val::U32(key)),
            (sys::NFTNL_EXPR_CT_DREG, Val::U32(REG_1)),
        ],
    )
}

fn ct_set(key: u32) -> Expr {
    expr(
        c"ct",
        vec![
            (sys::NFTNL_EXPR_CT_KEY, Val::U32(key)),
            (sys::NFTNL_EXPR_CT_SREG, Val::U32(REG_1)),
        ],
    )
}

fn cmp(op: u32, data: Vec<u8>) -> Expr {
    expr(
        c"cmp",
        vec![
            (sys::NFTNL_EXPR_CMP_SREG, Val::U32(REG_1)),
            (sys::NFTNL_EXPR_CMP_OP, Val::U32(op)),
            (sys::NFTNL_EXPR_CMP_DATA, Val::Data(data)),
        ],
    )
}

fn bitwise(mask: Vec<u8>, xor: Vec<u8>) -> Expr {
    expr(
        c"bitwise",
        vec![
            (sys::NFTNL_EXPR_BITWISE_SREG, Val::U32(REG_1)),
            (sys::NFTNL_EXPR_BITWISE_DREG, Val::U32(REG_1)),
            (sys::NFTNL_EXPR_BITWISE_LEN, Val::U32(mask.len() as u32)),
            (sys::NFTNL_EXPR_BITWISE_MASK, Val::Data(mask)),
            (sys::NFTNL_EXPR_BITWISE_XOR, Val::Data(xor)),
        ],
    )
}

fn payload(base: u32, offset: u32, len: u32) -> Expr {
    expr(
        c"payload",
        vec![
            (sys::NFTNL_EXPR_PAYLOAD_DREG, Val::U32(REG_1)),
            (sys::NFTNL_EXPR_PAYLOAD_BASE, Val::U32(base)),
            (sys::NFTNL_EXPR_PAYLOAD_OFFSET, Val::U32(offset)),
            (sys::NFTNL_EXPR_PAYLOAD_LEN, Val::U32(len)),
        ],
    )
}

fn immediate(reg: u32, data: Vec<u8>) -> Expr {
    expr(
        c"immediate",
        vec![
            (sys::NFTNL_EXPR_IMM_DREG, Val::U32(reg)),
            (sys::NFTNL_EXPR_IMM_DATA, Val::Data(data)),
        ],
    )
}

fn verdict(code: i32, chain: Option<&str>) -> Result<Expr> {
    let mut attrs = vec![
        (sys::NFTNL_EXPR_IMM_DREG, Val::U32(REG_VERDICT)),
        (sys::NFTNL_EXPR_IMM_VERDICT, Val::U32(code as u32)),
    ];
    if let Some(c) = chain {
        attrs.push((sys::NFTNL_EXPR_IMM_CHAIN, Val::Str(cstring(c)?)));
    }
    Ok(expr(c"immediate", attrs))
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Invalid {
        what: format!("name {s:?}"),
        reason: "contains NUL".into(),
    })
}

fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(IFNAMSIZ, 0);
    v
}

fn ne32(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
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
        out.push(bitwise(ne32(m.mask()), ne32(0)));
    }
    out.push(cmp(if neg { CMP_NEQ } else { CMP_EQ }, ne32(m.value())));
}

/// `KEY set KEY & !M | V` (or `set V` for a full mask).
fn mark_set(load: Expr, set: Expr, m: Mark, out: &mut Vec<Expr>) {
    if m.mask() == u32::MAX {
        out.push(immediate(REG_1, ne32(m.value())));
    } else {
        out.push(load);
        out.push(bitwise(ne32(!m.mask()), ne32(m.value())));
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
            out.push(cmp(CMP_EQ, vec![fam]));
            nfproto_done = Some(fam);
        }
    };
    let op = |neg: bool| if neg { CMP_NEQ } else { CMP_EQ };
    for m in &r.matches {
        match m {
            Match::InIface(n, neg) => {
                out.push(meta_load(META_IIFNAME));
                out.push(cmp(op(*neg), ifname(n)));
            }
            Match::OutIface(n, neg) => {
                out.push(meta_load(META_OIFNAME));
                out.push(cmp(op(*neg), ifname(n)));
            }
            Match::Proto(p) => {
                out.push(meta_load(META_L4PROTO));
                out.push(cmp(CMP_EQ, vec![if *p == Proto::Tcp { 6 } else { 17 }]));
            }
            Match::DPort(p, neg) | Match::SPort(p, neg) => {
                let off = if matches!(m, Match::DPort(..)) { 2 } else { 0 };
                out.push(payload(PAYLOAD_TRANSPORT, off, 2));
                out.push(cmp(op(*neg), p.to_be_bytes().to_vec()));
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
                    out.push(cmp(op(*neg), bytes[..n as usize].to_vec()));
                } else {
                    out.push(payload(PAYLOAD_NETWORK, off, len));
                    let mask = addr_bytes(net.netmask());
                    out.push(bitwise(mask, vec![0; len as usize]));
                    out.push(cmp(op(*neg), addr_bytes(net.network())));
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
                let mut attrs = vec![
                    (sys::NFTNL_EXPR_LOOKUP_SREG, Val::U32(REG_1)),
                    (sys::NFTNL_EXPR_LOOKUP_SET, Val::Str(cstring(name)?)),
                ];
                if *neg {
                    attrs.push((sys::NFTNL_EXPR_LOOKUP_FLAGS, Val::U32(LOOKUP_F_INV)));
                }
                out.push(expr(c"lookup", attrs));
            }
            Match::SocketExists => {
                out.push(meta_load(META_SKUID));
                out.push(expr(
                    c"byteorder",
                    vec![
                        (sys::NFTNL_EXPR_BYTEORDER_SREG, Val::U32(REG_1)),
                        (sys::NFTNL_EXPR_BYTEORDER_DREG, Val::U32(REG_1)),
                        (sys::NFTNL_EXPR_BYTEORDER_OP, Val::U32(BYTEORDER_HTON)),
                        (sys::NFTNL_EXPR_BYTEORDER_LEN, Val::U32(4)),
                        (sys::NFTNL_EXPR_BYTEORDER_SIZE, Val::U32(4)),
                    ],
                ));
                out.push(cmp(CMP_GTE, ne32(0)));
            }
            Match::SkUid(u, neg) => {
                out.push(meta_load(META_SKUID));
                out.push(cmp(op(*neg), ne32(*u)));
            }
            Match::SkGid(g, neg) => {
                out.push(meta_load(META_SKGID));
                out.push(cmp(op(*neg), ne32(*g)));
            }
        }
    }
    out.push(expr(c"counter", vec![]));
    let chain = |c: &str| format!("{}-{c}", r.table.name());
    match &r.target {
        Target::Accept => out.push(verdict(NF_ACCEPT, None)?),
        Target::Return => out.push(verdict(NFT_RETURN, None)?),
        Target::Jump(c) => out.push(verdict(NFT_JUMP, Some(&chain(c)))?),
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
            out.push(bitwise(ne32(!ctmask), ne32(mk.value())));
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
            out.push(immediate(REG_1, addr_bytes(*ip)));
            out.push(immediate(REG_2, port.to_be_bytes().to_vec()));
            out.push(expr(
                c"tproxy",
                vec![
                    (
                        sys::NFTNL_EXPR_TPROXY_FAMILY,
                        Val::U32(u32::from(nfproto(*ip))),
                    ),
                    (sys::NFTNL_EXPR_TPROXY_REG_ADDR, Val::U32(REG_1)),
                    (sys::NFTNL_EXPR_TPROXY_REG_PORT, Val::U32(REG_2)),
                ],
            ));
            out.push(verdict(NF_ACCEPT, None)?);
        }
        Target::Redirect(p) => {
            out.push(immediate(REG_1, p.to_be_bytes().to_vec()));
            out.push(expr(
                c"redir",
                vec![
                    (sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN, Val::U32(REG_1)),
                    (
                        sys::NFTNL_EXPR_REDIR_FLAGS,
                        Val::U32(NF_NAT_RANGE_PROTO_SPECIFIED),
                    ),
                ],
            ));
        }
        Target::Dnat(ip, p) => {
            out.push(immediate(REG_1, addr_bytes(*ip)));
            out.push(immediate(REG_2, p.to_be_bytes().to_vec()));
            out.push(expr(
                c"nat",
                vec![
                    (sys::NFTNL_EXPR_NAT_TYPE, Val::U32(NAT_DNAT)),
                    (
                        sys::NFTNL_EXPR_NAT_FAMILY,
                        Val::U32(u32::from(nfproto(*ip))),
                    ),
                    (sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, Val::U32(REG_1)),
                    (sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, Val::U32(REG_2)),
                    (
                        sys::NFTNL_EXPR_NAT_FLAGS,
                        Val::U32(NF_NAT_RANGE_PROTO_SPECIFIED),
                    ),
                ],
            ));
        }
        Target::Snat(ip) => {
            out.push(immediate(REG_1, addr_bytes(*ip)));
            out.push(expr(
                c"nat",
                vec![
                    (sys::NFTNL_EXPR_NAT_TYPE, Val::U32(NAT_SNAT)),
                    (
                        sys::NFTNL_EXPR_NAT_FAMILY,
                        Val::U32(u32::from(nfproto(*ip))),
                    ),
                    (sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, Val::U32(REG_1)),
                ],
            ));
        }
        Target::CtZone(z) => {
            out.push(immediate(REG_1, z.to_ne_bytes().to_vec()));
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

fn nf_hook(h: Hook) -> NfHook {
    match h {
        Hook::Prerouting => NfHook::PreRouting,
        Hook::Input => NfHook::In,
        Hook::Forward => NfHook::Forward,
        Hook::Output => NfHook::Out,
        Hook::Postrouting => NfHook::PostRouting,
    }
}

/// The chain type and priority standing in for `table`'s `hook` (the same
/// as the text backend's).
fn base(table: Table, hook: Hook) -> (ChainType, i32) {
    match (table, hook) {
        (Table::Raw, _) => (ChainType::Filter, -300),
        (Table::Mangle, Hook::Output) => (ChainType::Route, -150),
        (Table::Mangle, _) => (ChainType::Filter, -150),
        (Table::Nat, Hook::Prerouting | Hook::Output) => (ChainType::Nat, -100),
        (Table::Nat, _) => (ChainType::Nat, 100),
        (Table::Filter, _) => (ChainType::Filter, 0),
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

/// What each message of the batch is, for error messages.
struct Described {
    batch: Batch,
    what: Vec<String>,
}

impl Described {
    fn add<T: nftnl::NlMsg>(&mut self, msg: &T, ty: MsgType, what: String) {
        self.batch.add(msg, ty);
        self.what.push(what);
    }
}

/// Applies the ruleset as one nfnetlink batch: the table and sets are
/// created if missing, every chain is created and flushed, then the jumps
/// and rules are added. All or nothing.
pub(crate) fn apply(ns: &NetNs, rs: &Ruleset) -> Result<()> {
    rs.validate()?;
    // Build every expression first, so that an unrenderable rule fails
    // before anything is sent.
    let rules = rs
        .rules
        .iter()
        .map(rule_exprs)
        .collect::<Result<Vec<_>>>()?;
    let tname = cstring(&rs.nft_table)?;
    let table = NfTable::new(&tname, ProtoFamily::Inet);
    let mut b = Described {
        batch: Batch::new(),
        what: Vec::new(),
    };
    b.add(&table, MsgType::Add, format!("table inet {}", rs.nft_table));

    let set_names: Vec<CString> = rs
        .sets
        .iter()
        .map(|(n, _)| cstring(n))
        .collect::<Result<_>>()?;
    for (i, ((name, fam), cname)) in rs.sets.iter().zip(&set_names).enumerate() {
        let id = i as u32 + 1;
        match fam {
            Family::V4 => {
                let s: Set<'_, std::net::Ipv4Addr> =
                    Set::new_named(cname, id, &table, ProtoFamily::Inet);
                set_key_byteorder(&s);
                b.add(&s, MsgType::Add, format!("set {name}"));
            }
            Family::V6 => {
                let s: Set<'_, std::net::Ipv6Addr> =
                    Set::new_named(cname, id, &table, ProtoFamily::Inet);
                set_key_byteorder(&s);
                b.add(&s, MsgType::Add, format!("set {name}"));
            }
        }
    }

    let bases = rs.base_chains();
    let base_names: Vec<CString> = bases
        .iter()
        .map(|(t, h)| cstring(&format!("{}-{}", t.name(), hook_name(*h))))
        .collect::<Result<_>>()?;
    let user_names: Vec<CString> = rs
        .chains
        .iter()
        .map(|(t, n)| cstring(&format!("{}-{n}", t.name())))
        .collect::<Result<_>>()?;
    let mut base_chains = Vec::new();
    for ((t, h), name) in bases.iter().zip(&base_names) {
        let mut c = Chain::new(name, &table);
        let (ty, prio) = base(*t, *h);
        c.set_hook(nf_hook(*h), prio);
        c.set_type(ty);
        base_chains.push((*t, *h, c));
    }
    let user_chains: Vec<(Table, &str, Chain<'_>)> = rs
        .chains
        .iter()
        .zip(&user_names)
        .map(|((t, n), cn)| (*t, n.as_str(), Chain::new(cn, &table)))
        .collect();
    for (t, h, c) in &base_chains {
        b.add(
            c,
            MsgType::Add,
            format!("base chain {}-{}", t.name(), hook_name(*h)),
        );
        b.add(
            &NfRule::new(c),
            MsgType::Del,
            format!("flushing {}-{}", t.name(), hook_name(*h)),
        );
    }
    for (t, n, c) in &user_chains {
        b.add(c, MsgType::Add, format!("chain {}-{n}", t.name()));
        b.add(
            &NfRule::new(c),
            MsgType::Del,
            format!("flushing {}-{n}", t.name()),
        );
    }
    for j in &rs.jumps {
        let Some((_, _, c)) = base_chains
            .iter()
            .find(|(t, h, _)| *t == j.table && *h == j.hook)
        else {
            continue;
        };
        let mut rule = NfRule::new(c);
        rule.add_expr(&verdict(
            NFT_JUMP,
            Some(&format!("{}-{}", j.table.name(), j.chain)),
        )?);
        b.add(
            &rule,
            MsgType::Add,
            format!("jump {} -> {}", j.hook.chain(), j.chain),
        );
    }
    for (r, exprs) in rs.rules.iter().zip(&rules) {
        let Some((_, _, c)) = user_chains
            .iter()
            .find(|(t, n, _)| *t == r.table && *n == r.chain)
        else {
            continue;
        };
        let mut rule = NfRule::new(c);
        for e in exprs {
            rule.add_expr(e);
        }
        b.add(&rule, MsgType::Add, format!("rule `{r}`"));
    }
    send(ns, b, &format!("applying nft table inet {}", rs.nft_table))
}

/// Deletes from `old`'s table what `old` has and `newer` lacks: base
/// chains no jump of `newer` uses, then user chains `newer` does not
/// declare (see `Ruleset::nft_surplus_script`). Each chain is added first,
/// so absent chains are fine. One batch.
pub(crate) fn remove_surplus(ns: &NetNs, old: &Ruleset, newer: &Ruleset) -> Result<()> {
    let (bases, users) = old.surplus(newer);
    if bases.is_empty() && users.is_empty() {
        return Ok(());
    }
    let tname = cstring(&old.nft_table)?;
    let table = NfTable::new(&tname, ProtoFamily::Inet);
    let base_names: Vec<CString> = bases
        .iter()
        .map(|(t, h)| cstring(&format!("{}-{}", t.name(), hook_name(*h))))
        .collect::<Result<_>>()?;
    let user_names: Vec<CString> = users
        .iter()
        .map(|(t, n)| cstring(&format!("{}-{n}", t.name())))
        .collect::<Result<_>>()?;
    let mut b = Described {
        batch: Batch::new(),
        what: Vec::new(),
    };
    b.add(
        &table,
        MsgType::Add,
        format!("table inet {}", old.nft_table),
    );
    for ((t, h), name) in bases.iter().zip(&base_names) {
        let mut c = Chain::new(name, &table);
        let (ty, prio) = base(*t, *h);
        c.set_hook(nf_hook(*h), prio);
        c.set_type(ty);
        let what = format!("base chain {}-{}", t.name(), hook_name(*h));
        b.add(&c, MsgType::Add, what.clone());
        b.add(&c, MsgType::Del, format!("deleting {what}"));
    }
    for ((t, n), name) in users.iter().zip(&user_names) {
        let c = Chain::new(name, &table);
        let what = format!("chain {}-{n}", t.name());
        b.add(&c, MsgType::Add, what.clone());
        b.add(&c, MsgType::Del, format!("deleting {what}"));
    }
    send(
        ns,
        b,
        &format!("deleting chains from nft table inet {}", old.nft_table),
    )
}

/// Deletes the ruleset's table; an absent table is not an error.
pub(crate) fn remove(ns: &NetNs, rs: &Ruleset) -> Result<()> {
    let tname = cstring(&rs.nft_table)?;
    let table = NfTable::new(&tname, ProtoFamily::Inet);
    let mut b = Described {
        batch: Batch::new(),
        what: Vec::new(),
    };
    b.add(&table, MsgType::Del, format!("table inet {}", rs.nft_table));
    match send(ns, b, &format!("deleting nft table inet {}", rs.nft_table)) {
        Err(Error::Netlink { errno: ENOENT, .. }) => Ok(()),
        r => r,
    }
}

fn send(ns: &NetNs, b: Described, op: &str) -> Result<()> {
    let finalized = b.batch.finalize();
    // The range covers the batch begin and end messages too, which the
    // kernel does not acknowledge.
    let all = finalized.sequence_numbers();
    let seqs = all.start.saturating_add(1)..all.end.saturating_sub(1);
    let bytes: Vec<u8> = finalized
        .iter()
        .flat_map(|chunk| chunk.iter().copied())
        .collect();
    crate::nftrules::send_batch(ns, &bytes, seqs, &b.what, op)
}
