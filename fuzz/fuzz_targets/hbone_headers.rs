//! Fuzz target `hbone_headers`: the body is [`ambit_fuzz::hbone_headers`], which the
//! workspace also replays over `corpus/hbone_headers/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::hbone_headers(data));
