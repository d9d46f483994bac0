//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same invariant
//! checks the fuzz targets run, so they are enforced by every `cargo test`. The corpus replay
//! also cuts the framer input at every offset, which is cheap for these small files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/checks/mod.rs"]
mod checks;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    corpus::seeds(env!("CARGO_MANIFEST_DIR"), target)
}

#[test]
fn framer_corpus_holds_invariants_at_every_cut() {
    for (path, data) in corpus("framer") {
        let every: Vec<usize> = (0..=data.len()).collect();
        println!("{}", path.display());
        checks::check_framer(&data, &every);
        checks::check_framer(&data, &checks::cuts_for(&data));
    }
}

#[test]
fn framer_corpus_is_framed_completely() {
    // The seeds are whole exchanges: each must end on a message boundary in its own direction.
    use imapproxy_codec::Direction;
    // Only the hand-written `*.imap` seeds: files libFuzzer adds are fragments.
    for (path, data) in corpus("framer") {
        if path.extension().is_none_or(|e| e != "imap") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let dir = if name.starts_with("client") {
            Direction::Client
        } else {
            Direction::Server
        };
        let frames = checks::frames(dir, &data, &[]);
        assert_eq!(frames.last().map(|f| f.0), Some(data.len()), "{name}");
    }
}

#[test]
fn preauth_corpus_holds_invariants() {
    for (path, data) in corpus("preauth") {
        println!("{}", path.display());
        checks::check_preauth(&data);
    }
}
