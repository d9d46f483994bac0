//! The configuration file (TOML through figment, `IMAPPROXY_…` environment overrides).
//!
//! Key names are a contract shared with the README, the examples and operators' files: add
//! keys freely, never rename or drop one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clients connect.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// The certificate for TLS listeners; absent: a self-signed one is generated.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The IMAP servers behind the proxy.
    #[serde(default = "default_backends")]
    pub backends: Vec<BackendConfig>,
    /// How a backend is chosen.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Backend connection pooling.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Backend health checks.
    #[serde(default)]
    pub health: HealthConfig,
    /// Limits and trusted networks.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Timeouts and texts of client sessions.
    #[serde(default)]
    pub session: SessionConfig,
    /// The admin HTTP endpoint.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// `none | starttls | implicit`, as written in the file.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsSetting {
    /// No TLS.
    #[default]
    None,
    /// Plain, upgraded with STARTTLS.
    Starttls,
    /// TLS from the first byte.
    Implicit,
}

impl From<TlsSetting> for imapproxy_tls::TlsMode {
    fn from(t: TlsSetting) -> Self {
        match t {
            TlsSetting::None => Self::None,
            TlsSetting::Starttls => Self::StartTls,
            TlsSetting::Implicit => Self::Implicit,
        }
    }
}

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
    /// by user); see `crate::build::STRATEGIES`.
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
    pub redis_url: Option<String>,
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
    pub probe_password: Option<String>,
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
    #[serde(default)]
    pub token: Option<String>,
    /// A JSON file keeping the user → backend overrides set by `POST /users/{user}/move`
    /// across restarts; read at start, rewritten on every change. Absent: overrides live
    /// in memory only.
    #[serde(default)]
    pub overrides_file: Option<PathBuf>,
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

fn default_listeners() -> Vec<ListenerConfig> {
    vec![
        ListenerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 1143)),
            tls: TlsSetting::Starttls,
            proxy_protocol: false,
            allow_plaintext_auth: false,
        },
        ListenerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 1993)),
            tls: TlsSetting::Implicit,
            proxy_protocol: false,
            allow_plaintext_auth: false,
        },
    ]
}

fn default_backends() -> Vec<BackendConfig> {
    vec![BackendConfig {
        name: "local".into(),
        addr: "127.0.0.1:143".into(),
        tls: TlsSetting::None,
        weight: 1,
        max_connections: default_max_connections(),
        ca_file: None,
        server_name: None,
        tls_insecure_skip_verify: false,
        connect_timeout: default_connect_timeout(),
        proxy_protocol: false,
    }]
}

fn yes() -> bool {
    true
}
fn two() -> u32 {
    2
}
fn one() -> u32 {
    1
}
fn default_max_connections() -> u32 {
    500
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_strategy() -> String {
    "round-robin".into()
}
fn default_redis_hash() -> String {
    "imapproxy:users".into()
}
fn default_directory_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_directory_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_pool_idle() -> Duration {
    Duration::from_secs(60)
}
/// Across all of a user's addresses. Dovecot limits sessions per user *and* address (10 by
/// default, `mail_max_userip_connections`) and sees the real client address (the proxy sends
/// `ID x-originating-ip`), so for people the backend's limit is the one that applies: 50
/// covers Thunderbird (up to 5 connections) on several computers, phones, tablets and a
/// mailbox shared by a team. Worker fleets set this to the backend's limit instead, so that
/// a burst queues at the proxy rather than failing at the backend.
fn default_max_per_user() -> u32 {
    50
}
fn default_wait() -> Duration {
    Duration::from_secs(10)
}
/// Five minutes: the backend checks a password only at login, so this bounds how long a
/// disabled account or a changed password keeps working through the cache, while a fresh
/// backend login costs a few milliseconds once every five minutes per busy user.
fn default_pool_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_health_threshold() -> u32 {
    2
}
fn default_trusted() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}
fn default_max_failures() -> u32 {
    5
}
fn default_max_failures_per_ip() -> u32 {
    20
}
fn default_failure_window() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_block_duration() -> Duration {
    Duration::from_secs(15 * 60)
}
/// Generous, because one address is often many people: an office or school behind one NAT
/// address (Thunderbird alone opens up to 5 connections per account, phones 2–3 more), a
/// carrier-grade NAT, a webmail server. 1000 lets an office of about 150 people in; the
/// limit only stops one address from taking a large share of `max_connections`.
fn default_max_connections_per_ip() -> u32 {
    1000
}
/// Also the burst. An office's mail programs start together at 9 am, and all of them
/// reconnect at once after a network glitch or a restart of the proxy; 100 per second brings
/// even the 1000 connections of `max_connections_per_ip` back in about ten seconds (clients
/// retry) while still bounding the TLS handshakes one address can demand.
fn default_max_new_connections_per_ip_per_sec() -> u32 {
    100
}
fn default_max_client_connections() -> usize {
    10_000
}
fn default_true() -> bool {
    true
}
fn default_park_after() -> Duration {
    Duration::from_secs(2)
}
fn default_max_concurrent_rehomes() -> usize {
    64
}
fn default_rehome_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_greeting() -> String {
    "IMAP proxy ready.".into()
}
fn default_preauth_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_auth_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_tls_handshake() -> Duration {
    Duration::from_secs(10)
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_log_format() -> String {
    "text".into()
}
fn default_log_level() -> String {
    "info".into()
}

/// Reads the configuration: the file (if any, which must exist), then `IMAPPROXY_…`
/// environment variables (`__` separates levels: `IMAPPROXY_SESSION__GREETING=hi`).
pub fn load(path: Option<&Path>) -> Result<Config, Box<figment::Error>> {
    let mut fig = Figment::new();
    if let Some(path) = path {
        if !path.is_file() {
            return Err(Box::new(figment::Error::from(format!(
                "configuration file {} does not exist",
                path.display()
            ))));
        }
        // `file_exact`: `Toml::file` searches parent directories and silently yields nothing
        // when the file is missing.
        fig = fig.merge(Toml::file_exact(path));
    }
    fig = fig.merge(Env::prefixed("IMAPPROXY_").split("__").ignore(&["config"]));
    fig.extract().map_err(Box::new)
}

/// A file given to a reload (SIGHUP) must name its backends and listeners itself: an empty or
/// truncated file would otherwise parse into the built-in defaults (one backend on
/// 127.0.0.1:143) and silently replace every real backend.
pub fn check_complete(path: &Path) -> Result<(), String> {
    let fig = Figment::from(Toml::file_exact(path));
    for key in ["backends", "listeners"] {
        let named = fig
            .find_value(key)
            .ok()
            .and_then(|v| v.into_array())
            .is_some_and(|a| !a.is_empty());
        if !named {
            return Err(format!(
                "{} names no [[{key}]]: refusing to fall back to the built-in defaults",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_needs_backends_and_listeners_named() {
        let dir = std::env::temp_dir().join(format!("imapproxy-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        for (text, ok) in [
            ("", false),
            ("[pool]\nreuse = true\n", false),
            (
                "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
                false,
            ),
            (
                "[[listeners]]\naddr = \"127.0.0.1:1\"\n[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n",
                true,
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(check_complete(&path).is_ok(), ok, "{text:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn parse(toml: &str) -> Result<Config, Box<figment::Error>> {
        Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .map_err(Box::new)
    }

    #[test]
    fn design_example_parses() {
        let cfg = parse(
            r#"
[[listeners]]
addr = "127.0.0.1:1143"
tls = "starttls"
proxy_protocol = false
allow_plaintext_auth = false

[[listeners]]
addr = "127.0.0.1:1993"
tls = "implicit"

[tls]
cert = "cert.pem"
key = "key.pem"

[[backends]]
name = "mail1"
addr = "127.0.0.1:10143"
tls = "none"
weight = 1
max_connections = 500

[routing]
strategy = "hash"

[pool]
reuse = true
warm = 2
idle_timeout = "60s"
max_per_user = 8
wait_timeout = "10s"
max_age = "5m"

[health]
interval = "2s"

[limits]
trusted_networks = ["127.0.0.0/8"]

[admin]
addr = "127.0.0.1:8143"
"#,
        )
        .unwrap();
        assert_eq!(cfg.listeners.len(), 2);
        assert_eq!(cfg.listeners[1].tls, TlsSetting::Implicit);
        assert_eq!(cfg.backends[0].name, "mail1");
        assert_eq!(cfg.pool.idle_timeout, Duration::from_secs(60));
        assert_eq!(cfg.pool.max_age, Duration::from_secs(300));
        assert_eq!(cfg.health.interval, Duration::from_secs(2));
        assert_eq!(cfg.health.timeout, Duration::from_secs(2));
        assert_eq!((cfg.health.rise, cfg.health.fall), (2, 2));
    }

    #[test]
    fn health_thresholds_and_timeout_are_read() {
        let cfg = parse("[health]\ninterval = \"500ms\"\ntimeout = \"1s\"\nrise = 3\nfall = 1\n")
            .unwrap();
        assert_eq!(cfg.health.interval, Duration::from_millis(500));
        assert_eq!(cfg.health.timeout, Duration::from_secs(1));
        assert_eq!((cfg.health.rise, cfg.health.fall), (3, 1));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = parse("[pool]\nreuse = true\nwram = 2\n").unwrap_err();
        assert!(err.to_string().contains("wram"), "{err}");
    }

    #[test]
    fn empty_config_gives_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.listeners.len(), 2);
        assert_eq!(cfg.backends[0].addr, "127.0.0.1:143");
        assert_eq!(cfg.session.preauth_timeout, Duration::from_secs(60));
        assert_eq!(cfg.session.auth_timeout, Duration::from_secs(1800));
    }

    #[test]
    fn routing_keys_parse() {
        let cfg =
            parse("[routing]\nstrategy = \"p2c\"\nmap = \"/etc/imapproxy/users.map\"\n").unwrap();
        assert_eq!(cfg.routing.strategy, "p2c");
        assert_eq!(
            cfg.routing.map.as_deref(),
            Some(Path::new("/etc/imapproxy/users.map"))
        );
        let defaults = parse("").unwrap();
        assert_eq!(defaults.routing.strategy, "round-robin");
        assert!(defaults.routing.map.is_none());
        assert_eq!(defaults.routing.redis_hash, "imapproxy:users");
        assert_eq!(defaults.routing.directory_timeout, Duration::from_secs(2));
        let cfg = parse(
            "[routing]\ndirectory = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/\"\n\
             directory_ttl = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(cfg.routing.directory.as_deref(), Some("redis"));
        assert_eq!(cfg.routing.directory_ttl, Duration::from_secs(5));
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load(Some(Path::new("/nonexistent/imapproxy.toml"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
