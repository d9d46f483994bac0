//! Replays the committed fuzz corpus `fuzz/corpus/tls_pem/` through the same invariant checks
//! the fuzz target runs (`fuzz/checks/tls.rs`), so they are enforced by every `cargo test`,
//! not only when fuzzing. Needs the workspace checkout: this test is left out of the
//! published package.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/checks/tls.rs"]
mod checks;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;

use checks::PemOutcome;

/// The seeds, sorted; fails when the directory is missing or nearly empty.
fn corpus() -> Vec<(String, Vec<u8>)> {
    corpus::named_seeds(env!("CARGO_MANIFEST_DIR"), "tls_pem")
}

/// What each hand-written seed must yield: certificates, and the key's PEM label.
const EXPECTED: &[(&str, usize, Option<&str>)] = &[
    ("binary-der.pem", 0, None),
    ("cert-and-key.pem", 1, Some("PRIVATE KEY")),
    ("chain-3.pem", 3, None),
    ("crlf-chain-2.pem", 2, None),
    ("ec-sec1-key.pem", 0, Some("EC PRIVATE KEY")),
    ("empty-sections.pem", 0, None),
    ("empty.pem", 0, None),
    ("encrypted-key.pem", 0, None),
    ("key-then-cert-with-text.pem", 1, Some("PRIVATE KEY")),
    ("leaf.pem", 1, None),
    // pki-types tolerates blanks among the five dashes of a BEGIN line.
    ("lenient-begin-line-key.pem", 0, Some("PRIVATE KEY")),
    ("mismatched-end.pem", 0, None),
    ("not-base64.pem", 0, None),
    ("pkcs8-key.pem", 0, Some("PRIVATE KEY")),
    ("public-key-only.pem", 0, None),
    ("rsa-pkcs1-key.pem", 0, Some("RSA PRIVATE KEY")),
    ("truncated-cert.pem", 0, None),
];

#[test]
fn pem_corpus_holds_invariants() {
    for (name, data) in corpus() {
        println!("{name}");
        checks::check_pem(&data);
        // Truncations are the usual broken file: a few cuts per seed.
        for end in [
            data.len() / 3,
            data.len() / 2,
            data.len().saturating_sub(30),
        ] {
            checks::check_pem(&data[..end]);
        }
    }
}

#[test]
fn pem_seeds_yield_the_expected_certificates_and_keys() {
    let seeds = corpus();
    for &(name, certs, key) in EXPECTED {
        let (_, data) = seeds
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("seed {name} is missing"));
        assert_eq!(checks::check_pem(data), PemOutcome { certs, key }, "{name}");
    }
}
