//! What may legitimately differ between a session run directly against Dovecot and the same
//! session run through the proxy as a different, identically seeded user — and nothing else.
//!
//! - Dovecot's timing text at the end of tagged replies: `(0.001 + 0.000 secs).`
//! - UIDVALIDITY values (`[UIDVALIDITY n]`, `UIDVALIDITY n` in `STATUS`/`LIST-STATUS`) and
//!   the first number of `[APPENDUID n …]` / `[COPYUID n …]`: different users have different
//!   mailboxes. Each distinct value becomes a placeholder numbered in order of first
//!   appearance, so the *pattern* (which mailbox has which value, and when it changes) is
//!   still compared.
//! - Capabilities the proxy hides after login (`AUTH=*`, `STARTTLS`, `LOGINDISABLED`,
//!   `SASL-IR`, `LOGIN-REFERRALS`, `COMPRESS=*`, `UNAUTHENTICATE`) are removed from
//!   `* CAPABILITY` and `[CAPABILITY …]` on both sides; every other capability must match.
//! - The `* ID` reply (the proxy answers with its own).
//! - `* OK [XPROXYREUSE] …` (the proxy's announcement of a reused session) is dropped.
//! - `* OK Still here` (Dovecot's IDLE keep-alive) is dropped: its first one comes at a moment
//!   fixed by a hash of user and address, so one run may see it and the other not.
//!
//! Literal contents are never touched: only the text around them is.

use std::collections::BTreeMap;

use super::{find_ci, starts_with_ci};
use crate::framing;

/// Maps the values that may differ to placeholders, consistently across all the responses of
/// one run (feed every connection's responses to one `Normaliser`, in the same order for both
/// runs being compared).
#[derive(Debug, Default, Clone)]
pub struct Normaliser {
    uidvalidity: BTreeMap<Vec<u8>, usize>,
}

/// Keywords after which a UIDVALIDITY value follows (`APPENDUID`/`COPYUID`: RFC 4315 §3,
/// the destination mailbox's UIDVALIDITY comes first).
const UIDVALIDITY_KEYS: [&[u8]; 3] = [b"UIDVALIDITY ", b"APPENDUID ", b"COPYUID "];

impl Normaliser {
    /// A normaliser with no values seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The normalised form of one complete response (literals inlined, CRLF included), or
    /// `None` when the response is dropped altogether (`* OK [XPROXYREUSE]`, `* OK Still here`).
    pub fn response(&mut self, response: &[u8]) -> Option<Vec<u8>> {
        if starts_with_ci(response, b"* OK [XPROXYREUSE]")
            || response.eq_ignore_ascii_case(b"* OK Still here\r\n")
        {
            return None;
        }
        if starts_with_ci(response, b"* ID ") {
            return Some(b"* ID <replaced by the proxy>\r\n".to_vec());
        }
        let mut out = Vec::with_capacity(response.len());
        for segment in segments(response) {
            match segment {
                Segment::Text(text) => out.extend_from_slice(&self.text(text)),
                Segment::Literal(bytes) => out.extend_from_slice(bytes),
            }
        }
        Some(out)
    }

    /// Normalises one stretch of response text (no literal bytes in it).
    fn text(&mut self, text: &[u8]) -> Vec<u8> {
        let text = if starts_with_ci(text, b"* CAPABILITY ") {
            filter_capability_list(text, b"* CAPABILITY ".len(), None)
        } else {
            text.to_vec()
        };
        let text = match find_ci(&text, b"[CAPABILITY ") {
            Some(i) => match text
                .get(i..)
                .and_then(|t| t.iter().position(|&b| b == b']'))
            {
                Some(close) => {
                    filter_capability_list(&text, i + b"[CAPABILITY ".len(), Some(i + close))
                }
                None => text,
            },
            None => text,
        };
        let text = self.uidvalidities(&text);
        strip_timing(&text)
    }

    /// Replaces the number after each UIDVALIDITY keyword with `<uidvalidity-N>`.
    fn uidvalidities(&mut self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            let at_boundary = i == 0 || matches!(text.get(i - 1), Some(b' ' | b'(' | b'['));
            let key = at_boundary
                .then(|| {
                    UIDVALIDITY_KEYS
                        .iter()
                        .find(|k| text.get(i..).is_some_and(|t| starts_with_ci(t, k)))
                })
                .flatten();
            if let Some(key) = key {
                let start = i + key.len();
                let digits = text
                    .get(start..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits > 0 {
                    let value = text.get(start..start + digits).unwrap_or_default().to_vec();
                    let next = self.uidvalidity.len() + 1;
                    let n = *self.uidvalidity.entry(value).or_insert(next);
                    out.extend_from_slice(text.get(i..start).unwrap_or_default());
                    out.extend_from_slice(format!("<uidvalidity-{n}>").as_bytes());
                    i = start + digits;
                    continue;
                }
            }
            if let Some(&b) = text.get(i) {
                out.push(b);
            }
            i += 1;
        }
        out
    }
}

/// Whether the proxy is allowed to hide `cap` after login (compared case-insensitively).
pub fn dropped_capability(cap: &[u8]) -> bool {
    const EXACT: [&[u8]; 5] = [
        b"STARTTLS",
        b"LOGINDISABLED",
        b"SASL-IR",
        b"LOGIN-REFERRALS",
        b"UNAUTHENTICATE",
    ];
    EXACT.iter().any(|e| e.eq_ignore_ascii_case(cap))
        || starts_with_ci(cap, b"AUTH=")
        || starts_with_ci(cap, b"COMPRESS=")
}

/// `text` with the space-separated atoms from `start` to `end` (or to the line end) filtered.
fn filter_capability_list(text: &[u8], start: usize, end: Option<usize>) -> Vec<u8> {
    let end = end.unwrap_or_else(|| text.len() - trailing_crlf_len(text));
    let (Some(head), Some(list), Some(tail)) =
        (text.get(..start), text.get(start..end), text.get(end..))
    else {
        return text.to_vec();
    };
    let kept: Vec<&[u8]> = list
        .split(|&b| b == b' ')
        .filter(|a| !a.is_empty() && !dropped_capability(a))
        .collect();
    let mut out = head.to_vec();
    out.extend_from_slice(&kept.join(&b' '));
    out.extend_from_slice(tail);
    out
}

/// Replaces Dovecot's timing text at the end of a status line, `(0.001 + 0.000 secs).` or
/// `(0.001 + 0.000 + 1.002 secs).`, by `(<time> secs).`.
fn strip_timing(text: &[u8]) -> Vec<u8> {
    let crlf = trailing_crlf_len(text);
    let body = text.get(..text.len() - crlf).unwrap_or_default();
    let Some(inner) = body.strip_suffix(b" secs).") else {
        return text.to_vec();
    };
    let Some(open) = inner.iter().rposition(|&b| b == b'(') else {
        return text.to_vec();
    };
    let numbers = inner.get(open + 1..).unwrap_or_default();
    let all_times = !numbers.is_empty()
        && numbers
            .split(|&b| b == b' ')
            .enumerate()
            .all(|(i, w)| if i % 2 == 1 { w == b"+" } else { is_decimal(w) })
        && numbers.split(|&b| b == b' ').count() % 2 == 1;
    if !all_times {
        return text.to_vec();
    }
    let mut out = body.get(..open).unwrap_or_default().to_vec();
    out.extend_from_slice(b"(<time> secs).");
    out.extend_from_slice(text.get(text.len() - crlf..).unwrap_or_default());
    out
}

/// `digits.digits`.
fn is_decimal(w: &[u8]) -> bool {
    let mut parts = w.split(|&b| b == b'.');
    let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !a.is_empty() && !b.is_empty() && a.iter().chain(b).all(u8::is_ascii_digit)
}

fn trailing_crlf_len(text: &[u8]) -> usize {
    text.len() - framing::trim_crlf(text).len()
}

/// A piece of one response: text, or the bytes of a literal announced by the text before it.
#[derive(Debug, PartialEq, Eq)]
enum Segment<'a> {
    Text(&'a [u8]),
    Literal(&'a [u8]),
}

/// Splits a complete response into text and literal pieces, framing it as the test client
/// does (a trailing `{n}` after status text is text, not a literal).
fn segments(response: &[u8]) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut rest = response;
    let mut first = true;
    loop {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if !rest.is_empty() {
                out.push(Segment::Text(rest));
            }
            return out;
        };
        let (line, after) = rest.split_at(nl + 1);
        out.push(Segment::Text(line));
        let text_line = first && framing::is_text_line(framing::trim_crlf(line));
        first = false;
        match framing::trailing_literal(line).filter(|_| !text_line) {
            Some(n) if n <= after.len() => {
                let (literal, next) = after.split_at(n);
                out.push(Segment::Literal(literal));
                rest = next;
            }
            _ => {
                if !after.is_empty() {
                    out.push(Segment::Text(after));
                }
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(n: &mut Normaliser, s: &str) -> String {
        String::from_utf8(n.response(s.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn timing_text_is_normalised_only_in_its_exact_form() {
        let mut n = Normaliser::new();
        assert_eq!(
            norm(&mut n, "a1 OK Fetch completed (0.001 + 0.000 secs).\r\n"),
            "a1 OK Fetch completed (<time> secs).\r\n"
        );
        assert_eq!(
            norm(
                &mut n,
                "i OK Idle completed (0.002 + 0.000 + 1.501 secs).\r\n"
            ),
            "i OK Idle completed (<time> secs).\r\n"
        );
        for kept in [
            "a1 OK Fetch completed (0.001 + secs).\r\n",
            "a1 OK Fetch completed (1 + 2 secs).\r\n",
            "a1 OK Fetch completed (0.001 0.002 secs).\r\n",
            "a1 OK Fetch completed (0.001 + 0.000 secs)\r\n",
        ] {
            assert_eq!(norm(&mut n, kept), kept);
        }
    }

    #[test]
    fn uidvalidity_values_map_to_placeholders_in_order_of_appearance() {
        let mut n = Normaliser::new();
        assert_eq!(
            norm(&mut n, "* OK [UIDVALIDITY 1700000555] UIDs valid\r\n"),
            "* OK [UIDVALIDITY <uidvalidity-1>] UIDs valid\r\n"
        );
        assert_eq!(
            norm(
                &mut n,
                "* STATUS Sent (MESSAGES 2 UIDVALIDITY 1700000999 UIDNEXT 3)\r\n"
            ),
            "* STATUS Sent (MESSAGES 2 UIDVALIDITY <uidvalidity-2> UIDNEXT 3)\r\n"
        );
        assert_eq!(
            norm(
                &mut n,
                "a OK [APPENDUID 1700000999 3] Append completed.\r\n"
            ),
            "a OK [APPENDUID <uidvalidity-2> 3] Append completed.\r\n"
        );
        assert_eq!(
            norm(&mut n, "* OK [COPYUID 1700000555 1:2 7:8] Moved.\r\n"),
            "* OK [COPYUID <uidvalidity-1> 1:2 7:8] Moved.\r\n"
        );
        // Not a keyword at a word boundary: left alone.
        assert_eq!(
            norm(&mut n, "* OK XUIDVALIDITY 5\r\n"),
            "* OK XUIDVALIDITY 5\r\n"
        );
    }

    #[test]
    fn the_pattern_of_uidvalidities_is_still_compared() {
        // Same mailbox, different values on one side but one value on the other: differs.
        let run = |a: &str, b: &str| {
            let mut n = Normaliser::new();
            (
                norm(&mut n, &format!("* OK [UIDVALIDITY {a}] x\r\n")),
                norm(&mut n, &format!("* OK [UIDVALIDITY {b}] x\r\n")),
            )
        };
        assert_eq!(run("10", "10"), run("77", "77"));
        assert_ne!(run("10", "10"), run("77", "78"));
    }

    #[test]
    fn capabilities_the_proxy_hides_are_removed_from_both_kinds_of_list() {
        let mut n = Normaliser::new();
        assert_eq!(
            norm(
                &mut n,
                "* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID AUTH=PLAIN STARTTLS IDLE COMPRESS=DEFLATE UNAUTHENTICATE\r\n"
            ),
            "* CAPABILITY IMAP4rev1 ID IDLE\r\n"
        );
        assert_eq!(
            norm(
                &mut n,
                "a OK [CAPABILITY IMAP4rev1 LOGINDISABLED MOVE] done (0.001 + 0.000 secs).\r\n"
            ),
            "a OK [CAPABILITY IMAP4rev1 MOVE] done (<time> secs).\r\n"
        );
        // Anything else missing is a difference.
        assert_ne!(
            norm(&mut n, "* CAPABILITY IMAP4rev1 IDLE MOVE\r\n"),
            norm(&mut n, "* CAPABILITY IMAP4rev1 IDLE\r\n")
        );
    }

    #[test]
    fn id_reply_and_reuse_announcement() {
        let mut n = Normaliser::new();
        assert_eq!(
            norm(&mut n, "* ID (\"name\" \"Dovecot\")\r\n"),
            norm(
                &mut n,
                "* ID (\"name\" \"imapproxy\" \"version\" \"0.1\")\r\n"
            )
        );
        assert_eq!(
            n.response(b"* OK [XPROXYREUSE] Reusing a cached session.\r\n"),
            None
        );
    }

    #[test]
    fn idle_keepalive_is_dropped_and_other_ok_text_is_kept() {
        let mut n = Normaliser::new();
        assert_eq!(n.response(b"* OK Still here\r\n"), None);
        assert_eq!(
            n.response(b"* OK Still here, and more\r\n").as_deref(),
            Some(&b"* OK Still here, and more\r\n"[..])
        );
    }

    #[test]
    fn a_modseq_only_one_side_has_is_a_difference() {
        let mut n = Normaliser::new();
        let direct = norm(&mut n, "* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n");
        let proxied = norm(&mut n, "* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (5))\r\n");
        assert_ne!(direct, proxied);
        let mut n = Normaliser::new();
        assert_ne!(
            norm(&mut n, "* OK [HIGHESTMODSEQ 7] Highest\r\n"),
            norm(&mut n, "* OK [HIGHESTMODSEQ 8] Highest\r\n")
        );
    }

    #[test]
    fn literal_contents_are_never_normalised() {
        let mut n = Normaliser::new();
        let body = "Subject: UIDVALIDITY 42 (0.001 + 0.000 secs).\r\n";
        let resp = format!(
            "* 1 FETCH (BODY[] {{{}}}\r\n{body} UIDVALIDITY 9)\r\n",
            body.len()
        );
        assert_eq!(
            norm(&mut n, &resp),
            format!(
                "* 1 FETCH (BODY[] {{{}}}\r\n{body} UIDVALIDITY <uidvalidity-1>)\r\n",
                body.len()
            )
        );
    }

    #[test]
    fn segments_follow_the_test_clients_framing() {
        assert_eq!(
            segments(b"* 1 FETCH (BODY[] {2}\r\nab)\r\n"),
            vec![
                Segment::Text(b"* 1 FETCH (BODY[] {2}\r\n"),
                Segment::Literal(b"ab"),
                Segment::Text(b")\r\n"),
            ]
        );
        assert_eq!(
            segments(b"* OK text {2}\r\n"),
            vec![Segment::Text(b"* OK text {2}\r\n")]
        );
    }
}
