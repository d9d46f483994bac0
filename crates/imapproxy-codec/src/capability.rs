//! Capability lists: read them and filter them.
//!
//! Two places carry a capability list (RFC 9051 §7.2.2, §7.1): the untagged
//! `* CAPABILITY IMAP4rev1 ...` response and the `[CAPABILITY ...]` response code inside a
//! status response (`* OK [CAPABILITY ...] ready`, `tag OK [CAPABILITY ...] Logged in`).

use memchr::memchr;

/// Where the capability atoms sit inside a line.
struct Located<'a> {
    /// Everything up to and including the space after the `CAPABILITY` keyword (or the keyword
    /// itself when the list is empty).
    prefix: &'a [u8],
    /// The space-separated atoms.
    list: &'a [u8],
    /// Everything after the list: `] text\r\n` for a code, the line end for the response.
    suffix: &'a [u8],
}

fn split_word(s: &[u8]) -> (&[u8], &[u8]) {
    match memchr(b' ', s) {
        Some(i) => (s.get(..i).unwrap_or(s), s.get(i + 1..).unwrap_or(&[])),
        None => (s, &[]),
    }
}

fn locate(line: &[u8]) -> Option<Located<'_>> {
    // Line end: CRLF or bare LF (or none, if the caller stripped it).
    let body_len = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .map_or(line.len(), <[u8]>::len);
    let body = line.get(..body_len)?;
    let (first, rest) = split_word(body);
    let (second, after_second) = split_word(rest);
    if first == b"*" && second.eq_ignore_ascii_case(b"CAPABILITY") {
        let start = body_len - after_second.len();
        let prefix_end = if after_second.is_empty() {
            body_len
        } else {
            start
        };
        return Some(Located {
            prefix: line.get(..prefix_end)?,
            list: after_second,
            suffix: line.get(body_len..)?,
        });
    }
    // `tag|* OK|NO|BAD|PREAUTH|BYE [CAPABILITY ...]` (RFC 9051 §7.1, resp-text-code).
    let is_status = [&b"OK"[..], b"NO", b"BAD", b"PREAUTH", b"BYE"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(second));
    const CODE: &[u8] = b"[CAPABILITY";
    let code = after_second.get(..CODE.len())?;
    if !is_status || first.is_empty() || !code.eq_ignore_ascii_case(CODE) {
        return None;
    }
    let code_start = body_len - after_second.len();
    let after_kw = after_second.get(CODE.len()..)?;
    let close = memchr(b']', after_kw)?;
    let inner = after_kw.get(..close)?;
    let list_start = code_start + CODE.len() + usize::from(inner.first() == Some(&b' '));
    let list_end = code_start + CODE.len() + close;
    if inner.first().is_some_and(|&b| b != b' ') {
        // `[CAPABILITYX ...]` is some other code.
        return None;
    }
    Some(Located {
        prefix: line.get(..list_start)?,
        list: line.get(list_start..list_end)?,
        suffix: line.get(list_end..)?,
    })
}

fn atoms(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == b' ').filter(|a| !a.is_empty())
}

/// Extracts the capabilities from a `* CAPABILITY` line or a `[CAPABILITY ..]` code, in their
/// original spelling. `None` when the line carries no capability list.
///
/// ```
/// use imapproxy_codec::parse_capabilities;
/// assert_eq!(
///     parse_capabilities(b"* OK [CAPABILITY IMAP4rev1 ID] ready\r\n").unwrap(),
///     ["IMAP4rev1", "ID"]
/// );
/// assert_eq!(parse_capabilities(b"* OK ready\r\n"), None);
/// ```
pub fn parse_capabilities(line: &[u8]) -> Option<Vec<String>> {
    let loc = locate(line)?;
    Some(
        atoms(loc.list)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Rewrites `* CAPABILITY ...` lines and `[CAPABILITY ...]` codes inside status responses
/// (tagged OK after login, untagged OK), removing every capability for which `drop(cap)` is
/// true. The closure sees each atom as sent (compare case-insensitively; `AUTH=*` style prefixes
/// are the closure's business). Returns `None` when the line has no capability list (the caller
/// forwards the original bytes unchanged). The line end and any text after the code are kept.
///
/// ```
/// use imapproxy_codec::{default_post_login_drop, filter_capabilities};
/// let out = filter_capabilities(
///     b"a1 OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN IDLE] Logged in\r\n",
///     default_post_login_drop,
/// );
/// assert_eq!(out.unwrap(), b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
/// ```
pub fn filter_capabilities(line: &[u8], drop: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let loc = locate(line)?;
    let mut out = Vec::with_capacity(line.len());
    out.extend_from_slice(loc.prefix);
    let mut first = true;
    for atom in atoms(loc.list).filter(|a| !drop(a)) {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(atom);
    }
    if first && out.last() == Some(&b' ') {
        // Everything was dropped: `[CAPABILITY]` / `* CAPABILITY`, no dangling space.
        out.pop();
    }
    out.extend_from_slice(loc.suffix);
    Some(out)
}

/// The default post-login drop list (DESIGN.md): `STARTTLS`, `LOGINDISABLED`, `AUTH=*`,
/// `SASL-IR`, `LOGIN-REFERRALS`, `UNAUTHENTICATE`, compared case-insensitively. After login these are either
/// meaningless or promises about the backend's login that the proxy does not relay.
pub fn default_post_login_drop(cap: &[u8]) -> bool {
    const EXACT: [&[u8]; 5] = [
        b"STARTTLS",
        b"LOGINDISABLED",
        b"SASL-IR",
        b"LOGIN-REFERRALS",
        // RFC 8437: the client would fall back to the backend's pre-auth state, which the
        // proxy owns; and a session that logged in again as someone else cannot be pooled.
        b"UNAUTHENTICATE",
    ];
    EXACT.iter().any(|e| e.eq_ignore_ascii_case(cap))
        || cap
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"AUTH="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filt(line: &[u8]) -> Option<String> {
        filter_capabilities(line, default_post_login_drop).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn unauthenticate_is_hidden_after_login() {
        assert!(default_post_login_drop(b"unauthenticate"));
        assert!(!default_post_login_drop(b"UNSELECT"));
    }

    #[test]
    fn filters_untagged_capability_response() {
        assert_eq!(
            filt(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN auth=login IDLE LOGINDISABLED\r\n")
                .unwrap(),
            "* CAPABILITY IMAP4rev1 IDLE\r\n"
        );
        assert_eq!(
            filt(b"* capability IMAP4rev1  SASL-IR\n").unwrap(),
            "* capability IMAP4rev1\n"
        );
        assert_eq!(
            filt(b"* CAPABILITY STARTTLS\r\n").unwrap(),
            "* CAPABILITY\r\n"
        );
        assert_eq!(filt(b"* CAPABILITY\r\n").unwrap(), "* CAPABILITY\r\n");
    }

    #[test]
    fn filters_codes_in_status_responses() {
        assert_eq!(
            filt(b"* OK [CAPABILITY IMAP4rev1 LOGIN-REFERRALS ID] Dovecot ready.\r\n").unwrap(),
            "* OK [CAPABILITY IMAP4rev1 ID] Dovecot ready.\r\n"
        );
        assert_eq!(
            filt(b"A1 ok [capability STARTTLS] x").unwrap(),
            "A1 ok [capability] x"
        );
        assert_eq!(
            filt(b"* PREAUTH [CAPABILITY IMAP4rev2] hi\r\n").unwrap(),
            "* PREAUTH [CAPABILITY IMAP4rev2] hi\r\n"
        );
    }

    #[test]
    fn lines_without_a_list_are_none() {
        for l in [
            &b"* OK ready\r\n"[..],
            b"* OK [CAPABILITYX A] x\r\n",
            b"* OK [CAPABILITY A\r\n",
            b"* 1 FETCH (CAPABILITY)\r\n",
            b"A1 OK CAPABILITY completed\r\n",
            b"+ [CAPABILITY A]\r\n",
            b"",
            b"*",
        ] {
            assert_eq!(filt(l), None, "{l:?}");
            assert_eq!(parse_capabilities(l), None, "{l:?}");
        }
    }

    #[test]
    fn parses_lists() {
        assert_eq!(
            parse_capabilities(b"* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN\r\n").unwrap(),
            ["IMAP4rev1", "LITERAL+", "AUTH=PLAIN"]
        );
        assert_eq!(
            parse_capabilities(b"* CAPABILITY\r\n").unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn default_drop_list() {
        for c in [
            &b"STARTTLS"[..],
            b"starttls",
            b"LOGINDISABLED",
            b"AUTH=PLAIN",
            b"Auth=XOAUTH2",
            b"SASL-IR",
            b"LOGIN-REFERRALS",
        ] {
            assert!(default_post_login_drop(c), "{c:?}");
        }
        for c in [&b"IMAP4rev1"[..], b"IDLE", b"AUTH", b"LITERAL+", b"ID"] {
            assert!(!default_post_login_drop(c), "{c:?}");
        }
    }
}
