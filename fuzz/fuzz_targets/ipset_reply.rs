//! Fuzz target `ipset_reply`: the body is [`ambit_fuzz::ipset_reply`], which the
//! workspace also replays over `corpus/ipset_reply/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::ipset_reply(data));
