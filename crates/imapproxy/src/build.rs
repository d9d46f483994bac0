//! Turning the configuration into the library crates' plain settings.

use std::collections::HashMap;
use std::sync::Arc;

use imapproxy_pool::{BackendTarget, Credentials, ImapCheck, PoolSettings, Secret};
use imapproxy_route::{
    Backend, BackendId, CachedDirectory, Directory, HealthMonitor, HealthSettings,
    HttpAuthDirectory, LeastConnections, PowerOfTwoChoices, RedisDirectory, Registry,
    RendezvousHash, RoundRobin, Selector, StaticMap, WeightedRoundRobin,
};
use imapproxy_session::{
    ConnectionLimitSettings, ImapHealthCheck, LimitSettings, ListenerSettings,
    ProxyProtocolSettings, SessionSettings, ThrottleSettings, TrustedNetworks, Upstreams,
};
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
        for net in &cfg.limits.trusted_networks {
            parse_cidr(net).ok_or_else(|| {
                format!("[limits] trusted_networks: {net:?} is not an address/prefix")
            })?;
        }
        let trusted = TrustedNetworks::parse(&cfg.limits.trusted_networks)
            .map_err(|e| format!("[limits] trusted_networks: {e}"))?;
        let limits = limit_settings(&cfg.limits, &trusted)?;
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
            ..PoolSettings::default()
        };
        let probe = match (&cfg.health.probe_user, &cfg.health.probe_password) {
            (Some(user), Some(password)) => Some(Credentials {
                username: user.clone(),
                password: Secret::new(password.clone().into_bytes()),
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

/// The `[routing] directory` names, as accepted in the file.
pub const DIRECTORIES: [&str; 3] = ["static", "http", "redis"];

/// Builds the user directory named by `[routing] directory` (checking URLs and the map),
/// remote ones wrapped in a [`CachedDirectory`] with `directory_ttl` and `directory_timeout`.
fn directory_for(
    routing: &crate::config::RoutingConfig,
    registry: &Registry,
) -> Result<Option<Arc<dyn Directory>>, String> {
    let kind = match routing.directory.as_deref() {
        Some(kind) => kind,
        None if routing.map.is_some() => "static",
        None => return Ok(None),
    };
    let cached = |inner: Arc<dyn Directory>| {
        CachedDirectory::new(inner, routing.directory_ttl, routing.directory_timeout)
    };
    match kind {
        "static" => {
            let path = routing
                .map
                .as_ref()
                .ok_or("[routing] directory = \"static\" needs map = \"<file>\"")?;
            let map = StaticMap::from_path(path)
                .map_err(|e| format!("[routing] map {}: {e}", path.display()))?;
            map.validate(registry).map_err(|e| {
                format!(
                    "[routing] map {}: {e} (not among [[backends]])",
                    path.display()
                )
            })?;
            // In memory: the TTL cache and timeout matter for remote directories, not here.
            Ok(Some(Arc::new(map)))
        }
        "http" => {
            let url = routing
                .http_url
                .as_deref()
                .ok_or("[routing] directory = \"http\" needs http_url = \"http://...\"")?;
            let http = HttpAuthDirectory::new(url)
                .map_err(|e| format!("[routing] http_url: {e}"))?
                .with_backends(registry.iter().map(|(b, _)| b));
            // The service authenticates: cache per user and password, so that a wrong
            // password always gets the service's own refusal.
            Ok(Some(Arc::new(cached(Arc::new(http)).keyed_by_password())))
        }
        "redis" => {
            let url = routing
                .redis_url
                .as_deref()
                .ok_or("[routing] directory = \"redis\" needs redis_url = \"redis://...\"")?;
            let redis = RedisDirectory::new(url, routing.redis_hash.clone())
                .map_err(|e| format!("[routing] redis_url/redis_hash: {e}"))?
                .with_timeout(routing.directory_timeout);
            Ok(Some(Arc::new(cached(Arc::new(redis)))))
        }
        other => Err(format!(
            "[routing] directory {other:?} is unknown; use one of {}",
            DIRECTORIES.map(|d| format!("{d:?}")).join(", ")
        )),
    }
}

/// The `[routing] strategy` names, as accepted in the file.
pub const STRATEGIES: [&str; 6] = [
    "round-robin",
    "least-connections",
    "weighted",
    "p2c",
    "hash",
    "static",
];

/// `strategy = "static"`: only the directory decides (a mailbox lives on the server the map
/// names, and nowhere else); a user it does not know, or whose server is down, gets
/// `NO [UNAVAILABLE]` instead of landing on a server without the mailbox.
struct DirectoryOnly;

impl Selector for DirectoryOnly {
    fn select(&self, _registry: &Registry, _req: &imapproxy_route::Request<'_>) -> Vec<BackendId> {
        Vec::new()
    }
}

/// Builds the selector named by `[routing] strategy`.
pub fn selector_for(strategy: &str) -> Result<Arc<dyn Selector>, String> {
    Ok(match strategy {
        "round-robin" => Arc::new(RoundRobin::new()),
        "least-connections" => Arc::new(LeastConnections::new()),
        "weighted" => Arc::new(WeightedRoundRobin::new()),
        "p2c" => Arc::new(PowerOfTwoChoices::new()),
        "hash" => Arc::new(RendezvousHash::new()),
        "static" => Arc::new(DirectoryOnly),
        other => {
            let names: Vec<String> = STRATEGIES.iter().map(|s| format!("{s:?}")).collect();
            return Err(format!(
                "[routing] strategy {other:?} is unknown; use one of {}",
                names.join(", ")
            ));
        }
    })
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

/// `[limits]` beyond `trusted_networks`: login throttling and connection limits, both
/// exempting the trusted networks (the global connection cap still counts them).
fn limit_settings(
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

#[cfg(test)]
mod tests {
    use super::{STRATEGIES, parse_cidr, selector_for};
    use imapproxy_route::{Backend, Health, Registry, Request};

    fn registry() -> Registry {
        Registry::new(vec![
            Backend::new("a", "127.0.0.1:1").with_weight(3),
            Backend::new("b", "127.0.0.1:2"),
            Backend::new("c", "127.0.0.1:3").with_weight(0),
        ])
        .unwrap()
    }

    fn firsts(strategy: &str, user: &str, n: usize) -> Vec<String> {
        let registry = registry();
        let selector = selector_for(strategy).unwrap();
        (0..n)
            .map(|_| {
                let candidates = selector.select(&registry, &Request::new(user));
                // Every strategy lists every healthy backend, so callers can fall through.
                assert_eq!(candidates.len(), 3, "{strategy}");
                candidates[0].to_string()
            })
            .collect()
    }

    #[test]
    fn round_robin_strategy_rotates() {
        assert_eq!(firsts("round-robin", "u", 4), ["a", "b", "c", "a"]);
    }

    #[test]
    fn least_connections_strategy_prefers_the_idle() {
        let registry = registry();
        let _busy = registry.state("a").unwrap().session_started();
        let selector = selector_for("least-connections").unwrap();
        let candidates = selector.select(&registry, &Request::new("u"));
        assert_eq!(candidates.last().unwrap().as_str(), "a");
    }

    #[test]
    fn weighted_strategy_follows_weights() {
        assert_eq!(firsts("weighted", "u", 4), ["a", "a", "b", "a"]);
    }

    #[test]
    fn p2c_strategy_skips_unhealthy() {
        let registry = registry();
        registry.set_health("b", Health::Down).unwrap();
        let selector = selector_for("p2c").unwrap();
        let candidates = selector.select(&registry, &Request::new("u"));
        assert_eq!(candidates.len(), 2);
        assert!(candidates.iter().all(|id| id.as_str() != "b"));
    }

    #[test]
    fn hash_strategy_is_stable_per_user() {
        let seq = firsts("hash", "alice@example.org", 5);
        assert!(seq.iter().all(|first| *first == seq[0]));
        assert_eq!(
            selector_for("hash")
                .unwrap()
                .select(&registry(), &Request::new("alice@example.org"))[0]
                .as_str(),
            seq[0]
        );
    }

    #[test]
    fn routing_map_is_loaded_and_checked_against_backends() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.map");
        std::fs::write(&good, "alice mail1\n* mail1\n").unwrap();
        let unknown = dir.path().join("unknown.map");
        std::fs::write(&unknown, "alice mail9\n").unwrap();
        let broken = dir.path().join("broken.map");
        std::fs::write(&broken, "alice\n").unwrap();
        let build = |map: &std::path::Path| {
            let toml = format!(
                "[[listeners]]\naddr = \"127.0.0.1:1143\"\n\
                 [[backends]]\nname = \"mail1\"\naddr = \"127.0.0.1:10143\"\n\
                 [routing]\nstrategy = \"hash\"\nmap = {:?}\n",
                map.display().to_string()
            );
            let cfg: crate::config::Config = figment::Figment::new()
                .merge(<figment::providers::Toml as figment::providers::Format>::string(&toml))
                .extract()
                .unwrap();
            super::Built::from_config(&cfg).err()
        };
        assert_eq!(build(&good), None);
        let err = build(&unknown).unwrap();
        assert!(err.contains("mail9"), "{err}");
        let err = build(&broken).unwrap();
        assert!(err.contains("line 1"), "{err}");
        let err = build(&dir.path().join("missing.map")).unwrap();
        assert!(err.contains("missing.map"), "{err}");
    }

    #[test]
    fn remote_directories_are_built_and_urls_checked() {
        let build = |routing: &str| {
            let toml = format!(
                "[[listeners]]\naddr = \"127.0.0.1:1143\"\n\
                 [[backends]]\nname = \"mail1\"\naddr = \"127.0.0.1:10143\"\n\
                 [routing]\n{routing}\n"
            );
            let cfg: crate::config::Config = figment::Figment::new()
                .merge(<figment::providers::Toml as figment::providers::Format>::string(&toml))
                .extract()
                .unwrap();
            super::Built::from_config(&cfg).map(|b| b.upstreams.directory.is_some())
        };
        assert_eq!(build(""), Ok(false));
        assert_eq!(
            build("directory = \"http\"\nhttp_url = \"http://127.0.0.1:9000/auth\""),
            Ok(true)
        );
        assert_eq!(
            build("directory = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/\""),
            Ok(true)
        );
        for (routing, says) in [
            ("directory = \"http\"", "http_url"),
            (
                "directory = \"http\"\nhttp_url = \"https://a/\"",
                "http_url",
            ),
            (
                "directory = \"redis\"\nredis_url = \"http://a/\"",
                "redis_url",
            ),
            ("directory = \"static\"", "map"),
            ("directory = \"ldap\"", "\"redis\""),
        ] {
            let err = build(routing).unwrap_err();
            assert!(err.contains(says), "{routing}: {err}");
        }
    }

    #[test]
    fn unknown_strategy_lists_the_options() {
        let Err(err) = selector_for("random") else {
            panic!("accepted an unknown strategy");
        };
        assert!(err.contains("\"random\""), "{err}");
        for name in STRATEGIES {
            assert!(err.contains(&format!("{name:?}")), "{err}");
            assert!(selector_for(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn static_strategy_leaves_routing_to_the_directory() {
        let selector = selector_for("static").unwrap();
        assert!(selector.select(&registry(), &Request::new("u")).is_empty());
        let cfg: crate::config::Config = figment::Figment::new()
            .merge(<figment::providers::Toml as figment::providers::Format>::string(
                "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n[routing]\nstrategy = \"static\"\n",
            ))
            .extract()
            .unwrap();
        let Err(err) = super::Built::from_config(&cfg) else {
            panic!("static without a directory was accepted");
        };
        assert!(err.contains("needs a directory"), "{err}");
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr("127.0.0.0/8").map(|c| c.1), Some(8));
        assert_eq!(parse_cidr("::1").map(|c| c.1), Some(128));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("localhost").is_none());
    }
}

#[cfg(test)]
mod proxy_protocol_tests {
    use figment::Figment;
    use figment::providers::{Format, Toml};

    use super::Built;
    use crate::config::Config;

    fn build(toml: &str) -> Result<Built, String> {
        let cfg: Config = Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| e.to_string())?;
        Built::from_config(&cfg)
    }

    #[test]
    fn proxy_protocol_listener_and_backend() {
        let built = build(
            r#"
[[listeners]]
addr = "127.0.0.1:1143"
tls = "none"
proxy_protocol = true

[[listeners]]
addr = "127.0.0.1:1144"
tls = "none"

[[backends]]
name = "mail1"
addr = "127.0.0.1:10143"
proxy_protocol = true

[limits]
trusted_networks = ["10.0.0.0/8"]
"#,
        )
        .unwrap();
        let pp = &built.settings.proxy_protocol;
        assert!(pp.expects_header("127.0.0.1:1143".parse().unwrap()));
        assert!(!pp.expects_header("127.0.0.1:1144".parse().unwrap()));
        assert!(pp.trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(!pp.trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(built.upstreams.targets.values().all(|t| t.proxy_protocol));
    }
}

#[cfg(test)]
mod limits_tests {
    use std::time::Duration;

    use figment::Figment;
    use figment::providers::{Format, Toml};

    use super::Built;
    use crate::config::Config;

    const BASE: &str = r#"
[[listeners]]
addr = "127.0.0.1:1143"
tls = "none"

[[backends]]
name = "mail1"
addr = "127.0.0.1:10143"
"#;

    fn build(limits: &str) -> Result<Built, String> {
        let cfg: Config = Figment::new()
            .merge(Toml::string(&format!("{BASE}\n[limits]\n{limits}")))
            .extract()
            .map_err(|e| e.to_string())?;
        Built::from_config(&cfg)
    }

    #[test]
    fn limits_have_public_server_defaults() {
        let l = build("").unwrap().settings.limits;
        assert_eq!(l.throttle.max_failures, 5);
        assert_eq!(l.throttle.max_failures_per_ip, 20);
        assert_eq!(l.throttle.failure_window, Duration::from_secs(300));
        assert_eq!(l.throttle.block_duration, Duration::from_secs(900));
        assert!(l.throttle.trusted.contains("127.0.0.1".parse().unwrap()));
        assert_eq!(l.connections.max_connections, 10_000);
        assert_eq!(l.connections.max_connections_per_ip, 1000);
        assert_eq!(l.connections.max_new_connections_per_ip_per_sec, 100);
    }

    #[test]
    fn limits_keys_are_read() {
        let l = build(
            r#"
trusted_networks = ["10.0.0.0/8"]
max_failures = 3
max_failures_per_ip = 7
failure_window = "1m"
block_duration = "2s"
max_connections_per_ip = 4
max_new_connections_per_ip_per_sec = 2
max_connections = 100
"#,
        )
        .unwrap()
        .settings
        .limits;
        assert_eq!(l.throttle.max_failures, 3);
        assert_eq!(l.throttle.max_failures_per_ip, 7);
        assert_eq!(l.throttle.failure_window, Duration::from_secs(60));
        assert_eq!(l.throttle.block_duration, Duration::from_secs(2));
        assert!(!l.throttle.trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(l.connections.trusted.contains("10.9.9.9".parse().unwrap()));
        assert_eq!(l.connections.max_connections, 100);
        assert_eq!(l.connections.max_connections_per_ip, 4);
        assert_eq!(l.connections.max_new_connections_per_ip_per_sec, 2);
    }

    #[test]
    fn zero_block_duration_is_refused() {
        let e = build("block_duration = \"0s\"").err().unwrap();
        assert!(e.contains("block_duration"), "{e}");
        assert!(build("max_failures = 0\nblock_duration = \"0s\"").is_ok());
    }
}
