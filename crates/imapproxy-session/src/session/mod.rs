//! One client session: greeting, pre-auth loop, backend login, relay.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};

use imapproxy_codec::capability::default_post_login_drop;
use imapproxy_codec::preauth::{
    AuthData, Mechanism, PreAuthCommand, PreAuthEvent, PreAuthParser, parse_sasl_plain,
};
use imapproxy_codec::{Secret, Tag};
use imapproxy_pool::{
    ClientAddrs, Credentials, Disposition, Error as PoolError, PoolSettings, PooledSession,
    SaslStep, SessionPool,
};
use imapproxy_route::{BackendId, Health, Request, SessionGuard, route_first};
use imapproxy_tls::TlsMode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::command_metrics::CommandMetrics;
use crate::error::Error;
use crate::limits::ConnectionLimits;
use crate::proxy_protocol;
use crate::registry::{Overrides, Registration, SessionRegistry};
use crate::relay::{Relay, RelayEnd, ResponsePolicy};
use crate::sasl;
use crate::settings::{ListenerSettings, SessionSettings, Upstreams};
use crate::stream::ClientStream;
use crate::throttle::{Attempt, Throttle, Verdict};

mod drive;
mod login;
mod preauth;
mod rehome;

/// The ID the proxy gives for itself, before and after login (RFC 2971). It names no backend.
const PROXY_ID: &[u8] = b"* ID (\"name\" \"imapproxy\")\r\n";
/// Largest read before login, through a buffer on the stack for the length of one poll (see
/// `preauth::read_into`): no session keeps it, so it can take a `LOGIN` and the commands
/// pipelined behind it in one read.
const PREAUTH_READ: usize = 4096;
/// Longest user name accepted; anything longer is an attack or a mistake.
const MAX_USERNAME: usize = 256;
/// RFC 2971 §3.3: at most 30 field-value pairs.
const MAX_ID_FIELDS: usize = 30;
/// Bound on sending close_notify to a client at the end of its session.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// State shared by every session of one proxy: settings and backends.
pub struct Proxy {
    settings: SessionSettings,
    /// Swapped whole on reload (SIGHUP): a login reads one consistent snapshot, and running
    /// sessions keep the registry states they counted themselves in.
    upstreams: ArcSwap<Upstreams>,
    policy: ResponsePolicy,
    /// Per-command latency histograms of every session's relay.
    command_metrics: CommandMetrics,
    pool: SessionPool,
    next_id: AtomicU64,
    throttle: Throttle,
    limits: Arc<ConnectionLimits>,
    sessions: SessionRegistry,
    overrides: Overrides,
    /// Sessions moving to another backend at once (`max_concurrent_rehomes`).
    rehomes: tokio::sync::Semaphore,
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
        let sessions = SessionRegistry::new();
        // Sessions that could park hear of a waiting client of their user through the
        // registry (one small future per session for everything from outside).
        if settings.park_after.is_some() {
            pool.on_waiter(sessions.waiter_hook());
        }
        let throttle = Throttle::new(settings.limits.throttle.clone());
        let limits = Arc::new(ConnectionLimits::new(settings.limits.connections.clone()));
        Ok(Self {
            throttle,
            limits,
            upstreams: ArcSwap::from_pointee(upstreams),
            policy: ResponsePolicy {
                drop_capability,
                id_reply: PROXY_ID.to_vec(),
            },
            command_metrics: CommandMetrics::default(),
            pool,
            next_id: AtomicU64::new(1),
            sessions,
            overrides: Overrides::new(),
            rehomes: tokio::sync::Semaphore::new(settings.max_concurrent_rehomes.max(1)),
            settings,
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
    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.upstreams.load_full()
    }

    /// Replaces the throttling and connection-limit settings (SIGHUP), keeping their counters.
    pub fn replace_limits(&self, limits: crate::LimitSettings) {
        self.throttle.set_settings(limits.throttle);
        self.limits.set_settings(limits.connections);
    }

    /// Replaces the backends, routing and health monitor without touching running sessions
    /// (SIGHUP). Backends that are new or moved to another address get fresh pool entries;
    /// the others keep their warm connections and cached sessions. Build the new registry
    /// with [`imapproxy_route::Registry::reload`] on the current one so that health and
    /// session counts carry over.
    pub fn replace_upstreams(&self, upstreams: Upstreams) {
        let current = self.upstreams.load_full();
        for (backend, _) in upstreams.registry.iter() {
            let Some(target) = upstreams.targets.get(&backend.id) else {
                continue;
            };
            let unchanged = current
                .targets
                .get(&backend.id)
                .is_some_and(|old| old.addr == target.addr && old.tls == target.tls);
            if !unchanged {
                self.pool.add_backend(
                    backend.id.as_str(),
                    target.clone(),
                    backend.max_connections as usize,
                );
            }
        }
        self.upstreams.store(Arc::new(upstreams));
    }

    /// Failed-login counters.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Connection counters.
    pub fn connection_limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// The live logged-in sessions: list them, or end a user's.
    pub fn sessions(&self) -> &SessionRegistry {
        &self.sessions
    }

    /// Operator overrides (user → backend), consulted before the directory and the
    /// selection strategy for every new login.
    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }
}

/// Serves one accepted client connection until it ends. Never panics on client or backend
/// input; errors are logged in the session's span and answered in IMAP terms.
///
/// On a listener named in [`SessionSettings::proxy_protocol`](crate::SessionSettings) the
/// connection must start with a PROXY v1/v2 header from a trusted peer; otherwise it is
/// dropped without a byte sent. The header's source address then stands for the client
/// everywhere: logs, the backend `ID` fields, routing, and an outbound PROXY header.
pub fn serve(
    proxy: Arc<Proxy>,
    listener: Arc<ListenerSettings>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + use<> {
    // Two phases, so that the task of a long-lived session holds each part once: what
    // admission needed (the PROXY header exchange) is gone once the session runs, and the
    // running future keeps the session where it was built. Admission is boxed: its state is
    // gone once it is done. `then` rather than an async block, which would keep the box's
    // slot and a pointer to the pinned session beside the session: the task's future is then
    // small enough for tokio's 384-byte task cell instead of the 512-byte one.
    use futures_util::FutureExt as _;
    Box::pin(admit(proxy, listener, tcp, peer, shutdown))
        .then(futures_util::future::OptionFuture::from)
        .map(|_| ())
}

/// The PROXY header (where the listener expects one) and the connection limits; then the
/// session, ready to run.
async fn admit(
    proxy: Arc<Proxy>,
    listener: Arc<ListenerSettings>,
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    shutdown: CancellationToken,
) -> Option<impl Future<Output = ()> + Send + use<>> {
    let id = proxy.next_id.fetch_add(1, Ordering::Relaxed);
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
                return None;
            }
        }
    }
    // Counted by the real client address (after a PROXY header), before any TLS work.
    let permit = match proxy.limits.try_acquire(peer.ip()) {
        Ok(permit) => permit,
        Err(refusal) => {
            info!(id, client = %peer, limit = refusal.as_str(), "connection refused");
            // On an implicit-TLS listener the client is starting a TLS handshake: plaintext
            // there reads as a broken server ("wrong version number"), and a TLS handshake
            // is work a flood must not get. Closing without a byte is the honest answer.
            if listener.tls != TlsMode::Implicit {
                // Best effort and never waiting: a flood must not hold tasks on full buffers.
                let _ = tcp.try_write(b"* BYE [LIMIT] Too many connections.\r\n");
            }
            return None;
        }
    };
    metrics::counter!("imapproxy_sessions_total").increment(1);
    let span = info_span!(
        "session",
        id,
        client = %peer,
        user = tracing::field::Empty,
        backend = tracing::field::Empty
    );
    // Small request/response exchanges: never let Nagle hold a reply back.
    let _ = tcp.set_nodelay(true);
    let session = Session {
        proxy,
        listener,
        stream: ClientStream::Plain(tcp),
        peer,
        local,
        id,
        shutdown,
        client_id: Box::default(),
        pre: None,
    };
    Some(session.serve(permit).instrument(span))
}

struct Session {
    proxy: Arc<Proxy>,
    listener: Arc<ListenerSettings>,
    stream: ClientStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    id: u64,
    shutdown: CancellationToken,
    /// The client's `ID` fields (forwarded to every backend it logs in to, moves included).
    client_id: Box<[(String, Option<String>)]>,
    /// What only the time before login needs; dropped when the relay starts.
    pre: Option<Box<PreAuthCounts>>,
}

/// Counts kept until login: boxed, so that a logged-in session's task holds none of it.
#[derive(Debug, Default)]
struct PreAuthCounts {
    bad_commands: u32,
    /// Login attempts so far in this connection (nginx's `Auth-Login-Attempt`).
    login_attempts: u32,
    /// When the current login attempt began, for the login latency histogram.
    login_started: Option<std::time::Instant>,
}

/// `imapproxy_sessions_active`: up while a client connection lives.
struct ActiveGauge;

impl ActiveGauge {
    fn new() -> Self {
        metrics::gauge!("imapproxy_sessions_active").increment(1.0);
        Self
    }
}

impl Drop for ActiveGauge {
    fn drop(&mut self) {
        metrics::gauge!("imapproxy_sessions_active").decrement(1.0);
    }
}

/// Counts a login attempt by how it ended: `ok`, `reused`, `failed`, `unavailable`, `limit`,
/// `throttled`.
fn count_login(result: &'static str) {
    metrics::counter!("imapproxy_logins_total", "result" => result).increment(1);
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
    /// The backend's name and the user (lower-cased), for moving the session later.
    backend: BackendId,
    user_key: Arc<str>,
    /// The client's credentials, kept (zeroized on drop) so that the session can log in on
    /// another backend when it moves; `None` after a relayed SASL login, which cannot be
    /// replayed.
    creds: Option<Credentials>,
    _guard: Option<SessionGuard>,
    /// The session's entry among the live sessions; its token ends the session.
    registration: Registration,
    /// Bytes the client pipelined behind its login command, for the backend.
    pipelined: Vec<u8>,
}

impl Session {
    /// Runs the session to its end, then closes it; `permit` (its place under the
    /// connection limits) is given back last. Not an `async fn`: its future uses the
    /// session where it was captured instead of keeping an argument and a copy.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its session argument and the local made of it"
    )]
    fn serve(
        mut self,
        permit: crate::limits::ConnectionPermit,
    ) -> impl Future<Output = ()> + Send + use<> {
        async move {
            let active = ActiveGauge::new();
            match self.run().await {
                Ok(()) => debug!("session closed"),
                Err(Error::ClientClosed) => debug!("client closed the connection"),
                Err(e) => info!(error = %e, "session ended"),
            }
            // After the log line, so that no result is held across the await (task size);
            // boxed, so that the task is not sized for the TLS shutdown it needs once.
            Box::pin(self.close()).await;
            drop(active);
            drop(permit);
        }
    }

    async fn run(&mut self) -> Result<(), Error> {
        if self.listener.tls == TlsMode::Implicit {
            Box::pin(self.start_tls()).await?;
        }
        // Boxed: neither the greeting nor the write's state stays in the future of a
        // session that then idles for hours.
        Box::pin(self.greet()).await?;
        // Boxed so that its state (parser, backend login) is freed before the
        // relay starts instead of sizing the session task for its whole life: an idle
        // logged-in session then costs only what the relay holds.
        let Some(logged_in) = Box::pin(self.preauth()).await? else {
            return Ok(());
        };
        // Boxed too: a connection that never logs in (most of a flood, every probe) then
        // reserves nothing for the relay, and a logged-in one allocates exactly its relay.
        Box::pin(self.relay(logged_in)).await
    }

    async fn greet(&mut self) -> Result<(), Error> {
        let greeting = format!(
            "* OK [CAPABILITY {}] {}\r\n",
            self.capabilities(),
            self.proxy.settings.greeting
        );
        self.write(greeting.as_bytes()).await
    }

    fn secure(&self) -> bool {
        self.stream.is_tls()
    }

    /// The pre-login counts, made on first use.
    fn pre(&mut self) -> &mut PreAuthCounts {
        self.pre.get_or_insert_with(Box::default)
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

    /// Ends the client connection, however the session ended: a TLS session with
    /// close_notify (RFC 8446 §6.1), without which clients cannot tell a deliberate end from
    /// a truncation attack and report an error (OpenSSL's "unexpected eof"). Bounded, since
    /// a client that reads nothing must not keep the task; repeating it after a relay that
    /// already shut the stream down is harmless.
    async fn close(&mut self) {
        if self.stream.is_tls() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.shutdown()).await;
        }
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
}

/// Whether a checkout failed because the backend could not be reached (connect, TLS,
/// timeout, refused or cut connection), as opposed to a login answer or a cap of our own.
fn unreachable(e: &PoolError) -> bool {
    matches!(
        e,
        PoolError::Connect { .. }
            // Only a connect that timed out: a slow greeting or login is an overloaded server
            // (a burst of re-homed sessions, say), and marking the survivor of a failover Down
            // for it would end every session still moving there. Active checks judge
            // slowness with their own timeout.
            | PoolError::Timeout { step: "connect", .. }
            | PoolError::Closed
            | PoolError::GreetingBye { .. }
            | PoolError::Bye { .. }
            | PoolError::Io(_)
            | PoolError::Tls(_)
    )
}
