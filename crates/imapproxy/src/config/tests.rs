//! Parsing of the configuration file.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};

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
    let cfg =
        parse("[health]\ninterval = \"500ms\"\ntimeout = \"1s\"\nrise = 3\nfall = 1\n").unwrap();
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
    let cfg = parse("[routing]\nstrategy = \"p2c\"\nmap = \"/etc/imapproxy/users.map\"\n").unwrap();
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

#[test]
fn secrets_never_show_in_debug() {
    let cfg = parse(
        "[admin]\ntoken = \"tok-SECRET-1\"\n\
         [health]\nprobe_user = \"probe\"\nprobe_password = \"pw-SECRET-2\"\n\
         [routing]\ndirectory = \"redis\"\nredis_url = \"redis://:pw-SECRET-3@127.0.0.1/\"\n",
    )
    .unwrap();
    let shown = format!("{cfg:?} {cfg:#?}");
    for secret in ["SECRET-1", "SECRET-2", "SECRET-3"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert_eq!(
        cfg.admin.token.as_ref().map(Secret::expose),
        Some("tok-SECRET-1")
    );
    assert_eq!(
        cfg.health.probe_password.as_ref().map(Secret::expose),
        Some("pw-SECRET-2")
    );
}

#[test]
fn deadlines_and_login_queue_keys_are_read() {
    let defaults = parse("").unwrap();
    assert!(defaults.backends[0].greeting_timeout <= Duration::from_secs(10));
    assert!(defaults.backends[0].login_timeout <= Duration::from_secs(15));
    assert!(defaults.pool.liveness_timeout <= Duration::from_secs(5));
    assert_eq!(defaults.limits.max_unproven_logins_per_user, 4);
    let cfg = parse(
        "[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\ngreeting_timeout = \"1s\"\n\
         login_timeout = \"3s\"\n\
         [pool]\nnoop_after = \"3s\"\nliveness_timeout = \"500ms\"\n\
         [limits]\nmax_unproven_logins_per_user = 2\nlogin_queue_timeout = \"4s\"\n",
    )
    .unwrap();
    assert_eq!(cfg.backends[0].greeting_timeout, Duration::from_secs(1));
    assert_eq!(cfg.backends[0].login_timeout, Duration::from_secs(3));
    assert_eq!(cfg.pool.noop_after, Duration::from_secs(3));
    assert_eq!(cfg.pool.liveness_timeout, Duration::from_millis(500));
    assert_eq!(cfg.limits.max_unproven_logins_per_user, 2);
    assert_eq!(cfg.limits.login_queue_timeout, Duration::from_secs(4));
}

#[test]
fn admin_token_from_a_file_and_required_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "  s3cret\n").unwrap();
    let admin = |text: &str| parse(&format!("[admin]\n{text}")).unwrap().admin;
    let from_file = admin(&format!("token_file = \"{}\"", file.display()))
        .resolve_token()
        .unwrap();
    assert_eq!(from_file.as_ref().map(Secret::expose), Some("s3cret"));
    let both = admin(&format!(
        "token = \"a\"\ntoken_file = \"{}\"",
        file.display()
    ));
    assert!(both.resolve_token().unwrap_err().contains("not both"));
    let open = admin("addr = \"0.0.0.0:8143\"");
    assert!(open.resolve_token().unwrap_err().contains("loopback"));
    let v6 = admin("addr = \"[::]:8143\"");
    assert!(v6.resolve_token().is_err());
    assert!(
        admin("addr = \"[::1]:8143\"")
            .resolve_token()
            .unwrap()
            .is_none()
    );
    std::fs::write(&file, "\n").unwrap();
    let empty = admin(&format!("token_file = \"{}\"", file.display()));
    assert!(empty.resolve_token().unwrap_err().contains("empty"));
}

#[test]
fn server_threads_default_to_all_cores_and_are_bounded() {
    use super::server::WorkerThreads;
    let cores = std::thread::available_parallelism().unwrap();
    assert_eq!(parse("").unwrap().server.threads, WorkerThreads::default());
    assert_eq!(parse("").unwrap().server.threads.resolve(), cores);
    let zero = parse("[server]\nthreads = 0\n").unwrap().server.threads;
    assert_eq!(zero.resolve(), cores);
    let two = parse("[server]\nthreads = 2\n").unwrap().server.threads;
    assert_eq!(two.resolve().get(), 2);
    let max = format!("[server]\nthreads = {}\n", WorkerThreads::MAX);
    assert_eq!(
        parse(&max).unwrap().server.threads.resolve().get(),
        WorkerThreads::MAX
    );
    for bad in ["threads = 1025", "threads = 100000000000", "threads = -1"] {
        let err = parse(&format!("[server]\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("threads"), "{bad}: {err}");
    }
    let err = parse("[server]\nthreads = 1025\n").unwrap_err().to_string();
    assert!(err.contains("at most 1024"), "{err}");
    let err = parse("[server]\nworkers = 2\n").unwrap_err().to_string();
    assert!(err.contains("workers"), "{err}");
}

#[test]
fn heap_trim_is_on_unless_turned_off() {
    assert!(parse("").unwrap().server.heap_trim);
    assert!(parse("[server]\nthreads = 2\n").unwrap().server.heap_trim);
    assert!(
        !parse("[server]\nheap_trim = false\n")
            .unwrap()
            .server
            .heap_trim
    );
    assert!(parse("[server]\nheap_trim = \"no\"\n").is_err());
}
