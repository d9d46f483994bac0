//! An active IMAP health check of one backend: connect as the pool would (TCP, TLS or
//! STARTTLS, PROXY `LOCAL` header, greeting, CAPABILITY), `NOOP`, an optional probe login,
//! then `LOGOUT`.
//!
//! It answers "would a new session get through", not "is the port open": a Dovecot whose
//! login processes hang still accepts TCP connections. The probe login additionally proves
//! that the backend's authentication works (its passdb may be down while IMAP answers).

use crate::connector::{BackendConn, BackendTarget, Credentials};
use crate::error::Error;

/// The IMAP check: see the module docs. Bound the whole check with a timeout of your own
/// (the route crate's `HealthMonitor` does); each step is also bounded by the target's
/// `connect_timeout`, `greeting_timeout`, `login_timeout` (probe) and `io_timeout`.
#[derive(Debug, Clone, Default)]
pub struct ImapCheck {
    /// Log in as this user after `NOOP` (a dedicated account; its password is never logged).
    pub probe: Option<Credentials>,
}

impl ImapCheck {
    /// A check without probe login.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A check that also logs in as `probe`.
    #[must_use]
    pub fn with_probe(probe: Credentials) -> Self {
        Self { probe: Some(probe) }
    }

    /// Runs the check against `target`.
    ///
    /// # Errors
    /// Whatever step failed: connect, greeting ([`Error::GreetingBye`],
    /// [`Error::PreAuthGreeting`], a timeout), a `NOOP` that is not `OK`
    /// ([`Error::CommandRejected`]), or a rejected probe login ([`Error::AuthFailed`]).
    pub async fn check(&self, target: &BackendTarget) -> Result<(), Error> {
        let mut conn = BackendConn::connect(target).await?;
        let noop = conn.command("NOOP").await?;
        if !noop.is_ok() {
            return Err(Error::CommandRejected {
                command: "NOOP",
                code: noop.code(),
            });
        }
        if let Some(probe) = &self.probe {
            conn.login(probe, &[]).await?;
        }
        // RFC 9051 §6.1.3: the server sends BYE before the tagged OK, which the connector
        // reports as `Bye`; either way the check is complete, and a failing LOGOUT says
        // nothing about the next session.
        match conn.command("LOGOUT").await {
            Ok(_) | Err(Error::Bye { .. } | Error::Closed) => {}
            Err(e) => tracing::debug!(error = %e, "health check LOGOUT failed"),
        }
        Ok(())
    }
}
