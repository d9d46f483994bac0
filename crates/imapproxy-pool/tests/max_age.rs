//! `PoolSettings::max_age` against a real Dovecot: a cached session is served for at most
//! that long after its backend login, however busy it is. Backend logins are counted in
//! Dovecot's own log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use imapproxy_pool::{BackendTarget, Credentials, Disposition, PoolSettings, Secret, SessionPool};
use imapproxy_testkit::Dovecot;

const MAX_AGE: Duration = Duration::from_secs(1);

fn creds(dovecot: &Dovecot, i: usize) -> Credentials {
    let (user, pass) = dovecot.user(i);
    Credentials {
        username: user,
        password: Secret::new(pass.into_bytes()),
    }
}

fn pool(dovecot: &Dovecot) -> SessionPool {
    let pool = SessionPool::new(PoolSettings {
        warm: 0,
        max_age: MAX_AGE,
        // Neither idle expiry nor the NOOP check may be what ends a session here.
        idle_timeout: Duration::from_secs(60),
        noop_after: Duration::from_secs(60),
        ..PoolSettings::default()
    })
    .unwrap();
    pool.add_backend(
        "mail",
        BackendTarget::plain(dovecot.imap_addr().to_string()),
        100,
    );
    pool
}

fn logins(dovecot: &Dovecot, user: &str, at_least: usize) -> usize {
    dovecot.wait_for_log(
        &format!("imap-login: Info: Login: user=<{user}>,"),
        at_least,
        Duration::from_secs(3),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_reused_within_max_age_and_not_after() {
    let dovecot = Dovecot::builder().users(2).start().unwrap();
    let pool = pool(&dovecot);
    let c = creds(&dovecot, 1);

    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    pool.checkin(session, Disposition::Reuse).await;
    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    assert!(session.reused(), "reuse within max_age");
    pool.checkin(session, Disposition::Reuse).await;
    assert_eq!(logins(&dovecot, &c.username, 1), 1);

    tokio::time::sleep(MAX_AGE + Duration::from_millis(200)).await;
    // `expire` is not running: the checkout itself refuses the old session.
    assert_eq!(pool.status().idle_sessions, 1);
    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    assert!(!session.reused(), "a session past max_age was reused");
    pool.checkin(session, Disposition::Reuse).await;
    assert_eq!(logins(&dovecot, &c.username, 2), 2);
    // The new session is cached in the old one's place, not beside it.
    assert_eq!(pool.status().idle_sessions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_still_logs_in_afresh_after_max_age() {
    let dovecot = Dovecot::builder().users(2).start().unwrap();
    let pool = pool(&dovecot);
    let c = creds(&dovecot, 1);

    // Never idle for more than 200 ms, far below idle_timeout and noop_after.
    let started = Instant::now();
    let mut fresh = 0;
    while started.elapsed() < MAX_AGE + Duration::from_millis(500) {
        let mut session = pool.checkout("mail", &c, &[]).await.unwrap();
        if !session.reused() {
            fresh += 1;
        }
        assert!(session.conn().command("NOOP").await.unwrap().is_ok());
        pool.checkin(session, Disposition::Reuse).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(fresh, 2, "one login at the start, one after max_age");
    assert_eq!(logins(&dovecot, &c.username, 2), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_closes_cached_sessions_past_max_age() {
    let dovecot = Dovecot::builder().users(2).start().unwrap();
    let pool = pool(&dovecot);
    let c = creds(&dovecot, 1);
    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    pool.checkin(session, Disposition::Reuse).await;
    pool.expire();
    assert_eq!(pool.status().idle_sessions, 1);
    tokio::time::sleep(MAX_AGE + Duration::from_millis(100)).await;
    pool.expire();
    let status = pool.status();
    assert_eq!(
        (status.idle_sessions, status.slots_in_use),
        (0, 0),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_max_age_is_closed_at_checkin() {
    let dovecot = Dovecot::builder().users(2).start().unwrap();
    let pool = pool(&dovecot);
    let c = creds(&dovecot, 1);
    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    tokio::time::sleep(MAX_AGE + Duration::from_millis(100)).await;
    pool.checkin(session, Disposition::Reuse).await;
    assert_eq!(pool.status().idle_sessions, 0);
    assert_eq!(pool.status().slots_in_use, 0);
}
