//! The one error type of this crate.

use crate::BackendId;

/// What can go wrong while building a registry or choosing a backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No backend has this id.
    #[error("unknown backend {0:?}")]
    UnknownBackend(String),
    /// Two backends share one id; ids must be unique so that routing and metrics agree.
    #[error("backend {0} is defined twice; backend names must be unique")]
    DuplicateBackend(BackendId),
    /// A backend definition is unusable.
    #[error("backend {id:?} is invalid: {reason}")]
    InvalidBackend {
        /// The backend's id as given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Every backend is down or draining (or there are none).
    #[error("no healthy backend is available")]
    NoHealthyBackend,
    /// The user directory did not answer (down, failing, or slower than its timeout). The
    /// session answers `NO [UNAVAILABLE]` (RFC 5530) and the client may retry later.
    #[error("the user directory is unavailable: {0}")]
    DirectoryUnavailable(String),
    /// The directory refused the login (e.g. an nginx-style auth service answered an
    /// `Auth-Status` other than `OK`). The session answers `NO [AUTHENTICATIONFAILED]`
    /// (RFC 5530 section 3) with `message` as the human-readable text, after waiting `wait` if
    /// the service asked for it (`Auth-Wait`; a delay that slows password guessing); without a
    /// `wait`, nginx closes the connection, a proxy may do the same or let the client retry.
    /// Never cached, never a reason to try another backend.
    #[error("login refused by the directory: {message}")]
    Denied {
        /// The service's reason, already free of CR/LF; safe to show to the client.
        message: String,
        /// How long to wait before answering the client, if the service said so.
        wait: Option<std::time::Duration>,
    },
    /// A directory's configuration is unusable (e.g. a malformed URL).
    #[error("invalid directory configuration: {0}")]
    InvalidDirectory(String),
    /// A line of a static map is malformed.
    #[error("map line {line}: {reason}")]
    InvalidMap {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A static map file could not be read.
    #[error("cannot read map file {path}: {reason}")]
    MapFile {
        /// The file's path as given.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
}
