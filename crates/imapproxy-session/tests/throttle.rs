//! Brute-force throttling and connection limits against a real Dovecot: blocked attempts
//! never reach Dovecot (its log shows no more than the threshold), the user's own login
//! from another address keeps working, blocks lift, sprays over many users are stopped per
//! address, and connections over the per-address limits get `* BYE [LIMIT]`.
//!
//! The testkit's Dovecot has its own auth penalty disabled, so every failure the proxy lets
//! through shows in its log as one `Password mismatch` line (`auth_verbose = yes`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use imapproxy_session::{
    ConnectionLimitSettings, LimitSettings, SessionSettings, ThrottleSettings, TrustedNetworks,
};
use imapproxy_testkit::{Dovecot, TestClient};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

/// Users 21..250 are used here, so a dedicated instance with 250 of them.
fn dovecot() -> &'static Dovecot {
    static D: OnceLock<Dovecot> = OnceLock::new();
    D.get_or_init(|| Dovecot::builder().users(250).start().unwrap())
}

/// Nothing trusted: loopback clients are throttled like anyone else.
fn settings(max_failures: u32, per_ip: u32, conns: ConnectionLimitSettings) -> SessionSettings {
    SessionSettings {
        limits: LimitSettings {
            throttle: ThrottleSettings {
                max_failures,
                max_failures_per_ip: per_ip,
                failure_window: Duration::from_secs(60),
                block_duration: Duration::from_secs(2),
                free_failures: 1,
                base_delay: Duration::from_millis(2),
                max_delay: Duration::from_millis(5),
                trusted: TrustedNetworks::default(),
                max_tracked: 1000,
                ..ThrottleSettings::default()
            },
            connections: conns,
        },
        ..SessionSettings::default()
    }
}

fn no_conn_limits() -> ConnectionLimitSettings {
    ConnectionLimitSettings {
        max_connections: 0,
        max_connections_per_ip: 0,
        max_new_connections_per_ip_per_sec: 0,
        trusted: TrustedNetworks::default(),
        max_tracked: 1000,
    }
}

/// Password mismatches Dovecot logged for `user`.
fn mismatches(d: &Dovecot, user: &str) -> usize {
    let needle = format!("({user},");
    d.log()
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("Password mismatch"))
        .count()
}

/// A plain client connected from `source` (e.g. 127.0.0.2), for a second address.
struct RawClient {
    reader: BufReader<tokio::net::TcpStream>,
}

impl RawClient {
    async fn connect_from(source: &str, to: SocketAddr) -> RawClient {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let tcp = sock.connect(to).await.unwrap();
        let mut c = RawClient {
            reader: BufReader::new(tcp),
        };
        let greeting = c.line().await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }

    async fn line(&mut self) -> String {
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut s))
            .await
            .unwrap()
            .unwrap();
        s
    }

    /// Sends `LOGIN` and returns the tagged answer (or a `BYE` line).
    async fn login(&mut self, user: &str, pass: &str) -> String {
        let cmd = format!("a LOGIN {user} {pass}\r\n");
        self.reader
            .get_mut()
            .write_all(cmd.as_bytes())
            .await
            .unwrap();
        loop {
            let l = self.line().await;
            if l.starts_with("a ") || l.starts_with("* BYE") || l.is_empty() {
                return l;
            }
        }
    }
}

#[tokio::test]
async fn brute_force_is_blocked_before_dovecot_while_other_address_logs_in() {
    let d = dovecot();
    let (user, pass) = d.user(31);
    let proxy = common::start_proxy_with(&[d.imap_addr()], settings(3, 50, no_conn_limits())).await;

    let mut attacker = RawClient::connect_from("127.0.0.1", proxy.plain).await;
    for i in 0..200 {
        let answer = attacker.login(&user, &format!("wrong{i}")).await;
        assert!(
            answer.starts_with("a NO [AUTHENTICATIONFAILED]"),
            "attempt {i}: {answer}"
        );
    }
    // Meanwhile the user's own login from a second address goes through.
    let mut owner = RawClient::connect_from("127.0.0.2", proxy.plain).await;
    let answer = owner.login(&user, &pass).await;
    assert!(answer.starts_with("a OK"), "{answer}");
    // Even the right password from the blocked address is refused, unseen by Dovecot.
    let answer = attacker.login(&user, &pass).await;
    assert!(
        answer.starts_with("a NO [AUTHENTICATIONFAILED]"),
        "{answer}"
    );

    d.wait_for_log("Password mismatch", 1, Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(300));
    let seen = mismatches(d, &user);
    assert_eq!(
        seen,
        3,
        "Dovecot saw {seen} failed attempts, log:\n{}",
        d.log()
    );

    // The block lifts after block_duration.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer = attacker.login(&user, &pass).await;
    assert!(answer.starts_with("a OK"), "{answer}");
}

#[tokio::test]
async fn password_spray_over_many_users_blocks_the_address() {
    let d = dovecot();
    let proxy = common::start_proxy_with(&[d.imap_addr()], settings(5, 10, no_conn_limits())).await;
    // One common password tried over 200 users, reconnecting whenever the proxy hangs up.
    let users: Vec<String> = (41..=240).map(|i| d.user(i).0).collect();

    let mut client = RawClient::connect_from("127.0.0.1", proxy.plain).await;
    let mut refused = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let answer = client.login(user, "Summer2026!").await;
        if answer.starts_with("* BYE [LIMIT]") {
            refused.push(i);
            client = RawClient::connect_from("127.0.0.1", proxy.plain).await;
            continue;
        }
        assert!(
            answer.starts_with("a NO [AUTHENTICATIONFAILED]"),
            "{answer}"
        );
    }
    // The first 10 failures were let through; every one of the other 190 was refused.
    assert_eq!(refused, (10..200).collect::<Vec<_>>());
    // A new connection from the blocked address is refused at its first attempt.
    let mut again = RawClient::connect_from("127.0.0.1", proxy.plain).await;
    let answer = again.login(&users[15], "Summer2026!").await;
    assert!(answer.starts_with("* BYE [LIMIT]"), "{answer}");
    // Another address is not affected.
    let (user, pass) = d.user(250);
    let mut other = RawClient::connect_from("127.0.0.2", proxy.plain).await;
    assert!(other.login(&user, &pass).await.starts_with("a OK"));

    d.wait_for_log("Password mismatch", 10, Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(300));
    let seen: usize = users.iter().map(|u| mismatches(d, u)).sum();
    assert_eq!(seen, 10, "Dovecot saw {seen} failed attempts");
}

#[tokio::test]
async fn connections_over_the_per_ip_limit_get_bye_limit() {
    let d = dovecot();
    let conns = ConnectionLimitSettings {
        max_connections: 100,
        max_connections_per_ip: 3,
        max_new_connections_per_ip_per_sec: 1000,
        trusted: TrustedNetworks::default(),
        max_tracked: 1000,
    };
    let proxy = common::start_proxy_with(&[d.imap_addr()], settings(5, 20, conns)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TestClient::connect(proxy.plain).await.unwrap());
    }
    let mut over = TestClient::connect_without_greeting(proxy.plain)
        .await
        .unwrap();
    let line = over.read_line().await.unwrap();
    assert_eq!(line, b"* BYE [LIMIT] Too many connections.\r\n".to_vec());
    assert!(over.expect_eof(Duration::from_secs(2)).await);
    // Implicit TLS listener: refused before any handshake and without a byte, since
    // plaintext there would only break the client's TLS handshake.
    let mut tls = TestClient::connect_without_greeting(proxy.implicit)
        .await
        .unwrap();
    assert!(tls.expect_eof(Duration::from_secs(2)).await);
    assert!(
        tls.buffered().is_empty(),
        "{:?}",
        String::from_utf8_lossy(tls.buffered())
    );
    // Another address still gets in, and a freed slot is usable again.
    let _other = RawClient::connect_from("127.0.0.2", proxy.plain).await;
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut back = TestClient::connect(proxy.plain).await.unwrap();
    let (user, pass) = d.user(21);
    assert!(back.login(&user, &pass).await.unwrap().tagged_ok());
}

#[tokio::test]
async fn connection_rate_per_ip_is_limited() {
    let d = dovecot();
    let conns = ConnectionLimitSettings {
        max_connections: 100,
        max_connections_per_ip: 100,
        max_new_connections_per_ip_per_sec: 3,
        trusted: TrustedNetworks::default(),
        max_tracked: 1000,
    };
    let proxy = common::start_proxy_with(&[d.imap_addr()], settings(5, 20, conns)).await;
    for _ in 0..3 {
        drop(TestClient::connect(proxy.plain).await.unwrap());
    }
    let mut over = TestClient::connect_without_greeting(proxy.plain)
        .await
        .unwrap();
    let line = over.read_line().await.unwrap();
    assert!(line.starts_with(b"* BYE [LIMIT]"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    TestClient::connect(proxy.plain).await.unwrap();
}

/// A guess that times out in the pool's per-user queue never reached Dovecot, but it is
/// still a guess: counted like a wrong password, so that guessers cannot keep trying for
/// free while the user's backend sessions are busy. The owner's proven password is not
/// counted when it waits too.
#[tokio::test]
async fn guesses_timing_out_in_the_users_queue_count_as_failures() {
    let d = dovecot();
    let (user, pass) = d.user(32);
    let (proxy, _pool) = common::start_proxy_pooled(
        &[d.imap_addr()],
        settings(3, 50, no_conn_limits()),
        imapproxy_pool::PoolSettings {
            reuse: false,
            warm: 0,
            max_per_user: 1,
            wait_timeout: Duration::from_millis(300),
            ..imapproxy_pool::PoolSettings::default()
        },
    )
    .await;
    // The owner holds the user's only backend session.
    let mut owner = RawClient::connect_from("127.0.0.2", proxy.plain).await;
    assert!(owner.login(&user, &pass).await.starts_with("a OK"));

    let mut guesser = RawClient::connect_from("127.0.0.3", proxy.plain).await;
    for i in 0..3 {
        let answer = guesser.login(&user, &format!("guess{i}")).await;
        assert!(answer.starts_with("a NO [LIMIT]"), "guess {i}: {answer}");
    }
    // Three counted failures block the pair: even the right password is now refused at
    // once, as a wrong one, instead of waiting in the queue again.
    let started = std::time::Instant::now();
    let answer = guesser.login(&user, &pass).await;
    assert!(
        answer.starts_with("a NO [AUTHENTICATIONFAILED]"),
        "{answer}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // The owner, from another address and with the proven password, is not blocked: it
    // waits for the slot like anyone (NO [LIMIT] while it is held), uncounted.
    let mut second = RawClient::connect_from("127.0.0.4", proxy.plain).await;
    for _ in 0..4 {
        assert!(second.login(&user, &pass).await.starts_with("a NO [LIMIT]"));
    }
    drop(owner);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(second.login(&user, &pass).await.starts_with("a OK"));
    assert_eq!(mismatches(d, &user), 0, "no guess reached Dovecot");
}
