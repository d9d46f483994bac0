//! Pre-auth behaviour through the proxy, against a real Dovecot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::start_proxy;
use imapproxy_testkit::{Dovecot, TestClient, free_port};

fn dovecot() -> &'static Dovecot {
    Dovecot::shared()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greeting_is_the_proxys_own() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let client = TestClient::connect(proxy.plain).await.unwrap();
    let greeting = client.greeting().to_ascii_lowercase();
    assert!(
        greeting.starts_with("* ok [capability imap4rev1"),
        "{greeting}"
    );
    assert!(!greeting.contains("dovecot"), "{greeting}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_atom_quoted_and_literal_arguments() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let (user, pass) = dovecot().user(1);

    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let r = c.cmd("a1", &format!("LOGIN {user} {pass}")).await.unwrap();
    assert!(r.tagged_ok(), "atom: {}", r.text());
    assert!(r.status_line().contains("[CAPABILITY "), "{}", r.text());

    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let r = c
        .cmd("a2", &format!("LOGIN \"{user}\" \"{pass}\""))
        .await
        .unwrap();
    assert!(r.tagged_ok(), "quoted: {}", r.text());

    // Synchronizing literals: the proxy itself sends the `+` continuations.
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(format!("a3 LOGIN {{{}}}\r\n", user.len()).as_bytes())
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+"));
    c.send_raw(format!("{user} {{{}}}\r\n", pass.len()).as_bytes())
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+"));
    c.send_raw(format!("{pass}\r\n").as_bytes()).await.unwrap();
    let r = c.read_until_tagged("a3").await.unwrap();
    assert!(r.tagged_ok(), "literal: {}", r.text());

    // LITERAL- (RFC 7888): non-synchronizing literals, no continuation expected.
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(
        format!(
            "a4 LOGIN {{{}+}}\r\n{user} {{{}+}}\r\n{pass}\r\n",
            user.len(),
            pass.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let r = c.read_until_tagged("a4").await.unwrap();
    assert!(r.tagged_ok(), "literal+: {}", r.text());
    let r = c.cmd("a5", "SELECT INBOX").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preauth_id_with_literal_values_as_outlook_sends_it() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(b"i1 ID (\"name\" {17}\r\n").await.unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+"));
    c.send_raw(b"Microsoft Outlook \"version\" \"16.0\")\r\n")
        .await
        .unwrap();
    let r = c.read_until_tagged("i1").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    let untagged = r.untagged();
    assert_eq!(untagged.len(), 1, "{}", r.text());
    assert!(untagged[0].starts_with("* ID ("), "{}", r.text());
    assert!(!r.text().to_ascii_lowercase().contains("dovecot"));
    // The session goes on normally afterwards.
    let (user, pass) = dovecot().user(1);
    assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_behind_starttls_are_discarded() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut c = TestClient::connect(proxy.starttls).await.unwrap();
    let (user, pass) = dovecot().user(1);
    // Everything after STARTTLS in the same packet is an injection attempt (RFC 9051 §6.2.1).
    c.send_raw(format!("s1 STARTTLS\r\ns2 LOGIN {user} {pass}\r\ns3 NOOP\r\n").as_bytes())
        .await
        .unwrap();
    let r = c.read_until_tagged("s1").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    // Upgrade by hand: the client's own `starttls` would send another STARTTLS.
    let upgraded = upgrade(c).await;
    let mut c = upgraded;
    let r = c.cmd("s4", "NOOP").await.unwrap();
    assert_eq!(
        r.lines.len(),
        1,
        "only s4's answer may arrive: {}",
        r.text()
    );
    assert!(r.tagged_ok());
    // Not logged in: the pipelined LOGIN was never executed.
    let r = c.cmd("s5", "SELECT INBOX").await.unwrap();
    assert!(!r.tagged_ok(), "{}", r.text());
}

/// STARTTLS by hand on a client whose `STARTTLS` was already answered.
async fn upgrade(mut c: TestClient) -> TestClient {
    c.upgrade_tls().await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logindisabled_before_starttls_and_login_after() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let (user, pass) = dovecot().user(1);
    let mut c = TestClient::connect(proxy.starttls).await.unwrap();
    assert!(c.greeting().contains("LOGINDISABLED"), "{}", c.greeting());
    assert!(c.greeting().contains("STARTTLS"));
    assert!(!c.greeting().contains("AUTH=PLAIN"));
    let r = c.login(&user, &pass).await.unwrap();
    assert!(
        r.status_line().contains("NO [PRIVACYREQUIRED]"),
        "{}",
        r.text()
    );
    let r = c
        .cmd("p1", "AUTHENTICATE PLAIN AHVzZXIxAHBhc3Mx")
        .await
        .unwrap();
    assert!(!r.tagged_ok(), "{}", r.text());

    c.starttls("t1").await.unwrap();
    assert!(c.is_tls());
    let r = c.cmd("c1", "CAPABILITY").await.unwrap();
    let caps = r.untagged().join(" ");
    assert!(!caps.contains("LOGINDISABLED"), "{caps}");
    assert!(!caps.contains("STARTTLS"), "{caps}");
    assert!(caps.contains("AUTH=PLAIN"), "{caps}");
    let r = c.login(&user, &pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_login() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let (user, pass) = dovecot().user(1);
    let mut c = TestClient::connect_tls(proxy.implicit).await.unwrap();
    assert!(!c.greeting().contains("STARTTLS"));
    assert!(!c.greeting().contains("LOGINDISABLED"));
    let r = c.login(&user, &pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    let r = c.cmd("x", "SELECT INBOX").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticate_plain_with_sasl_ir_and_with_continuation() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let (user, pass) = dovecot().user(2);
    let b64 = base64_plain(&user, &pass);

    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let r = c
        .cmd("a", &format!("AUTHENTICATE PLAIN {b64}"))
        .await
        .unwrap();
    assert!(r.tagged_ok(), "SASL-IR: {}", r.text());

    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(b"b AUTHENTICATE PLAIN\r\n").await.unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+"));
    c.send_raw(format!("{b64}\r\n").as_bytes()).await.unwrap();
    let r = c.read_until_tagged("b").await.unwrap();
    assert!(r.tagged_ok(), "continuation: {}", r.text());

    // AUTHENTICATE LOGIN: two prompts.
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(b"c AUTHENTICATE LOGIN\r\n").await.unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+ "));
    c.send_raw(format!("{}\r\n", b64_encode(user.as_bytes())).as_bytes())
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+ "));
    c.send_raw(format!("{}\r\n", b64_encode(pass.as_bytes())).as_bytes())
        .await
        .unwrap();
    let r = c.read_until_tagged("c").await.unwrap();
    assert!(r.tagged_ok(), "LOGIN mechanism: {}", r.text());

    // `*` cancels (RFC 9051 §6.2.2).
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(b"d AUTHENTICATE PLAIN\r\n").await.unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+"));
    c.send_raw(b"*\r\n").await.unwrap();
    let r = c.read_until_tagged("d").await.unwrap();
    assert!(r.status_line().starts_with("d BAD"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_authenticationfailed_without_backend_detail() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let (user, _) = dovecot().user(3);
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let r = c.login(&user, "wrong").await.unwrap();
    let line = r.status_line();
    assert!(line.contains("NO [AUTHENTICATIONFAILED]"), "{}", r.text());
    assert_eq!(r.lines.len(), 1, "{}", r.text());
    let lower = r.text().to_ascii_lowercase();
    assert!(
        !lower.contains("dovecot") && !lower.contains("127.0.0.1"),
        "{lower}"
    );
    // The session stays usable: a correct login now succeeds.
    let (user, pass) = dovecot().user(3);
    assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_down_gives_unavailable() {
    let dead = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = start_proxy(&[dead]).await;
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let r = c.login("user1", "pass1").await.unwrap();
    assert!(r.status_line().contains("NO [UNAVAILABLE]"), "{}", r.text());
    assert!(!r.text().contains(&dead.port().to_string()), "{}", r.text());
    // Still answering.
    assert!(c.cmd("n", "NOOP").await.unwrap().tagged_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_before_login_are_answered_by_the_proxy() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    assert!(c.cmd("a", "NOOP").await.unwrap().tagged_ok());
    let r = c.cmd("b", "SELECT INBOX").await.unwrap();
    assert!(r.status_line().starts_with("b BAD"), "{}", r.text());
    let r = c.cmd("c", "LOGOUT").await.unwrap();
    assert!(r.text().contains("* BYE"));
    assert!(r.tagged_ok());
    assert!(c.expect_eof(Duration::from_secs(5)).await);
}

fn b64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_plain(user: &str, pass: &str) -> String {
    b64_encode(format!("\0{user}\0{pass}").as_bytes())
}
