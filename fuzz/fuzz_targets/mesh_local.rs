//! Fuzz target `mesh_local`: the body is [`ambit_fuzz::mesh_local`], which the
//! workspace also replays over `corpus/mesh_local/` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_fuzz::mesh_local(data));
