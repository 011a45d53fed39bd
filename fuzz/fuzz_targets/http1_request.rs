//! Fuzz target `http1_request`: the body is [`ambit_fuzz::http1_request`], which the
//! workspace also replays over `corpus/http1_request/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::http1_request(data));
