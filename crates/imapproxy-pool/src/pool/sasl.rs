//! A connection reserved for one user, logged in by a SASL exchange the caller relays.

use super::session::PooledSession;
use crate::{Error, SaslStep};

/// A backend connection reserved for one user (slot taken, counted against the backend's
/// cap) that is not logged in yet: the caller relays a SASL exchange through it (RFC 9051
/// §6.2.2), for mechanisms the proxy cannot verify itself (XOAUTH2, OAUTHBEARER, SCRAM-*).
/// From [`SessionPool::checkout_sasl`](crate::SessionPool::checkout_sasl).
#[derive(Debug)]
pub struct SaslLogin {
    pub(super) session: PooledSession,
    pub(super) tag: Option<String>,
}

impl SaslLogin {
    /// Sends `ID` and `AUTHENTICATE <mechanism>` with the client's first message (raw bytes);
    /// see [`BackendConn::sasl_start`](crate::BackendConn::sasl_start).
    pub async fn start(
        &mut self,
        mechanism: &str,
        initial_response: Option<&[u8]>,
        id_fields: &[(String, String)],
    ) -> Result<SaslStep, Error> {
        let (tag, step) = self
            .session
            .conn()
            .sasl_start(mechanism, initial_response, id_fields)
            .await?;
        self.tag = Some(tag);
        Ok(step)
    }

    /// Relays the client's answer (raw bytes) to the last challenge.
    pub async fn respond(&mut self, response: &[u8]) -> Result<SaslStep, Error> {
        let tag = self.tag.as_deref().ok_or(Error::SaslNotStarted)?;
        self.session.lease.conn.sasl_respond(tag, response).await
    }

    /// Relays the client's `*` (cancel) and reads the backend's answer.
    pub async fn cancel(&mut self) -> Result<(), Error> {
        let tag = self.tag.as_deref().ok_or(Error::SaslNotStarted)?;
        self.session.lease.conn.sasl_cancel(tag).await
    }

    /// The logged-in session, once a step returned [`SaslStep::Done`]. It is never reused
    /// ([`PooledSession::reusable`] is false).
    pub fn into_session(self) -> PooledSession {
        self.session
    }
}
