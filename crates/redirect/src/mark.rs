//! Packet marks (`skb->mark`, fwmark) and connection marks, with the exact
//! semantics of iptables' MARK/CONNMARK targets and `mark` match.

use std::fmt;

use crate::error::Error;

/// A value under a mask, as written `0x210/0x210`.
///
/// The value must lie inside the mask: a bit set in the value but outside
/// the mask can never match and would be silently dropped by `--set-mark`,
/// so such marks are rejected at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mark {
    value: u32,
    mask: u32,
}

impl Mark {
    /// A value under a mask. Fails if the value has bits outside the mask.
    pub fn new(value: u32, mask: u32) -> Result<Self, Error> {
        if value & !mask != 0 {
            return Err(Error::InvalidMark { value, mask });
        }
        Ok(Self { value, mask })
    }

    /// A value with a full 32-bit mask.
    pub const fn exact(value: u32) -> Self {
        Self {
            value,
            mask: u32::MAX,
        }
    }

    /// `v/v`: the bits of `v` under themselves, as Istio writes its marks.
    pub const fn bits(v: u32) -> Self {
        Self { value: v, mask: v }
    }

    /// A value under a mask, for constants known to be valid.
    const fn masked(value: u32, mask: u32) -> Self {
        assert!(value & !mask == 0, "mark value outside its mask");
        Self { value, mask }
    }

    /// The value.
    pub const fn value(self) -> u32 {
        self.value
    }

    /// The mask.
    pub const fn mask(self) -> u32 {
        self.mask
    }

    /// `-m mark --mark value/mask`: `(mark & mask) == value`.
    pub const fn matches(self, mark: u32) -> bool {
        mark & self.mask == self.value
    }

    /// `-j MARK --set-mark value/mask`: clear the mask bits, then OR the
    /// value. (iptables implements it as `--set-xmark value/(mask|value)`.)
    pub const fn set(self, mark: u32) -> u32 {
        (mark & !self.mask) | self.value
    }

    /// `-j MARK --set-xmark value/mask`: clear the mask bits, then XOR the value.
    pub const fn set_xmark(self, mark: u32) -> u32 {
        (mark & !self.mask) ^ self.value
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mask == u32::MAX {
            write!(f, "{:#x}", self.value)
        } else {
            write!(f, "{:#x}/{:#x}", self.value, self.mask)
        }
    }
}

/// `-j CONNMARK --save-mark --nfmask N --ctmask C`:
/// `ctmark = (ctmark & !ctmask) ^ (mark & nfmask)`.
pub const fn connmark_save(ctmark: u32, mark: u32, nfmask: u32, ctmask: u32) -> u32 {
    (ctmark & !ctmask) ^ (mark & nfmask)
}

/// `-j CONNMARK --restore-mark --nfmask N --ctmask C`:
/// `mark = (mark & !nfmask) ^ (ctmark & ctmask)`.
pub const fn connmark_restore(mark: u32, ctmark: u32, nfmask: u32, ctmask: u32) -> u32 {
    (mark & !nfmask) ^ (ctmark & ctmask)
}

/// The marks Istio's ambient capture uses. Every profile takes a [`Marks`]
/// value, so each one can be overridden; [`Marks::default`] is Istio's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// Pod → outbound, routed to `istioout` (node mode). `0x100/0x100`.
    pub outbound: Mark,
    /// Bypass capture, use the main table. `0x200/0x200`.
    pub skip: Mark,
    /// Skip bit plus "save to connmark". `0x220/0x220`.
    pub conn_skip: Mark,
    /// A spoofed (original-source) packet from ztunnel. `0x210/0x210`.
    pub proxy: Mark,
    /// A reply to a proxy connection, routed back to ztunnel. `0x040/0x040`.
    pub proxy_ret: Mark,
    /// TPROXY mark inside the ztunnel netns. `0x400/0xfff`.
    pub tproxy: Mark,
    /// Original-source return traffic inside the ztunnel netns. `0x4d3/0xfff`.
    pub org_src_ret: Mark,
    /// ztunnel's own SO_MARK in in-pod mode (1337). `0x539/0xfff`.
    pub inpod: Mark,
    /// Connmark for in-pod TPROXY/return routing. `0x111/0xfff`.
    pub inpod_tproxy: Mark,
}

impl Marks {
    /// Istio's values.
    pub const ISTIO: Marks = Marks {
        outbound: Mark::bits(0x100),
        skip: Mark::bits(0x200),
        conn_skip: Mark::bits(0x220),
        proxy: Mark::bits(0x210),
        proxy_ret: Mark::bits(0x040),
        tproxy: Mark::masked(0x400, 0xfff),
        org_src_ret: Mark::masked(0x4d3, 0xfff),
        inpod: Mark::masked(0x539, 0xfff),
        inpod_tproxy: Mark::masked(0x111, 0xfff),
    };
}

impl Default for Marks {
    fn default() -> Self {
        Self::ISTIO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_must_fit_mask() {
        assert!(Mark::new(0x210, 0x200).is_err());
        assert!(Mark::new(0x400, 0xfff).is_ok());
        let e = Mark::new(0x1000, 0xfff).expect_err("outside");
        assert!(e.to_string().contains("0x1000/0xfff"), "{e}");
    }

    #[test]
    fn set_mark_ors_under_mask() {
        let m = Mark::bits(0x200);
        assert_eq!(m.set(0x0), 0x200);
        assert_eq!(m.set(0x100), 0x300);
        assert_eq!(m.set(0x200), 0x200);
        // Full-mask set replaces everything.
        assert_eq!(Mark::exact(0x220).set(0xffff_0001), 0x220);
        // Masked set keeps bits outside the mask and clears those inside.
        let t = Mark::new(0x400, 0xfff).expect("valid");
        assert_eq!(t.set(0xabc_d123), 0xabc_d400);
    }

    #[test]
    fn set_xmark_xors_after_clearing() {
        let m = Mark::new(0x111, 0xfff).expect("valid");
        assert_eq!(m.set_xmark(0x5000_0fff), 0x5000_0111);
        // With a mask narrower than the value's span, XOR flips bits outside
        // the mask (raw constructor for the test's sake).
        let wide = Mark {
            value: 0x11,
            mask: 0x01,
        };
        assert_eq!(wide.set_xmark(0x10), 0x01);
    }

    #[test]
    fn match_is_masked_equality() {
        let m = Mark::bits(0x220);
        assert!(m.matches(0x220));
        assert!(m.matches(0x2220));
        assert!(!m.matches(0x200)); // needs both bits
        let t = Mark::new(0x400, 0xfff).expect("valid");
        assert!(t.matches(0x1400));
        assert!(!t.matches(0x401));
    }

    #[test]
    fn istio_marks_nest_as_documented() {
        let m = Marks::ISTIO;
        // conn_skip and proxy both carry the skip bit.
        assert!(m.skip.matches(m.conn_skip.set(0)));
        assert!(m.skip.matches(m.proxy.set(0)));
        assert!(!m.skip.matches(m.outbound.set(0)));
        // ztunnel's SO_MARK 0x401 and spoofed-socket mark 0x4d2 are not TPROXY's.
        assert!(!m.tproxy.matches(0x401));
        assert!(!m.org_src_ret.matches(0x4d2));
        assert_eq!(m.inpod.value(), 1337);
    }

    #[test]
    fn connmark_save_restore() {
        // Save 0x210 with nfmask=ctmask=0x210 into an empty ctmark.
        assert_eq!(connmark_save(0, 0x210, 0x210, 0x210), 0x210);
        // Bits outside ctmask survive in the ctmark.
        assert_eq!(connmark_save(0xf000, 0x210, 0x210, 0x210), 0xf210);
        // Restore with full masks copies the ctmark.
        assert_eq!(connmark_restore(0x1, 0x111, u32::MAX, u32::MAX), 0x111);
        // Restore with narrow masks only touches those bits.
        assert_eq!(connmark_restore(0xf000, 0x111, 0xfff, 0xfff), 0xf111);
    }
}
