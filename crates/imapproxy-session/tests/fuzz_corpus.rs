//! Replays the committed fuzz corpora `fuzz/corpus/proxy_header/` and `fuzz/corpus/session/`
//! through the same invariant checks the fuzz targets run (`fuzz/checks/session.rs`), so they
//! are enforced by every `cargo test`, not only when fuzzing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/checks/session.rs"]
mod checks;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    corpus::seeds(env!("CARGO_MANIFEST_DIR"), target)
}

#[test]
fn proxy_header_corpus_holds_invariants() {
    for (path, data) in corpus("proxy_header") {
        println!("{}", path.display());
        checks::check_proxy_header(&data);
        // Every prefix too: truncated headers are the common malformed case.
        for end in 0..data.len().min(300) {
            checks::check_proxy_header(&data[..end]);
        }
    }
}

#[test]
fn session_corpus_holds_invariants() {
    for (path, data) in corpus("session") {
        println!("{}", path.display());
        checks::check_session(&data);
    }
}
