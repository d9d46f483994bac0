//! Each way a backend can fail is its own `Error` variant (issue #12 item 11), and
//! `is_retryable` tells a failure of the backend from a failure of the caller or the user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{creds, greeting, login_ok, pool, target};
use imapproxy_pool::{BackendConn, Error, PoolSettings};
use imapproxy_testkit::{FakeBackend, Step};
use imapproxy_tls::TlsMode;

/// Connects to a fake backend playing `script`; the backend lives as long as the result.
async fn connect_to(script: Vec<Step>) -> (FakeBackend, Result<BackendConn, Error>) {
    let fake = FakeBackend::start(script).unwrap();
    let conn = BackendConn::connect(&target(fake.addr())).await;
    (fake, conn)
}

#[tokio::test]
async fn a_bye_greeting_is_greeting_bye_with_its_text() {
    let err = connect_to(vec![Step::send("* BYE Too many connections\r\n")])
        .await
        .1
        .unwrap_err();
    assert!(
        matches!(&err, Error::GreetingBye { text } if text == "Too many connections"),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_preauth_greeting_is_refused() {
    let (_fake, res) = connect_to(vec![
        Step::send("* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n"),
        Step::Hang,
    ])
    .await;
    let err = res.unwrap_err();
    assert!(matches!(err, Error::PreAuthGreeting), "{err:?}");
}

#[tokio::test]
async fn a_close_before_the_greeting_is_closed() {
    let err = connect_to(vec![Step::Close]).await.1.unwrap_err();
    assert!(matches!(err, Error::Closed), "{err:?}");
}

#[tokio::test]
async fn a_greeting_that_is_not_a_status_is_unexpected_data() {
    let (_fake, res) =
        connect_to(vec![Step::send("HTTP/1.1 400 Bad Request\r\n"), Step::Hang]).await;
    let err = res.unwrap_err();
    assert!(matches!(err, Error::UnexpectedData { .. }), "{err:?}");
}

#[tokio::test]
async fn bye_before_a_tagged_reply_is_bye() {
    let (_fake, conn) = connect_to(vec![
        greeting(),
        Step::expect("NOOP"),
        Step::send("* BYE Server shutting down\r\n"),
        Step::Hang,
    ])
    .await;
    let mut conn = conn.unwrap();
    let err = conn.command("NOOP").await.unwrap_err();
    assert!(
        matches!(&err, Error::Bye { text } if text == "Server shutting down"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_refused_starttls_is_command_rejected() {
    let fake = FakeBackend::start(vec![
        greeting(),
        Step::reply("STARTTLS", |tag| {
            format!("{tag} NO [UNAVAILABLE] not now\r\n").into_bytes()
        }),
        Step::Hang,
    ])
    .unwrap();
    let mut t = target(fake.addr());
    t.tls = TlsMode::StartTls;
    let err = BackendConn::connect(&t).await.unwrap_err();
    assert!(
        matches!(&err, Error::CommandRejected { command: "STARTTLS", code: Some(c) } if c == "UNAVAILABLE"),
        "{err:?}"
    );
}

#[tokio::test]
async fn tls_without_client_settings_is_tls_not_configured() {
    let fake = FakeBackend::start(vec![Step::Hang]).unwrap();
    let mut t = target(fake.addr());
    t.tls = TlsMode::Implicit;
    let err = BackendConn::connect(&t).await.unwrap_err();
    assert!(matches!(err, Error::TlsNotConfigured), "{err:?}");
}

#[tokio::test]
async fn pool_misuse_is_named_and_final() {
    let fake = FakeBackend::start(vec![greeting(), login_ok(), Step::Hang]).unwrap();
    let pool = pool(PoolSettings::default(), target(fake.addr()));
    let err = pool
        .checkout("elsewhere", &creds("u", "p"), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownBackend { name } if name == "elsewhere"),
        "{err:?}"
    );

    let mut sasl = pool.checkout_sasl("mail", "u", None).await.unwrap();
    let err = sasl.respond(b"x").await.unwrap_err();
    assert!(matches!(err, Error::SaslNotStarted), "{err:?}");
    assert!(!err.is_retryable());
    let err = sasl.start("X OAUTH", None, &[]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidMechanism), "{err:?}");
    assert!(!err.is_retryable());
}
