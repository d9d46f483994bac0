//! The configuration file (TOML through figment, `IMAPPROXY_…` environment overrides).
//!
//! Key names are a contract shared with the README, the examples and operators' files: add
//! keys freely, never rename or drop one.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

mod defaults;
mod sections;
mod server;
#[cfg(test)]
mod tests;

pub use sections::*;
pub use server::ServerConfig;

use defaults::{default_backends, default_listeners};

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
    /// Fleet mode: state shared with other proxies through Redis.
    #[serde(default)]
    pub fleet: FleetConfig,
    /// The process: runtime worker threads.
    #[serde(default)]
    pub server: ServerConfig,
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

/// A secret in the configuration (a token, a password, a URL that may carry one): read like
/// a string, zeroed when dropped, and never shown by `Debug`, so that printing a `Config`
/// (logs, panics, `imapproxy check`) cannot leak it.
#[derive(Clone)]
pub struct Secret(imapproxy_codec::Secret<String>);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(imapproxy_codec::Secret::new(value.into()))
    }

    /// The secret itself. Do not log it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

impl AdminConfig {
    /// The admin token: `token`, or the contents of `token_file`. Refuses both at once, an
    /// unreadable or empty file, and a non-loopback `addr` without a token (anyone on the
    /// network could then drain backends and read who is logged in).
    pub fn resolve_token(&self) -> Result<Option<Secret>, String> {
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err("[admin] token and token_file: set one, not both".into());
            }
            (Some(token), None) => Some(token.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("[admin] token_file {}: {e}", path.display()))?;
                let token = Secret::new(text.trim());
                if token.expose().is_empty() {
                    return Err(format!("[admin] token_file {} is empty", path.display()));
                }
                Some(token)
            }
            (None, None) => None,
        };
        if token.as_ref().is_some_and(|t| t.expose().is_empty()) {
            return Err("[admin] token is empty".into());
        }
        if let Some(addr) = self.addr
            && !addr.ip().is_loopback()
            && token.is_none()
        {
            return Err(format!(
                "[admin] addr {addr} is not a loopback address: set token or token_file"
            ));
        }
        Ok(token)
    }
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
    // Not settings: `IMAPPROXY_CONFIG` (the file, read by the command line) and
    // `IMAPPROXY_HEAP_COMPACTED` (the marker of `heap.rs`).
    fig = fig.merge(
        Env::prefixed("IMAPPROXY_")
            .split("__")
            .ignore(&["config", "heap_compacted"]),
    );
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
