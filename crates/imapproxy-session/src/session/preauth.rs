//! The pre-auth loop: the proxy answers every command itself until a login succeeds.

use super::*;

impl Session {
    /// Waits for the next pre-auth event, reading from the client as needed, bounded by the
    /// pre-auth timeout and cut short by shutdown.
    pub(super) async fn next_event(
        &mut self,
        parser: &mut PreAuthParser,
    ) -> Result<PreAuthEvent, Error> {
        // One deadline for the whole command: trickling a byte at a time does not extend it.
        let deadline = tokio::time::Instant::now() + self.proxy.settings.preauth_timeout;
        loop {
            if let Some(ev) = parser.next_event() {
                return Ok(ev);
            }
            // Read no more than the parser may buffer: pre-auth memory stays bounded.
            let want = parser.wanted().clamp(1, PREAUTH_READ);
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, read_into(&mut self.stream, parser, want)) => r,
                _ = self.shutdown.cancelled() => {
                    let _ = self.write(b"* BYE [UNAVAILABLE] Server shutting down.\r\n").await;
                    return Err(Error::Shutdown);
                }
            };
            match read {
                Ok(Ok(0)) => return Err(Error::ClientClosed),
                // A command split over two writes must not wait for our delayed ACK.
                Ok(Ok(_)) => self.stream.quickack(),
                Ok(Err(e)) => return Err(Error::Client(e)),
                Err(_) => {
                    let _ = self.write(b"* BYE Disconnected for inactivity.\r\n").await;
                    return Err(Error::Timeout);
                }
            }
        }
    }

    /// The pre-auth loop: answers everything itself until a backend login succeeds.
    pub(super) async fn preauth(&mut self) -> Result<Option<Box<LoggedIn>>, Error> {
        let mut parser = PreAuthParser::new(self.proxy.settings.preauth_limits);
        loop {
            match self.next_event(&mut parser).await? {
                PreAuthEvent::ContinuationNeeded => {
                    self.write(b"+ Ready for literal data\r\n").await?;
                }
                PreAuthEvent::Bad { tag, reason } => {
                    self.bad_command(tag.as_ref(), reason).await?;
                }
                PreAuthEvent::TooLarge { tag, fatal, id } => {
                    if fatal {
                        self.write(b"* BYE Command line too long.\r\n").await?;
                        return Err(Error::Protocol("command too large"));
                    }
                    match tag {
                        // RFC 2971: the fields are informational and servers take 30 values
                        // of 1,024 octets; the proxy answers as Dovecot does, without keeping
                        // fields it did not buffer.
                        Some(tag) if id => {
                            let reply = PROXY_ID.strip_suffix(b"\r\n").unwrap_or(PROXY_ID);
                            self.untagged_and_tagged(reply, &tag, "OK ID completed.")
                                .await?;
                        }
                        tag => {
                            self.bad_command(tag.as_ref(), "Command line too long.")
                                .await?;
                        }
                    }
                }
                PreAuthEvent::AuthData(_) => {
                    // Only produced in auth-data mode, which `authenticate` leaves before
                    // returning; a stray one is a client speaking out of turn.
                    self.bad_command(None, "Unexpected authentication data.")
                        .await?;
                }
                PreAuthEvent::Command { tag, command } => {
                    match self.command(&mut parser, tag, command).await? {
                        Next::Continue => {}
                        Next::LoggedIn(done) => return Ok(Some(done)),
                        Next::Logout => return Ok(None),
                    }
                }
                _ => self.bad_command(None, "Unexpected input.").await?,
            }
        }
    }

    pub(super) async fn bad_command(
        &mut self,
        tag: Option<&Tag>,
        reason: &str,
    ) -> Result<(), Error> {
        let bad_commands = {
            let pre = self.pre();
            pre.bad_commands += 1;
            pre.bad_commands
        };
        if bad_commands > self.proxy.settings.max_bad_commands {
            self.write(b"* BYE Too many invalid commands.\r\n").await?;
            return Err(Error::Protocol("too many invalid commands"));
        }
        let text = format!("BAD {reason}");
        match tag {
            Some(tag) => self.tagged(tag, &text).await,
            None => self.write(format!("* {text}\r\n").as_bytes()).await,
        }
    }

    /// Handles one pre-auth command. `Ok(Some(_))` means the client is logged in; `Err` ends the
    /// session (after an answer where one is due).
    pub(super) async fn command(
        &mut self,
        parser: &mut PreAuthParser,
        tag: Tag,
        command: PreAuthCommand,
    ) -> Result<Next, Error> {
        match command {
            PreAuthCommand::Capability => {
                let caps = format!("* CAPABILITY {}", self.capabilities());
                self.untagged_and_tagged(caps.as_bytes(), &tag, "OK Capability completed.")
                    .await?;
            }
            PreAuthCommand::Noop => self.tagged(&tag, "OK NOOP completed.").await?,
            PreAuthCommand::Logout => {
                self.untagged_and_tagged(b"* BYE Logging out.", &tag, "OK Logout completed.")
                    .await?;
                return Ok(Next::Logout);
            }
            PreAuthCommand::Id(fields) => {
                if let Some(fields) = fields {
                    self.client_id = fields.into_iter().take(MAX_ID_FIELDS).collect();
                }
                let id = PROXY_ID.strip_suffix(b"\r\n").unwrap_or(PROXY_ID);
                self.untagged_and_tagged(id, &tag, "OK ID completed.")
                    .await?;
            }
            PreAuthCommand::StartTls => {
                if self.listener.tls != TlsMode::StartTls || self.secure() {
                    self.bad_command(Some(&tag), "STARTTLS not available.")
                        .await?;
                } else {
                    self.tagged(&tag, "OK Begin TLS negotiation now.").await?;
                    // RFC 9051 §6.2.1: anything pipelined behind STARTTLS was sent in the
                    // clear and must not be executed after the handshake.
                    parser.clear();
                    Box::pin(self.start_tls()).await?;
                }
            }
            PreAuthCommand::Login { username, password } => {
                if self.login_disabled() {
                    self.tagged(
                        &tag,
                        "NO [PRIVACYREQUIRED] Plaintext authentication is disabled, use STARTTLS.",
                    )
                    .await?;
                } else {
                    let creds = Credentials { username, password };
                    return self.login(parser, &tag, creds).await;
                }
            }
            PreAuthCommand::Authenticate {
                mechanism,
                initial_response,
            } => {
                if self.login_disabled() {
                    self.tagged(
                        &tag,
                        "NO [PRIVACYREQUIRED] Plaintext authentication is disabled, use STARTTLS.",
                    )
                    .await?;
                    return Ok(Next::Continue);
                }
                if let Mechanism::Other(name) = &mechanism
                    && sasl::is_passthrough(name)
                    && self.proxy.pool.common_prelogin_mechanisms().contains(name)
                {
                    let name = name.clone();
                    return Box::pin(self.sasl_passthrough(parser, &tag, &name, initial_response))
                        .await;
                }
                let creds = self
                    .authenticate(parser, &tag, mechanism, initial_response)
                    .await?;
                if let Some(creds) = creds {
                    return self.login(parser, &tag, creds).await;
                }
            }
            _ => self.bad_command(Some(&tag), "Log in first.").await?,
        }
        Ok(Next::Continue)
    }

    /// Runs the SASL exchange for the mechanisms the proxy verifies itself. `Ok(None)` means
    /// the client was already answered (cancelled, malformed, unsupported).
    pub(super) async fn authenticate(
        &mut self,
        parser: &mut PreAuthParser,
        tag: &Tag,
        mechanism: Mechanism,
        initial_response: Option<Secret<Vec<u8>>>,
    ) -> Result<Option<Credentials>, Error> {
        match mechanism {
            Mechanism::Plain => {
                let data = match initial_response {
                    Some(ir) => ir,
                    None => match self.auth_step(parser, b"+ \r\n").await? {
                        Some(d) => d,
                        None => return self.auth_cancelled(tag).await,
                    },
                };
                match parse_sasl_plain(data.expose()) {
                    // RFC 4616: an authzid other than the authcid asks to act as someone else,
                    // which only the backend's master-user setup could grant.
                    Ok((Some(authz), authc, _)) if authz != authc => {
                        self.auth_failed(tag).await?;
                        Ok(None)
                    }
                    Ok((_, username, password)) => Ok(Some(Credentials { username, password })),
                    Err(_) => {
                        self.bad_command(Some(tag), "Invalid SASL PLAIN data.")
                            .await?;
                        Ok(None)
                    }
                }
            }
            Mechanism::Login => {
                // draft-murchison-sasl-login: the server prompts "Username:" and "Password:".
                let user = match initial_response {
                    Some(ir) => ir,
                    None => match self.auth_step(parser, b"+ VXNlcm5hbWU6\r\n").await? {
                        Some(d) => d,
                        None => return self.auth_cancelled(tag).await,
                    },
                };
                let Some(password) = self.auth_step(parser, b"+ UGFzc3dvcmQ6\r\n").await? else {
                    return self.auth_cancelled(tag).await;
                };
                match String::from_utf8(user.expose().clone()) {
                    Ok(username) => Ok(Some(Credentials { username, password })),
                    Err(_) => {
                        self.auth_failed(tag).await?;
                        Ok(None)
                    }
                }
            }
            _ => {
                self.tagged(tag, "NO Unsupported authentication mechanism.")
                    .await?;
                Ok(None)
            }
        }
    }

    /// Sends a continuation and waits for one line of SASL data; `None` when the client
    /// cancelled with `*` (RFC 9051 §6.2.2) or sent something unusable.
    pub(super) async fn auth_step(
        &mut self,
        parser: &mut PreAuthParser,
        prompt: &[u8],
    ) -> Result<Option<Secret<Vec<u8>>>, Error> {
        self.write(prompt).await?;
        parser.expect_auth_data(true);
        let ev = self.next_event(parser).await;
        parser.expect_auth_data(false);
        match ev? {
            PreAuthEvent::AuthData(AuthData::Data(d)) => Ok(Some(d)),
            PreAuthEvent::TooLarge { fatal: true, .. } => {
                self.write(b"* BYE Authentication data too long.\r\n")
                    .await?;
                Err(Error::Protocol("authentication data too large"))
            }
            _ => Ok(None),
        }
    }

    pub(super) async fn auth_cancelled(&mut self, tag: &Tag) -> Result<Option<Credentials>, Error> {
        self.tagged(tag, "BAD Authentication cancelled.").await?;
        Ok(None)
    }

    pub(super) async fn auth_failed(&mut self, tag: &Tag) -> Result<(), Error> {
        count_login("failed");
        self.tagged(tag, "NO [AUTHENTICATIONFAILED] Authentication failed.")
            .await
    }
}

/// Reads at most `want` bytes (up to [`PREAUTH_READ`]) from the client into `parser`.
///
/// The bytes pass through a stack buffer that lives only for one poll, so a session waiting
/// for its client or for a backend login keeps no read buffer of its own (1 KiB each, held
/// by every login of a burst), and no heap buffer of the session's own with a password in it
/// goes back to the allocator unzeroed (the parser's is zeroed when dropped; a TLS stream's
/// buffers are rustls's). Cancel-safe: nothing is kept between polls.
async fn read_into(
    stream: &mut ClientStream,
    parser: &mut PreAuthParser,
    want: usize,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        // Uninitialised: a poll that finds nothing to read costs no 4 KiB memset.
        let mut chunk = [const { std::mem::MaybeUninit::<u8>::uninit() }; PREAUTH_READ];
        let mut read = tokio::io::ReadBuf::uninit(&mut chunk[..want.min(PREAUTH_READ)]);
        std::task::ready!(tokio::io::AsyncRead::poll_read(
            std::pin::Pin::new(&mut *stream),
            cx,
            &mut read
        ))?;
        let n = read.filled().len();
        parser.push(read.filled());
        std::task::Poll::Ready(Ok(n))
    })
    .await
}
