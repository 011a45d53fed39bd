//! Builds the eBPF capture programs (feature `ebpf`) with clang.
//!
//! `CLANG` names the compiler (default `clang`); the kernel's UAPI headers
//! come from the system (Debian: linux-libc-dev). `scripts/deps.sh`
//! installs both.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CLANG");
    if env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return;
    }
    for f in ["bpf/capture.bpf.c", "bpf/helpers.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let mut cmd = Command::new(&clang);
    cmd.args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"]);
    // <asm/types.h> lives in the multiarch include directory on Debian.
    if let Some(dir) = multiarch_include() {
        cmd.arg(format!("-I{dir}"));
    }
    cmd.args(["-c", "bpf/capture.bpf.c", "-o"])
        .arg(out.join("capture.bpf.o"));
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => panic!(
            "feature `ebpf` builds its programs with `{clang}`, which could not run ({e}); \
             install clang (scripts/deps.sh does) or set CLANG"
        ),
    };
    assert!(
        status.success(),
        "`{clang}` failed to build bpf/capture.bpf.c ({status})"
    );
}

fn multiarch_include() -> Option<String> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => return None,
    };
    let dir = format!("/usr/include/{triple}");
    std::path::Path::new(&dir).is_dir().then_some(dir)
}
