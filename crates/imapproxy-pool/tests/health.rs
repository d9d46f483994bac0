//! The IMAP health check against real Dovecot instances.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use imapproxy_pool::{BackendTarget, Credentials, Error, ImapCheck, Secret};
use imapproxy_testkit::Dovecot;

fn target(addr: std::net::SocketAddr) -> BackendTarget {
    let mut target = BackendTarget::plain(addr.to_string());
    target.connect_timeout = Duration::from_secs(2);
    target.io_timeout = Duration::from_secs(5);
    target
}

#[tokio::test]
async fn a_healthy_backend_passes_with_and_without_probe_login() {
    let dovecot = Dovecot::shared();
    let target = target(dovecot.imap_addr());
    ImapCheck::new().check(&target).await.unwrap();

    let (user, pass) = dovecot.user(1);
    let probe = Credentials {
        username: user.clone(),
        password: Secret::new(pass.into_bytes()),
    };
    let before = dovecot.logins(&user);
    ImapCheck::with_probe(probe).check(&target).await.unwrap();
    let needle = format!("imap-login: Info: Login: user=<{user}>,");
    assert!(dovecot.wait_for_log(&needle, before + 1, Duration::from_secs(5)) > before);

    let wrong = Credentials {
        username: user,
        password: Secret::new(b"wrong".to_vec()),
    };
    let err = ImapCheck::with_probe(wrong)
        .check(&target)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AuthFailed { .. }), "{err:?}");
}

#[tokio::test]
async fn a_backend_behind_a_proxy_protocol_listener_passes() {
    let dovecot = Dovecot::shared();
    let mut target = target(dovecot.haproxy_addr());
    target.proxy_protocol = true;
    ImapCheck::new().check(&target).await.unwrap();
}

#[tokio::test]
async fn a_killed_backend_fails() {
    let mut dovecot = Dovecot::builder().users(1).start().unwrap();
    let target = target(dovecot.imap_addr());
    ImapCheck::new().check(&target).await.unwrap();
    dovecot.kill();
    let err = ImapCheck::new().check(&target).await.unwrap_err();
    // Refused, timed out, or reset by a login process that was still dying: any failure of
    // the connection itself, never one about credentials.
    assert!(
        matches!(
            err,
            Error::Connect { .. }
                | Error::Timeout { .. }
                | Error::Closed
                | Error::GreetingBye { .. }
                | Error::Io(_)
        ),
        "{err:?}"
    );
}
