//! No `Debug` output of the crate shows a password, or bytes buffered from a backend that may
//! hold one (issue #12 item 5).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{creds, greeting, pool, target};
use imapproxy_pool::{BackendConn, ImapCheck, PoolSettings, ResponseLimits, ResponseReader};
use imapproxy_testkit::{FakeBackend, Step};

const PASSWORD: &str = "correct-horse-battery-staple";

/// Fails when `dbg` shows the password as text or as the byte list a derived `Debug` of a
/// `Vec<u8>` prints.
fn assert_hidden(what: &str, dbg: &str) {
    let bytes = format!("{:?}", PASSWORD.as_bytes());
    let bytes = bytes.trim_start_matches('[').trim_end_matches(']');
    assert!(!dbg.contains(PASSWORD), "{what} shows the password: {dbg}");
    assert!(
        !dbg.contains(bytes),
        "{what} shows the password's bytes: {dbg}"
    );
}

#[tokio::test]
async fn debug_output_never_shows_a_password() {
    // After the login the backend says something containing the password, which stays
    // buffered in the connection (a server echoing it is unusual, but SASL data and mail can
    // hold secrets just as well).
    let fake = FakeBackend::start(vec![
        greeting(),
        Step::reply("LOGIN", |tag| {
            format!("{tag} OK [CAPABILITY IMAP4rev1 UNSELECT] Logged in\r\n* OK {PASSWORD}\r\n")
                .into_bytes()
        }),
        Step::Hang,
    ])
    .unwrap();
    let c = creds("alice", PASSWORD);
    assert_hidden("Credentials", &format!("{c:?}"));
    assert_hidden(
        "ImapCheck",
        &format!("{:?}", ImapCheck::with_probe(c.clone())),
    );

    let mut conn = BackendConn::connect(&target(fake.addr())).await.unwrap();
    conn.login(&c, &[]).await.unwrap();
    // The echo came in the same write as the tagged OK: it is buffered, unread.
    let dbg = format!("{conn:?}");
    assert!(!dbg.contains("buffered: 0"), "nothing buffered: {dbg}");
    assert_hidden("BackendConn", &dbg);
    let buffered = conn.take_buffered();
    assert!(String::from_utf8_lossy(&buffered).contains(PASSWORD));

    let mut reader = ResponseReader::new(ResponseLimits::default());
    reader.feed(format!("* 1 FETCH (BODY[] {{{}}}\r\n{PASSWORD}", PASSWORD.len()).as_bytes());
    assert_eq!(reader.next_response("P1").unwrap(), None);
    assert_hidden("ResponseReader", &format!("{reader:?}"));
}

#[tokio::test]
async fn pooled_sessions_and_sasl_logins_hide_their_buffers() {
    let fake = FakeBackend::start_per_connection(vec![
        vec![
            greeting(),
            Step::reply("LOGIN", |tag| {
                format!("{tag} OK [CAPABILITY IMAP4rev1] Logged in\r\n* OK {PASSWORD}\r\n")
                    .into_bytes()
            }),
            Step::Hang,
        ],
        vec![
            Step::send(format!(
                "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n* OK {PASSWORD}\r\n"
            )),
            Step::Hang,
        ],
    ])
    .unwrap();
    let pool = pool(PoolSettings::default(), target(fake.addr()));
    let session = pool
        .checkout("mail", &creds("alice", PASSWORD), &[])
        .await
        .unwrap();
    let dbg = format!("{session:?}");
    assert!(!dbg.contains("buffered: 0"), "nothing buffered: {dbg}");
    assert_hidden("PooledSession", &dbg);
    assert_hidden("SessionPool", &format!("{pool:?}"));
    let sasl = pool.checkout_sasl("mail", "alice", None).await.unwrap();
    let dbg = format!("{sasl:?}");
    assert!(!dbg.contains("buffered: 0"), "nothing buffered: {dbg}");
    assert_hidden("SaslLogin", &dbg);
}
