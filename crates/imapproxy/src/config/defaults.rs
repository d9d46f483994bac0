//! The built-in defaults of the configuration keys, one function each (serde's `default = …`).

use std::net::SocketAddr;
use std::time::Duration;

use super::{BackendConfig, ListenerConfig, TlsSetting};

pub(super) fn default_listeners() -> Vec<ListenerConfig> {
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

pub(super) fn default_backends() -> Vec<BackendConfig> {
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
        greeting_timeout: default_greeting_timeout(),
        login_timeout: default_login_timeout(),
        proxy_protocol: false,
    }]
}

pub(super) fn yes() -> bool {
    true
}
pub(super) fn two() -> u32 {
    2
}
pub(super) fn one() -> u32 {
    1
}
pub(super) fn default_max_connections() -> u32 {
    500
}
pub(super) fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn default_strategy() -> String {
    "round-robin".into()
}
pub(super) fn default_redis_hash() -> String {
    "imapproxy:users".into()
}
pub(super) fn default_directory_ttl() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_directory_timeout() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn default_pool_idle() -> Duration {
    Duration::from_secs(60)
}
/// Across all of a user's addresses. Dovecot limits sessions per user *and* address (10 by
/// default, `mail_max_userip_connections`) and sees the real client address (the proxy sends
/// `ID x-originating-ip`), so for people the backend's limit is the one that applies: 50
/// covers Thunderbird (up to 5 connections) on several computers, phones, tablets and a
/// mailbox shared by a team. Worker fleets set this to the backend's limit instead, so that
/// a burst queues at the proxy rather than failing at the backend.
pub(super) fn default_max_per_user() -> u32 {
    50
}
pub(super) fn default_wait() -> Duration {
    Duration::from_secs(10)
}
/// Five minutes: the backend checks a password only at login, so this bounds how long a
/// disabled account or a changed password keeps working through the cache, while a fresh
/// backend login costs a few milliseconds once every five minutes per busy user.
pub(super) fn default_pool_max_age() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn default_health_threshold() -> u32 {
    2
}
pub(super) fn default_trusted() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}
pub(super) fn default_max_failures() -> u32 {
    5
}
pub(super) fn default_max_failures_per_ip() -> u32 {
    20
}
pub(super) fn default_failure_window() -> Duration {
    Duration::from_secs(5 * 60)
}
pub(super) fn default_block_duration() -> Duration {
    Duration::from_secs(15 * 60)
}
/// Generous, because one address is often many people: an office or school behind one NAT
/// address (Thunderbird alone opens up to 5 connections per account, phones 2–3 more), a
/// carrier-grade NAT, a webmail server. 1000 lets an office of about 150 people in; the
/// limit only stops one address from taking a large share of `max_connections`.
pub(super) fn default_max_connections_per_ip() -> u32 {
    1000
}
/// Also the burst. An office's mail programs start together at 9 am, and all of them
/// reconnect at once after a network glitch or a restart of the proxy; 100 per second brings
/// even the 1000 connections of `max_connections_per_ip` back in about ten seconds (clients
/// retry) while still bounding the TLS handshakes one address can demand.
pub(super) fn default_max_new_connections_per_ip_per_sec() -> u32 {
    100
}
pub(super) fn default_max_client_connections() -> usize {
    10_000
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_park_after() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn default_max_concurrent_rehomes() -> usize {
    64
}
pub(super) fn default_rehome_timeout() -> Duration {
    Duration::from_secs(15)
}
pub(super) fn default_greeting() -> String {
    "IMAP proxy ready.".into()
}
pub(super) fn default_preauth_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_auth_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}
pub(super) fn default_tls_handshake() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_grace() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_log_format() -> String {
    "text".into()
}
pub(super) fn default_log_level() -> String {
    "info".into()
}
pub(super) fn default_max_unproven_logins_per_user() -> u32 {
    4
}
pub(super) fn default_login_queue_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_greeting_timeout() -> Duration {
    imapproxy_pool::BackendTarget::plain("").greeting_timeout
}
pub(super) fn default_login_timeout() -> Duration {
    imapproxy_pool::BackendTarget::plain("").login_timeout
}
pub(super) fn default_noop_after() -> Duration {
    imapproxy_pool::PoolSettings::default().noop_after
}
pub(super) fn default_liveness_timeout() -> Duration {
    imapproxy_pool::PoolSettings::default().liveness_timeout
}
