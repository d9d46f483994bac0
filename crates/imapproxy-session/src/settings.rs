//! Plain settings structs: the binary fills them from its configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use imapproxy_codec::preauth::PreAuthLimits;
use imapproxy_pool::BackendTarget;
use imapproxy_route::{BackendId, Directory, HealthMonitor, Registry, Selector};
use imapproxy_tls::{ServerTls, TlsMode};

use crate::limits::LimitSettings;
use crate::proxy_protocol::ProxyProtocolSettings;

/// Behaviour shared by every session of a proxy.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Text of the proxy's own greeting (after `* OK [CAPABILITY ...]`).
    pub greeting: String,
    /// Close a connection that has not logged in after this long without a complete command.
    pub preauth_timeout: Duration,
    /// Autologout timer for logged-in sessions (RFC 9051 §5.4: at least 30 minutes).
    pub auth_timeout: Duration,
    /// Bound on a client's TLS handshake (implicit TLS and STARTTLS).
    pub tls_handshake_timeout: Duration,
    /// Invalid commands tolerated before login; the next one ends the connection with `BYE`.
    pub max_bad_commands: u32,
    /// Line and literal bounds before login.
    pub preauth_limits: PreAuthLimits,
    /// Capabilities removed from the backend's lists, on top of the built-in list
    /// (`STARTTLS`, `LOGINDISABLED`, `AUTH=*`, `SASL-IR`, `LOGIN-REFERRALS`, `COMPRESS=*`).
    pub drop_capabilities: Vec<String>,
    /// Attempts at different backends for one login before answering `NO [UNAVAILABLE]`.
    pub max_backend_attempts: usize,
    /// Listeners that expect a PROXY v1/v2 header, and the peers trusted to send one.
    pub proxy_protocol: ProxyProtocolSettings,
    /// Failed-login throttling and connection limits (`[limits]`).
    pub limits: LimitSettings,
    /// Move logged-in sessions to another backend connection when theirs fails (instead of
    /// ending them), and when an operator drains with migration or moves a user.
    pub rehome: bool,
    /// Sessions moving at once (a drain or a failed backend moves many): the others wait
    /// their turn, so that the target backends see a bounded burst of logins.
    pub max_concurrent_rehomes: usize,
    /// Bound on one move: login, replay, resent commands.
    pub rehome_timeout: Duration,
    /// Parking: a session quiet between commands (not in `IDLE`) for this long gives its
    /// backend session to a client of the same user waiting for one of its `max_per_user`
    /// slots, and gets one back (re-homed) at its next command. `None`: never.
    pub park_after: Option<Duration>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            greeting: "IMAP proxy ready.".into(),
            preauth_timeout: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(30 * 60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_bad_commands: 10,
            preauth_limits: PreAuthLimits::default(),
            drop_capabilities: Vec::new(),
            max_backend_attempts: 3,
            proxy_protocol: ProxyProtocolSettings::default(),
            limits: LimitSettings::default(),
            rehome: true,
            max_concurrent_rehomes: 64,
            rehome_timeout: Duration::from_secs(15),
            park_after: None,
        }
    }
}

/// How one listener treats its clients.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// `none`, `starttls` or `implicit`.
    pub tls: TlsMode,
    /// Allow LOGIN and AUTHENTICATE PLAIN/LOGIN without TLS (otherwise `LOGINDISABLED`).
    pub allow_plaintext_auth: bool,
    /// Certificate for `starttls` and `implicit`.
    pub server_tls: Option<ServerTls>,
}

/// The backends, how to reach them and how to choose among them.
pub struct Upstreams {
    /// Backends and their live state.
    pub registry: Registry,
    /// Selection strategy.
    pub selector: Arc<dyn Selector>,
    /// Where each user's mailbox lives, asked before the selector (whose candidates follow as
    /// fallback). Wrap slow directories in `imapproxy_route::CachedDirectory` for a timeout.
    pub directory: Option<Arc<dyn Directory>>,
    /// Connection settings per backend.
    pub targets: HashMap<BackendId, BackendTarget>,
    /// Health monitor of `registry`'s backends, told when a login cannot reach a backend
    /// (connect, TLS, timeout, refused) so that it is taken out before the next active check.
    /// `None`: no passive marking.
    pub health: Option<Arc<HealthMonitor>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("targets", &self.targets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
