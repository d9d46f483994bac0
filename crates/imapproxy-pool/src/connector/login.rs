//! Logging in with a password: `ID` first (RFC 2971), then `AUTHENTICATE PLAIN` with SASL-IR
//! (RFC 4959) or `LOGIN`, quoted or as literals.

use imapproxy_codec::Secret;

use super::BackendConn;
use super::response::{Response, response_code};
use super::secret_buf::SecretBuf;
use crate::capabilities::Capabilities;
use crate::error::Error;

/// A user's credentials, held only as long as a login needs them.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Login name as the client gave it.
    pub username: String,
    /// Password; redacted in every `Debug` output and zeroed when dropped.
    pub password: Secret<Vec<u8>>,
}

/// Room for a command's tag, name, separators and literal announcements.
const COMMAND_OVERHEAD: usize = 64;

impl BackendConn {
    /// Logs in with `creds`, first sending `ID` with `id_fields` (RFC 2971) in the same write so
    /// that the backend records the real client (Dovecot honours `x-originating-ip` from
    /// `login_trusted_networks`). Uses `AUTHENTICATE PLAIN` with SASL-IR when offered, `LOGIN`
    /// otherwise. On success the capabilities are the backend's post-login ones.
    ///
    /// Every buffer that holds the password is zeroed when dropped.
    ///
    /// # Errors
    /// [`Error::AuthFailed`] when the backend refuses; [`Error::Timeout`] with step `login`
    /// when the whole exchange takes longer than
    /// [`BackendTarget::login_timeout`](crate::BackendTarget::login_timeout) (the connection is
    /// then out of step: drop it).
    pub async fn login(
        &mut self,
        creds: &Credentials,
        id_fields: &[(String, String)],
    ) -> Result<(), Error> {
        tokio::time::timeout(self.login_timeout(), self.login_exchange(creds, id_fields))
            .await
            .unwrap_or_else(|_| Err(self.timed_out("login")))
    }

    async fn login_exchange(
        &mut self,
        creds: &Credentials,
        id_fields: &[(String, String)],
    ) -> Result<(), Error> {
        let user = creds.username.as_bytes();
        let pass = creds.password.expose().as_slice();
        // Sized for the longest form (base64, or every byte escaped), so it never grows.
        let mut out = SecretBuf::with_capacity(
            id_len(id_fields) + COMMAND_OVERHEAD + 2 * (user.len() + pass.len() + 2),
        );
        let id_tag = self.push_id(&mut out, id_fields);
        let login_tag = self.tag();
        out.extend(login_tag.as_bytes());
        if self.has_capability("AUTH=PLAIN") && self.has_capability("SASL-IR") {
            // RFC 4616: authorization identity (empty), NUL, user, NUL, password.
            let mut plain = SecretBuf::with_capacity(user.len() + pass.len() + 2);
            plain.push(0);
            plain.extend(user);
            plain.push(0);
            plain.extend(pass);
            out.extend(b" AUTHENTICATE PLAIN ");
            out.extend_base64(plain.as_slice());
            out.extend(b"\r\n");
        } else if quotable(user) && quotable(pass) {
            out.extend(b" LOGIN ");
            push_quoted(&mut out, user);
            out.push(b' ');
            push_quoted(&mut out, pass);
            out.extend(b"\r\n");
        } else {
            // Boxed: the rare literal exchange would size the common login's future (and
            // every future awaiting it) while a burst of logins waits on the server.
            return Box::pin(self.login_with_literals(out, id_tag, &login_tag, creds)).await;
        }
        self.write_all(out.as_slice()).await?;
        drop(out);
        self.skip_id_answer(id_tag).await?;
        let resp = self.read_response(&login_tag).await?;
        self.finish_login(resp).await
    }

    /// `LOGIN` with the user name and password as literals (RFC 9051 §4.3): non-synchronizing
    /// with `LITERAL+` (or `LITERAL-` for small ones, RFC 7888), else waiting for each `+`.
    async fn login_with_literals(
        &mut self,
        mut out: SecretBuf,
        id_tag: Option<String>,
        login_tag: &str,
        creds: &Credentials,
    ) -> Result<(), Error> {
        let user = creds.username.as_bytes();
        let pass = creds.password.expose().as_slice();
        let non_sync = self.has_capability("LITERAL+")
            || (self.has_capability("LITERAL-") && user.len() <= 4096 && pass.len() <= 4096);
        out.extend(b" LOGIN ");
        if non_sync {
            out.extend(format!("{{{}+}}\r\n", user.len()).as_bytes());
            out.extend(user);
            out.extend(format!(" {{{}+}}\r\n", pass.len()).as_bytes());
            out.extend(pass);
            out.extend(b"\r\n");
            self.write_all(out.as_slice()).await?;
            drop(out);
            self.skip_id_answer(id_tag).await?;
        } else {
            out.extend(format!("{{{}}}\r\n", user.len()).as_bytes());
            self.write_all(out.as_slice()).await?;
            drop(out);
            self.skip_id_answer(id_tag).await?;
            self.expect_continuation().await?;
            let mut part = Vec::with_capacity(user.len() + 24);
            part.extend_from_slice(user);
            part.extend_from_slice(format!(" {{{}}}\r\n", pass.len()).as_bytes());
            self.write_all(&part).await?;
            self.expect_continuation().await?;
            let mut last = SecretBuf::with_capacity(pass.len() + 2);
            last.extend(pass);
            last.extend(b"\r\n");
            self.write_all(last.as_slice()).await?;
        }
        let resp = self.read_response(login_tag).await?;
        self.finish_login(resp).await
    }

    /// Appends an `ID` command with `fields` when there are any and the backend has `ID`;
    /// returns its tag.
    pub(super) fn push_id(
        &mut self,
        out: &mut SecretBuf,
        id_fields: &[(String, String)],
    ) -> Option<String> {
        if id_fields.is_empty() || !self.has_capability("ID") {
            return None;
        }
        let tag = self.tag();
        out.extend(tag.as_bytes());
        out.extend(b" ID (");
        for (i, (k, v)) in id_fields.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            push_quoted(out, k.as_bytes());
            out.push(b' ');
            push_quoted(out, v.as_bytes());
        }
        out.extend(b")\r\n");
        Some(tag)
    }

    /// Reads the answer to the `ID` sent with a login, if one was: it carries the backend's
    /// name, which nobody needs.
    pub(super) async fn skip_id_answer(&mut self, id_tag: Option<String>) -> Result<(), Error> {
        if let Some(tag) = id_tag {
            self.read_response(&tag).await?;
        }
        Ok(())
    }

    async fn expect_continuation(&mut self) -> Result<(), Error> {
        let msg = self.read_message().await?;
        if msg.starts_with(b"+") {
            Ok(())
        } else {
            Err(Error::AuthFailed {
                code: response_code(&msg),
            })
        }
    }

    /// Judges the tagged answer to a login; on `OK` takes the post-login capabilities from its
    /// `[CAPABILITY ...]` code or asks for them.
    pub(super) async fn finish_login(&mut self, resp: Response) -> Result<(), Error> {
        if !resp.is_ok() {
            return Err(Error::AuthFailed { code: resp.code() });
        }
        match Capabilities::from_line(&resp.tagged) {
            Some(caps) => self.capabilities = caps,
            // Boxed: Dovecot and most servers send them with the OK, and inline this rare
            // exchange would size the future of every login waiting on its server.
            None => Box::pin(self.refresh_capabilities()).await?,
        }
        Ok(())
    }
}

/// Bytes an `ID` command with `fields` takes at most (every byte escaped).
fn id_len(fields: &[(String, String)]) -> usize {
    fields
        .iter()
        .map(|(k, v)| 2 * (k.len() + v.len()) + 6)
        .sum::<usize>()
        + COMMAND_OVERHEAD
}

/// Whether `s` can be sent as an IMAP quoted string (RFC 9051 §4.3: no CR, LF or NUL; 7-bit).
fn quotable(s: &[u8]) -> bool {
    s.len() <= 1024
        && s.iter()
            .all(|b| *b != 0 && *b != b'\r' && *b != b'\n' && *b < 0x80)
}

/// Appends `s` as a quoted string; callers check [`quotable`] first.
fn push_quoted(out: &mut SecretBuf, s: &[u8]) {
    out.push(b'"');
    for b in s {
        if *b == b'"' || *b == b'\\' {
            out.push(b'\\');
        }
        out.push(*b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_and_refuses_controls() {
        let mut out = SecretBuf::with_capacity(0);
        push_quoted(&mut out, br#"a"b\c"#);
        assert_eq!(out.as_slice(), br#""a\"b\\c""#);
        assert!(quotable(b"pass word"));
        assert!(!quotable(b"a\r\nb"));
        assert!(!quotable("pässword".as_bytes()));
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials {
            username: "alice".into(),
            password: Secret::new(b"hunter2".to_vec()),
        };
        let dbg = format!("{c:?}");
        assert!(dbg.contains("alice") && !dbg.contains("hunter2"), "{dbg}");
    }
}
