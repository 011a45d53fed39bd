//! Tests only: `tests/fuzz_corpus.rs` replays every file of
//! `fuzz/corpus/<target>/` through the body of fuzz target `<target>`
//! (`fuzz/src/lib.rs`), so the seed corpora and every crash input kept
//! there are checked on stable by `cargo test`. It lives in a crate of its
//! own so that no library crate dev-depends on every parser for it. The
//! library is empty.

#![forbid(unsafe_code)]
