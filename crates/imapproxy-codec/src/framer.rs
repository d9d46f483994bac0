//! Post-login relay framing: finds where each IMAP message ends, in either direction, without
//! decoding it and without holding any of the stream.
//!
//! The relay forwards bytes itself; the [`Framer`] is fed the same bytes and answers "a message
//! ended at offset `n`, here is its tag, kind and size". It keeps O(1) state (~110 bytes), never
//! allocates, looks for line ends with `memchr` and skips literal bodies without reading them.
//!
//! Literal rules (RFC 9051 §4.3, RFC 7888 `{n+}`, RFC 3516 `~{n}`): a line ending in `{n}`,
//! `{n+}` or `~{n}` just before its CRLF announces `n` bytes that follow the CRLF, after which
//! the same message continues. In the server direction only untagged *data* responses carry
//! literals: a trailing `{n}` after status text (`* OK/NO/BAD/BYE/PREAUTH ...`, `tag OK/NO/BAD
//! ...`) or on a `+` continuation line is text, because servers echo client-chosen strings (e.g.
//! mailbox names) there and a client could otherwise make the proxy skip real responses. A bare
//! LF ends a line too. A size that does not fit in `u64`, or a line end that does not parse as a
//! literal announcement, is text.

use memchr::{memchr, memrchr};

use crate::Tag;

/// How many bytes of each message's first line are kept to read the tag, command and status.
const HEAD_CAP: usize = 64;

/// Which way the framed bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Commands, client to server.
    Client,
    /// Responses, server to client.
    Server,
}

/// The kind of message that just ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Client direction: `tag SP command ...` (and a bare `DONE` line, with `tag: None`).
    Command(CommandName),
    /// Server direction: `* ...`.
    Untagged(UntaggedKind),
    /// Server direction: `tag OK|NO|BAD ...` (or any other line that is not `*`/`+`; a line
    /// without a valid tag is `Tagged(Status::Other)` with `tag: None`).
    Tagged(Status),
    /// Server direction: `+ ...` command continuation request.
    Continuation,
    /// Client direction: a line that is not `tag SP command`, e.g. SASL data.
    Line,
}

/// Command names the relay cares about; everything else (including `UID ...`) is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the variants are the IMAP command names
pub enum CommandName {
    Logout,
    Idle,
    Done,
    Enable,
    Compress,
    Select,
    Examine,
    Unselect,
    Close,
    Authenticate,
    Login,
    StartTls,
    Id,
    Noop,
    Capability,
    Append,
    Other,
}

impl CommandName {
    const NAMED: [(&'static [u8], CommandName); 16] = [
        (b"LOGOUT", Self::Logout),
        (b"IDLE", Self::Idle),
        (b"DONE", Self::Done),
        (b"ENABLE", Self::Enable),
        (b"COMPRESS", Self::Compress),
        (b"SELECT", Self::Select),
        (b"EXAMINE", Self::Examine),
        (b"UNSELECT", Self::Unselect),
        (b"CLOSE", Self::Close),
        (b"AUTHENTICATE", Self::Authenticate),
        (b"LOGIN", Self::Login),
        (b"STARTTLS", Self::StartTls),
        (b"ID", Self::Id),
        (b"NOOP", Self::Noop),
        (b"CAPABILITY", Self::Capability),
        (b"APPEND", Self::Append),
    ];

    /// Case-insensitive lookup (RFC 9051 §9: command names are case-insensitive).
    pub fn from_bytes(name: &[u8]) -> Self {
        Self::NAMED
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(Self::Other, |&(_, c)| c)
    }

    /// Upper-case name, `"OTHER"` for [`CommandName::Other`]; handy as a metrics label.
    pub fn as_str(self) -> &'static str {
        Self::NAMED
            .iter()
            .find(|&&(_, c)| c == self)
            .and_then(|(n, _)| core::str::from_utf8(n).ok())
            .unwrap_or("OTHER")
    }
}

/// Response status (RFC 9051 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the variants are the IMAP status words
pub enum Status {
    Ok,
    No,
    Bad,
    Bye,
    PreAuth,
    /// Not a status word (malformed or truncated response).
    Other,
}

impl Status {
    fn from_word(w: &[u8]) -> Option<Self> {
        [
            (&b"OK"[..], Self::Ok),
            (b"NO", Self::No),
            (b"BAD", Self::Bad),
            (b"BYE", Self::Bye),
            (b"PREAUTH", Self::PreAuth),
        ]
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(w))
        .map(|(_, s)| s)
    }
}

/// The untagged responses the relay distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UntaggedKind {
    /// `* OK|NO|BAD|BYE|PREAUTH ...`: a status response (never carries literals).
    Status(Status),
    /// `* CAPABILITY ...`
    Capability,
    /// `* n EXISTS`
    Exists,
    /// `* n EXPUNGE`
    Expunge,
    /// `* n FETCH ...`
    Fetch,
    /// Any other untagged data response (`LIST`, `ID`, `SEARCH`, ...).
    Other,
}

/// A message that just ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Tag of a command or tagged response; `None` for `*`, `+`, bare lines, and tags that are
    /// invalid or too long to be read from the first [`HEAD_CAP`] bytes (64) of the line.
    pub tag: Option<Tag>,
    /// What kind of message it was.
    pub kind: FrameKind,
    /// Total bytes of the message, including literals and the final line end.
    pub len: u64,
    /// Bytes inside literals (announcements excluded).
    pub literal_bytes: u64,
}

/// Incremental state of "does the line seen so far end in a literal announcement?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    Other,
    Open,
    Digits(u64),
    Plus(u64),
    Close(u64),
    CloseCr(u64),
}

impl Tail {
    fn step(self, b: u8) -> Self {
        match (self, b) {
            (_, b'{') => Self::Open,
            (Self::Open, b'0'..=b'9') => Self::Digits(u64::from(b - b'0')),
            // An announcement that overflows u64 is text (no server or client sends one).
            (Self::Digits(n), b'0'..=b'9') => n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .map_or(Self::Other, Self::Digits),
            (Self::Digits(n), b'+') => Self::Plus(n),
            (Self::Digits(n) | Self::Plus(n), b'}') => Self::Close(n),
            (Self::Close(n), b'\r') => Self::CloseCr(n),
            _ => Self::Other,
        }
    }

    /// Advances over `seg`, which holds no LF. Only the part from the last `{` on can matter,
    /// so the work is O(announcement length), not O(line length), after one `memrchr`.
    fn scan(self, seg: &[u8]) -> Self {
        let (mut t, rest) = match memrchr(b'{', seg) {
            Some(i) => (Self::Open, seg.get(i + 1..).unwrap_or(&[])),
            None => (self, seg),
        };
        for &b in rest {
            t = t.step(b);
            if t == Self::Other {
                // No `{` follows, so nothing later can start an announcement.
                break;
            }
        }
        t
    }

    fn literal(self) -> Option<u64> {
        match self {
            Self::Close(n) | Self::CloseCr(n) => Some(n),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum State {
    Line(Tail),
    Literal(u64),
}

/// Incremental message-boundary scanner for one direction of a relayed IMAP stream.
///
/// ```
/// use imapproxy_codec::{Direction, Framer, FrameKind, UntaggedKind};
/// let mut f = Framer::new(Direction::Server);
/// let stream = b"* 1 FETCH (BODY[] {5}\r\nab\r\nc)\r\nA1 OK done {5}\r\n";
/// let (n, frame) = f.advance(stream).unwrap();
/// assert_eq!(frame.kind, FrameKind::Untagged(UntaggedKind::Fetch));
/// assert_eq!((n as u64, frame.literal_bytes), (frame.len, 5));
/// let (m, frame) = f.advance(&stream[n..]).unwrap();
/// assert_eq!(frame.tag.unwrap().as_bytes(), b"A1"); // `{5}` after status text is text
/// assert_eq!(n + m, stream.len());
/// assert!(f.at_boundary());
/// ```
#[derive(Clone, Debug)]
pub struct Framer {
    dir: Direction,
    state: State,
    first_line_done: bool,
    literals_allowed: bool,
    head_truncated: bool,
    head_len: u8,
    head: [u8; HEAD_CAP],
    len: u64,
    literal_bytes: u64,
}

impl Framer {
    /// A framer at the start of a stream (i.e. at a message boundary).
    pub fn new(dir: Direction) -> Self {
        Self {
            dir,
            state: State::Line(Tail::Other),
            first_line_done: false,
            literals_allowed: false,
            head_truncated: false,
            head_len: 0,
            head: [0; HEAD_CAP],
            len: 0,
            literal_bytes: 0,
        }
    }

    /// The direction this framer was made for.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// Scans `buf`, which continues the stream where the previous call stopped. Returns
    /// `Some((n, frame))` when a message ends within `buf` at offset `n` (bytes `..n` complete
    /// it; call again with `&buf[n..]`), or `None` when every byte of `buf` was consumed by an
    /// unfinished message.
    pub fn advance(&mut self, buf: &[u8]) -> Option<(usize, Frame)> {
        let mut pos = 0usize;
        loop {
            let rest = buf.get(pos..).unwrap_or(&[]);
            match self.state {
                State::Literal(remaining) => {
                    let avail = rest.len() as u64;
                    if avail < remaining {
                        self.state = State::Literal(remaining - avail);
                        self.len = self.len.saturating_add(avail);
                        return None;
                    }
                    // remaining <= avail, and avail came from a usize: the cast is lossless.
                    pos += remaining as usize;
                    self.len = self.len.saturating_add(remaining);
                    self.state = State::Line(Tail::Other);
                }
                State::Line(tail) => {
                    let Some(i) = memchr(b'\n', rest) else {
                        self.record_head(rest);
                        self.state = State::Line(tail.scan(rest));
                        self.len = self.len.saturating_add(rest.len() as u64);
                        return None;
                    };
                    let seg = rest.get(..i).unwrap_or(&[]);
                    self.record_head(seg);
                    let tail = tail.scan(seg);
                    self.len = self.len.saturating_add(i as u64 + 1);
                    pos += i + 1;
                    let mut first = None;
                    if !self.first_line_done {
                        self.first_line_done = true;
                        let (tag, kind) = self.classify();
                        self.literals_allowed = match kind {
                            FrameKind::Untagged(UntaggedKind::Status(_)) => false,
                            FrameKind::Untagged(_) => true,
                            FrameKind::Tagged(_) | FrameKind::Continuation => false,
                            FrameKind::Command(_) | FrameKind::Line => true,
                        };
                        first = Some((tag, kind));
                    }
                    if self.literals_allowed {
                        if let Some(n) = tail.literal() {
                            self.literal_bytes = self.literal_bytes.saturating_add(n);
                            self.state = State::Literal(n);
                            continue;
                        }
                    }
                    let (tag, kind) = first.unwrap_or_else(|| self.classify());
                    let frame = Frame {
                        tag,
                        kind,
                        len: self.len,
                        literal_bytes: self.literal_bytes,
                    };
                    self.reset();
                    return Some((pos, frame));
                }
            }
        }
    }

    /// Back to a message boundary. The head bytes are left in place: `head_len` bounds what is
    /// read, and not rewriting 64 bytes per message is measurable on small commands.
    fn reset(&mut self) {
        self.state = State::Line(Tail::Other);
        self.first_line_done = false;
        self.literals_allowed = false;
        self.head_truncated = false;
        self.head_len = 0;
        self.len = 0;
        self.literal_bytes = 0;
    }

    /// True when the framer sits exactly at a message boundary (nothing partial consumed).
    pub fn at_boundary(&self) -> bool {
        self.len == 0
    }

    /// The tag of the unfinished message, once its first word is complete (`None` at a
    /// boundary). A relay needs it when a server refuses a command that announced a
    /// synchronizing literal: the client then never sends the literal (RFC 9051 §4.3), and
    /// the framer must be reset rather than wait for bytes that will not come.
    pub fn partial_tag(&self) -> Option<Tag> {
        if self.len == 0 {
            return None;
        }
        let line = self.head.get(..usize::from(self.head_len)).unwrap_or(&[]);
        let end = memchr(b' ', line)?;
        Tag::new(line.get(..end)?).ok()
    }

    /// Bytes of the current, unfinished message consumed so far (0 at a boundary).
    pub fn partial_len(&self) -> u64 {
        self.len
    }

    fn record_head(&mut self, seg: &[u8]) {
        if self.first_line_done {
            return;
        }
        let have = usize::from(self.head_len);
        let room = HEAD_CAP.saturating_sub(have);
        let take = room.min(seg.len());
        if let (Some(dst), Some(src)) = (self.head.get_mut(have..have + take), seg.get(..take)) {
            dst.copy_from_slice(src);
        }
        // HEAD_CAP (64) fits in u8.
        self.head_len = (have + take) as u8;
        if take < seg.len() {
            self.head_truncated = true;
        }
    }

    fn classify(&self) -> (Option<Tag>, FrameKind) {
        let mut line = self.head.get(..usize::from(self.head_len)).unwrap_or(&[]);
        if !self.head_truncated {
            line = line.strip_suffix(b"\r").unwrap_or(line);
        }
        let head = Head {
            line,
            truncated: self.head_truncated,
        };
        match self.dir {
            Direction::Client => head.client(),
            Direction::Server => head.server(),
        }
    }
}

/// The recorded start of a message's first line.
struct Head<'a> {
    line: &'a [u8],
    /// The line went on past `line`: a word running to the end of `line` may be cut short.
    truncated: bool,
}

impl<'a> Head<'a> {
    /// Splits off the word at the start of `s`; the word is `None` when it may be cut short.
    fn word(&self, s: &'a [u8]) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        match memchr(b' ', s) {
            Some(i) => (s.get(..i), s.get(i + 1..)),
            None if self.truncated => (None, None),
            None => (Some(s), None),
        }
    }

    fn client(&self) -> (Option<Tag>, FrameKind) {
        let (tag, rest) = self.word(self.line);
        if let (Some(Ok(tag)), Some(rest)) = (tag.map(Tag::new), rest) {
            let name = self
                .word(rest)
                .0
                .map_or(CommandName::Other, CommandName::from_bytes);
            return (Some(tag), FrameKind::Command(name));
        }
        // RFC 2177 §3: IDLE ends with a bare `DONE` line.
        if !self.truncated && self.line.eq_ignore_ascii_case(b"DONE") {
            return (None, FrameKind::Command(CommandName::Done));
        }
        (None, FrameKind::Line)
    }

    fn server(&self) -> (Option<Tag>, FrameKind) {
        if self.line.first() == Some(&b'+') {
            return (None, FrameKind::Continuation);
        }
        let (first, rest) = self.word(self.line);
        if first == Some(b"*") {
            let (w, after) = match rest {
                Some(rest) => self.word(rest),
                None => (None, None),
            };
            let Some(w) = w else {
                return (None, FrameKind::Untagged(UntaggedKind::Other));
            };
            let kind = if let Some(s) = Status::from_word(w) {
                UntaggedKind::Status(s)
            } else if w.eq_ignore_ascii_case(b"CAPABILITY") {
                UntaggedKind::Capability
            } else if w.iter().all(u8::is_ascii_digit) {
                match after.and_then(|a| self.word(a).0) {
                    Some(k) if k.eq_ignore_ascii_case(b"EXISTS") => UntaggedKind::Exists,
                    Some(k) if k.eq_ignore_ascii_case(b"EXPUNGE") => UntaggedKind::Expunge,
                    Some(k) if k.eq_ignore_ascii_case(b"FETCH") => UntaggedKind::Fetch,
                    _ => UntaggedKind::Other,
                }
            } else {
                UntaggedKind::Other
            };
            return (None, FrameKind::Untagged(kind));
        }
        let tag = first.and_then(|t| Tag::new(t).ok());
        let status = match (tag, rest) {
            (Some(_), Some(rest)) => self.word(rest).0.and_then(Status::from_word),
            _ => None,
        };
        (
            tag.filter(|_| rest.is_some()),
            FrameKind::Tagged(status.unwrap_or(Status::Other)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_stays_small() {
        assert!(
            core::mem::size_of::<Framer>() <= 128,
            "{}",
            core::mem::size_of::<Framer>()
        );
    }

    #[test]
    fn tail_recognises_announcements() {
        let t = |s: &[u8]| Tail::Other.scan(s).literal();
        assert_eq!(t(b"a {5}"), Some(5));
        assert_eq!(t(b"a {5+}\r"), Some(5));
        assert_eq!(t(b"a ~{0}"), Some(0));
        assert_eq!(t(b"a {0005}"), Some(5));
        assert_eq!(t(b"{5} x"), None);
        assert_eq!(t(b"{}"), None);
        assert_eq!(t(b"{+}"), None);
        assert_eq!(t(b"{5}\r\r"), None);
        assert_eq!(t(b"{18446744073709551615}"), Some(u64::MAX));
        assert_eq!(t(b"{18446744073709551616}"), None);
        // Split anywhere, the result is the same.
        let s = b"x {123+}\r";
        for k in 0..=s.len() {
            let (a, b) = s.split_at(k);
            assert_eq!(
                Tail::Other.scan(a).scan(b).literal(),
                Some(123),
                "split {k}"
            );
        }
    }

    #[test]
    fn command_names_round_trip() {
        for (n, c) in CommandName::NAMED {
            assert_eq!(CommandName::from_bytes(n), c);
            assert_eq!(CommandName::from_bytes(&n.to_ascii_lowercase()), c);
            assert_eq!(c.as_str().as_bytes(), n);
        }
        assert_eq!(CommandName::from_bytes(b"UID"), CommandName::Other);
        assert_eq!(CommandName::Other.as_str(), "OTHER");
    }
}
