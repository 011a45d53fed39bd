//! Fuzz target `cni_stdin`: the body is [`ambit_fuzz::cni_stdin`], which the
//! workspace also replays over `corpus/cni_stdin/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::cni_stdin(data));
