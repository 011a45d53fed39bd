//! Applying a [`Ruleset`] to a namespace: natively through `nft -f -`
//! (atomic transactions), or through `iptables-restore --noflush`.

use std::io::Write;
use std::process::{Command, Stdio};

use ambit_netns::NetNs;

use crate::error::{Error, Result};
use crate::ipset::IpSetEntry;
use crate::netfilter::{Hook, Jump, Ruleset, Table};
use crate::route::Family;

/// How packet-filter rules reach the kernel. Sets, ip rules and routes
/// always go over netlink directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// nftables: one `inet` table owned by the plan, written as one atomic
    /// transaction — in process over nfnetlink, or with `nft -f -`
    /// ([`crate::RuleWrites`]). Sets are nft sets in that table.
    #[default]
    Nft,
    /// iptables (legacy or nft-based `iptables`): user chains written with
    /// `iptables-restore --noflush`, one atomic commit per table. Sets are
    /// ipsets, programmed over nfnetlink.
    Iptables,
    /// nftables in process through libnftnl (cargo feature `nftnl`): the
    /// same table as [`Backend::Nft`], sent as one netlink batch.
    #[cfg(feature = "nftnl")]
    Nftnl,
}

impl Backend {
    /// Whether sets live in nftables (true) or are ipsets (false).
    pub fn nft_sets(self) -> bool {
        !matches!(self, Self::Iptables)
    }
}

/// Runs `program args` inside `ns` with `stdin`, returning stdout; a
/// failure reports stderr and what was being done.
pub(crate) fn tool(
    ns: &NetNs,
    program: &str,
    args: &[&str],
    stdin: &str,
    op: &str,
) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ns.spawn_command(&mut cmd)?;
    let io_err = |source| Error::Io {
        op: format!("running {program} while {op}"),
        source,
    };
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).map_err(io_err)?;
    }
    let out = child.wait_with_output().map_err(io_err)?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        // iptables-restore names only a line number: quote that line.
        if let Some(n) = stderr
            .split("line ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse::<usize>().ok())
            && let Some(line) = stdin.lines().nth(n.saturating_sub(1))
        {
            stderr = format!("{stderr} (line {n}: `{line}`)");
        }
        return Err(Error::Tool {
            program: format!("{program} {}", args.join(" ")),
            op: op.to_owned(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nft_table_exists(ns: &NetNs, table: &str) -> Result<bool> {
    let out = tool(
        ns,
        "nft",
        &["list", "tables", "inet"],
        "",
        "listing nft tables",
    )?;
    Ok(out
        .lines()
        .any(|l| l.trim() == format!("table inet {table}")))
}

/// Applies the ruleset with `nft -f -` (one transaction: all or nothing).
pub(crate) fn nft_apply(ns: &NetNs, rs: &Ruleset) -> Result<()> {
    let script = rs.nft_script()?;
    tool(
        ns,
        "nft",
        &["-f", "-"],
        &script,
        &format!("applying nft table inet {}", rs.nft_table),
    )?;
    Ok(())
}

/// Deletes from the ruleset's nft table what `old` has and `newer` lacks
/// (see [`Ruleset::nft_surplus_script`]). One transaction.
pub(crate) fn nft_remove_surplus(ns: &NetNs, old: &Ruleset, newer: &Ruleset) -> Result<()> {
    let script = old.nft_surplus_script(newer)?;
    if script.is_empty() {
        return Ok(());
    }
    tool(
        ns,
        "nft",
        &["-f", "-"],
        &script,
        &format!("deleting chains from nft table inet {}", old.nft_table),
    )?;
    Ok(())
}

/// Deletes the ruleset's nft table, if present.
pub(crate) fn nft_remove(ns: &NetNs, rs: &Ruleset) -> Result<()> {
    if nft_table_exists(ns, &rs.nft_table)? {
        let script = format!("delete table inet {}\n", rs.nft_table);
        tool(
            ns,
            "nft",
            &["-f", "-"],
            &script,
            &format!("deleting nft table inet {}", rs.nft_table),
        )?;
    }
    Ok(())
}

/// The table as `nft list` prints it, without handles and set elements:
/// the canonical form used to compare plan and kernel.
pub(crate) fn nft_listing(ns: &NetNs, table: &str) -> Result<Option<String>> {
    if !nft_table_exists(ns, table)? {
        return Ok(None);
    }
    let out = tool(
        ns,
        "nft",
        // Stateless: counters would make every listing differ.
        &["-s", "list", "table", "inet", table],
        "",
        &format!("listing nft table inet {table}"),
    )?;
    let mut keep = Vec::new();
    let mut in_elements = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("elements = {") {
            in_elements = !t.ends_with('}');
            continue;
        }
        if in_elements {
            in_elements = !t.ends_with('}');
            continue;
        }
        keep.push(t.to_owned());
    }
    Ok(Some(sorted_blocks(&keep).join("\n")))
}

/// The listing's chain and set blocks in a canonical order: the order of
/// chains in a table is the order they were created in, which means
/// nothing (base chains run by hook and priority), so two tables with the
/// same chains compare equal however they were built. Lines inside a
/// block keep their order, which does mean something.
fn sorted_blocks(lines: &[String]) -> Vec<String> {
    let (mut head, mut blocks, mut tail) = (Vec::new(), Vec::<Vec<String>>::new(), Vec::new());
    let mut open: Option<Vec<String>> = None;
    for l in lines {
        match open.as_mut() {
            Some(b) => {
                b.push(l.clone());
                if l == "}" {
                    blocks.extend(open.take());
                }
            }
            None if l.ends_with('{') && !l.starts_with("table ") => open = Some(vec![l.clone()]),
            None if blocks.is_empty() => head.push(l.clone()),
            None => tail.push(l.clone()),
        }
    }
    // An unterminated block (never printed by nft) stays where it was.
    blocks.extend(open);
    blocks.sort();
    head.into_iter()
        .chain(blocks.into_iter().flatten())
        .chain(tail)
        .collect()
}

/// Adds elements (with comments) to an nft set; present elements are kept.
pub(crate) fn nft_add_elements(
    ns: &NetNs,
    table: &str,
    set: &str,
    entries: &[IpSetEntry],
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut script = String::with_capacity(entries.len() * 48);
    for chunk in entries.chunks(4096) {
        script.push_str(&format!("add element inet {table} {set} {{ "));
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                script.push_str(", ");
            }
            script.push_str(&e.ip.to_string());
            if let Some(c) = &e.comment {
                script.push_str(&format!(" comment \"{}\"", c.replace('"', "'")));
            }
        }
        script.push_str(" }\n");
    }
    tool(
        ns,
        "nft",
        &["-f", "-"],
        &script,
        &format!("adding {} elements to set {set}", entries.len()),
    )?;
    Ok(())
}

/// Elements of an nft set (addresses only).
pub(crate) fn nft_elements(ns: &NetNs, table: &str, set: &str) -> Result<Vec<std::net::IpAddr>> {
    let out = tool(
        ns,
        "nft",
        &["-j", "list", "set", "inet", table, set],
        "",
        &format!("listing set {set}"),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| Error::Decode {
        op: format!("nft -j list set {set}"),
        reason: e.to_string(),
    })?;
    let mut ips = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for el in item["set"]["elem"].as_array().into_iter().flatten() {
            // Elements with comments are {"elem": {"val": "...", "comment": "..."}}.
            let val = el.get("elem").map(|e| &e["val"]).unwrap_or(el);
            if let Some(ip) = val.as_str().and_then(|s| s.parse().ok()) {
                ips.push(ip);
            }
        }
    }
    Ok(ips)
}

/// Deletes elements from an nft set; absent elements are skipped (nft
/// would fail the whole transaction on one).
pub(crate) fn nft_del_elements(
    ns: &NetNs,
    table: &str,
    set: &str,
    ips: &[std::net::IpAddr],
) -> Result<()> {
    let present = nft_elements(ns, table, set)?;
    let gone: Vec<String> = ips
        .iter()
        .filter(|ip| present.contains(ip))
        .map(|ip| ip.to_string())
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let script = format!(
        "delete element inet {table} {set} {{ {} }}\n",
        gone.join(", ")
    );
    tool(
        ns,
        "nft",
        &["-f", "-"],
        &script,
        &format!("deleting {} elements from set {set}", gone.len()),
    )?;
    Ok(())
}

fn restore_cmd(f: Family) -> (&'static str, &'static str) {
    match f {
        Family::V4 => ("iptables-restore", "iptables-save"),
        Family::V6 => ("ip6tables-restore", "ip6tables-save"),
    }
}

fn families(rs: &Ruleset) -> Vec<Family> {
    if rs.ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// What `iptables-save` shows of our chains and jumps.
struct XtState {
    chains: Vec<(Table, String)>,
    jumps: Vec<Jump>,
    /// Lines about our chains and jumps, counters stripped, in order.
    lines: Vec<String>,
}

fn xt_state(ns: &NetNs, rs: &Ruleset, f: Family) -> Result<XtState> {
    let (_, save) = restore_cmd(f);
    let out = tool(ns, save, &[], "", "reading iptables state")?;
    let mut st = XtState {
        chains: Vec::new(),
        jumps: Vec::new(),
        lines: Vec::new(),
    };
    let mut table = None;
    for line in out.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = [Table::Raw, Table::Mangle, Table::Nat, Table::Filter]
                .into_iter()
                .find(|x| x.name() == t);
            continue;
        }
        let Some(table) = table else { continue };
        let ours = |name: &str| rs.chains.iter().any(|(t, n)| *t == table && n == name);
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if ours(name) {
                st.chains.push((table, name.to_owned()));
                st.lines.push(format!("{} :{name}", table.name()));
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let mut it = rule.split_whitespace();
            let chain = it.next().unwrap_or_default();
            if ours(chain) {
                st.lines.push(format!("{} -A {rule}", table.name()));
            } else if let (Some("-j"), Some(target), None) = (it.next(), it.next(), it.next())
                && ours(target)
                && let Some(hook) = [
                    Hook::Prerouting,
                    Hook::Input,
                    Hook::Forward,
                    Hook::Output,
                    Hook::Postrouting,
                ]
                .into_iter()
                .find(|h| h.chain() == chain)
            {
                st.jumps.push(Jump {
                    table,
                    hook,
                    chain: target.to_owned(),
                });
                st.lines.push(format!("{} -A {rule}", table.name()));
            }
        }
    }
    Ok(st)
}

/// Applies the ruleset with `iptables-restore --noflush` (per family).
/// iptables commits table by table, so when one table is refused the
/// tables already committed are rolled back to what they were before.
pub(crate) fn xt_apply(ns: &NetNs, rs: &Ruleset) -> Result<()> {
    for f in families(rs) {
        let st = xt_state(ns, rs, f)?;
        let text = rs.iptables_restore(f, &st.jumps)?;
        let (restore, _) = restore_cmd(f);
        if let Err(e) = tool(
            ns,
            restore,
            &["--noflush"],
            &text,
            "applying iptables rules",
        ) {
            rollback(ns, rs, f, &st)?;
            return Err(e);
        }
    }
    Ok(())
}

/// Puts our chains and jumps back as `before` had them.
fn rollback(ns: &NetNs, rs: &Ruleset, f: Family, before: &XtState) -> Result<()> {
    let now = xt_state(ns, rs, f)?;
    let (restore, _) = restore_cmd(f);
    let clear = rs.iptables_remove(&now.chains, &now.jumps);
    if !clear.is_empty() {
        tool(
            ns,
            restore,
            &["--noflush"],
            &clear,
            "rolling back iptables rules",
        )?;
    }
    let mut text = String::new();
    for table in [Table::Raw, Table::Mangle, Table::Nat, Table::Filter] {
        let prefix = format!("{} ", table.name());
        let lines: Vec<&str> = before
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect();
        if lines.is_empty() {
            continue;
        }
        text += &format!("*{}\n", table.name());
        for l in lines.iter().filter(|l| l.starts_with(':')) {
            text += &format!("{l} - [0:0]\n");
        }
        for l in lines.iter().filter(|l| l.starts_with("-A ")) {
            text += &format!("{l}\n");
        }
        text += "COMMIT\n";
    }
    if !text.is_empty() {
        tool(
            ns,
            restore,
            &["--noflush"],
            &text,
            "restoring iptables rules",
        )?;
    }
    prune_empty_xt_tables(ns, rs, f)
}

/// Removes the ruleset's jumps and chains (per family).
pub(crate) fn xt_remove(ns: &NetNs, rs: &Ruleset) -> Result<()> {
    for f in families(rs) {
        xt_remove_family(ns, rs, f)?;
    }
    Ok(())
}

/// Removes the ruleset's jumps and chains from one family's tables.
pub(crate) fn xt_remove_family(ns: &NetNs, rs: &Ruleset, f: Family) -> Result<()> {
    let st = xt_state(ns, rs, f)?;
    let text = rs.iptables_remove(&st.chains, &st.jumps);
    if !text.is_empty() {
        let (restore, _) = restore_cmd(f);
        tool(
            ns,
            restore,
            &["--noflush"],
            &text,
            "removing iptables rules",
        )?;
    }
    prune_empty_xt_tables(ns, rs, f)
}

/// With iptables-nft, using a table creates it in nftables with its
/// built-in chains, and they stay after our chains are gone. A table left
/// with only empty, accept-policy built-in chains filters nothing; it is
/// deleted so that removal leaves `nft list ruleset` as it was. (iptables
/// recreates it on next use; with iptables-legacy there is nothing to do.)
fn prune_empty_xt_tables(ns: &NetNs, rs: &Ruleset, f: Family) -> Result<()> {
    let fam = match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let mut tables: Vec<Table> = rs.chains.iter().map(|(t, _)| *t).collect();
    tables.sort();
    tables.dedup();
    for t in tables {
        let Ok(out) = tool(
            ns,
            "nft",
            &["-j", "list", "table", fam, t.name()],
            "",
            "listing table",
        ) else {
            continue; // not an nft-backed table (iptables-legacy) or absent
        };
        let v: serde_json::Value = match serde_json::from_str(&out) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let items = v["nftables"].as_array().cloned().unwrap_or_default();
        let mut chains = 0;
        let mut empty = true;
        for i in &items {
            if let Some(c) = i.get("chain") {
                chains += 1;
                let builtin = c.get("hook").is_some() && c["policy"] == "accept";
                empty &= builtin;
            }
            empty &= i.get("rule").is_none() && i.get("set").is_none() && i.get("map").is_none();
        }
        if empty && chains > 0 {
            let script = format!("delete table {fam} {}\n", t.name());
            tool(
                ns,
                "nft",
                &["-f", "-"],
                &script,
                "deleting an empty iptables-nft table",
            )?;
        }
    }
    Ok(())
}

/// Our chains and jumps as `iptables-save` prints them, for comparisons.
pub(crate) fn xt_listing(ns: &NetNs, rs: &Ruleset) -> Result<Option<String>> {
    let mut all = Vec::new();
    for f in families(rs) {
        all.extend(xt_state(ns, rs, f)?.lines);
    }
    Ok(if all.is_empty() {
        None
    } else {
        Some(all.join("\n"))
    })
}
