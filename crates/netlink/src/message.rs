//! Netlink framing without a socket: headers, the message iterator, ack and
//! error parsing, and the fold of a dump's datagrams. Pure, so it is tested
//! and fuzzed without root.

use crate::error::Nack;

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// `NLMSG_ERROR`: an ack (code 0) or an error.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a multipart dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`: a request to the kernel.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_MULTI`: a part of a multipart reply.
pub const NLM_F_MULTI: u16 = 0x2;
/// `NLM_F_ACK`: asks for an ack.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`): dump every object.
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_CAPPED` (on `NLMSG_ERROR`): only the request's header is echoed.
pub const NLM_F_CAPPED: u16 = 0x100;
/// `NLM_F_ACK_TLVS` (on `NLMSG_ERROR`): extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
pub const NLMSGERR_ATTR_MSG: u16 = 1;
/// `EPROTO`: stands in for the errno of an error message too short to carry one.
const EPROTO: i32 = 71;

/// Rounds a length up to netlink's 4-byte alignment (`NLMSG_ALIGN`, `NLA_ALIGN`).
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Writes the header of a message of type `ty` whose payload is
/// `payload_len` bytes; the caller appends the payload. The sequence number
/// and port id are 0: the [`Socket`](crate::Socket) stamps the sequence
/// number, the kernel the port id.
pub fn header(ty: u16, flags: u16, payload_len: usize) -> Vec<u8> {
    let len = u32::try_from(NLMSG_HDRLEN + payload_len).unwrap_or(u32::MAX);
    let mut v = Vec::with_capacity(NLMSG_HDRLEN + payload_len);
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&[0; 8]); // seq, pid
    v
}

/// Sets the sequence number of the message at the start of `msg` (a buffer
/// shorter than a header is left alone).
pub fn set_seq(msg: &mut [u8], seq: u32) {
    if let Some(field) = msg.get_mut(8..12) {
        field.copy_from_slice(&seq.to_ne_bytes());
    }
}

/// One message of a netlink datagram, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMsg<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// The bytes after the header, up to `nlmsg_len`.
    pub payload: &'a [u8],
    /// The whole message, header included.
    pub raw: &'a [u8],
}

impl RawMsg<'_> {
    /// Reads an `NLMSG_ERROR` payload: 0 is an ack, otherwise a negative
    /// errno, optionally followed by extended-ack attributes (whose text
    /// becomes [`Nack::ext`]). A payload too short for the code is `EPROTO`.
    pub fn ack(&self) -> Result<(), Nack> {
        let p = self.payload;
        let Some(code) = read_i32(p) else {
            return Err(Nack {
                errno: EPROTO,
                ext: Some("truncated error message".into()),
            });
        };
        if code == 0 {
            return Ok(());
        }
        let mut ext = None;
        if self.flags & NLM_F_ACK_TLVS != 0 && p.len() >= 4 + NLMSG_HDRLEN {
            let orig_len = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as usize;
            let echoed = if self.flags & NLM_F_CAPPED != 0 {
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
        Err(Nack {
            errno: code.saturating_neg(),
            ext,
        })
    }
}

fn read_i32(p: &[u8]) -> Option<i32> {
    let b = p.get(..4)?;
    Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Iterates over the messages in a datagram, validating lengths. After the
/// first malformed message (an `Err` naming what is wrong) it ends.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    data: &'a [u8],
}

impl<'a> Messages<'a> {
    /// The messages of `data`, one received datagram (or one message).
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<RawMsg<'a>, String>;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpProgress {
    /// More datagrams follow.
    More,
    /// The dump ended: `NLMSG_DONE`, an ack, a single-part reply, or the
    /// kernel's error.
    Done(Result<(), Nack>),
}

/// Folds one received datagram of the dump with sequence number `seq` into
/// `out` (whole messages, header included); messages of other sequence
/// numbers are skipped. An `Err` names what is malformed.
pub fn dump_datagram(
    data: &[u8],
    seq: u32,
    out: &mut Vec<Vec<u8>>,
) -> Result<DumpProgress, String> {
    for m in Messages::new(data) {
        let m = m?;
        if m.seq != seq {
            continue;
        }
        match m.ty {
            NLMSG_DONE => {
                // A dump may end with an error code in DONE.
                if let Some(code) = read_i32(m.payload)
                    && code < 0
                {
                    return Ok(DumpProgress::Done(Err(Nack {
                        errno: code.saturating_neg(),
                        ext: None,
                    })));
                }
                return Ok(DumpProgress::Done(Ok(())));
            }
            NLMSG_ERROR => return Ok(DumpProgress::Done(m.ack())),
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
        let want = Nack {
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
        assert_eq!(m.ack(), Ok(()));

        let text = b"Nexthop device is not up\0";
        let mut tlv = ((4 + text.len()) as u16).to_ne_bytes().to_vec();
        tlv.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        tlv.extend_from_slice(text);
        while !tlv.len().is_multiple_of(4) {
            tlv.push(0);
        }
        let e = err_msg(-22, NLM_F_CAPPED | NLM_F_ACK_TLVS, &tlv);
        let m = Messages::new(&e).next().expect("one").expect("valid");
        let err = m.ack().expect_err("error");
        assert_eq!(err.errno, 22);
        assert_eq!(err.ext.as_deref(), Some("Nexthop device is not up"));
        assert_eq!(err.to_io().raw_os_error(), Some(22));
        assert!(
            err.to_string()
                .ends_with(": kernel says \"Nexthop device is not up\""),
            "{err}"
        );
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
        assert!(m.ack().is_err());
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

    #[test]
    fn set_seq_leaves_short_buffers_alone() {
        let mut short = vec![0u8; 10];
        set_seq(&mut short, 9);
        assert_eq!(short, vec![0u8; 10]);
        let mut m = header(24, 0, 0);
        set_seq(&mut m, 9);
        let got = Messages::new(&m).next().expect("one").expect("valid");
        assert_eq!(got.seq, 9);
    }
}
