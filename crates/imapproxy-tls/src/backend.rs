//! TLS towards backends: trust configuration and the client handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use crate::insecure::AcceptAnyCertificate;
use crate::{ALPN_IMAP, Error, pem, provider};

/// How the proxy checks a backend's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendVerify {
    /// The Mozilla root set compiled in (`webpki-roots`).
    SystemRoots,
    /// CA certificates (one or more) from a PEM file.
    CaFile(PathBuf),
    /// CA certificates (one or more) as PEM text.
    CaPem(String),
    /// No verification at all: anyone on the path can read the traffic. Logged loudly.
    Insecure,
}

/// Client-side TLS for backend connections. Cheap to clone (one `Arc<ClientConfig>` inside).
#[derive(Clone)]
pub struct BackendTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls").finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Builds the client configuration for `verify`.
    ///
    /// [`BackendVerify::Insecure`] logs a warning here, once per configuration, not per
    /// connection.
    ///
    /// # Errors
    /// The CA file cannot be read, holds no certificate, or a certificate is not a usable
    /// trust anchor.
    pub fn new(verify: BackendVerify) -> Result<Self, Error> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let mut config = match verify {
            BackendVerify::SystemRoots => {
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            BackendVerify::CaFile(path) => {
                let roots = roots_from_pem(&pem::read(&path)?, &path)?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            BackendVerify::CaPem(text) => {
                let roots = roots_from_pem(text.as_bytes(), Path::new(pem::INLINE))?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            BackendVerify::Insecure => {
                tracing::warn!(
                    "backend certificate verification DISABLED: anyone between the proxy and \
                     the backend can read and change the traffic, passwords included"
                );
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(
                        provider(),
                    )))
                    .with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![ALPN_IMAP.to_vec()];
        Ok(Self::from_config(Arc::new(config)))
    }

    /// Wraps a ready-made rustls client configuration.
    #[must_use]
    pub fn from_config(config: Arc<ClientConfig>) -> Self {
        Self { config }
    }

    /// The rustls configuration used for handshakes.
    #[must_use]
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// Runs the client side of a TLS handshake on `io`, bounded by `timeout`.
    ///
    /// `server_name` is the name the certificate must carry: a DNS name or an IP literal
    /// (`[::1]` brackets are accepted). It is also sent as SNI when it is a DNS name.
    ///
    /// # Errors
    /// [`Error::InvalidServerName`], [`Error::Timeout`], or [`Error::Io`] when the handshake
    /// fails (see [`Error::is_certificate_error`]).
    pub async fn connect<IO>(
        &self,
        io: IO,
        server_name: &str,
        timeout: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<IO>, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = parse_server_name(server_name)?;
        let connector = TlsConnector::from(Arc::clone(&self.config));
        match tokio::time::timeout(timeout, connector.connect(name, io)).await {
            Ok(result) => result.map_err(Error::Io),
            Err(_elapsed) => Err(Error::Timeout(timeout)),
        }
    }
}

fn parse_server_name(raw: &str) -> Result<ServerName<'static>, Error> {
    let trimmed = raw
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(raw);
    ServerName::try_from(trimmed.to_owned()).map_err(|_| Error::InvalidServerName(raw.to_owned()))
}

fn roots_from_pem(pem_text: &[u8], origin: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in pem::certificates(pem_text, origin)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_accept_dns_and_ip_literals() {
        assert!(matches!(
            parse_server_name("imap.example.org"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            parse_server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            parse_server_name("[::1]"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            parse_server_name("not a name"),
            Err(Error::InvalidServerName(_))
        ));
        assert!(matches!(
            parse_server_name(""),
            Err(Error::InvalidServerName(_))
        ));
    }

    #[test]
    fn ca_pem_without_certificate_is_rejected() {
        assert!(matches!(
            BackendTls::new(BackendVerify::CaPem(String::new())),
            Err(Error::NoCertificate { .. })
        ));
    }

    #[test]
    fn missing_ca_file_names_the_file() {
        let err = BackendTls::new(BackendVerify::CaFile("/nonexistent/ca.pem".into()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
