//! Session pooling through the proxy, against real Dovecot: logins are counted in Dovecot's
//! own log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::start_proxy_pooled;
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
