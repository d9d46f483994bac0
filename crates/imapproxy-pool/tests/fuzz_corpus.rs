//! Replays the committed fuzz corpora `fuzz/corpus/pool_response/` and
//! `fuzz/corpus/pool_capabilities/` through the same invariant checks the fuzz targets run
//! (`fuzz/checks/pool.rs`), so they are enforced by every `cargo test`, not only when fuzzing.
//! Needs the workspace checkout: this test is left out of the published package.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/checks/pool.rs"]
mod checks;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;

use checks::Event;

/// The seeds of one target, sorted; fails when the directory is missing or nearly empty.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    corpus::named_seeds(env!("CARGO_MANIFEST_DIR"), target)
}

#[test]
fn response_corpus_holds_invariants_at_every_cut() {
    for (name, data) in corpus("pool_response") {
        println!("{name}");
        // Every single cut for the small seeds, the derived ones for all.
        let every: Vec<usize> = if data.len() <= 2048 {
            (0..=data.len()).collect()
        } else {
            (0..=data.len()).step_by(97).collect()
        };
        checks::check_response(&data, &every);
        checks::check_response(&data, &checks::cuts_for(&data));
    }
}

#[test]
fn response_seeds_mean_what_their_names_say() {
    let seeds = corpus("pool_response");
    let events = |name: &str, limits| {
        let (_, data) = seeds.iter().find(|(n, _)| n == name).unwrap();
        checks::drive(data, &[], limits)
    };
    let [default, tiny] = checks::LIMITS;
    let failed = |e: &[Event]| match e.last() {
        Some(Event::Failed(text)) => text.clone(),
        other => panic!("{other:?}"),
    };
    assert!(failed(&events("greeting-bye.imap", default)).contains("greeted with BYE"));
    assert!(failed(&events("greeting-preauth.imap", default)).contains("PREAUTH"));
    assert!(failed(&events("greeting-garbage.imap", default)).contains("unexpected data"));
    assert!(failed(&events("bye-mid-response.imap", default)).contains("said BYE"));
    assert!(failed(&events("long-line.imap", tiny)).contains("larger than 64 bytes"));
    assert!(failed(&events("untagged-flood.imap", tiny)).contains("untagged data"));
    assert!(failed(&events("empty-line-flood.imap", tiny)).contains("untagged data"));

    let ok = events("fetch-literal-with-tag-inside.imap", default);
    let Some(Event::Response(resp)) = ok.last() else {
        panic!("{ok:?}")
    };
    assert_eq!(
        resp.untagged.len(),
        2,
        "the tagged line inside the literal ended it"
    );
    assert!(resp.is_ok());
    let flood = events("untagged-flood.imap", default);
    assert!(matches!(flood.last(), Some(Event::Response(r)) if r.untagged.len() == 400));
    let caps = events("greeting-ok-capability.imap", default);
    assert!(matches!(&caps[0], Event::Greeting(Some(c)) if c.contains(&"SASL-IR".to_owned())));
}

#[test]
fn capabilities_corpus_holds_invariants() {
    for (name, data) in corpus("pool_capabilities") {
        println!("{name}");
        checks::check_capabilities(&data);
        for end in 0..data.len() {
            checks::check_capabilities(&data[..end]);
        }
    }
}
