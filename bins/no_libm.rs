// Included by each binary's `tests/binary.rs`: the check that the binary
// maps no `libm.so.6` (see `libm.rs`).

/// Asserts that the dynamic loader maps `libc.so.6` and no `libm.so` for
/// `bin`, listing its libraries as `ldd` does (glibc's loader with
/// `LD_TRACE_LOADED_OBJECTS`), without running the program.
fn assert_no_libm(bin: &str) {
    let out = std::process::Command::new(bin)
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .output()
        .expect("run the loader on the binary");
    assert!(out.status.success(), "loader failed: {out:?}");
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(libs.contains("libc.so.6"), "no library list: {libs}");
    assert!(!libs.contains("libm.so"), "{bin} maps libm again: {libs}");
}
