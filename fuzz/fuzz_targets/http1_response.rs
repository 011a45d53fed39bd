//! Fuzz target `http1_response`: the body is [`ambit_fuzz::http1_response`], which the
//! workspace also replays over `corpus/http1_response/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::http1_response(data));
