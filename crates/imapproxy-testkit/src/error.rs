//! The testkit's one error type. Public functions return `std::io::Result` (that is
//! what tests want to `?`), so every variant converts into an `io::Error` whose
//! message is the variant's text.

use std::io;
use std::path::PathBuf;

/// What went wrong while setting up or driving a test fixture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// No `dovecot` binary on `PATH` or in the usual sbin directories.
    #[error("Dovecot not found: run `cargo xtask test`, which installs it")]
    DovecotNotFound,
    /// Dovecot exited before it accepted connections.
    #[error(
        "dovecot exited during start-up ({status}); config {config:?}; output and log:\n{output}"
    )]
    DovecotExited {
        /// Exit status as printed by std.
        status: String,
        /// The generated configuration file.
        config: PathBuf,
        /// Dovecot's stderr plus its log file.
        output: String,
    },
    /// Dovecot did not answer `* OK` on its plain port in time.
    #[error("dovecot did not greet on {addr} within {secs} s; output and log:\n{output}")]
    StartTimeout {
        /// The plain IMAP address that was polled.
        addr: std::net::SocketAddr,
        /// The bound that was exceeded.
        secs: u64,
        /// Dovecot's stderr plus its log file.
        output: String,
    },
    /// The system user owning the mail store could not be created or looked up.
    #[error("cannot set up mail user `{user}`: {reason} (the Dovecot sandbox needs root)")]
    MailUser {
        /// The user name.
        user: String,
        /// Why.
        reason: String,
    },
    /// A test certificate could not be generated.
    #[error("cannot generate the test certificate: {0}")]
    Certificate(String),
    /// TLS set-up or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer broke the IMAP conversation (unexpected EOF, bad framing, injection).
    #[error("IMAP protocol: {0}")]
    Protocol(String),
    /// A read did not complete within the client's timeout.
    #[error("timed out after {0:?} waiting for the server")]
    Timeout(std::time::Duration),
}

impl From<TestkitError> for io::Error {
    fn from(e: TestkitError) -> Self {
        let kind = match &e {
            TestkitError::DovecotNotFound => io::ErrorKind::NotFound,
            TestkitError::Timeout(_) | TestkitError::StartTimeout { .. } => io::ErrorKind::TimedOut,
            TestkitError::Protocol(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
