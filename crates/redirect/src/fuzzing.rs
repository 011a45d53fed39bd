//! Entry points for the fuzz targets in `fuzz/` and their corpus replay:
//! the decoders that read kernel replies, reachable without a socket. Not a
//! stable API.
//!
//! A datagram is read as one `recv` of a dump; its first message's sequence
//! number is taken as the dump's, so any input can reach the decoders.

use ambit_netlink::{DumpProgress, Messages};

use crate::ipset::{IpSetInfo, codec::IpsetMessage};
use crate::route::{self, IpRule, Route};

/// What an ipset dump datagram decodes to.
#[derive(Debug, Default)]
pub struct IpsetReply {
    /// Every ipset message of the dump, in order.
    pub messages: Vec<IpsetMessage>,
    /// The set as `ipset list NAME` reports it.
    pub set: Option<IpSetInfo>,
    /// The names as `ipset list -n` reports them.
    pub names: Vec<String>,
    /// The kernel's error (errno), when the dump ended with one.
    pub errno: Option<i32>,
}

/// Decodes `data` as one datagram of an ipset dump, as `Ipset::list` and
/// `Ipset::names` do.
pub fn ipset_reply(data: &[u8]) -> Result<IpsetReply, String> {
    let (replies, errno) = dump(data)?;
    let mut messages = Vec::with_capacity(replies.len());
    for raw in &replies {
        if let Some(m) = Messages::new(raw).next() {
            let m = m?;
            messages.push(IpsetMessage::parse(m.ty, m.payload).map_err(|e| e.to_string())?);
        }
    }
    Ok(IpsetReply {
        messages,
        set: crate::ipset::list_from_replies("fuzz", &replies)?,
        names: crate::ipset::names_from_replies(&replies)?,
        errno,
    })
}

/// What an rtnetlink dump datagram decodes to.
#[derive(Debug, Default)]
pub struct RtnlReply {
    /// The rules, each with what it reads back as after being encoded again.
    pub rules: Vec<(IpRule, Option<IpRule>)>,
    /// The routes (interfaces named `if<index>`).
    pub routes: Vec<Route>,
    /// The kernel's error (errno), when the dump ended with one.
    pub errno: Option<i32>,
}

/// Decodes `data` as one datagram of an rtnetlink rule or route dump, as
/// `Rtnl::rules` and `Rtnl::routes` do.
pub fn rtnetlink_reply(data: &[u8]) -> Result<RtnlReply, String> {
    let (replies, errno) = dump(data)?;
    let msgs = route::decode_replies(&replies)?;
    let name_of = |i: u32| Some(format!("if{i}"));
    Ok(RtnlReply {
        rules: route::rules_from(&msgs)
            .into_iter()
            .map(|r| {
                let again = route::rule_round_trip(&r);
                (r, again)
            })
            .collect(),
        routes: route::routes_from(&msgs, &name_of),
        errno,
    })
}

fn dump(data: &[u8]) -> Result<(Vec<Vec<u8>>, Option<i32>), String> {
    let seq = data
        .get(8..12)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let mut out = Vec::new();
    let errno = match ambit_netlink::dump_datagram(data, seq, &mut out)? {
        DumpProgress::Done(Err(e)) => Some(e.errno),
        DumpProgress::Done(Ok(())) | DumpProgress::More => None,
    };
    Ok((out, errno))
}
