//! Moving a logged-in session to another backend connection while its client stays connected
//! (DESIGN.md "Live sessions: re-homing").
//!
//! Steps, each bounded by `rehome_timeout`: log in on the target with the kept credentials;
//! replay `ENABLE` (or switch CONDSTORE on when an argument did); `SELECT`/`EXAMINE` the
//! client's mailbox and check that UIDVALIDITY is the same and that the client's message
//! sequence numbers still hold (see [`Mailbox::numbering_holds`]), telling the client of new
//! messages with `* n EXISTS`; then send again the commands in flight that are safe to repeat
//! and whose answer had not begun, answer the others `NO [UNAVAILABLE]`, and re-enter `IDLE`
//! for a client that was in it (its new `+` is not relayed). Whatever cannot be proven ends the
//! session with `BYE [UNAVAILABLE]`, never with wrong data.
//!
//! [`Mailbox::numbering_holds`]: crate::state::Mailbox::numbering_holds

use std::time::Instant;

use imapproxy_codec::response;
use imapproxy_pool::BackendConn;

use super::*;
use crate::registry::MigrationCause;
use crate::relay::Link;

/// Why a session moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// Its backend connection failed (reset, end of stream, unsolicited `BYE`).
    Failure,
    /// Its backend is drained with migration.
    Drain,
    /// Its user was moved to another backend.
    Move,
    /// It parked (gave its backend session to a waiting client of its user) and its client
    /// sent a command.
    Unpark,
}

impl From<MigrationCause> for Cause {
    fn from(c: MigrationCause) -> Self {
        match c {
            MigrationCause::Move => Self::Move,
            _ => Self::Drain,
        }
    }
}

impl Cause {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Failure => "backend_failure",
            Self::Drain => "drain",
            Self::Move => "move",
            Self::Unpark => "unpark",
        }
    }
}

/// Where a logged-in session lives now, and what it needs to move.
pub(super) struct Homed {
    pub(super) session: Option<PooledSession>,
    pub(super) backend: BackendId,
    pub(super) user_key: Arc<str>,
    pub(super) creds: Option<KeptCredentials>,
    pub(super) guard: Option<SessionGuard>,
}

/// The client's credentials, kept (zeroed when dropped) so that the session can log in on
/// another backend when it moves: the name and the password in one allocation, rather than
/// a [`Credentials`]' two strings (24 bytes more in every logged-in session, and an
/// allocation more).
pub(super) struct KeptCredentials {
    /// The name's bytes, then the password's.
    bytes: Secret<Box<[u8]>>,
    user_len: usize,
}

impl KeptCredentials {
    pub(super) fn keep(creds: &Credentials) -> Self {
        let user = creds.username.as_bytes();
        let password = creds.password.expose();
        // Exactly this long: the boxed slice is this buffer, with no copy left behind.
        let mut bytes = Vec::with_capacity(user.len() + password.len());
        bytes.extend_from_slice(user);
        bytes.extend_from_slice(password);
        Self {
            bytes: Secret::new(bytes.into_boxed_slice()),
            user_len: user.len(),
        }
    }

    /// The credentials again, for a login elsewhere.
    pub(super) fn credentials(&self) -> Credentials {
        let (user, password) = self
            .bytes
            .expose()
            .split_at(self.user_len.min(self.bytes.expose().len()));
        Credentials {
            // Kept from a `String`: valid UTF-8.
            username: String::from_utf8_lossy(user).into_owned(),
            password: Secret::new(password.to_vec()),
        }
    }
}

/// What a new connection said about the client's mailbox.
#[derive(Default)]
struct Selected {
    exists: Option<u32>,
    uidvalidity: Option<u32>,
    uidnext: Option<u32>,
    highest_modseq: Option<u64>,
}

impl Selected {
    fn read(untagged: &[Vec<u8>]) -> Self {
        let mut s = Self::default();
        for line in untagged {
            if let Some((n, kw)) = response::numbered(line) {
                if kw.eq_ignore_ascii_case(b"EXISTS") {
                    s.exists = u32::try_from(n).ok();
                }
            } else if let Some(code) = response::code(line) {
                if code.is("UIDVALIDITY") {
                    s.uidvalidity = code.number().and_then(|n| u32::try_from(n).ok());
                } else if code.is("UIDNEXT") {
                    s.uidnext = code.number().and_then(|n| u32::try_from(n).ok());
                } else if code.is("HIGHESTMODSEQ") {
                    s.highest_modseq = code.number();
                }
            }
        }
        s
    }
}

impl Session {
    /// Moves the session in `homed` to another backend connection, replaying `link`'s state.
    /// Returns the bytes the new connection already read past the last exchange (they belong
    /// to the relay), or why the session cannot move (a metrics label).
    pub(super) async fn rehome(
        &mut self,
        link: &mut Link,
        homed: &mut Homed,
        cause: Cause,
    ) -> Result<Vec<u8>, &'static str> {
        let started = Instant::now();
        let proxy = Arc::clone(&self.proxy);
        let result = match tokio::time::timeout(
            proxy.settings.rehome_timeout,
            self.rehome_steps(link, homed, cause),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err("timeout"),
        };
        match &result {
            Ok(_) => {
                let pause = started.elapsed();
                info!(
                    cause = cause.as_str(),
                    backend = %homed.backend,
                    pause_ms = pause.as_millis() as u64,
                    "session moved"
                );
                tracing::Span::current().record("backend", tracing::field::display(&homed.backend));
                metrics::counter!("imapproxy_rehomes_total", "cause" => cause.as_str())
                    .increment(1);
                metrics::histogram!("imapproxy_rehome_pause_seconds").record(pause.as_secs_f64());
            }
            Err(reason) => {
                metrics::counter!("imapproxy_rehome_failures_total", "reason" => *reason)
                    .increment(1);
            }
        }
        result
    }

    async fn rehome_steps(
        &mut self,
        link: &mut Link,
        homed: &mut Homed,
        cause: Cause,
    ) -> Result<Vec<u8>, &'static str> {
        if let Some(reason) = link.state().replay_refusal() {
            return Err(reason);
        }
        let Some(creds) = homed.creds.as_ref().map(KeptCredentials::credentials) else {
            // A relayed SASL exchange (XOAUTH2, SCRAM) cannot be run again by the proxy.
            return Err("sasl_not_replayable");
        };
        let proxy = Arc::clone(&self.proxy);
        let _permit = proxy.rehomes.acquire().await.map_err(|_| "shutting_down")?;
        let upstreams = proxy.upstreams();
        let candidates = self.rehome_candidates(&upstreams, homed, cause);
        if candidates.is_empty() {
            return Err("no_backend");
        }
        // The old connection goes first: its slot of the user's max_per_user is the new one's.
        if let Some(old) = homed.session.take() {
            Box::pin(proxy.pool.checkin(old, Disposition::Close)).await;
        }
        homed.guard = None;
        if cause == Cause::Failure {
            if let Some(health) = &upstreams.health {
                health.report_failure(&homed.backend, "logged-in session lost");
            }
        }
        let id_fields = self.backend_id_fields();
        let client = self.client_addrs();
        let mut found = None;
        // Two rounds: after a failover every moving session logs in on the survivors at once,
        // and one that times out in that burst (a greeting or login slower than its bound)
        // tries again rather than ending; `rehome_timeout` bounds both rounds.
        'rounds: for _ in 0..2 {
            for backend_id in candidates.iter().take(proxy.settings.max_backend_attempts) {
                match proxy
                    .pool
                    .checkout_for(backend_id.as_str(), &creds, &id_fields, client)
                    .await
                {
                    Ok(session) => {
                        found = Some((backend_id.clone(), session));
                        break 'rounds;
                    }
                    Err(PoolError::PoolTimeout) => return Err("user_limit"),
                    Err(e) if !e.is_retryable() => return Err("login_refused"),
                    Err(e) => login::backend_failed(&upstreams, backend_id, &e),
                }
            }
        }
        let Some((backend_id, mut session)) = found else {
            return Err("no_backend");
        };
        let mut to_client = Vec::new();
        let swallow = replay(session.conn(), link, &mut to_client).await?;
        if !to_client.is_empty() {
            self.write(&to_client).await.map_err(|_| "client_gone")?;
        }
        let leftover = session.conn().take_buffered();
        homed.guard = upstreams
            .registry
            .state(&backend_id)
            .map(|s| s.session_started());
        homed.backend = backend_id;
        homed.session = Some(session);
        link.resume(swallow);
        Ok(leftover)
    }

    /// Where the session may go: the operator's override first (when that backend is up),
    /// then the strategy's healthy candidates; never back to a failed or drained backend.
    fn rehome_candidates(
        &self,
        upstreams: &Upstreams,
        homed: &Homed,
        cause: Cause,
    ) -> Vec<BackendId> {
        let request = Request {
            user: &homed.user_key,
            client_ip: Some(self.peer.ip()),
            client_id: &self.client_id,
        };
        let mut list = Vec::new();
        let up = |id: &BackendId| {
            upstreams
                .registry
                .state(id)
                .is_some_and(|s| s.health() == Health::Up)
        };
        // A parked session goes back where its mailbox is, unless an operator moved it.
        if cause == Cause::Unpark
            && self.proxy.overrides.get(&homed.user_key).is_none()
            && up(&homed.backend)
        {
            list.push(homed.backend.clone());
        }
        if let Some(id) = self.proxy.overrides.get(&homed.user_key).filter(up) {
            list.push(id);
        }
        for c in upstreams.selector.select(&upstreams.registry, &request) {
            if !list.contains(&c) {
                list.push(c);
            }
        }
        if matches!(cause, Cause::Failure | Cause::Drain) {
            list.retain(|id| *id != homed.backend);
        }
        list
    }
}

/// Replays `link`'s state on `conn` (logged in): extensions, the selected mailbox, the
/// commands in flight. Lines for the client go to `to_client`. Returns whether the relay must
/// drop the new connection's first `+` (the client already has its IDLE continuation).
async fn replay(
    conn: &mut BackendConn,
    link: &mut Link,
    to_client: &mut Vec<u8>,
) -> Result<bool, &'static str> {
    let state = link.state_mut();
    let enabled: Vec<String> = state.enabled().iter().map(|e| e.to_string()).collect();
    if !enabled.is_empty() {
        let r = conn
            .command(&format!("ENABLE {}", enabled.join(" ")))
            .await
            .map_err(|_| "replay_failed")?;
        if !r.is_ok() {
            return Err("enable_refused");
        }
    } else if state.condstore() {
        if !conn.has_capability("CONDSTORE") {
            return Err("condstore_unavailable");
        }
        let r = conn
            .command("ENABLE CONDSTORE")
            .await
            .map_err(|_| "replay_failed")?;
        if !r.is_ok() {
            return Err("enable_refused");
        }
    }
    let in_flight = state.take_in_flight();
    // A SELECT in flight that is not sent again is answered NO: the client then believes no
    // mailbox is selected (RFC 9051 §6.3.2), so none is selected again.
    if in_flight.iter().any(|c| c.select && c.replay.is_none()) {
        state.deselected();
    }
    if let Some(mailbox) = state.selected().cloned() {
        let Some(name) = mailbox.name.as_deref() else {
            return Err("mailbox_name_unknown");
        };
        let mut cmd: Vec<u8> = if mailbox.read_only {
            b"EXAMINE ".to_vec()
        } else {
            b"SELECT ".to_vec()
        };
        cmd.extend_from_slice(name);
        let r = conn
            .command_bytes(&cmd)
            .await
            .map_err(|_| "replay_failed")?;
        if !r.is_ok() {
            return Err("select_refused");
        }
        let now = Selected::read(&r.untagged);
        let (Some(exists), Some(uidnext)) = (now.exists, now.uidnext) else {
            return Err("mailbox_unknown");
        };
        // RFC 9051 §2.3.1.1: other UIDs mean other messages; never show them as the same.
        if now.uidvalidity.is_none() || now.uidvalidity != mailbox.uidvalidity {
            return Err("uidvalidity_changed");
        }
        if !mailbox.numbering_holds(exists, uidnext) {
            return Err("expunges_unknown");
        }
        if Some(exists) != mailbox.exists {
            to_client.extend_from_slice(format!("* {exists} EXISTS\r\n").as_bytes());
        }
        state.reselected(exists, uidnext, now.highest_modseq);
    }
    let idle_continued = state.idle_continued();
    let idling = state.idling();
    let mut swallow = false;
    let mut resend = Vec::new();
    for cmd in in_flight {
        if cmd.idle {
            let mut line = cmd.tag.as_bytes().to_vec();
            line.extend_from_slice(b" IDLE\r\n");
            if idling && idle_continued {
                // The client waits in IDLE: a new IDLE under its tag, whose `+` it must not
                // see a second time.
                resend.extend_from_slice(&line);
                swallow = true;
            } else if idling {
                // The `+` had not come yet: the new one is the client's.
                resend.extend_from_slice(&line);
            } else {
                // The client already said DONE: finish the new IDLE the same way; its tagged
                // answer goes to the client.
                conn.send_raw(&resend).await.map_err(|_| "replay_failed")?;
                resend.clear();
                conn.send_raw(&line).await.map_err(|_| "replay_failed")?;
                conn.read_continuation().await.map_err(|_| "idle_refused")?;
                conn.send_raw(b"DONE\r\n")
                    .await
                    .map_err(|_| "replay_failed")?;
            }
            state.idle_resumed(cmd.tag);
            continue;
        }
        match cmd.replay {
            Some(bytes) => {
                resend.extend_from_slice(&bytes);
                state.resent(&bytes);
            }
            None => {
                to_client.extend_from_slice(cmd.tag.as_bytes());
                to_client.extend_from_slice(
                    b" NO [UNAVAILABLE] Server connection lost; the command may not have completed.\r\n",
                );
            }
        }
    }
    if !resend.is_empty() {
        conn.send_raw(&resend).await.map_err(|_| "replay_failed")?;
    }
    Ok(swallow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_credentials_give_back_the_name_and_password() {
        for (user, password) in [
            ("alice", &b"s3cret"[..]),
            ("", b""),
            ("Bj\u{f6}rn", b"p w\xff"),
        ] {
            let creds = Credentials {
                username: user.to_owned(),
                password: Secret::new(password.to_vec()),
            };
            let kept = KeptCredentials::keep(&creds);
            let back = kept.credentials();
            assert_eq!(back.username, user);
            assert_eq!(back.password.expose().as_slice(), password);
            assert_eq!(format!("{:?}", kept.bytes), "Secret(..)");
        }
    }
}
