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

/// How many bytes of each message's first line are kept to read the tag, command and status:
/// room for the longest [`Tag`] (64) and a command name such as `UID FETCH`.
const HEAD_CAP: usize = 80;

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
#[non_exhaustive]
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

/// IMAP command names (RFC 9051 and the extensions a proxy meets), `UID` forms apart.
/// Anything else, vendor commands included, is [`CommandName::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    Check,
    Expunge,
    Create,
    Delete,
    Rename,
    Subscribe,
    Unsubscribe,
    List,
    Lsub,
    Status,
    Namespace,
    Fetch,
    Store,
    Copy,
    Move,
    Search,
    Sort,
    Thread,
    Notify,
    Unauthenticate,
    Language,
    Comparator,
    GetQuota,
    GetQuotaRoot,
    SetQuota,
    GetAcl,
    SetAcl,
    DeleteAcl,
    MyRights,
    ListRights,
    GetMetadata,
    SetMetadata,
    UidFetch,
    UidStore,
    UidCopy,
    UidMove,
    UidSearch,
    UidSort,
    UidThread,
    UidExpunge,
    /// `UID` followed by something else, or nothing readable.
    UidOther,
    Other,
}

impl CommandName {
    /// Every command name, in declaration order: `ALL[c.index()] == c`.
    pub const ALL: [CommandName; 58] = [
        Self::Logout,
        Self::Idle,
        Self::Done,
        Self::Enable,
        Self::Compress,
        Self::Select,
        Self::Examine,
        Self::Unselect,
        Self::Close,
        Self::Authenticate,
        Self::Login,
        Self::StartTls,
        Self::Id,
        Self::Noop,
        Self::Capability,
        Self::Append,
        Self::Check,
        Self::Expunge,
        Self::Create,
        Self::Delete,
        Self::Rename,
        Self::Subscribe,
        Self::Unsubscribe,
        Self::List,
        Self::Lsub,
        Self::Status,
        Self::Namespace,
        Self::Fetch,
        Self::Store,
        Self::Copy,
        Self::Move,
        Self::Search,
        Self::Sort,
        Self::Thread,
        Self::Notify,
        Self::Unauthenticate,
        Self::Language,
        Self::Comparator,
        Self::GetQuota,
        Self::GetQuotaRoot,
        Self::SetQuota,
        Self::GetAcl,
        Self::SetAcl,
        Self::DeleteAcl,
        Self::MyRights,
        Self::ListRights,
        Self::GetMetadata,
        Self::SetMetadata,
        Self::UidFetch,
        Self::UidStore,
        Self::UidCopy,
        Self::UidMove,
        Self::UidSearch,
        Self::UidSort,
        Self::UidThread,
        Self::UidExpunge,
        Self::UidOther,
        Self::Other,
    ];

    /// A dense number for this name, `0..ALL.len()`, for tables kept per command (metrics
    /// handles, counters) that must not hash or allocate per command.
    pub const fn index(self) -> usize {
        self as usize
    }

    const NAMED: [(&'static [u8], CommandName); 48] = [
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
        (b"CHECK", Self::Check),
        (b"EXPUNGE", Self::Expunge),
        (b"CREATE", Self::Create),
        (b"DELETE", Self::Delete),
        (b"RENAME", Self::Rename),
        (b"SUBSCRIBE", Self::Subscribe),
        (b"UNSUBSCRIBE", Self::Unsubscribe),
        (b"LIST", Self::List),
        (b"LSUB", Self::Lsub),
        (b"STATUS", Self::Status),
        (b"NAMESPACE", Self::Namespace),
        (b"FETCH", Self::Fetch),
        (b"STORE", Self::Store),
        (b"COPY", Self::Copy),
        (b"MOVE", Self::Move),
        (b"SEARCH", Self::Search),
        (b"SORT", Self::Sort),
        (b"THREAD", Self::Thread),
        (b"NOTIFY", Self::Notify),
        (b"UNAUTHENTICATE", Self::Unauthenticate),
        (b"LANGUAGE", Self::Language),
        (b"COMPARATOR", Self::Comparator),
        (b"GETQUOTA", Self::GetQuota),
        (b"GETQUOTAROOT", Self::GetQuotaRoot),
        (b"SETQUOTA", Self::SetQuota),
        (b"GETACL", Self::GetAcl),
        (b"SETACL", Self::SetAcl),
        (b"DELETEACL", Self::DeleteAcl),
        (b"MYRIGHTS", Self::MyRights),
        (b"LISTRIGHTS", Self::ListRights),
        (b"GETMETADATA", Self::GetMetadata),
        (b"SETMETADATA", Self::SetMetadata),
    ];

    /// The commands that take a `UID` prefix (RFC 9051 §6.4.9, RFC 6851, RFC 5256).
    const UID: [(&'static [u8], CommandName, &'static str); 8] = [
        (b"FETCH", Self::UidFetch, "UID FETCH"),
        (b"STORE", Self::UidStore, "UID STORE"),
        (b"COPY", Self::UidCopy, "UID COPY"),
        (b"MOVE", Self::UidMove, "UID MOVE"),
        (b"SEARCH", Self::UidSearch, "UID SEARCH"),
        (b"SORT", Self::UidSort, "UID SORT"),
        (b"THREAD", Self::UidThread, "UID THREAD"),
        (b"EXPUNGE", Self::UidExpunge, "UID EXPUNGE"),
    ];

    /// Case-insensitive lookup of a one-word name (RFC 9051 §9: command names are
    /// case-insensitive). `UID` alone is [`CommandName::UidOther`]; see
    /// [`CommandName::from_uid`] for the word after it.
    pub fn from_bytes(name: &[u8]) -> Self {
        if name.eq_ignore_ascii_case(b"UID") {
            return Self::UidOther;
        }
        Self::NAMED
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(Self::Other, |&(_, c)| c)
    }

    /// The command named by `UID <name>`.
    pub fn from_uid(name: &[u8]) -> Self {
        Self::UID
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
            .map_or(Self::UidOther, |&(_, c, _)| c)
    }

    /// Upper-case name (`"UID FETCH"` for the UID forms, `"UID"` for [`CommandName::UidOther`],
    /// `"OTHER"` for [`CommandName::Other`]); handy as a metrics label.
    pub fn as_str(self) -> &'static str {
        if self == Self::UidOther {
            return "UID";
        }
        if let Some((_, _, s)) = Self::UID.iter().find(|&&(_, c, _)| c == self) {
            return s;
        }
        Self::NAMED
            .iter()
            .find(|&&(_, c)| c == self)
            .and_then(|(n, _)| core::str::from_utf8(n).ok())
            .unwrap_or("OTHER")
    }
}

/// Response status (RFC 9051 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// The status named by `w` (case-insensitive), if it is one.
    pub fn from_word(w: &[u8]) -> Option<Self> {
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
#[non_exhaustive]
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
    /// invalid or too long to be read from the first [`HEAD_CAP`] bytes (80) of the line.
    pub tag: Option<Tag>,
    /// What kind of message it was.
    pub kind: FrameKind,
    /// Total bytes of the message, including literals and the final line end.
    pub len: u64,
    /// Bytes inside literals (announcements excluded).
    pub literal_bytes: u64,
    /// Literals the message announced (`{n}`, `{n+}` and `~{n}` alike, `{0}` included). A
    /// synchronizing literal the server refused (see [`Framer::refused`]) is counted here but
    /// its bytes, never sent, are not in `literal_bytes`.
    pub literals: u32,
}

/// Incremental state of "does the line seen so far end in a literal announcement?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    Other,
    Open,
    Digits(u64),
    Plus(u64),
    /// `{n}` (`sync`: no `+`, the sender waits for a continuation) or `{n+}`.
    Close {
        n: u64,
        sync: bool,
    },
    CloseCr {
        n: u64,
        sync: bool,
    },
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
            (Self::Digits(n), b'}') => Self::Close { n, sync: true },
            (Self::Plus(n), b'}') => Self::Close { n, sync: false },
            (Self::Close { n, sync }, b'\r') => Self::CloseCr { n, sync },
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

    /// The announced size and whether the literal is synchronizing.
    fn literal(self) -> Option<(u64, bool)> {
        match self {
            Self::Close { n, sync } | Self::CloseCr { n, sync } => Some((n, sync)),
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
    /// Client direction: a synchronizing literal was announced and the server has neither
    /// sent `+` for it nor refused it yet (RFC 9051 §4.3: the client waits).
    awaiting_continuation: bool,
    head_len: u8,
    literals: u32,
    head: [u8; HEAD_CAP],
    len: u64,
    literal_bytes: u64,
    /// `len` when the last literal was announced: bytes after it arrived without a `+`.
    len_at_announcement: u64,
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
            awaiting_continuation: false,
            head_len: 0,
            literals: 0,
            head: [0; HEAD_CAP],
            len: 0,
            literal_bytes: 0,
            len_at_announcement: 0,
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
                        if let Some((n, sync)) = tail.literal() {
                            self.literal_bytes = self.literal_bytes.saturating_add(n);
                            self.literals = self.literals.saturating_add(1);
                            // Servers never wait for a continuation before sending a literal.
                            self.awaiting_continuation = sync && self.dir == Direction::Client;
                            self.len_at_announcement = self.len;
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
                        literals: self.literals,
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
        self.awaiting_continuation = false;
        self.head_len = 0;
        self.literals = 0;
        self.len = 0;
        self.literal_bytes = 0;
        self.len_at_announcement = 0;
    }

    /// Inside a literal: how many of its bytes are still to come (`None` outside one).
    ///
    /// A relay that moves a literal's bytes without looking at them (`splice(2)` from socket
    /// to socket, say) asks this to know how many it may move, then reports them with
    /// [`Framer::skip_literal`].
    pub fn literal_remaining(&self) -> Option<u64> {
        match self.state {
            State::Literal(remaining) => Some(remaining),
            State::Line(_) => None,
        }
    }

    /// `n` bytes of the current literal went by without being shown to [`Framer::advance`]:
    /// the framer ends up as if they had been. Returns `false`, and changes nothing, when `n`
    /// is more than [`Framer::literal_remaining`].
    ///
    /// ```
    /// use imapproxy_codec::{Direction, Framer};
    /// let mut f = Framer::new(Direction::Server);
    /// assert!(f.advance(b"* 1 FETCH (BODY[] {10}\r\nabc").is_none());
    /// assert_eq!(f.literal_remaining(), Some(7));
    /// assert!(!f.skip_literal(8));
    /// assert!(f.skip_literal(7));
    /// let (n, frame) = f.advance(b")\r\n").unwrap();
    /// assert_eq!((n, frame.len, frame.literal_bytes), (3, 37, 10));
    /// ```
    pub fn skip_literal(&mut self, n: u64) -> bool {
        let State::Literal(remaining) = self.state else {
            return n == 0;
        };
        if n > remaining {
            return false;
        }
        // What `advance` does with `n` literal bytes and nothing after them.
        self.state = if n < remaining {
            State::Literal(remaining - n)
        } else {
            State::Line(Tail::Other)
        };
        self.len = self.len.saturating_add(n);
        true
    }

    /// True when the framer sits exactly at a message boundary (nothing partial consumed).
    pub fn at_boundary(&self) -> bool {
        self.len == 0
    }

    /// Client direction: whether the unfinished command announced a synchronizing literal
    /// (`{n}`) that the server has neither accepted with `+` nor refused, and the client has
    /// (correctly) sent nothing since. Only then can a tagged reply to this command end it.
    pub fn awaiting_continuation(&self) -> bool {
        self.awaiting_continuation && self.len == self.len_at_announcement
    }

    /// The server sent a `+` continuation: a synchronizing literal the client is waiting to
    /// send may now come. A `+` that answers no literal (IDLE, SASL) changes nothing.
    pub fn continuation_seen(&mut self) {
        self.awaiting_continuation = false;
    }

    /// The server answered the unfinished command with a tagged reply before it asked for the
    /// synchronizing literal the command announced (`NO [TRYCREATE]` to an APPEND, say): the
    /// client sends neither the literal nor the rest of the command (RFC 9051 §4.3, §7.5), so
    /// the command ends here. Returns the frame of that shortened command, and the framer is
    /// back at a boundary; returns `None` (and changes nothing) unless
    /// [`Framer::awaiting_continuation`] holds. A non-synchronizing literal (`{n+}`), or one
    /// the server already accepted with `+`, is sent whatever the reply: the framer keeps
    /// counting it.
    pub fn refused(&mut self) -> Option<Frame> {
        if !self.awaiting_continuation() {
            return None;
        }
        let (tag, kind) = self.classify();
        // The announced size was counted as literal bytes; none of them comes.
        let never_sent = match self.state {
            State::Literal(remaining) => remaining,
            State::Line(_) => 0,
        };
        let frame = Frame {
            tag,
            kind,
            len: self.len,
            literal_bytes: self.literal_bytes.saturating_sub(never_sent),
            literals: self.literals,
        };
        self.reset();
        Some(frame)
    }

    /// The tag of the unfinished message, once its first word is complete (`None` at a
    /// boundary).
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
        // HEAD_CAP (80) fits in u8.
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
            let (word, after) = self.word(rest);
            let mut name = word.map_or(CommandName::Other, CommandName::from_bytes);
            if name == CommandName::UidOther {
                if let Some(w) = after.and_then(|a| self.word(a).0) {
                    name = CommandName::from_uid(w);
                }
            }
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
            } else if !w.is_empty() && w.iter().all(u8::is_ascii_digit) {
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
            core::mem::size_of::<Framer>() <= 160,
            "{}",
            core::mem::size_of::<Framer>()
        );
    }

    #[test]
    fn tail_recognises_announcements() {
        let t = |s: &[u8]| Tail::Other.scan(s).literal().map(|(n, _)| n);
        assert_eq!(t(b"a {5}"), Some(5));
        assert_eq!(t(b"a {5+}\r"), Some(5));
        assert_eq!(t(b"a ~{0}"), Some(0));
        assert_eq!(t(b"a {0005}"), Some(5));
        assert_eq!(Tail::Other.scan(b"a {5}").literal(), Some((5, true)));
        assert_eq!(Tail::Other.scan(b"a {5+}").literal(), Some((5, false)));
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
                Some((123, false)),
                "split {k}"
            );
        }
    }

    /// Frames of `stream` fed whole, and fed with the bytes `skip` (a range inside a literal)
    /// reported by `skip_literal` instead of shown: the same frames.
    fn frames_skipping(stream: &[u8], skip: core::ops::Range<usize>) -> Vec<Frame> {
        let mut f = Framer::new(Direction::Server);
        let mut out = Vec::new();
        let feed = |f: &mut Framer, mut bytes: &[u8], out: &mut Vec<Frame>| {
            while let Some((n, frame)) = f.advance(bytes) {
                out.push(frame);
                bytes = &bytes[n..];
            }
        };
        feed(&mut f, &stream[..skip.start], &mut out);
        let n = (skip.end - skip.start) as u64;
        if n > 0 {
            assert!(f.literal_remaining().is_some_and(|r| r >= n));
            assert!(f.skip_literal(n));
        }
        feed(&mut f, &stream[skip.end..], &mut out);
        assert!(f.at_boundary());
        out
    }

    #[test]
    fn skipped_literal_bytes_count_as_shown_ones() {
        let stream = b"* 1 FETCH (BODY[] {6}\r\nabcdef BODY[1] {3}\r\nxyz)\r\nA1 OK done\r\n";
        let whole = frames_skipping(stream, 0..0);
        assert_eq!(whole.len(), 2);
        let first = 23; // first byte of the 6-byte literal
        for start in first..=first + 6 {
            for end in start..=first + 6 {
                let frames = frames_skipping(stream, start..end);
                assert_eq!(frames.len(), 2, "{start}..{end}");
                for (a, b) in frames.iter().zip(&whole) {
                    assert_eq!(
                        (a.tag, a.kind, a.len, a.literal_bytes, a.literals),
                        (b.tag, b.kind, b.len, b.literal_bytes, b.literals),
                        "{start}..{end}"
                    );
                }
            }
        }
        // Outside a literal nothing can be skipped.
        let mut f = Framer::new(Direction::Server);
        assert_eq!(f.literal_remaining(), None);
        assert!(!f.skip_literal(1));
        assert!(f.skip_literal(0));
    }

    #[test]
    fn command_names_round_trip() {
        for (n, c) in CommandName::NAMED {
            assert_eq!(CommandName::from_bytes(n), c);
            assert_eq!(CommandName::from_bytes(&n.to_ascii_lowercase()), c);
            assert_eq!(c.as_str().as_bytes(), n);
        }
        for (n, c, s) in CommandName::UID {
            assert_eq!(CommandName::from_uid(&n.to_ascii_lowercase()), c);
            assert_eq!(c.as_str(), s);
        }
        assert_eq!(CommandName::from_bytes(b"uid"), CommandName::UidOther);
        for (i, c) in CommandName::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
        }
        assert_eq!(CommandName::from_uid(b"LOGOUT"), CommandName::UidOther);
        assert_eq!(CommandName::from_bytes(b"XLIST"), CommandName::Other);
        assert_eq!(CommandName::Other.as_str(), "OTHER");
    }
}
