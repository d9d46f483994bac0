//! A backend's `max_connections` against a real Dovecot: cached sessions make room for new
//! users, lent ones do not, and warm connections use only the room left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use imapproxy_pool::{
    BackendTarget, Credentials, Disposition, Error, PoolSettings, Secret, SessionPool,
};
use imapproxy_testkit::Dovecot;

fn creds(dovecot: &Dovecot, i: usize) -> Credentials {
    let (user, pass) = dovecot.user(i);
    Credentials {
        username: user,
        password: Secret::new(pass.into_bytes()),
    }
}

fn pool(dovecot: &Dovecot, warm: usize, max_connections: usize) -> SessionPool {
    let pool = SessionPool::new(PoolSettings {
        warm,
        ..PoolSettings::default()
    })
    .unwrap();
    pool.add_backend(
        "mail",
        BackendTarget::plain(dovecot.imap_addr().to_string()),
        max_connections,
    );
    pool
}

/// Lines of Dovecot's log about `user`'s session ending with `LOGOUT`.
fn logouts(dovecot: &Dovecot, user: &str) -> usize {
    let who = format!("imap({user})<");
    dovecot
        .log()
        .lines()
        .filter(|l| l.contains(&who) && l.contains("Logged out"))
        .count()
}

fn wait_for_logout(dovecot: &Dovecot, user: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let n = logouts(dovecot, user);
        if n > 0 || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backend_closes_the_least_recently_used_cached_session_for_a_new_user() {
    let dovecot = Dovecot::builder().users(4).start().unwrap();
    let pool = pool(&dovecot, 0, 2);
    let (a, b, c) = (creds(&dovecot, 1), creds(&dovecot, 2), creds(&dovecot, 3));
    for who in [&a, &b] {
        let session = pool.checkout("mail", who, &[]).await.unwrap();
        pool.checkin(session, Disposition::Reuse).await;
    }
    assert_eq!(pool.status().idle_sessions, 2);

    // The backend is full of cached sessions; a third user still gets in.
    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    assert!(!session.reused());
    let status = pool.status();
    assert_eq!(
        (status.idle_sessions, status.evictions),
        (1, 1),
        "{status:?}"
    );
    pool.checkin(session, Disposition::Reuse).await;

    // The one closed was `a`'s, the least recently used: Dovecot saw it log out, `b`'s is
    // still cached.
    assert_eq!(wait_for_logout(&dovecot, &a.username), 1);
    assert_eq!(logouts(&dovecot, &b.username), 0);
    let session = pool.checkout("mail", &b, &[]).await.unwrap();
    assert!(session.reused());
    drop(session);
    let session = pool.checkout("mail", &a, &[]).await.unwrap();
    assert!(!session.reused(), "an evicted session was handed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_full_of_lent_sessions_refuses_and_gives_the_count_back() {
    let dovecot = Dovecot::builder().users(3).start().unwrap();
    let pool = pool(&dovecot, 0, 2);
    let first = pool
        .checkout("mail", &creds(&dovecot, 1), &[])
        .await
        .unwrap();
    let second = pool
        .checkout("mail", &creds(&dovecot, 2), &[])
        .await
        .unwrap();
    // Nothing cached to make room with: refused, twice (a refusal must not leak a count).
    for _ in 0..2 {
        let err = pool
            .checkout("mail", &creds(&dovecot, 3), &[])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BackendFull), "{err:?}");
    }
    assert_eq!(pool.status().evictions, 0);
    drop(first);
    let third = pool
        .checkout("mail", &creds(&dovecot, 3), &[])
        .await
        .unwrap();
    drop((second, third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_users_one_after_another_through_a_backend_capped_at_four() {
    let dovecot = Dovecot::builder().users(30).start().unwrap();
    let pool = pool(&dovecot, 1, 4);
    tokio::spawn(pool.clone().maintain());
    for i in 1..=30 {
        let who = creds(&dovecot, i);
        let mut session = pool
            .checkout("mail", &who, &[])
            .await
            .unwrap_or_else(|e| panic!("user {i}: {e}"));
        assert!(
            session
                .conn()
                .command("SELECT INBOX")
                .await
                .unwrap()
                .is_ok()
        );
        pool.checkin(session, Disposition::Reuse).await;
        assert!(pool.status().idle_sessions <= 4, "{:?}", pool.status());
    }
    let status = pool.status();
    assert_eq!(status.idle_sessions, 4, "{status:?}");
    assert!(status.evictions >= 26, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_connections_only_use_the_room_the_cap_leaves() {
    let dovecot = Dovecot::builder().users(2).start().unwrap();
    let pool = pool(&dovecot, 2, 2);
    tokio::spawn(pool.clone().maintain());
    let warm = |pool: &SessionPool| pool.status().warm[0].1;
    let until = |want: usize, pool: SessionPool| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while warm(&pool) != want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        warm(&pool)
    };
    assert_eq!(until(2, pool.clone()).await, 2);
    let one = pool
        .checkout("mail", &creds(&dovecot, 1), &[])
        .await
        .unwrap();
    let two = pool
        .checkout("mail", &creds(&dovecot, 2), &[])
        .await
        .unwrap();
    // Both lent sessions came from the warm ones; the cap leaves no room for more.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(warm(&pool), 0);
    drop(one);
    assert_eq!(until(1, pool.clone()).await, 1);
    drop(two);
}
