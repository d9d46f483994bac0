//! The logged-in relay through the proxy, against a real Dovecot (and a scripted fake backend
//! for the one fault Dovecot cannot produce).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{read_tags, start_proxy};
use imapproxy_testkit::{BIG_MESSAGE_SIZE, Dovecot, FakeBackend, Step, TestClient, big_message};

fn dovecot() -> &'static Dovecot {
    Dovecot::shared()
}

async fn logged_in(addr: std::net::SocketAddr, user: usize) -> TestClient {
    let (name, pass) = dovecot().user(user);
    let mut c = TestClient::connect(addr).await.unwrap();
    let r = c.login(&name, &pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_of_a_1mib_message_is_byte_exact() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut via_proxy = logged_in(proxy.plain, 1).await;
    let mut direct = logged_in(dovecot().imap_addr(), 1).await;
    let mut bodies = Vec::new();
    for c in [&mut via_proxy, &mut direct] {
        assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
        let r = c.cmd("f", "FETCH 1:* (RFC822.SIZE)").await.unwrap();
        let big = r
            .untagged()
            .iter()
            .find(|l| l.contains(&format!("RFC822.SIZE {BIG_MESSAGE_SIZE}")))
            .map(|l| l.split(' ').nth(1).unwrap().to_owned())
            .expect("the seeded 1 MiB message");
        let r = c
            .cmd("g", &format!("FETCH {big} BODY.PEEK[]"))
            .await
            .unwrap();
        assert!(r.tagged_ok());
        // Everything but the tagged line (whose text carries Dovecot's timings).
        bodies.push(r.lines[..r.lines.len() - 1].concat());
    }
    assert_eq!(bodies[0].len(), bodies[1].len());
    assert!(bodies[0] == bodies[1], "proxy altered the FETCH response");
    let body = big_message();
    assert!(
        bodies[0].windows(body.len()).any(|w| w == body.as_slice()),
        "the literal is the seeded message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_with_synchronizing_literal_and_literal_plus() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut c = logged_in(proxy.plain, 4).await;
    let msg = b"From: a@example.org\r\nSubject: sync\r\n\r\nbody one\r\n";
    c.send_raw(format!("a1 APPEND INBOX {{{}}}\r\n", msg.len()).as_bytes())
        .await
        .unwrap();
    // The continuation comes from Dovecot, through the relay.
    assert!(c.read_line().await.unwrap().starts_with(b"+"));
    c.send_raw(msg).await.unwrap();
    c.send_raw(b"\r\n").await.unwrap();
    let r = c.read_until_tagged("a1").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());

    let msg2 = b"From: a@example.org\r\nSubject: plus\r\n\r\nbody two\r\n";
    let mut cmd = format!("a2 APPEND INBOX {{{}+}}\r\n", msg2.len()).into_bytes();
    cmd.extend_from_slice(msg2);
    cmd.extend_from_slice(b"\r\n");
    c.send_raw(&cmd).await.unwrap();
    let r = c.read_until_tagged("a2").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());

    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    let r = c
        .cmd("f", "UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await
        .unwrap();
    let text = r.text();
    assert!(
        text.contains("Subject: sync") && text.contains("Subject: plus"),
        "{text}"
    );
}

/// Long literals between plain sockets go through a pipe with splice(2) rather than the
/// relay's buffer: both directions, a synchronizing literal and a LITERAL+ one, written in odd
/// pieces with a command pipelined after, read back by a client that lets the socket buffers
/// fill before it reads. Every byte arrives, in order, with nothing lost at the pipe's edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_literals_both_ways_are_byte_exact() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut c = logged_in(proxy.plain, 7).await;
    assert!(c.cmd("c", "CREATE Spliced").await.unwrap().tagged_ok());
    // Not a multiple of any pipe or read size; every line CRLF-ended.
    let body = |seed: u8| {
        let mut m = format!("Subject: spliced {seed}\r\n\r\n").into_bytes();
        let mut i = 0u32;
        while m.len() < 700_001 {
            m.extend_from_slice(format!("{seed:03} line {i:07} ").as_bytes());
            m.extend(std::iter::repeat_n(
                b'a' + (i % 26) as u8,
                (i % 97) as usize,
            ));
            m.extend_from_slice(b"\r\n");
            i += 1;
        }
        m
    };
    let (one, two) = (body(1), body(2));

    // A synchronizing literal: the continuation first, then the bytes in odd pieces.
    c.send_raw(format!("a1 APPEND Spliced {{{}}}\r\n", one.len()).as_bytes())
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with(b"+"));
    for piece in one.chunks(40_009) {
        c.send_raw(piece).await.unwrap();
    }
    c.send_raw(b"\r\na1n NOOP\r\n").await.unwrap();
    assert!(c.read_until_tagged("a1").await.unwrap().tagged_ok());
    assert!(c.read_until_tagged("a1n").await.unwrap().tagged_ok());

    // LITERAL+: command, literal and a pipelined command in one write.
    let mut cmd = format!("a2 APPEND Spliced {{{}+}}\r\n", two.len()).into_bytes();
    cmd.extend_from_slice(&two);
    cmd.extend_from_slice(b"\r\na2n NOOP\r\n");
    c.send_raw(&cmd).await.unwrap();
    assert!(c.read_until_tagged("a2").await.unwrap().tagged_ok());
    assert!(c.read_until_tagged("a2n").await.unwrap().tagged_ok());

    assert!(c.cmd("s", "SELECT Spliced").await.unwrap().tagged_ok());
    c.send_raw(b"f UID FETCH 1:* BODY.PEEK[]\r\nfn NOOP\r\n")
        .await
        .unwrap();
    // Let both socket buffers fill: the proxy's writes to us block mid-literal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.read_until_tagged("f").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.status_line());
    let fetched = r.lines[..r.lines.len() - 1].concat();
    for (n, m) in [(1, &one), (2, &two)] {
        let head = format!("BODY[] {{{}}}\r\n", m.len()).into_bytes();
        // The messages come in the order appended.
        let at = fetched
            .windows(head.len())
            .enumerate()
            .filter(|(_, w)| *w == head.as_slice())
            .nth(n - 1)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("message {n}'s literal announced"));
        let start = at + head.len();
        let got = fetched.get(start..start + m.len()).unwrap_or(&[]);
        if got != m.as_slice() {
            let d = got
                .iter()
                .zip(m.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(got.len());
            panic!(
                "message {n} came back altered at {d} of {}: {:?} vs {:?}",
                m.len(),
                String::from_utf8_lossy(&got[d.saturating_sub(40)..(d + 40).min(got.len())]),
                String::from_utf8_lossy(&m[d.saturating_sub(40)..(d + 40).min(m.len())])
            );
        }
        assert_eq!(
            fetched.get(start + m.len()),
            Some(&b')'),
            "message {n} ends the literal"
        );
    }
    assert!(c.read_until_tagged("fn").await.unwrap().tagged_ok());
    assert!(c.cmd("d", "DELETE Spliced").await.unwrap().tagged_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_receives_exists_when_another_session_appends() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut idler = logged_in(proxy.plain, 5).await;
    let r = idler.cmd("s", "SELECT INBOX").await.unwrap();
    let exists: u32 = r
        .untagged()
        .iter()
        .find_map(|l| l.strip_suffix(" EXISTS").and_then(|l| l.strip_prefix("* ")))
        .unwrap()
        .parse()
        .unwrap();
    idler.send_raw(b"i IDLE\r\n").await.unwrap();
    assert!(idler.read_line().await.unwrap().starts_with(b"+"));

    let mut other = logged_in(proxy.plain, 5).await;
    let msg = b"Subject: wake up\r\n\r\nhi\r\n";
    let mut cmd = format!("a APPEND INBOX {{{}+}}\r\n", msg.len()).into_bytes();
    cmd.extend_from_slice(msg);
    cmd.extend_from_slice(b"\r\n");
    other.send_raw(&cmd).await.unwrap();
    assert!(other.read_until_tagged("a").await.unwrap().tagged_ok());

    let want = format!("* {} EXISTS", exists + 1);
    let mut seen = Vec::new();
    loop {
        let line = idler.read_line().await.unwrap();
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let done = text == want;
        seen.push(text);
        if done {
            break;
        }
        assert!(seen.len() < 20, "no {want}: {seen:?}");
    }
    idler.send_raw(b"DONE\r\n").await.unwrap();
    assert!(idler.read_until_tagged("i").await.unwrap().tagged_ok());
    assert!(idler.cmd("n", "NOOP").await.unwrap().tagged_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_all_answered_in_any_order() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut c = logged_in(proxy.plain, 1).await;
    let tags = ["p1", "p2", "p3", "p4", "p5", "p6"];
    c.send_raw(
        b"p1 NOOP\r\np2 STATUS INBOX (MESSAGES UIDNEXT)\r\np3 SELECT INBOX\r\n\
          p4 FETCH 1:3 (FLAGS UID)\r\np5 STATUS INBOX (UNSEEN)\r\np6 NOOP\r\n",
    )
    .await
    .unwrap();
    let lines = read_tags(&mut c, &tags).await;
    for t in tags {
        let tagged = lines
            .iter()
            .find(|l| l.starts_with(format!("{t} ").as_bytes()))
            .unwrap();
        assert!(
            tagged.starts_with(format!("{t} OK").as_bytes()),
            "{tagged:?}"
        );
    }
    assert!(c.cmd("z", "NOOP").await.unwrap().tagged_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_text_ending_in_a_literal_marker_does_not_desynchronise() {
    // Servers echo client-chosen mailbox names in NO texts; `{5}` there is text, not a literal.
    // Dovecot appends a timing suffix to its texts, so a fake backend plays this one.
    let fake = FakeBackend::start(vec![
        Step::send("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"),
        Step::reply("LOGIN", |t| {
            format!("{t} OK [CAPABILITY IMAP4rev1 IDLE UNSELECT] Logged in\r\n").into_bytes()
        }),
        // Right behind the NO comes a capability list the proxy must filter: a relay that took
        // `{5}` for a literal would swallow `* CAP` and pass `STARTTLS` through unfiltered.
        Step::reply("SELECT", |t| {
            format!(
                "{t} NO [NONEXISTENT] Mailbox doesn't exist: x{{5}}\r\n\
                 * CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n"
            )
            .into_bytes()
        }),
        Step::reply("NOOP", |t| format!("{t} OK NOOP done\r\n").into_bytes()),
        Step::reply("NOOP", |t| {
            format!(
                "* OK still here {{3}}\r\n* CAPABILITY IMAP4rev1 LOGINDISABLED\r\n{t} OK second\r\n"
            )
            .into_bytes()
        }),
        Step::Hang,
    ])
    .unwrap();
    let proxy = start_proxy(&[fake.addr()]).await;
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    assert!(c.login("u", "p").await.unwrap().tagged_ok());
    let r = c.cmd("s", "SELECT \"x{5}\"").await.unwrap();
    assert!(r.status_line().starts_with("s NO"), "{}", r.text());
    let r = c.cmd("n", "NOOP").await.unwrap();
    assert_eq!(r.status_line(), "n OK NOOP done");
    assert_eq!(r.untagged(), ["* CAPABILITY IMAP4rev1"], "{}", r.text());
    let r = c.cmd("m", "NOOP").await.unwrap();
    assert_eq!(r.status_line(), "m OK second", "{}", r.text());
    assert!(!r.text().contains("LOGINDISABLED"), "{}", r.text());
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_capabilities_are_filtered_after_login() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let mut c = logged_in(proxy.plain, 1).await;
    let r = c.cmd("c", "CAPABILITY").await.unwrap();
    let caps = r.untagged().join(" ");
    assert!(
        caps.contains("IMAP4rev1") && caps.contains("IDLE"),
        "{caps}"
    );
    for hidden in [
        "STARTTLS",
        "AUTH=",
        "SASL-IR",
        "LOGINDISABLED",
        "LOGIN-REFERRALS",
    ] {
        assert!(!caps.contains(hidden), "{hidden} leaked: {caps}");
    }
    // The backend's ID reply names its software: the proxy answers with its own.
    let r = c.cmd("i", "ID NIL").await.unwrap();
    assert!(r.tagged_ok());
    assert!(
        !r.text().to_ascii_lowercase().contains("dovecot"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_literal_leaves_others_served() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    for _ in 0..3 {
        let mut c = logged_in(proxy.plain, 6).await;
        c.send_raw(b"a APPEND INBOX {100000}\r\n").await.unwrap();
        assert!(c.read_line().await.unwrap().starts_with(b"+"));
        c.send_raw(&[b'x'; 3000]).await.unwrap();
        drop(c);
        // And before login, in the middle of a literal.
        let mut c = TestClient::connect(proxy.plain).await.unwrap();
        c.send_raw(b"b LOGIN {50}\r\n").await.unwrap();
        assert!(c.read_line().await.unwrap().starts_with(b"+"));
        c.send_raw(b"abc").await.unwrap();
        drop(c);
    }
    let mut c = logged_in(proxy.plain, 6).await;
    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    assert!(c.logout().await.unwrap().text().contains("* BYE"));
    assert!(c.expect_eof(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_behind_login_reach_the_backend() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let (user, pass) = dovecot().user(1);
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(format!("a LOGIN {user} {pass}\r\nb SELECT INBOX\r\nc NOOP\r\n").as_bytes())
        .await
        .unwrap();
    let lines = read_tags(&mut c, &["a", "b", "c"]).await;
    for tag in ["a OK", "b OK", "c OK"] {
        assert!(
            lines.iter().any(|l| l.starts_with(tag.as_bytes())),
            "no {tag}: {:?}",
            lines
                .iter()
                .map(|l| String::from_utf8_lossy(l))
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_then_half_close_still_gets_the_answer() {
    let proxy = start_proxy(&[dovecot().imap_addr()]).await;
    let (user, pass) = dovecot().user(1);
    let mut tcp = tokio::net::TcpStream::connect(proxy.plain).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(format!("a LOGIN {user} {pass}\r\nb LOGOUT\r\n").as_bytes())
        .await
        .unwrap();
    tcp.shutdown().await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("a OK") && text.contains("* BYE") && text.contains("b OK"),
        "{text}"
    );
}
