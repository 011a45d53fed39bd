//! Build script shared by the three binaries (`build = "../link.rs"`).
//!
//! On Linux with glibc, the binaries are linked with packed relative
//! relocations (`-z pack-relative-relocs`, DT_RELR). A position-independent
//! Rust binary carries one 24-byte `R_X86_64_RELATIVE` entry per pointer in
//! its read-only data (vtables, string slices); ztunnel had about 21,000 of
//! them, 516 KB that the dynamic loader reads at every start and that stay
//! resident. Packed, they take 4 KB. The binary then needs glibc 2.36 or
//! later; set `AMBIT_NO_PACK_RELOCS=1` at build time to link without it for
//! an older glibc.

fn main() {
    println!("cargo:rerun-if-changed=../link.rs");
    println!("cargo:rerun-if-env-changed=AMBIT_NO_PACK_RELOCS");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let opted_out = std::env::var_os("AMBIT_NO_PACK_RELOCS").is_some_and(|v| v != "0");
    if os == "linux" && env == "gnu" && !opted_out {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
