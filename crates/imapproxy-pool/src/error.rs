//! Errors of the backend connector and the pool.

use std::io;

/// What went wrong talking to a backend, or getting a session from the pool.
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
        /// What was being done: `connect`, `PROXY header`, `greeting`, `STARTTLS`,
        /// `CAPABILITY`, `login`, `read` or `write`.
        step: &'static str,
    },
    /// Reading or writing failed after the connection was open.
    #[error("backend I/O error: {0}")]
    Io(#[from] io::Error),
    /// TLS setup or handshake failed.
    #[error("backend TLS: {0}")]
    Tls(#[from] imapproxy_tls::Error),
    /// The target asks for TLS but has no TLS client settings
    /// ([`BackendTarget::tls_client`](crate::BackendTarget::tls_client)).
    #[error("TLS to the backend requested but no TLS client configured")]
    TlsNotConfigured,
    /// The backend closed the connection where a response was due.
    #[error("backend closed the connection")]
    Closed,
    /// The backend greeted with `BYE` (RFC 9051 §7.1.5): it does not take connections now
    /// (overloaded, shutting down, too many connections from this address).
    #[error("backend greeted with BYE: {text}")]
    GreetingBye {
        /// The greeting's text, cut to 100 characters.
        text: String,
    },
    /// The backend greeted with `PREAUTH` (RFC 9051 §7.1.4): the connection is logged in as
    /// someone already, and handing it to a client would give them that account. Refused.
    #[error("backend greeted with PREAUTH")]
    PreAuthGreeting,
    /// The backend sent `BYE` while a response was due: it is closing the connection.
    #[error("backend said BYE: {text}")]
    Bye {
        /// The `BYE`'s text, cut to 100 characters.
        text: String,
    },
    /// The backend sent something that is not the IMAP expected at this point.
    #[error("unexpected data from the backend: {what}")]
    UnexpectedData {
        /// What was wrong.
        what: &'static str,
    },
    /// The backend answered `NO` or `BAD` (or a tagged line where a continuation request was
    /// due) to a command the connector needs to succeed.
    #[error("backend refused {command}")]
    CommandRejected {
        /// The command (`STARTTLS`, `NOOP`), or `continuation` when the connector waited for a
        /// `+` ([`BackendConn::read_continuation`](crate::BackendConn::read_continuation)).
        command: &'static str,
        /// The response code, upper-cased, if any.
        code: Option<String>,
    },
    /// The backend rejected the credentials (`NO`/`BAD` to LOGIN or AUTHENTICATE).
    #[error("backend rejected the login")]
    AuthFailed {
        /// The response code, upper-cased, if any (`AUTHENTICATIONFAILED`, `UNAVAILABLE`, ...).
        code: Option<String>,
    },
    /// A SASL mechanism name that is not an atom of letters, digits, `-` and `_`.
    #[error("invalid SASL mechanism name")]
    InvalidMechanism,
    /// [`SaslLogin::respond`](crate::SaslLogin::respond) or `cancel` before `start`.
    #[error("SASL exchange not started")]
    SaslNotStarted,
    /// No backend of that name was added to the pool.
    #[error("no backend named {name:?} in the pool")]
    UnknownBackend {
        /// The name asked for.
        name: String,
    },
    /// The operating system had no randomness for the pool's credential key.
    #[error("no system randomness for the pool's credential key")]
    NoRandomness,
    /// Every one of the user's backend sessions stayed busy for the whole `wait_timeout`.
    #[error("timed out waiting for one of the user's backend sessions")]
    PoolTimeout,
    /// The backend is at its `max_connections`.
    #[error("backend is at its connection limit")]
    BackendFull,
    /// One response message (a line with its literals) exceeded
    /// [`ResponseLimits::max_message`](crate::ResponseLimits::max_message).
    #[error("backend response message larger than {limit} bytes")]
    MessageTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// The untagged data before a tagged reply exceeded
    /// [`ResponseLimits::max_untagged`](crate::ResponseLimits::max_untagged).
    #[error("backend sent more than {limit} bytes of untagged data without a tagged reply")]
    UntaggedTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
}

impl Error {
    /// True when the failure says nothing about the user's credentials or the caller's
    /// request, so that another backend (or a later attempt) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::AuthFailed { code } => {
                matches!(code.as_deref(), Some("UNAVAILABLE" | "SERVERBUG" | "LIMIT"))
            }
            // The user's own cap, and mistakes of the caller: no backend answers differently.
            Self::PoolTimeout | Self::InvalidMechanism | Self::SaslNotStarted => false,
            _ => true,
        }
    }
}

/// A server's text for an error message: lossy UTF-8, control characters dropped, at most
/// 100 characters.
pub(crate) fn server_text(text: &[u8]) -> String {
    String::from_utf8_lossy(text.trim_ascii())
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_credentials_and_caller_mistakes_are_final() {
        assert!(!Error::AuthFailed { code: None }.is_retryable());
        assert!(
            Error::AuthFailed {
                code: Some("UNAVAILABLE".into())
            }
            .is_retryable()
        );
        assert!(!Error::PoolTimeout.is_retryable());
        assert!(!Error::InvalidMechanism.is_retryable());
        assert!(Error::Closed.is_retryable());
        assert!(Error::PreAuthGreeting.is_retryable());
        assert!(Error::UntaggedTooLarge { limit: 1 }.is_retryable());
    }

    #[test]
    fn server_text_is_short_and_printable() {
        assert_eq!(
            server_text(b" Too many\x1b[31m connections\r\n"),
            "Too many[31m connections"
        );
        assert_eq!(server_text(&[b'x'; 300]).len(), 100);
    }
}
