//! Building settings from configuration files.

mod routing {
    use crate::build::routing::{STRATEGIES, selector_for};
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
            crate::build::Built::from_config(&cfg).err()
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
            crate::build::Built::from_config(&cfg).map(|b| b.upstreams.directory.is_some())
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
        let Err(err) = crate::build::Built::from_config(&cfg) else {
            panic!("static without a directory was accepted");
        };
        assert!(err.contains("needs a directory"), "{err}");
    }
}

mod proxy_protocol {
    use figment::Figment;
    use figment::providers::{Format, Toml};

    use crate::build::Built;
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

mod limits {
    use std::time::Duration;

    use figment::Figment;
    use figment::providers::{Format, Toml};

    use crate::build::Built;
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
    fn failure_delays_are_read() {
        let t = build("free_failures = 1\nfailure_delay = \"20ms\"\nmax_failure_delay = \"1s\"")
            .unwrap()
            .settings
            .limits
            .throttle;
        assert_eq!(
            (t.free_failures, t.base_delay, t.max_delay),
            (1, Duration::from_millis(20), Duration::from_secs(1))
        );
    }

    /// `[fleet]` is checked by `imapproxy check` too, without connecting.
    #[test]
    fn fleet_settings_are_checked() {
        let with = |fleet: &str| {
            let cfg: Config = Figment::new()
                .merge(Toml::string(&format!("{BASE}\n[fleet]\n{fleet}")))
                .extract()
                .map_err(|e| e.to_string())?;
            Built::from_config(&cfg).map(drop)
        };
        assert!(with("").is_ok());
        assert!(with("redis_url = \"redis://127.0.0.1:1/\"").is_ok());
        let e = with("redis_url = \"nonsense://:hunter2@x/\"").unwrap_err();
        assert!(
            e.contains("[fleet] redis_url") && !e.contains("hunter2"),
            "{e}"
        );
        let e = with("redis_url = \"redis://127.0.0.1:1/\"\ntimeout = \"0s\"").unwrap_err();
        assert!(e.contains("timeout"), "{e}");
        assert!(with("sentinels = [\"redis://127.0.0.1:1/\"]").is_ok());
    }

    #[test]
    fn zero_block_duration_is_refused() {
        let e = build("block_duration = \"0s\"").err().unwrap();
        assert!(e.contains("block_duration"), "{e}");
        assert!(build("max_failures = 0\nblock_duration = \"0s\"").is_ok());
    }
}
