//! A [`Rule`] as nf_tables expressions: the same expressions, in the same
//! order, that nft emits for the rule's text.

use super::*;

/// One expression: its name and the attributes inside `NFTA_EXPR_DATA`.
pub(super) struct Expr {
    pub(super) name: &'static str,
    pub(super) data: Vec<u8>,
}

pub(super) fn expr(name: &'static str, build: impl FnOnce(&mut Vec<u8>)) -> Expr {
    let mut data = Vec::new();
    build(&mut data);
    Expr { name, data }
}

pub(super) fn u32a(buf: &mut Vec<u8>, ty: u16, v: u32) {
    put_attr(buf, ty, &v.to_be_bytes());
}

pub(super) fn value(buf: &mut Vec<u8>, ty: u16, bytes: &[u8]) {
    let n = begin_nest(buf, ty);
    put_attr(buf, DATA_VALUE, bytes);
    end_nest(buf, n);
}

pub(super) fn meta_load(key: u32) -> Expr {
    expr("meta", |b| {
        u32a(b, 1, REG_1); // NFTA_META_DREG
        u32a(b, 2, key); // NFTA_META_KEY
    })
}

pub(super) fn meta_set(key: u32) -> Expr {
    expr("meta", |b| {
        u32a(b, 2, key); // NFTA_META_KEY
        u32a(b, 3, REG_1); // NFTA_META_SREG
    })
}

pub(super) fn ct_load(key: u32) -> Expr {
    expr("ct", |b| {
        u32a(b, 1, REG_1); // NFTA_CT_DREG
        u32a(b, 2, key); // NFTA_CT_KEY
    })
}

pub(super) fn ct_set(key: u32) -> Expr {
    expr("ct", |b| {
        u32a(b, 2, key); // NFTA_CT_KEY
        u32a(b, 4, REG_1); // NFTA_CT_SREG
    })
}

pub(super) fn cmp(op: u32, data: &[u8]) -> Expr {
    expr("cmp", |b| {
        u32a(b, 1, REG_1); // NFTA_CMP_SREG
        u32a(b, 2, op); // NFTA_CMP_OP
        value(b, 3, data); // NFTA_CMP_DATA
    })
}

pub(super) fn bitwise(mask: &[u8], xor: &[u8]) -> Expr {
    expr("bitwise", |b| {
        u32a(b, 1, REG_1); // NFTA_BITWISE_SREG
        u32a(b, 2, REG_1); // NFTA_BITWISE_DREG
        u32a(b, 3, mask.len() as u32); // NFTA_BITWISE_LEN
        value(b, 4, mask); // NFTA_BITWISE_MASK
        value(b, 5, xor); // NFTA_BITWISE_XOR
    })
}

pub(super) fn payload(base: u32, offset: u32, len: u32) -> Expr {
    expr("payload", |b| {
        u32a(b, 1, REG_1); // NFTA_PAYLOAD_DREG
        u32a(b, 2, base); // NFTA_PAYLOAD_BASE
        u32a(b, 3, offset); // NFTA_PAYLOAD_OFFSET
        u32a(b, 4, len); // NFTA_PAYLOAD_LEN
    })
}

pub(super) fn immediate(reg: u32, data: &[u8]) -> Expr {
    expr("immediate", |b| {
        u32a(b, 1, reg); // NFTA_IMMEDIATE_DREG
        value(b, 2, data); // NFTA_IMMEDIATE_DATA
    })
}

pub(super) fn verdict(code: i32, chain: Option<&str>) -> Expr {
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

pub(super) fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(IFNAMSIZ, 0);
    v
}

pub(super) fn ne32(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

pub(super) fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `meta mark & M == V` and friends: load, mask unless full, compare.
pub(super) fn masked_cmp(load: Expr, m: Mark, neg: bool, out: &mut Vec<Expr>) {
    out.push(load);
    if m.mask() != u32::MAX {
        out.push(bitwise(&ne32(m.mask()), &ne32(0)));
    }
    out.push(cmp(if neg { CMP_NEQ } else { CMP_EQ }, &ne32(m.value())));
}

/// `KEY set KEY & !M | V` (or `set V` for a full mask).
pub(super) fn mark_set(load: Expr, set: Expr, m: Mark, out: &mut Vec<Expr>) {
    if m.mask() == u32::MAX {
        out.push(immediate(REG_1, &ne32(m.value())));
    } else {
        out.push(load);
        out.push(bitwise(&ne32(!m.mask()), &ne32(m.value())));
    }
    out.push(set);
}

pub(super) fn nfproto(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        NFPROTO_IPV4
    } else {
        NFPROTO_IPV6
    }
}

/// The expressions of one rule, mirroring nft's code generation.
pub(super) fn rule_exprs(r: &Rule) -> Result<Vec<Expr>> {
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

pub(super) fn no_nft_form(r: &Rule) -> Error {
    Error::Invalid {
        what: format!("rule `{}`", r.iptables()),
        reason: "this CONNMARK form has no nftables equivalent".into(),
    }
}
