//! Errors that end a session.

use std::io;

/// Why a session ended abnormally. Never shown to the client; the session answers with an IMAP
/// status of its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading from or writing to the client failed.
    #[error("client I/O: {0}")]
    Client(#[source] io::Error),
    /// The client's TLS handshake failed.
    #[error("client TLS: {0}")]
    Tls(#[from] imapproxy_tls::Error),
    /// The client closed the connection.
    #[error("client closed the connection")]
    ClientClosed,
    /// The client was silent for too long.
    #[error("client timed out")]
    Timeout,
    /// The client sent too much or too many invalid commands.
    #[error("client protocol violation: {0}")]
    Protocol(&'static str),
    /// The proxy is shutting down.
    #[error("shutting down")]
    Shutdown,
    /// A PROXY protocol header was missing, malformed, or sent by an untrusted peer.
    #[error("PROXY protocol: {0}")]
    ProxyHeader(&'static str),
    /// A trusted network entry is not `address/prefix` or an address.
    #[error("not a network (address/prefix): {0:?}")]
    InvalidNetwork(String),
}
