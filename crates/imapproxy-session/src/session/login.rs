//! Logging in on a backend: throttling, routing, the pool, SASL pass-through.

use super::*;

use std::time::Duration;

use imapproxy_route::{Error as RouteError, LookupContext};

/// Longest `Auth-Wait` honoured from an auth service before answering a denied login.
const MAX_DIRECTORY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Session {
    /// The `ID` fields sent to the backend: where the client really is (Dovecot honours these
    /// from `login_trusted_networks`), then the client's own fields. Client fields named `x-*`
    /// are dropped so that nobody can claim another address.
    pub(super) fn backend_id_fields(&self) -> Vec<(String, String)> {
        let mut fields = vec![
            ("x-originating-ip".to_owned(), self.peer.ip().to_string()),
            (
                "x-originating-port".to_owned(),
                self.peer.port().to_string(),
            ),
        ];
        if let Some(local) = self.local {
            fields.push(("x-connected-ip".to_owned(), local.ip().to_string()));
            fields.push(("x-connected-port".to_owned(), local.port().to_string()));
        }
        fields.push((
            "x-session-ext-id".to_owned(),
            format!("imapproxy-{}", self.id),
        ));
        for (k, v) in &self.client_id {
            let Some(v) = v else { continue };
            let key_ok = !k.is_empty()
                && k.len() <= 30
                && !k.to_ascii_lowercase().starts_with("x-")
                && k.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
            // RFC 2971 §3.3: values of at most 1024 octets, as sent (quotes escaped).
            let escaped = v.len() + v.bytes().filter(|b| matches!(b, b'"' | b'\\')).count();
            let val_ok = escaped <= 1024 && v.bytes().all(|b| (0x20..0x7f).contains(&b));
            if key_ok && val_ok {
                fields.push((k.clone(), v.clone()));
            }
        }
        fields
    }

    /// Logs in on a backend chosen by the selector, through the pool (a cached session of
    /// the same user and password needs no backend round trip), falling through to the next
    /// candidate when one cannot be reached. The client sees `OK`,
    /// `NO [AUTHENTICATIONFAILED]` or `NO [UNAVAILABLE]`, never a backend's own words.
    pub(super) async fn login(
        &mut self,
        parser: &mut PreAuthParser,
        tag: &Tag,
        creds: Credentials,
    ) -> Result<Next, Error> {
        self.pre().login_started = Some(std::time::Instant::now());
        if creds.username.is_empty()
            || creds.username.len() > MAX_USERNAME
            || creds.username.bytes().any(|b| b.is_ascii_control())
        {
            self.auth_failed(tag).await?;
            return Ok(Next::Continue);
        }
        let user_key = creds.username.to_lowercase();
        tracing::Span::current().record("user", user_key.as_str());
        // Before any backend work: a blocked attempt never reaches a backend, and one over
        // the budget of attempts in flight waits for its turn.
        let attempt = match self
            .proxy
            .throttle
            .admit(self.peer.ip(), &user_key, Some(creds.password.expose()))
            .await
        {
            Ok(attempt) => attempt,
            Err(verdict) => return self.throttled(tag, verdict).await,
        };
        let upstreams = self.proxy.upstreams();
        let Some(candidates) = self.candidates(tag, &user_key, Some(&creds)).await? else {
            return Ok(Next::Continue);
        };
        let id_fields = self.backend_id_fields();
        let client = self.client_addrs();
        // A backend that failed after the credentials went out may have checked them.
        let mut exposed = false;
        for backend_id in candidates
            .iter()
            .take(self.proxy.settings.max_backend_attempts)
        {
            match self
                .proxy
                .pool
                .checkout_for(backend_id.as_str(), &creds, &id_fields, client)
                .await
            {
                Ok(session) => {
                    attempt.succeeded(Some(creds.password.expose()));
                    return self
                        .logged_in(parser, tag, session, backend_id, &user_key, Some(creds))
                        .await;
                }
                Err(PoolError::PoolTimeout) => {
                    return self.over_user_limit(tag, Some(attempt)).await;
                }
                Err(e) if !e.is_retryable() => {
                    return self
                        .login_failed(tag, Some(attempt), Some(creds.password.expose()))
                        .await;
                }
                Err(e) => {
                    exposed |= may_have_checked_credentials(&e);
                    backend_failed(&upstreams, backend_id, &e);
                }
            }
        }
        warn!("no backend available");
        self.unavailable_after(tag, Some(attempt), exposed).await
    }

    /// Relays a SASL exchange the proxy cannot verify (XOAUTH2, OAUTHBEARER, SCRAM-*) to a
    /// backend chosen for the user named in the client's first message. Throttling applies
    /// as for `LOGIN`; the client sees the backend's challenges but never its final words:
    /// `OK` with the post-login capabilities, or `NO [AUTHENTICATIONFAILED]`.
    pub(super) async fn sasl_passthrough(
        &mut self,
        parser: &mut PreAuthParser,
        tag: &Tag,
        mechanism: &str,
        initial_response: Option<Secret<Vec<u8>>>,
    ) -> Result<Next, Error> {
        self.pre().login_started = Some(std::time::Instant::now());
        let first = match initial_response {
            Some(ir) => ir,
            None => match self.auth_step(parser, b"+ \r\n").await? {
                Some(d) => d,
                None => {
                    self.auth_cancelled(tag).await?;
                    return Ok(Next::Continue);
                }
            },
        };
        let username = match sasl::username(mechanism, first.expose()) {
            Some(u)
                if !u.is_empty()
                    && u.len() <= MAX_USERNAME
                    && !u.bytes().any(|b| b.is_ascii_control()) =>
            {
                u
            }
            _ => {
                self.auth_failed(tag).await?;
                return Ok(Next::Continue);
            }
        };
        let user_key = username.to_lowercase();
        tracing::Span::current().record("user", user_key.as_str());
        // As for LOGIN; the proxy cannot read these credentials, so they are never proven.
        let mut attempt = Some(
            match self
                .proxy
                .throttle
                .admit(self.peer.ip(), &user_key, None)
                .await
            {
                Ok(attempt) => attempt,
                Err(verdict) => return self.throttled(tag, verdict).await,
            },
        );
        let upstreams = self.proxy.upstreams();
        let Some(candidates) = self.candidates(tag, &user_key, None).await? else {
            return Ok(Next::Continue);
        };
        let id_fields = self.backend_id_fields();
        let client = self.client_addrs();
        let mut exposed = false;
        for backend_id in candidates
            .iter()
            .take(self.proxy.settings.max_backend_attempts)
        {
            // Until the client has seen a challenge, a backend that cannot be reached is
            // replaced by the next candidate, as for LOGIN.
            let started = match self
                .proxy
                .pool
                .checkout_sasl(backend_id.as_str(), &username, client)
                .await
            {
                Ok(mut login) => match login
                    .start(mechanism, Some(first.expose()), &id_fields)
                    .await
                {
                    Ok(step) => Ok((login, step)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let (mut login, mut step) = match started {
                Ok(started) => started,
                Err(PoolError::PoolTimeout) => {
                    return self.over_user_limit(tag, attempt.take()).await;
                }
                Err(e) if !e.is_retryable() => {
                    return self.login_failed(tag, attempt.take(), None).await;
                }
                Err(e) => {
                    exposed |= may_have_checked_credentials(&e);
                    backend_failed(&upstreams, backend_id, &e);
                    continue;
                }
            };
            loop {
                let challenge = match step {
                    SaslStep::Done => {
                        if let Some(attempt) = attempt.take() {
                            attempt.succeeded(None);
                        }
                        let session = login.into_session();
                        return self
                            .logged_in(parser, tag, session, backend_id, &user_key, None)
                            .await;
                    }
                    SaslStep::Challenge(c) => c,
                    _ => return Err(Error::Protocol("unexpected SASL step")),
                };
                // The challenge is the backend's base64 text; anything but base64 characters
                // would let a backend inject lines into the client's stream.
                if !challenge
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
                {
                    warn!(backend = %backend_id, "invalid SASL challenge from backend");
                    return self.unavailable(tag).await;
                }
                let mut prompt = Vec::with_capacity(challenge.len() + 4);
                prompt.extend_from_slice(b"+ ");
                prompt.extend_from_slice(&challenge);
                prompt.extend_from_slice(b"\r\n");
                let Some(answer) = self.auth_step(parser, &prompt).await? else {
                    // RFC 9051 §6.2.2: the client's `*` cancels; the backend is told too (its
                    // connection is then dropped with the login).
                    let _ = login.cancel().await;
                    self.auth_cancelled(tag).await?;
                    return Ok(Next::Continue);
                };
                step = match login.respond(answer.expose()).await {
                    Ok(step) => step,
                    Err(e) if !e.is_retryable() => {
                        return self.login_failed(tag, attempt.take(), None).await;
                    }
                    Err(e) => {
                        warn!(backend = %backend_id, error = %e, "backend failed during SASL");
                        let exposed = may_have_checked_credentials(&e);
                        return self.unavailable_after(tag, attempt.take(), exposed).await;
                    }
                };
            }
        }
        warn!("no backend available");
        self.unavailable_after(tag, attempt.take(), exposed).await
    }

    /// The backend refused the credentials (a password, or a relayed SASL exchange): counted
    /// by the throttle, answered after its delay.
    pub(super) async fn login_failed(
        &mut self,
        tag: &Tag,
        attempt: Option<Attempt>,
        password: Option<&[u8]>,
    ) -> Result<Next, Error> {
        info!("authentication failed");
        let delay = attempt.map_or(Duration::ZERO, |a| a.failed(password));
        tokio::time::sleep(delay).await;
        self.auth_failed(tag).await?;
        Ok(Next::Continue)
    }

    /// All of the user's backend sessions stayed busy for `wait_timeout`. An attempt whose
    /// password is not proven counts as a failure: a guesser that cannot get a slot has
    /// still spent a guess.
    pub(super) async fn over_user_limit(
        &mut self,
        tag: &Tag,
        attempt: Option<Attempt>,
    ) -> Result<Next, Error> {
        // Expected under bursts; counted by the pool, not worth a warning each.
        info!("all of the user's backend sessions stayed busy");
        if let Some(attempt) = attempt.filter(|a| !a.proven()) {
            tokio::time::sleep(attempt.failed(None)).await;
        }
        // RFC 5530 [LIMIT], as Dovecot answers when its per-user cap is hit.
        count_login("limit");
        self.tagged(
            tag,
            "NO [LIMIT] Too many sessions for this user, try again later.",
        )
        .await?;
        Ok(Next::Continue)
    }

    /// For backends that take a PROXY header: the client, and where it connected.
    pub(super) fn client_addrs(&self) -> Option<ClientAddrs> {
        self.local.map(|destination| ClientAddrs {
            source: self.peer,
            destination,
        })
    }

    /// No backend could take the login. When one failed after the credentials went out
    /// (`exposed`), it may have checked them: an unproven attempt then counts as a failure,
    /// or a guesser could try passwords through a backend that times out or drops the
    /// connection after checking them.
    pub(super) async fn unavailable_after(
        &mut self,
        tag: &Tag,
        attempt: Option<Attempt>,
        exposed: bool,
    ) -> Result<Next, Error> {
        if let Some(attempt) = attempt.filter(|a| exposed && !a.proven()) {
            tokio::time::sleep(attempt.failed(None)).await;
        }
        self.unavailable(tag).await
    }

    /// No backend could take the login.
    pub(super) async fn unavailable(&mut self, tag: &Tag) -> Result<Next, Error> {
        count_login("unavailable");
        self.tagged(
            tag,
            "NO [UNAVAILABLE] Service temporarily unavailable, try again later.",
        )
        .await?;
        Ok(Next::Continue)
    }

    /// The backends to try for `user_key`: the directory's answer first, then the strategy's
    /// (healthy ones only). `None` when the client was told the directory is unavailable.
    ///
    /// Where only the strategy decides, a backend holding an idle cached session of this user
    /// with these credentials goes first (pool affinity): the strategy's choice among
    /// equivalent backends is worth less than a login without a backend round trip.
    pub(super) async fn candidates(
        &mut self,
        tag: &Tag,
        user_key: &str,
        creds: Option<&Credentials>,
    ) -> Result<Option<Vec<BackendId>>, Error> {
        let password = creds.map(|c| c.password.expose().as_slice());
        let login_attempts = {
            let pre = self.pre();
            pre.login_attempts += 1;
            pre.login_attempts
        };
        let upstreams = self.proxy.upstreams();
        let candidates: Vec<BackendId> = {
            let request = Request {
                user: user_key,
                client_ip: Some(self.peer.ip()),
                client_id: &self.client_id,
            };
            let overridden = self.proxy.overrides.get(user_key).filter(|id| {
                upstreams
                    .registry
                    .state(id)
                    .is_some_and(|s| s.health() == Health::Up)
            });
            match (&upstreams.directory, overridden) {
                // An operator moved the user: that backend first, the strategy's candidates
                // as fallback; the directory is not asked (its answer is what was overridden).
                (_, Some(id)) => {
                    let mut list = vec![id];
                    for c in upstreams.selector.select(&upstreams.registry, &request) {
                        if !list.contains(&c) {
                            list.push(c);
                        }
                    }
                    list
                }
                // The directory says where the mailbox is; the strategy's candidates follow
                // as fallback (only healthy backends either way).
                (Some(directory), None) => match directory
                    .lookup_with(&{
                        let ctx = LookupContext::new(user_key)
                            .with_client_ip(self.peer.ip())
                            .with_login_attempt(login_attempts);
                        match password {
                            Some(p) => ctx.with_password(p),
                            None => ctx,
                        }
                    })
                    .await
                {
                    Ok(route) => route_first(
                        route.as_ref(),
                        &upstreams.registry,
                        upstreams.selector.select(&upstreams.registry, &request),
                    ),
                    // An nginx-style auth service refused the login: an ordinary failure to
                    // the client (its text is not shown), after the wait it asked for.
                    Err(RouteError::Denied { wait, .. }) => {
                        info!("login denied by the user directory");
                        let delay = self.proxy.throttle.record_failure(self.peer.ip(), user_key);
                        let wait = wait.unwrap_or_default().min(MAX_DIRECTORY_WAIT);
                        tokio::time::sleep(delay.max(wait)).await;
                        self.auth_failed(tag).await?;
                        return Ok(None);
                    }
                    Err(e) => {
                        warn!(error = %e, "user directory unavailable");
                        self.unavailable(tag).await?;
                        return Ok(None);
                    }
                },
                (None, None) => {
                    let mut list = upstreams.selector.select(&upstreams.registry, &request);
                    if let Some(creds) = creds {
                        self.prefer_cached(&mut list, creds);
                    }
                    list
                }
            }
        };
        Ok(Some(candidates))
    }

    /// Moves to the front the most recently used of `list`'s backends that holds an idle
    /// cached session for `creds` and is up (not down, not draining).
    fn prefer_cached(&self, list: &mut [BackendId], creds: &Credentials) {
        if !self.proxy.pool.settings().reuse {
            return;
        }
        let registry = &self.proxy.upstreams().registry;
        let holding = self.proxy.pool.backends_with_idle(creds);
        let preferred = holding.iter().find_map(|name| {
            list.iter().position(|id| {
                id.as_str() == name.as_str()
                    && registry.state(id).is_some_and(|s| s.health() == Health::Up)
            })
        });
        if let Some(i) = preferred {
            list[..=i].rotate_right(1);
        }
    }

    /// Tells the client it is logged in on `backend_id` (post-login capabilities, filtered)
    /// and hands the session to the relay.
    pub(super) async fn logged_in(
        &mut self,
        parser: &mut PreAuthParser,
        tag: &Tag,
        session: PooledSession,
        backend_id: &BackendId,
        user_key: &str,
        creds: Option<Credentials>,
    ) -> Result<Next, Error> {
        let upstreams = self.proxy.upstreams();
        tracing::Span::current().record("backend", tracing::field::display(backend_id));
        let caps: Vec<&str> = session
            .conn_ref()
            .capabilities()
            .filter(|c| !(self.proxy.policy.drop_capability)(c.as_bytes()))
            .collect();
        let mut out = Vec::with_capacity(512);
        if session.reused() {
            // up-imapproxy's convention: webmail may skip re-initialising.
            out.extend_from_slice(b"* OK [XPROXYREUSE] Reusing a cached session.\r\n");
        }
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(
            format!(" OK [CAPABILITY {}] Logged in.\r\n", caps.join(" ")).as_bytes(),
        );
        self.write(&out).await?;
        info!(reused = session.reused(), "logged in");
        count_login(if session.reused() { "reused" } else { "ok" });
        if let Some(started) = self.pre.as_mut().and_then(|p| p.login_started.take()) {
            metrics::histogram!("imapproxy_login_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        // A fresh connection proves the backend reachable; a cached session
        // proves nothing about new connections.
        if let (Some(health), false) = (&upstreams.health, session.reused()) {
            health.report_success(backend_id);
        }
        // Counted while the client uses the backend: least-connections and
        // power-of-two-choices read it.
        let guard = upstreams
            .registry
            .state(backend_id)
            .map(|state| state.session_started());
        // The pool's key for the user, shared by the user's sessions, when it is the same.
        let user_key: Arc<str> = if **session.user() == *user_key {
            Arc::clone(session.user())
        } else {
            Arc::from(user_key)
        };
        let registration = self.proxy.sessions.register_until(
            self.id,
            Arc::clone(&user_key),
            self.peer,
            backend_id,
            Some(&self.shutdown),
        );
        Ok(Next::LoggedIn(Box::new(LoggedIn {
            session,
            backend: backend_id.clone(),
            user_key,
            creds,
            pipelined: parser.take_remaining(),
            _guard: guard,
            registration,
        })))
    }

    /// Answers an attempt the throttle refused, after the longest failure delay so that the
    /// timing tells nothing. A blocked user (from this address) sees an ordinary failure; a
    /// blocked address is told and disconnected (RFC 5530 `LIMIT`); an attempt that waited
    /// too long behind others in flight is told to come back (`NO [LIMIT]`).
    pub(super) async fn throttled(&mut self, tag: &Tag, verdict: Verdict) -> Result<Next, Error> {
        info!(blocked = ?verdict, "login throttled");
        count_login("throttled");
        if verdict == Verdict::Busy {
            self.tagged(
                tag,
                "NO [LIMIT] Too many logins for this user in progress, try again later.",
            )
            .await?;
            return Ok(Next::Continue);
        }
        tokio::time::sleep(self.proxy.throttle.settings().max_delay).await;
        if verdict == Verdict::UserBlocked {
            self.auth_failed(tag).await?;
            return Ok(Next::Continue);
        }
        self.write(b"* BYE [LIMIT] Too many failed logins, try again later.\r\n")
            .await?;
        Err(Error::Protocol("address blocked after failed logins"))
    }
}

/// Whether a backend that failed this way may have received and checked the credentials: it
/// refused them with a retryable code, or the connection broke or timed out once it was
/// open (the connector does not say at which step). Failures before a connection was ready
/// (connect, TLS, greeting, a full backend) are not.
fn may_have_checked_credentials(e: &PoolError) -> bool {
    match e {
        PoolError::AuthFailed { .. }
        | PoolError::Closed
        | PoolError::Bye { .. }
        | PoolError::Io(_)
        | PoolError::UnexpectedData { .. }
        | PoolError::MessageTooLarge { .. }
        | PoolError::UntaggedTooLarge { .. } => true,
        PoolError::Timeout { step, .. } => matches!(*step, "login" | "read" | "write"),
        _ => false,
    }
}

/// A backend failed before the client saw anything from it: logged, and, when it could not be
/// reached at all, reported to the health monitor (passive marking counts toward its `fall`
/// like a failed check; login answers and our own caps say nothing about its health).
pub(super) fn backend_failed(upstreams: &Upstreams, backend_id: &BackendId, e: &PoolError) {
    warn!(backend = %backend_id, error = %e, "backend login failed");
    if let Some(health) = &upstreams.health
        && unreachable(e)
    {
        health.report_failure(backend_id, &e.to_string());
    }
}
