//! Fuzz target `waypoint_config`: the body is [`ambit_fuzz::waypoint_config`], which the
//! workspace also replays over `corpus/waypoint_config/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::waypoint_config(data));
