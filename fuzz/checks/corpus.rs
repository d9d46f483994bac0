//! The committed seed corpora, for the corpus-replay tests of every crate: each test
//! includes this file by path (`#[path = "../../../fuzz/checks/corpus.rs"]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

/// The seeds of `fuzz/corpus/<target>/`, sorted by path; `manifest_dir` is the calling
/// crate's `CARGO_MANIFEST_DIR` (a crate of `crates/`). Fails when the directory is missing
/// or holds fewer than a dozen seeds, so a test cannot pass by replaying nothing.
pub fn seeds(manifest_dir: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(manifest_dir)
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 12,
        "{}: expected a dozen seeds, found {}",
        dir.display(),
        files.len()
    );
    files
}

/// [`seeds`], each named by its file name.
pub fn named_seeds(manifest_dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    seeds(manifest_dir, target)
        .into_iter()
        .map(|(p, data)| (p.file_name().unwrap().to_string_lossy().into_owned(), data))
        .collect()
}
