//! A backend's capability list (RFC 9051 §7.2.2), as one shared string.

use std::fmt;
use std::sync::Arc;

use imapproxy_codec::parse_capabilities;

/// The capabilities a backend announced, in their original spelling.
///
/// Read from a `* CAPABILITY ...` response or a `[CAPABILITY ...]` response code (greeting,
/// tagged `OK` after login). Stored as one space-separated string behind an `Arc`: every idle
/// session keeps its list, and ~50 separately allocated strings would cost more than the rest
/// of the session; equal lists of one backend share one allocation.
///
/// ```
/// use imapproxy_pool::Capabilities;
/// let caps = Capabilities::from_line(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n")
///     .unwrap();
/// assert!(caps.contains("sasl-ir"));
/// assert_eq!(caps.auth_mechanisms().collect::<Vec<_>>(), ["PLAIN"]);
/// assert_eq!(Capabilities::from_line(b"* OK ready\r\n"), None);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Capabilities(Arc<str>);

impl Capabilities {
    /// The list carried by `line` (`* CAPABILITY ...` or a status response with a
    /// `[CAPABILITY ...]` code); `None` when the line carries none. Bytes that are not UTF-8
    /// become U+FFFD; an atom is never empty and never holds ASCII whitespace (a tab inside an
    /// atom splits it, as a server sending one can only mean a separator).
    pub fn from_line(line: &[u8]) -> Option<Self> {
        let atoms = parse_capabilities(line)?;
        let mut joined = String::with_capacity(atoms.iter().map(|a| a.len() + 1).sum());
        for atom in atoms.iter().flat_map(|a| a.split_ascii_whitespace()) {
            if !joined.is_empty() {
                joined.push(' ');
            }
            joined.push_str(atom);
        }
        Some(Self(joined.into()))
    }

    /// The capabilities, in the order announced.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split_ascii_whitespace()
    }

    /// Whether `cap` is announced (compared case-insensitively, RFC 9051 §7.2.2).
    pub fn contains(&self, cap: &str) -> bool {
        self.iter().any(|c| c.eq_ignore_ascii_case(cap))
    }

    /// The SASL mechanisms announced as `AUTH=<mechanism>`, upper-cased, without `AUTH=`.
    pub fn auth_mechanisms(&self) -> impl Iterator<Item = String> + '_ {
        self.iter()
            .filter_map(|c| {
                c.get(..5)
                    .filter(|p| p.eq_ignore_ascii_case("AUTH="))
                    .and_then(|_| c.get(5..))
            })
            .filter(|m| !m.is_empty())
            .map(str::to_ascii_uppercase)
    }

    /// True when no capability is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces `self` by the copy in `shared` when the lists are equal, or records `self`
    /// there: connections to one backend then share one allocation.
    pub(crate) fn share(&mut self, shared: &mut Option<Capabilities>) {
        match shared {
            Some(c) if *c == *self => *self = c.clone(),
            _ => *shared = Some(self.clone()),
        }
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_from_response_and_code_alike() {
        let a = Capabilities::from_line(b"* CAPABILITY IMAP4rev1 IDLE\r\n").unwrap();
        let b =
            Capabilities::from_line(b"P1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.iter().collect::<Vec<_>>(), ["IMAP4rev1", "IDLE"]);
        assert!(a.contains("idle") && !a.contains("ID"));
    }

    #[test]
    fn whitespace_inside_an_atom_separates() {
        let c = Capabilities::from_line(b"* CAPABILITY A\tB  C\r\n").unwrap();
        assert_eq!(c.iter().collect::<Vec<_>>(), ["A", "B", "C"]);
        assert_eq!(format!("{c:?}"), r#"["A", "B", "C"]"#);
    }

    #[test]
    fn mechanisms_are_upper_cased_and_never_empty() {
        let c = Capabilities::from_line(b"* CAPABILITY auth=plain AUTH= AUTH=XOAUTH2 AUTHX\r\n")
            .unwrap();
        assert_eq!(
            c.auth_mechanisms().collect::<Vec<_>>(),
            ["PLAIN", "XOAUTH2"]
        );
    }

    #[test]
    fn equal_lists_share_one_allocation() {
        let mut shared = None;
        let mut a = Capabilities::from_line(b"* CAPABILITY X Y\r\n").unwrap();
        let mut b = Capabilities::from_line(b"* CAPABILITY X Y\r\n").unwrap();
        a.share(&mut shared);
        b.share(&mut shared);
        assert!(Arc::ptr_eq(&a.0, &b.0));
    }
}
