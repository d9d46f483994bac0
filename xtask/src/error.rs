//! The xtask error: what failed, and which exit code to leave with.

/// Why an xtask command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XtaskError {
    /// Wrong arguments.
    #[error("{0}")]
    Usage(String),
    /// A command ran and failed; its exit code is propagated.
    #[error("`{command}` failed ({status})")]
    Failed {
        /// The command line, for the message.
        command: String,
        /// Its exit status as text.
        status: String,
        /// The exit code to propagate (1 when killed by a signal).
        code: i32,
    },
    /// A command could not be started at all.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// Something this machine lacks and we cannot install.
    #[error("{0}")]
    Missing(String),
    /// Any other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl XtaskError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            XtaskError::Failed { code, .. } => *code,
            XtaskError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> XtaskError {
        let context = context.into();
        move |source| XtaskError::Io { context, source }
    }
}
