//! Properties of the built binary itself.

use std::process::Command;

/// The libraries the dynamic loader would map for the built ztunnel, as
/// glibc's loader lists them with `LD_TRACE_LOADED_OBJECTS` (what `ldd`
/// does), without running the program.
fn loaded_objects() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .output()
        .expect("run the loader on ztunnel");
    assert!(out.status.success(), "loader failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// ztunnel defines `pow` itself (the one libm function it calls), so
/// `libm.so.6` and its resident text stay out of every ztunnel process.
#[test]
fn no_libm() {
    let libs = loaded_objects();
    assert!(libs.contains("libc.so.6"), "no library list: {libs}");
    assert!(!libs.contains("libm.so"), "ztunnel maps libm again: {libs}");
}
