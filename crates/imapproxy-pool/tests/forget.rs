//! `SessionPool::forget_user` against a real Dovecot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use imapproxy_pool::{BackendTarget, Credentials, Disposition, PoolSettings, Secret, SessionPool};
use imapproxy_testkit::Dovecot;

#[tokio::test]
async fn forgetting_a_user_closes_only_that_users_cached_sessions() {
    let dovecot = Dovecot::shared();
    let pool = SessionPool::new(PoolSettings {
        warm: 0,
        ..PoolSettings::default()
    })
    .unwrap();
    pool.add_backend(
        "mail",
        BackendTarget::plain(dovecot.imap_addr().to_string()),
        100,
    );
    let mut creds = Vec::new();
    for i in [13, 14] {
        let (user, pass) = dovecot.user(i);
        creds.push(Credentials {
            username: user,
            password: Secret::new(pass.into_bytes()),
        });
    }
    for c in &creds {
        let session = pool.checkout("mail", c, &[]).await.unwrap();
        pool.checkin(session, Disposition::Reuse).await;
    }
    assert_eq!(pool.status().idle_sessions, 2);
    // Case-insensitive, like the checkout's key.
    assert_eq!(pool.forget_user(&creds[0].username.to_uppercase()), 1);
    assert_eq!(pool.status().idle_sessions, 1);
    assert_eq!(pool.forget_user(&creds[0].username), 0);
    // The other user's session is still reused.
    let session = pool.checkout("mail", &creds[1], &[]).await.unwrap();
    assert!(session.reused());
    // The forgotten user logs in afresh.
    let session = pool.checkout("mail", &creds[0], &[]).await.unwrap();
    assert!(!session.reused());
}
