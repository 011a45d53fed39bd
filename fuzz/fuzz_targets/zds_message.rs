//! Fuzz target `zds_message`: the body is [`ambit_fuzz::zds_message`], which the
//! workspace also replays over `corpus/zds_message/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::zds_message(data));
