// Included by the three binaries' `main.rs` (`include!("../../libm.rs")`),
// as `link.rs` is their shared build script.

/// `pow`, the one libm function the release binaries call (tokio's
/// scheduler keeps a moving average of task poll times with `f64::powf`),
/// defined here from the `libm` crate, and `log2`, which a debug build
/// calls too. With them a binary needs no `libm.so.6`, whose mapping would
/// otherwise stay resident: about 0.5 MB of each process's RSS, because
/// the kernel maps whole large folios of a library's text however little
/// of it runs (PERFORMANCE.md, issue 21, fourteenth pass). A symbol in the
/// executable takes precedence over a shared library's, so nothing else
/// changes. Each binary's `tests/binary.rs` checks that `libm.so.6` stays
/// out.
// An exported symbol is what the lint flags; the functions are safe.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// See [`pow`].
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn log2(x: f64) -> f64 {
    libm::log2(x)
}

#[cfg(test)]
mod libm_tests {
    /// The binary's `pow` and `log2` are the ones `f64::powf` and
    /// `f64::log2` call in it: exact where the result is representable,
    /// and right at the edges tokio can reach (an average's weight to the
    /// power of a poll count).
    #[test]
    fn pow_and_log2() {
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(0.5, 3.0), 0.125);
        assert_eq!(super::pow(10.0, 0.0), 1.0);
        assert_eq!(super::pow(0.0, 0.0), 1.0);
        assert_eq!(2f64.powf(-2.0), 0.25);
        assert!(super::pow(-1.0, 0.5).is_nan());
        let w = super::pow(0.1, 1.0 / 61.0);
        assert!((w - 0.962_956_252_459_902_6).abs() < 1e-12, "{w}");
        assert_eq!(super::pow(w, 1e6), 0.0);
        assert_eq!(super::log2(1024.0), 10.0);
        assert_eq!(super::log2(1.0), 0.0);
        assert!(super::log2(-1.0).is_nan());
    }
}
