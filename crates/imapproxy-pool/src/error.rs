//! Errors of the backend connector.

use std::io;

/// What went wrong talking to a backend.
///
/// Each variant says which step failed so that callers can decide whether another backend is
/// worth trying ([`Error::is_retryable`]). None of them is meant for the client's eyes: a proxy
/// maps them to `NO [UNAVAILABLE]` without the detail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be opened.
    #[error("cannot connect to backend {addr}: {source}")]
    Connect {
        /// Backend address.
        addr: String,
        /// Underlying error.
        source: io::Error,
    },
    /// A step took longer than its timeout.
    #[error("backend {addr} timed out during {step}")]
    Timeout {
        /// Backend address.
        addr: String,
        /// What was being done.
        step: &'static str,
    },
    /// Reading or writing failed after the connection was open.
    #[error("backend I/O error: {0}")]
    Io(#[from] io::Error),
    /// TLS setup or handshake failed.
    #[error("backend TLS: {0}")]
    Tls(#[from] imapproxy_tls::Error),
    /// The backend sent something that is not the IMAP we expect.
    #[error("backend protocol error: {0}")]
    Protocol(String),
    /// The backend greeted with `BYE` or closed the connection.
    #[error("backend refused the connection")]
    Refused,
    /// The backend rejected the credentials (`NO`/`BAD` to LOGIN or AUTHENTICATE).
    #[error("backend rejected the login")]
    AuthFailed {
        /// The response code, upper-cased, if any (`AUTHENTICATIONFAILED`, `UNAVAILABLE`, ...).
        code: Option<String>,
    },
    /// The backend answered a command with a tagged reply where a continuation was expected.
    #[error("backend rejected the command")]
    CommandRejected {
        /// The response code, upper-cased, if any.
        code: Option<String>,
    },
    /// Every one of the user's backend sessions stayed busy for the whole `wait_timeout`.
    #[error("timed out waiting for one of the user's backend sessions")]
    PoolTimeout,
    /// The backend is at its `max_connections`.
    #[error("backend is at its connection limit")]
    BackendFull,
    /// A response exceeded the connector's size bound.
    #[error("backend response too large")]
    TooLarge,
}

impl Error {
    /// True when the failure says nothing about the user's credentials, so that another backend
    /// (or a later attempt) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::AuthFailed { code } => {
                matches!(code.as_deref(), Some("UNAVAILABLE" | "SERVERBUG" | "LIMIT"))
            }
            Self::PoolTimeout => false,
            _ => true,
        }
    }
}
