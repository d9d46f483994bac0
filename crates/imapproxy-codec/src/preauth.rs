//! Pre-login command parsing: the proxy answers these commands itself (DESIGN.md, "A session").
//!
//! [`PreAuthParser`] frames the client's bytes into complete commands under tight limits (line
//! and literal sizes), asks the session to send `+` for synchronizing literals, and decodes each
//! complete command with imap-codec's `CommandCodec` (or `AuthenticateDataCodec` for SASL
//! continuation lines). Framing is our own, bounded, code rather than imap-codec's
//! `Fragmentizer`: the latter buffers whatever it is given and only reports an overlong line
//! when the line ends, while here an overlong line is reported as soon as it crosses the bound
//! and its rest is discarded as it arrives, so nothing beyond the bound is ever held.
//!
//! Secrets: decoded passwords and SASL data are copied into our [`Secret`], which never prints
//! its content. imap-codec's own `Secret` does print in debug builds, so decoded imap-codec
//! values are never `Debug`-formatted here. Consumed input is zeroed before it is dropped.
//!
//! ```
//! use imapproxy_codec::{PreAuthCommand, PreAuthEvent, PreAuthLimits, PreAuthParser};
//!
//! let mut p = PreAuthParser::new(PreAuthLimits::default());
//! p.push(b"a1 LOGIN alice {6}\r\n");
//! assert!(matches!(p.next_event(), Some(PreAuthEvent::ContinuationNeeded)));
//! assert!(p.next_event().is_none()); // waiting for the literal
//! p.push(b"s3cr3t\r\n");
//! match p.next_event() {
//!     Some(PreAuthEvent::Command { tag, command: PreAuthCommand::Login { username, password } }) => {
//!         assert_eq!(tag.as_bytes(), b"a1");
//!         assert_eq!(username, "alice");
//!         assert_eq!(password.expose(), b"s3cr3t");
//!     }
//!     _ => unreachable!(),
//! }
//! ```

use imap_codec::{
    AuthenticateDataCodec, CommandCodec,
    decode::Decoder,
    imap_types::{
        auth::{AuthMechanism, AuthenticateData},
        command::CommandBody,
    },
};
use std::fmt;

use memchr::memchr;
use zeroize::Zeroize;

use crate::{Error, Secret, Tag};

/// Size limits for pre-auth input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreAuthLimits {
    /// Longest line, line end included (default 8192).
    pub max_line: usize,
    /// Largest literal (default 4096, the `LITERAL-` bound of RFC 7888 §5). A whole command,
    /// lines and literals together, may not exceed `max_line + max_literal`.
    pub max_literal: u32,
}

impl Default for PreAuthLimits {
    fn default() -> Self {
        Self {
            max_line: 8192,
            max_literal: 4096,
        }
    }
}

impl PreAuthLimits {
    /// Bound on one whole command and on what the parser buffers between reads.
    pub fn max_message(&self) -> usize {
        self.max_line.saturating_add(self.max_literal as usize)
    }
}

/// What the session has to act on next.
#[derive(Debug)]
#[non_exhaustive]
pub enum PreAuthEvent {
    /// A synchronizing literal `{n}` was announced within limits: the session must answer
    /// `+ ...` (RFC 9051 §7.5) before the client sends it.
    ContinuationNeeded,
    /// A complete, valid command.
    Command {
        /// The command's tag.
        tag: Tag,
        /// The decoded command.
        command: PreAuthCommand,
    },
    /// Parse failure: answer `tag BAD <reason>` (or `* BAD` without a tag). `reason` is ours,
    /// short and never echoes input.
    Bad {
        /// The tag, recovered from the start of the line when it is a valid tag.
        tag: Option<Tag>,
        /// Human-readable reason.
        reason: &'static str,
    },
    /// A line or literal over the limits: answer `BAD` (tagged when the tag is known). The
    /// offending message has been discarded without buffering it. `fatal` means the stream
    /// cannot be resynchronised (a non-synchronizing literal over the limit, whose bytes the
    /// client sends anyway, RFC 7888 §4): send `BYE` and close. The parser then ignores input.
    TooLarge {
        /// The tag, when the message started with a valid one.
        tag: Option<Tag>,
        /// The session must close the connection.
        fatal: bool,
        /// The message was an `ID` command. Its fields are informational (RFC 2971), and
        /// servers accept 30 values of 1,024 octets, far over a pre-auth line bound: a proxy
        /// may answer it `OK` without them.
        id: bool,
    },
    /// A SASL continuation line, only in [`PreAuthParser::expect_auth_data`] mode.
    AuthData(AuthData),
}

/// A line sent in answer to an `AUTHENTICATE` continuation (RFC 9051 §6.2.2).
#[derive(Debug)]
pub enum AuthData {
    /// The client sent `*`: abort the exchange, answer `tag BAD`.
    Cancel,
    /// The base64-decoded response.
    Data(Secret<Vec<u8>>),
}

/// A pre-auth command, decoded.
#[derive(Debug)]
#[non_exhaustive]
pub enum PreAuthCommand {
    /// `CAPABILITY`
    Capability,
    /// `NOOP`
    Noop,
    /// `LOGOUT`
    Logout,
    /// `STARTTLS`: after answering, call [`PreAuthParser::clear`] (RFC 9051 §6.2.1).
    StartTls,
    /// `ID NIL` (`None`) or the client's field/value list (RFC 2971). Non-UTF-8 bytes are
    /// replaced with U+FFFD.
    Id(Option<Vec<(String, Option<String>)>>),
    /// `LOGIN user password`, in atom, quoted or literal form.
    Login {
        /// User name (must be UTF-8, else the command is `Bad`).
        username: String,
        /// Password bytes.
        password: Secret<Vec<u8>>,
    },
    /// `AUTHENTICATE mech [initial-response]` (RFC 4959 SASL-IR; `=` is an empty response).
    Authenticate {
        /// The SASL mechanism.
        mechanism: Mechanism,
        /// The decoded initial response, if any.
        initial_response: Option<Secret<Vec<u8>>>,
    },
    /// Any other valid command (`SELECT` before login etc.): the session answers `BAD`/`NO`.
    Other {
        /// The command name, upper case.
        name: String,
    },
}

/// A SASL mechanism name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616).
    Plain,
    /// `LOGIN` (draft-murchison-sasl-login).
    Login,
    /// Anything else, upper-cased.
    Other(String),
}

/// Incremental, bounded pre-auth parser. See the [module docs](self).
///
/// Use: `push` what was read, then call `next_event` until it returns `None`, then read again
/// (at most [`wanted`](Self::wanted) bytes to keep the buffer within
/// [`PreAuthLimits::max_message`]).
///
/// The buffer holds `LOGIN` lines and SASL responses, so `Debug` shows only its length, and
/// the buffer (its whole capacity, where consumed bytes may linger) is zeroed on drop.
pub struct PreAuthParser {
    limits: PreAuthLimits,
    buf: Vec<u8>,
    /// Start of the current line in `buf` (after the literals of this message).
    line_start: usize,
    /// Bytes of `buf` already searched for a line end.
    scanned: usize,
    /// The current message waits for literal bytes up to this offset of `buf`.
    literal_end: Option<usize>,
    auth_data: bool,
    /// An overlong line was reported; drop input up to its end.
    skip_line: bool,
    /// A fatal error was reported; ignore all input.
    dead: bool,
}

impl fmt::Debug for PreAuthParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreAuthParser")
            .field("limits", &self.limits)
            .field("buffered", &self.buf.len())
            .field("auth_data", &self.auth_data)
            .field("skip_line", &self.skip_line)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

impl Drop for PreAuthParser {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl PreAuthParser {
    /// A parser expecting commands.
    pub fn new(limits: PreAuthLimits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            line_start: 0,
            scanned: 0,
            literal_end: None,
            auth_data: false,
            skip_line: false,
            dead: false,
        }
    }

    /// Appends bytes read from the client. Call [`next_event`](Self::next_event) until it
    /// returns `None` before pushing more, so at most one read is buffered beyond the bound.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.dead {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// How many bytes the caller may read next without the buffer exceeding
    /// [`PreAuthLimits::max_message`]; at least 1 after `next_event` returned `None`, unless a
    /// fatal error was reported (then 0).
    pub fn wanted(&self) -> usize {
        if self.dead {
            0
        } else {
            self.limits.max_message().saturating_sub(self.buf.len())
        }
    }

    /// Switches how the next lines are interpreted: as SASL data (`AUTHENTICATE` continuation
    /// lines, base64 or `*` to cancel) when `yes`, else as commands.
    pub fn expect_auth_data(&mut self, yes: bool) {
        self.auth_data = yes;
    }

    /// Drops everything buffered and returns to command mode (RFC 9051 §6.2.1: discard what was
    /// pipelined behind `STARTTLS` before the TLS handshake).
    pub fn clear(&mut self) {
        self.consume(self.buf.len());
        self.skip_line = false;
        self.auth_data = false;
    }

    /// Takes every byte buffered after the last event, leaving the parser empty.
    ///
    /// After a successful login these are commands the client pipelined behind it (RFC 9051
    /// §5.5), which belong to the backend session and must be forwarded unparsed. Nothing is
    /// returned after a fatal error.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        let rest = if self.dead {
            Vec::new()
        } else {
            std::mem::take(&mut self.buf)
        };
        self.line_start = 0;
        self.scanned = 0;
        self.literal_end = None;
        self.skip_line = false;
        rest
    }

    /// Bytes currently buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Pulls the next event out of the buffered bytes, or `None` if more input is needed.
    pub fn next_event(&mut self) -> Option<PreAuthEvent> {
        loop {
            if self.dead {
                return None;
            }
            if self.skip_line {
                let Some(i) = memchr(b'\n', &self.buf) else {
                    self.consume(self.buf.len());
                    return None;
                };
                self.consume(i + 1);
                self.skip_line = false;
                continue;
            }
            if let Some(end) = self.literal_end {
                if self.buf.len() < end {
                    return None;
                }
                self.literal_end = None;
                self.line_start = end;
                self.scanned = end;
            }
            let found = self.buf.get(self.scanned..).and_then(|s| memchr(b'\n', s));
            let Some(i) = found else {
                self.scanned = self.buf.len();
                let line_len = self.buf.len() - self.line_start;
                // `>=`: an unfinished line already at the bound can only end over it.
                if line_len >= self.limits.max_line || self.buf.len() >= self.limits.max_message() {
                    let tag = self.message_tag();
                    let id = self.message_is_id();
                    self.consume(self.buf.len());
                    self.skip_line = true;
                    return Some(PreAuthEvent::TooLarge {
                        tag,
                        fatal: false,
                        id,
                    });
                }
                return None;
            };
            let line_end = self.scanned + i + 1;
            if line_end - self.line_start > self.limits.max_line
                || line_end > self.limits.max_message()
            {
                let tag = self.message_tag();
                let id = self.message_is_id();
                self.consume(line_end);
                return Some(PreAuthEvent::TooLarge {
                    tag,
                    fatal: false,
                    id,
                });
            }
            if self.auth_data {
                let event = self.decode_auth_data(line_end);
                self.consume(line_end);
                return Some(event);
            }
            let line = self.buf.get(self.line_start..line_end).unwrap_or(&[]);
            if let Some((n, sync)) = literal_announcement(line) {
                let end = usize::try_from(n)
                    .ok()
                    .and_then(|n| line_end.checked_add(n));
                match end {
                    Some(end)
                        if n <= u64::from(self.limits.max_literal)
                            && end <= self.limits.max_message() =>
                    {
                        self.literal_end = Some(end);
                        if sync {
                            return Some(PreAuthEvent::ContinuationNeeded);
                        }
                        continue;
                    }
                    _ => {
                        let tag = self.message_tag();
                        let id = self.message_is_id();
                        if sync {
                            // RFC 9051 §7.5: no `+` is sent, so the client sends no literal
                            // and the next line starts a new command.
                            self.consume(line_end);
                            return Some(PreAuthEvent::TooLarge {
                                tag,
                                fatal: false,
                                id,
                            });
                        }
                        self.consume(self.buf.len());
                        self.dead = true;
                        return Some(PreAuthEvent::TooLarge {
                            tag,
                            fatal: true,
                            id: false,
                        });
                    }
                }
            }
            let event = self.decode_command(line_end);
            self.consume(line_end);
            return Some(event);
        }
    }

    /// Zeroes and drops `..n` of the buffer and starts a new message.
    fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        if let Some(done) = self.buf.get_mut(..n) {
            done.zeroize();
        }
        self.buf.drain(..n);
        self.line_start = 0;
        self.scanned = 0;
        self.literal_end = None;
    }

    /// The tag at the start of the current message, if it is a valid one.
    fn message_tag(&self) -> Option<Tag> {
        recover_tag(&self.buf)
    }

    /// Whether the buffered message is `tag ID ...`.
    fn message_is_id(&self) -> bool {
        let mut words = self.buf.splitn(3, |&b| b == b' ');
        let (Some(_tag), Some(name), Some(_)) = (words.next(), words.next(), words.next()) else {
            return false;
        };
        name.eq_ignore_ascii_case(b"ID")
    }

    fn decode_command(&self, end: usize) -> PreAuthEvent {
        let msg = self.buf.get(..end).unwrap_or(&[]);
        let bad = |reason| PreAuthEvent::Bad {
            tag: recover_tag(msg),
            reason,
        };
        match CommandCodec::default().decode(msg) {
            Ok(([], cmd)) => {
                let Ok(tag) = Tag::new(cmd.tag.inner().as_bytes()) else {
                    return bad("Tag too long");
                };
                match convert(cmd.body) {
                    Ok(command) => PreAuthEvent::Command { tag, command },
                    Err(reason) => bad(reason),
                }
            }
            Ok(_) | Err(_) => bad("Invalid command or arguments"),
        }
    }

    fn decode_auth_data(&self, end: usize) -> PreAuthEvent {
        let line = self.buf.get(..end).unwrap_or(&[]);
        match AuthenticateDataCodec::default().decode(line) {
            Ok(([], data)) => PreAuthEvent::AuthData(match data {
                AuthenticateData::Cancel => AuthData::Cancel,
                AuthenticateData::Continue(secret) => {
                    AuthData::Data(Secret::new(secret.declassify().to_vec()))
                }
            }),
            Ok(_) | Err(_) => PreAuthEvent::Bad {
                tag: None,
                reason: "Invalid base64 in authentication data",
            },
        }
    }
}

/// Tag recovery for lines imap-codec rejects (its `Failed` carries no tag): the first word,
/// if it is a valid tag, so every bad line still gets a tagged `BAD` (RFC 9051 §7.1.3).
fn recover_tag(msg: &[u8]) -> Option<Tag> {
    let end = memchr(b' ', msg)?;
    Tag::new(msg.get(..end)?).ok()
}

/// `{n}` / `{n+}` / `~{n}` just before the line end (RFC 9051 §4.3, RFC 7888): `(n, sync)`.
/// Sizes beyond `u64` are reported as `u64::MAX` (too large either way).
fn literal_announcement(line: &[u8]) -> Option<(u64, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_suffix(b"}")?;
    let (line, sync) = match line.strip_suffix(b"+") {
        Some(l) => (l, false),
        None => (line, true),
    };
    let open = memchr::memrchr(b'{', line)?;
    let digits = line.get(open + 1..)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some((n, sync))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn convert(body: CommandBody<'_>) -> Result<PreAuthCommand, &'static str> {
    Ok(match body {
        CommandBody::Capability => PreAuthCommand::Capability,
        CommandBody::Noop => PreAuthCommand::Noop,
        CommandBody::Logout => PreAuthCommand::Logout,
        CommandBody::StartTLS => PreAuthCommand::StartTls,
        CommandBody::Id { parameters } => PreAuthCommand::Id(parameters.map(|params| {
            params
                .into_iter()
                .map(|(k, v)| (lossy(k.as_ref()), v.0.map(|v| lossy(v.as_ref()))))
                .collect()
        })),
        CommandBody::Login { username, password } => PreAuthCommand::Login {
            username: String::from_utf8(username.as_ref().to_vec())
                .map_err(|_| "User name is not UTF-8")?,
            password: Secret::new(password.declassify().as_ref().to_vec()),
        },
        CommandBody::Authenticate {
            mechanism,
            initial_response,
        } => PreAuthCommand::Authenticate {
            mechanism: match mechanism {
                AuthMechanism::Plain => Mechanism::Plain,
                AuthMechanism::Login => Mechanism::Login,
                other => Mechanism::Other(other.as_ref().to_ascii_uppercase()),
            },
            initial_response: initial_response.map(|ir| Secret::new(ir.declassify().to_vec())),
        },
        other => PreAuthCommand::Other {
            name: other.name().to_ascii_uppercase(),
        },
    })
}

/// A parsed SASL PLAIN response: `(authzid, authcid, password)`.
pub type SaslPlain = (Option<String>, String, Secret<Vec<u8>>);

/// Splits a decoded SASL PLAIN response (RFC 4616 §2: `[authzid] NUL authcid NUL passwd`).
/// Returns `(authzid, authcid, password)`; an empty authzid is `None`.
///
/// ```
/// let (authz, user, pass) = imapproxy_codec::parse_sasl_plain(b"\0alice\0pw").unwrap();
/// assert_eq!((authz, user.as_str(), pass.expose().as_slice()), (None, "alice", &b"pw"[..]));
/// ```
pub fn parse_sasl_plain(data: &[u8]) -> Result<SaslPlain, Error> {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::SaslPlain("expected two NUL separators"));
    };
    if passwd.contains(&0) {
        return Err(Error::SaslPlain("more than two NUL separators"));
    }
    if authcid.is_empty() {
        return Err(Error::SaslPlain("empty authentication identity"));
    }
    if passwd.is_empty() {
        return Err(Error::SaslPlain("empty password"));
    }
    let utf8 = |b: &[u8]| {
        String::from_utf8(b.to_vec()).map_err(|_| Error::SaslPlain("identity is not UTF-8"))
    };
    let authzid = if authzid.is_empty() {
        None
    } else {
        Some(utf8(authzid)?)
    };
    Ok((authzid, utf8(authcid)?, Secret::new(passwd.to_vec())))
}
