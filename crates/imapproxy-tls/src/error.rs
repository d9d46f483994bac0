//! The one error type of this crate.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while loading certificates or running a TLS handshake.
///
/// Variants name the file involved where there is one, so an operator can act on the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A file (or inline PEM text) is not valid PEM.
    #[error("invalid PEM in {}: {source}", path.display())]
    Pem {
        /// The file, or `(inline PEM)` for PEM given as a string.
        path: PathBuf,
        /// What the PEM parser found wrong.
        source: rustls::pki_types::pem::Error,
    },
    /// The PEM source holds no `CERTIFICATE` section.
    #[error("no certificate found in {}", path.display())]
    NoCertificate {
        /// The file, or `(inline PEM)`.
        path: PathBuf,
    },
    /// The PEM file holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key (PKCS#8, PKCS#1 or SEC1) found in {}", path.display())]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// rustls refused a configuration (e.g. the key does not match the certificate) or a
    /// certificate could not be used as a trust anchor.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed development certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// The TLS handshake failed: the peer closed, sent garbage, or a certificate was rejected.
    ///
    /// [`Error::rustls_error`] tells which TLS-level reason, when there is one.
    #[error("TLS handshake failed: {0}")]
    Io(#[from] io::Error),
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// A TLS mode string was not `none`, `starttls` or `implicit`.
    #[error("unknown TLS mode {0:?}: expected \"none\", \"starttls\" or \"implicit\"")]
    UnknownTlsMode(String),
    /// The backend name is neither a valid DNS name nor an IP literal.
    #[error("invalid TLS server name {0:?}: expected a DNS name or an IP address")]
    InvalidServerName(String),
}

impl Error {
    /// The rustls error behind a failed handshake or configuration, if any.
    ///
    /// Useful to tell a certificate problem (retrying will not help) from a network one.
    #[must_use]
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        match self {
            Self::Rustls(e) => Some(e),
            Self::Io(e) => e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
            _ => None,
        }
    }

    /// Whether the failure came from the peer's certificate being rejected.
    #[must_use]
    pub fn is_certificate_error(&self) -> bool {
        matches!(
            self.rustls_error(),
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_recognised_through_io() {
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let err = Error::from(io);
        assert!(err.is_certificate_error());
        assert!(!Error::Timeout(Duration::from_secs(1)).is_certificate_error());
    }
}
