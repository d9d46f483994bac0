//! Session pooling through the proxy, against real Dovecot: logins are counted in Dovecot's
//! own log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{start_proxy_capped, start_proxy_pooled};
use imapproxy_pool::PoolSettings;
use imapproxy_session::SessionSettings;
use imapproxy_testkit::{Dovecot, TestClient};

fn dovecot() -> &'static Dovecot {
    Dovecot::shared()
}

fn pooled() -> PoolSettings {
    PoolSettings {
        reuse: true,
        warm: 1,
        ..PoolSettings::default()
    }
}

/// Dovecot writes the login line right after answering; give it a moment.
fn logins(dovecot: &Dovecot, user: &str, at_least: usize) -> usize {
    dovecot.wait_for_log(
        &format!("imap-login: Info: Login: user=<{user}>,"),
        at_least,
        Duration::from_secs(3),
    )
}

async fn session(addr: std::net::SocketAddr, user: &str, pass: &str) -> (TestClient, bool) {
    let mut c = TestClient::connect(addr).await.unwrap();
    let r = c.login(user, pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    let reused = r.text().contains("[XPROXYREUSE]");
    (c, reused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_session_with_the_same_password_reuses_the_backend_login() {
    let (proxy, pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        pooled(),
    )
    .await;
    let (user, pass) = dovecot().user(13);
    let (mut c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(!reused);
    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    let r = c.logout().await.unwrap();
    assert!(r.text().contains("* BYE") && r.tagged_ok(), "{}", r.text());
    assert!(c.expect_eof(Duration::from_secs(3)).await);
    assert_eq!(logins(dovecot(), &user, 1), 1);

    for _ in 0..3 {
        let (mut c, reused) = session(proxy.plain, &user, &pass).await;
        assert!(reused, "the cached session was not reused");
        assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
        assert!(c.logout().await.unwrap().tagged_ok());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dovecot().logins(&user), 1, "reuse must not log in again");
    assert!(pool.status().hits >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_password_never_gets_the_cached_session() {
    let (proxy, _pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        pooled(),
    )
    .await;
    let (user, pass) = dovecot().user(14);
    let (mut c, _) = session(proxy.plain, &user, &pass).await;
    assert!(c.logout().await.unwrap().tagged_ok());

    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let r = c.login(&user, "not-the-password").await.unwrap();
    assert!(
        r.status_line().contains("NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("XPROXYREUSE"));
    // The rightful owner still gets the cached session.
    let (_c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(reused);
    assert_eq!(logins(dovecot(), &user, 1), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ran_enable_is_not_reused() {
    let (proxy, _pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        pooled(),
    )
    .await;
    let (user, pass) = dovecot().user(15);
    let (mut c, _) = session(proxy.plain, &user, &pass).await;
    assert!(c.cmd("e", "ENABLE CONDSTORE").await.unwrap().tagged_ok());
    assert!(c.logout().await.unwrap().tagged_ok());
    let (_c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(!reused);
    assert_eq!(logins(dovecot(), &user, 2), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_session_has_no_mailbox_selected_and_no_stale_data() {
    let (proxy, _pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        pooled(),
    )
    .await;
    let (user, pass) = dovecot().user(16);
    let (mut c, _) = session(proxy.plain, &user, &pass).await;
    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    assert!(c.cmd("f", "FETCH 1 (FLAGS)").await.unwrap().tagged_ok());
    assert!(c.logout().await.unwrap().tagged_ok());

    let (mut c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(reused);
    // Only this client's own tag, and no mailbox: FETCH needs one.
    let r = c.cmd("n1", "NOOP").await.unwrap();
    assert_eq!(r.lines.len(), 1, "stale data: {}", r.text());
    let r = c.cmd("f1", "FETCH 1 (FLAGS)").await.unwrap();
    assert!(!r.tagged_ok(), "a mailbox is still selected: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_session_killed_on_the_backend_is_not_handed_out() {
    let (proxy, pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        pooled(),
    )
    .await;
    let (user, pass) = dovecot().user(17);
    let (mut c, _) = session(proxy.plain, &user, &pass).await;
    assert!(c.logout().await.unwrap().tagged_ok());
    assert_eq!(pool.status().idle_sessions, 1);

    let conf = dovecot().dir().join("dovecot.conf");
    let out = Command::new("doveadm")
        .arg("-c")
        .arg(&conf)
        .args(["kick", &user])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(!reused, "a dead session was handed out");
    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    assert_eq!(logins(dovecot(), &user, 2), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_workers_of_one_user_share_eight_sessions_without_failures() {
    let dovecot = Dovecot::builder()
        .users(2)
        .max_userip_connections(10)
        .start()
        .unwrap();
    let (user, pass) = dovecot.user(2);
    let settings = PoolSettings {
        reuse: true,
        warm: 2,
        max_per_user: 8,
        wait_timeout: Duration::from_secs(30),
        ..PoolSettings::default()
    };
    let (proxy, pool) =
        start_proxy_pooled(&[dovecot.imap_addr()], SessionSettings::default(), settings).await;
    let addr = proxy.plain;
    let mut workers = Vec::new();
    for w in 0..50 {
        let (user, pass) = (user.clone(), pass.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..20 {
                let result: Result<(), String> = async {
                    let mut c = TestClient::connect(addr).await.map_err(|e| e.to_string())?;
                    let r = c.login(&user, &pass).await.map_err(|e| e.to_string())?;
                    if !r.tagged_ok() {
                        return Err(r.text());
                    }
                    let r = c
                        .cmd("s", "SELECT INBOX")
                        .await
                        .map_err(|e| e.to_string())?;
                    if !r.tagged_ok() {
                        return Err(r.text());
                    }
                    let r = c
                        .cmd("f", "FETCH 1:2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                        .await
                        .map_err(|e| e.to_string())?;
                    if !r.tagged_ok() {
                        return Err(r.text());
                    }
                    c.logout().await.map_err(|e| e.to_string())?;
                    Ok(())
                }
                .await;
                if let Err(e) = result {
                    failures.push(format!("worker {w} session {i}: {e}"));
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let status = pool.status();
    assert!(status.slots_in_use <= 8, "{status:?}");
    // 1000 client sessions; Dovecot saw a handful of logins.
    let backend_logins = dovecot.logins(&user);
    assert!(
        backend_logins <= 20,
        "{backend_logins} backend logins for 1000 sessions"
    );
    assert_eq!(dovecot.log_count("Maximum number of connections"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_command_does_not_leave_a_reusable_session() {
    let (proxy, _pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        pooled(),
    )
    .await;
    let (user, pass) = dovecot().user(18);
    let (mut c, _) = session(proxy.plain, &user, &pass).await;
    c.send_raw(b"b APPEND INBOX {100}\r\n").await.unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+"));
    c.send_raw(b"0123456789").await.unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(!reused, "a session with a half-sent literal was reused");
    assert!(c.cmd("n", "NOOP").await.unwrap().tagged_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_behind_login_are_tracked_for_reset() {
    let (proxy, _pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        pooled(),
    )
    .await;
    let (user, pass) = dovecot().user(19);
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(format!("a LOGIN {user} {pass}\r\nb SELECT INBOX\r\n").as_bytes())
        .await
        .unwrap();
    assert!(c.read_until_tagged("a").await.unwrap().tagged_ok());
    assert!(c.read_until_tagged("b").await.unwrap().tagged_ok());
    assert!(c.logout().await.unwrap().tagged_ok());
    let (mut c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(reused);
    let r = c.cmd("f", "FETCH 1 (UID)").await.unwrap();
    assert!(
        !r.tagged_ok(),
        "the pipelined SELECT leaked into the next client: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_synchronizing_literal_does_not_desynchronise_logout() {
    let (proxy, _pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        pooled(),
    )
    .await;
    let (user, pass) = dovecot().user(20);
    let (mut c, _) = session(proxy.plain, &user, &pass).await;
    // Thunderbird saving to a Sent folder that does not exist: NO [TRYCREATE], no `+`.
    c.send_raw(b"b APPEND NoSuchBox {5}\r\n").await.unwrap();
    let line = String::from_utf8_lossy(&c.read_line().await.unwrap()).into_owned();
    assert!(line.starts_with("b NO"), "{line}");
    assert!(c.cmd("n", "NOOP").await.unwrap().tagged_ok());
    c.set_timeout(Duration::from_secs(5));
    let r = c.logout().await.unwrap();
    assert!(r.text().contains("* BYE") && r.tagged_ok(), "{}", r.text());
}

/// Lines of Dovecot's log about `user`'s backend session ending with `LOGOUT`, after up to
/// `within` for at least `at_least` of them.
fn logouts(dovecot: &Dovecot, user: &str, at_least: usize, within: Duration) -> usize {
    let who = format!("imap({user})<");
    let deadline = std::time::Instant::now() + within;
    loop {
        let n = dovecot
            .log()
            .lines()
            .filter(|l| l.contains(&who) && l.contains("Logged out"))
            .count();
        if n >= at_least || std::time::Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_full_of_cached_sessions_closes_the_least_recently_used_for_a_new_user() {
    const CAP: usize = 4;
    let dovecot = Dovecot::builder().users(CAP + 1).start().unwrap();
    let (proxy, pool) = start_proxy_capped(
        &[dovecot.imap_addr()],
        SessionSettings::default(),
        pooled(),
        CAP,
    )
    .await;
    for i in 1..=CAP {
        let (user, pass) = dovecot.user(i);
        let (mut c, _) = session(proxy.plain, &user, &pass).await;
        assert!(c.logout().await.unwrap().tagged_ok());
    }
    assert_eq!(pool.status().idle_sessions, CAP);

    // Every backend connection is a cached session of someone else; the new user gets in.
    let (user, pass) = dovecot.user(CAP + 1);
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let r = c.login(&user, &pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    let status = pool.status();
    assert_eq!(
        (status.idle_sessions, status.evictions),
        (CAP - 1, 1),
        "{status:?}"
    );

    // The one closed is the first user's, logged out on the backend; the others are intact.
    let (first, first_pass) = dovecot.user(1);
    assert_eq!(logouts(&dovecot, &first, 1, Duration::from_secs(3)), 1);
    for i in 2..=CAP {
        let (other, _) = dovecot.user(i);
        assert_eq!(logouts(&dovecot, &other, 1, Duration::ZERO), 0, "{other}");
    }
    assert!(c.logout().await.unwrap().tagged_ok());
    let (_c, reused) = session(proxy.plain, &first, &first_pass).await;
    assert!(!reused, "an evicted session was handed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_users_in_a_row_through_a_backend_capped_at_four_all_get_in() {
    let dovecot = Dovecot::builder().users(30).start().unwrap();
    let (proxy, pool) = start_proxy_capped(
        &[dovecot.imap_addr()],
        SessionSettings::default(),
        pooled(),
        4,
    )
    .await;
    let mut refused = Vec::new();
    for i in 1..=30 {
        let (user, pass) = dovecot.user(i);
        let mut c = TestClient::connect(proxy.plain).await.unwrap();
        let r = c.login(&user, &pass).await.unwrap();
        if !r.tagged_ok() {
            refused.push(format!("{user}: {}", r.status_line()));
            continue;
        }
        assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
        assert!(c.logout().await.unwrap().tagged_ok());
    }
    assert!(refused.is_empty(), "{refused:?}");
    let status = pool.status();
    assert!(status.idle_sessions <= 4, "{status:?}");
    assert!(status.evictions >= 26, "{status:?}");
}

fn aging(max_age: Duration) -> PoolSettings {
    PoolSettings {
        max_age,
        // Neither idle expiry nor the NOOP check may be what ends a session here.
        idle_timeout: Duration::from_secs(60),
        noop_after: Duration::from_secs(60),
        ..pooled()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_session_is_reused_within_max_age_and_not_after() {
    let max_age = Duration::from_secs(1);
    let (proxy, _pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        aging(max_age),
    )
    .await;
    let (user, pass) = dovecot().user(1);
    let (mut c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(!reused);
    assert!(c.logout().await.unwrap().tagged_ok());
    let (mut c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(reused, "not reused within max_age");
    assert!(c.logout().await.unwrap().tagged_ok());
    assert_eq!(logins(dovecot(), &user, 1), 1);

    tokio::time::sleep(max_age + Duration::from_millis(200)).await;
    let (mut c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(!reused, "reused past max_age");
    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    assert_eq!(logins(dovecot(), &user, 2), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_users_cached_session_still_logs_in_afresh_after_max_age() {
    let max_age = Duration::from_secs(1);
    let (proxy, _pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        aging(max_age),
    )
    .await;
    let (user, pass) = dovecot().user(2);
    let started = std::time::Instant::now();
    let (mut fresh, mut sessions) = (0, 0);
    while started.elapsed() < max_age + Duration::from_millis(500) {
        let (mut c, reused) = session(proxy.plain, &user, &pass).await;
        sessions += 1;
        if !reused {
            fresh += 1;
        }
        assert!(c.cmd("n", "NOOP").await.unwrap().tagged_ok());
        assert!(c.logout().await.unwrap().tagged_ok());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sessions >= 5, "{sessions} sessions");
    assert_eq!(fresh, 2, "one login at the start and one after max_age");
    assert_eq!(logins(dovecot(), &user, 2), 2);
}

/// A tagged answer without its tag and Dovecot's timing suffix (`(0.001 + 0.000 secs).`).
fn answer_text(r: &imapproxy_testkit::Response) -> String {
    let line = r.status_line();
    let without_tag = line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest);
    match without_tag.rfind(" (") {
        Some(i) if without_tag.ends_with("secs).") => without_tag[..i].to_owned(),
        _ => without_tag.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_left_in_a_mailbox_is_reused_in_the_authenticated_state() {
    let (proxy, _pool) = start_proxy_pooled(
        &[dovecot().imap_addr()],
        SessionSettings::default(),
        pooled(),
    )
    .await;
    let (user, pass) = dovecot().user(3);
    let (mut c, _) = session(proxy.plain, &user, &pass).await;
    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    assert!(c.logout().await.unwrap().tagged_ok());

    let (mut c, reused) = session(proxy.plain, &user, &pass).await;
    assert!(reused);
    let through_proxy = c.cmd("f", "FETCH 1 FLAGS").await.unwrap();

    // The same command on a fresh session straight to Dovecot.
    let mut direct = TestClient::connect(dovecot().imap_addr()).await.unwrap();
    assert!(direct.login(&user, &pass).await.unwrap().tagged_ok());
    let fresh = direct.cmd("f", "FETCH 1 FLAGS").await.unwrap();
    assert!(!fresh.tagged_ok(), "{}", fresh.text());
    assert_eq!(through_proxy.untagged(), fresh.untagged());
    assert_eq!(answer_text(&through_proxy), answer_text(&fresh));
}

/// Two backends in round-robin (the same Dovecot behind two names, so either can serve the
/// user): a user who logs in, out and in again lands where its cached session waits, every
/// time, instead of every other time; a drained backend's cached session is not chosen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_prefers_the_backend_holding_the_users_cached_session() {
    let d = dovecot();
    let (proxy, pool) = start_proxy_pooled(
        &[d.imap_addr(), d.imap_addr()],
        SessionSettings::default(),
        PoolSettings {
            warm: 0,
            ..pooled()
        },
    )
    .await;
    let (user, pass) = d.user(17);
    let mut reused = 0;
    for _ in 0..10 {
        let (mut c, r) = session(proxy.plain, &user, &pass).await;
        reused += usize::from(r);
        assert!(c.logout().await.unwrap().tagged_ok());
        assert!(c.expect_eof(Duration::from_secs(3)).await);
    }
    assert_eq!(
        reused, 9,
        "every login after the first reuses the cached session"
    );
    assert_eq!(pool.status().misses, 1, "{:?}", pool.status());

    // Another user: its one cached session sits on one backend, which is then drained.
    let (user, pass) = d.user(18);
    let (mut c, _) = session(proxy.plain, &user, &pass).await;
    assert!(c.logout().await.unwrap().tagged_ok());
    assert!(c.expect_eof(Duration::from_secs(3)).await);
    let creds = imapproxy_pool::Credentials {
        username: user.clone(),
        password: imapproxy_pool::Secret::new(pass.clone().into_bytes()),
    };
    let holding = pool.backends_with_idle(&creds);
    assert_eq!(holding.len(), 1, "{holding:?}");
    proxy
        .proxy
        .upstreams()
        .registry
        .set_health(holding[0].as_str(), imapproxy_route::Health::Draining)
        .unwrap();
    let (mut c, r) = session(proxy.plain, &user, &pass).await;
    assert!(!r, "a drained backend's cached session was handed out");
    assert!(c.logout().await.unwrap().tagged_ok());
    assert!(c.expect_eof(Duration::from_secs(3)).await);
    // That login went to the other backend, which now holds the user's newest session.
    let now = pool.backends_with_idle(&creds);
    assert!(
        now.len() == 2 && now[0] != holding[0],
        "{now:?} {holding:?}"
    );
}
