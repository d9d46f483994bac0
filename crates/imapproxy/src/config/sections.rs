//! The sections of the configuration file, one struct each.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults::*;
use super::{Secret, TlsSetting};

/// One `[[listeners]]` entry.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind.
    pub addr: SocketAddr,
    /// TLS mode.
    #[serde(default)]
    pub tls: TlsSetting,
    /// Expect a PROXY protocol v1/v2 header first, from `[limits].trusted_networks` only
    /// (any other peer is dropped).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Allow plaintext LOGIN/AUTHENTICATE before TLS.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
}

/// `[tls]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// One `[[backends]]` entry.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Unique name, used in logs and the admin API; never shown to clients.
    pub name: String,
    /// `host:port`.
    pub addr: String,
    /// TLS towards the backend.
    #[serde(default)]
    pub tls: TlsSetting,
    /// Selection weight.
    #[serde(default = "one")]
    pub weight: u32,
    /// Connection cap.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// CA bundle (PEM) to verify the backend's certificate; default: the public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name to verify in the certificate; default: the host of `addr`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Skip certificate verification. For labs only; logged loudly.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
    /// Bound on connect plus TLS handshake.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on the server's greeting once connected (a frozen server accepts connections
    /// but never greets).
    #[serde(default = "default_greeting_timeout", with = "humantime_serde")]
    pub greeting_timeout: Duration,
    /// Bound on a backend login (`ID`, `LOGIN` or `AUTHENTICATE`), after which the next
    /// backend is tried. Leave room for the server's own delay on a wrong password
    /// (Dovecot: `auth_failure_delay`, 2 s).
    #[serde(default = "default_login_timeout", with = "humantime_serde")]
    pub login_timeout: Duration,
    /// Send a PROXY v2 header with the client's address (Dovecot: `haproxy = yes` and
    /// `haproxy_trusted_networks`). No warm connections are kept for such a backend.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `[routing]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// `round-robin` (default), `least-connections`, `weighted` (smooth weighted round-robin
    /// by `[[backends]] weight`), `p2c` (power of two choices) or `hash` (rendezvous hashing
    /// by user); see `crate::build::routing::STRATEGIES`.
    #[serde(default = "default_strategy")]
    pub strategy: String,
    /// The user directory asked before the strategy: `static` (the `map` file), `http` (an
    /// nginx mail-proxy compatible auth service at `http_url`) or `redis` (`HGET redis_hash
    /// <user>` at `redis_url`). Absent: `static` when `map` is set, else none.
    #[serde(default)]
    pub directory: Option<String>,
    /// A static user map file (`user backend`, `@domain backend`, `* backend`; see
    /// `imapproxy_route::StaticMap`), checked against `[[backends]]` at start and by
    /// `imapproxy check`.
    #[serde(default)]
    pub map: Option<PathBuf>,
    /// `directory = "http"`: the auth service's URL (`http://host:port/path`, plain HTTP).
    #[serde(default)]
    pub http_url: Option<String>,
    /// `directory = "redis"`: the server's URL (`redis://host:port/db`).
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// `directory = "redis"`: the hash of user → backend name(s).
    #[serde(default = "default_redis_hash")]
    pub redis_hash: String,
    /// How long a remote directory's answer is cached per user.
    #[serde(default = "default_directory_ttl", with = "humantime_serde")]
    pub directory_ttl: Duration,
    /// How long a login waits for a remote directory before `NO [UNAVAILABLE]`.
    #[serde(default = "default_directory_timeout", with = "humantime_serde")]
    pub directory_timeout: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            strategy: default_strategy(),
            directory: None,
            map: None,
            http_url: None,
            redis_url: None,
            redis_hash: default_redis_hash(),
            directory_ttl: default_directory_ttl(),
            directory_timeout: default_directory_timeout(),
        }
    }
}

/// `[pool]`: backend session pooling.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Cache authenticated sessions after LOGOUT.
    #[serde(default = "yes")]
    pub reuse: bool,
    /// Warm connections per backend.
    #[serde(default = "two")]
    pub warm: u32,
    /// Expiry of idle pooled connections.
    #[serde(default = "default_pool_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Backend sessions per user.
    #[serde(default = "default_max_per_user")]
    pub max_per_user: u32,
    /// How long a client waits for a slot.
    #[serde(default = "default_wait", with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// The longest a backend session is served from the cache, counted from its backend
    /// login: a disabled account or a changed password stops working through the cache
    /// within this time.
    #[serde(default = "default_pool_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Parking: when clients of a user wait for one of its `max_per_user` backend sessions, a
    /// session of that user quiet between commands (not in IDLE) for this long gives its
    /// backend session to the first of them and gets one back at its next command. Nothing
    /// happens while nobody waits. `"0s"` turns parking off.
    #[serde(default = "default_park_after", with = "humantime_serde")]
    pub park_after: Duration,
    /// A cached session idle for longer than this is checked with a `NOOP` round trip before
    /// it is handed out.
    #[serde(default = "default_noop_after", with = "humantime_serde")]
    pub noop_after: Duration,
    /// Bound on that check: a backend that does not answer within it (alive socket, frozen
    /// server) loses the session and the client gets a fresh login instead.
    #[serde(default = "default_liveness_timeout", with = "humantime_serde")]
    pub liveness_timeout: Duration,
    /// Fleet mode: backend sessions per user across every proxy of the fleet (0: no
    /// fleet-wide cap, only `max_per_user` per proxy). Set it at or below the backend's own
    /// per-user limit (Dovecot: `mail_max_userip_connections`).
    #[serde(default)]
    pub max_per_user_fleet: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            reuse: true,
            warm: 2,
            idle_timeout: default_pool_idle(),
            max_per_user: default_max_per_user(),
            wait_timeout: default_wait(),
            max_age: default_pool_max_age(),
            park_after: default_park_after(),
            noop_after: default_noop_after(),
            liveness_timeout: default_liveness_timeout(),
            max_per_user_fleet: 0,
        }
    }
}

/// `[health]`: active IMAP checks of every backend (connect, greeting, `NOOP`, optional
/// probe login, `LOGOUT`) with rise/fall hysteresis; sessions also report connect failures.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Interval between checks.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Bound on one check.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    #[serde(default = "default_health_threshold")]
    pub rise: u32,
    /// Consecutive failures (checks or sessions' connect failures) that take a backend down.
    #[serde(default = "default_health_threshold")]
    pub fall: u32,
    /// Probe login: user name (with `probe_password`); none by default.
    #[serde(default)]
    pub probe_user: Option<String>,
    /// Probe login: password.
    #[serde(default)]
    pub probe_password: Option<Secret>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: default_health_interval(),
            timeout: default_health_interval(),
            rise: default_health_threshold(),
            fall: default_health_threshold(),
            probe_user: None,
            probe_password: None,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Networks allowed to send PROXY headers and exempt from throttling.
    #[serde(default = "default_trusted")]
    pub trusted_networks: Vec<String>,
    /// Failed logins of one user from one address within `failure_window` before that
    /// user is blocked from that address (0: no login throttling).
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// Failed logins from one address (any users) within `failure_window` before the
    /// address is blocked.
    #[serde(default = "default_max_failures_per_ip")]
    pub max_failures_per_ip: u32,
    /// Window in which failed logins are counted.
    #[serde(default = "default_failure_window", with = "humantime_serde")]
    pub failure_window: Duration,
    /// How long a block lasts.
    #[serde(default = "default_block_duration", with = "humantime_serde")]
    pub block_duration: Duration,
    /// Open connections per client address (0: unlimited).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: u32,
    /// New connections per second per client address, also the burst (0: unlimited).
    #[serde(default = "default_max_new_connections_per_ip_per_sec")]
    pub max_new_connections_per_ip_per_sec: u32,
    /// Open client connections in total (0: unlimited).
    #[serde(default = "default_max_client_connections")]
    pub max_connections: usize,
    /// Logins of one user that may be at a backend at once with a password that has not
    /// logged that user in lately (0: no cap). Guessers then share these few backend slots
    /// and the user's own password, once it has worked, never waits behind them. Keep it
    /// well below `[pool] max_per_user`.
    #[serde(default = "default_max_unproven_logins_per_user")]
    pub max_unproven_logins_per_user: u32,
    /// The longest a login waits for its turn behind other attempts in flight (the failure
    /// budget of its address and user, or the cap above) before `NO [LIMIT]`. (A login with an
    /// unproven password that times out in `[pool]`'s per-user queue counts as failed.)
    #[serde(default = "default_login_queue_timeout", with = "humantime_serde")]
    pub login_queue_timeout: Duration,
    /// Failed logins (of a user from an address, or from an address) answered at once;
    /// later ones wait `failure_delay`, doubling each time up to `max_failure_delay`.
    #[serde(default = "default_free_failures")]
    pub free_failures: u32,
    /// The first delay before answering a failed login past `free_failures`.
    #[serde(default = "default_failure_delay", with = "humantime_serde")]
    pub failure_delay: Duration,
    /// The longest delay before answering a failed (or blocked) login.
    #[serde(default = "default_max_failure_delay", with = "humantime_serde")]
    pub max_failure_delay: Duration,
}

fn default_free_failures() -> u32 {
    imapproxy_session::ThrottleSettings::default().free_failures
}

fn default_failure_delay() -> Duration {
    imapproxy_session::ThrottleSettings::default().base_delay
}

fn default_max_failure_delay() -> Duration {
    imapproxy_session::ThrottleSettings::default().max_delay
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            trusted_networks: default_trusted(),
            max_failures: default_max_failures(),
            max_failures_per_ip: default_max_failures_per_ip(),
            failure_window: default_failure_window(),
            block_duration: default_block_duration(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_new_connections_per_ip_per_sec: default_max_new_connections_per_ip_per_sec(),
            max_connections: default_max_client_connections(),
            max_unproven_logins_per_user: default_max_unproven_logins_per_user(),
            login_queue_timeout: default_login_queue_timeout(),
            free_failures: default_free_failures(),
            failure_delay: default_failure_delay(),
            max_failure_delay: default_max_failure_delay(),
        }
    }
}

/// `[session]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Text of the greeting.
    #[serde(default = "default_greeting")]
    pub greeting: String,
    /// Idle bound before login.
    #[serde(default = "default_preauth_timeout", with = "humantime_serde")]
    pub preauth_timeout: Duration,
    /// Autologout after login (RFC 9051 §5.4: at least 30 minutes).
    #[serde(default = "default_auth_timeout", with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Bound on a client's TLS handshake.
    #[serde(default = "default_tls_handshake", with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Extra capabilities hidden from clients after login.
    #[serde(default)]
    pub drop_capabilities: Vec<String>,
    /// How long running sessions get to finish on SIGTERM.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Move logged-in sessions to another backend when theirs fails, is drained with
    /// migration, or their user is moved, instead of ending them.
    #[serde(default = "default_true")]
    pub rehome: bool,
    /// Sessions moving at once (the rest wait their turn).
    #[serde(default = "default_max_concurrent_rehomes")]
    pub max_concurrent_rehomes: usize,
    /// Bound on one move (login, replay, resent commands).
    #[serde(default = "default_rehome_timeout", with = "humantime_serde")]
    pub rehome_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            greeting: default_greeting(),
            preauth_timeout: default_preauth_timeout(),
            auth_timeout: default_auth_timeout(),
            tls_handshake_timeout: default_tls_handshake(),
            drop_capabilities: Vec::new(),
            shutdown_grace: default_grace(),
            rehome: true,
            max_concurrent_rehomes: default_max_concurrent_rehomes(),
            rehome_timeout: default_rehome_timeout(),
        }
    }
}

/// `[admin]`: the admin HTTP endpoint.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bind address (loopback is the safe choice); absent: no admin endpoint.
    #[serde(default)]
    pub addr: Option<SocketAddr>,
    /// When set, every admin request but `/healthz` needs `Authorization: Bearer <token>`.
    /// Required when `addr` is not a loopback address.
    #[serde(default)]
    pub token: Option<Secret>,
    /// The token read from this file instead (surrounding white space ignored), so that it
    /// stays out of the main configuration. Not together with `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Host names (besides IP literals and `localhost`) under which the endpoint may be
    /// reached, e.g. the name of a reverse proxy in front of it. Requests naming any other
    /// `Host` are refused, so that a web page cannot reach the endpoint through DNS
    /// rebinding.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// A JSON file keeping the user → backend overrides set by `POST /users/{user}/move`
    /// across restarts; read at start, rewritten on every change. Absent: overrides live
    /// in memory only.
    #[serde(default)]
    pub overrides_file: Option<PathBuf>,
}

/// `[fleet]`: several proxies sharing user moves, throttling, commands to sessions and a
/// session registry through Redis (or Valkey). Absent `redis_url`: a single proxy on local
/// state.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://[user:password@]host:port/db` (or `rediss://`). With `sentinels`, the
    /// credentials and database used on the master the sentinels name.
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// Redis Sentinel addresses (`redis://host:26379`); with them the master of
    /// `sentinel_master` is found through the sentinels, again after every failover.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The master's name in Sentinel's configuration.
    #[serde(default = "default_sentinel_master")]
    pub sentinel_master: String,
    /// This proxy's name in the fleet (session listings, logs). Default: host name and
    /// process id.
    #[serde(default)]
    pub proxy_id: Option<String>,
    /// Prefix of every key and channel, so that several fleets can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The longest a login waits for Redis (throttling counts); past it, local state rules.
    #[serde(default = "default_fleet_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How often the proxy publishes its session summary (kept for three times as long).
    #[serde(default = "default_publish_interval", with = "humantime_serde")]
    pub publish_interval: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            sentinels: Vec::new(),
            sentinel_master: default_sentinel_master(),
            proxy_id: None,
            key_prefix: default_key_prefix(),
            timeout: default_fleet_timeout(),
            publish_interval: default_publish_interval(),
        }
    }
}

fn default_sentinel_master() -> String {
    "mymaster".into()
}

fn default_key_prefix() -> String {
    "imapproxy:".into()
}

fn default_fleet_timeout() -> Duration {
    Duration::from_millis(250)
}

fn default_publish_interval() -> Duration {
    Duration::from_secs(2)
}

/// `[log]`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A tracing filter (`info`, `imapproxy_session=debug`); `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}
