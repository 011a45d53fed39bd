//! Fuzz target `socks5_request`: the body is [`ambit_fuzz::socks5_request`], which the
//! workspace also replays over `corpus/socks5_request/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::socks5_request(data));
