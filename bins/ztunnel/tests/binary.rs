//! Properties of the built binary itself.

include!("../../no_libm.rs");

/// The binary defines `pow` and `log2` (`bins/libm.rs`), so
/// `libm.so.6` and its resident text stay out of every process.
#[test]
fn no_libm() {
    assert_no_libm(env!("CARGO_BIN_EXE_ztunnel"));
}
