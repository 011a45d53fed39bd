//! Fuzz target `xds_authorization`: the body is [`ambit_fuzz::xds_authorization`], which the
//! workspace also replays over `corpus/xds_authorization/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::xds_authorization(data));
