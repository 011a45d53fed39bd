//! Reading the table back over nfnetlink and rendering it canonically
//! for verification, and the per-process cache of reference renderings.

use super::*;

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
    listing_on(&mut NlSocket::open(Some(ns), NETLINK_NETFILTER)?, table)
}

/// [`listing`] on a netfilter socket already open in the namespace.
pub(crate) fn listing_on(sock: &mut NlSocket, table: &str) -> Result<Option<String>> {
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
    let label = sock.ns().to_owned();
    let mut dump = |msg: u16, filter: u16, what: &str| -> Result<Vec<Vec<u8>>> {
        let req = message(msg, F_DUMP, |b| put_str(b, filter, table));
        sock.dump(req)?
            .map_err(|e| Error::nack(e, op(what), &label))
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
    cached("netlink", rs, "", || {
        let scratch = NetNs::create_anonymous()?;
        apply(&scratch, rs)?;
        listing(&scratch, &rs.nft_table)
    })
}

/// The value of `make` for (`how`, `rs`, `extra`), made once per process.
/// A ruleset determines what the kernel shows for it, so a reference made
/// once serves every later comparison. Entries are found by comparing the
/// ruleset itself, which costs far less than rendering it as text to make
/// a key (this runs on every check of every pod).
pub(crate) fn cached(
    how: &'static str,
    rs: &Ruleset,
    extra: &str,
    make: impl FnOnce() -> Result<Option<String>>,
) -> Result<Option<String>> {
    type Key = (&'static str, Ruleset, String);
    static CACHE: Mutex<Vec<(Key, Option<String>)>> = Mutex::new(Vec::new());
    memo(
        &CACHE,
        64,
        |(h, r, e)| *h == how && r == rs && e == extra,
        || (how, rs.clone(), extra.to_owned()),
        make,
    )
}
