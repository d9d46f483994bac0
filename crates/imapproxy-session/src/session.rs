//! One client session: greeting, pre-auth loop, backend login, relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use imapproxy_codec::capability::default_post_login_drop;
use imapproxy_codec::preauth::{
    AuthData, Mechanism, PreAuthCommand, PreAuthEvent, PreAuthParser, parse_sasl_plain,
};
use imapproxy_codec::{Secret, Tag};
use imapproxy_pool::{
    ClientAddrs, Credentials, Error as PoolError, PoolSettings, PooledSession, Reset, SaslStep,
    SessionPool,
};
use imapproxy_route::{BackendId, Request, SessionGuard, route_first};
use imapproxy_tls::TlsMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::error::Error;
use crate::limits::ConnectionLimits;
use crate::proxy_protocol;
use crate::relay::{Relay, RelayEnd, ResponsePolicy};
use crate::sasl;
use crate::settings::{ListenerSettings, SessionSettings, Upstreams};
use crate::stream::ClientStream;
use crate::throttle::{Throttle, Verdict};

/// The ID the proxy gives for itself, before and after login (RFC 2971). It names no backend.
const PROXY_ID: &[u8] = b"* ID (\"name\" \"imapproxy\")\r\n";
/// Read size before login: small, because pre-auth connections are the cheapest to open.
const PREAUTH_READ: usize = 4096;
/// Longest user name accepted; anything longer is an attack or a mistake.
const MAX_USERNAME: usize = 256;
/// RFC 2971 §3.3: at most 30 field-value pairs.
const MAX_ID_FIELDS: usize = 30;

/// State shared by every session of one proxy: settings and backends.
pub struct Proxy {
    settings: SessionSettings,
    upstreams: Arc<Upstreams>,
    policy: ResponsePolicy,
    pool: SessionPool,
    next_id: AtomicU64,
    throttle: Throttle,
    limits: Arc<ConnectionLimits>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("settings", &self.settings)
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy with these settings in front of these backends, pooling backend sessions as
    /// `pool` says. Spawn [`SessionPool::maintain`] on [`Proxy::pool`] to keep warm
    /// connections and expire idle sessions.
    pub fn new(
        settings: SessionSettings,
        upstreams: Upstreams,
        pool: PoolSettings,
    ) -> Result<Self, imapproxy_pool::Error> {
        let pool = SessionPool::new(pool)?;
        for (backend, _) in upstreams.registry.iter() {
            if let Some(target) = upstreams.targets.get(&backend.id) {
                pool.add_backend(
                    backend.id.as_str(),
                    target.clone(),
                    backend.max_connections as usize,
                );
            }
        }
        let extra: Vec<Vec<u8>> = settings
            .drop_capabilities
            .iter()
            .map(|c| c.to_ascii_uppercase().into_bytes())
            .collect();
        let drop_capability = Box::new(move |cap: &[u8]| {
            default_post_login_drop(cap)
                // The relay follows framing, which a compressed stream hides (RFC 4978).
                || (cap.len() >= 9 && cap[..9].eq_ignore_ascii_case(b"COMPRESS="))
                || extra.iter().any(|e| e.eq_ignore_ascii_case(cap))
        });
        let throttle = Throttle::new(settings.limits.throttle.clone());
        let limits = Arc::new(ConnectionLimits::new(settings.limits.connections.clone()));
        Ok(Self {
            settings,
            throttle,
            limits,
            upstreams: Arc::new(upstreams),
            policy: ResponsePolicy {
                drop_capability,
                id_reply: PROXY_ID.to_vec(),
            },
            pool,
            next_id: AtomicU64::new(1),
        })
    }

    /// The backend session pool.
    pub fn pool(&self) -> &SessionPool {
        &self.pool
    }

    /// The session settings.
    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// The backends.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Failed-login counters.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Connection counters.
    pub fn connection_limits(&self) -> &ConnectionLimits {
        &self.limits
    }
}

/// Serves one accepted client connection until it ends. Never panics on client or backend
/// input; errors are logged in the session's span and answered in IMAP terms.
///
/// On a listener named in [`SessionSettings::proxy_protocol`](crate::SessionSettings) the
/// connection must start with a PROXY v1/v2 header from a trusted peer; otherwise it is
/// dropped without a byte sent. The header's source address then stands for the client
/// everywhere: logs, the backend `ID` fields, routing, and an outbound PROXY header.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: Arc<ListenerSettings>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let id = proxy.next_id.fetch_add(1, Ordering::Relaxed);
    let mut peer = peer;
    let mut local = tcp.local_addr().ok();
    let pp = &proxy.settings.proxy_protocol;
    if local.is_some_and(|l| pp.expects_header(l)) {
        match Box::pin(proxy_protocol::accept_header(&mut tcp, peer, pp)).await {
            Ok(Some(addrs)) => {
                peer = addrs.source;
                local = Some(addrs.destination);
            }
            // LOCAL or UNKNOWN: the balancer's own connection; the TCP peer stands.
            Ok(None) => {}
            Err(e) => {
                info!(id, tcp_peer = %peer, error = %e, "connection dropped");
                return;
            }
        }
    }
    // Counted by the real client address (after a PROXY header), before any TLS work.
    let permit = match proxy.limits.try_acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(refusal) => {
            info!(id, client = %peer, limit = refusal.as_str(), "connection refused");
            // Best effort and never waiting: a flood must not hold tasks on full buffers.
            let _ = tcp.try_write(b"* BYE [LIMIT] Too many connections.\r\n");
            return;
        }
    };
    let span = info_span!(
        "session",
        id,
        client = %peer,
        user = tracing::field::Empty,
        backend = tracing::field::Empty
    );
    async move {
        let _permit = permit;
        // Small request/response exchanges: never let Nagle hold a reply back.
        let _ = tcp.set_nodelay(true);
        let mut session = Session {
            proxy,
            listener,
            stream: ClientStream::Plain(tcp),
            peer,
            local,
            id,
            shutdown,
            client_id: Vec::new(),
            bad_commands: 0,
        };
        match session.run().await {
            Ok(()) => debug!("session closed"),
            Err(Error::ClientClosed) => debug!("client closed the connection"),
            Err(e) => info!(error = %e, "session ended"),
        }
    }
    .instrument(span)
    .await
}

struct Session {
    proxy: Arc<Proxy>,
    listener: Arc<ListenerSettings>,
    stream: ClientStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    id: u64,
    shutdown: CancellationToken,
    client_id: Vec<(String, Option<String>)>,
    bad_commands: u32,
}

/// What the pre-auth loop does after a command.
enum Next {
    Continue,
    LoggedIn(Box<LoggedIn>),
    Logout,
}

/// A successful backend login, ready to relay.
struct LoggedIn {
    session: PooledSession,
    _guard: Option<SessionGuard>,
    /// Bytes the client pipelined behind its login command, for the backend.
    pipelined: Vec<u8>,
}

impl Session {
    async fn run(&mut self) -> Result<(), Error> {
        if self.listener.tls == TlsMode::Implicit {
            Box::pin(self.start_tls()).await?;
        }
        let greeting = format!(
            "* OK [CAPABILITY {}] {}\r\n",
            self.capabilities(),
            self.proxy.settings.greeting
        );
        self.write(greeting.as_bytes()).await?;
        // Boxed so that its state (parser, read buffer, backend login) is freed before the
        // relay starts instead of sizing the session task for its whole life: an idle
        // logged-in session then costs only what the relay holds.
        let Some(logged_in) = Box::pin(self.preauth()).await? else {
            return Ok(());
        };
        self.relay(logged_in).await
    }

    fn secure(&self) -> bool {
        self.stream.is_tls()
    }

    fn login_disabled(&self) -> bool {
        !self.secure() && !self.listener.allow_plaintext_auth
    }

    /// The proxy's own pre-auth capabilities: only what it can honour itself (DESIGN.md).
    fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 ID SASL-IR LITERAL-");
        if self.listener.tls == TlsMode::StartTls && !self.secure() {
            caps.push_str(" STARTTLS");
        }
        if self.login_disabled() {
            caps.push_str(" LOGINDISABLED");
        } else {
            caps.push_str(" AUTH=PLAIN AUTH=LOGIN");
            // Relayed mechanisms only when every backend known so far offers them.
            for mech in self.proxy.pool.common_prelogin_mechanisms() {
                if sasl::is_passthrough(&mech) {
                    caps.push_str(" AUTH=");
                    caps.push_str(&mech);
                }
            }
        }
        caps
    }

    async fn start_tls(&mut self) -> Result<(), Error> {
        let Some(tls) = self.listener.server_tls.clone() else {
            return Err(Error::Protocol("TLS listener without certificate"));
        };
        let ClientStream::Plain(tcp) = std::mem::replace(&mut self.stream, ClientStream::Detached)
        else {
            return Err(Error::Protocol("TLS already active"));
        };
        let stream = tls
            .accept(tcp, self.proxy.settings.tls_handshake_timeout)
            .await?;
        self.stream = ClientStream::Tls(Box::new(stream));
        Ok(())
    }

    /// Writes and flushes, bounded in time: a client that never reads must not pin the
    /// session (and its descriptors) forever.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let io = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.proxy.settings.preauth_timeout, io).await {
            Ok(r) => r.map_err(Error::Client),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// An untagged line and the tagged completion in one write: one packet, no Nagle stall.
    async fn untagged_and_tagged(
        &mut self,
        untagged: &[u8],
        tag: &Tag,
        text: &str,
    ) -> Result<(), Error> {
        let mut out = Vec::with_capacity(untagged.len() + tag.as_bytes().len() + text.len() + 5);
        out.extend_from_slice(untagged);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.write(&out).await
    }

    async fn tagged(&mut self, tag: &Tag, text: &str) -> Result<(), Error> {
        let mut line = Vec::with_capacity(tag.as_bytes().len() + text.len() + 3);
        line.extend_from_slice(tag.as_bytes());
        line.push(b' ');
        line.extend_from_slice(text.as_bytes());
        line.extend_from_slice(b"\r\n");
        self.write(&line).await
    }

    /// Waits for the next pre-auth event, reading from the client as needed, bounded by the
    /// pre-auth timeout and cut short by shutdown.
    async fn next_event(
        &mut self,
        parser: &mut PreAuthParser,
        buf: &mut [u8],
    ) -> Result<PreAuthEvent, Error> {
        // One deadline for the whole command: trickling a byte at a time does not extend it.
        let deadline = tokio::time::Instant::now() + self.proxy.settings.preauth_timeout;
        loop {
            if let Some(ev) = parser.next_event() {
                return Ok(ev);
            }
            // Read no more than the parser may buffer: pre-auth memory stays bounded.
            let want = parser.wanted().clamp(1, buf.len());
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.stream.read(&mut buf[..want])) => r,
                _ = self.shutdown.cancelled() => {
                    let _ = self.write(b"* BYE [UNAVAILABLE] Server shutting down.\r\n").await;
                    return Err(Error::Shutdown);
                }
            };
            let n = match read {
                Ok(Ok(0)) => return Err(Error::ClientClosed),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(Error::Client(e)),
                Err(_) => {
                    let _ = self.write(b"* BYE Disconnected for inactivity.\r\n").await;
                    return Err(Error::Timeout);
                }
            };
            parser.push(&buf[..n]);
        }
    }

    /// The pre-auth loop: answers everything itself until a backend login succeeds.
    async fn preauth(&mut self) -> Result<Option<LoggedIn>, Error> {
        let mut parser = PreAuthParser::new(self.proxy.settings.preauth_limits);
        let mut buf = vec![0u8; PREAUTH_READ];
        loop {
            match self.next_event(&mut parser, &mut buf).await? {
                PreAuthEvent::ContinuationNeeded => {
                    self.write(b"+ Ready for literal data\r\n").await?;
                }
                PreAuthEvent::Bad { tag, reason } => {
                    self.bad_command(tag.as_ref(), reason).await?;
                }
                PreAuthEvent::TooLarge { tag, fatal } => {
                    if fatal {
                        self.write(b"* BYE Command line too long.\r\n").await?;
                        return Err(Error::Protocol("command too large"));
                    }
                    self.bad_command(tag.as_ref(), "Command line too long.")
                        .await?;
                }
                PreAuthEvent::AuthData(_) => {
                    // Only produced in auth-data mode, which `authenticate` leaves before
                    // returning; a stray one is a client speaking out of turn.
                    self.bad_command(None, "Unexpected authentication data.")
                        .await?;
                }
                PreAuthEvent::Command { tag, command } => {
                    match self.command(&mut parser, &mut buf, tag, command).await? {
                        Next::Continue => {}
                        Next::LoggedIn(done) => return Ok(Some(*done)),
                        Next::Logout => return Ok(None),
                    }
                }
                _ => self.bad_command(None, "Unexpected input.").await?,
            }
        }
    }

    async fn bad_command(&mut self, tag: Option<&Tag>, reason: &str) -> Result<(), Error> {
        self.bad_commands += 1;
        if self.bad_commands > self.proxy.settings.max_bad_commands {
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
    async fn command(
        &mut self,
        parser: &mut PreAuthParser,
        buf: &mut [u8],
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
                    return Box::pin(self.sasl_passthrough(
                        parser,
                        buf,
                        &tag,
                        &name,
                        initial_response,
                    ))
                    .await;
                }
                let creds = self
                    .authenticate(parser, buf, &tag, mechanism, initial_response)
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
    async fn authenticate(
        &mut self,
        parser: &mut PreAuthParser,
        buf: &mut [u8],
        tag: &Tag,
        mechanism: Mechanism,
        initial_response: Option<Secret<Vec<u8>>>,
    ) -> Result<Option<Credentials>, Error> {
        match mechanism {
            Mechanism::Plain => {
                let data = match initial_response {
                    Some(ir) => ir,
                    None => match self.auth_step(parser, buf, b"+ \r\n").await? {
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
                    None => match self.auth_step(parser, buf, b"+ VXNlcm5hbWU6\r\n").await? {
                        Some(d) => d,
                        None => return self.auth_cancelled(tag).await,
                    },
                };
                let Some(password) = self.auth_step(parser, buf, b"+ UGFzc3dvcmQ6\r\n").await?
                else {
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
    async fn auth_step(
        &mut self,
        parser: &mut PreAuthParser,
        buf: &mut [u8],
        prompt: &[u8],
    ) -> Result<Option<Secret<Vec<u8>>>, Error> {
        self.write(prompt).await?;
        parser.expect_auth_data(true);
        let ev = self.next_event(parser, buf).await;
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

    async fn auth_cancelled(&mut self, tag: &Tag) -> Result<Option<Credentials>, Error> {
        self.tagged(tag, "BAD Authentication cancelled.").await?;
        Ok(None)
    }

    async fn auth_failed(&mut self, tag: &Tag) -> Result<(), Error> {
        self.tagged(tag, "NO [AUTHENTICATIONFAILED] Authentication failed.")
            .await
    }

    /// The `ID` fields sent to the backend: where the client really is (Dovecot honours these
    /// from `login_trusted_networks`), then the client's own fields. Client fields named `x-*`
    /// are dropped so that nobody can claim another address.
    fn backend_id_fields(&self) -> Vec<(String, String)> {
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
    async fn login(
        &mut self,
        parser: &mut PreAuthParser,
        tag: &Tag,
        creds: Credentials,
    ) -> Result<Next, Error> {
        if creds.username.is_empty()
            || creds.username.len() > MAX_USERNAME
            || creds.username.bytes().any(|b| b.is_ascii_control())
        {
            self.auth_failed(tag).await?;
            return Ok(Next::Continue);
        }
        let user_key = creds.username.to_lowercase();
        tracing::Span::current().record("user", user_key.as_str());
        // Before any backend work: a blocked attempt never reaches a backend.
        match self.proxy.throttle.check(self.peer.ip(), &user_key) {
            Verdict::Allow => {}
            verdict => return self.throttled(tag, verdict).await,
        }
        let upstreams = Arc::clone(&self.proxy.upstreams);
        let Some(candidates) = self.candidates(tag, &user_key).await? else {
            return Ok(Next::Continue);
        };
        let id_fields = self.backend_id_fields();
        // For backends that take a PROXY header: the client, and where it connected.
        let client = self.local.map(|destination| ClientAddrs {
            source: self.peer,
            destination,
        });
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
                    return self
                        .logged_in(parser, tag, session, backend_id, &user_key)
                        .await;
                }
                Err(PoolError::PoolTimeout) => {
                    // Expected under bursts; counted by the pool, not worth a warning each.
                    info!("all of the user's backend sessions stayed busy");
                    // RFC 5530 [LIMIT], as Dovecot answers when its per-user cap is hit.
                    self.tagged(
                        tag,
                        "NO [LIMIT] Too many sessions for this user, try again later.",
                    )
                    .await?;
                    return Ok(Next::Continue);
                }
                Err(e) if !e.is_retryable() => {
                    info!("authentication failed");
                    let delay = self
                        .proxy
                        .throttle
                        .record_failure(self.peer.ip(), &user_key);
                    tokio::time::sleep(delay).await;
                    self.auth_failed(tag).await?;
                    return Ok(Next::Continue);
                }
                Err(e) => {
                    warn!(backend = %backend_id, error = %e, "backend login failed");
                    // Passive marking: the backend could not be reached, which counts toward
                    // its `fall` like a failed check. Login answers and our own caps
                    // (`BackendFull`) say nothing about its health.
                    if let Some(health) = &upstreams.health
                        && unreachable(&e)
                    {
                        health.report_failure(backend_id, &e.to_string());
                    }
                }
            }
        }
        warn!("no backend available");
        self.tagged(
            tag,
            "NO [UNAVAILABLE] Service temporarily unavailable, try again later.",
        )
        .await?;
        Ok(Next::Continue)
    }

    /// Relays a SASL exchange the proxy cannot verify (XOAUTH2, OAUTHBEARER, SCRAM-*) to a
    /// backend chosen for the user named in the client's first message. Throttling applies
    /// as for `LOGIN`; the client sees the backend's challenges but never its final words:
    /// `OK` with the post-login capabilities, or `NO [AUTHENTICATIONFAILED]`.
    async fn sasl_passthrough(
        &mut self,
        parser: &mut PreAuthParser,
        buf: &mut [u8],
        tag: &Tag,
        mechanism: &str,
        initial_response: Option<Secret<Vec<u8>>>,
    ) -> Result<Next, Error> {
        let first = match initial_response {
            Some(ir) => ir,
            None => match self.auth_step(parser, buf, b"+ \r\n").await? {
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
        // Before any backend work: a blocked attempt never reaches a backend.
        match self.proxy.throttle.check(self.peer.ip(), &user_key) {
            Verdict::Allow => {}
            verdict => return self.throttled(tag, verdict).await,
        }
        let upstreams = Arc::clone(&self.proxy.upstreams);
        let Some(candidates) = self.candidates(tag, &user_key).await? else {
            return Ok(Next::Continue);
        };
        let id_fields = self.backend_id_fields();
        let client = self.local.map(|destination| ClientAddrs {
            source: self.peer,
            destination,
        });
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
                    info!("all of the user's backend sessions stayed busy");
                    self.tagged(
                        tag,
                        "NO [LIMIT] Too many sessions for this user, try again later.",
                    )
                    .await?;
                    return Ok(Next::Continue);
                }
                Err(e) if !e.is_retryable() => return self.sasl_failed(tag, &user_key).await,
                Err(e) => {
                    warn!(backend = %backend_id, error = %e, "backend login failed");
                    if let Some(health) = &upstreams.health
                        && unreachable(&e)
                    {
                        health.report_failure(backend_id, &e.to_string());
                    }
                    continue;
                }
            };
            loop {
                let challenge = match step {
                    SaslStep::Done => {
                        let session = login.into_session();
                        return self
                            .logged_in(parser, tag, session, backend_id, &user_key)
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
                    return self.sasl_unavailable(tag).await;
                }
                let mut prompt = Vec::with_capacity(challenge.len() + 4);
                prompt.extend_from_slice(b"+ ");
                prompt.extend_from_slice(&challenge);
                prompt.extend_from_slice(b"\r\n");
                let Some(answer) = self.auth_step(parser, buf, &prompt).await? else {
                    // RFC 9051 §6.2.2: the client's `*` cancels; the backend is told too (its
                    // connection is then dropped with the login).
                    let _ = login.cancel().await;
                    self.auth_cancelled(tag).await?;
                    return Ok(Next::Continue);
                };
                step = match login.respond(answer.expose()).await {
                    Ok(step) => step,
                    Err(e) if !e.is_retryable() => {
                        return self.sasl_failed(tag, &user_key).await;
                    }
                    Err(e) => {
                        warn!(backend = %backend_id, error = %e, "backend failed during SASL");
                        return self.sasl_unavailable(tag).await;
                    }
                };
            }
        }
        warn!("no backend available");
        self.sasl_unavailable(tag).await
    }

    /// A relayed SASL exchange the backend refused: counted like a wrong password.
    async fn sasl_failed(&mut self, tag: &Tag, user_key: &str) -> Result<Next, Error> {
        info!("authentication failed");
        let delay = self.proxy.throttle.record_failure(self.peer.ip(), user_key);
        tokio::time::sleep(delay).await;
        self.auth_failed(tag).await?;
        Ok(Next::Continue)
    }

    async fn sasl_unavailable(&mut self, tag: &Tag) -> Result<Next, Error> {
        self.tagged(
            tag,
            "NO [UNAVAILABLE] Service temporarily unavailable, try again later.",
        )
        .await?;
        Ok(Next::Continue)
    }

    /// The backends to try for `user_key`: the directory's answer first, then the strategy's
    /// (healthy ones only). `None` when the client was told the directory is unavailable.
    async fn candidates(
        &mut self,
        tag: &Tag,
        user_key: &str,
    ) -> Result<Option<Vec<BackendId>>, Error> {
        let upstreams = Arc::clone(&self.proxy.upstreams);
        let candidates: Vec<BackendId> = {
            let request = Request {
                user: user_key,
                client_ip: Some(self.peer.ip()),
                client_id: &self.client_id,
            };
            match &upstreams.directory {
                // The directory says where the mailbox is; the strategy's candidates follow
                // as fallback (only healthy backends either way).
                Some(directory) => match directory.lookup(user_key).await {
                    Ok(route) => route_first(
                        route.as_ref(),
                        &upstreams.registry,
                        upstreams.selector.select(&upstreams.registry, &request),
                    ),
                    Err(e) => {
                        warn!(error = %e, "user directory unavailable");
                        self.tagged(
                            tag,
                            "NO [UNAVAILABLE] Service temporarily unavailable, try again later.",
                        )
                        .await?;
                        return Ok(None);
                    }
                },
                None => upstreams.selector.select(&upstreams.registry, &request),
            }
        };
        Ok(Some(candidates))
    }

    /// Tells the client it is logged in on `backend_id` (post-login capabilities, filtered)
    /// and hands the session to the relay.
    async fn logged_in(
        &mut self,
        parser: &mut PreAuthParser,
        tag: &Tag,
        session: PooledSession,
        backend_id: &BackendId,
        user_key: &str,
    ) -> Result<Next, Error> {
        let upstreams = Arc::clone(&self.proxy.upstreams);
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
        self.proxy.throttle.record_success(self.peer.ip(), user_key);
        info!(reused = session.reused(), "logged in");
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
        Ok(Next::LoggedIn(Box::new(LoggedIn {
            session,
            pipelined: parser.take_remaining(),
            _guard: guard,
        })))
    }

    /// Answers an attempt the throttle refused, after the longest failure delay so that the
    /// timing tells nothing. A blocked user (from this address) sees an ordinary failure; a
    /// blocked address is told and disconnected (RFC 5530 `LIMIT`).
    async fn throttled(&mut self, tag: &Tag, verdict: Verdict) -> Result<Next, Error> {
        info!(blocked = ?verdict, "login throttled");
        tokio::time::sleep(self.proxy.throttle.settings().max_delay).await;
        if verdict == Verdict::UserBlocked {
            self.auth_failed(tag).await?;
            return Ok(Next::Continue);
        }
        self.write(b"* BYE [LIMIT] Too many failed logins, try again later.\r\n")
            .await?;
        Err(Error::Protocol("address blocked after failed logins"))
    }

    async fn relay(&mut self, logged_in: LoggedIn) -> Result<(), Error> {
        let LoggedIn {
            mut session,
            pipelined,
            _guard,
        } = logged_in;
        let leftover = session.conn().take_buffered();
        let idle = self.proxy.settings.auth_timeout;
        let proxy = Arc::clone(&self.proxy);
        let shutdown = self.shutdown.clone();
        let intercept = proxy.pool.settings().reuse;
        let (end, facts) = {
            let mut relay = Relay::new(
                &mut self.stream,
                session.conn().stream_mut(),
                pipelined,
                leftover,
                idle,
                &proxy.policy,
                intercept,
            );
            let end = tokio::select! {
                end = &mut relay => Some(end),
                _ = shutdown.cancelled() => None,
            };
            (end, relay.facts())
        };
        debug!(
            bytes_up = facts.bytes_up,
            bytes_down = facts.bytes_down,
            commands = facts.commands,
            "relay finished"
        );
        let clean = matches!(end, Some(RelayEnd::Logout(_) | RelayEnd::ClientClosed));
        let reusable = clean && facts.reusable();
        let reset = Reset {
            selected: facts.selected,
        };
        // Back to the pool before the client hears the answer to its LOGOUT, so that its
        // next login (webmail logs in again at once) finds the session cached.
        // Boxed: the reset's state machine is needed once, not for the session's whole life.
        Box::pin(proxy.pool.checkin(session, reusable, reset)).await;
        // A BYE written into the middle of a response would become part of it (a literal's
        // bytes, say): at such a point the connection is just closed.
        let can_speak = !facts.mid_response;
        match end {
            None => {
                if can_speak {
                    let _ = self
                        .write(b"* BYE [UNAVAILABLE] Server shutting down.\r\n")
                        .await;
                }
                Err(Error::Shutdown)
            }
            Some(RelayEnd::Logout(tag)) => {
                let mut bye = b"* BYE Logging out.\r\n".to_vec();
                bye.extend_from_slice(tag.as_bytes());
                bye.extend_from_slice(b" OK Logout completed.\r\n");
                self.write(&bye).await?;
                let _ = self.stream.shutdown().await;
                Ok(())
            }
            Some(RelayEnd::ClientClosed | RelayEnd::BackendClosed) => Ok(()),
            Some(RelayEnd::IdleTimeout) => {
                if can_speak {
                    let _ = self
                        .write(b"* BYE Autologout; idle for too long.\r\n")
                        .await;
                }
                Err(Error::Timeout)
            }
            Some(RelayEnd::ClientError(e)) => Err(Error::Client(e)),
            Some(RelayEnd::BackendError(e)) => {
                warn!(error = %e, "backend connection failed");
                if can_speak {
                    let _ = self
                        .write(b"* BYE [UNAVAILABLE] Internal error, reconnect.\r\n")
                        .await;
                }
                Ok(())
            }
        }
    }
}

/// Whether a checkout failed because the backend could not be reached (connect, TLS,
/// timeout, refused or cut connection), as opposed to a login answer or a cap of our own.
fn unreachable(e: &PoolError) -> bool {
    matches!(
        e,
        PoolError::Connect { .. }
            | PoolError::Timeout { .. }
            | PoolError::Refused
            | PoolError::Io(_)
            | PoolError::Tls(_)
    )
}
