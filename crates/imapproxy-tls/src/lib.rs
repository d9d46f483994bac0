//! TLS for IMAP proxies, on rustls with the `ring` provider.
//!
//! - [`ServerTls`]: the proxy's own certificate towards clients, loaded from PEM files
//!   (PKCS#8, PKCS#1 or SEC1 keys) or generated self-signed for development, hot-reloadable,
//!   with a bounded handshake usable for implicit TLS and for STARTTLS alike.
//! - [`BackendTls`]: the proxy as a TLS client of its backends, trusting the Mozilla roots,
//!   a CA file, inline CA PEM, or (loudly) nothing at all.
//! - [`TlsMode`]: `none` / `starttls` / `implicit`, as written in configuration.
//!
//! The crate knows nothing of IMAP beyond the ALPN id `imap`. Every configuration is built
//! with `builder_with_provider(ring)`, never with the process-default provider, so linking a
//! second provider elsewhere cannot make it panic.
//!
//! # Example
//!
//! A self-signed server and a client that trusts exactly that certificate, over an
//! in-memory pipe:
//!
//! ```
//! use std::time::Duration;
//! use imapproxy_tls::{BackendTls, BackendVerify, ServerTls};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (server, cert_pem) = ServerTls::self_signed(&["localhost".to_owned()])?;
//! let client = BackendTls::new(BackendVerify::CaPem(cert_pem))?;
//!
//! let (client_io, server_io) = tokio::io::duplex(64 * 1024);
//! let timeout = Duration::from_secs(5);
//! let (server_side, client_side) = tokio::join!(
//!     server.accept(server_io, timeout),
//!     client.connect(client_io, "localhost", timeout),
//! );
//! let (mut server_side, mut client_side) = (server_side?, client_side?);
//!
//! server_side.write_all(b"* OK ready\r\n").await?;
//! server_side.flush().await?;
//! let mut greeting = [0u8; 12];
//! client_side.read_exact(&mut greeting).await?;
//! assert_eq!(&greeting, b"* OK ready\r\n");
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! None. TLS 1.2 and 1.3 are enabled, with rustls' safe defaults.

#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod backend;
mod error;
mod insecure;
mod mode;
mod pem;
mod server;

use std::sync::{Arc, OnceLock};

pub use backend::{BackendTls, BackendVerify};
pub use error::Error;
pub use mode::TlsMode;
#[doc(hidden)]
pub use pem::{certificates_from_pem, private_key_from_pem};
pub use server::{DEFAULT_SELF_SIGNED_NAMES, ServerTls};

pub use rustls;
pub use tokio_rustls;

/// The ALPN protocol id of IMAP (IANA ALPN registry; RFC 7301 §6).
pub const ALPN_IMAP: &[u8] = b"imap";

/// The one crypto provider of this crate: ring, built once.
///
/// Passed explicitly to every config builder, because the process-default provider panics
/// when both ring and aws-lc-rs are linked.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}
