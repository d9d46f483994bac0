//! Comparing two normalised runs and showing where they differ.

use std::fmt;

use super::normalise::Normaliser;
use super::{Event, Run};

/// Context lines shown around each difference.
const CONTEXT: usize = 3;

/// Rendered events longer than this are shortened (with their length and a checksum, so two
/// long events that differ past the cut still look different).
const MAX_RENDERED: usize = 240;

/// Above this many LCS cells, the diff falls back to "from the first difference on".
const MAX_LCS_CELLS: usize = 4_000_000;

/// How two runs of one script differ: a diff per connection (`-` reference, `+` other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The script's name.
    pub script: String,
    /// What was compared with what (e.g. `direct 127.0.0.1:1143` vs `proxied …`).
    pub sides: (String, String),
    /// `(connection, diff)` for every connection that differs.
    pub connections: Vec<(usize, String)>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (conn, diff) in &self.connections {
            writeln!(
                f,
                "script {:?}, connection {conn}: --- {} / +++ {}",
                self.script, self.sides.0, self.sides.1
            )?;
            f.write_str(diff)?;
        }
        Ok(())
    }
}

impl std::error::Error for Mismatch {}

/// Compares the normalised transcripts of `reference` and `other`, connection by connection,
/// from after the login reply to before `LOGOUT` (logins and logouts are checked separately:
/// see [`super::Transcript::logged_in`] and [`super::Run::logout_problems`]).
pub fn compare(reference: &Run, other: &Run) -> Result<(), Mismatch> {
    let a = normalised(reference);
    let b = normalised(other);
    let empty = Vec::new();
    let connections: Vec<(usize, String)> = (0..a.len().max(b.len()))
        .filter_map(|i| {
            let x = a.get(i).unwrap_or(&empty);
            let y = b.get(i).unwrap_or(&empty);
            (x != y).then(|| (i, diff(x, y)))
        })
        .collect();
    if connections.is_empty() {
        Ok(())
    } else {
        Err(Mismatch {
            script: reference.script.clone(),
            sides: (reference.label.clone(), other.label.clone()),
            connections,
        })
    }
}

/// Every connection's events, normalised (one [`Normaliser`] for the whole run, connections
/// in order), each prefixed `C: ` (sent), `S: ` (received) or `!: ` (the run failed here).
pub fn normalised(run: &Run) -> Vec<Vec<Vec<u8>>> {
    let mut n = Normaliser::new();
    run.connections
        .iter()
        .map(|t| {
            t.events
                .iter()
                .filter_map(|e| match e {
                    Event::Sent(b) => Some([b"C: ".as_slice(), b].concat()),
                    Event::Received(r) => n.response(r).map(|r| [b"S: ".as_slice(), &r].concat()),
                    Event::Failed(why) => Some(format!("!: {why}").into_bytes()),
                })
                .collect()
        })
        .collect()
}

/// A line diff of `a` (`-`) and `b` (`+`) with a little context.
fn diff(a: &[Vec<u8>], b: &[Vec<u8>]) -> String {
    let ops = if a.len().saturating_mul(b.len()) <= MAX_LCS_CELLS {
        lcs_ops(a, b)
    } else {
        prefix_ops(a, b)
    };
    let changed: Vec<bool> = ops.iter().map(|op| !matches!(op, Op::Same(_))).collect();
    let mut out = String::new();
    let mut last_shown: Option<usize> = None;
    for (i, op) in ops.iter().enumerate() {
        let lo = i.saturating_sub(CONTEXT);
        let hi = (i + CONTEXT + 1).min(ops.len());
        let near_change = changed.get(lo..hi).is_some_and(|w| w.iter().any(|&c| c));
        if !near_change {
            continue;
        }
        if last_shown.is_some_and(|l| l + 1 != i) || (last_shown.is_none() && i > 0) {
            out.push_str("  …\n");
        }
        last_shown = Some(i);
        let (mark, line) = match op {
            Op::Same(k) => (' ', a.get(*k)),
            Op::Del(k) => ('-', a.get(*k)),
            Op::Add(k) => ('+', b.get(*k)),
        };
        out.push(mark);
        out.push(' ');
        out.push_str(&render(line.map(Vec::as_slice).unwrap_or_default()));
        out.push('\n');
    }
    if last_shown.is_some_and(|l| l + 1 < ops.len()) {
        out.push_str("  …\n");
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Index into `a` (equal to some element of `b`).
    Same(usize),
    Del(usize),
    Add(usize),
}

/// Edit script from a longest common subsequence table.
fn lcs_ops(a: &[Vec<u8>], b: &[Vec<u8>]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    // len[i][j]: LCS length of a[i..] and b[j..], row-major.
    let mut len = vec![0usize; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            let v = if a.get(i) == b.get(j) {
                len.get(at(i + 1, j + 1)).copied().unwrap_or(0) + 1
            } else {
                let down = len.get(at(i + 1, j)).copied().unwrap_or(0);
                let right = len.get(at(i, j + 1)).copied().unwrap_or(0);
                down.max(right)
            };
            if let Some(cell) = len.get_mut(at(i, j)) {
                *cell = v;
            }
        }
    }
    let mut ops = Vec::with_capacity(n + m);
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a.get(i) == b.get(j) {
            ops.push(Op::Same(i));
            i += 1;
            j += 1;
        } else if j < m
            && (i == n
                || len.get(at(i, j + 1)).copied().unwrap_or(0)
                    >= len.get(at(i + 1, j)).copied().unwrap_or(0))
        {
            ops.push(Op::Add(j));
            j += 1;
        } else {
            ops.push(Op::Del(i));
            i += 1;
        }
    }
    ops
}

/// Common prefix, then everything else as removed and added.
fn prefix_ops(a: &[Vec<u8>], b: &[Vec<u8>]) -> Vec<Op> {
    let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (0..same)
        .map(Op::Same)
        .chain((same..a.len()).map(Op::Del))
        .chain((same..b.len()).map(Op::Add))
        .collect()
}

/// One event as a readable line: CR and LF shown as `\r` `\n`, other control bytes as `\xNN`,
/// long events shortened with their length and checksum.
fn render(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(MAX_RENDERED) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > MAX_RENDERED {
        out.push_str(&format!(
            "… [{} bytes, fnv {:016x}]",
            bytes.len(),
            fnv1a(bytes)
        ));
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::super::Transcript;
    use super::*;

    fn run(label: &str, events: &[(&str, &str)]) -> Run {
        Run {
            script: "s".into(),
            label: label.into(),
            connections: vec![Transcript {
                events: events
                    .iter()
                    .map(|(kind, text)| match *kind {
                        "C" => Event::Sent(text.as_bytes().to_vec()),
                        _ => Event::Received(text.as_bytes().to_vec()),
                    })
                    .collect(),
                ..Transcript::default()
            }],
        }
    }

    #[test]
    fn legitimate_differences_compare_equal() {
        let direct = run(
            "direct",
            &[
                ("C", "a SELECT INBOX\r\n"),
                ("S", "* OK [UIDVALIDITY 1700000001] UIDs valid\r\n"),
                (
                    "S",
                    "a OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n",
                ),
                ("C", "b ID NIL\r\n"),
                ("S", "* ID (\"name\" \"Dovecot\")\r\n"),
                ("S", "b OK ID completed (0.001 + 0.000 secs).\r\n"),
            ],
        );
        let proxied = run(
            "proxied",
            &[
                ("C", "a SELECT INBOX\r\n"),
                ("S", "* OK [UIDVALIDITY 1700000777] UIDs valid\r\n"),
                (
                    "S",
                    "a OK [READ-WRITE] Select completed (0.003 + 0.001 secs).\r\n",
                ),
                ("C", "b ID NIL\r\n"),
                ("S", "* ID (\"name\" \"imapproxy\")\r\n"),
                ("S", "* OK [XPROXYREUSE] Reusing a cached session.\r\n"),
                ("S", "b OK ID completed (0.000 + 0.000 secs).\r\n"),
            ],
        );
        assert_eq!(compare(&direct, &proxied), Ok(()));
    }

    #[test]
    fn a_modseq_that_appears_only_through_the_proxy_fails_the_comparison() {
        let direct = run(
            "direct",
            &[
                ("C", "f FETCH 1 (FLAGS)\r\n"),
                ("S", "* 1 FETCH (FLAGS (\\Seen))\r\n"),
                ("S", "f OK Fetch completed (0.001 + 0.000 secs).\r\n"),
            ],
        );
        let proxied = run(
            "proxied",
            &[
                ("C", "f FETCH 1 (FLAGS)\r\n"),
                ("S", "* 1 FETCH (FLAGS (\\Seen) MODSEQ (12))\r\n"),
                ("S", "f OK Fetch completed (0.001 + 0.000 secs).\r\n"),
            ],
        );
        let err = compare(&direct, &proxied).unwrap_err();
        assert_eq!(err.connections.len(), 1);
        let text = err.to_string();
        assert!(
            text.contains("- S: * 1 FETCH (FLAGS (\\\\Seen))\\r\\n"),
            "{text}"
        );
        assert!(
            text.contains("+ S: * 1 FETCH (FLAGS (\\\\Seen) MODSEQ (12))"),
            "{text}"
        );
        assert!(text.contains("  C: f FETCH 1 (FLAGS)"), "{text}");
    }

    #[test]
    fn a_missing_notification_and_a_failure_are_differences() {
        let direct = run(
            "direct",
            &[
                ("C", "n NOOP\r\n"),
                ("S", "* 6 EXISTS\r\n"),
                ("S", "n OK NOOP completed (0.001 + 0.000 secs).\r\n"),
            ],
        );
        let proxied = run(
            "proxied",
            &[
                ("C", "n NOOP\r\n"),
                ("S", "n OK NOOP completed (0.001 + 0.000 secs).\r\n"),
            ],
        );
        let text = compare(&direct, &proxied).unwrap_err().to_string();
        assert!(text.contains("- S: * 6 EXISTS"), "{text}");
        let mut failed = direct.clone();
        if let Some(t) = failed.connections.first_mut() {
            t.events.push(Event::Failed("timeout".into()));
        }
        assert!(compare(&direct, &failed).is_err());
    }

    #[test]
    fn long_events_are_shortened_but_still_distinguishable() {
        let a = vec![b'x'; 1000];
        let mut b = a.clone();
        b[999] = b'y';
        assert_ne!(render(&a), render(&b));
        assert!(render(&a).len() < 400);
    }

    #[test]
    fn diff_of_long_transcripts_falls_back_to_a_prefix() {
        let a: Vec<Vec<u8>> = (0..10).map(|i| vec![i]).collect();
        let mut b = a.clone();
        b[5] = vec![99];
        assert_eq!(
            prefix_ops(&a, &b)
                .iter()
                .filter(|o| matches!(o, Op::Same(_)))
                .count(),
            5
        );
        let d = diff(&a, &b);
        assert!(d.contains("- \\x05") && d.contains("+ c"), "{d}");
    }
}
