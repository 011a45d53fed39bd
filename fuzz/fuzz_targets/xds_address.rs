//! Fuzz target `xds_address`: the body is [`ambit_fuzz::xds_address`], which the
//! workspace also replays over `corpus/xds_address/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::xds_address(data));
