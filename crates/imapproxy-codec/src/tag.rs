//! [`Tag`]: a validated IMAP command tag stored inline (no allocation, `Copy`).

use core::fmt;

use crate::Error;

/// A validated IMAP tag (RFC 9051 §9: `tag = 1*<any ASTRING-CHAR except "+">`), stored inline.
///
/// At most [`Tag::MAX_LEN`] bytes. Longer tags are legal IMAP but never seen in practice; the
/// [`Framer`](crate::Framer) still frames such messages and reports `tag: None` for them.
///
/// ```
/// use imapproxy_codec::Tag;
/// let tag = Tag::new(b"A0001").unwrap();
/// assert_eq!(tag.as_bytes(), b"A0001");
/// assert_eq!(tag.to_string(), "A0001");
/// assert!(tag == *b"A0001".as_slice());
/// assert!(Tag::new(b"a+b").is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    len: u8,
    bytes: [u8; Tag::MAX_LEN],
}

impl Tag {
    /// Longest tag this type holds.
    pub const MAX_LEN: usize = 64;

    /// Validates `bytes` as a tag and copies it inline.
    pub fn new(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            return Err(Error::InvalidTag("empty"));
        }
        if bytes.len() > Self::MAX_LEN {
            return Err(Error::InvalidTag("longer than 64 bytes"));
        }
        if !bytes.iter().all(|&b| is_tag_char(b)) {
            return Err(Error::InvalidTag("contains a byte not allowed in a tag"));
        }
        let mut out = [0u8; Self::MAX_LEN];
        out[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            // Cannot truncate: checked against MAX_LEN (64) above.
            len: bytes.len() as u8,
            bytes: out,
        })
    }

    /// The tag's bytes, as they appeared on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        // `len` is only ever set from a length <= MAX_LEN, so this slice is in bounds;
        // `get` keeps the no-panic promise even so.
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// RFC 9051 §9: ASTRING-CHAR = ATOM-CHAR / resp-specials; ATOM-CHAR = any CHAR except
/// atom-specials (`(` `)` `{` SP CTL `%` `*` `"` `\` `]`); tags additionally exclude `+`.
/// `]` (resp-specials) is therefore allowed.
pub(crate) fn is_tag_char(b: u8) -> bool {
    matches!(b, 0x21..=0x7e) && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b'+')
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Validated tag bytes are printable ASCII, so this never loses information.
        for &b in self.as_bytes() {
            fmt::Write::write_char(f, char::from(b))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({self})")
    }
}

impl PartialEq<[u8]> for Tag {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl PartialEq<&[u8]> for Tag {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_bytes() == *other
    }
}

impl AsRef<[u8]> for Tag {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl TryFrom<&[u8]> for Tag {
    type Error = Error;
    fn try_from(value: &[u8]) -> Result<Self, Error> {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rfc_tag_chars_including_bracket() {
        for t in [&b"a"[..], b"A0001", b"x]y", b"1.2-3_4", b"~!#$&'"] {
            assert_eq!(Tag::new(t).unwrap().as_bytes(), t);
        }
    }

    #[test]
    fn rejects_plus_specials_controls_and_length() {
        for t in [
            &b""[..],
            b"a+",
            b"*",
            b"a b",
            b"(",
            b")",
            b"{",
            b"%",
            b"\"",
            b"\\",
            b"a\r",
            b"\x7f",
            b"\xc3\xa9",
        ] {
            assert!(Tag::new(t).is_err(), "{t:?}");
        }
        assert!(Tag::new(&[b'a'; 64]).is_ok());
        assert!(Tag::new(&[b'a'; 65]).is_err());
    }

    #[test]
    fn display_debug_eq() {
        let t = Tag::new(b"A1").unwrap();
        assert_eq!(format!("{t} {t:?}"), "A1 Tag(A1)");
        assert!(t == *b"A1".as_slice());
        assert!(t != *b"A2".as_slice());
    }
}
