//! A backend whose socket stays open but which stops answering (issue #12 item 4), played by
//! the scripted fake backend: every step gives up within its own short bound, and a cached
//! session on such a backend is replaced by a fresh login instead of failing the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{creds, greeting, login_ok, pool, target, timed, unselect_bad};
use imapproxy_pool::{BackendConn, BackendTarget, Disposition, Error, PoolSettings};
use imapproxy_testkit::{FakeBackend, Step};

/// Slack for scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn a_backend_that_never_greets_fails_within_greeting_timeout() {
    let fake = FakeBackend::start(vec![Step::Hang]).unwrap();
    let mut t = target(fake.addr());
    t.greeting_timeout = Duration::from_millis(400);
    let (res, took) = timed(BackendConn::connect(&t)).await;
    let err = res.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                step: "greeting",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        took >= t.greeting_timeout && took < t.greeting_timeout + SLACK,
        "took {took:?}"
    );
    eprintln!("no greeting: failed after {took:?} (greeting_timeout 400ms, io_timeout 30s)");
}

#[tokio::test]
async fn the_default_greeting_timeout_is_five_seconds_not_the_io_timeout() {
    let fake = FakeBackend::start(vec![Step::Hang]).unwrap();
    let t = target(fake.addr());
    assert_eq!(t.greeting_timeout, Duration::from_secs(5));
    let (res, took) = timed(BackendConn::connect(&t)).await;
    assert!(matches!(
        res,
        Err(Error::Timeout {
            step: "greeting",
            ..
        })
    ));
    assert!(took < Duration::from_secs(5) + SLACK, "took {took:?}");
    eprintln!("no greeting, default settings: failed after {took:?}");
}

#[tokio::test]
async fn a_backend_that_never_answers_the_login_fails_within_login_timeout() {
    let fake = FakeBackend::start(vec![greeting(), Step::Hang]).unwrap();
    let mut t = target(fake.addr());
    t.login_timeout = Duration::from_millis(600);
    let mut conn = BackendConn::connect(&t).await.unwrap();
    let (res, took) = timed(conn.login(&creds("u", "p"), &[])).await;
    let err = res.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { step: "login", .. }),
        "{err:?}"
    );
    assert!(
        took >= t.login_timeout && took < t.login_timeout + SLACK,
        "took {took:?}"
    );
    eprintln!("no login answer: failed after {took:?} (login_timeout 600ms)");
}

#[tokio::test]
async fn a_login_answered_after_the_servers_failure_delay_is_not_a_timeout() {
    // Dovecot answers a wrong password after auth_failure_delay (2 s); the default login
    // timeout must leave room for it.
    let fake = FakeBackend::start(vec![
        greeting(),
        Step::expect("LOGIN"),
        Step::Sleep(Duration::from_secs(2)),
        Step::send("P1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
        Step::Hang,
    ])
    .unwrap();
    let t = target(fake.addr());
    let mut conn = BackendConn::connect(&t).await.unwrap();
    let err = conn.login(&creds("u", "wrong"), &[]).await.unwrap_err();
    assert!(
        matches!(&err, Error::AuthFailed { code: Some(c) } if c == "AUTHENTICATIONFAILED"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_cached_session_on_a_frozen_backend_is_replaced_by_a_fresh_login_within_liveness_timeout()
{
    // Connection 0 logs in, is reset and cached, then never answers again (the NOOP hangs);
    // connection 1 is the fresh login that replaces it.
    let fake = FakeBackend::start_per_connection(vec![
        vec![greeting(), login_ok(), unselect_bad(), Step::Hang],
        vec![greeting(), login_ok(), Step::Hang],
    ])
    .unwrap();
    let settings = PoolSettings {
        noop_after: Duration::from_millis(100),
        liveness_timeout: Duration::from_millis(500),
        ..PoolSettings::default()
    };
    let pool = pool(settings.clone(), target(fake.addr()));
    let c = creds("u", "p");

    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    pool.checkin(session, Disposition::Reuse).await;
    assert_eq!(pool.status().idle_sessions, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (res, took) = timed(pool.checkout("mail", &c, &[])).await;
    let session = res.unwrap();
    assert!(!session.reused(), "the frozen session was lent");
    assert_eq!(fake.connections(), 2);
    assert!(
        took >= settings.liveness_timeout && took < settings.liveness_timeout + SLACK,
        "took {took:?}"
    );
    assert!(
        fake.received().iter().any(|l| l.ends_with(b"NOOP\r\n")),
        "no NOOP was sent"
    );
    let st = pool.status();
    assert_eq!((st.hits, st.misses, st.idle_sessions), (0, 2, 0));
    eprintln!("frozen cached session: fresh login after {took:?} (liveness_timeout 500ms)");
}

#[tokio::test]
async fn a_cached_session_used_moments_ago_is_lent_without_a_round_trip() {
    let fake =
        FakeBackend::start(vec![greeting(), login_ok(), unselect_bad(), Step::Hang]).unwrap();
    let pool = pool(PoolSettings::default(), target(fake.addr()));
    let c = creds("u", "p");
    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    pool.checkin(session, Disposition::Reuse).await;
    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    assert!(session.reused());
    assert!(!fake.received().iter().any(|l| l.ends_with(b"NOOP\r\n")));
}

#[test]
fn the_pool_checks_a_session_idle_for_two_seconds_and_waits_two_seconds_for_it() {
    let s = PoolSettings::default();
    assert_eq!(s.noop_after, Duration::from_secs(2));
    assert_eq!(s.liveness_timeout, Duration::from_secs(2));
    let t = BackendTarget::plain("127.0.0.1:143");
    assert_eq!(t.login_timeout, Duration::from_secs(10));
}
