//! `SessionPool::checkin` against a real Dovecot: the pool always resets a returned session
//! with `UNSELECT`, and caches it only when the answer is clean.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use imapproxy_pool::{
    BackendConn, BackendTarget, Credentials, Disposition, PoolSettings, Response, Secret,
    SessionPool,
};
use imapproxy_testkit::Dovecot;

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

/// The tagged line without the connector's tag and without Dovecot's timing suffix
/// (`(0.001 + 0.000 secs).`), which differs from run to run.
fn answer(r: &Response) -> String {
    let line = String::from_utf8_lossy(&r.tagged).trim_end().to_owned();
    let without_tag = line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest);
    match without_tag.rfind(" (") {
        Some(i) if without_tag.ends_with("secs).") => without_tag[..i].to_owned(),
        _ => without_tag.to_owned(),
    }
}

#[tokio::test]
async fn a_session_returned_with_a_mailbox_selected_comes_back_unselected() {
    let dovecot = Dovecot::shared();
    let pool = pool(dovecot);
    let c = creds(dovecot, 3);

    let mut session = pool.checkout("mail", &c, &[]).await.unwrap();
    assert!(
        session
            .conn()
            .command("SELECT INBOX")
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        session
            .conn()
            .command("FETCH 1 (FLAGS)")
            .await
            .unwrap()
            .is_ok()
    );
    // The caller says nothing about the selected mailbox: the pool resets anyway.
    pool.checkin(session, Disposition::Reuse).await;
    assert_eq!(pool.status().idle_sessions, 1);

    let mut session = pool.checkout("mail", &c, &[]).await.unwrap();
    assert!(session.reused());
    let through_pool = session.conn().command("FETCH 1 (FLAGS)").await.unwrap();
    assert!(
        through_pool.untagged.is_empty(),
        "{:?}",
        through_pool.untagged
    );

    // What a fresh, never-selected session of the same user answers.
    let mut direct = BackendConn::connect(&BackendTarget::plain(dovecot.imap_addr().to_string()))
        .await
        .unwrap();
    direct.login(&c, &[]).await.unwrap();
    let fresh = direct.command("FETCH 1 (FLAGS)").await.unwrap();
    assert!(!fresh.is_ok());
    assert_eq!(answer(&through_pool), answer(&fresh));
}

#[tokio::test]
async fn a_session_returned_for_closing_is_not_cached() {
    let dovecot = Dovecot::shared();
    let pool = pool(dovecot);
    let c = creds(dovecot, 4);
    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    pool.checkin(session, Disposition::Close).await;
    assert_eq!(pool.status().idle_sessions, 0);
    assert_eq!(pool.status().slots_in_use, 0);
    let session = pool.checkout("mail", &c, &[]).await.unwrap();
    assert!(!session.reused());
    pool.checkin(session, Disposition::Reuse).await;
    assert_eq!(pool.status().idle_sessions, 1);
}

#[tokio::test]
async fn news_of_the_previous_clients_mailbox_never_reaches_the_next_client() {
    // Its own instance: the APPEND changes the user's INBOX.
    let dovecot = Dovecot::builder().users(2).start().unwrap();
    let pool = pool(&dovecot);
    let c = creds(&dovecot, 1);

    let mut session = pool.checkout("mail", &c, &[]).await.unwrap();
    assert!(
        session
            .conn()
            .command("SELECT INBOX")
            .await
            .unwrap()
            .is_ok()
    );

    // Another session of the same user adds a message while the first one has INBOX
    // selected; a server reports that (`* n EXISTS`) at the selected session's next command.
    let mut other = BackendConn::connect(&BackendTarget::plain(dovecot.imap_addr().to_string()))
        .await
        .unwrap();
    other.login(&c, &[]).await.unwrap();
    let msg = "From: a@example.org\r\nSubject: news\r\n\r\nhello\r\n";
    // `command` adds the CRLF that ends the command after the literal.
    let append = format!("APPEND INBOX {{{}+}}\r\n{msg}", msg.len());
    let r = other.command(&append).await.unwrap();
    assert!(r.is_ok(), "{:?}", String::from_utf8_lossy(&r.tagged));

    // Dovecot closes the mailbox without reporting the news first, so the reset is clean and
    // the session is cached; the next client must not hear about the old mailbox.
    pool.checkin(session, Disposition::Reuse).await;
    assert_eq!(pool.status().idle_sessions, 1);
    let mut session = pool.checkout("mail", &c, &[]).await.unwrap();
    assert!(session.reused());
    let noop = session.conn().command("NOOP").await.unwrap();
    assert!(noop.is_ok());
    let stale: Vec<String> = noop
        .untagged
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    assert!(stale.is_empty(), "the next client heard: {stale:?}");
}
