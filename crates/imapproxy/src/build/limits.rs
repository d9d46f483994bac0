//! `[limits]`: login throttling and connection limits.

use imapproxy_session::{
    ConnectionLimitSettings, LimitSettings, ThrottleSettings, TrustedNetworks,
};

/// `[limits]` beyond `trusted_networks`: login throttling and connection limits, both
/// exempting the trusted networks (the global connection cap still counts them).
pub(super) fn limit_settings(
    cfg: &crate::config::LimitsConfig,
    trusted: &TrustedNetworks,
) -> Result<LimitSettings, String> {
    if cfg.max_failures > 0 && (cfg.failure_window.is_zero() || cfg.block_duration.is_zero()) {
        return Err("[limits] failure_window and block_duration must be positive".into());
    }
    Ok(LimitSettings {
        throttle: ThrottleSettings {
            max_failures: cfg.max_failures,
            max_failures_per_ip: cfg.max_failures_per_ip,
            failure_window: cfg.failure_window,
            block_duration: cfg.block_duration,
            trusted: trusted.clone(),
            max_unproven_per_user: cfg.max_unproven_logins_per_user,
            queue_timeout: cfg.login_queue_timeout,
            free_failures: cfg.free_failures,
            base_delay: cfg.failure_delay,
            max_delay: cfg.max_failure_delay.max(cfg.failure_delay),
            ..ThrottleSettings::default()
        },
        connections: ConnectionLimitSettings {
            max_connections: cfg.max_connections,
            max_connections_per_ip: cfg.max_connections_per_ip,
            max_new_connections_per_ip_per_sec: cfg.max_new_connections_per_ip_per_sec,
            trusted: trusted.clone(),
            ..ConnectionLimitSettings::default()
        },
    })
}
