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
