//! Differential conformance: one scripted IMAP session, run directly against Dovecot and
//! through the proxy, compared response for response after normalising only what may
//! legitimately differ.
//!
//! A [`Script`] is an ordered list of steps, each on one of several connections of the same
//! user: raw writes (a command split over several writes, many commands pipelined in one
//! write, `{n}` literals sent after the server's `+`, `{n+}` literals sent at once), waits
//! (for tagged replies, a `+` continuation, a line containing some text), pauses, and
//! captures of numbers the server chose (UIDVALIDITY) for later commands. Steps run strictly
//! in order across connections, so one connection's `APPEND` is complete before another
//! connection's `NOOP` or `IDLE` is expected to report it.
//!
//! [`run`] logs every connection in (the runner, not the script, sends `LOGIN`: the proxy
//! answers it itself), plays the script, and logs every connection out, recording a
//! [`Transcript`] per connection: what was sent and every response, one event per framed
//! response (literals inlined). [`compare`] normalises two runs (see [`Normaliser`]) and
//! returns a readable diff for every connection whose transcripts differ.
//!
//! ```no_run
//! # async fn demo() {
//! use imapproxy_testkit::Dovecot;
//! use imapproxy_testkit::conformance::{Script, compare, run};
//!
//! let script = Script::new("select", 1)
//!     .cmd(0, "a1", "SELECT INBOX")
//!     .cmd(0, "a2", "UID FETCH 1:* (FLAGS)");
//! let d = Dovecot::shared();
//! let (u1, p1) = d.user(1);
//! let (u2, p2) = d.user(2);
//! let direct = run(&script, d.imap_addr(), &u1, &p1).await;
//! let other = run(&script, d.imap_addr(), &u2, &p2).await;
//! // Different users with different seeds differ: this comparison reports it.
//! let _ = compare(&direct, &other);
//! # }
//! ```

mod diff;
mod normalise;
mod runner;
mod transcript;

use std::time::Duration;

use crate::framing;

pub use diff::{Mismatch, compare, normalised};
pub use normalise::{Normaliser, dropped_capability};
pub use runner::run;
pub use transcript::{Event, Run, Transcript};

/// Tag of the runner's own `LOGIN`.
pub const LOGIN_TAG: &str = "L0";

/// Tag of the runner's own `LOGOUT`.
pub const LOGOUT_TAG: &str = "Z0";

/// What one step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes in one write. `${name}` is replaced by a captured value first (the
    /// transcript records the bytes before substitution).
    Send(Vec<u8>),
    /// Read responses until each of these tags has had its tagged reply (in any order:
    /// RFC 9051 §5.5 lets a server answer pipelined commands out of order).
    Tagged(Vec<String>),
    /// Read responses until a `+` continuation, or until the tagged reply of this tag (a
    /// refused synchronizing literal).
    Continuation(String),
    /// Read responses until one contains these bytes.
    Until(Vec<u8>),
    /// Read whatever complete responses arrive within this time.
    Drain(Duration),
    /// Pause (the connection is not read meanwhile).
    Sleep(Duration),
    /// Remember the digits after the last occurrence of `after` in this connection's
    /// responses so far as `${var}`.
    Capture {
        /// Name used as `${var}` in later sends.
        var: String,
        /// Text that precedes the number, e.g. `[UIDVALIDITY `.
        after: Vec<u8>,
    },
}

/// One step of a [`Script`]: an action on connection `conn` (from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Which connection.
    pub conn: usize,
    /// What to do on it.
    pub action: Action,
}

/// A scripted session over one or more connections of the same user. Built by chaining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    name: String,
    connections: usize,
    steps: Vec<Step>,
    /// Per connection: bytes written in the same write as the runner's `LOGIN`.
    after_login: Vec<Vec<u8>>,
}

impl Script {
    /// An empty script called `name` over `connections` connections (at least one).
    pub fn new(name: &str, connections: usize) -> Self {
        Self {
            name: name.to_owned(),
            connections: connections.max(1),
            steps: Vec::new(),
            after_login: vec![Vec::new(); connections.max(1)],
        }
    }

    /// The script's name (used in reports).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many connections it uses.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// The steps in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Appends a step.
    ///
    /// # Panics
    ///
    /// When `conn` is not one of the script's connections (a bug in the script).
    pub fn step(mut self, conn: usize, action: Action) -> Self {
        assert!(
            conn < self.connections,
            "script {:?} has {} connections, not {}",
            self.name,
            self.connections,
            conn + 1
        );
        self.steps.push(Step { conn, action });
        self
    }

    /// Pipelines `bytes` behind the runner's `LOGIN` on `conn` (same write). They are the
    /// connection's first [`Event::Sent`]; wait for their replies with the first steps.
    ///
    /// # Panics
    ///
    /// When `conn` is not one of the script's connections (a bug in the script).
    pub fn after_login(mut self, conn: usize, bytes: impl AsRef<[u8]>) -> Self {
        let name = self.name.clone();
        let Some(slot) = self.after_login.get_mut(conn) else {
            panic!("script {name:?} has no connection {conn}");
        };
        slot.extend_from_slice(bytes.as_ref());
        self
    }

    /// Writes `bytes` as they are (one write).
    pub fn send(self, conn: usize, bytes: impl AsRef<[u8]>) -> Self {
        self.step(conn, Action::Send(bytes.as_ref().to_vec()))
    }

    /// Waits for the tagged reply of `tag`.
    pub fn tagged(self, conn: usize, tag: &str) -> Self {
        self.step(conn, Action::Tagged(vec![tag.to_owned()]))
    }

    /// Waits for the tagged replies of all `tags`, in any order.
    pub fn tags(self, conn: usize, tags: &[&str]) -> Self {
        let tags = tags.iter().map(|t| (*t).to_owned()).collect();
        self.step(conn, Action::Tagged(tags))
    }

    /// Waits for a `+` continuation (or the tagged reply of `tag`, if it refuses).
    pub fn continuation(self, conn: usize, tag: &str) -> Self {
        self.step(conn, Action::Continuation(tag.to_owned()))
    }

    /// Waits for a response containing `needle`.
    pub fn until(self, conn: usize, needle: &str) -> Self {
        self.step(conn, Action::Until(needle.as_bytes().to_vec()))
    }

    /// Records whatever arrives on `conn` within `within`.
    pub fn drain(self, conn: usize, within: Duration) -> Self {
        self.step(conn, Action::Drain(within))
    }

    /// Pauses the script.
    pub fn sleep(self, pause: Duration) -> Self {
        self.step(0, Action::Sleep(pause))
    }

    /// Captures the number after the last `after` seen on `conn` as `${var}`.
    pub fn capture(self, conn: usize, var: &str, after: &str) -> Self {
        self.step(
            conn,
            Action::Capture {
                var: var.to_owned(),
                after: after.as_bytes().to_vec(),
            },
        )
    }

    /// Sends `tag command CRLF` and waits for its tagged reply.
    pub fn cmd(self, conn: usize, tag: &str, command: &str) -> Self {
        self.send(conn, format!("{tag} {command}\r\n"))
            .tagged(conn, tag)
    }

    /// A command with synchronizing literals: `parts[0]`, then for each literal its `{n}`,
    /// a wait for `+`, the literal, and the next text part; the last text part ends the
    /// command (CRLF added), then waits for the tagged reply. `parts` alternate text and
    /// literal, starting and ending with text (`tag ` is prepended to the first).
    pub fn sync_literals(mut self, conn: usize, tag: &str, parts: &[&[u8]]) -> Self {
        let mut pending = format!("{tag} ").into_bytes();
        for (i, part) in parts.iter().enumerate() {
            if i % 2 == 0 {
                pending.extend_from_slice(part);
            } else {
                pending.extend_from_slice(format!("{{{}}}\r\n", part.len()).as_bytes());
                self = self
                    .send(conn, std::mem::take(&mut pending))
                    .continuation(conn, tag);
                pending.extend_from_slice(part);
            }
        }
        pending.extend_from_slice(b"\r\n");
        self.send(conn, pending).tagged(conn, tag)
    }

    /// Like [`Script::sync_literals`] with non-synchronizing `{n+}` literals (RFC 7888): the
    /// whole command in one write, no waits.
    pub fn plus_literals(self, conn: usize, tag: &str, parts: &[&[u8]]) -> Self {
        self.send(conn, plus_literal_command(tag, parts))
            .tagged(conn, tag)
    }

    /// `tag IDLE`, then waits for the `+`.
    pub fn idle(self, conn: usize, tag: &str) -> Self {
        self.send(conn, format!("{tag} IDLE\r\n"))
            .continuation(conn, tag)
    }

    /// `DONE`, then waits for the tagged reply of the `IDLE` tagged `tag`.
    pub fn done(self, conn: usize, tag: &str) -> Self {
        self.send(conn, "DONE\r\n").tagged(conn, tag)
    }
}

/// The bytes of a command with `{n+}` literals (see [`Script::plus_literals`]), CRLF included.
pub fn plus_literal_command(tag: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("{tag} ").into_bytes();
    for (i, part) in parts.iter().enumerate() {
        if i % 2 == 1 {
            out.extend_from_slice(format!("{{{}+}}\r\n", part.len()).as_bytes());
        }
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether `line` is the tagged reply for `tag` (`tag SP ...`).
fn is_tagged(line: &[u8], tag: &str) -> bool {
    line.strip_prefix(tag.as_bytes())
        .is_some_and(|rest| rest.starts_with(b" "))
}

/// Whether `line` is `tag status ...`.
fn is_tagged_status(line: &[u8], tag: &str, status: &[u8]) -> bool {
    line.strip_prefix(tag.as_bytes())
        .and_then(|rest| rest.strip_prefix(b" "))
        .is_some_and(|rest| {
            starts_with_ci(rest, status)
                && matches!(rest.get(status.len()), Some(b' ' | b'\r' | b'\n') | None)
        })
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// Where `needle` first occurs in `haystack`, ignoring ASCII case.
fn find_ci(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len().max(1))
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether `needle` occurs in `haystack`, ignoring ASCII case.
fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len().max(1))
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether `s` starts with `prefix`, ignoring ASCII case.
fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// Lines as one readable string (for error messages).
fn render_lines(lines: &[Vec<u8>]) -> String {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(framing::trim_crlf(l)).into_owned())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_literals_wait_for_each_continuation() {
        let s = Script::new("x", 1).sync_literals(
            0,
            "a",
            &[b"APPEND INBOX ", b"hello", b" ", b"hi", b""],
        );
        let actions: Vec<&Action> = s.steps().iter().map(|s| &s.action).collect();
        assert_eq!(
            actions,
            vec![
                &Action::Send(b"a APPEND INBOX {5}\r\n".to_vec()),
                &Action::Continuation("a".into()),
                &Action::Send(b"hello {2}\r\n".to_vec()),
                &Action::Continuation("a".into()),
                &Action::Send(b"hi\r\n".to_vec()),
                &Action::Tagged(vec!["a".into()]),
            ]
        );
    }

    #[test]
    fn plus_literals_go_in_one_write() {
        assert_eq!(
            plus_literal_command("t", &[b"APPEND INBOX ", b"abc", b""]),
            b"t APPEND INBOX {3+}\r\nabc\r\n".to_vec()
        );
    }

    #[test]
    fn tag_matching_needs_the_whole_tag() {
        assert!(is_tagged(b"L0 OK\r\n", "L0"));
        assert!(!is_tagged(b"L00 OK\r\n", "L0"));
        assert!(is_tagged_status(b"L0 ok done\r\n", "L0", b"OK"));
        assert!(!is_tagged_status(b"L0 OKAY\r\n", "L0", b"OK"));
    }

    #[test]
    #[should_panic(expected = "has 1 connections")]
    fn a_step_on_a_missing_connection_is_a_script_bug() {
        let _ = Script::new("x", 1).cmd(1, "a", "NOOP");
    }
}
