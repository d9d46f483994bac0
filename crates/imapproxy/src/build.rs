//! Turning the configuration into the library crates' plain settings.

use std::collections::HashMap;
use std::sync::Arc;

use imapproxy_pool::{BackendTarget, PoolSettings};
use imapproxy_route::{Backend, BackendId, Registry, RoundRobin, Selector};
use imapproxy_session::{ListenerSettings, SessionSettings, Upstreams};
use imapproxy_tls::{BackendTls, BackendVerify, DEFAULT_SELF_SIGNED_NAMES, ServerTls, TlsMode};

use crate::config::{Config, TlsSetting};

/// Everything the server needs, built and validated.
pub struct Built {
    pub listeners: Vec<(std::net::SocketAddr, Arc<ListenerSettings>)>,
    pub settings: SessionSettings,
    pub pool: PoolSettings,
    pub upstreams: Upstreams,
}

impl Built {
    pub fn from_config(cfg: &Config) -> Result<Self, String> {
        if cfg.listeners.is_empty() {
            return Err("no [[listeners]] configured".into());
        }
        if cfg.backends.is_empty() {
            return Err("no [[backends]] configured".into());
        }
        for net in &cfg.limits.trusted_networks {
            parse_cidr(net).ok_or_else(|| {
                format!("[limits] trusted_networks: {net:?} is not an address/prefix")
            })?;
        }
        if cfg.health.interval.is_zero() {
            return Err("[health] interval must be positive".into());
        }
        if cfg.pool.max_per_user == 0
            || cfg.pool.idle_timeout.is_zero()
            || cfg.pool.wait_timeout.is_zero()
        {
            return Err(
                "[pool] max_per_user, idle_timeout and wait_timeout must be positive".into(),
            );
        }
        let needs_tls = cfg.listeners.iter().any(|l| l.tls != TlsSetting::None);
        let server_tls = match (&cfg.tls, needs_tls) {
            (_, false) => None,
            (Some(t), true) => Some(ServerTls::from_pem_files(&t.cert, &t.key).map_err(|e| {
                format!(
                    "[tls]: cannot load {} / {}: {e}",
                    t.cert.display(),
                    t.key.display()
                )
            })?),
            (None, true) => {
                let names: Vec<String> = DEFAULT_SELF_SIGNED_NAMES
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect();
                let (tls, _pem) = ServerTls::self_signed(&names)
                    .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
                Some(tls)
            }
        };
        let mut listeners = Vec::new();
        for l in &cfg.listeners {
            if l.proxy_protocol {
                return Err(format!(
                    "listener {}: proxy_protocol = true is not supported yet",
                    l.addr
                ));
            }
            let tls: TlsMode = l.tls.into();
            listeners.push((
                l.addr,
                Arc::new(ListenerSettings {
                    tls,
                    allow_plaintext_auth: l.allow_plaintext_auth,
                    server_tls: if tls == TlsMode::None {
                        None
                    } else {
                        server_tls.clone()
                    },
                }),
            ));
        }

        let mut backends = Vec::new();
        let mut targets = HashMap::new();
        for b in &cfg.backends {
            let id = BackendId::new(&b.name);
            if targets.contains_key(&id) {
                return Err(format!("backend name {:?} is used twice", b.name));
            }
            let mut target = BackendTarget::plain(b.addr.clone());
            target.tls = b.tls.into();
            target.connect_timeout = b.connect_timeout;
            if let Some(name) = &b.server_name {
                target.server_name = name.clone();
            }
            if b.tls != TlsSetting::None {
                let verify = if b.tls_insecure_skip_verify {
                    BackendVerify::Insecure
                } else if let Some(ca) = &b.ca_file {
                    BackendVerify::CaFile(ca.clone())
                } else {
                    BackendVerify::SystemRoots
                };
                target.tls_client = Some(
                    BackendTls::new(verify)
                        .map_err(|e| format!("backend {:?}: TLS setup: {e}", b.name))?,
                );
            }
            backends.push(
                Backend::new(id.clone(), b.addr.clone())
                    .with_weight(b.weight)
                    .with_max_connections(b.max_connections),
            );
            targets.insert(id, target);
        }
        let registry = Registry::new(backends).map_err(|e| e.to_string())?;
        let selector: Arc<dyn Selector> = match cfg.routing.strategy.as_str() {
            "round-robin" => Arc::new(RoundRobin::default()),
            other => {
                return Err(format!(
                    "[routing] strategy {other:?} is not supported by this version \
                     (supported: \"round-robin\")"
                ));
            }
        };
        let settings = SessionSettings {
            greeting: cfg.session.greeting.clone(),
            preauth_timeout: cfg.session.preauth_timeout,
            auth_timeout: cfg.session.auth_timeout,
            tls_handshake_timeout: cfg.session.tls_handshake_timeout,
            drop_capabilities: cfg.session.drop_capabilities.clone(),
            ..SessionSettings::default()
        };
        if settings.greeting.contains(['\r', '\n']) {
            return Err("[session] greeting must be one line".into());
        }
        let pool = PoolSettings {
            reuse: cfg.pool.reuse,
            warm: cfg.pool.warm as usize,
            idle_timeout: cfg.pool.idle_timeout,
            max_per_user: cfg.pool.max_per_user as usize,
            wait_timeout: cfg.pool.wait_timeout,
            ..PoolSettings::default()
        };
        Ok(Self {
            listeners,
            settings,
            pool,
            upstreams: Upstreams {
                registry,
                selector,
                targets,
            },
        })
    }
}

/// Parses `192.0.2.0/24`, `::1/128` or a bare address.
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

#[cfg(test)]
mod tests {
    use super::parse_cidr;

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr("127.0.0.0/8").map(|c| c.1), Some(8));
        assert_eq!(parse_cidr("::1").map(|c| c.1), Some(128));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("localhost").is_none());
    }
}
