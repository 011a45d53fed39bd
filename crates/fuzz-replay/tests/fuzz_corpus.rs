//! Replays every file of `fuzz/corpus/<target>/` through the body of fuzz
//! target `<target>`: the same functions `cargo +nightly fuzz run` drives
//! (`fuzz/src/lib.rs`, included here), so the seed corpora and every crash
//! input added to them are checked on stable by `cargo test`. How to run the
//! real fuzzer: `fuzz/README.md`.

use std::{
    collections::BTreeSet,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

#[allow(unreachable_pub, dead_code)]
#[path = "../../../fuzz/src/lib.rs"]
mod targets;

fn corpus_root() -> PathBuf {
    // Read at run time (cargo sets it for tests): a test binary reused from
    // a shared target directory may have been built in another checkout.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    Path::new(&dir).join("../../fuzz/corpus")
}

/// The visible files of one target's corpus (dot files are local scratch).
fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = corpus_root().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_seeds_and_every_corpus_a_target() {
    let targets: BTreeSet<&str> = targets::TARGETS.iter().map(|(n, _)| *n).collect();
    let dirs: BTreeSet<String> = std::fs::read_dir(corpus_root())
        .expect("fuzz/corpus")
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let dirs: BTreeSet<&str> = dirs.iter().map(String::as_str).collect();
    assert_eq!(targets, dirs, "targets and corpus directories differ");
    for t in &targets {
        assert!(seeds(t).len() >= 3, "{t}: fewer than 3 seeds");
    }
}

#[test]
fn every_seed_passes_its_target() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, body) in targets::TARGETS {
        for file in seeds(name) {
            let data = std::fs::read(&file).expect("seed readable");
            if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
                failures.push(file.display().to_string());
            }
            replayed += 1;
        }
    }
    assert!(failures.is_empty(), "targets panicked on: {failures:#?}");
    println!(
        "replayed {replayed} seeds through {} targets",
        targets::TARGETS.len()
    );
}
