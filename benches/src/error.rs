//! The one error type of the load bench: every variant says what to do about it.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a scenario could not be measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The release proxy binary is not where we looked.
    #[error(
        "proxy binary {0} not found: run `cargo build --release -p imapproxy` first \
         (cargo xtask bench does), or pass --proxy PATH"
    )]
    ProxyBinaryMissing(PathBuf),
    /// The proxy process exited before it listened.
    #[error("the proxy exited during start-up ({status}); its output:\n{log}")]
    ProxyExited {
        /// Exit status as printed by std.
        status: String,
        /// The proxy's stderr.
        log: String,
    },
    /// The proxy did not listen in time.
    #[error("the proxy did not listen on {addr} within {secs} s; its output:\n{log}")]
    ProxyStartTimeout {
        /// The address that was polled.
        addr: SocketAddr,
        /// The bound that was exceeded.
        secs: u64,
        /// The proxy's stderr.
        log: String,
    },
    /// Dovecot (through the testkit) did not start.
    #[error("cannot start the sandboxed Dovecot: {0}")]
    Dovecot(io::Error),
    /// An I/O step failed.
    #[error("{what}: {source}")]
    Io {
        /// The step, e.g. "connect to proxy plain".
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A step took longer than its bound.
    #[error("{what} timed out after {secs} s")]
    Timeout {
        /// The step.
        what: String,
        /// The bound.
        secs: u64,
    },
    /// A server answered something the scenario cannot continue after.
    #[error("{what}: unexpected response: {detail}")]
    Protocol {
        /// The step.
        what: String,
        /// The response (at most a few hundred bytes of it) or what was wrong with it.
        detail: String,
    },
    /// Too few file descriptors for the scenario's sessions.
    #[error(
        "the open file limit is {have}, this scenario needs at least {need}: \
         run it under `ulimit -n 65536` (cargo xtask bench does)"
    )]
    FdLimit {
        /// The soft limit after trying to raise it to the hard one.
        have: u64,
        /// What the scenario needs.
        need: u64,
    },
    /// The hard open-file limit is too low and may not be raised (no `CAP_SYS_RESOURCE`).
    #[error(
        "the hard open file limit is {hard}, this scenario needs at least {need} and may not \
         raise it: that takes CAP_SYS_RESOURCE (root, outside a container that drops it); \
         run loadbench as root, or raise the hard limit first (`ulimit -Hn`, limits.conf)"
    )]
    FdHardLimit {
        /// The hard limit.
        hard: u64,
        /// What the scenario needs.
        need: u64,
    },
    /// Reading `/proc` or writing the JSON summary failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl BenchError {
    /// Wraps an I/O error with the step it happened in.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }

    /// An unexpected response during `what`.
    pub fn protocol(what: impl Into<String>, detail: impl Into<String>) -> BenchError {
        BenchError::Protocol {
            what: what.into(),
            detail: detail.into(),
        }
    }
}
