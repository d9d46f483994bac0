//! Relaying a SASL exchange the proxy does not verify itself (RFC 9051 §6.2.2): XOAUTH2,
//! OAUTHBEARER, SCRAM-*.

use super::BackendConn;
use super::response::{Response, bye, is_tagged};
use super::secret_buf::SecretBuf;
use crate::error::Error;

/// One step of a relayed SASL exchange (see [`BackendConn::sasl_start`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslStep {
    /// The backend sent a continuation: its text (base64, as sent, without `+ ` and CRLF),
    /// for the client to answer.
    Challenge(Vec<u8>),
    /// The backend accepted: the connection is logged in, capabilities are post-login.
    Done,
}

impl BackendConn {
    /// Starts relaying a SASL exchange the proxy does not verify itself (RFC 9051 §6.2.2):
    /// sends `ID` with `id_fields` (as [`BackendConn::login`] does), then
    /// `AUTHENTICATE <mechanism>` with the client's first message (`initial_response`, raw,
    /// not yet base64) — as SASL-IR (RFC 4959) when the backend offers it, otherwise after the
    /// backend's first empty continuation. `None` starts without a first message.
    ///
    /// Returns the tag of the exchange and the first step: a challenge for the client, or
    /// [`SaslStep::Done`] when the backend accepted at once. A refusal is
    /// [`Error::AuthFailed`]; each step is bounded by
    /// [`BackendTarget::login_timeout`](crate::BackendTarget::login_timeout).
    pub async fn sasl_start(
        &mut self,
        mechanism: &str,
        initial_response: Option<&[u8]>,
        id_fields: &[(String, String)],
    ) -> Result<(String, SaslStep), Error> {
        if mechanism.is_empty()
            || !mechanism
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::InvalidMechanism);
        }
        let ir_len = initial_response.map_or(0, |ir| ir.len() * 4 / 3 + 4);
        let mut out = SecretBuf::with_capacity(256 + mechanism.len() + ir_len);
        let id_tag = self.push_id(&mut out, id_fields);
        let tag = self.tag();
        out.extend(tag.as_bytes());
        out.extend(b" AUTHENTICATE ");
        out.extend(mechanism.as_bytes());
        let mut pending = None;
        if let Some(ir) = initial_response {
            if self.has_capability("SASL-IR") {
                out.push(b' ');
                push_sasl_data(&mut out, ir);
            } else {
                pending = Some(ir);
            }
        }
        out.extend(b"\r\n");
        let step = tokio::time::timeout(self.login_timeout(), async {
            self.write_all(out.as_slice()).await?;
            self.skip_id_answer(id_tag).await?;
            self.sasl_read(&tag).await
        })
        .await
        .unwrap_or_else(|_| Err(self.timed_out("login")))?;
        match (pending, step) {
            // Without SASL-IR the first message answers the server's empty challenge.
            (Some(ir), SaslStep::Challenge(_)) => {
                let step = self.sasl_respond(&tag, ir).await?;
                Ok((tag, step))
            }
            (_, step) => Ok((tag, step)),
        }
    }

    /// Sends the client's answer (raw, not yet base64) to the last challenge of the exchange
    /// tagged `tag` and reads the next step.
    pub async fn sasl_respond(&mut self, tag: &str, response: &[u8]) -> Result<SaslStep, Error> {
        let mut out = SecretBuf::with_capacity(response.len() * 4 / 3 + 8);
        // An empty answer to a continuation is an empty line (RFC 9051 §6.2.2).
        if !response.is_empty() {
            push_sasl_data(&mut out, response);
        }
        out.extend(b"\r\n");
        tokio::time::timeout(self.login_timeout(), async {
            self.write_all(out.as_slice()).await?;
            self.sasl_read(tag).await
        })
        .await
        .unwrap_or_else(|_| Err(self.timed_out("login")))
    }

    /// Cancels the exchange tagged `tag` with `*` (RFC 9051 §6.2.2) and waits for the
    /// backend's (`BAD`) answer.
    pub async fn sasl_cancel(&mut self, tag: &str) -> Result<(), Error> {
        tokio::time::timeout(self.login_timeout(), async {
            self.write_all(b"*\r\n").await?;
            self.read_response(tag).await.map(|_| ())
        })
        .await
        .unwrap_or_else(|_| Err(self.timed_out("login")))
    }

    /// The next continuation or the tagged end of a SASL exchange.
    async fn sasl_read(&mut self, tag: &str) -> Result<SaslStep, Error> {
        loop {
            let msg = self.read_message().await?;
            if let Some(rest) = msg.strip_prefix(b"+") {
                let text = rest.strip_suffix(b"\r\n").unwrap_or(rest);
                let text = text.strip_prefix(b" ").unwrap_or(text);
                return Ok(SaslStep::Challenge(text.to_vec()));
            }
            if is_tagged(&msg, tag) {
                let resp = Response {
                    untagged: Vec::new(),
                    tagged: msg,
                };
                self.finish_login(resp).await?;
                return Ok(SaslStep::Done);
            }
            if let Some(bye) = bye(&msg) {
                return Err(bye);
            }
        }
    }
}

/// Base64 of `data`; an empty message is `=` (RFC 4959 §3 for SASL-IR, and accepted by
/// servers as an empty continuation answer).
fn push_sasl_data(out: &mut SecretBuf, data: &[u8]) {
    if data.is_empty() {
        out.push(b'=');
    } else {
        out.extend_base64(data);
    }
}
