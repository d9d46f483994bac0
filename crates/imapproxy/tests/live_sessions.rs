//! Re-homing logged-in sessions (issue #9, DESIGN.md "Live sessions: re-homing"), end to end:
//! the real binary in front of two Dovecots over one mail store. A backend is killed
//! (`kill -9`), drained with migration, or a user is moved, while the clients stay connected;
//! what they see afterwards must be the truth or an honest refusal (`NO [UNAVAILABLE]`,
//! `BYE [UNAVAILABLE]`), never wrong data.
//!
//! Every test starts its own pair of Dovecots (a kill must not reach another test) and its own
//! proxy; every user is routed to `mail1` at login by a static map, `mail2` stays up. Users are
//! distinct per client: the testkit raises Dovecot's `mail_max_userip_connections` to 100 (its
//! own default is 10), and the proxy and the direct helper connections of one user all come
//! from 127.0.0.1.
//!
//! `TEST_PROXY_LOG=debug` shows the proxy's log; `--nocapture` shows the figures of the kill
//! test (survival share, pauses).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Binary, loopback, runtime, wait_until};
use imapproxy_testkit::{Dovecot, TestClient, shared_mail_dir};
use tokio::task::JoinHandle;

const ADMIN_TOKEN: &str = "live-sessions-t0ken";

/// What every client fetches and compares: flags and headers of the whole INBOX.
const FETCH: &str = "UID FETCH 1:* (FLAGS BODY.PEEK[HEADER])";

/// Dovecot's built-in process limit (100 per service) is below what the kill test opens on
/// the surviving backend (the moved sessions plus the direct APPENDs).
const DOVECOT_LIMITS: &str = "default_process_limit = 400\ndefault_client_limit = 4000\n";

/// Two Dovecots over one mail store; `user1..userN` (each INBOX seeded with five messages).
struct Pair {
    mail1: Dovecot,
    mail2: Dovecot,
    _store: tempfile::TempDir,
}

fn pair(users: usize) -> Pair {
    let store = shared_mail_dir().unwrap();
    let start = || {
        Dovecot::builder()
            .users(users)
            .mail_dir(store.path())
            .extra_config(DOVECOT_LIMITS)
            .start()
            .unwrap()
    };
    let mail1 = start();
    let mail2 = start();
    Pair {
        mail1,
        mail2,
        _store: store,
    }
}

/// Sends `SIGSTOP` to every process of `dovecot` (its master leads a process group): its
/// connections stay open and nothing it is sent is answered, until it is killed.
fn freeze(dovecot: &Dovecot) {
    let pgid = dovecot.pid().expect("running");
    let status = Command::new("kill")
        .args(["-STOP", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(status.success(), "kill -STOP failed");
}

/// The proxy under test: a plain listener, the admin endpoint, every login routed to `mail1`.
struct Proxy {
    _binary: Binary,
    plain: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn start(pair: &Pair) -> Self {
        Self::with_rehome_timeout(pair, "8s")
    }

    fn with_rehome_timeout(pair: &Pair, rehome_timeout: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("users.map");
        std::fs::write(&map, "*  mail1\n").unwrap();
        let [plain, admin] = [(); 2].map(|()| loopback());
        let config = format!(
            r#"
[[listeners]]
addr = "{plain}"
tls = "none"
allow_plaintext_auth = true

[[backends]]
name = "mail1"
addr = "{a}"

[[backends]]
name = "mail2"
addr = "{b}"

[routing]
map = "{map}"

[session]
rehome_timeout = "{rehome_timeout}"

[admin]
addr = "{admin}"
token = "{ADMIN_TOKEN}"
"#,
            a = pair.mail1.imap_addr(),
            b = pair.mail2.imap_addr(),
            map = map.display(),
        );
        Self {
            _binary: Binary::start(&config, &[plain, admin]),
            plain,
            admin,
            _dir: dir,
        }
    }

    /// One admin request (bearer token, form body): (status, body).
    fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut tcp = std::net::TcpStream::connect(self.admin).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            tcp,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        tcp.read_to_string(&mut text).unwrap();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn admin_json(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let (status, text) = self.admin(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// (user, backend) of every live session.
    fn sessions(&self) -> Vec<(String, String)> {
        self.admin_json("GET", "/sessions", "")["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["user"].as_str().unwrap().to_owned(),
                    s["backend"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn backends_of(&self, user: &str) -> Vec<String> {
        self.sessions()
            .into_iter()
            .filter(|(u, _)| u == user)
            .map(|(_, b)| b)
            .collect()
    }

    fn on(&self, backend: &str) -> usize {
        self.sessions().iter().filter(|(_, b)| b == backend).count()
    }
}

async fn join_all<T>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn login_line(user: &str) -> String {
    format!("imap-login: Info: Login: user=<{user}>,")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A small message whose subject says what it is.
fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Tester <tester@example.org>\r\nTo: someone@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{}@live-sessions.test>\r\n\r\nBody of {subject}.\r\n",
        subject.replace(' ', ".")
    )
    .into_bytes()
}

async fn login(addr: SocketAddr, user: &str, pass: &str) -> TestClient {
    let mut c = TestClient::connect(addr).await.unwrap();
    let r = c.login(user, pass).await.unwrap();
    assert!(r.tagged_ok(), "login of {user} at {addr}: {}", r.text());
    c
}

/// Sends `command` with a fresh tag and asserts a tagged OK; returns the untagged lines.
async fn ok(c: &mut TestClient, command: &str) -> Vec<Vec<u8>> {
    let tag = c.next_tag();
    let x = exchange(c, &tag, command).await;
    match &x.end {
        End::Tagged(line) if is_ok(line) => x.lines,
        other => panic!(
            "{command}: {other:?} after {:?}",
            x.lines.iter().map(|l| text(l)).collect::<Vec<_>>()
        ),
    }
}

/// Directly at a Dovecot: APPENDs `msgs` to `mailbox` of `user`.
async fn append_direct(addr: SocketAddr, user: &str, pass: &str, mailbox: &str, msgs: &[Vec<u8>]) {
    let mut c = login(addr, user, pass).await;
    for msg in msgs {
        let mut cmd = format!("ap APPEND {mailbox} {{{}+}}\r\n", msg.len()).into_bytes();
        cmd.extend_from_slice(msg);
        cmd.extend_from_slice(b"\r\n");
        c.send_raw(&cmd).await.unwrap();
        let r = c.read_until_tagged("ap").await.unwrap();
        assert!(r.tagged_ok(), "APPEND for {user}: {}", r.text());
    }
    let _ = c.logout().await;
}

/// Directly at a Dovecot: runs `commands` for `user`, each of which must succeed.
async fn direct(addr: SocketAddr, user: &str, pass: &str, commands: &[&str]) -> Vec<Vec<u8>> {
    let mut c = login(addr, user, pass).await;
    let mut lines = Vec::new();
    for command in commands {
        lines.extend(ok(&mut c, command).await);
    }
    let _ = c.logout().await;
    lines
}

/// Opens every user's INBOX once directly, so that no session through the proxy is the one
/// that sees the seeded messages as `\Recent`. `\Recent` belongs to one server connection
/// (RFC 3501 §2.3.2): a re-homed session is a new one, and would otherwise fetch other FLAGS
/// than before for reasons that are not the proxy's.
async fn claim_recent(addr: SocketAddr, users: &[(String, String)]) {
    let handles = users
        .iter()
        .cloned()
        .map(|(u, p)| {
            tokio::spawn(async move {
                direct(addr, &u, &p, &["SELECT INBOX"]).await;
            })
        })
        .collect();
    join_all(handles).await;
}

/// How one exchange ended.
#[derive(Debug)]
enum End {
    /// The tagged reply (without CRLF).
    Tagged(String),
    /// An untagged `BYE` (without CRLF); the connection is then expected to close.
    Bye(String),
    /// The connection closed; `partial`: part of a response had arrived.
    Closed {
        partial: bool,
    },
    TimedOut,
}

struct Exchange {
    /// Every line before the end, literals inlined.
    lines: Vec<Vec<u8>>,
    end: End,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.lines.iter().map(|l| text(l)).collect();
        f.debug_struct("Exchange")
            .field("lines", &lines)
            .field("end", &self.end)
            .finish()
    }
}

fn is_ok(tagged: &str) -> bool {
    tagged
        .split(' ')
        .nth(1)
        .is_some_and(|w| w.eq_ignore_ascii_case("OK"))
}

fn is_unavailable(tagged: &str) -> bool {
    tagged.split(' ').nth(1) == Some("NO") && tagged.contains(" NO [UNAVAILABLE]")
}

async fn exchange(c: &mut TestClient, tag: &str, command: &str) -> Exchange {
    if c.send_raw(format!("{tag} {command}\r\n").as_bytes())
        .await
        .is_err()
    {
        return Exchange {
            lines: Vec::new(),
            end: End::Closed { partial: false },
        };
    }
    read_reply(c, tag).await
}

/// Reads lines until the tagged reply for `tag`, a `BYE`, the end of the connection or the
/// client's read timeout.
async fn read_reply(c: &mut TestClient, tag: &str) -> Exchange {
    let mut lines = Vec::new();
    loop {
        match c.read_line().await {
            Ok(line) => {
                let t = text(line.strip_suffix(b"\r\n").unwrap_or(&line));
                if line.starts_with(format!("{tag} ").as_bytes()) {
                    return Exchange {
                        lines,
                        end: End::Tagged(t),
                    };
                }
                if t.starts_with("* BYE") {
                    return Exchange {
                        lines,
                        end: End::Bye(t),
                    };
                }
                lines.push(line);
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Exchange {
                    lines,
                    end: End::TimedOut,
                };
            }
            Err(_) => {
                return Exchange {
                    lines,
                    end: End::Closed {
                        partial: !c.buffered().is_empty(),
                    },
                };
            }
        }
    }
}

/// The session must end: a `* BYE [UNAVAILABLE]` as the first and only line, then the end of
/// the connection. Nothing of a mailbox the client did not select may come before it.
async fn expect_bye_and_close(c: &mut TestClient, who: &str) {
    c.set_timeout(Duration::from_secs(10));
    let line = c.read_line().await;
    let line = text(&line.unwrap_or_else(|e| panic!("{who}: no BYE, {e}")));
    assert!(
        line.starts_with("* BYE [UNAVAILABLE]"),
        "{who}: expected BYE [UNAVAILABLE] as the first line, got {line:?}"
    );
    assert!(
        c.expect_eof(Duration::from_secs(5)).await,
        "{who}: not closed after the BYE"
    );
    assert!(
        c.buffered().is_empty(),
        "{who}: bytes after the BYE: {:?}",
        text(c.buffered())
    );
}

/// Dovecot's IDLE keep-alive. Its first one comes at a moment fixed by a hash of user and
/// address, aligned to `imap_idle_notify_interval`, so it may come seconds after IDLE starts.
const STILL_HERE: &str = "* OK Still here\r\n";

/// Reads untagged lines in IDLE until `want` (`* n EXISTS`); `RECENT` and Dovecot's keep-alive
/// may come along. A second continuation, a tagged reply or a BYE fail.
async fn expect_in_idle(c: &mut TestClient, want: &str, who: &str) {
    loop {
        let line = c
            .read_line()
            .await
            .unwrap_or_else(|e| panic!("{who}: waiting in IDLE for {want:?}: {e}"));
        let t = text(&line);
        if t == format!("{want}\r\n") {
            return;
        }
        assert!(
            t == STILL_HERE || (t.starts_with("* ") && t.ends_with(" RECENT\r\n")),
            "{who}: in IDLE, waiting for {want:?}, got {t:?}"
        );
    }
}

/// Ends the client's IDLE (tag `tag`): the tagged OK must come, with nothing but `RECENT`,
/// `EXISTS` or the keep-alive before it.
async fn done(c: &mut TestClient, tag: &str, who: &str) {
    c.send_raw(b"DONE\r\n").await.unwrap();
    let x = read_reply(c, tag).await;
    for l in &x.lines {
        let t = text(l);
        assert!(
            t == STILL_HERE
                || (t.starts_with("* ")
                    && (t.ends_with(" RECENT\r\n") || t.ends_with(" EXISTS\r\n"))),
            "{who}: unexpected before the IDLE's tagged reply: {t:?}"
        );
    }
    match &x.end {
        End::Tagged(line) => assert!(is_ok(line), "{who}: IDLE ended with {line:?}"),
        other => panic!("{who}: after DONE, {other:?}"),
    }
}

async fn start_idle(c: &mut TestClient, tag: &str, who: &str) {
    c.send_raw(format!("{tag} IDLE\r\n").as_bytes())
        .await
        .unwrap();
    let line = text(&c.read_line().await.unwrap());
    assert!(line.starts_with("+ "), "{who}: IDLE answered {line:?}");
}

fn subject_of(lines: &[Vec<u8>]) -> String {
    lines.iter().map(|l| text(l)).collect::<String>()
}

fn uidvalidity(lines: &[Vec<u8>]) -> u64 {
    let all = subject_of(lines);
    let at = all.find("[UIDVALIDITY ").expect("UIDVALIDITY in SELECT") + 13;
    all[at..]
        .split(']')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap()
}

// ----- 1. kill -9 of a backend under many sessions -----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    /// In IDLE on INBOX.
    Idle,
    /// INBOX selected, between commands.
    Quiet,
    /// `UID FETCH 1:*` in a loop.
    Loop,
}

/// The texts are read through `Debug`, in failure messages.
#[allow(dead_code)]
#[derive(Debug)]
enum Outcome {
    Same,
    Refused,
    Wrong(String),
    Bye(String),
    Closed { partial: bool },
    TimedOut,
}

fn judge(x: &Exchange, baseline: &[Vec<u8>]) -> Outcome {
    let shown = || x.lines.iter().map(|l| text(l)).collect::<Vec<_>>().join("");
    match &x.end {
        End::Tagged(line) if is_ok(line) => {
            if x.lines == baseline {
                Outcome::Same
            } else {
                Outcome::Wrong(format!("OK with other data:\n{}", shown()))
            }
        }
        // Whatever came before the refusal must be true.
        End::Tagged(line) if is_unavailable(line) && baseline.starts_with(&x.lines) => {
            Outcome::Refused
        }
        End::Tagged(line) => Outcome::Wrong(format!("{line:?} after\n{}", shown())),
        End::Bye(line) => Outcome::Bye(line.clone()),
        End::Closed { partial } => Outcome::Closed { partial: *partial },
        End::TimedOut => Outcome::TimedOut,
    }
}

struct Iteration {
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

/// Fetches until `stop`, or until the session ends; returns the client if it still lives.
async fn fetch_loop(
    mut c: TestClient,
    baseline: Vec<Vec<u8>>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) -> (Option<TestClient>, Vec<Iteration>) {
    let mut log = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let tag = c.next_tag();
        let sent = Instant::now();
        let x = exchange(&mut c, &tag, FETCH).await;
        let outcome = judge(&x, &baseline);
        if matches!(outcome, Outcome::Same) {
            answered.fetch_add(1, Ordering::Relaxed);
        }
        let ended = matches!(
            outcome,
            Outcome::Bye(_) | Outcome::Closed { .. } | Outcome::TimedOut
        );
        log.push(Iteration {
            sent,
            done: Instant::now(),
            outcome,
        });
        if ended {
            return (None, log);
        }
    }
    (Some(c), log)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Clients per group in the kill test (three groups).
const PER_GROUP: usize = 34;

#[test]
fn sessions_of_a_killed_backend_continue_on_the_other_without_reconnecting() {
    let n = 3 * PER_GROUP;
    let mut pair = pair(n + 1);
    let proxy = Proxy::start(&pair);
    let rt = runtime();
    // user1 has the 1 MiB message; the others five small ones.
    let users: Vec<(String, String)> = (2..=n + 1).map(|i| pair.mail1.user(i)).collect();
    let group = |i: usize| [Group::Idle, Group::Quiet, Group::Loop][i % 3];
    let addr2 = pair.mail2.imap_addr();
    // Also the yardstick for the pauses: as many logins and SELECTs at once, directly.
    let direct_started = Instant::now();
    rt.block_on(claim_recent(addr2, &users));
    let direct_logins = direct_started.elapsed();
    let logins_before: Vec<usize> = users.iter().map(|(u, _)| pair.mail2.logins(u)).collect();

    // Everyone logs in (to mail1), selects INBOX and fetches what the comparisons use.
    let plain = proxy.plain;
    let clients: Vec<(TestClient, Vec<Vec<u8>>)> = rt.block_on(join_all(
        users
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, (u, p))| {
                rt.spawn(async move {
                    let mut c = login(plain, &u, &p).await;
                    ok(&mut c, "SELECT INBOX").await;
                    let baseline = ok(&mut c, FETCH).await;
                    assert_eq!(baseline.len(), 5, "{u}: {baseline:?}");
                    if group(i) == Group::Idle {
                        start_idle(&mut c, "idle1", &u).await;
                    }
                    (c, baseline)
                })
            })
            .collect(),
    ));
    assert_eq!(proxy.on("mail1"), n, "every session starts on mail1");
    assert!(pair.mail1.logins(&users[0].0) >= 1);

    let stop = Arc::new(AtomicBool::new(false));
    let mut idle = Vec::new();
    let mut quiet = Vec::new();
    let mut loops = Vec::new();
    for (i, (c, baseline)) in clients.into_iter().enumerate() {
        match group(i) {
            Group::Idle => idle.push((i, c, baseline)),
            Group::Quiet => quiet.push((i, c, baseline)),
            Group::Loop => {
                let stop = Arc::clone(&stop);
                let answered = Arc::new(AtomicUsize::new(0));
                let task = rt.spawn(fetch_loop(c, baseline, stop, Arc::clone(&answered)));
                loops.push((i, task, answered));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(400));

    let t0 = Instant::now();
    pair.mail1.kill();
    let t1 = Instant::now();

    // IDLE clients: a message APPENDed at the survivor after the kill comes as `* 6 EXISTS`;
    // DONE ends the IDLE under the client's tag; the old messages are what they were.
    let idle_handles: Vec<JoinHandle<(String, Duration, TestClient)>> = idle
        .into_iter()
        .map(|(i, mut c, baseline)| {
            let (u, p) = users[i].clone();
            rt.spawn(async move {
                let subject = format!("after the kill {u}");
                append_direct(addr2, &u, &p, "INBOX", &[message(&subject)]).await;
                expect_in_idle(&mut c, "* 6 EXISTS", &u).await;
                let pause = t0.elapsed();
                done(&mut c, "idle1", &u).await;
                let now = ok(&mut c, "UID FETCH 1:5 (FLAGS BODY.PEEK[HEADER])").await;
                assert_eq!(now, baseline, "{u}: other data after the move");
                let new = ok(&mut c, "UID FETCH 6 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").await;
                assert!(subject_of(&new).contains(&subject), "{u}: {new:?}");
                ok(&mut c, "NOOP").await;
                (u, pause, c)
            })
        })
        .collect();
    // Quiet clients: their next command is answered, with the same data.
    let quiet_handles: Vec<JoinHandle<(String, Duration, TestClient)>> = quiet
        .into_iter()
        .map(|(i, mut c, baseline)| {
            let u = users[i].0.clone();
            rt.spawn(async move {
                let tag = c.next_tag();
                let x = exchange(&mut c, &tag, FETCH).await;
                let pause = t0.elapsed();
                match judge(&x, &baseline) {
                    Outcome::Same => {}
                    other => panic!("{u}: first FETCH after the kill: {other:?}"),
                }
                ok(&mut c, "NOOP").await;
                (u, pause, c)
            })
        })
        .collect();
    let at_kill: Vec<usize> = loops
        .iter()
        .map(|(_, _, answered)| answered.load(Ordering::Relaxed))
        .collect();
    let idle_done = rt.block_on(join_all(idle_handles));
    let quiet_done = rt.block_on(join_all(quiet_handles));
    // The loops run on a while on the new backend: at least 1.5 s after the kill, and until
    // each has had two more answers (the FETCH in flight at the kill, and one sent after it),
    // however long the moves took on a loaded machine (bounded; the checks below tell).
    let moved_on = |(_, _, answered): &(usize, _, Arc<AtomicUsize>), before: &usize| {
        answered.load(Ordering::Relaxed) >= before + 2
    };
    wait_until(Duration::from_secs(20), || {
        loops.iter().zip(&at_kill).all(|(l, b)| moved_on(l, b))
    });
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(t1.elapsed()));
    stop.store(true, Ordering::Relaxed);

    let group_pauses = |done: &[(String, Duration, TestClient)]| -> Vec<Duration> {
        let mut p: Vec<Duration> = done.iter().map(|(_, d, _)| *d).collect();
        p.sort();
        p
    };
    let (idle_pauses, quiet_pauses) = (group_pauses(&idle_done), group_pauses(&quiet_done));
    let mut loop_pauses = Vec::new();
    let mut survivors: Vec<String> = idle_done
        .iter()
        .chain(&quiet_done)
        .map(|(u, _, _)| u.clone())
        .collect();
    // Kept connected until the end.
    let mut alive: Vec<TestClient> = Vec::new();
    let (mut refused, mut closed, mut closed_partial, mut iterations) = (0, 0, 0, 0);
    // Fetches sent before the kill and answered after it (by mail2: resent).
    let mut resent = 0;
    let mut problems = Vec::new();
    for (i, handle, _) in loops {
        let u = &users[i].0;
        let (client, log) = rt.block_on(handle).unwrap();
        iterations += log.len();
        let in_flight_at_kill = log.iter().any(|it| it.sent < t0 && it.done >= t0);
        for it in &log {
            match &it.outcome {
                Outcome::Same if it.sent < t0 && it.done >= t1 => resent += 1,
                Outcome::Same => {}
                Outcome::Refused => refused += 1,
                Outcome::Closed { partial } if in_flight_at_kill => {
                    closed += 1;
                    closed_partial += usize::from(*partial);
                }
                other => problems.push(format!("{u}: {other:?}")),
            }
        }
        if let Some(mut c) = client {
            let after: Vec<&Iteration> = log.iter().filter(|it| it.sent > t1).collect();
            if !after.iter().any(|it| matches!(it.outcome, Outcome::Same)) {
                problems.push(format!("{u}: no successful FETCH after the kill"));
            }
            if let Some(first) = log
                .iter()
                .find(|it| it.done > t1 && matches!(it.outcome, Outcome::Same))
            {
                loop_pauses.push(first.done - t0);
            }
            rt.block_on(async { ok(&mut c, "NOOP").await });
            alive.push(c);
            survivors.push(u.clone());
        }
    }

    // Where the sessions are now: all on mail2, whose log shows their logins.
    assert!(
        wait_until(Duration::from_secs(5), || proxy.on("mail1") == 0),
        "sessions left on mail1: {:?}",
        proxy.sessions()
    );
    let listed = proxy.sessions();
    for u in &survivors {
        assert!(
            listed.contains(&(u.clone(), "mail2".to_owned())),
            "{u} not on mail2: {listed:?}"
        );
    }
    for (i, (u, _)) in users.iter().enumerate() {
        if survivors.contains(u) {
            // The proxy's login, and for IDLE users the direct APPEND's.
            let want = logins_before[i] + 1 + usize::from(group(i) == Group::Idle);
            assert!(
                pair.mail2
                    .wait_for_log(&login_line(u), want, Duration::from_secs(5))
                    >= want,
                "{u}: no login on mail2"
            );
        }
    }

    loop_pauses.sort();
    let mut pauses: Vec<Duration> = [&idle_pauses, &quiet_pauses, &loop_pauses]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    pauses.sort();
    let ms = |p: &[Duration], q: f64| percentile(p, q).as_millis();
    println!(
        "kill -9 of mail1 with {n} sessions ({PER_GROUP} in IDLE, {PER_GROUP} quiet, \
         {PER_GROUP} fetching): {} survived ({:.1}%)\n\
         fetch loops: {iterations} iterations; {resent} in flight at the kill and answered \
         after it with the same data; {refused} refused NO [UNAVAILABLE]; {closed} sessions \
         closed mid-response ({closed_partial} with part of a response received)\n\
         pause from the kill: p50 {} ms, p99 {} ms, max {} ms (IDLE, to the EXISTS of an \
         APPEND made after the kill: p50 {} ms, p99 {} ms; quiet, to the answer of the next \
         command: p50 {} ms, p99 {} ms; loops, to the first answer: p50 {} ms, p99 {} ms)\n\
         for scale: {n} logins with SELECT at once directly at Dovecot (nothing else \
         running) took {} ms",
        survivors.len(),
        100.0 * survivors.len() as f64 / n as f64,
        ms(&pauses, 0.5),
        ms(&pauses, 0.99),
        pauses.last().copied().unwrap_or_default().as_millis(),
        ms(&idle_pauses, 0.5),
        ms(&idle_pauses, 0.99),
        ms(&quiet_pauses, 0.5),
        ms(&quiet_pauses, 0.99),
        ms(&loop_pauses, 0.5),
        ms(&loop_pauses, 0.99),
        direct_logins.as_millis(),
    );
    assert!(problems.is_empty(), "fetch loops: {problems:#?}");
    assert_eq!(
        survivors.len() + closed,
        n,
        "every session survives, or was closed in the middle of a response"
    );
}

// ----- 2. drain with migration -----

/// When each exchange ended, and what was wrong with it (empty: nothing).
type VerdictLog = Vec<(Instant, String)>;

#[test]
fn drain_with_migration_moves_working_sessions_to_the_other_backend() {
    let pair = pair(10);
    let proxy = Proxy::start(&pair);
    let rt = runtime();
    let users: Vec<(String, String)> = (2..=9).map(|i| pair.mail1.user(i)).collect();
    let (idle_users, loop_users) = users.split_at(4);
    let addr2 = pair.mail2.imap_addr();
    rt.block_on(claim_recent(addr2, &users));
    let logins_before: Vec<usize> = users.iter().map(|(u, _)| pair.mail2.logins(u)).collect();

    let plain = proxy.plain;
    let mut idlers: Vec<(TestClient, Vec<Vec<u8>>)> = rt.block_on(async {
        let mut out = Vec::new();
        for (u, p) in idle_users {
            let mut c = login(plain, u, p).await;
            ok(&mut c, "SELECT INBOX").await;
            let baseline = ok(&mut c, FETCH).await;
            start_idle(&mut c, "idle2", u).await;
            out.push((c, baseline));
        }
        out
    });
    // The others alternate NOOP and FETCH until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<JoinHandle<(TestClient, VerdictLog)>> = loop_users
        .iter()
        .cloned()
        .map(|(u, p)| {
            let stop = Arc::clone(&stop);
            rt.spawn(async move {
                let mut c = login(plain, &u, &p).await;
                ok(&mut c, "SELECT INBOX").await;
                let baseline = ok(&mut c, FETCH).await;
                let mut log = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for command in ["NOOP", FETCH] {
                        let tag = c.next_tag();
                        let x = exchange(&mut c, &tag, command).await;
                        let verdict = match (command, judge(&x, &baseline)) {
                            (FETCH, Outcome::Same) => String::new(),
                            ("NOOP", _) if matches!(&x.end, End::Tagged(l) if is_ok(l)) => {
                                String::new()
                            }
                            (_, other) => format!("{u}: {command}: {other:?} / {x:?}"),
                        };
                        let ended = !matches!(x.end, End::Tagged(_));
                        log.push((Instant::now(), verdict));
                        assert!(!ended, "{u}: session ended: {log:?}");
                    }
                }
                (c, log)
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || proxy.on("mail1") == users.len()),
        "{:?}",
        proxy.sessions()
    );
    std::thread::sleep(Duration::from_millis(300));

    let v = proxy.admin_json("POST", "/backends/mail1/drain?migrate=true", "");
    assert_eq!(v["health"], "draining", "{v}");
    assert_eq!(v["migrating"], users.len(), "{v}");
    assert!(
        wait_until(Duration::from_secs(10), || proxy.on("mail1") == 0),
        "sessions left on mail1: {:?}",
        proxy.sessions()
    );
    let drained = Instant::now();
    assert_eq!(proxy.on("mail2"), users.len(), "{:?}", proxy.sessions());
    let backends = proxy.admin_json("GET", "/backends", "");
    let count = |name: &str| {
        backends["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .map(|b| (b["health"].clone(), b["sessions"].clone()))
            .unwrap()
    };
    assert_eq!(count("mail1"), ("draining".into(), 0.into()), "{backends}");
    assert_eq!(
        count("mail2"),
        ("up".into(), users.len().into()),
        "{backends}"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);

    let _loopers = rt.block_on(async {
        let mut loopers = Vec::new();
        for (h, (u, _)) in loops.into_iter().zip(loop_users) {
            let (mut c, log) = h.await.unwrap();
            let bad: Vec<&String> = log
                .iter()
                .map(|(_, v)| v)
                .filter(|v| !v.is_empty())
                .collect();
            assert!(bad.is_empty(), "{u}: {bad:#?}");
            assert!(
                log.iter().any(|(at, _)| *at > drained),
                "{u}: no command after the drain"
            );
            ok(&mut c, "NOOP").await;
            loopers.push(c);
        }
        for ((c, baseline), (u, p)) in idlers.iter_mut().zip(idle_users) {
            let subject = format!("after the drain {u}");
            append_direct(addr2, u, p, "INBOX", &[message(&subject)]).await;
            expect_in_idle(c, "* 6 EXISTS", u).await;
            done(c, "idle2", u).await;
            assert_eq!(
                &ok(c, "UID FETCH 1:5 (FLAGS BODY.PEEK[HEADER])").await,
                baseline,
                "{u}"
            );
            let new = ok(c, "UID FETCH 6 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").await;
            assert!(subject_of(&new).contains(&subject), "{u}: {new:?}");
        }
        loopers
    });
    for (i, (u, _)) in users.iter().enumerate() {
        let want = logins_before[i] + 1 + usize::from(i < idle_users.len());
        assert!(
            pair.mail2
                .wait_for_log(&login_line(u), want, Duration::from_secs(5))
                >= want,
            "{u}: no login on mail2"
        );
    }
    assert_eq!(
        proxy.on("mail2"),
        users.len(),
        "every client still connected"
    );
}

// ----- 3. a live move of a user in IDLE -----

#[test]
fn a_user_moved_while_in_idle_stays_connected_and_keeps_idling() {
    let pair = pair(4);
    let proxy = Proxy::start(&pair);
    let rt = runtime();
    let (user, pass) = pair.mail1.user(2);
    rt.block_on(claim_recent(
        pair.mail1.imap_addr(),
        &[(user.clone(), pass.clone())],
    ));
    let mut c = rt.block_on(async {
        let mut c = login(proxy.plain, &user, &pass).await;
        ok(&mut c, "SELECT INBOX").await;
        start_idle(&mut c, "W7", &user).await;
        c
    });
    assert_eq!(proxy.backends_of(&user), ["mail1"]);
    let before = pair.mail2.logins(&user);

    let v = proxy.admin_json("POST", &format!("/users/{user}/move"), "backend=mail2");
    assert_eq!(
        (v["backend"].as_str(), v["migrating"].as_u64()),
        (Some("mail2"), Some(1)),
        "{v}"
    );
    assert!(
        pair.mail2
            .wait_for_log(&login_line(&user), before + 1, Duration::from_secs(5))
            > before,
        "no login of {user} on mail2"
    );
    assert!(
        wait_until(Duration::from_secs(5), || proxy.backends_of(&user)
            == ["mail2"]),
        "{:?}",
        proxy.sessions()
    );

    rt.block_on(async {
        // Made at the old backend, after the move: the IDLE on the new one sees it.
        let subject = format!("after the move {user}");
        append_direct(
            pair.mail1.imap_addr(),
            &user,
            &pass,
            "INBOX",
            &[message(&subject)],
        )
        .await;
        expect_in_idle(&mut c, "* 6 EXISTS", &user).await;
        done(&mut c, "W7", &user).await;
        let new = ok(&mut c, "UID FETCH 6 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").await;
        assert!(subject_of(&new).contains(&subject), "{new:?}");
        ok(&mut c, "NOOP").await;
    });
    assert_eq!(proxy.backends_of(&user), ["mail2"]);
}

// ----- 4. another UIDVALIDITY ends the session -----

/// `user` has `Box` (two messages) selected through the proxy (on mail1); meanwhile `Box` is
/// deleted and created again at mail2 with other messages, so it has another UIDVALIDITY.
async fn box_recreated_under_the_client(
    pair: &Pair,
    plain: SocketAddr,
    user: &str,
    pass: &str,
) -> TestClient {
    let (addr1, addr2) = (pair.mail1.imap_addr(), pair.mail2.imap_addr());
    direct(addr1, user, pass, &["CREATE Box"]).await;
    append_direct(
        addr1,
        user,
        pass,
        "Box",
        &[message("old one"), message("old two")],
    )
    .await;
    let mut c = login(plain, user, pass).await;
    let selected = ok(&mut c, "SELECT Box").await;
    let old = uidvalidity(&selected);
    direct(addr2, user, pass, &["DELETE Box", "CREATE Box"]).await;
    append_direct(
        addr2,
        user,
        pass,
        "Box",
        &[message("new one"), message("new two")],
    )
    .await;
    let now = direct(addr2, user, pass, &["SELECT Box"]).await;
    assert_ne!(uidvalidity(&now), old, "the test needs another UIDVALIDITY");
    c
}

#[test]
fn a_mailbox_with_another_uidvalidity_ends_the_session_with_bye() {
    let mut pair = pair(5);
    let proxy = Proxy::start(&pair);
    let rt = runtime();
    let (moved, moved_pass) = pair.mail1.user(2);
    let (failed, failed_pass) = pair.mail1.user(3);
    let (gone, gone_pass) = pair.mail1.user(4);
    let (mut a, mut b, mut g) = rt.block_on(async {
        let a = box_recreated_under_the_client(&pair, proxy.plain, &moved, &moved_pass).await;
        let b = box_recreated_under_the_client(&pair, proxy.plain, &failed, &failed_pass).await;
        // And a mailbox that no longer exists at all.
        let addr1 = pair.mail1.imap_addr();
        direct(addr1, &gone, &gone_pass, &["CREATE Box"]).await;
        append_direct(addr1, &gone, &gone_pass, "Box", &[message("doomed")]).await;
        let mut g = login(proxy.plain, &gone, &gone_pass).await;
        ok(&mut g, "SELECT Box").await;
        direct(pair.mail2.imap_addr(), &gone, &gone_pass, &["DELETE Box"]).await;
        (a, b, g)
    });

    // Moved by the operator.
    let v = proxy.admin_json("POST", &format!("/users/{moved}/move"), "backend=mail2");
    assert_eq!(v["migrating"], 1, "{v}");
    rt.block_on(expect_bye_and_close(&mut a, &moved));
    assert!(wait_until(Duration::from_secs(5), || proxy
        .backends_of(&moved)
        .is_empty()));

    // Its backend killed.
    pair.mail1.kill();
    rt.block_on(expect_bye_and_close(&mut b, &failed));
    rt.block_on(expect_bye_and_close(&mut g, &gone));
    assert!(wait_until(Duration::from_secs(5), || proxy
        .backends_of(&failed)
        .is_empty()));
}

// ----- 5. commands in flight when the backend dies -----

#[test]
fn commands_in_flight_at_a_kill_are_resent_or_refused_and_the_session_goes_on() {
    let mut pair = pair(5);
    let proxy = Proxy::start(&pair);
    let rt = runtime();
    let users: Vec<(String, String)> = (2..=4).map(|i| pair.mail1.user(i)).collect();
    rt.block_on(claim_recent(pair.mail2.imap_addr(), &users));
    let [(a, ap), (b, bp), (d, dp)] = [0, 1, 2].map(|i| users[i].clone());
    let (mut ca, baseline, mut cb, mut cd) = rt.block_on(async {
        let mut ca = login(proxy.plain, &a, &ap).await;
        ok(&mut ca, "SELECT INBOX").await;
        let baseline = ok(&mut ca, FETCH).await;
        let mut cb = login(proxy.plain, &b, &bp).await;
        ok(&mut cb, "SELECT INBOX").await;
        start_idle(&mut cb, "B1", &b).await;
        let mut cd = login(proxy.plain, &d, &dp).await;
        ok(&mut cd, "SELECT INBOX").await;
        (ca, baseline, cb, cd)
    });

    // mail1 stops answering; what the clients send now reaches it and stays unanswered.
    freeze(&pair.mail1);
    rt.block_on(async {
        // A: a safe command, an unsafe one, a safe one, pipelined.
        ca.send_raw(format!("A1 NOOP\r\nA2 CREATE Frozen\r\nA3 {FETCH}\r\n").as_bytes())
            .await
            .unwrap();
        // B: ends its IDLE; the tagged OK has not come.
        cb.send_raw(b"DONE\r\n").await.unwrap();
        // D: starts an IDLE; the `+` has not come.
        cd.send_raw(b"D1 IDLE\r\n").await.unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    pair.mail1.kill();

    rt.block_on(async {
        // A: NOOP and FETCH resent and answered from mail2; CREATE refused.
        let mut answered = std::collections::HashMap::new();
        let mut data = Vec::new();
        while answered.len() < 3 {
            let line = ca
                .read_line()
                .await
                .unwrap_or_else(|e| panic!("{a}: {e}; so far {answered:?}, {data:?}"));
            let t = text(&line);
            match t.split(' ').next() {
                Some(tag @ ("A1" | "A2" | "A3")) => {
                    answered.insert(tag.to_owned(), t.trim_end().to_owned());
                }
                _ => data.push(line),
            }
        }
        assert!(is_ok(&answered["A1"]), "{answered:?}");
        assert!(is_unavailable(&answered["A2"]), "{answered:?}");
        assert!(is_ok(&answered["A3"]), "{answered:?}");
        assert_eq!(data, baseline, "{a}: FETCH resent on mail2");
        ok(&mut ca, "NOOP").await;

        // B: the IDLE it ended gets its tagged OK under its tag, and nothing else.
        cb.set_timeout(Duration::from_secs(10));
        let x = read_reply(&mut cb, "B1").await;
        assert!(
            matches!(&x.end, End::Tagged(l) if is_ok(l)) && x.lines.is_empty(),
            "{b}: {x:?}"
        );
        ok(&mut cb, "NOOP").await;

        // D: one `+` for its IDLE, which works on mail2.
        let line = text(&cd.read_line().await.unwrap());
        assert!(line.starts_with("+ "), "{d}: {line:?}");
        let subject = format!("into the new IDLE {d}");
        append_direct(
            pair.mail2.imap_addr(),
            &d,
            &dp,
            "INBOX",
            &[message(&subject)],
        )
        .await;
        expect_in_idle(&mut cd, "* 6 EXISTS", &d).await;
        done(&mut cd, "D1", &d).await;
        ok(&mut cd, "NOOP").await;
    });
    assert_eq!(proxy.on("mail2"), 3, "{:?}", proxy.sessions());
}

// ----- 6. expunges the client did not see -----

#[test]
fn unseen_expunges_end_the_session_while_new_messages_are_announced() {
    let mut pair = pair(6);
    let proxy = Proxy::start(&pair);
    let rt = runtime();
    let users: Vec<(String, String)> = (2..=5).map(|i| pair.mail1.user(i)).collect();
    let addr2 = pair.mail2.imap_addr();
    rt.block_on(claim_recent(addr2, &users));
    // U: an expunge it does not see. V: a new message. W: its own expunge (seen) and a new
    // message. X: like V, with INBOX EXAMINEd.
    let [(u, up), (v, vp), (w, wp), (x, xp)] = [0, 1, 2, 3].map(|i| users[i].clone());
    let (mut cu, mut cv, mut cw, mut cx) = rt.block_on(async {
        let mut cu = login(proxy.plain, &u, &up).await;
        ok(&mut cu, "SELECT INBOX").await;
        let mut cv = login(proxy.plain, &v, &vp).await;
        ok(&mut cv, "SELECT INBOX").await;
        let mut cw = login(proxy.plain, &w, &wp).await;
        ok(&mut cw, "SELECT INBOX").await;
        let expunged = ok(&mut cw, "STORE 1 +FLAGS.SILENT (\\Deleted)").await;
        assert!(expunged.is_empty(), "{expunged:?}");
        let expunged = ok(&mut cw, "EXPUNGE").await;
        assert_eq!(subject_of(&expunged), "* 1 EXPUNGE\r\n");
        let mut cx = login(proxy.plain, &x, &xp).await;
        ok(&mut cx, "EXAMINE INBOX").await;

        // Directly at the survivor, unseen by the clients (they send nothing: no server may
        // tell them of an expunge between commands, RFC 9051 §7.5.1).
        direct(
            addr2,
            &u,
            &up,
            &[
                "SELECT INBOX",
                "STORE 2 +FLAGS.SILENT (\\Deleted)",
                "EXPUNGE",
            ],
        )
        .await;
        for (user, pass) in [(&v, &vp), (&w, &wp), (&x, &xp)] {
            append_direct(
                addr2,
                user,
                pass,
                "INBOX",
                &[message(&format!("new for {user}"))],
            )
            .await;
        }
        (cu, cv, cw, cx)
    });
    assert_eq!(proxy.on("mail1"), 4);

    pair.mail1.kill();
    rt.block_on(async {
        // Sequence numbers cannot be proven: the session ends rather than go on with wrong ones.
        expect_bye_and_close(&mut cu, &u).await;

        // New messages alone: `* n EXISTS`, and the session goes on with the right numbers.
        let line = text(&cv.read_line().await.unwrap());
        assert_eq!(line, "* 6 EXISTS\r\n", "{v}");
        ok(&mut cv, "NOOP").await;
        let uids = ok(&mut cv, "FETCH 1:* (UID)").await;
        let want: String = (1..=6)
            .map(|i| format!("* {i} FETCH (UID {i})\r\n"))
            .collect();
        assert_eq!(subject_of(&uids), want, "{v}");

        // Its own expunge was seen: 4 known + 1 new.
        let line = text(&cw.read_line().await.unwrap());
        assert_eq!(line, "* 5 EXISTS\r\n", "{w}");
        let uids = ok(&mut cw, "FETCH 1:* (UID)").await;
        let want: String = (1..=5)
            .map(|i| format!("* {i} FETCH (UID {})\r\n", i + 1))
            .collect();
        assert_eq!(subject_of(&uids), want, "{w}");

        // EXAMINE was replayed as EXAMINE: still read-only.
        let line = text(&cx.read_line().await.unwrap());
        assert_eq!(line, "* 6 EXISTS\r\n", "{x}");
        // (Dovecot answers OK and ignores it; another server may say NO.)
        let tag = cx.next_tag();
        let store = exchange(&mut cx, &tag, "STORE 1 +FLAGS (\\Flagged)").await;
        assert!(matches!(store.end, End::Tagged(_)), "{x}: {store:?}");
        let flags = subject_of(&ok(&mut cx, "FETCH 1 (FLAGS)").await);
        assert!(
            flags.starts_with("* 1 FETCH (FLAGS (") && !flags.contains("\\Flagged"),
            "{x}: a STORE changed a mailbox the client EXAMINEd: {flags:?}"
        );
        ok(&mut cx, "NOOP").await;
    });
    assert!(wait_until(Duration::from_secs(5), || proxy
        .backends_of(&u)
        .is_empty()));
    assert_eq!(proxy.on("mail2"), 3, "{:?}", proxy.sessions());
}

// ----- 5b. a command half sent when the backend dies -----

/// The client is in the middle of an APPEND's literal when its backend dies. The new backend
/// never saw the command's start: the rest of the literal must not reach it, where its lines
/// would run as commands. The client gets `NO [UNAVAILABLE]` for the APPEND or `BYE
/// [UNAVAILABLE]`, and nothing of the message is executed anywhere.
#[test]
fn the_rest_of_a_literal_half_sent_at_a_kill_never_runs_as_commands() {
    let mut pair = pair(3);
    let proxy = Proxy::start(&pair);
    let rt = runtime();
    let (user, pass) = pair.mail1.user(2);
    let first: &[u8] = b"From: a@example.org\r\nSubject: half sent\r\n\r\nFirst half.\r\n";
    let rest: &[u8] = b"X1 CREATE Injected\r\nX2 NOOP\r\n";
    let mut c = rt.block_on(async {
        let mut c = login(proxy.plain, &user, &pass).await;
        ok(&mut c, "SELECT INBOX").await;
        c.send_raw(format!("A1 APPEND INBOX {{{}}}\r\n", first.len() + rest.len()).as_bytes())
            .await
            .unwrap();
        let line = text(&c.read_line().await.unwrap());
        assert!(line.starts_with("+ "), "{line:?}");
        c.send_raw(first).await.unwrap();
        c
    });
    std::thread::sleep(Duration::from_millis(300));
    pair.mail1.kill();
    // The session moves (or ends) before the client sends the rest.
    assert!(
        wait_until(Duration::from_secs(5), || proxy.backends_of(&user)
            != ["mail1"]),
        "{:?}",
        proxy.sessions()
    );
    std::thread::sleep(Duration::from_millis(200));
    let x = rt.block_on(async {
        c.send_raw(rest).await.ok();
        c.send_raw(b"\r\n").await.ok();
        c.set_timeout(Duration::from_secs(3));
        read_reply(&mut c, "A1").await
    });
    let injected = rt.block_on(direct(
        pair.mail2.imap_addr(),
        &user,
        &pass,
        &["LIST \"\" Injected"],
    ));
    assert!(
        injected.is_empty(),
        "the literal's lines ran as commands on mail2: {:?}; the client saw {x:?}",
        subject_of(&injected)
    );
    assert!(
        x.lines.iter().all(|l| !l.starts_with(b"X")),
        "answers to the literal's lines reached the client: {x:?}"
    );
    match &x.end {
        End::Tagged(l) => assert!(is_unavailable(l), "{x:?}"),
        End::Bye(l) => assert!(l.starts_with("* BYE [UNAVAILABLE]"), "{x:?}"),
        End::Closed { .. } => {}
        End::TimedOut => panic!("no answer to the APPEND: {x:?}"),
    }
}

/// The client sent an APPEND with a synchronizing literal and waits for the server's `+`
/// when the backend dies. The new backend never saw the command: the client must not wait
/// for ever; RFC 9051 §4.3 lets a server refuse the literal with a tagged reply
/// (`NO [UNAVAILABLE]`), or the session ends with `BYE [UNAVAILABLE]`.
#[test]
fn a_literal_waiting_for_its_continuation_at_a_kill_is_answered() {
    let mut pair = pair(3);
    let proxy = Proxy::start(&pair);
    let rt = runtime();
    let (user, pass) = pair.mail1.user(2);
    let msg = message("never sent");
    let mut c = rt.block_on(async {
        let mut c = login(proxy.plain, &user, &pass).await;
        ok(&mut c, "SELECT INBOX").await;
        c
    });
    // mail1 never answers the APPEND line with its `+`.
    freeze(&pair.mail1);
    rt.block_on(async {
        c.send_raw(format!("A1 APPEND INBOX {{{}}}\r\n", msg.len()).as_bytes())
            .await
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    pair.mail1.kill();
    let x = rt.block_on(async {
        c.set_timeout(Duration::from_secs(5));
        read_reply(&mut c, "A1").await
    });
    match &x.end {
        End::Tagged(l) => assert!(is_unavailable(l), "{x:?}"),
        End::Bye(l) => assert!(l.starts_with("* BYE [UNAVAILABLE]"), "{x:?}"),
        other => panic!(
            "the client waits for a continuation no server will send: {other:?}; \
             sessions {:?}",
            proxy.sessions()
        ),
    }
    assert!(x.lines.is_empty(), "{x:?}");
}

// ----- state carried across: CONDSTORE -----

/// State the proxy replays: a client that enabled CONDSTORE keeps it on the new connection
/// (the same MODSEQs, and a STORE's FETCH response still carries MODSEQ); a mailbox selected
/// by a quoted name with a space is selected again by that name.
#[test]
fn enabled_condstore_and_a_quoted_mailbox_name_are_replayed_on_the_new_backend() {
    let mut pair = pair(4);
    let proxy = Proxy::start(&pair);
    let rt = runtime();
    let (user, pass) = pair.mail1.user(2);
    let (quoting, quoting_pass) = pair.mail1.user(3);
    rt.block_on(claim_recent(
        pair.mail2.imap_addr(),
        &[(user.clone(), pass.clone())],
    ));
    let (mut c, baseline, mut q, q_baseline) = rt.block_on(async {
        let mut c = login(proxy.plain, &user, &pass).await;
        let enabled = ok(&mut c, "ENABLE CONDSTORE").await;
        assert_eq!(subject_of(&enabled), "* ENABLED CONDSTORE\r\n");
        ok(&mut c, "SELECT INBOX").await;
        let baseline = ok(&mut c, "FETCH 1:* (UID FLAGS MODSEQ)").await;

        let addr1 = pair.mail1.imap_addr();
        direct(addr1, &quoting, &quoting_pass, &["CREATE \"Two words\""]).await;
        let msgs = [message("first of two"), message("second of two")];
        append_direct(addr1, &quoting, &quoting_pass, "\"Two words\"", &msgs).await;
        direct(addr1, &quoting, &quoting_pass, &["SELECT \"Two words\""]).await;
        let mut q = login(proxy.plain, &quoting, &quoting_pass).await;
        ok(&mut q, "SELECT \"Two words\"").await;
        let q_baseline = ok(&mut q, FETCH).await;
        assert_eq!(q_baseline.len(), 2);
        (c, baseline, q, q_baseline)
    });
    pair.mail1.kill();
    assert!(
        wait_until(Duration::from_secs(5), || proxy.on("mail2") == 2),
        "{:?}",
        proxy.sessions()
    );
    rt.block_on(async {
        assert_eq!(ok(&mut c, "FETCH 1:* (UID FLAGS MODSEQ)").await, baseline);
        let stored = subject_of(&ok(&mut c, "STORE 1 +FLAGS (\\Flagged)").await);
        assert!(
            stored.starts_with("* 1 FETCH (") && stored.contains("MODSEQ ("),
            "CONDSTORE is not on at the new backend: {stored:?}"
        );
        assert_eq!(ok(&mut q, FETCH).await, q_baseline, "{quoting}");
    });
}

// ----- nowhere to go -----

/// When no backend can take the session (mail2 accepts connections but never greets), the
/// move gives up at `rehome_timeout` and the client hears `BYE [UNAVAILABLE]`, never silence.
#[test]
fn a_session_that_cannot_move_anywhere_ends_with_bye_within_the_deadline() {
    let mut pair = pair(4);
    let proxy = Proxy::with_rehome_timeout(&pair, "2s");
    let rt = runtime();
    let users: Vec<(String, String)> = (2..=3).map(|i| pair.mail1.user(i)).collect();
    let mut clients = rt.block_on(async {
        let mut out = Vec::new();
        for (i, (u, p)) in users.iter().enumerate() {
            let mut c = login(proxy.plain, u, p).await;
            ok(&mut c, "SELECT INBOX").await;
            if i == 0 {
                start_idle(&mut c, "I1", u).await;
            }
            out.push(c);
        }
        out
    });
    freeze(&pair.mail2);
    let killed = Instant::now();
    pair.mail1.kill();
    rt.block_on(async {
        for (c, (u, _)) in clients.iter_mut().zip(&users) {
            expect_bye_and_close(c, u).await;
        }
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "BYE only after {took:?} (rehome_timeout 2 s)"
    );
    assert!(wait_until(Duration::from_secs(3), || proxy
        .sessions()
        .is_empty()));
    pair.mail2.kill();
}

// ----- a response cut short -----

/// The backend dies in the middle of a long response: what the client already has cannot be
/// completed from another server, and a `BYE` or `NO` written now would land inside a
/// literal. The connection is closed, and every byte the client got is the true response's.
#[test]
fn a_session_cut_in_the_middle_of_a_response_is_closed_without_a_word() {
    let mut pair = pair(3);
    let proxy = Proxy::start(&pair);
    let rt = runtime();
    // user1's sixth message is 1 MiB: 48 overlapping parts of it make a response far larger
    // than every socket buffer on the way, so mail1 still has some to write when it dies.
    let (user, pass) = pair.mail1.user(1);
    let parts: Vec<String> = (0..48)
        .map(|k| format!("BODY.PEEK[]<{k}.1048576>"))
        .collect();
    let command = format!("UID FETCH 6 ({})", parts.join(" "));
    let (expected, mut c) = rt.block_on(async {
        let mut d = login(pair.mail2.imap_addr(), &user, &pass).await;
        ok(&mut d, "SELECT INBOX").await;
        let expected: Vec<u8> = ok(&mut d, &command).await.concat();
        let mut c = login(proxy.plain, &user, &pass).await;
        ok(&mut c, "SELECT INBOX").await;
        // Sent, and not read for now.
        c.send_raw(format!("B1 {command}\r\n").as_bytes())
            .await
            .unwrap();
        (expected, c)
    });
    assert!(expected.len() > 40 << 20, "{}", expected.len());
    std::thread::sleep(Duration::from_millis(500));
    pair.mail1.kill();
    let (end, got) = rt.block_on(async {
        c.set_timeout(Duration::from_secs(10));
        let mut got = Vec::new();
        let end = loop {
            match c.read_line().await {
                Ok(line) => got.extend_from_slice(&line),
                Err(e) => break e,
            }
        };
        got.extend_from_slice(c.buffered());
        (end, got)
    });
    assert_eq!(
        end.kind(),
        std::io::ErrorKind::UnexpectedEof,
        "the connection was not closed: {end}"
    );
    assert!(
        got.len() < expected.len(),
        "the whole response arrived ({} bytes): the test needs a larger one",
        got.len()
    );
    let same = got
        .iter()
        .zip(&expected)
        .take_while(|(a, b)| a == b)
        .count();
    assert_eq!(
        same,
        got.len(),
        "the client's bytes differ from the response at {same} of {}: {:?}",
        got.len(),
        text(&got[same..got.len().min(same + 200)])
    );
    assert!(wait_until(Duration::from_secs(5), || proxy
        .sessions()
        .is_empty()));
}
