//! PEM loading with `rustls-pki-types` (`rustls-pemfile` is unmaintained, RUSTSEC-2025-0134).
//!
//! Files are read whole, then parsed from memory, so an I/O failure and a syntax failure
//! produce different, actionable errors.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// Name used in errors for PEM given as a string rather than a file.
pub(crate) const INLINE: &str = "(inline PEM)";

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Every `CERTIFICATE` section of `pem`, in order (leaf first for a server chain).
///
/// Other section kinds (keys, parameters) are skipped. An empty result is an error.
pub(crate) fn certificates(
    pem: &[u8],
    origin: &Path,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(origin, source))?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: origin.to_path_buf(),
        });
    }
    if certs.iter().any(|cert| cert.is_empty()) {
        return Err(empty_section(origin, "CERTIFICATE"));
    }
    Ok(certs)
}

/// The first private key of `pem`: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`)
/// or SEC1 (`EC PRIVATE KEY`).
pub(crate) fn private_key(pem: &[u8], origin: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) if key.secret_der().is_empty() => Err(empty_section(origin, "private key")),
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(Error::NoPrivateKey {
            path: origin.to_path_buf(),
        }),
        Err(source) => Err(pem_error(origin, source)),
    }
}

/// Every `CERTIFICATE` section of in-memory PEM, in order; what [`crate::ServerTls::from_pem`]
/// and [`crate::BackendVerify::CaPem`] parse. Errors name the source `(inline PEM)`.
///
/// Exposed for the fuzz targets and their corpus tests; not part of the supported API.
///
/// # Errors
/// [`Error::Pem`] for a malformed section, [`Error::NoCertificate`] when there is none.
#[doc(hidden)]
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    certificates(pem, Path::new(INLINE))
}

/// The first private key of in-memory PEM; what [`crate::ServerTls::from_pem`] parses.
/// Errors name the source `(inline PEM)`.
///
/// Exposed for the fuzz targets and their corpus tests; not part of the supported API.
///
/// # Errors
/// [`Error::Pem`] for a malformed section, [`Error::NoPrivateKey`] when there is none.
#[doc(hidden)]
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    private_key(pem, Path::new(INLINE))
}

/// Longest excerpt of the input an error keeps. `rustls-pki-types` prints the offending line
/// as a list of byte values, so a long garbage line would otherwise become a log line four
/// times its size (found by the `tls_pem` fuzz target).
const MAX_EXCERPT: usize = 64;

/// `rustls-pki-types` reads a section with nothing between its `BEGIN` and `END` lines as
/// zero bytes of DER; that is no certificate or key, and saying so here names the file
/// (found by the `tls_pem` fuzz target).
fn empty_section(origin: &Path, what: &str) -> Error {
    pem_error(
        origin,
        pem::Error::Base64Decode(format!("empty {what} section")),
    )
}

fn pem_error(origin: &Path, source: pem::Error) -> Error {
    let source = match source {
        pem::Error::IllegalSectionStart { mut line } => {
            line.truncate(MAX_EXCERPT);
            pem::Error::IllegalSectionStart { line }
        }
        pem::Error::MissingSectionEnd { mut end_marker } => {
            end_marker.truncate(MAX_EXCERPT);
            pem::Error::MissingSectionEnd { end_marker }
        }
        other => other,
    };
    Error::Pem {
        path: PathBuf::from(origin),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_has_no_certificate_and_no_key() {
        let origin = Path::new("x.pem");
        assert!(matches!(
            certificates(b"", origin),
            Err(Error::NoCertificate { .. })
        ));
        assert!(matches!(
            private_key(b"", origin),
            Err(Error::NoPrivateKey { .. })
        ));
    }

    #[test]
    fn truncated_section_is_a_pem_error() {
        let origin = Path::new("x.pem");
        let broken = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(
            certificates(broken, origin),
            Err(Error::Pem { .. })
        ));
    }

    #[test]
    fn errors_quote_at_most_a_short_excerpt_of_the_input() {
        let long = "A".repeat(10_000);
        for text in [
            format!("-----BEGIN CERT{long}\n"),
            format!("-----BEGIN {long}-----\nAAAA\n"),
        ] {
            let err = certificates_from_pem(text.as_bytes()).unwrap_err();
            assert!(matches!(err, Error::Pem { .. }), "{err}");
            assert!(err.to_string().len() < 512, "{err}");
        }
    }

    #[test]
    fn empty_sections_are_neither_certificates_nor_keys() {
        let cert = b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
        let err = certificates_from_pem(cert).unwrap_err();
        assert!(
            err.to_string().contains("empty CERTIFICATE section"),
            "{err}"
        );
        for label in ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"] {
            let key = format!("-----BEGIN {label}-----\r\n-----END {label}-----\r\n");
            let err = private_key_from_pem(key.as_bytes()).unwrap_err();
            assert!(
                err.to_string().contains("empty private key section"),
                "{err}"
            );
        }
    }

    #[test]
    fn key_section_is_not_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = key.serialize_pem();
        let origin = Path::new("k.pem");
        assert!(matches!(
            certificates(pem.as_bytes(), origin),
            Err(Error::NoCertificate { .. })
        ));
        assert!(matches!(
            private_key(pem.as_bytes(), origin),
            Ok(PrivateKeyDer::Pkcs8(_))
        ));
    }
}
