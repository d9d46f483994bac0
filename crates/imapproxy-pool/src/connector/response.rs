//! Reading a backend's responses without I/O: bytes in, whole messages and tagged responses
//! out, every buffer bounded ([`ResponseReader`]); and what the connector reads from them
//! (the greeting, a tagged line's status and code).

use std::fmt;

use imapproxy_codec::framer::{Direction, Framer, Status};

use crate::capabilities::Capabilities;
use crate::error::{Error, server_text};

/// Bounds on what a [`ResponseReader`] holds. The connector reads only short exchanges
/// itself (greeting, `CAPABILITY`, `ID`, login, `NOOP`, `UNSELECT`, the commands of a
/// re-homed session); the relay never goes through it, so small bounds cost nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseLimits {
    /// The largest single message: a response line with its literals, in bytes. Default
    /// [`ResponseLimits::DEFAULT_MAX_MESSAGE`] (256 KiB).
    pub max_message: usize,
    /// The most untagged data read while waiting for a tagged reply (or a continuation
    /// request), in bytes; each message also counts [`ResponseLimits::PER_MESSAGE`] bytes, so
    /// a flood of empty lines is bounded too. Default [`ResponseLimits::DEFAULT_MAX_UNTAGGED`]
    /// (4 MiB): ample for `SELECT`, `LIST` of a few thousand mailboxes or `ID`, and a server
    /// that streams untagged data forever costs at most this much memory.
    pub max_untagged: usize,
}

impl ResponseLimits {
    /// Default [`ResponseLimits::max_message`]: 256 KiB.
    pub const DEFAULT_MAX_MESSAGE: usize = 256 * 1024;
    /// Default [`ResponseLimits::max_untagged`]: 4 MiB.
    pub const DEFAULT_MAX_UNTAGGED: usize = 4 * 1024 * 1024;
    /// What each message counts against [`ResponseLimits::max_untagged`] besides its bytes:
    /// about what keeping it as a `Vec<u8>` costs.
    pub const PER_MESSAGE: usize = 32;
}

impl Default for ResponseLimits {
    fn default() -> Self {
        Self {
            max_message: Self::DEFAULT_MAX_MESSAGE,
            max_untagged: Self::DEFAULT_MAX_UNTAGGED,
        }
    }
}

/// One response read by the connector: the untagged lines before it and the tagged line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Response {
    /// Untagged (`*`) and continuation lines received before the tagged status, and tagged
    /// lines of other tags, raw, each with its literals.
    pub untagged: Vec<Vec<u8>>,
    /// The tagged status line, raw, including CRLF.
    pub tagged: Vec<u8>,
}

impl Response {
    /// The status word of the tagged line (`OK`, `NO`, `BAD`).
    pub fn status(&self) -> Option<Status> {
        status_of(&self.tagged)
    }

    /// True for a tagged `OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self.status(), Some(Status::Ok))
    }

    /// The response code of the tagged line (`[CODE ...]`), upper-cased name.
    pub fn code(&self) -> Option<String> {
        response_code(&self.tagged)
    }
}

/// The status word (second word) of a status response, tagged or untagged.
pub(crate) fn status_of(line: &[u8]) -> Option<Status> {
    let mut words = line.splitn(3, |b| *b == b' ');
    let _tag = words.next()?;
    let word = words.next()?;
    Status::from_word(word.strip_suffix(b"\r\n").unwrap_or(word))
}

/// The text after the status word of a status response (without CRLF).
fn status_text(line: &[u8]) -> &[u8] {
    line.splitn(3, |b| *b == b' ').nth(2).unwrap_or_default()
}

/// The name of the response code of a status response, upper-cased.
pub(crate) fn response_code(line: &[u8]) -> Option<String> {
    let code = imapproxy_codec::response::code(line)?;
    Some(String::from_utf8_lossy(code.name).to_ascii_uppercase())
}

/// Whether `msg` is the tagged response to the command tagged `tag`.
pub(crate) fn is_tagged(msg: &[u8], tag: &str) -> bool {
    msg.len() > tag.len() && msg.starts_with(tag.as_bytes()) && msg.get(tag.len()) == Some(&b' ')
}

/// [`Error::Bye`] for a `* BYE` response (RFC 9051 §7.1.5: the server is closing the
/// connection), `None` for any other message.
pub(crate) fn bye(msg: &[u8]) -> Option<Error> {
    (msg.starts_with(b"* ") && status_of(msg) == Some(Status::Bye)).then(|| Error::Bye {
        text: server_text(status_text(msg)),
    })
}

/// A greeting that lets the connection log in: `* OK` (RFC 9051 §7.1.1), with the
/// capabilities it announced in a `[CAPABILITY ...]` code, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    /// The capabilities in the greeting's `[CAPABILITY ...]` code.
    pub capabilities: Option<Capabilities>,
}

impl Greeting {
    /// Judges a backend's first message (as [`ResponseReader::next_message`] returned it).
    ///
    /// # Errors
    /// [`Error::GreetingBye`] for `* BYE`, [`Error::PreAuthGreeting`] for `* PREAUTH` (RFC 9051
    /// §7.1.4: the connection is someone's session already), [`Error::UnexpectedData`] for
    /// anything else.
    pub fn parse(msg: &[u8]) -> Result<Self, Error> {
        if !msg.starts_with(b"* ") {
            return Err(Error::UnexpectedData {
                what: "greeting is not an untagged response",
            });
        }
        match status_of(msg) {
            Some(Status::Ok) => Ok(Self {
                capabilities: Capabilities::from_line(msg),
            }),
            Some(Status::PreAuth) => Err(Error::PreAuthGreeting),
            Some(Status::Bye) => Err(Error::GreetingBye {
                text: server_text(status_text(msg)),
            }),
            _ => Err(Error::UnexpectedData {
                what: "greeting is neither OK, PREAUTH nor BYE",
            }),
        }
    }
}

/// A backend's responses from bytes, without I/O: [`ResponseReader::feed`] what arrived, then
/// take whole messages ([`ResponseReader::next_message`]) or the response to a command
/// ([`ResponseReader::next_response`]) until they return `Ok(None)`, and feed more.
///
/// Messages are framed by [`imapproxy_codec::Framer`] (literals included). Whatever is
/// buffered is bounded by the [`ResponseLimits`] (provided the caller feeds only after
/// `Ok(None)`, as the connector does): a longer message is [`Error::MessageTooLarge`],
/// more untagged data without a tagged reply is [`Error::UntaggedTooLarge`]. After an error
/// the connection is out of step; drop the reader.
///
/// ```
/// use imapproxy_pool::{Greeting, ResponseLimits, ResponseReader};
/// let mut r = ResponseReader::new(ResponseLimits::default());
/// r.feed(b"* OK [CAPABILITY IMAP4rev1] hi\r\n* 1 EXISTS\r\nP1 OK do");
/// let greeting = Greeting::parse(&r.next_message().unwrap().unwrap()).unwrap();
/// assert!(greeting.capabilities.unwrap().contains("IMAP4rev1"));
/// assert_eq!(r.next_response("P1").unwrap(), None);
/// r.feed(b"ne\r\n");
/// let resp = r.next_response("P1").unwrap().unwrap();
/// assert_eq!((resp.untagged.len(), resp.is_ok()), (1, true));
/// ```
pub struct ResponseReader {
    limits: ResponseLimits,
    buf: Vec<u8>,
    /// Where the next message starts in `buf` (bytes before it were returned).
    start: usize,
    /// How far past `start` the framer has scanned.
    scanned: usize,
    framer: Framer,
    /// Cost of the untagged messages returned since the last tagged line or continuation.
    untagged_run: usize,
    /// The response [`ResponseReader::next_response`] is collecting, and its cost.
    pending: Response,
    pending_cost: usize,
}

impl fmt::Debug for ResponseReader {
    // Never the bytes: they may be a user's mail, or SASL data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseReader")
            .field("limits", &self.limits)
            .field("buffered", &self.buffered())
            .field("pending_untagged", &self.pending.untagged.len())
            .finish()
    }
}

impl ResponseReader {
    /// An empty reader at a message boundary.
    pub fn new(limits: ResponseLimits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            framer: Framer::new(Direction::Server),
            untagged_run: 0,
            pending: Response::default(),
            pending_cost: 0,
        }
    }

    /// The bounds this reader enforces.
    pub fn limits(&self) -> ResponseLimits {
        self.limits
    }

    /// Appends bytes received from the backend.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into (after the buffered bytes), for the I/O layer: reading
    /// straight into it spares a copy and a stack array in every future that awaits a
    /// response.
    pub(crate) fn read_buf(&mut self) -> &mut Vec<u8> {
        self.compact();
        &mut self.buf
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Bytes fed and not yet returned in a message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Takes the bytes fed and not yet returned (normally none): they belong to whoever reads
    /// the stream next.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.compact();
        self.scanned = 0;
        self.framer = Framer::new(Direction::Server);
        std::mem::take(&mut self.buf)
    }

    /// The next whole message (a line with its literals, CRLF included), or `None` when the
    /// bytes fed so far do not complete one.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] when the message is (or would grow) past
    /// [`ResponseLimits::max_message`]; [`Error::UntaggedTooLarge`] when untagged messages
    /// without a tagged line or continuation request in between pass
    /// [`ResponseLimits::max_untagged`].
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let limit = self.limits.max_message;
        let unscanned = self
            .buf
            .get(self.start + self.scanned..)
            .unwrap_or_default();
        let Some((n, _frame)) = self.framer.advance(unscanned) else {
            self.scanned = self.buffered();
            return if self.scanned > limit {
                Err(Error::MessageTooLarge { limit })
            } else {
                Ok(None)
            };
        };
        let len = self.scanned + n;
        if len > limit {
            return Err(Error::MessageTooLarge { limit });
        }
        let msg = self.buf[self.start..self.start + len].to_vec();
        self.start += len;
        self.scanned = 0;
        if msg.starts_with(b"*") {
            self.untagged_run += cost(&msg);
            if self.untagged_run > self.limits.max_untagged {
                return Err(Error::UntaggedTooLarge {
                    limit: self.limits.max_untagged,
                });
            }
        } else {
            self.untagged_run = 0;
        }
        Ok(Some(msg))
    }

    /// The response to the command tagged `tag`: the messages before its tagged line, and
    /// that line; `None` while it is incomplete (call again with the same tag after feeding).
    ///
    /// # Errors
    /// As [`ResponseReader::next_message`]; also [`Error::UntaggedTooLarge`] when the
    /// messages before the tagged line (whatever their kind) pass
    /// [`ResponseLimits::max_untagged`], and [`Error::Bye`] for a `* BYE` (the server is
    /// closing the connection).
    pub fn next_response(&mut self, tag: &str) -> Result<Option<Response>, Error> {
        while let Some(msg) = self.next_message()? {
            if is_tagged(&msg, tag) {
                self.pending_cost = 0;
                let mut resp = std::mem::take(&mut self.pending);
                resp.tagged = msg;
                return Ok(Some(resp));
            }
            if let Some(bye) = bye(&msg) {
                return Err(bye);
            }
            self.pending_cost += cost(&msg);
            if self.pending_cost > self.limits.max_untagged {
                return Err(Error::UntaggedTooLarge {
                    limit: self.limits.max_untagged,
                });
            }
            self.pending.untagged.push(msg);
        }
        Ok(None)
    }
}

fn cost(msg: &[u8]) -> usize {
    msg.len() + ResponseLimits::PER_MESSAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(max_message: usize, max_untagged: usize) -> ResponseReader {
        ResponseReader::new(ResponseLimits {
            max_message,
            max_untagged,
        })
    }

    #[test]
    fn status_and_code_of_tagged_lines() {
        assert!(matches!(status_of(b"P1 OK done\r\n"), Some(Status::Ok)));
        assert!(matches!(status_of(b"P1 OK\r\n"), Some(Status::Ok)));
        assert!(matches!(
            status_of(b"P1 no [AUTHENTICATIONFAILED] x\r\n"),
            Some(Status::No)
        ));
        assert_eq!(status_of(b"P1 OKAY\r\n"), None);
        assert_eq!(
            response_code(b"P1 NO [AUTHENTICATIONFAILED] x\r\n").as_deref(),
            Some("AUTHENTICATIONFAILED")
        );
        assert_eq!(
            response_code(b"P1 NO [unavailable] x\r\n").as_deref(),
            Some("UNAVAILABLE")
        );
        assert_eq!(response_code(b"P1 NO x\r\n"), None);
        // A bracket in the text is not a code (RFC 9051 §7.1: the code comes first).
        assert_eq!(response_code(b"P1 NO see [FOO]\r\n"), None);
    }

    #[test]
    fn greetings_ok_bye_preauth_and_garbage() {
        let g = Greeting::parse(b"* OK [CAPABILITY IMAP4rev1 ID] ready\r\n").unwrap();
        assert!(g.capabilities.unwrap().contains("ID"));
        assert_eq!(
            Greeting::parse(b"* ok ready\r\n").unwrap(),
            Greeting { capabilities: None }
        );
        assert!(matches!(
            Greeting::parse(b"* BYE Too many connections\r\n"),
            Err(Error::GreetingBye { text }) if text == "Too many connections"
        ));
        assert!(matches!(
            Greeting::parse(b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n"),
            Err(Error::PreAuthGreeting)
        ));
        for bad in [
            &b"+ go\r\n"[..],
            b"A1 OK\r\n",
            b"* NO\r\n",
            b"*OK\r\n",
            b"\r\n",
        ] {
            assert!(
                matches!(Greeting::parse(bad), Err(Error::UnexpectedData { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn responses_are_whatever_the_split() {
        let stream =
            b"* 2 FETCH (BODY[] {5}\r\nP1 OK)\r\n+ go\r\nX9 OK other\r\nP1 OK done\r\nrest";
        for cut in 0..stream.len() {
            let mut r = reader(1024, 1024);
            r.feed(&stream[..cut]);
            let mut got = r.next_response("P1").unwrap();
            if got.is_none() {
                r.feed(&stream[cut..]);
                got = r.next_response("P1").unwrap();
            } else {
                r.feed(&stream[cut..]);
            }
            let got = got.unwrap();
            assert_eq!(got.tagged, b"P1 OK done\r\n");
            assert_eq!(got.untagged.len(), 3, "cut at {cut}");
            assert_eq!(r.take_buffered(), b"rest");
        }
    }

    #[test]
    fn bye_ends_the_response() {
        let mut r = reader(1024, 1024);
        r.feed(b"* BYE shutting down\r\nP1 OK\r\n");
        assert!(
            matches!(r.next_response("P1"), Err(Error::Bye { text }) if text == "shutting down")
        );
    }

    #[test]
    fn one_message_is_bounded_complete_or_not() {
        let mut r = reader(16, 1024);
        r.feed(b"* 12345678901234567890\r\n");
        assert!(matches!(
            r.next_message(),
            Err(Error::MessageTooLarge { limit: 16 })
        ));
        let mut r = reader(16, 1024);
        r.feed(b"* 12345678901234567");
        assert!(matches!(
            r.next_message(),
            Err(Error::MessageTooLarge { limit: 16 })
        ));
        let mut r = reader(16, 1024);
        r.feed(b"* 123456789012\r\n"); // exactly 16 bytes
        assert!(r.next_message().unwrap().is_some());
    }

    #[test]
    fn a_flood_of_untagged_data_stops_at_the_bound() {
        const LIMIT: usize = 64 * 1024;
        let mut r = reader(1024, LIMIT);
        let chunk = b"* 1 EXISTS\r\n".repeat(512);
        let mut fed = 0usize;
        let err = loop {
            r.feed(&chunk);
            fed += chunk.len();
            assert!(fed < 64 * 1024 * 1024, "never stopped");
            match r.next_response("P1") {
                Ok(None) => {}
                Ok(Some(_)) => panic!("no tagged line was sent"),
                Err(e) => break e,
            }
            assert!(r.buffered() <= 1024);
        };
        assert!(
            matches!(err, Error::UntaggedTooLarge { limit: LIMIT }),
            "{err:?}"
        );
        assert!(fed <= LIMIT + chunk.len(), "read {fed} bytes");
    }

    #[test]
    fn empty_lines_count_too() {
        let mut r = reader(1024, 10 * ResponseLimits::PER_MESSAGE);
        r.feed(&b"\r\n".repeat(20));
        assert!(matches!(
            r.next_response("P1"),
            Err(Error::UntaggedTooLarge { .. })
        ));
    }

    #[test]
    fn a_tagged_line_or_continuation_resets_the_untagged_run() {
        let mut r = reader(1024, 100);
        for _ in 0..10 {
            r.feed(b"* 1 EXISTS\r\n* 2 EXISTS\r\n+ more\r\n");
            for _ in 0..3 {
                r.next_message().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn debug_shows_no_bytes() {
        let mut r = reader(1024, 1024);
        r.feed(b"* 1 FETCH (BODY[] {6}\r\nsecret");
        assert_eq!(r.next_response("P1").unwrap(), None);
        let dbg = format!("{r:?}");
        assert!(
            !dbg.contains("secret") && !dbg.contains("115, 101"),
            "{dbg}"
        );
    }
}
