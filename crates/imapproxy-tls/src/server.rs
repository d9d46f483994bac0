//! TLS termination towards clients: server configuration, hot reload and the handshake.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use crate::{ALPN_IMAP, Error, pem, provider};

/// Names a self-signed certificate covers when the caller gives none.
pub const DEFAULT_SELF_SIGNED_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Server-side TLS for the proxy's listeners (implicit TLS and STARTTLS alike).
///
/// Cheap to clone: every clone shares one [`ArcSwap`], so [`ServerTls::reload_from_pem_files`]
/// on any clone changes the certificate for all of them. Handshakes already running keep the
/// configuration they started with; new ones use the new certificate.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ArcSwap<ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// A file cannot be read, is not PEM, holds no certificate or no key, or the key does not
    /// fit the certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, Error> {
        Ok(Self::from_config(Arc::new(config_from_files(cert, key)?)))
    }

    /// Like [`ServerTls::from_pem_files`], with the PEM text already in memory.
    ///
    /// # Errors
    /// As for [`ServerTls::from_pem_files`].
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let origin = Path::new(pem::INLINE);
        let chain = pem::certificates(cert_pem, origin)?;
        let key = pem::private_key(key_pem, origin)?;
        Ok(Self::from_config(Arc::new(build_config(chain, key)?)))
    }

    /// Wraps a ready-made rustls configuration (the caller sets ALPN and everything else).
    #[must_use]
    pub fn from_config(config: Arc<ServerConfig>) -> Self {
        Self {
            config: Arc::new(ArcSwap::new(config)),
        }
    }

    /// Generates a self-signed certificate for `names` (DNS names or IP literals; empty means
    /// [`DEFAULT_SELF_SIGNED_NAMES`]) and returns it with its PEM, so callers can show it or
    /// hand it to a client as a trust anchor.
    ///
    /// Logs a warning: clients cannot verify such a certificate, so it is for development only.
    ///
    /// # Errors
    /// [`Error::InvalidServerName`] when a name is neither a DNS name nor an IP address;
    /// [`Error::SelfSigned`] when generation failed.
    pub fn self_signed(names: &[String]) -> Result<(Self, String), Error> {
        let names: Vec<String> = if names.is_empty() {
            DEFAULT_SELF_SIGNED_NAMES
                .iter()
                .map(|n| (*n).to_owned())
                .collect()
        } else {
            names.to_vec()
        };
        // rcgen takes any IA5 string as a DNS name; a certificate for a name no client can
        // ask for would only fail later, at the first handshake.
        for name in &names {
            if ServerName::try_from(name.as_str()).is_err() {
                return Err(Error::InvalidServerName(name.clone()));
            }
        }
        let generated = rcgen::generate_simple_self_signed(names.clone())?;
        let cert_pem = generated.cert.pem();
        let chain = vec![generated.cert.der().clone()];
        // rcgen serialises its key pairs as PKCS#8.
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(
            generated.signing_key.serialize_der(),
        ));
        let tls = Self::from_config(Arc::new(build_config(chain, key)?));
        tracing::warn!(
            names = ?names,
            "using a self-signed TLS certificate: clients cannot verify it; \
             configure [tls] cert and key for production"
        );
        Ok((tls, cert_pem))
    }

    /// Loads a new certificate and key; handshakes that start afterwards use them.
    ///
    /// On error the current certificate stays in place.
    ///
    /// # Errors
    /// As for [`ServerTls::from_pem_files`].
    pub fn reload_from_pem_files(&self, cert: &Path, key: &Path) -> Result<(), Error> {
        let config = config_from_files(cert, key)?;
        self.config.store(Arc::new(config));
        tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// The configuration new handshakes use now.
    #[must_use]
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Runs the server side of a TLS handshake on `io`, bounded by `timeout`.
    ///
    /// Used for implicit TLS right after accept, and for STARTTLS after the proxy has sent
    /// its `OK` (RFC 9051 §6.2.1: the caller must have discarded anything the client pipelined
    /// behind `STARTTLS` before calling this).
    ///
    /// # Errors
    /// [`Error::Timeout`] when the peer is too slow or silent, [`Error::Io`] when the handshake
    /// fails.
    pub async fn accept<IO>(
        &self,
        io: IO,
        timeout: Duration,
    ) -> Result<tokio_rustls::server::TlsStream<IO>, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            // Read the ClientHello first so the SNI can be logged, then pick the configuration
            // current at that moment (a reload may have happened while we waited).
            let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
            let hello = start.client_hello();
            match hello.server_name() {
                Some(sni) => tracing::debug!(sni, "TLS ClientHello"),
                None => tracing::debug!("TLS ClientHello without SNI"),
            }
            // RFC 7301 §3.2 lets a server that supports none of the offered protocols abort;
            // clients and probes that offer `h2` or `http/1.1` by default then fail. Such a
            // hello gets a configuration without ALPN: the handshake goes on, and the client
            // learns from the missing ALPN answer that nothing was agreed.
            let offers_only_others = hello
                .alpn()
                .is_some_and(|mut offered| !offered.any(|p| p == ALPN_IMAP));
            let mut config = self.config();
            if offers_only_others && !config.alpn_protocols.is_empty() {
                let mut without = (*config).clone();
                without.alpn_protocols.clear();
                config = Arc::new(without);
            }
            start.into_stream(config).await
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(result) => result.map_err(Error::Io),
            Err(_elapsed) => Err(Error::Timeout(timeout)),
        }
    }
}

fn config_from_files(cert: &Path, key: &Path) -> Result<ServerConfig, Error> {
    let chain = pem::certificates(&pem::read(cert)?, cert)?;
    let key = pem::private_key(&pem::read(key)?, key)?;
    build_config(chain, key)
}

fn build_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // "imap" is the registered ALPN id (IANA ALPN registry, RFC 7301 §6, pointing at
    // RFC 2595). Clients that send no ALPN are unaffected.
    config.alpn_protocols = vec![ALPN_IMAP.to_vec()];
    Ok(config)
}
