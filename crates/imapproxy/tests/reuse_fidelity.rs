//! A pooled backend session is reused only when provably clean, and the relay follows the
//! server: each case from issue #8, through the binary with reuse on, against real Dovecot.
//!
//! `max_per_user = 1` makes every later login of a user land on the one backend session the
//! earlier client left behind (when it was reusable), so state that leaked would show.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use common::{Binary, loopback};
use imapproxy_testkit::{Dovecot, TestClient};

/// NOTIFY needs the notify plugin and mailbox list indexes (RFC 5465 in Dovecot 2.3).
fn dovecot() -> &'static Dovecot {
    static D: OnceLock<Dovecot> = OnceLock::new();
    D.get_or_init(|| {
        Dovecot::builder()
            .users(16)
            .extra_config("mail_plugins = $mail_plugins notify\nmailbox_list_index = yes\n")
            .start()
            .expect("start Dovecot")
    })
}

struct Proxy {
    _binary: Binary,
    addr: SocketAddr,
}

fn proxy() -> &'static Proxy {
    static P: OnceLock<Proxy> = OnceLock::new();
    P.get_or_init(|| {
        let addr = loopback();
        let config = format!(
            r#"
[[listeners]]
addr = "{addr}"
tls = "none"
allow_plaintext_auth = true

[[backends]]
name = "mail1"
addr = "{backend}"

[pool]
reuse = true
warm = 0
max_per_user = 1
"#,
            backend = dovecot().imap_addr()
        );
        Proxy {
            _binary: Binary::start(&config, &[addr]),
            addr,
        }
    })
}

/// Logs test user `i` (from 0) in through the proxy; returns the client and whether it got a
/// reused session.
async fn login(i: usize) -> (TestClient, bool) {
    let (user, pass) = dovecot().user(i + 1);
    let mut c = TestClient::connect(proxy().addr).await.unwrap();
    let r = c.login(&user, &pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    (c, r.text().contains("[XPROXYREUSE]"))
}

/// Logs test user `i` (from 0) in directly at Dovecot.
async fn direct(i: usize) -> TestClient {
    let (user, pass) = dovecot().user(i + 1);
    let mut c = TestClient::connect(dovecot().imap_addr()).await.unwrap();
    assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
    c
}

/// LOGOUT is answered (`* BYE` and a tagged OK) and the connection then closes.
async fn logout_works(c: &mut TestClient) {
    let r = c.logout().await.unwrap();
    assert!(r.text().contains("* BYE") && r.tagged_ok(), "{}", r.text());
    assert!(c.expect_eof(Duration::from_secs(5)).await);
}

/// Waits until the proxy has handed the session back (it checks in before answering LOGOUT,
/// but a session it closes is released a moment later).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

fn message(n: usize) -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nSubject: fidelity\r\n\r\n".to_vec();
    // Lines that look like commands: the relay must treat them as literal data.
    while m.len() < n {
        m.extend_from_slice(b"x LOGOUT\r\n");
    }
    m.truncate(n);
    m
}

/// `SELECT INBOX`, then the untagged answers to a flag change and a flag fetch: with
/// CONDSTORE on, the server adds `MODSEQ` to them (RFC 7162 §3.2).
async fn select_fetch(c: &mut TestClient) -> (bool, String) {
    let s = c.cmd("s1", "SELECT INBOX").await.unwrap();
    let mut seen = modseq_probe(c).await;
    seen.insert(0, s.status_line());
    (s.tagged_ok(), seen.join("\n"))
}

async fn modseq_probe(c: &mut TestClient) -> Vec<String> {
    let mut seen = Vec::new();
    // Two real changes, so that the server answers each with a FETCH.
    for (tag, cmd) in [
        ("p1", "STORE 1 -FLAGS (probe)"),
        ("p2", "STORE 1 +FLAGS (probe)"),
        ("p3", "FETCH 1 (FLAGS)"),
    ] {
        let r = c.cmd(tag, cmd).await.unwrap();
        assert!(r.tagged_ok(), "{}", r.text());
        seen.extend(r.untagged());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_non_synchronizing_literal_does_not_hang_the_session() {
    let (mut c, _) = login(0).await;
    let body = message(93);
    // Dovecot answers as soon as it has read the command line, while the literal (which the
    // client sends all the same, RFC 7888) is still on its way: once whole, once in pieces.
    for (tag, pieces) in [("t", 1), ("v", 7)] {
        c.send_raw(format!("{tag} APPEND nosuchbox {{93+}}\r\n").as_bytes())
            .await
            .unwrap();
        let r = c.read_until_tagged(tag).await.unwrap();
        assert!(
            r.status_line()
                .starts_with(&format!("{tag} NO [TRYCREATE]")),
            "{}",
            r.text()
        );
        let mut rest = body.clone();
        rest.extend_from_slice(b"\r\n");
        for chunk in rest.chunks(rest.len().div_ceil(pieces)) {
            c.send_raw(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(c.cmd("u", "NOOP").await.unwrap().tagged_ok());
    }
    logout_works(&mut c).await;
    settle().await;
    // A refused APPEND leaves no state: the session was kept and is reused.
    let (mut c, reused) = login(0).await;
    assert!(reused, "a clean session was not reused");
    assert!(c.cmd("n", "NOOP").await.unwrap().tagged_ok());
    logout_works(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronizing_literal_refused_before_its_continuation_ends_the_command() {
    let (mut c, _) = login(1).await;
    // Dovecot refuses before asking for the literal; the client then sends nothing more.
    c.send_raw(b"t APPEND nosuchbox {10}\r\n").await.unwrap();
    let r = c.read_until_tagged("t").await.unwrap();
    assert!(
        r.status_line().starts_with("t NO [TRYCREATE]"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("\n+"), "{}", r.text());
    assert!(c.cmd("u", "NOOP").await.unwrap().tagged_ok());
    // The same with a tag used once already (legal once it was answered), pipelined.
    c.send_raw(b"A1 NOOP\r\nA1 APPEND nosuchbox {5}\r\n")
        .await
        .unwrap();
    let first = c.read_until_tagged("A1").await.unwrap();
    assert!(first.tagged_ok(), "{}", first.text());
    let second = c.read_until_tagged("A1").await.unwrap();
    assert!(
        second.status_line().starts_with("A1 NO [TRYCREATE]"),
        "{}",
        second.text()
    );
    // And one the server accepts: `+`, the literal, the answer.
    let body = message(40);
    c.send_raw(format!("A1 APPEND INBOX {{{}}}\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+"));
    let mut rest = body.clone();
    rest.extend_from_slice(b"\r\n");
    c.send_raw(&rest).await.unwrap();
    let r = c.read_until_tagged("A1").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    logout_works(&mut c).await;
    settle().await;
    let (mut c, reused) = login(1).await;
    assert!(reused, "a clean session was not reused");
    logout_works(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_state_never_reaches_the_next_client() {
    for (i, notify) in [
        (2, "NOTIFY NONE"),
        (3, "NOTIFY SET (personal (MailboxName SubscriptionChange))"),
    ] {
        let (mut c, _) = login(i).await;
        assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
        let r = c.cmd("n", notify).await.unwrap();
        assert!(
            r.tagged_ok(),
            "Dovecot must support NOTIFY here: {}",
            r.text()
        );
        logout_works(&mut c).await;
        settle().await;

        let (mut c, reused) = login(i).await;
        assert!(!reused, "a session that ran {notify} was reused");
        assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
        // Another session of the same user adds a message: this one must hear of it.
        let mut other = direct(i).await;
        let body = message(60);
        other
            .send_raw(format!("a APPEND INBOX {{{}+}}\r\n", body.len()).as_bytes())
            .await
            .unwrap();
        other.send_raw(&body).await.unwrap();
        other.send_raw(b"\r\n").await.unwrap();
        assert!(other.read_until_tagged("a").await.unwrap().tagged_ok());
        let r = c.cmd("p", "NOOP").await.unwrap();
        assert!(
            r.untagged().iter().any(|l| l.ends_with(" EXISTS")),
            "after {notify} in the previous session: {}",
            r.text()
        );
        logout_works(&mut c).await;
        logout_works(&mut other).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicitly_enabled_condstore_never_reaches_the_next_client() {
    let mut fresh = direct(4).await;
    let (ok, reference) = select_fetch(&mut fresh).await;
    assert!(ok && !reference.contains("MODSEQ"), "{reference}");
    logout_works(&mut fresh).await;

    // RFC 7162 §3.1: each of these switches CONDSTORE on for the rest of the connection.
    // (trigger, run before it, run after it)
    for (trigger, before, after) in [
        ("STATUS INBOX (HIGHESTMODSEQ)", None, Some("SELECT INBOX")),
        ("SELECT INBOX (CONDSTORE)", None, None),
        ("FETCH 1 (MODSEQ)", Some("SELECT INBOX"), None),
        (
            "FETCH 1:* (FLAGS) (CHANGEDSINCE 1)",
            Some("SELECT INBOX"),
            None,
        ),
        (
            "STORE 1 (UNCHANGEDSINCE 1000000) +FLAGS (fidelity)",
            Some("SELECT INBOX"),
            None,
        ),
        ("SEARCH MODSEQ 1", Some("SELECT INBOX"), None),
    ] {
        let (mut c, _) = login(4).await;
        if let Some(cmd) = before {
            assert!(c.cmd("b", cmd).await.unwrap().tagged_ok());
        }
        let r = c.cmd("t", trigger).await.unwrap();
        assert!(r.tagged_ok(), "{trigger}: {}", r.text());
        if let Some(cmd) = after {
            assert!(c.cmd("a", cmd).await.unwrap().tagged_ok());
        }
        // The trigger really did switch CONDSTORE on in this session.
        let seen = modseq_probe(&mut c).await.join("\n");
        assert!(seen.contains("MODSEQ"), "{trigger}: {seen}");
        logout_works(&mut c).await;
        settle().await;

        let (mut c, reused) = login(4).await;
        assert!(!reused, "the session that ran {trigger} was reused");
        let (ok, seen) = select_fetch(&mut c).await;
        assert!(ok);
        assert!(!seen.contains("MODSEQ"), "after {trigger}: {seen}");
        logout_works(&mut c).await;
        settle().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_hidden_in_a_literal_of_an_argumentless_command_are_noticed() {
    // Dovecot skips NOOP's "arguments" to the line end and runs the "literal" as commands.
    for (i, hidden) in [(5, "b ENABLE CONDSTORE\r\n"), (6, "b SELECT INBOX\r\n")] {
        let (mut c, _) = login(i).await;
        let mut cmd = format!("a NOOP {{{}+}}\r\n", hidden.len()).into_bytes();
        cmd.extend_from_slice(hidden.as_bytes());
        c.send_raw(&cmd).await.unwrap();
        let a = c.read_until_tagged("a").await.unwrap();
        let b = c.read_until_tagged("b").await.unwrap();
        assert!(a.tagged_ok() && b.tagged_ok(), "{}{}", a.text(), b.text());
        // The proxy cannot know where this client's commands start: LOGOUT still works.
        logout_works(&mut c).await;
        settle().await;

        let (mut c, reused) = login(i).await;
        assert!(
            !reused,
            "the session that ran a hidden {hidden:?} was reused"
        );
        // Nothing selected and nothing enabled, as in a fresh session.
        let f = c.cmd("f", "FETCH 1 (FLAGS)").await.unwrap();
        assert!(!f.tagged_ok(), "a mailbox is still selected: {}", f.text());
        let (ok, seen) = select_fetch(&mut c).await;
        assert!(ok && !seen.contains("MODSEQ"), "{seen}");
        logout_works(&mut c).await;
        settle().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_bearing_commands_make_a_session_single_use_and_plain_ones_do_not() {
    for (i, script, reusable) in [
        (
            7,
            &["SELECT INBOX", "UID FETCH 1:* (FLAGS)", "UID SEARCH ALL"][..],
            true,
        ),
        (
            8,
            &[
                "LIST \"\" *",
                "STATUS INBOX (MESSAGES UIDNEXT)",
                "EXAMINE INBOX",
            ],
            true,
        ),
        (9, &["ENABLE CONDSTORE"], false),
        (10, &["SELECT INBOX", "SEARCH RETURN (SAVE) ALL"], false),
        (11, &["XNOSUCHCOMMAND"], false),
        (12, &["SELECT INBOX", "FETCH 1 (FLAGS"], false), // BAD: desynchronised
    ] {
        let (mut c, _) = login(i).await;
        for (n, cmd) in script.iter().enumerate() {
            c.cmd(&format!("c{n}"), cmd).await.unwrap();
        }
        logout_works(&mut c).await;
        settle().await;
        let (mut c, reused) = login(i).await;
        assert_eq!(reused, reusable, "after {script:?}");
        // Always back in the authenticated state, as after a fresh login.
        let f = c.cmd("f", "FETCH 1 (FLAGS)").await.unwrap();
        assert!(!f.tagged_ok(), "after {script:?}: {}", f.text());
        logout_works(&mut c).await;
        settle().await;
    }
}
