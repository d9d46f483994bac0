//! Password guessing against a real Dovecot that, like a production one, answers a wrong
//! password after a delay (`auth_failure_delay`): the attempts the proxy lets through hold
//! backend slots for that long, so this is where guessers could crowd out the real user and
//! where parallel connections could each slip a guess past the limit.
//!
//! - Forty addresses guessing one user's password, two connections each: the user's own
//!   logins (from another address, with the password that already worked) stay fast and are
//!   never refused for lack of slots.
//! - Twenty parallel connections from one address guessing one password: no more guesses
//!   reach Dovecot than the limit allows.
//! - A spray over many users from several addresses, every attempt in parallel: no more
//!   than the per-address limit per address reaches Dovecot.
//!
//! Every client connects from its own loopback address (127.0.1.x), nothing is trusted, and
//! every count is read from Dovecot's log (`auth_verbose`: one `Password mismatch` line per
//! wrong password it checked).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imapproxy_pool::PoolSettings;
use imapproxy_session::{LimitSettings, SessionSettings, ThrottleSettings, TrustedNetworks};
use imapproxy_testkit::Dovecot;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

/// Dovecot's failure delay, as it ships (2 s), not the testkit's 0.
fn dovecot() -> &'static Dovecot {
    static D: OnceLock<Dovecot> = OnceLock::new();
    D.get_or_init(|| {
        Dovecot::builder()
            .users(120)
            .extra_config("auth_failure_delay = 2 secs")
            .start()
            .unwrap()
    })
}

/// The shipped throttle defaults, with loopback no longer trusted.
fn settings() -> SessionSettings {
    SessionSettings {
        limits: LimitSettings {
            throttle: ThrottleSettings {
                trusted: TrustedNetworks::default(),
                ..ThrottleSettings::default()
            },
            connections: imapproxy_session::ConnectionLimitSettings {
                trusted: TrustedNetworks::default(),
                ..Default::default()
            },
        },
        ..SessionSettings::default()
    }
}

/// No cached sessions: every login of the real user needs a backend slot and a backend
/// login, the case guessers could starve.
fn pool() -> PoolSettings {
    PoolSettings {
        reuse: false,
        warm: 0,
        ..PoolSettings::default()
    }
}

fn mismatches(d: &Dovecot, user: &str) -> usize {
    let needle = format!("({user},");
    d.log()
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("Password mismatch"))
        .count()
}

/// Connects from `source`, reads the greeting, sends `LOGIN`, returns the answer (tagged
/// line or `* BYE`). `None` when the proxy closed or the exchange took over 30 s.
async fn login_from(source: &str, to: SocketAddr, user: &str, pass: &str) -> Option<String> {
    let exchange = async {
        let sock = TcpSocket::new_v4().ok()?;
        sock.bind(format!("{source}:0").parse().ok()?).ok()?;
        let tcp = sock.connect(to).await.ok()?;
        let mut r = BufReader::new(tcp);
        let mut line = String::new();
        r.read_line(&mut line).await.ok()?;
        r.get_mut()
            .write_all(format!("a LOGIN {user} {pass}\r\n").as_bytes())
            .await
            .ok()?;
        loop {
            line.clear();
            if r.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if line.starts_with("a ") || line.starts_with("* BYE") {
                let _ = r.get_mut().write_all(b"z LOGOUT\r\n").await;
                return Some(line.trim_end().to_owned());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .ok()
        .flatten()
}

/// Every login was refused, as a failure (`NO`) or by a hang-up (`* BYE`).
async fn all_refused(tasks: Vec<tokio::task::JoinHandle<Option<String>>>) {
    for t in tasks {
        let answer = t.await.unwrap();
        assert!(
            answer
                .as_deref()
                .is_some_and(|a| a.starts_with("a NO") || a.starts_with("* BYE")),
            "{answer:?}"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_targeted_user_logs_in_quickly_while_forty_addresses_guess_her_password() {
    let d = dovecot();
    let (user, pass) = d.user(1);
    let (proxy, _pool) = common::start_proxy_pooled(&[d.imap_addr()], settings(), pool()).await;
    let to = proxy.plain;

    // The user has logged in before: her password is one the proxy has seen work.
    let first = login_from("127.0.0.2", to, &user, &pass).await;
    assert!(
        first.as_deref().is_some_and(|a| a.starts_with("a OK")),
        "{first:?}"
    );

    let attacking = std::sync::Arc::new(AtomicBool::new(true));
    let guesses = std::sync::Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for a in 0..40 {
        for c in 0..2 {
            let (attacking, guesses, user) = (attacking.clone(), guesses.clone(), user.clone());
            attackers.push(tokio::spawn(async move {
                let source = format!("127.0.1.{}", 10 + a);
                let mut n = 0;
                while attacking.load(Ordering::Relaxed) {
                    n += 1;
                    let guess = format!("guess{a}x{c}x{n}");
                    if login_from(&source, to, &user, &guess).await.is_some() {
                        guesses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    // Let the guessers fill the queues first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut latencies = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let answer = login_from("127.0.0.2", to, &user, &pass).await;
        latencies.push(started.elapsed());
        answers.push(answer);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    attacking.store(false, Ordering::Relaxed);
    for a in attackers {
        a.await.unwrap();
    }

    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "real user under attack: 20 logins, p50 {p50:?}, p99 {p99:?}; {} guesses answered, \
         {} reached Dovecot",
        guesses.load(Ordering::Relaxed),
        mismatches(d, &user)
    );
    for a in &answers {
        assert!(
            a.as_deref().is_some_and(|a| a.starts_with("a OK")),
            "{answers:?}"
        );
    }
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}: {latencies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_connections_put_no_more_guesses_to_dovecot_than_the_limit() {
    let d = dovecot();
    let (user, _) = d.user(2);
    let (proxy, _pool) = common::start_proxy_pooled(&[d.imap_addr()], settings(), pool()).await;
    let to = proxy.plain;
    let limit = ThrottleSettings::default().max_failures as usize;

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let user = user.clone();
            tokio::spawn(
                async move { login_from("127.0.1.100", to, &user, &format!("w{i}")).await },
            )
        })
        .collect();
    all_refused(tasks).await;
    d.wait_for_log("Password mismatch", 1, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let seen = mismatches(d, &user);
    println!("20 parallel guesses from one address: {seen} reached Dovecot (limit {limit})");
    assert!(
        seen <= limit,
        "Dovecot checked {seen} wrong passwords, limit {limit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_spray_puts_no_more_than_the_per_address_limit_to_dovecot() {
    let d = dovecot();
    let (proxy, _pool) = common::start_proxy_pooled(&[d.imap_addr()], settings(), pool()).await;
    let to = proxy.plain;
    let per_ip = ThrottleSettings::default().max_failures_per_ip as usize;
    // Five addresses, each trying one password on 30 users (users 21..50) at once.
    let users: Vec<String> = (21..=50).map(|i| d.user(i).0).collect();
    let mut tasks = Vec::new();
    for a in 0..5 {
        for user in &users {
            let user = user.clone();
            tasks.push(tokio::spawn(async move {
                login_from(&format!("127.0.2.{}", 10 + a), to, &user, "Winter2026!").await
            }));
        }
    }
    all_refused(tasks).await;
    std::thread::sleep(Duration::from_millis(300));
    let seen: usize = users.iter().map(|u| mismatches(d, u)).sum();
    println!(
        "spray of 150 parallel guesses from 5 addresses: {seen} reached Dovecot (limit {})",
        5 * per_ip
    );
    assert!(
        seen <= 5 * per_ip,
        "Dovecot checked {seen}, limit {}",
        5 * per_ip
    );
}
