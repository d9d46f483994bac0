//! Where one IMAP response ends in a byte buffer (sans-IO, shared by the test client
//! and the fake backend).
//!
//! RFC 9051 §4.3: a line ending in `{n}` (or `{n+}`, `~{n}`) announces n raw bytes
//! that belong to the same response, which then continues with more line. But a
//! trailing `{n}` after status text (`OK`/`NO`/`BAD`/`BYE`/`PREAUTH`, tagged or
//! untagged) or in a `+` continuation is *text*: servers echo client-chosen strings
//! there, so treating it as a literal would let a client desynchronise the reader.

/// Literals larger than this are treated as text; no test needs a 1 GiB literal and
/// a bogus length must not make the reader wait forever for bytes.
const MAX_LITERAL: usize = 1 << 30;

/// Returns the length of the first complete response in `buf` (including every
/// inlined literal and the final line's CRLF), or `None` when more bytes are needed.
pub(crate) fn response_len(buf: &[u8]) -> Option<usize> {
    let first_nl = buf.iter().position(|&b| b == b'\n')?;
    let first_line = buf.get(..first_nl).unwrap_or_default();
    if is_text_line(first_line) {
        return Some(first_nl + 1);
    }
    let mut line_start = 0;
    let mut nl = first_nl;
    loop {
        let line = buf.get(line_start..nl).unwrap_or_default();
        match trailing_literal(line) {
            None => return Some(nl + 1),
            Some(n) => {
                let after = (nl + 1).checked_add(n)?;
                if after > buf.len() {
                    return None;
                }
                let rest = buf.get(after..)?;
                let next_nl = rest.iter().position(|&b| b == b'\n')?;
                line_start = after;
                nl = after + next_nl;
            }
        }
    }
}

/// Whether a response line carries free text, in which a trailing `{n}` is no literal:
/// a `+` continuation or a status response (RFC 9051 §7.1).
pub(crate) fn is_text_line(line: &[u8]) -> bool {
    let mut words = line.split(|&b| b == b' ');
    let Some(first) = words.next() else {
        return false;
    };
    if first == b"+" {
        return true;
    }
    let Some(second) = words.next() else {
        return false;
    };
    let second = trim_crlf(second);
    ["OK", "NO", "BAD", "BYE", "PREAUTH"]
        .iter()
        .any(|s| second.eq_ignore_ascii_case(s.as_bytes()))
}

/// The literal length announced at the end of `line` (`{n}`, `{n+}`, `{n-}`), if any.
pub(crate) fn trailing_literal(line: &[u8]) -> Option<usize> {
    let line = trim_crlf(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = inner.get(open + 1..)?;
    let digits = digits
        .strip_suffix(b"+")
        .or_else(|| digits.strip_suffix(b"-"))
        .unwrap_or(digits);
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().try_fold(0usize, |acc, d| {
        acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })?;
    (n <= MAX_LITERAL).then_some(n)
}

/// `line` without its trailing CR LF (or bare LF).
pub(crate) fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_end_at_lf() {
        assert_eq!(response_len(b"* OK hi\r\nmore"), Some(9));
        assert_eq!(response_len(b"* OK hi"), None);
    }

    #[test]
    fn literal_is_inlined_with_its_continuation() {
        let r = b"* 1 FETCH (BODY[] {5}\r\na\r\nb) UID 3)\r\nnext";
        assert_eq!(response_len(r), Some(r.len() - 4));
        assert_eq!(response_len(b"* 1 FETCH (BODY[] {5}\r\na\r\n"), None);
    }

    #[test]
    fn two_literals_in_one_response() {
        let r = b"* LIST () \"/\" {3}\r\nabc {2}\r\nxy\r\n";
        assert_eq!(response_len(r), Some(r.len()));
    }

    #[test]
    fn trailing_count_after_status_text_is_not_a_literal() {
        assert_eq!(response_len(b"* OK [ALERT] hello {5}\r\nx"), Some(24));
        assert_eq!(response_len(b"a1 NO bad mailbox {5}\r\n"), Some(23));
        assert_eq!(response_len(b"+ go ahead {5}\r\n"), Some(16));
        assert_eq!(response_len(b"* BYE {5}\r\n"), Some(11));
    }

    #[test]
    fn literal_variants_and_bogus_counts() {
        assert_eq!(trailing_literal(b"x {12}\r\n"), Some(12));
        assert_eq!(trailing_literal(b"x {12+}"), Some(12));
        assert_eq!(trailing_literal(b"x ~{0}"), Some(0));
        assert_eq!(trailing_literal(b"x {}"), None);
        assert_eq!(trailing_literal(b"x {1a}"), None);
        assert_eq!(trailing_literal(b"x {99999999999999999999}"), None);
        assert_eq!(trailing_literal(b"}"), None);
    }
}
