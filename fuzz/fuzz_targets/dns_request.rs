//! Fuzz target `dns_request`: the body is [`ambit_fuzz::dns_request`], which the
//! workspace also replays over `corpus/dns_request/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::dns_request(data));
