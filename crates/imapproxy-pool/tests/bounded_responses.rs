//! The connector's reader bounds what it buffers (issue #12 item 7): one message, and all
//! the untagged data before a tagged reply, against a fake backend that floods.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{creds, greeting, target, timed};
use imapproxy_pool::{BackendConn, Error, ResponseLimits};
use imapproxy_testkit::{FakeBackend, Step};

/// `total` bytes of untagged `LIST` lines, in steps of 64 KiB.
fn flood(total: usize) -> Vec<Step> {
    let line = b"* LIST (\\HasNoChildren) \"/\" \"INBOX/a-mailbox-with-a-longish-name\"\r\n";
    let chunk = line.repeat(64 * 1024 / line.len());
    (0..total / chunk.len())
        .map(|_| Step::send(&chunk))
        .collect()
}

#[tokio::test]
async fn untagged_data_without_end_fails_at_the_bound_instead_of_growing() {
    // 32 MiB of untagged data and no tagged reply: the call must fail once 4 MiB are held.
    let mut script = vec![greeting(), Step::expect("LIST")];
    script.extend(flood(32 << 20));
    script.push(Step::Hang);
    let fake = FakeBackend::start(script).unwrap();
    let t = target(fake.addr());
    assert_eq!(t.response_limits.max_untagged, 4 << 20);
    let mut conn = BackendConn::connect(&t).await.unwrap();
    let (res, took) = timed(conn.command("LIST \"\" \"*\"")).await;
    let err = res.unwrap_err();
    assert!(
        matches!(err, Error::UntaggedTooLarge { limit } if limit == 4 << 20),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    eprintln!("untagged flood: {err} after {took:?}");
}

#[tokio::test]
async fn a_smaller_bound_applies_to_the_login_too() {
    // The flood comes before the answer to LOGIN.
    let mut script = vec![greeting(), Step::expect("LOGIN")];
    script.extend(flood(2 << 20));
    script.push(Step::Hang);
    let fake = FakeBackend::start(script).unwrap();
    let mut t = target(fake.addr());
    t.response_limits = ResponseLimits {
        max_untagged: 256 * 1024,
        ..ResponseLimits::default()
    };
    let mut conn = BackendConn::connect(&t).await.unwrap();
    let err = conn.login(&creds("u", "p"), &[]).await.unwrap_err();
    assert!(
        matches!(err, Error::UntaggedTooLarge { limit: 262_144 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_response_within_the_bound_is_read_whole() {
    let fake = FakeBackend::start(vec![
        greeting(),
        Step::reply("LIST", |tag| {
            let mut out = b"* LIST () \"/\" INBOX\r\n".repeat(10_000);
            out.extend_from_slice(format!("{tag} OK done\r\n").as_bytes());
            out
        }),
        Step::Hang,
    ])
    .unwrap();
    let mut conn = BackendConn::connect(&target(fake.addr())).await.unwrap();
    let resp = conn.command("LIST \"\" \"*\"").await.unwrap();
    assert!(resp.is_ok());
    assert_eq!(resp.untagged.len(), 10_000);
}

#[tokio::test]
async fn one_message_past_its_bound_fails_even_as_a_literal() {
    let fake = FakeBackend::start(vec![
        greeting(),
        Step::expect("FETCH"),
        Step::send(format!("* 1 FETCH (BODY[] {{{}}}\r\n", 1 << 20)),
        Step::send(vec![b'x'; 1 << 20]),
        Step::Hang,
    ])
    .unwrap();
    let mut conn = BackendConn::connect(&target(fake.addr())).await.unwrap();
    let err = conn.command("FETCH 1 BODY[]").await.unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { limit } if limit == ResponseLimits::DEFAULT_MAX_MESSAGE),
        "{err:?}"
    );
}
