//! The Dovecot sandbox, driven directly with `TestClient`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use imapproxy_testkit::{BIG_MESSAGE_SIZE, Dovecot, TestClient, big_message, shared_mail_dir};

#[tokio::test]
async fn plain_login_and_seeded_inbox_in_uid_order() {
    let d = Dovecot::shared();
    let mut c = TestClient::connect(d.imap_addr()).await.unwrap();
    assert!(c.greeting().starts_with("* OK"), "{}", c.greeting());
    let (user, pass) = d.user(1);
    assert_eq!((user.as_str(), pass.as_str()), ("user1", "pass1"));
    let r = c.login(&user, &pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    let r = c.cmd("s", "SELECT INBOX").await.unwrap();
    assert!(r.text().contains("* 6 EXISTS"), "{}", r.text());
    let r = c
        .cmd("f", "UID FETCH 1:5 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await
        .unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    let subjects: Vec<usize> = (1..=5)
        .map(|n| r.text().find(&format!("Subject: Test {n}\r\n")).unwrap())
        .collect();
    assert!(subjects.windows(2).all(|w| w[0] < w[1]), "{}", r.text());
    assert_eq!(r.lines.len(), 6);
    c.logout().await.unwrap();

    let mut c = TestClient::connect(d.imap_addr()).await.unwrap();
    let (user, pass) = d.user(2);
    assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
    let r = c.cmd("s", "EXAMINE INBOX").await.unwrap();
    assert!(r.text().contains("* 5 EXISTS"), "{}", r.text());
}

#[tokio::test]
async fn big_message_fetches_byte_for_byte() {
    let d = Dovecot::shared();
    let mut c = TestClient::connect(d.imap_addr()).await.unwrap();
    assert!(c.login("user1", "pass1").await.unwrap().tagged_ok());
    assert!(c.cmd("s", "EXAMINE INBOX").await.unwrap().tagged_ok());
    let r = c.cmd("f", "FETCH 6 BODY.PEEK[]").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.status_line());
    let line = &r.lines[0];
    let head = format!("* 6 FETCH (BODY[] {{{BIG_MESSAGE_SIZE}}}\r\n");
    assert!(line.starts_with(head.as_bytes()));
    let body = &line[head.len()..head.len() + BIG_MESSAGE_SIZE];
    assert!(body == big_message().as_slice(), "fetched bytes differ");
    assert_eq!(&line[head.len() + BIG_MESSAGE_SIZE..], b")\r\n");
}

#[tokio::test]
async fn implicit_tls_login() {
    let d = Dovecot::shared();
    let mut c = TestClient::connect_tls(d.imaps_addr()).await.unwrap();
    assert!(c.is_tls());
    assert!(c.greeting().starts_with("* OK"));
    let (user, pass) = d.user(3);
    assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
    let r = c.logout().await.unwrap();
    assert!(r.text().contains("* BYE"));
    assert!(c.expect_eof(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn starttls_then_login() {
    let d = Dovecot::shared();
    let mut c = TestClient::connect(d.imap_addr()).await.unwrap();
    assert!(c.greeting().contains("STARTTLS"), "{}", c.greeting());
    let status = c.starttls("t1").await.unwrap();
    assert!(status.starts_with("t1 OK"), "{status}");
    assert!(c.is_tls());
    let (user, pass) = d.user(4);
    assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
}

#[tokio::test]
async fn wrong_password_is_refused_and_logged() {
    let d = Dovecot::shared();
    let mut c = TestClient::connect(d.imap_addr()).await.unwrap();
    let r = c.login("user5", "wrong").await.unwrap();
    assert!(!r.tagged_ok());
    assert!(
        r.status_line().contains("AUTHENTICATIONFAILED"),
        "{}",
        r.status_line()
    );
}

#[tokio::test]
async fn log_shows_client_ip_and_counts_logins() {
    let d = Dovecot::shared();
    let before = d.logins("user6");
    let mut c = TestClient::connect(d.imap_addr()).await.unwrap();
    assert!(c.login("user6", "pass6").await.unwrap().tagged_ok());
    c.logout().await.unwrap();
    // The log process writes asynchronously; give it a moment.
    let needle = "imap-login: Info: Login: user=<user6>,";
    d.wait_for_log(needle, before + 1, Duration::from_secs(2));
    assert_eq!(d.logins("user6"), before + 1, "{}", d.log());
    assert!(d.log().contains("rip=127.0.0.1"));
}

#[tokio::test]
async fn master_user_logs_in_as_any_user() {
    let d = Dovecot::shared();
    let (master, mpass) = d.master_user();
    let mut c = TestClient::connect(d.imap_addr()).await.unwrap();
    let r = c.login(&format!("user7*{master}"), &mpass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    let r = c.cmd("s", "EXAMINE INBOX").await.unwrap();
    assert!(r.text().contains("* 5 EXISTS"));
    let mut c = TestClient::connect(d.imap_addr()).await.unwrap();
    let r = c
        .login(&format!("nosuchuser*{master}"), &mpass)
        .await
        .unwrap();
    assert!(!r.tagged_ok());
}

#[tokio::test]
async fn haproxy_port_takes_client_address_from_proxy_header() {
    let d = Dovecot::shared();
    let mut c = TestClient::connect_without_greeting(d.haproxy_addr())
        .await
        .unwrap();
    let port = d.haproxy_addr().port();
    c.send_raw(format!("PROXY TCP4 10.9.8.7 127.0.0.1 40000 {port}\r\n").as_bytes())
        .await
        .unwrap();
    assert!(c.read_greeting().await.unwrap().starts_with("* OK"));
    assert!(c.login("user8", "pass8").await.unwrap().tagged_ok());
    for _ in 0..50 {
        if d.log().contains("rip=10.9.8.7") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        d.log().contains("user=<user8>, method=PLAIN, rip=10.9.8.7"),
        "{}",
        d.log()
    );
}

#[tokio::test]
async fn two_instances_sharing_a_mail_dir_see_each_others_append() {
    let store = shared_mail_dir().unwrap();
    let a = Dovecot::builder()
        .users(2)
        .mail_dir(store.path())
        .start()
        .unwrap();
    let b = Dovecot::builder()
        .users(2)
        .mail_dir(store.path())
        .start()
        .unwrap();
    assert_ne!(a.imap_addr(), b.imap_addr());

    let mut ca = TestClient::connect(a.imap_addr()).await.unwrap();
    assert!(ca.login("user2", "pass2").await.unwrap().tagged_ok());
    let msg = "Subject: appended on A\r\n\r\nhello\r\n";
    ca.send_raw(format!("ap APPEND INBOX {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes())
        .await
        .unwrap();
    let r = ca.read_until_tagged("ap").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());

    let mut cb = TestClient::connect(b.imap_addr()).await.unwrap();
    assert!(cb.login("user2", "pass2").await.unwrap().tagged_ok());
    let r = cb.cmd("s", "EXAMINE INBOX").await.unwrap();
    assert!(
        r.text().contains("* 6 EXISTS"),
        "not seeded twice: {}",
        r.text()
    );
    let r = cb
        .cmd("f", "FETCH 6 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
        .await
        .unwrap();
    assert!(r.text().contains("appended on A"), "{}", r.text());
}

#[tokio::test]
async fn connection_limit_and_kill() {
    let mut d = Dovecot::builder()
        .users(1)
        .max_userip_connections(1)
        .extra_config("mail_debug = no")
        .start()
        .unwrap();
    let mut first = TestClient::connect(d.imap_addr()).await.unwrap();
    assert!(first.login("user1", "pass1").await.unwrap().tagged_ok());
    let mut second = TestClient::connect(d.imap_addr()).await.unwrap();
    let r = second.login("user1", "pass1").await.unwrap();
    assert!(r.status_line().contains("NO [LIMIT]"), "{}", r.text());

    let pid = d.pid().unwrap();
    d.kill();
    assert!(d.pid().is_none());
    assert!(
        first.expect_eof(Duration::from_secs(5)).await,
        "session survived kill"
    );
    assert!(TestClient::connect(d.imap_addr()).await.is_err());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
