//! Invariant checks for the TLS crate's fuzz target (`tls_pem`), shared with the corpus replay
//! test `crates/imapproxy-tls/tests/fuzz_corpus.rs` (which includes this file with `#[path]`),
//! so the committed corpus is checked on every `cargo test`, not only when fuzzing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use imapproxy_tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use imapproxy_tls::{Error, certificates_from_pem, private_key_from_pem};

/// What one PEM text yielded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PemOutcome {
    /// Certificates parsed (0 when parsing failed).
    pub certs: usize,
    /// The label of the private key found, if any.
    pub key: Option<&'static str>,
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether a line of `data` begins a `label` section as `rustls-pki-types` reads one:
/// `-----BEGIN <label>` then five dashes, among which it tolerates blanks; lines end at LF
/// or CR.
fn has_begin_line(data: &[u8], label: &str) -> bool {
    let start = format!("-----BEGIN {label}");
    data.split(|&b| b == b'\n' || b == b'\r').any(|line| {
        line.strip_prefix(start.as_bytes()).is_some_and(|rest| {
            rest.iter().all(|b| b" -".contains(b))
                && rest.iter().filter(|&&b| b == b'-').count() == 5
        })
    })
}

/// Standard base64 (RFC 4648 §4), padded: enough to write PEM back.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One PEM section (RFC 7468 §2) with 64-character lines.
fn section(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn key_label(key: &PrivateKeyDer<'_>) -> &'static str {
    match key {
        PrivateKeyDer::Pkcs8(_) => "PRIVATE KEY",
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        other => panic!("a key kind this crate does not document: {other:?}"),
    }
}

/// PEM loading invariants (`certificates_from_pem`, `private_key_from_pem`: what
/// `ServerTls::from_pem` and `BackendVerify::CaPem` parse):
/// - never panics; error texts stay short;
/// - input without a `-----BEGIN ` line is "no certificate" and "no private key", never a
///   syntax error and never a key;
/// - certificates come only from `CERTIFICATE` sections: at least one, at most as many as
///   `-----BEGIN CERTIFICATE-----` lines, none empty, and written back as PEM they parse to
///   the same list;
/// - a key comes only from a complete section of its own kind (`BEGIN` and `END` lines of
///   `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`), is not empty, and written back
///   under its label parses to the same key;
/// - sections with nothing inside are neither certificates nor keys.
pub fn check_pem(data: &[u8]) -> PemOutcome {
    let certs = certificates_from_pem(data);
    let key = private_key_from_pem(data);
    for e in [certs.as_ref().err(), key.as_ref().err()]
        .into_iter()
        .flatten()
    {
        let text = e.to_string();
        assert!(
            text.len() <= 512,
            "error text of {} bytes: {text}",
            text.len()
        );
    }
    if !contains(data, b"-----BEGIN ") {
        assert!(
            matches!(certs, Err(Error::NoCertificate { .. })),
            "{certs:?}"
        );
        assert!(matches!(key, Err(Error::NoPrivateKey { .. })), "{key:?}");
    }
    let mut outcome = PemOutcome {
        certs: 0,
        key: None,
    };
    if let Ok(certs) = &certs {
        assert!(!certs.is_empty());
        assert!(certs.len() <= count(data, b"-----BEGIN CERTIFICATE-----"));
        assert!(certs.iter().all(|c| !c.is_empty()), "an empty certificate");
        let written: String = certs.iter().map(|c| section("CERTIFICATE", c)).collect();
        let again: Vec<CertificateDer<'_>> = certificates_from_pem(written.as_bytes()).unwrap();
        assert_eq!(&again, certs);
        outcome.certs = certs.len();
    }
    if let Ok(key) = &key {
        let label = key_label(key);
        assert!(has_begin_line(data, label), "no BEGIN {label} line");
        assert!(contains(data, format!("-----END {label}-----").as_bytes()));
        assert!(!key.secret_der().is_empty(), "an empty {label}");
        let written = section(label, key.secret_der());
        let again = private_key_from_pem(written.as_bytes()).unwrap();
        assert_eq!(again.secret_der(), key.secret_der());
        assert_eq!(key_label(&again), label);
        outcome.key = Some(label);
    }
    outcome
}
