//! Fuzz target `rtnetlink_reply`: the body is [`ambit_fuzz::rtnetlink_reply`], which the
//! workspace also replays over `corpus/rtnetlink_reply/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::rtnetlink_reply(data));
