//! Turning the configuration into the library crates' plain settings.

use std::collections::HashMap;
use std::sync::Arc;

use imapproxy_pool::{BackendTarget, Credentials, ImapCheck, PoolSettings, Secret};
use imapproxy_route::{Backend, BackendId, HealthMonitor, HealthSettings, Registry};
use imapproxy_session::{
    ImapHealthCheck, ListenerSettings, ProxyProtocolSettings, SessionSettings, TrustedNetworks,
    Upstreams,
};
use imapproxy_tls::{BackendTls, BackendVerify, DEFAULT_SELF_SIGNED_NAMES, ServerTls, TlsMode};

use crate::config::{Config, TlsSetting};

mod limits;
mod routing;
#[cfg(test)]
mod tests;

use limits::limit_settings;
use routing::{directory_for, selector_for};

/// Everything the server needs, built and validated.
pub struct Built {
    pub listeners: Vec<(std::net::SocketAddr, Arc<ListenerSettings>)>,
    pub settings: SessionSettings,
    pub pool: PoolSettings,
    pub upstreams: Upstreams,
    /// `[admin]`'s token, from the file or from `token_file`.
    pub admin_token: Option<crate::config::Secret>,
}

impl Built {
    pub fn from_config(cfg: &Config) -> Result<Self, String> {
        Self::from_config_reloading(cfg, None)
    }

    /// Like [`Built::from_config`], on a reload: the registry is rebuilt from `previous` so
    /// that backends which stay keep their health and session counts.
    pub fn from_config_reloading(
        cfg: &Config,
        previous: Option<&Registry>,
    ) -> Result<Self, String> {
        if cfg.listeners.is_empty() {
            return Err("no [[listeners]] configured".into());
        }
        if cfg.backends.is_empty() {
            return Err("no [[backends]] configured".into());
        }
        let trusted = TrustedNetworks::parse(&cfg.limits.trusted_networks)
            .map_err(|e| format!("[limits] trusted_networks: {e}"))?;
        let limits = limit_settings(&cfg.limits, &trusted)?;
        let admin_token = cfg.admin.resolve_token()?;
        crate::fleet::validate(&cfg.fleet)?;
        if cfg.health.interval.is_zero() || cfg.health.timeout.is_zero() {
            return Err("[health] interval and timeout must be positive".into());
        }
        if cfg.health.rise == 0 || cfg.health.fall == 0 {
            return Err("[health] rise and fall must be at least 1".into());
        }
        if cfg.health.probe_user.is_some() != cfg.health.probe_password.is_some() {
            return Err("[health] probe_user and probe_password go together".into());
        }
        if cfg.pool.max_per_user == 0
            || cfg.pool.idle_timeout.is_zero()
            || cfg.pool.wait_timeout.is_zero()
            || cfg.pool.liveness_timeout.is_zero()
        {
            return Err(
                "[pool] max_per_user, idle_timeout, wait_timeout and liveness_timeout must be \
                 positive"
                    .into(),
            );
        }
        if let Some(b) = cfg.backends.iter().find(|b| {
            b.connect_timeout.is_zero() || b.greeting_timeout.is_zero() || b.login_timeout.is_zero()
        }) {
            return Err(format!(
                "backend {:?}: connect_timeout, greeting_timeout and login_timeout must be positive",
                b.name
            ));
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
        let mut proxy_protocol = ProxyProtocolSettings {
            trusted,
            ..ProxyProtocolSettings::default()
        };
        for l in &cfg.listeners {
            if l.proxy_protocol {
                proxy_protocol.listeners.push(l.addr);
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
            target.greeting_timeout = b.greeting_timeout;
            target.login_timeout = b.login_timeout;
            target.proxy_protocol = b.proxy_protocol;
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
        let registry = match previous {
            Some(old) => old.reload(backends),
            None => Registry::new(backends),
        }
        .map_err(|e| e.to_string())?;
        let selector = selector_for(&cfg.routing.strategy)?;
        let directory = directory_for(&cfg.routing, &registry)?;
        if cfg.routing.strategy == "static" && directory.is_none() {
            return Err(
                "[routing] strategy \"static\" needs a directory (map, or directory = http|redis)"
                    .into(),
            );
        }
        let settings = SessionSettings {
            greeting: cfg.session.greeting.clone(),
            preauth_timeout: cfg.session.preauth_timeout,
            auth_timeout: cfg.session.auth_timeout,
            tls_handshake_timeout: cfg.session.tls_handshake_timeout,
            drop_capabilities: cfg.session.drop_capabilities.clone(),
            rehome: cfg.session.rehome,
            max_concurrent_rehomes: cfg.session.max_concurrent_rehomes.max(1),
            rehome_timeout: cfg.session.rehome_timeout,
            park_after: Some(cfg.pool.park_after).filter(|d| !d.is_zero()),
            proxy_protocol,
            limits,
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
            max_age: cfg.pool.max_age,
            noop_after: cfg.pool.noop_after,
            liveness_timeout: cfg.pool.liveness_timeout,
            ..PoolSettings::default()
        };
        let probe = match (&cfg.health.probe_user, &cfg.health.probe_password) {
            (Some(user), Some(password)) => Some(Credentials {
                username: user.clone(),
                password: Secret::new(password.expose().as_bytes().to_vec()),
            }),
            _ => None,
        };
        let check = ImapHealthCheck::new(targets.clone(), ImapCheck { probe });
        let health = HealthMonitor::new(
            &registry,
            Arc::new(check),
            HealthSettings {
                interval: cfg.health.interval,
                timeout: cfg.health.timeout,
                rise: cfg.health.rise,
                fall: cfg.health.fall,
            },
        );
        Ok(Self {
            listeners,
            settings,
            pool,
            admin_token,
            upstreams: Upstreams {
                registry,
                selector,
                directory,
                targets,
                health: Some(Arc::new(health)),
            },
        })
    }
}
