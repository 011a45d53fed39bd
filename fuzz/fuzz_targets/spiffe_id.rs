//! Fuzz target `spiffe_id`: the body is [`ambit_fuzz::spiffe_id`], which the
//! workspace also replays over `corpus/spiffe_id/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::spiffe_id(data));
