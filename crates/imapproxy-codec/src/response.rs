//! Reading the few things a proxy learns from server responses about the state of the
//! connection: response codes (`[READ-WRITE]`, `[CLOSED]`, `[UIDVALIDITY n]`,
//! `[HIGHESTMODSEQ n]`...), `* ENABLED`, `* n EXISTS`, and whether data carries mod-sequences.
//!
//! Each function takes one response as the [`Framer`](crate::Framer) delimited it (its
//! first line is enough for all but [`reveals_modseq`], which reads every line and skips
//! what literals hold); none allocates.
//!
//! ```
//! use imapproxy_codec::response::{code, enabled};
//! let c = code(b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n").unwrap();
//! assert_eq!((c.name, c.number()), (&b"UIDVALIDITY"[..], Some(3857529045)));
//! assert_eq!(enabled(b"* ENABLED CONDSTORE QRESYNC\r\n").unwrap().collect::<Vec<_>>(),
//!            [&b"CONDSTORE"[..], b"QRESYNC"]);
//! ```

use memchr::memchr;

/// A response code (RFC 9051 §7.1): `[NAME args]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code<'a> {
    /// The code's name as sent (compare case-insensitively).
    pub name: &'a [u8],
    /// Whatever follows the name inside the brackets, without the separating space.
    pub args: &'a [u8],
}

impl Code<'_> {
    /// Whether the code is `name` (case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The argument as a number (`[UIDNEXT 4392]`).
    pub fn number(&self) -> Option<u64> {
        parse_number(self.args)
    }
}

fn parse_number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    core::str::from_utf8(digits).ok()?.parse().ok()
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The response code of a status response (`* OK [..]`, `tag NO [..]`, ...), if it has one.
pub fn code(line: &[u8]) -> Option<Code<'_>> {
    let line = trim_line(line);
    // tag-or-star SP status SP "[" ...
    let first = memchr(b' ', line)?;
    let rest = line.get(first + 1..)?;
    let second = memchr(b' ', rest)?;
    let rest = rest.get(second + 1..)?;
    let inner = rest.strip_prefix(b"[")?;
    let close = memchr(b']', inner)?;
    let inner = inner.get(..close)?;
    Some(match memchr(b' ', inner) {
        Some(sp) => Code {
            name: inner.get(..sp)?,
            args: inner.get(sp + 1..)?,
        },
        None => Code {
            name: inner,
            args: &[],
        },
    })
}

/// The capability names listed by `* ENABLED ...` (RFC 5161 §3.2), or `None` for any other
/// response.
pub fn enabled(line: &[u8]) -> Option<impl Iterator<Item = &[u8]>> {
    let line = trim_line(line);
    let rest = line.strip_prefix(b"* ")?;
    let word_end = memchr(b' ', rest).unwrap_or(rest.len());
    if !rest.get(..word_end)?.eq_ignore_ascii_case(b"ENABLED") {
        return None;
    }
    let names = rest.get(word_end..).unwrap_or(&[]);
    Some(names.split(|&b| b == b' ').filter(|w| !w.is_empty()))
}

/// `n` and the keyword of an untagged `* n KEYWORD ...` response (`EXISTS`, `EXPUNGE`,
/// `FETCH`, `RECENT`).
pub fn numbered(line: &[u8]) -> Option<(u64, &[u8])> {
    let line = trim_line(line);
    let rest = line.strip_prefix(b"* ")?;
    let sp = memchr(b' ', rest)?;
    let n = parse_number(rest.get(..sp)?)?;
    let rest = rest.get(sp + 1..)?;
    let end = memchr(b' ', rest).unwrap_or(rest.len());
    Some((n, rest.get(..end)?))
}

/// The size a line announces for the literal that follows it (`{n}`, `{n+}`, `~{n}`), if it
/// ends with one. `line` may still carry its CRLF.
fn announced_literal(line: &[u8]) -> Option<usize> {
    let inner = trim_line(line).strip_suffix(b"}")?;
    let open = memchr::memrchr(b'{', inner)?;
    let digits = inner.get(open + 1..)?;
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    usize::try_from(parse_number(digits)?).ok()
}

/// The protocol text of a whole response: its lines, each with its line ending, without the
/// bytes of the literals between them (a message body in a `FETCH`, say), which are data
/// and may hold any word. A literal cut short ends the text.
///
/// ```
/// use imapproxy_codec::response::protocol_text;
/// let r = b"* 1 FETCH (BODY[] {12}\r\nMODSEQ (9)\r\n UID 4)\r\n";
/// assert_eq!(protocol_text(r).collect::<Vec<_>>(), [&b"* 1 FETCH (BODY[] {12}\r\n"[..], b" UID 4)\r\n"]);
/// ```
pub fn protocol_text(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(message);
    core::iter::from_fn(move || {
        let bytes = rest.take().filter(|b| !b.is_empty())?;
        let end = memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1);
        let (line, after) = bytes.split_at(end);
        rest = match announced_literal(line) {
            Some(n) => after.get(n..),
            None => Some(after),
        };
        Some(line)
    })
}

/// Whether an untagged response carries mod-sequence data: `MODSEQ` in a `FETCH`,
/// `HIGHESTMODSEQ` in a `STATUS`, or a `VANISHED` response (RFC 7162). Servers send these only
/// once CONDSTORE or QRESYNC is on for the connection. Reads every line of `message` but not
/// what its literals hold: a message body that says `MODSEQ` is not mod-sequence data, and
/// the cost stays with the protocol text however large the bodies.
pub fn reveals_modseq(message: &[u8]) -> bool {
    let line = message;
    let line = trim_line(line);
    let Some(rest) = line.strip_prefix(b"* ") else {
        return false;
    };
    let first_end = memchr(b' ', rest).unwrap_or(rest.len());
    let first = rest.get(..first_end).unwrap_or(&[]);
    if first.eq_ignore_ascii_case(b"VANISHED") {
        return true;
    }
    let wanted: &[u8] = if first.eq_ignore_ascii_case(b"STATUS") {
        b"HIGHESTMODSEQ"
    } else if matches!(numbered(line), Some((_, k)) if k.eq_ignore_ascii_case(b"FETCH")) {
        b"MODSEQ"
    } else {
        return false;
    };
    protocol_text(message).any(|line| {
        trim_line(line)
            .split(|&b| matches!(b, b' ' | b'(' | b')'))
            .any(|w| w.eq_ignore_ascii_case(wanted))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let c = code(b"a1 OK [READ-WRITE] SELECT completed\r\n").unwrap();
        assert!(c.is("read-write") && c.args.is_empty());
        let c = code(b"* OK [HIGHESTMODSEQ 715194045007]\r\n").unwrap();
        assert_eq!(c.number(), Some(715_194_045_007));
        assert!(code(b"* OK no code\r\n").is_none());
        assert!(code(b"* OK [unterminated\r\n").is_none());
        assert!(code(b"* 3 EXISTS\r\n").is_none());
    }

    #[test]
    fn enabled_lists() {
        assert_eq!(enabled(b"* ENABLED\r\n").unwrap().count(), 0);
        assert!(enabled(b"* ENABLEDX A\r\n").is_none());
        assert!(enabled(b"a ENABLED A\r\n").is_none());
    }

    #[test]
    fn numbered_responses() {
        assert_eq!(numbered(b"* 23 EXISTS\r\n"), Some((23, &b"EXISTS"[..])));
        assert_eq!(
            numbered(b"* 4 FETCH (FLAGS ())\r\n"),
            Some((4, &b"FETCH"[..]))
        );
        assert_eq!(numbered(b"* OK x\r\n"), None);
        assert_eq!(numbered(b"* 99999999999999999999999 EXISTS\r\n"), None);
    }

    #[test]
    fn modseq_data() {
        assert!(reveals_modseq(b"* 1 FETCH (UID 4 MODSEQ (12))\r\n"));
        assert!(reveals_modseq(
            b"* STATUS INBOX (MESSAGES 2 HIGHESTMODSEQ 7)\r\n"
        ));
        assert!(reveals_modseq(b"* VANISHED (EARLIER) 1:3\r\n"));
        assert!(!reveals_modseq(b"* 1 FETCH (UID 4 FLAGS (\\Seen))\r\n"));
        assert!(!reveals_modseq(b"* OK [HIGHESTMODSEQ 7] Highest\r\n"));
        assert!(!reveals_modseq(b"* LIST () \"/\" MODSEQ\r\n"));
        // Past a literal, in the protocol text: yes; inside one (a message body): no.
        assert!(reveals_modseq(
            b"* 2 FETCH (BODY[] {5}\r\nhello MODSEQ (8))\r\n"
        ));
        assert!(!reveals_modseq(
            b"* 2 FETCH (BODY[] {12}\r\n MODSEQ (8) \r\n UID 3)\r\n"
        ));
        assert!(reveals_modseq(
            b"* 2 FETCH (BODY[1] {3}\r\nabc BODY[2] {2+}\r\nde MODSEQ (8))\r\n"
        ));
        // A literal cut short ends the text without reading past the buffer.
        assert!(!reveals_modseq(b"* 2 FETCH (BODY[] {99}\r\nMODSEQ"));
    }
}
