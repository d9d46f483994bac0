//! `SessionPool::backends_with_idle` (issue #12 item 8): which backends hold a cached session
//! a checkout with these credentials would reuse, most recently used first, against a real
//! Dovecot registered under two backend names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use imapproxy_pool::{BackendTarget, Credentials, Disposition, PoolSettings, Secret, SessionPool};
use imapproxy_testkit::Dovecot;

fn creds(dovecot: &Dovecot, i: usize) -> Credentials {
    let (user, pass) = dovecot.user(i);
    Credentials {
        username: user,
        password: Secret::new(pass.into_bytes()),
    }
}

fn two_backend_pool(dovecot: &Dovecot, settings: PoolSettings) -> SessionPool {
    let pool = SessionPool::new(PoolSettings {
        warm: 0,
        ..settings
    })
    .unwrap();
    for name in ["a", "b"] {
        let target = BackendTarget::plain(dovecot.imap_addr().to_string());
        pool.add_backend(name, target, 100);
    }
    pool
}

#[tokio::test]
async fn backends_holding_a_cached_session_come_most_recent_first() {
    let dovecot = Dovecot::shared();
    let pool = two_backend_pool(dovecot, PoolSettings::default());
    let c = creds(dovecot, 5);
    assert!(pool.backends_with_idle(&c).is_empty());

    for backend in ["a", "b"] {
        let session = pool.checkout(backend, &c, &[]).await.unwrap();
        pool.checkin(session, Disposition::Reuse).await;
        // Distinct check-in instants.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pool.backends_with_idle(&c), ["b", "a"]);

    // Using "a" again makes it the most recent.
    let session = pool.checkout("a", &c, &[]).await.unwrap();
    assert!(session.reused());
    assert_eq!(
        pool.backends_with_idle(&c),
        ["b"],
        "a lent session is not idle"
    );
    pool.checkin(session, Disposition::Reuse).await;
    assert_eq!(pool.backends_with_idle(&c), ["a", "b"]);

    // Two cached sessions on one backend name it once.
    let first = pool.checkout("a", &c, &[]).await.unwrap();
    let second = pool.checkout("a", &c, &[]).await.unwrap();
    pool.checkin(first, Disposition::Reuse).await;
    pool.checkin(second, Disposition::Reuse).await;
    assert_eq!(pool.status().idle_sessions, 3);
    assert_eq!(pool.backends_with_idle(&c), ["a", "b"]);
}

#[tokio::test]
async fn other_credentials_find_nothing() {
    let dovecot = Dovecot::shared();
    let pool = two_backend_pool(dovecot, PoolSettings::default());
    let c = creds(dovecot, 6);
    let session = pool.checkout("a", &c, &[]).await.unwrap();
    pool.checkin(session, Disposition::Reuse).await;
    assert_eq!(pool.backends_with_idle(&c), ["a"]);

    let wrong = Credentials {
        username: c.username.clone(),
        password: Secret::new(b"not the password".to_vec()),
    };
    assert!(pool.backends_with_idle(&wrong).is_empty());
    assert!(pool.backends_with_idle(&creds(dovecot, 7)).is_empty());
}

#[tokio::test]
async fn a_session_past_max_age_is_not_offered() {
    let dovecot = Dovecot::shared();
    let settings = PoolSettings {
        max_age: Duration::from_millis(300),
        ..PoolSettings::default()
    };
    let pool = two_backend_pool(dovecot, settings);
    let c = creds(dovecot, 8);
    let session = pool.checkout("b", &c, &[]).await.unwrap();
    pool.checkin(session, Disposition::Reuse).await;
    assert_eq!(pool.backends_with_idle(&c), ["b"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(pool.backends_with_idle(&c).is_empty());
}
