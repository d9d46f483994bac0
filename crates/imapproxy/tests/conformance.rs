//! Issue #8, differential conformance: scripted IMAP sessions (several connections of one
//! user, pipelined, split writes, long tags, literals both ways) run directly against Dovecot
//! and through the binary, compared response for response after normalising only what may
//! legitimately differ (`imapproxy_testkit::conformance`).
//!
//! Each script runs four times: directly as user A and through the proxy as user B
//! (identically seeded), then both again. The second proxied run starts on the backend
//! sessions the first one left clean (`[pool] reuse`, `max_per_user` = the script's
//! connections, so a login waits for the previous session's check-in instead of opening a
//! new one); sessions a script taints (`ENABLE`, `NOTIFY`, CONDSTORE, saved searches,
//! search updates) must not be reused, and the second run must still match Dovecot.
//!
//! `CONFORMANCE_SHOW=1` prints the direct transcripts; `CONFORMANCE_SELF_CHECK=1` also
//! compares two direct runs (a script that is not deterministic against Dovecot alone fails
//! there, not as a proxy bug).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::{Binary, loopback};
use imapproxy_testkit::conformance::{Run, Script, compare, normalised, plus_literal_command, run};
use imapproxy_testkit::{Dovecot, Seed};

/// Users per test: direct runs, proxied runs, and the optional direct self-check.
const USERS_PER_TEST: usize = 3;

/// Enough users for every test in this file.
const USERS: usize = 32 * USERS_PER_TEST;

/// Mailboxes a webmail-style account has (special-use, RFC 6154), some created at login.
const NAMESPACE: &str = r"
namespace inbox {
  inbox = yes
  mailbox Drafts {
    auto = subscribe
    special_use = \Drafts
  }
  mailbox Sent {
    auto = subscribe
    special_use = \Sent
  }
  mailbox Trash {
    auto = create
    special_use = \Trash
  }
  mailbox Junk {
    special_use = \Junk
  }
  mailbox Archive {
    special_use = \Archive
  }
}
";

fn dovecot() -> &'static Dovecot {
    static DOVECOT: OnceLock<Dovecot> = OnceLock::new();
    DOVECOT.get_or_init(|| {
        let seed: Seed = (1..=USERS)
            .map(|i| (format!("user{i}"), seed_messages()))
            .collect();
        let d = Dovecot::builder()
            .users(USERS)
            .seed_messages(seed)
            .extra_config(NAMESPACE)
            .start()
            .unwrap();
        fix_arrival_times(&d);
        d
    })
}

/// Maildir keeps a message's arrival time (INTERNALDATE) as the file's mtime, which is when
/// the testkit wrote it; give every user the same times, before Dovecot first looks.
fn fix_arrival_times(d: &Dovecot) {
    for i in 1..=USERS {
        let cur = d.mail_root().join(format!("user{i}")).join("cur");
        let mut files: Vec<_> = std::fs::read_dir(&cur)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for (k, path) in files.iter().enumerate() {
            let when =
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_699_900_000 + 3600 * k as u64);
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
    }
}

/// The same six messages for every user: a thread of three, a MIME message with a binary
/// attachment, an encoded UTF-8 subject, and a 30 KB one.
fn seed_messages() -> Vec<Vec<u8>> {
    let big_body: Vec<String> = (0..400)
        .map(|i| format!("{i:05} GET /index.html 200 {}", "x".repeat(40 + i % 23)))
        .collect();
    vec![
        mail(&[
            "From: Alice <alice@example.org>",
            "To: Team <team@example.org>",
            "Subject: Weekly report",
            "Date: Fri, 10 Nov 2023 09:00:00 +0000",
            "Message-ID: <m1@conformance.test>",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=us-ascii",
            "",
            "The weekly report: numbers went up.",
        ]),
        mail(&[
            "From: Bob <bob@example.org>",
            "To: Team <team@example.org>",
            "Subject: Re: Weekly report",
            "Date: Sat, 11 Nov 2023 08:30:00 +0000",
            "Message-ID: <m2@conformance.test>",
            "In-Reply-To: <m1@conformance.test>",
            "References: <m1@conformance.test>",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=us-ascii",
            "",
            "Which numbers?",
        ]),
        mail(&[
            "From: Carol <carol@example.org>",
            "To: Team <team@example.org>",
            "Subject: Binary attachment",
            "Date: Sat, 11 Nov 2023 12:00:00 +0000",
            "Message-ID: <m3@conformance.test>",
            "MIME-Version: 1.0",
            "Content-Type: multipart/mixed; boundary=\"b1\"",
            "",
            "--b1",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: quoted-printable",
            "",
            "Caf=C3=A9 menu attached.",
            "--b1",
            "Content-Type: application/octet-stream; name=\"blob.bin\"",
            "Content-Transfer-Encoding: base64",
            "Content-Disposition: attachment; filename=\"blob.bin\"",
            "",
            // Bytes 0x00..=0x1f: a BINARY fetch must come back as a literal8.
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "--b1--",
        ]),
        mail(&[
            "From: Dave <dave@example.org>",
            "To: Alice <alice@example.org>",
            "Subject: =?UTF-8?Q?Caf=C3=A9_lunch?=",
            "Date: Thu, 09 Nov 2023 11:45:00 +0100",
            "Message-ID: <m4@conformance.test>",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            "Lunch at the caf\u{e9}?",
        ]),
        mail(&[
            "From: Alice <alice@example.org>",
            "To: Team <team@example.org>",
            "Subject: Re: Re: Weekly report",
            "Date: Sun, 12 Nov 2023 18:00:00 +0000",
            "Message-ID: <m5@conformance.test>",
            "In-Reply-To: <m2@conformance.test>",
            "References: <m1@conformance.test> <m2@conformance.test>",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=us-ascii",
            "",
            "All of them.",
        ]),
        mail(
            &[
                "From: Monitor <monitor@example.org>",
                "To: Ops <ops@example.org>",
                "Subject: Server logs",
                "Date: Mon, 13 Nov 2023 00:00:00 +0000",
                "Message-ID: <m6@conformance.test>",
                "MIME-Version: 1.0",
                "Content-Type: text/plain; charset=us-ascii",
                "",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(big_body)
            .collect::<Vec<_>>(),
        ),
    ]
}

/// RFC 5322 text from lines, CRLF-terminated.
fn mail<S: AsRef<str>>(lines: &[S]) -> Vec<u8> {
    let mut m = Vec::new();
    for l in lines {
        m.extend_from_slice(l.as_ref().as_bytes());
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// A small new message (for APPEND).
fn note(subject: &str, body: &str) -> Vec<u8> {
    mail(&[
        "From: Erin <erin@example.org>",
        "To: Team <team@example.org>",
        &format!("Subject: {subject}"),
        "Date: Tue, 14 Nov 2023 10:00:00 +0000",
        &format!(
            "Message-ID: <{}@conformance.test>",
            subject.replace(' ', ".")
        ),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        body,
    ])
}

/// APPEND's date-time argument: without one, INTERNALDATE would be the time of the run.
const DATE: &str = "\"14-Nov-2023 10:00:00 +0000\"";

/// A 60-character tag (RFC 9051 allows any length; relays that assume short tags break).
fn long_tag(n: usize) -> String {
    format!(
        "{:-<56}{n:04}",
        "a-rather-long-tag-as-some-clients-make-them"
    )
}

struct Proxy {
    _binary: Binary,
    addr: SocketAddr,
}

/// The binary in front of the test Dovecot: one plain listener, reuse on, no warm
/// connections, and as many backend sessions per user as the script has connections, so a
/// login waits for the previous run's session to be checked in rather than opening another.
fn start_proxy(max_per_user: usize) -> Proxy {
    let addr = loopback();
    let config = format!(
        r#"
[[listeners]]
addr = "{addr}"
tls = "none"
allow_plaintext_auth = true

[[backends]]
name = "dovecot"
addr = "{backend}"

[pool]
reuse = true
warm = 0
max_per_user = {max_per_user}
"#,
        backend = dovecot().imap_addr()
    );
    Proxy {
        _binary: Binary::start(&config, &[addr]),
        addr,
    }
}

/// Three fresh users for one test.
fn accounts() -> [(String, String); USERS_PER_TEST] {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let first = NEXT.fetch_add(USERS_PER_TEST, Ordering::Relaxed) + 1;
    assert!(first + USERS_PER_TEST - 1 <= USERS, "raise USERS");
    [0, 1, 2].map(|k| dovecot().user(first + k))
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v != "0")
}

fn show(run: &Run) {
    if !env_flag("CONFORMANCE_SHOW") {
        return;
    }
    let mut out = format!("==== {} ({})\n", run.script, run.label);
    for (i, conn) in normalised(run).iter().enumerate() {
        for line in conn {
            out.push_str(&format!(
                "[{i}] {}\n",
                String::from_utf8_lossy(line).trim_end()
            ));
        }
    }
    eprint!("{out}");
}

/// Runs `script` directly and through the proxy, twice each; `reused` is how many of the
/// second proxied run's connections must start on a cached backend session (the first
/// run's connections that the script leaves clean).
async fn check(script: Script, reused: usize) {
    let dovecot = dovecot();
    let proxy = start_proxy(script.connections());
    let [direct, proxied, spare] = accounts();
    let mut problems = Vec::new();
    for round in 1..=2 {
        let mut reference = run(&script, dovecot.imap_addr(), &direct.0, &direct.1).await;
        reference.label = format!("direct ({}), run {round}", direct.0);
        let mut through = run(&script, proxy.addr, &proxied.0, &proxied.1).await;
        through.label = format!("proxied ({}), run {round}", proxied.0);
        show(&reference);
        if let Some((i, why)) = reference.failure() {
            problems.push(format!(
                "script {:?} fails against Dovecot itself (run {round}, connection {i}): {why}",
                script.name()
            ));
        }
        problems.extend(reference.logout_problems());
        problems.extend(through.logout_problems());
        let want = if round == 1 { 0 } else { reused };
        eprintln!(
            "conformance {}: proxied run {round}: {}/{} logins on a reused backend session",
            script.name(),
            through.reused(),
            script.connections()
        );
        if through.reused() != want {
            problems.push(format!(
                "script {:?}, proxied run {round}: {} of {} logins announced [XPROXYREUSE], expected {want}",
                script.name(),
                through.reused(),
                script.connections()
            ));
        }
        // The login replies differ (the proxy answers LOGIN itself) but must promise the same
        // capabilities, less those the proxy hides.
        for (i, (d, p)) in reference
            .connections
            .iter()
            .zip(&through.connections)
            .enumerate()
        {
            if d.logged_in() && p.logged_in() && d.login_capabilities() != p.login_capabilities() {
                problems.push(format!(
                    "script {:?}, run {round}, connection {i}: login capabilities differ:\n  direct:  {:?}\n  proxied: {:?}",
                    script.name(),
                    d.login_capabilities(),
                    p.login_capabilities()
                ));
            }
        }
        if let Err(mismatch) = compare(&reference, &through) {
            problems.push(mismatch.to_string());
        }
        if env_flag("CONFORMANCE_SELF_CHECK") {
            let mut again = run(&script, dovecot.imap_addr(), &spare.0, &spare.1).await;
            again.label = format!("direct ({}), run {round}", spare.0);
            if let Err(mismatch) = compare(&reference, &again) {
                problems.push(format!(
                    "NOT DETERMINISTIC against Dovecot alone:\n{mismatch}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// APPEND of `msg` to `mailbox` with a synchronizing literal.
fn append(s: Script, conn: usize, tag: &str, mailbox: &str, msg: &[u8]) -> Script {
    let head = format!("APPEND {mailbox} () {DATE} ");
    s.sync_literals(conn, tag, &[head.as_bytes(), msg, b""])
}

// ---------------------------------------------------------------------------------------
// Plain sessions: what sync clients and webmail do.

#[tokio::test]
async fn sync_client_session() {
    let report = note("Sync upload", "Uploaded by a sync client.");
    let s = Script::new("sync_client", 1)
        .cmd(0, "s1", "CAPABILITY")
        .cmd(0, "s2", "LIST \"\" \"*\"")
        .cmd(0, "s3", "SELECT INBOX")
        .cmd(0, "s4", "UID FETCH 1:* (FLAGS)")
        .cmd(
            0,
            "s5",
            "UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE FLAGS)",
        )
        .cmd(0, "s6", "UID FETCH 1:* (BODY.PEEK[])")
        .cmd(0, "s7", "UID STORE 1 +FLAGS.SILENT (\\Seen)")
        .cmd(0, "s8", "UID STORE 2 +FLAGS (\\Deleted \\Seen)")
        .cmd(0, "s9", "EXPUNGE");
    let s = append(s, 0, "s10", "INBOX", &report)
        .cmd(0, "s11", "NOOP")
        .cmd(0, "s12", "UID FETCH 1:* (FLAGS)")
        .cmd(
            0,
            "s13",
            "UID FETCH 6:* (BODY.PEEK[HEADER] BODY.PEEK[TEXT])",
        )
        .cmd(0, "s14", "CHECK")
        .cmd(0, "s15", "LSUB \"\" \"*\"");
    check(s, 1).await;
}

#[tokio::test]
async fn webmail_session() {
    let sent = note("Lunch plans", "Thursday works.");
    let s = Script::new("webmail", 1)
        .cmd(0, "w1", "CAPABILITY")
        .cmd(0, "w2", "NAMESPACE")
        .cmd(0, "w3", "LIST \"\" \"*\" RETURN (SPECIAL-USE SUBSCRIBED CHILDREN)")
        .cmd(0, "w4", "STATUS INBOX (MESSAGES UNSEEN RECENT UIDNEXT UIDVALIDITY)")
        .cmd(0, "w5", "SELECT INBOX")
        .cmd(0, "w6", "UID SORT (REVERSE ARRIVAL) US-ASCII ALL")
        .cmd(
            0,
            "w7",
            "UID FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (DATE FROM TO SUBJECT CONTENT-TYPE MESSAGE-ID IN-REPLY-TO REFERENCES)])",
        )
        .cmd(0, "w8", "UID FETCH 3 (BODYSTRUCTURE)")
        .cmd(0, "w9", "UID FETCH 3 (BODY.PEEK[1.MIME] BODY.PEEK[1] BODY.PEEK[2.MIME])")
        .cmd(0, "w10", "UID STORE 3 +FLAGS (\\Seen)")
        .cmd(0, "w11", "UID SEARCH UNSEEN")
        .cmd(0, "w11b", "UID FETCH 1:3 (PREVIEW)");
    let s = append(s, 0, "w12", "Sent", &sent)
        .cmd(0, "w13", "UID COPY 1 Trash")
        .cmd(0, "w14", "UID STORE 1 +FLAGS.SILENT (\\Deleted)")
        .cmd(0, "w15", "UID EXPUNGE 1")
        .cmd(0, "w16", "STATUS Trash (MESSAGES UIDNEXT UIDVALIDITY)")
        .cmd(0, "w17", "STATUS Sent (MESSAGES UNSEEN)")
        .cmd(0, "w18", "UNSELECT");
    check(s, 1).await;
}

// ---------------------------------------------------------------------------------------
// Framing: split writes, pipelining, long tags, literals both ways.

#[tokio::test]
async fn pipelining_split_writes_long_tags_and_literals() {
    let pause = Duration::from_millis(30);
    let (t1, t2, t3) = (long_tag(1), long_tag(2), long_tag(3));
    let small = note("Literal plus", "Sent with LITERAL+.");
    let split = note("Split literal", "This literal arrives in two writes.");
    let (head, tail) = split.split_at(split.len() / 2);
    let big: Vec<u8> = mail(
        &(0..3000)
            .map(|i| format!("{i:06} {}", "y".repeat(60)))
            .collect::<Vec<_>>(),
    );
    let dribble = note("Dribbled", "This literal arrives a few bytes at a time.");
    let many_tags: Vec<String> = (1..=300).map(|i| format!("q{i}")).collect();
    let many: String = many_tags
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{t} UID FETCH {} (FLAGS RFC822.SIZE)\r\n", i % 7 + 1))
        .collect();
    let s = Script::new("pipelining", 1)
        // One command over three writes.
        .send(0, "p1 SEL")
        .sleep(pause)
        .send(0, "ECT IN")
        .sleep(pause)
        .send(0, "BOX\r\n")
        .tagged(0, "p1")
        // Five commands in one write.
        .send(
            0,
            "p2 NOOP\r\np3 UID FETCH 1:3 (FLAGS)\r\np4 STATUS INBOX (MESSAGES UIDNEXT UNSEEN)\r\n\
             p5 FETCH 1 (BODY.PEEK[HEADER])\r\np6 UID SEARCH ALL\r\n",
        )
        .tags(0, &["p2", "p3", "p4", "p5", "p6"])
        // 60-character tags, alone and pipelined.
        .cmd(0, &t1, "NOOP")
        .send(
            0,
            format!("{t2} UID FETCH 1 (FLAGS)\r\n{t3} FETCH 2 (BODY.PEEK[TEXT])\r\n"),
        )
        .tags(0, &[&t2, &t3])
        // LITERAL+ with a command pipelined behind it, in one write.
        .send(
            0,
            [
                plus_literal_command(
                    "p7",
                    &[
                        format!("APPEND INBOX (\\Flagged) {DATE} ").as_bytes(),
                        &small,
                        b"",
                    ],
                ),
                b"p8 NOOP\r\n".to_vec(),
            ]
            .concat(),
        )
        .tags(0, &["p7", "p8"])
        // LITERAL+ split across writes, the cut inside the literal.
        .send(
            0,
            [
                format!("p9 APPEND INBOX () {DATE} {{{}+}}\r\n", split.len()).as_bytes(),
                head,
            ]
            .concat(),
        )
        .sleep(pause)
        .send(0, [tail, b"\r\n"].concat())
        .tagged(0, "p9")
        // A synchronizing literal the server refuses: no `+`, and the literal is not sent.
        .send(0, "p12 APPEND NoSuchMailbox {5}\r\n")
        .continuation(0, "p12")
        .cmd(0, "p13", "NOOP")
        // A 200 KB literal up, and down again in pieces.
        .sync_literals(
            0,
            "p14",
            &[format!("APPEND INBOX () {DATE} ").as_bytes(), &big, b""],
        )
        .cmd(0, "p15", "FETCH * (RFC822.SIZE BODY.PEEK[]<100000.5000>)")
        .cmd(0, "p16", "FETCH * (BODY.PEEK[])")
        // A command that ends right after a literal, then a pipelined one.
        .send(
            0,
            "p17 UID SEARCH HEADER Subject {6+}\r\nreport\r\np18 NOOP\r\n",
        )
        .tags(0, &["p17", "p18"])
        // CR and LF in different writes.
        .send(0, "p19 NOOP\r")
        .sleep(pause)
        .send(0, "\np20 CHECK\r\n")
        .tags(0, &["p19", "p20"])
        // A literal dribbled in five writes.
        .send(
            0,
            format!("p21 APPEND INBOX () {DATE} {{{}+}}\r\n", dribble.len()),
        )
        .send(0, &dribble[..40])
        .send(0, &dribble[40..41])
        .sleep(pause)
        .send(0, &dribble[41..150])
        .send(0, [&dribble[150..], b"\r"].concat())
        .send(0, "\n")
        .tagged(0, "p21")
        // RFC 9051 §5.5: Dovecot may answer a later STATUS before an earlier NOOP.
        .send(
            0,
            "p22 NOOP\r\np23 STATUS INBOX (MESSAGES UIDNEXT)\r\np24 NOOP\r\n",
        )
        .tags(0, &["p22", "p23", "p24"])
        // A synchronizing literal behind a command still in flight, in the same write.
        .send(
            0,
            format!(
                "p25 NOOP\r\np26 APPEND INBOX () {DATE} {{{}}}\r\n",
                dribble.len()
            ),
        )
        .continuation(0, "p26")
        .send(0, [dribble.as_slice(), b"\r\n"].concat())
        .tags(0, &["p25", "p26"])
        // Three hundred commands in one write.
        .send(0, many)
        .tags(0, &many_tags.iter().map(String::as_str).collect::<Vec<_>>());
    check(s, 1).await;
}

/// Synchronizing literals inside a command's arguments: the proxy forwards such a command in
/// pieces and cannot inspect it whole, so it counts the session as tainted ("unlisted").
#[tokio::test]
async fn synchronizing_literals_in_arguments() {
    let cafe = "caf\u{e9}".as_bytes();
    let s = Script::new("literal_arguments", 1)
        .cmd(0, "k1", "EXAMINE INBOX")
        .sync_literals(0, "k2", &[b"UID SEARCH SUBJECT ", b"report", b""])
        .sync_literals(0, "k3", &[b"STATUS ", b"INBOX", b" (MESSAGES)"])
        .sync_literals(0, "k4", &[b"SEARCH CHARSET UTF-8 SUBJECT ", cafe, b""])
        .sync_literals(
            0,
            "k5",
            &[
                b"UID SEARCH CHARSET UTF-8 BODY ",
                cafe,
                b" OR FROM ",
                b"alice",
                b" FROM bob",
            ],
        )
        .sync_literals(0, "k6", &[b"LIST \"\" ", b"*", b""])
        .sync_literals(
            0,
            "k7",
            &[b"ID (\"name\" ", b"conformance", b" \"os\" NIL)"],
        )
        .sync_literals(0, "k8", &[b"SEARCH SUBJECT ", b"", b""])
        .send(0, "k9 SEARCH SUBJECT {0+}\r\n\r\n")
        .tagged(0, "k9")
        .cmd(0, "k10", "CLOSE");
    check(s, 0).await;
}

// ---------------------------------------------------------------------------------------
// Several connections of one user: one connection's changes in another's IDLE and NOOP.

#[tokio::test]
async fn idle_sees_another_connections_changes() {
    let new = note("Pushed", "Arrives during IDLE.");
    let s = Script::new("idle", 2)
        .cmd(0, "i1", "SELECT INBOX")
        .cmd(1, "j1", "NOOP")
        .idle(0, "i2");
    let s = append(s, 1, "j2", "INBOX", &new)
        .until(0, "EXISTS")
        .cmd(1, "j3", "SELECT INBOX")
        .cmd(1, "j4", "STORE 1 +FLAGS (\\Flagged)")
        .until(0, "FETCH")
        .cmd(1, "j5", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        .cmd(1, "j6", "EXPUNGE")
        .until(0, "EXPUNGE")
        // DONE split over two writes, then a pipelined command right behind it.
        .send(0, "DO")
        .sleep(Duration::from_millis(30))
        .send(0, "NE\r\ni3 FETCH 1:* (FLAGS)\r\n")
        .tags(0, &["i2", "i3"])
        // IDLE again, ended at once.
        .idle(0, "i4")
        .done(0, "i4")
        // IDLE and DONE in one write, before the `+` (clients do this), and a command behind.
        .send(0, "i5 IDLE\r\nDONE\r\ni6 NOOP\r\n")
        .tags(0, &["i5", "i6"])
        // IDLE, a change, and DONE with the next command before the change is read.
        .idle(0, "i7")
        .cmd(1, "j7", "STORE 1 -FLAGS (\\Flagged)")
        .send(0, "DONE\r\ni8 UID FETCH 1 (FLAGS)\r\n")
        .tags(0, &["i7", "i8"])
        .cmd(1, "j8", "UNSELECT");
    check(s, 2).await;
}

#[tokio::test]
async fn three_connections_see_each_others_changes_on_noop() {
    let new = note("Third", "Appended by the third connection.");
    let s = Script::new("three_connections", 3)
        .cmd(0, "a1", "SELECT INBOX")
        .cmd(1, "b1", "EXAMINE INBOX")
        .cmd(2, "c1", "SELECT INBOX")
        .plus_literals(
            2,
            "c2",
            &[
                format!("APPEND INBOX (\\Seen) {DATE} ").as_bytes(),
                &new,
                b"",
            ],
        )
        .cmd(0, "a2", "NOOP")
        .cmd(1, "b2", "NOOP")
        .cmd(2, "c3", "STORE 1:2 +FLAGS (\\Answered)")
        .cmd(0, "a3", "NOOP")
        .cmd(1, "b3", "CHECK")
        .cmd(2, "c4", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        .cmd(2, "c5", "EXPUNGE")
        .cmd(0, "a4", "FETCH 1:* (FLAGS)")
        .cmd(1, "b4", "UID SEARCH ANSWERED")
        .cmd(0, "a5", "STORE 1 -FLAGS (\\Answered)")
        .cmd(2, "c6", "NOOP")
        .cmd(1, "b5", "NOOP")
        .cmd(1, "b6", "CLOSE")
        .cmd(0, "a6", "UNSELECT")
        // Connection 2 stays selected while a change it has not seen happens: its session is
        // reset with UNSELECT at check-in, and the pending EXISTS must not reach the next user.
        .plus_literals(
            0,
            "a7",
            &[format!("APPEND INBOX () {DATE} ").as_bytes(), &new, b""],
        );
    check(s, 3).await;
}

// ---------------------------------------------------------------------------------------
// Extensions that leave state on the connection: the session is tainted, must not be reused,
// and each script first probes for state a reused session would have inherited.

#[tokio::test]
async fn condstore_explicit_and_implicit() {
    let s = Script::new("condstore", 2)
        // Probe: plain flag updates carry no MODSEQ.
        .cmd(0, "a1", "SELECT INBOX")
        .cmd(0, "a2", "FETCH 1:* (FLAGS)")
        .cmd(1, "b1", "SELECT INBOX")
        .cmd(1, "b2", "STORE 1 +FLAGS (\\Answered)")
        .cmd(0, "a3", "NOOP")
        .cmd(0, "a4", "STORE 2 +FLAGS (\\Seen)")
        // Taint: CONDSTORE on connection 0.
        .cmd(0, "a5", "SELECT INBOX (CONDSTORE)")
        .cmd(0, "a6", "FETCH 1:* (FLAGS MODSEQ)")
        .cmd(0, "a7", "STORE 1:3 (UNCHANGEDSINCE 1) +FLAGS (\\Flagged)")
        .cmd(1, "b3", "STORE 4 +FLAGS (\\Seen)")
        .cmd(0, "a8", "NOOP")
        .cmd(0, "a9", "UID SEARCH MODSEQ 2")
        .cmd(0, "a10", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)")
        .cmd(0, "a11", "STATUS Sent (HIGHESTMODSEQ MESSAGES)")
        .cmd(0, "a12", "STORE 1:* -FLAGS (\\Flagged \\Answered)")
        .cmd(1, "b4", "UNSELECT");
    check(s, 1).await;
}

#[tokio::test]
async fn condstore_enabled_by_fetch_modseq_alone() {
    let s = Script::new("implicit_condstore", 1)
        // Probe.
        .cmd(0, "m1", "SELECT INBOX")
        .cmd(0, "m2", "STORE 1 +FLAGS (\\Seen)")
        .cmd(0, "m3", "FETCH 1:2 (FLAGS)")
        // RFC 7162 §3.1: FETCH MODSEQ switches CONDSTORE on for the rest of the connection.
        .cmd(0, "m4", "FETCH 1 (MODSEQ)")
        .cmd(0, "m5", "STORE 2 +FLAGS (\\Seen)")
        .cmd(0, "m6", "STORE 1:2 -FLAGS (\\Seen)")
        .cmd(0, "m7", "UNSELECT");
    check(s, 0).await;
}

#[tokio::test]
async fn qresync_enable_select_and_vanished() {
    let s = Script::new("qresync", 2)
        // Probe: expunges show as EXPUNGE, not VANISHED.
        .cmd(0, "q1", "SELECT INBOX")
        .capture(0, "uv", "[UIDVALIDITY ")
        .cmd(1, "r1", "SELECT INBOX")
        .cmd(1, "r2", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        .cmd(1, "r3", "EXPUNGE")
        .cmd(0, "q2", "NOOP")
        // Taint: ENABLE QRESYNC, then a QRESYNC SELECT.
        .cmd(0, "q3", "ENABLE QRESYNC")
        .cmd(0, "q4", "SELECT INBOX (QRESYNC (${uv} 1))")
        .cmd(1, "r4", "STORE 1 +FLAGS (\\Flagged)")
        .cmd(1, "r5", "UID STORE 1:* +FLAGS.SILENT (\\Seen)")
        .cmd(1, "r6", "STORE 2 +FLAGS.SILENT (\\Deleted)")
        .cmd(1, "r7", "EXPUNGE")
        .cmd(0, "q5", "NOOP")
        .cmd(0, "q6", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        .cmd(0, "q7", "EXAMINE INBOX (QRESYNC (${uv} 2 1:100))")
        .cmd(0, "q8", "UNSELECT")
        .append_refill();
    check(s, 1).await;
}

/// Scripts that expunge keep the INBOX from running dry over the second run.
trait Refill {
    fn append_refill(self) -> Self;
}

impl Refill for Script {
    fn append_refill(self) -> Self {
        let refill = [note("Refill one", "1"), note("Refill two", "2")];
        self.plus_literals(
            0,
            "zz1",
            &[
                format!("APPEND INBOX () {DATE} ").as_bytes(),
                &refill[0],
                format!(" () {DATE} ").as_bytes(),
                &refill[1],
                b"",
            ],
        )
    }
}

#[tokio::test]
async fn notify_set_and_none() {
    let new = note("Notified", "NOTIFY should announce this.");
    let s = Script::new("notify", 2)
        // Probe: without NOTIFY, a NOOP reports the other connection's append.
        .cmd(0, "n1", "SELECT INBOX");
    let s = append(s, 1, "o1", "INBOX", &new)
        .cmd(0, "n2", "NOOP")
        // Taint: RFC 5465 event subscriptions. Events on other mailboxes arrive on their own;
        // the selected mailbox's are reported at the next command (Dovecot 2.3).
        .cmd(
            0,
            "n3",
            "NOTIFY SET (selected (MessageNew (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)]) MessageExpunge FlagChange)) (personal (MailboxName SubscriptionChange MessageNew MessageExpunge))",
        )
        .cmd(1, "o2", "CREATE Projects")
        .until(0, "* LIST () \".\" Projects")
        .cmd(1, "o3", "SUBSCRIBE Projects")
        .until(0, "* LIST (\\Subscribed) \".\" Projects");
    let s = append(s, 1, "o4", "Projects", &new).until(0, "* STATUS Projects");
    let s = append(s, 1, "o5", "INBOX", &new)
        .cmd(0, "n4", "NOOP")
        .cmd(1, "o6", "UNSUBSCRIBE Projects")
        .until(0, "* LIST () \".\" Projects")
        .cmd(1, "o10", "DELETE Projects")
        .until(0, "\\NonExistent")
        .cmd(0, "n5", "NOTIFY NONE");
    let s = append(s, 1, "o7", "INBOX", &new)
        .cmd(1, "o8", "CREATE Projects2")
        .cmd(0, "n6", "NOOP")
        .cmd(1, "o9", "DELETE Projects2")
        .cmd(0, "n7", "UNSELECT");
    check(s, 1).await;
}

#[tokio::test]
async fn esearch_and_search_updates() {
    let new = note("Another report", "Matches the update.");
    let s = Script::new("esearch_context", 2)
        .cmd(0, "e1", "SELECT INBOX")
        .cmd(0, "e2", "SEARCH RETURN (MIN MAX COUNT ALL) ALL")
        .cmd(0, "e3", "UID SEARCH RETURN () SUBJECT report")
        .cmd(0, "e4", "SEARCH RETURN (COUNT) UNSEEN")
        .cmd(0, "e5", "UID SEARCH RETURN (MIN) SINCE 1-Jan-2000")
        // Taint: RFC 5267 search updates.
        .cmd(0, "e6", "SEARCH RETURN (UPDATE) SUBJECT report")
        .cmd(0, "e7", "UID SEARCH RETURN (UPDATE COUNT) FLAGGED");
    let s = append(s, 1, "f1", "INBOX", &new)
        .cmd(0, "e8", "NOOP")
        .cmd(1, "f2", "SELECT INBOX")
        .cmd(1, "f3", "STORE 1 +FLAGS (\\Flagged)")
        .cmd(0, "e9", "NOOP")
        .cmd(1, "f4", "STORE 1 -FLAGS (\\Flagged)")
        .cmd(1, "f5", "STORE 2 +FLAGS.SILENT (\\Deleted)")
        .cmd(1, "f6", "EXPUNGE")
        .cmd(0, "e10", "NOOP")
        .cmd(0, "e11", "CANCELUPDATE \"e6\" \"e7\"")
        .cmd(0, "e12", "SEARCH RETURN (PARTIAL 1:2) ALL")
        .cmd(0, "e13", "UNSELECT")
        .cmd(1, "f7", "UNSELECT");
    check(s, 1).await;
}

#[tokio::test]
async fn searchres_save_and_dollar() {
    let s = Script::new("searchres", 1)
        .cmd(0, "r1", "SELECT INBOX")
        .cmd(0, "r2", "UID FETCH $ (FLAGS)")
        .cmd(0, "r3", "UID SEARCH RETURN (SAVE) SUBJECT report")
        .cmd(0, "r4", "UID FETCH $ (FLAGS)")
        .cmd(0, "r5", "UID STORE $ +FLAGS (\\Flagged)")
        .cmd(0, "r6", "SEARCH RETURN (SAVE MIN) UID $ SEEN")
        .cmd(0, "r7", "FETCH $ (UID)")
        .cmd(0, "r8", "UID COPY $ Archive")
        // RFC 5182 §2.1: SAVE with an error is an empty result; $ in pipelined commands.
        .send(
            0,
            "r9 SEARCH RETURN (SAVE) UID $ FLAGGED\r\nr10 FETCH $ (FLAGS)\r\nr11 UID STORE $ -FLAGS (\\Flagged)\r\n",
        )
        .tags(0, &["r9", "r10", "r11"])
        .cmd(0, "r12", "UNSELECT");
    check(s, 0).await;
}

// ---------------------------------------------------------------------------------------
// Appending: MULTIAPPEND, CATENATE, BINARY (literal8 both ways).

#[tokio::test]
async fn multiappend_and_catenate() {
    let one = note("Multi one", "First of two.");
    let two = note("Multi two", "Second of two.");
    let three = note("Multi three", "LITERAL+ this time.");
    let text = b"\r\nCatenated text between two URL parts.\r\n".to_vec();
    let s = Script::new("multiappend_catenate", 1)
        .cmd(0, "m1", "SELECT INBOX")
        .sync_literals(
            0,
            "m2",
            &[
                format!("APPEND Drafts (\\Draft) {DATE} ").as_bytes(),
                &one,
                format!(" (\\Seen) {DATE} ").as_bytes(),
                &two,
                b"",
            ],
        )
        .plus_literals(
            0,
            "m3",
            &[
                format!("APPEND Drafts {DATE} ").as_bytes(),
                &three,
                format!(" {DATE} ").as_bytes(),
                &three,
                b"",
            ],
        )
        // RFC 4469: URL and TEXT parts; the TEXT part is a synchronizing literal.
        .sync_literals(
            0,
            "m4",
            &[
                format!("APPEND Drafts (\\Draft) {DATE} CATENATE (URL \"/INBOX/;UID=1/;SECTION=HEADER\" TEXT ").as_bytes(),
                &text,
                b" URL \"/INBOX/;UID=3/;SECTION=1\")",
            ],
        )
        .send(
            0,
            plus_literal_command(
                "m5",
                &[
                    format!("APPEND Drafts {DATE} CATENATE (URL \"/INBOX/;UID=2/;PARTIAL=0.120\") (\\Seen) {DATE} CATENATE (TEXT ").as_bytes(),
                    &one,
                    b")",
                ],
            ),
        )
        .tagged(0, "m5")
        // A CATENATE URL that does not resolve.
        .cmd(
            0,
            "m6",
            &format!("APPEND Drafts {DATE} CATENATE (URL \"/INBOX/;UID=99999\")"),
        )
        .cmd(0, "m7", "EXAMINE Drafts")
        .cmd(0, "m8", "FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
        .cmd(0, "m9", "CLOSE");
    check(s, 1).await;
}

#[tokio::test]
async fn binary_fetch_and_literal8_append() {
    let mut blob = mail(&[
        "From: Erin <erin@example.org>",
        "Subject: Raw bytes",
        "Date: Tue, 14 Nov 2023 10:00:00 +0000",
        "MIME-Version: 1.0",
        "Content-Type: application/octet-stream",
        "Content-Transfer-Encoding: binary",
        "",
    ]);
    blob.extend((0u8..=255).filter(|b| *b != b'\r' && *b != b'\n'));
    blob.extend_from_slice(b"\r\n");
    let s = Script::new("binary", 1)
        .cmd(0, "b1", "SELECT INBOX")
        .cmd(0, "b2", "UID FETCH 3 (BINARY.SIZE[2] BINARY.PEEK[2])")
        .cmd(
            0,
            "b3",
            "UID FETCH 3 (BINARY.SIZE[1] BINARY.PEEK[1] BINARY.PEEK[2]<4.8>)",
        )
        .cmd(0, "b4", "UID FETCH 4 (BINARY.PEEK[1] BODY.PEEK[1])")
        // literal8 up: synchronizing, then LITERAL+.
        .send(
            0,
            format!("b5 APPEND INBOX () {DATE} ~{{{}}}\r\n", blob.len()),
        )
        .continuation(0, "b5")
        .send(0, [blob.as_slice(), b"\r\n"].concat())
        .tagged(0, "b5")
        .send(
            0,
            [
                format!("b6 APPEND INBOX () {DATE} ~{{{}+}}\r\n", blob.len()).as_bytes(),
                &blob,
                b"\r\nb7 NOOP\r\n",
            ]
            .concat(),
        )
        .tags(0, &["b6", "b7"])
        .cmd(
            0,
            "b8",
            "FETCH * (BINARY.SIZE[] BINARY.PEEK[] BODYSTRUCTURE)",
        )
        .cmd(0, "b9", "FETCH * (BODY.PEEK[TEXT] RFC822.SIZE)")
        .cmd(0, "b10", "UID SEARCH LARGER 300")
        .cmd(0, "b11", "UNSELECT");
    check(s, 1).await;
}

// ---------------------------------------------------------------------------------------
// Mailboxes: MOVE, COPY, UIDPLUS, SPECIAL-USE, LIST-EXTENDED, LIST-STATUS.

#[tokio::test]
async fn move_copy_and_uidplus_seen_from_another_connection() {
    let s = Script::new("move_copy", 2)
        .cmd(0, "v1", "CREATE Archive")
        .cmd(0, "v2", "SELECT INBOX")
        .cmd(1, "w1", "SELECT Archive")
        .cmd(0, "v3", "UID COPY 1:2 Archive")
        .cmd(1, "w2", "NOOP")
        .cmd(0, "v4", "UID MOVE 4 Archive")
        .cmd(0, "v5", "MOVE 1 Archive")
        .cmd(1, "w3", "NOOP")
        .cmd(
            1,
            "w4",
            "UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
        )
        .cmd(0, "v6", "UID STORE 2:3 +FLAGS.SILENT (\\Deleted)")
        .cmd(0, "v7", "UID EXPUNGE 3")
        .cmd(0, "v8", "UID FETCH 1:* (FLAGS)")
        // Everything back, so the second run starts from as many messages.
        .cmd(1, "w5", "UID MOVE 1:* INBOX")
        .cmd(0, "v9", "NOOP")
        .cmd(0, "v10", "UID STORE 1:* -FLAGS.SILENT (\\Deleted)")
        .cmd(0, "v11", "UID FETCH 1:* (FLAGS)")
        .cmd(0, "v12", "COPY 1:* Trash")
        .cmd(1, "w6", "STATUS Trash (MESSAGES UIDNEXT)")
        .cmd(1, "w7", "CLOSE")
        .cmd(0, "v13", "UNSELECT");
    check(s, 2).await;
}

#[tokio::test]
async fn special_use_list_extended_and_list_status() {
    let s = Script::new("list_extended", 1)
        .cmd(0, "l1", "LIST \"\" \"\"")
        .cmd(0, "l2", "LIST (SPECIAL-USE) \"\" \"*\"")
        .cmd(
            0,
            "l3",
            "LIST \"\" \"*\" RETURN (SPECIAL-USE CHILDREN SUBSCRIBED)",
        )
        .cmd(0, "l4", "CREATE Projects.Alpha")
        .cmd(0, "l5", "SUBSCRIBE Projects.Alpha")
        .cmd(0, "l6", "LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"*\"")
        .cmd(
            0,
            "l7",
            "LIST \"\" \"%\" RETURN (CHILDREN STATUS (MESSAGES UNSEEN UIDNEXT UIDVALIDITY SIZE))",
        )
        .cmd(0, "l8", "LIST (REMOTE) \"\" (\"INBOX\" \"Proj*\")")
        .cmd(0, "l9", "RENAME Projects.Alpha Projects.Beta")
        .cmd(0, "l10", "LSUB \"\" \"*\"")
        .cmd(0, "l11", "LIST \"\" \"Projects.*\"")
        .cmd(0, "l12", "UNSUBSCRIBE Projects.Alpha")
        .cmd(0, "l13", "DELETE Projects.Beta")
        .cmd(0, "l14", "DELETE Projects")
        .cmd(0, "l15", "CREATE Junk (USE (\\Junk))")
        .cmd(0, "l16", "STATUS Junk (MESSAGES SIZE UIDVALIDITY)")
        .cmd(
            0,
            "l17",
            "LIST \"\" \"*\" RETURN (STATUS (MESSAGES RECENT))",
        );
    check(s, 1).await;
}

#[tokio::test]
async fn sort_and_thread() {
    let s = Script::new("sort_thread", 1)
        .cmd(0, "t1", "EXAMINE INBOX")
        .cmd(0, "t2", "SORT (SUBJECT) UTF-8 ALL")
        .cmd(0, "t3", "SORT (REVERSE DATE) UTF-8 ALL")
        .cmd(0, "t4", "SORT (ARRIVAL) US-ASCII ALL")
        .cmd(0, "t5", "UID SORT (FROM SIZE) UTF-8 ALL")
        .cmd(0, "t6", "SORT (DISPLAYFROM) UTF-8 ALL")
        .cmd(0, "t7", "SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL")
        .cmd(0, "t8", "THREAD REFERENCES UTF-8 ALL")
        .cmd(0, "t9", "THREAD ORDEREDSUBJECT UTF-8 ALL")
        .cmd(0, "t10", "UID THREAD REFS UTF-8 ALL")
        .cmd(
            0,
            "t13",
            "SEARCH OR FROM alice SENTBEFORE 11-Nov-2023 NOT DELETED",
        )
        .cmd(0, "t14", "FETCH 1:* (ENVELOPE)")
        // RFC 5032 WITHIN: every message is older than a day, none younger.
        .cmd(0, "t16", "SEARCH OLDER 86400")
        .cmd(0, "t17", "UID SEARCH YOUNGER 86400")
        .cmd(0, "t15", "CLOSE");
    check(s, 1).await;
}

// ---------------------------------------------------------------------------------------
// Housekeeping commands, ID after login, errors.

#[tokio::test]
async fn capability_id_namespace_and_deselecting() {
    let s = Script::new("housekeeping", 1)
        .cmd(0, "h1", "CAPABILITY")
        .cmd(0, "h2", "ID (\"name\" \"conformance\" \"version\" \"1\")")
        .cmd(0, "h3", "NAMESPACE")
        .cmd(0, "h4", "SELECT INBOX")
        .cmd(0, "h5", "UNSELECT")
        .cmd(0, "h6", "SELECT NoSuchMailbox")
        .cmd(0, "h7", "EXAMINE INBOX")
        .cmd(0, "h8", "STORE 1 +FLAGS (\\Seen)")
        .cmd(0, "h9", "UID FETCH 999999 (FLAGS)")
        .cmd(0, "h10", "CHECK")
        .cmd(0, "h11", "CLOSE")
        .cmd(0, "h12", "STATUS INBOX (MESSAGES UIDVALIDITY)")
        .cmd(0, "h13", "ID NIL")
        .cmd(0, "h14", "SELECT INBOX")
        .cmd(0, "h15", "SELECT NoSuchMailbox")
        .cmd(0, "h16", "NOOP");
    check(s, 1).await;
}

/// Errors Dovecot answers `BAD`. The proxy treats any `BAD` as a sign that it may have framed
/// the command differently from the server, so these sessions are never reused.
#[tokio::test]
async fn errors_answered_bad() {
    let s = Script::new("errors", 1)
        .cmd(0, "e1", "FETCH 1 (FLAGS)")
        .cmd(0, "e2", "SELECT INBOX")
        .cmd(0, "e3", "FETCH 1:* (FLAGS")
        .cmd(0, "e4", "FETCH 99999 (FLAGS)")
        .cmd(0, "e5", "SEARCH NOSUCHKEY")
        .cmd(0, "e6", "XYZZY")
        .cmd(0, "e7", "LOGIN user password")
        .send(0, "\r\n")
        .cmd(0, "e8", "FETCH 1 (FLAGS)")
        // Dovecot ignores the rest of a NOOP line, so the "literal" is the next command.
        .send(0, "e9 NOOP {12+}\r\ne10 UNSELECT\r\n")
        .tags(0, &["e9", "e10"])
        // A refused synchronizing literal that the client sends anyway: it is a command.
        .send(0, "e11 APPEND NoSuchMailbox {11}\r\n")
        .continuation(0, "e11")
        .send(0, "e12 CHECK\r\n")
        .tagged(0, "e12")
        .cmd(0, "e13", "NOOP")
        // Something other than DONE during IDLE.
        .cmd(0, "e14", "SELECT INBOX")
        .idle(0, "e15")
        .send(0, "e16 NOOP\r\n")
        .tags(0, &["e15"])
        .cmd(0, "e17", "NOOP");
    check(s, 0).await;
}

/// A command line longer than the proxy inspects (a 24 KB UID set): relayed in pieces,
/// answered as Dovecot answers it.
#[tokio::test]
async fn very_long_command_lines() {
    let set: Vec<String> = (1..=4000).map(|i| (i * 2 + 1).to_string()).collect();
    let set = set.join(",");
    let s = Script::new("long_lines", 1)
        .cmd(0, "g1", "SELECT INBOX")
        .cmd(0, "g2", &format!("UID FETCH {set} (FLAGS)"))
        .cmd(0, "g3", &format!("UID SEARCH UID {set}"))
        .cmd(
            0,
            "g4",
            &format!("SEARCH SUBJECT \"{}\"", "x".repeat(20_000)),
        )
        .cmd(0, "g5", "UNSELECT");
    check(s, 0).await;
}

/// Commands pipelined behind LOGIN, in the same write: the proxy logs in (or takes a cached
/// session) and must then hand them to the backend.
#[tokio::test]
async fn commands_pipelined_behind_login() {
    let s = Script::new("after_login", 2)
        .after_login(0, "x1 SELECT INBOX\r\nx2 UID FETCH 1:* (FLAGS)\r\n")
        .after_login(1, "y1 NOOP\r\n")
        .tags(0, &["x1", "x2"])
        .tagged(1, "y1")
        .cmd(1, "y2", "STATUS INBOX (MESSAGES)")
        .cmd(0, "x3", "UNSELECT");
    check(s, 2).await;
}
