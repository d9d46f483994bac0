//! Replays the committed fuzz corpora `fuzz/corpus/route_http_answer/` and
//! `fuzz/corpus/route_static_map/` through the same invariant checks the fuzz targets run
//! (`fuzz/checks/route.rs`), so they are enforced by every `cargo test`, not only when
//! fuzzing. Needs the workspace checkout: this test is left out of the published package.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/checks/route.rs"]
mod checks;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;

use imapproxy_route::{Error, HttpAuthDirectory, StaticMap};

/// The seeds of one target, sorted; fails when the directory is missing or nearly empty.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    corpus::named_seeds(env!("CARGO_MANIFEST_DIR"), target)
}

#[test]
fn http_answer_corpus_holds_invariants_for_every_prefix() {
    for (name, data) in corpus("route_http_answer") {
        println!("{name}");
        for end in 0..=data.len() {
            checks::check_http_answer(&data[..end]);
        }
    }
}

/// Seeds are named for what they must give: `route-*` a backend, `none-*` no opinion,
/// `denied-*` a refusal, `unavailable-*` an unusable answer.
#[test]
fn http_answer_seeds_give_what_their_names_say() {
    let d = HttpAuthDirectory::new("http://127.0.0.1:9000/auth")
        .unwrap()
        .with_backends(
            &checks::BACKENDS
                .iter()
                .map(|(id, addr)| imapproxy_route::Backend::new(*id, *addr))
                .collect::<Vec<_>>(),
        );
    for (name, data) in corpus("route_http_answer") {
        let r = d.parse_response(&data);
        let ok = match name.split('-').next().unwrap() {
            "route" => matches!(r, Ok(Some(_))),
            "none" => r == Ok(None),
            "denied" => matches!(r, Err(Error::Denied { .. })),
            "unavailable" => matches!(r, Err(Error::DirectoryUnavailable(_))),
            _ => continue,
        };
        assert!(ok, "{name}: {r:?}");
    }
}

#[test]
fn static_map_corpus_holds_invariants() {
    for (name, data) in corpus("route_static_map") {
        println!("{name}");
        checks::check_static_map(&data);
    }
}

/// `ok-*` seeds are maps that load, `bad-*` seeds are refused with a line number.
#[test]
fn static_map_seeds_give_what_their_names_say() {
    for (name, data) in corpus("route_static_map") {
        let parsed = String::from_utf8_lossy(&data).parse::<StaticMap>();
        if name.starts_with("ok-") {
            let map = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!map.is_empty(), "{name}");
        } else if name.starts_with("bad-") {
            assert!(
                matches!(parsed, Err(Error::InvalidMap { .. })),
                "{name}: {parsed:?}"
            );
        }
    }
}
