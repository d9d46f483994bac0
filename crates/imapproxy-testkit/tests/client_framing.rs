//! `TestClient` framing against a scripted `FakeBackend`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use imapproxy_testkit::{FakeBackend, Step, TestClient};

#[tokio::test]
async fn literals_are_inlined_but_not_after_status_text() {
    let fake = FakeBackend::start(vec![
        Step::greeting(),
        Step::reply("FETCH", |tag| {
            format!(
                "* OK [ALERT] mailbox {{5}}\r\n* 1 FETCH (BODY[] {{8}}\r\nab\r\ncd\r\n UID 9)\r\n{tag} NO no such {{3}}\r\n"
            )
            .into_bytes()
        }),
        Step::Hang,
    ])
    .unwrap();
    let mut c = TestClient::connect(fake.addr()).await.unwrap();
    assert!(c.greeting().contains("fake backend ready"));
    let r = c.cmd("a1", "FETCH 1 BODY[]").await.unwrap();
    assert_eq!(r.lines.len(), 3, "{:?}", r.text());
    assert_eq!(r.lines[0], b"* OK [ALERT] mailbox {5}\r\n");
    assert_eq!(
        r.lines[1],
        b"* 1 FETCH (BODY[] {8}\r\nab\r\ncd\r\n UID 9)\r\n"
    );
    assert!(!r.tagged_ok());
    assert_eq!(r.status_line(), "a1 NO no such {3}");
    assert_eq!(fake.received(), vec![b"a1 FETCH 1 BODY[]\r\n".to_vec()]);
}

#[tokio::test]
async fn eof_timeout_and_script_mismatch() {
    let fake = FakeBackend::start_per_connection(vec![
        vec![Step::greeting(), Step::expect("LOGIN"), Step::Close],
        vec![Step::greeting(), Step::Hang],
    ])
    .unwrap();

    let mut c = TestClient::connect(fake.addr()).await.unwrap();
    c.send_raw(b"x NOOP\r\n").await.unwrap();
    assert!(c.expect_eof(Duration::from_secs(5)).await);

    let mut c = TestClient::connect(fake.addr()).await.unwrap();
    assert!(!c.expect_eof(Duration::from_millis(200)).await);
    c.set_timeout(Duration::from_millis(200));
    let err = c.cmd("y", "NOOP").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);

    assert_eq!(fake.connections(), 2);
    let errors = fake.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("expected a line starting with \"LOGIN\""));
}

#[tokio::test]
async fn half_sent_literal_then_close_is_an_eof_error() {
    let fake = FakeBackend::start(vec![
        Step::greeting(),
        Step::send("* 1 FETCH (BODY[] {100}\r\nonly a few"),
        Step::Close,
    ])
    .unwrap();
    let mut c = TestClient::connect(fake.addr()).await.unwrap();
    let err = c.read_line().await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}
