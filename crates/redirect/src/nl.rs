//! A synchronous netlink transport: batched requests with per-message acks,
//! and dumps. It deals in whole netlink messages as bytes; the codecs
//! (rtnetlink through netlink-packet-route, ipset through [`crate::ipset`])
//! build and parse the payloads.

use std::collections::HashMap;

use ambit_netns::NetNs;
use netlink_sys::Socket;

use crate::error::{Error, Result};

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_MULTI: u16 = 0x2;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Most bytes put in one `sendmsg`; acks are read after each chunk so the
/// receive buffer never overflows.
const CHUNK: usize = 64 * 1024;

/// A kernel rejection of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NlError {
    pub errno: i32,
    pub ext: Option<String>,
}

impl NlError {
    pub(crate) fn into_error(self, op: impl Into<String>, ns: &str) -> Error {
        Error::Netlink {
            op: op.into(),
            ns: ns.to_owned(),
            errno: self.errno,
            ext: self.ext,
        }
    }
}

/// A netlink socket opened inside a namespace.
pub(crate) struct NlSocket {
    sock: Socket,
    seq: u32,
    ns: String,
}

impl NlSocket {
    /// Opens a socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`)
    /// inside `ns`, or in the caller's namespace.
    pub(crate) fn open(ns: Option<&NetNs>, protocol: isize) -> Result<Self> {
        let label = ns.map_or_else(|| "current".to_owned(), |n| n.label().to_owned());
        let make = move || -> std::io::Result<Socket> {
            let mut s = Socket::new(protocol)?;
            s.bind_auto()?;
            s.set_cap_ack(true)?;
            // Extended acks carry the kernel's reason; older kernels lack them.
            let _ = s.set_ext_ack(true);
            Ok(s)
        };
        let sock = match ns {
            Some(ns) => ns.run(make)?,
            None => make(),
        }
        .map_err(|source| Error::Io {
            op: format!("opening netlink socket (protocol {protocol}) in {label}"),
            source,
        })?;
        let seq = std::process::id().wrapping_mul(2_654_435_761);
        Ok(Self {
            sock,
            seq,
            ns: label,
        })
    }

    /// The namespace label, for errors.
    pub(crate) fn ns(&self) -> &str {
        &self.ns
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends every message (each must request an ack) and returns one result
    /// per message, in order. Messages are stamped with fresh sequence numbers.
    pub(crate) fn transact(
        &mut self,
        msgs: &mut [Vec<u8>],
    ) -> Result<Vec<std::result::Result<(), NlError>>> {
        let mut results = vec![Ok(()); msgs.len()];
        let mut i = 0;
        while i < msgs.len() {
            let mut buf = Vec::with_capacity(CHUNK);
            let mut pending: HashMap<u32, usize> = HashMap::new();
            while i < msgs.len() && (buf.is_empty() || buf.len() + msgs[i].len() <= CHUNK) {
                let seq = self.next_seq();
                set_seq(&mut msgs[i], seq);
                buf.extend_from_slice(&msgs[i]);
                pending.insert(seq, i);
                i += 1;
            }
            self.send(&buf)?;
            while !pending.is_empty() {
                let data = self.recv()?;
                for msg in Messages::new(&data) {
                    let msg = msg.map_err(|reason| self.decode("acks", reason))?;
                    if msg.ty != NLMSG_ERROR {
                        continue;
                    }
                    if let Some(idx) = pending.remove(&msg.seq) {
                        results[idx] = parse_error(&msg);
                    }
                }
            }
        }
        Ok(results)
    }

    /// Sends one request and checks its ack.
    pub(crate) fn request(&mut self, mut msg: Vec<u8>) -> Result<std::result::Result<(), NlError>> {
        let mut v = self.transact(std::slice::from_mut(&mut msg))?;
        Ok(v.pop().unwrap_or(Ok(())))
    }

    /// Sends a dump request and collects every reply message (header
    /// included) until `NLMSG_DONE`.
    pub(crate) fn dump(
        &mut self,
        mut msg: Vec<u8>,
    ) -> Result<std::result::Result<Vec<Vec<u8>>, NlError>> {
        let seq = self.next_seq();
        set_seq(&mut msg, seq);
        self.send(&msg)?;
        let mut out = Vec::new();
        loop {
            let data = self.recv()?;
            match dump_datagram(&data, seq, &mut out).map_err(|r| self.decode("dump", r))? {
                DumpProgress::More => {}
                DumpProgress::Done(r) => return Ok(r.map(|()| out)),
            }
        }
    }

    /// Sends a prepared nfnetlink batch (begin, messages, end, with their
    /// own sequence numbers) in one `sendmsg` and collects the errors of the
    /// messages in `expect`. The kernel applies the batch all or nothing.
    #[cfg_attr(not(feature = "nftnl"), allow(dead_code))]
    pub(crate) fn send_batch(
        &mut self,
        bytes: &[u8],
        expect: std::ops::Range<u32>,
    ) -> Result<Vec<(u32, NlError)>> {
        let sock = socket2::SockRef::from(&self.sock);
        let timeout = |d| {
            sock.set_read_timeout(d).map_err(|source| Error::Io {
                op: format!("setting a netlink timeout in {}", self.ns),
                source,
            })
        };
        timeout(Some(std::time::Duration::from_secs(5)))?;
        self.send(bytes)?;
        let mut pending: std::collections::HashSet<u32> = expect.collect();
        let mut errors = Vec::new();
        while !pending.is_empty() {
            let data = match self.sock.recv_from_full() {
                Ok((d, _)) => d,
                // After a failure the kernel may not answer every message.
                Err(_) if !errors.is_empty() => break,
                Err(source) => {
                    return Err(Error::Io {
                        op: format!("waiting for nftables batch acks in {}", self.ns),
                        source,
                    });
                }
            };
            for m in Messages::new(&data) {
                let m = m.map_err(|reason| self.decode("batch acks", reason))?;
                if m.ty == NLMSG_ERROR
                    && pending.remove(&m.seq)
                    && let Err(e) = parse_error(&m)
                {
                    errors.push((m.seq, e));
                }
            }
        }
        timeout(None)?;
        Ok(errors)
    }

    fn send(&self, buf: &[u8]) -> Result<()> {
        let n = self.sock.send(buf, 0).map_err(|source| Error::Io {
            op: format!("sending netlink request in {}", self.ns),
            source,
        })?;
        if n != buf.len() {
            return Err(Error::Io {
                op: format!("sending netlink request in {}", self.ns),
                source: std::io::Error::other(format!("short send: {n} of {} bytes", buf.len())),
            });
        }
        Ok(())
    }

    fn recv(&self) -> Result<Vec<u8>> {
        self.sock
            .recv_from_full()
            .map(|(data, _)| data)
            .map_err(|source| Error::Io {
                op: format!("reading netlink reply in {}", self.ns),
                source,
            })
    }

    fn decode(&self, what: &str, reason: String) -> Error {
        Error::Decode {
            op: format!("{what} in {}", self.ns),
            reason,
        }
    }
}

/// Writes the netlink header of a message with an empty sequence number.
pub(crate) fn header(ty: u16, flags: u16, payload_len: usize) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + payload_len) as u32;
    let mut v = Vec::with_capacity(len as usize);
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&[0; 8]); // seq, pid
    v
}

fn set_seq(msg: &mut [u8], seq: u32) {
    if msg.len() >= 12 {
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    }
}

/// One message of a netlink datagram.
pub(crate) struct RawMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
    pub raw: &'a [u8],
}

/// Iterates over the messages in a datagram, validating lengths.
pub(crate) struct Messages<'a> {
    data: &'a [u8],
}

impl<'a> Messages<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = std::result::Result<RawMsg<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let d = self.data;
        if d.len() < NLMSG_HDRLEN {
            self.data = &[];
            return Some(Err(format!(
                "{} trailing bytes, shorter than a header",
                d.len()
            )));
        }
        let len = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) as usize;
        if len < NLMSG_HDRLEN || len > d.len() {
            self.data = &[];
            return Some(Err(format!(
                "message length {len} outside 16..={}",
                d.len()
            )));
        }
        let msg = RawMsg {
            ty: u16::from_ne_bytes([d[4], d[5]]),
            flags: u16::from_ne_bytes([d[6], d[7]]),
            seq: u32::from_ne_bytes([d[8], d[9], d[10], d[11]]),
            payload: &d[NLMSG_HDRLEN..len],
            raw: &d[..len],
        };
        let next = align4(len).min(d.len());
        self.data = &d[next..];
        Some(Ok(msg))
    }
}

/// Where a dump stands after one datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DumpProgress {
    /// More datagrams follow.
    More,
    /// The dump ended: `NLMSG_DONE`, an ack, a single-part reply, or the
    /// kernel's error.
    Done(std::result::Result<(), NlError>),
}

/// Folds one received datagram of the dump with sequence number `seq` into
/// `out` (whole messages, header included); messages of other sequence
/// numbers are skipped. Pure, so it is tested and fuzzed without a socket.
pub(crate) fn dump_datagram(
    data: &[u8],
    seq: u32,
    out: &mut Vec<Vec<u8>>,
) -> std::result::Result<DumpProgress, String> {
    for m in Messages::new(data) {
        let m = m?;
        if m.seq != seq {
            continue;
        }
        match m.ty {
            NLMSG_DONE => {
                // A dump may end with an error code in DONE.
                if let Some(code) = m.payload.get(..4) {
                    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
                    if code < 0 {
                        return Ok(DumpProgress::Done(Err(NlError {
                            errno: code.saturating_neg(),
                            ext: None,
                        })));
                    }
                }
                return Ok(DumpProgress::Done(Ok(())));
            }
            NLMSG_ERROR => return Ok(DumpProgress::Done(parse_error(&m))),
            _ => {
                out.push(m.raw.to_vec());
                if m.flags & NLM_F_MULTI == 0 {
                    return Ok(DumpProgress::Done(Ok(())));
                }
            }
        }
    }
    Ok(DumpProgress::More)
}

pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Reads an `NLMSG_ERROR` payload: 0 is an ack, otherwise a negative errno,
/// optionally followed by extended-ack attributes.
fn parse_error(msg: &RawMsg<'_>) -> std::result::Result<(), NlError> {
    let p = msg.payload;
    let Some(code) = p.get(..4) else {
        return Err(NlError {
            errno: libc_eproto(),
            ext: Some("truncated error message".into()),
        });
    };
    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    if code == 0 {
        return Ok(());
    }
    let mut ext = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 && p.len() >= 4 + NLMSG_HDRLEN {
        let orig_len = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as usize;
        let echoed = if msg.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align4(orig_len)
        };
        let mut tlvs = p.get(4 + echoed..).unwrap_or(&[]);
        while tlvs.len() >= 4 {
            let l = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
            let t = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
            if l < 4 || l > tlvs.len() {
                break;
            }
            if t == NLMSGERR_ATTR_MSG {
                let s = &tlvs[4..l];
                let s = s.split(|&b| b == 0).next().unwrap_or(s);
                ext = Some(String::from_utf8_lossy(s).into_owned());
            }
            tlvs = &tlvs[align4(l).min(tlvs.len())..];
        }
    }
    Err(NlError {
        errno: code.saturating_neg(),
        ext,
    })
}

const fn libc_eproto() -> i32 {
    71
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_msg(code: i32, flags: u16, tail: &[u8]) -> Vec<u8> {
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&header(24, 0, 0)); // echoed (capped) header
        payload.extend_from_slice(tail);
        let mut m = header(NLMSG_ERROR, flags, payload.len());
        m.extend_from_slice(&payload);
        m
    }

    #[test]
    fn dump_done_with_the_most_negative_code_does_not_overflow() {
        // Seen while writing the `rtnetlink_reply`/`ipset_reply` fuzz targets:
        // `-code` overflowed (a panic in debug builds).
        let mut done = header(NLMSG_DONE, NLM_F_MULTI, 4);
        done.extend_from_slice(&i32::MIN.to_ne_bytes());
        let mut out = Vec::new();
        let step = dump_datagram(&done, 0, &mut out).expect("a valid datagram");
        let want = NlError {
            errno: i32::MAX,
            ext: None,
        };
        assert_eq!(step, DumpProgress::Done(Err(want)));
        assert!(out.is_empty());
    }

    #[test]
    fn dump_collects_its_own_parts_until_done() {
        let mut data = header(24, NLM_F_MULTI, 0);
        set_seq(&mut data, 7);
        let mut other = header(24, NLM_F_MULTI, 0);
        set_seq(&mut other, 8);
        data.extend_from_slice(&other);
        let mut out = Vec::new();
        assert_eq!(dump_datagram(&data, 7, &mut out), Ok(DumpProgress::More));
        assert_eq!(out.len(), 1);
        let mut done = header(NLMSG_DONE, NLM_F_MULTI, 4);
        set_seq(&mut done, 7);
        done.extend_from_slice(&0i32.to_ne_bytes());
        assert_eq!(
            dump_datagram(&done, 7, &mut out),
            Ok(DumpProgress::Done(Ok(())))
        );
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn parses_ack_and_error_with_ext_ack() {
        let ack = err_msg(0, 0, &[]);
        let m = Messages::new(&ack).next().expect("one").expect("valid");
        assert_eq!(parse_error(&m), Ok(()));

        let text = b"Nexthop device is not up\0";
        let mut tlv = ((4 + text.len()) as u16).to_ne_bytes().to_vec();
        tlv.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        tlv.extend_from_slice(text);
        while !tlv.len().is_multiple_of(4) {
            tlv.push(0);
        }
        let e = err_msg(-22, NLM_F_CAPPED | NLM_F_ACK_TLVS, &tlv);
        let m = Messages::new(&e).next().expect("one").expect("valid");
        let err = parse_error(&m).expect_err("error");
        assert_eq!(err.errno, 22);
        assert_eq!(err.ext.as_deref(), Some("Nexthop device is not up"));
    }

    #[test]
    fn malformed_datagrams_do_not_panic() {
        for bad in [vec![1u8, 2, 3], vec![0xff; 16], {
            let mut v = header(NLMSG_ERROR, 0, 0);
            v[0] = 8; // length shorter than a header
            v
        }] {
            let items: Vec<_> = Messages::new(&bad).collect();
            assert!(items.iter().any(|r| r.is_err()), "{bad:?}");
        }
        // An error message with a truncated code is an error, not a panic.
        let short = header(NLMSG_ERROR, 0, 0);
        let m = Messages::new(&short).next().expect("one").expect("valid");
        assert!(parse_error(&m).is_err());
    }

    #[test]
    fn iterates_several_messages() {
        let mut d = header(24, 0, 4);
        d.extend_from_slice(&[1, 2, 3, 4]);
        let mut second = header(25, NLM_F_MULTI, 0);
        d.append(&mut second);
        let v: Vec<_> = Messages::new(&d).map(|m| m.expect("valid").ty).collect();
        assert_eq!(v, vec![24, 25]);
    }
}
