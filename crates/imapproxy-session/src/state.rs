//! What the proxy knows about a logged-in session, and from which bytes.
//!
//! The relay feeds every client command and every server response (as the framer delimits
//! them) into one [`SessionState`]. The server is the source of truth: a command only counts
//! once its tagged reply says what happened, and replies the proxy cannot explain tell it that
//! its picture is wrong.
//!
//! # Condition
//!
//! - **Clean**: every command the client sent is on the allowlist of
//!   [`imapproxy_codec::command`] (commands that leave no connection state beyond the selected
//!   mailbox, with their state-bearing arguments absent). After `UNSELECT` the backend session
//!   is as fresh as a new login: it may serve the next client of the same user.
//! - **Tainted**: the client ran something that leaves state the proxy cannot reset (`ENABLE`,
//!   `NOTIFY`, `COMPRESS`, an argument that switches CONDSTORE on, a `SAVE`d search, a vendor
//!   command, a command too long to inspect), or the server revealed such state (`* ENABLED`,
//!   `MODSEQ` data the client did not visibly ask for). The session goes on, but its backend
//!   connection is closed at the end, never reused.
//! - **Desynchronised**: the proxy no longer knows where commands start or what the server
//!   executed: a tagged reply with a tag it did not see (a command hidden from the framer, as
//!   in `a NOOP {20+}` whose "literal" Dovecot reads as the next command), a literal on a
//!   command that takes no arguments, `BAD`,
//!   `BYE`, more commands in flight than it tracks. The relay only forwards bytes from then on
//!   (the client's `LOGOUT` goes to the server), and the connection is closed at the end.
//!
//! The condition only gets worse. [`SessionState::reusable`] is the one place that decides
//! whether a backend session may be reused.
//!
//! # Tracked from the bytes
//!
//! | what | from |
//! |---|---|
//! | commands in flight: tag, effect, `SELECT` target | each client command, removed by its tagged reply |
//! | selected mailbox, read-only or not | tagged `OK` to `SELECT`/`EXAMINE` (`[READ-ONLY]`), `NO` to them, `OK` to `UNSELECT`/`CLOSE`, `* OK [CLOSED]` |
//! | UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, EXISTS | `* OK [UIDVALIDITY n]`, `[UIDNEXT n]`, `[HIGHESTMODSEQ n]`, `* n EXISTS` |
//! | enabled extensions | `* ENABLED ...` |
//! | IDLE | the client's `IDLE` and `DONE` |
//!
//! The mailbox facts and enabled extensions are what re-homing a session onto another backend
//! connection will replay; only a clean or tainted (never a desynchronised) session can be
//! re-homed.

use std::collections::VecDeque;
use std::time::Instant;

use imapproxy_codec::CommandName;
use imapproxy_codec::command::{self, Effect, Taint};
use imapproxy_codec::framer::{Frame, FrameKind, Status, UntaggedKind};
use imapproxy_codec::{Tag, response};

use crate::command_metrics::{Answered, CommandTiming};

/// Commands in flight the state tracks; more make the session desynchronised.
const MAX_OUTSTANDING: usize = 1024;
/// Longest command kept to be sent again on another backend connection.
const MAX_REPLAY: usize = 4096;

/// How far the proxy can trust its picture of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Condition {
    Clean,
    Tainted(Taint),
    Desynchronised(Desync),
}

impl Condition {
    fn severity(self) -> u8 {
        match self {
            Self::Clean => 0,
            Self::Tainted(_) => 1,
            Self::Desynchronised(_) => 2,
        }
    }

    /// A label for logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Tainted(t) => t.as_str(),
            Self::Desynchronised(d) => d.as_str(),
        }
    }
}

/// Why the proxy lost track of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Desync {
    /// A tagged reply whose tag no command in flight carries.
    UnknownTag,
    /// A literal on a command that takes no arguments: the server reads it as commands.
    HiddenCommand,
    /// `BAD` from the server.
    Bad,
    /// `BYE` from the server.
    Bye,
    /// A response that is not one (no valid tag or status).
    Malformed,
    /// More commands in flight than tracked.
    TooManyOutstanding,
}

impl Desync {
    fn as_str(self) -> &'static str {
        match self {
            Self::UnknownTag => "desync_unknown_tag",
            Self::HiddenCommand => "desync_hidden_command",
            Self::Bad => "desync_bad",
            Self::Bye => "desync_bye",
            Self::Malformed => "desync_malformed",
            Self::TooManyOutstanding => "desync_too_many_outstanding",
        }
    }
}

/// The selected mailbox (or the one being selected) as the server described it. UIDVALIDITY,
/// UIDNEXT and message counts are 32-bit numbers (RFC 9051 §9 `nz-number`, `number`): one the
/// server sends beyond that is not kept (unknown, so the session cannot move rather than
/// move on a wrong number), and every selected mailbox costs 80 bytes, not 112.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mailbox {
    /// The `SELECT`/`EXAMINE` argument as the client sent it, when it was an atom or a
    /// quoted string on the command line.
    pub name: Option<Box<[u8]>>,
    pub read_only: bool,
    pub uidvalidity: Option<u32>,
    /// UIDNEXT when the mailbox was selected (the baseline of [`Mailbox::expunged`]).
    pub uidnext: Option<u32>,
    /// A 63-bit mod-sequence (RFC 7162 §7).
    pub highest_modseq: Option<u64>,
    /// Messages the client knows of now: EXISTS as last said, less the EXPUNGEs since.
    pub exists: Option<u32>,
    /// EXISTS when the mailbox was selected.
    pub exists_at_select: Option<u32>,
    /// `* n EXPUNGE` responses the client received since the mailbox was selected.
    pub expunged: u64,
}

impl Mailbox {
    /// Whether the client's message sequence numbers hold for a mailbox that another server
    /// connection now describes with `exists` and `uidnext` (same UIDVALIDITY). From the
    /// selection's baseline (E0 messages, UIDNEXT U0) the server assigned U - U0 UIDs and
    /// removed E0 + (U - U0) - E messages; when that equals the EXPUNGEs the client received,
    /// the client has seen every removal, and the messages it does not know of yet all come
    /// after the ones it knows. A UID the server skipped counts as a removal: the proof then
    /// fails, which ends the session rather than risk wrong sequence numbers.
    pub(crate) fn numbering_holds(&self, exists: u32, uidnext: u32) -> bool {
        let (Some(e0), Some(u0), Some(known)) = (self.exists_at_select, self.uidnext, self.exists)
        else {
            return false;
        };
        let Some(assigned) = uidnext.checked_sub(u0) else {
            return false;
        };
        // Server-sent numbers: no arithmetic on them may overflow (in 64 bits none can).
        let removed = (u64::from(e0) + u64::from(assigned)).checked_sub(u64::from(exists));
        removed == Some(self.expunged) && exists >= known
    }
}

/// The tag of a command in flight: inline up to 22 bytes (the tags clients send), boxed
/// beyond, so that a command in flight (and the `IDLE` every waiting session keeps) takes 96
/// bytes rather than the 136 of a [`Tag`]'s inline 64.
#[derive(Clone, Debug)]
pub(crate) enum PendingTag {
    Inline {
        len: u8,
        bytes: [u8; PendingTag::INLINE],
    },
    Boxed(Box<[u8]>),
}

impl PendingTag {
    const INLINE: usize = 22;

    fn new(tag: &Tag) -> Self {
        let t = tag.as_bytes();
        match u8::try_from(t.len()) {
            Ok(len) if t.len() <= Self::INLINE => {
                let mut bytes = [0; Self::INLINE];
                bytes[..t.len()].copy_from_slice(t);
                Self::Inline { len, bytes }
            }
            _ => Self::Boxed(t.into()),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(bytes),
            Self::Boxed(b) => b,
        }
    }

    fn is(&self, tag: &Tag) -> bool {
        self.as_bytes() == tag.as_bytes()
    }
}

/// A command sent and not answered yet.
#[derive(Clone, Debug)]
struct Pending {
    tag: PendingTag,
    /// For its latency metrics.
    name: CommandName,
    timing: CommandTiming,
    effect: Effect,
    mailbox: Option<Box<[u8]>>,
    /// The whole command, kept when it is safe to send again on another connection.
    replay: Option<Box<[u8]>>,
    /// [`SessionState::responses`] when it was sent: any later response may belong to it.
    responses_at: u64,
}

/// A command in flight when the backend connection was lost.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub tag: PendingTag,
    /// The command's bytes, when it is safe to send again and no byte of any response
    /// reached the client since it was sent.
    pub replay: Option<Box<[u8]>>,
    pub idle: bool,
    /// A `SELECT`/`EXAMINE`: when it is not sent again, the client learns it failed, and a
    /// failed `SELECT` leaves no mailbox selected (RFC 9051 §6.3.2).
    pub select: bool,
}

/// Commands that may be sent twice without a different outcome (issue #9): reads, and
/// `STORE` of absolute flag values. `IDLE` is not among them: a re-home starts it again from
/// its tag alone (see `InFlight::idle`), so its bytes are not kept by every session that
/// waits in it.
fn replay_safe(name: CommandName, message: &[u8]) -> bool {
    use CommandName as C;
    match name {
        C::Fetch
        | C::UidFetch
        | C::Search
        | C::UidSearch
        | C::Sort
        | C::UidSort
        | C::Thread
        | C::UidThread
        | C::Status
        | C::List
        | C::Lsub
        | C::Noop
        | C::Check
        | C::Capability
        | C::Namespace
        | C::Select
        | C::Examine => true,
        // `tag [UID] STORE set FLAGS[.SILENT] (...)`: the data item is the fourth or fifth word.
        C::Store | C::UidStore => message
            .split(|&b| b == b' ')
            .take(5)
            .any(|w| w.eq_ignore_ascii_case(b"FLAGS") || w.eq_ignore_ascii_case(b"FLAGS.SILENT")),
        _ => false,
    }
}

/// The proxy's model of one logged-in session: see the module docs.
#[derive(Debug)]
pub(crate) struct SessionState {
    condition: Condition,
    /// Oldest first. A deque: servers answer in order (mostly), so the answered command is
    /// the front one, and a pipelined burst of hundreds costs no shifting of the rest.
    outstanding: VecDeque<Pending>,
    selected: Option<Box<Mailbox>>,
    /// Filled by the responses to a `SELECT`/`EXAMINE` in flight; becomes `selected` on `OK`.
    selecting: Option<Box<Mailbox>>,
    /// Extensions the server said it enabled (`* ENABLED`), upper-cased.
    enabled: Vec<Box<str>>,
    /// Every taint seen (a bit per [`Taint`]), for deciding what can be replayed.
    taints: u32,
    idling: bool,
    /// The server accepted the client's `IDLE` with `+` (and the client has not said `DONE`).
    idle_continued: bool,
    /// The client's `LOGOUT` went to the server.
    logout_sent: bool,
    /// The server answered the command being read before its end (see
    /// [`SessionState::answered_early`]).
    answered_early: Option<Box<Tag>>,
    /// Untagged responses and continuations received so far.
    responses: u64,
}

impl Default for SessionState {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionState {
    pub(crate) fn new() -> Self {
        Self {
            condition: Condition::Clean,
            outstanding: VecDeque::new(),
            selected: None,
            selecting: None,
            enabled: Vec::new(),
            taints: 0,
            idling: false,
            idle_continued: false,
            logout_sent: false,
            answered_early: None,
            responses: 0,
        }
    }

    pub(crate) fn condition(&self) -> Condition {
        self.condition
    }

    pub(crate) fn is_desynchronised(&self) -> bool {
        matches!(self.condition, Condition::Desynchronised(_))
    }

    pub(crate) fn idling(&self) -> bool {
        self.idling
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The selected mailbox as last described by the server.
    pub(crate) fn selected(&self) -> Option<&Mailbox> {
        self.selected.as_deref()
    }

    /// Extensions enabled on the connection.
    pub(crate) fn enabled(&self) -> &[Box<str>] {
        &self.enabled
    }

    /// Whether the backend session may serve another client once this one is done, given that
    /// nothing is half-sent in either direction (`quiet`). The single place that decides.
    pub(crate) fn reusable(&self, quiet: bool) -> bool {
        quiet && self.condition == Condition::Clean && !self.idling && self.outstanding.is_empty()
    }

    fn worsen(&mut self, to: Condition) {
        if let Condition::Tainted(t) = to {
            self.taints |= 1 << taint_bit(t);
        }
        if to.severity() > self.condition.severity() {
            tracing::debug!(condition = to.as_str(), "session state");
            self.condition = to;
        }
    }

    /// A command the client sent, whole (`message`, when the relay held all of it) or not,
    /// completed by bytes read at `at`. Returns its effect.
    pub(crate) fn on_command(
        &mut self,
        frame: &Frame,
        message: Option<&[u8]>,
        at: Instant,
    ) -> Effect {
        let FrameKind::Command(name) = frame.kind else {
            return Effect::Stateless;
        };
        if name == CommandName::Done && frame.tag.is_none() {
            self.idling = false;
            self.idle_continued = false;
            return Effect::Stateless;
        }
        let effect = command::inspect(name, message, frame.literals);
        match effect {
            Effect::Taints(t) => self.worsen(Condition::Tainted(t)),
            Effect::Desynchronises => {
                self.worsen(Condition::Desynchronised(Desync::HiddenCommand));
            }
            Effect::Idle => self.idling = true,
            Effect::Logout => self.logout_sent = true,
            _ => {}
        }
        let Some(tag) = frame.tag else {
            // A command line without a readable tag: its reply cannot be matched.
            self.worsen(Condition::Tainted(Taint::Unlisted));
            return effect;
        };
        if self.answered_early.take_if(|t| **t == tag).is_some() {
            // Its reply came while its literal was still streaming.
            if effect == Effect::Idle {
                self.idling = false;
            }
            return effect;
        }
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.worsen(Condition::Desynchronised(Desync::TooManyOutstanding));
            return effect;
        }
        let mailbox = match effect {
            Effect::Select { .. } => message
                .and_then(command::mailbox_argument)
                .map(Box::<[u8]>::from),
            _ => None,
        };
        let replay = message
            .filter(|m| m.len() <= MAX_REPLAY && frame.literals == 0 && replay_safe(name, m))
            .map(Box::<[u8]>::from);
        self.push_pending(Pending {
            tag: PendingTag::new(&tag),
            name,
            timing: CommandTiming::received(at),
            effect,
            mailbox,
            replay,
            responses_at: self.responses,
        });
        effect
    }

    /// Whether a command in flight has not been all forwarded to the server yet.
    pub(crate) fn awaiting_forward(&self) -> bool {
        self.outstanding
            .back()
            .is_some_and(|p| !p.timing.is_forwarded())
    }

    /// Every command so far reached the server at `at`. Those not forwarded yet are the
    /// newest (commands go out in the order they came), so the walk stops at the first
    /// forwarded one.
    pub(crate) fn forwarded(&mut self, at: Instant) {
        for p in self.outstanding.iter_mut().rev() {
            if p.timing.is_forwarded() {
                break;
            }
            p.timing.forwarded(at);
        }
    }

    /// Whether a command with this tag is in flight.
    pub(crate) fn is_outstanding(&self, tag: &Tag) -> bool {
        self.outstanding.iter().any(|p| p.tag.is(tag))
    }

    /// A server response; `message` is the whole response when the relay held all of it.
    /// Returns the command a tagged response answered.
    pub(crate) fn on_response(
        &mut self,
        frame: &Frame,
        message: Option<&[u8]>,
    ) -> Option<Answered> {
        match frame.kind {
            FrameKind::Tagged(status) => return self.on_tagged(frame.tag, status, message),
            FrameKind::Untagged(kind) => {
                self.responses += 1;
                self.on_untagged(kind, message);
            }
            FrameKind::Continuation => {
                self.responses += 1;
                if self.idling {
                    self.idle_continued = true;
                }
            }
            _ => {}
        }
        None
    }

    /// Whether the server accepted the client's `IDLE` with `+` and the client has not said
    /// `DONE`.
    pub(crate) fn idle_continued(&self) -> bool {
        self.idle_continued && self.idling
    }

    /// Whether the client's `LOGOUT` went to the server (a `BYE` and the end of the
    /// connection are then its answer, not a failure).
    pub(crate) fn logging_out(&self) -> bool {
        self.logout_sent
    }

    /// Whether the only command in flight is an `IDLE` the server accepted and the client
    /// has not ended: the session waits for news, and may move.
    pub(crate) fn idle_established(&self) -> bool {
        self.idle_continued
            && self.idling
            && self.outstanding.len() == 1
            && self
                .outstanding
                .front()
                .is_some_and(|p| matches!(p.effect, Effect::Idle))
    }

    /// Why the session cannot be replayed on another backend connection, if it cannot: the
    /// proxy must know where commands start, and every state it carries must be one it can
    /// set up again (`ENABLE`d extensions, CONDSTORE switched on by an argument, the selected
    /// mailbox by a name it saw).
    pub(crate) fn replay_refusal(&self) -> Option<&'static str> {
        if let Condition::Desynchronised(d) = self.condition {
            return Some(d.as_str());
        }
        let replayable = (1 << taint_bit(Taint::Enable)) | (1 << taint_bit(Taint::Condstore));
        if self.taints & !replayable != 0 {
            return Some("state_not_replayable");
        }
        if self.selected.as_ref().is_some_and(|m| m.name.is_none()) {
            return Some("mailbox_name_unknown");
        }
        None
    }

    /// Whether CONDSTORE is on for the connection (enabled, or switched on by an argument).
    pub(crate) fn condstore(&self) -> bool {
        self.taints & (1 << taint_bit(Taint::Condstore)) != 0
            || self
                .enabled
                .iter()
                .any(|e| &**e == "CONDSTORE" || &**e == "QRESYNC")
    }

    /// Takes the commands in flight (the connection that would answer them is gone), oldest
    /// first. Those to be sent again are put back with [`SessionState::resent`].
    pub(crate) fn take_in_flight(&mut self) -> Vec<InFlight> {
        let responses = self.responses;
        // Whatever a SELECT in flight had said of its mailbox is void on another connection.
        self.selecting = None;
        std::mem::take(&mut self.outstanding)
            .into_iter()
            .map(|p| InFlight {
                tag: p.tag,
                idle: matches!(p.effect, Effect::Idle),
                select: matches!(p.effect, Effect::Select { .. }),
                replay: p.replay.filter(|_| p.responses_at == responses),
            })
            .collect()
    }

    /// A command taken by [`SessionState::take_in_flight`] was sent again (timed from now:
    /// the proxy sends it itself, at once).
    pub(crate) fn resent(&mut self, bytes: &[u8]) {
        let mut framer = imapproxy_codec::Framer::new(imapproxy_codec::Direction::Client);
        if let Some((_, frame)) = framer.advance(bytes) {
            let now = Instant::now();
            self.on_command(&frame, Some(bytes), now);
            self.forwarded(now);
        }
    }

    /// Tracks a command sent. The first gets room for itself alone (a `VecDeque` would make
    /// room for four, 384 bytes where an idle session in `IDLE` needs 96).
    fn push_pending(&mut self, pending: Pending) {
        if self.outstanding.capacity() == 0 {
            self.outstanding.reserve_exact(1);
        }
        self.outstanding.push_back(pending);
    }

    /// The client's `IDLE` (with `tag`) goes on on a new connection.
    pub(crate) fn idle_resumed(&mut self, tag: PendingTag) {
        let mut timing = CommandTiming::received(Instant::now());
        timing.forwarded(Instant::now());
        self.push_pending(Pending {
            tag,
            name: CommandName::Idle,
            timing,
            effect: Effect::Idle,
            mailbox: None,
            replay: None,
            responses_at: self.responses,
        });
    }

    /// No mailbox is selected any more (a `SELECT` in flight was answered as failed).
    pub(crate) fn deselected(&mut self) {
        self.selected = None;
        self.selecting = None;
    }

    /// The mailbox as a new connection selected it: from now on the baseline.
    pub(crate) fn reselected(&mut self, exists: u32, uidnext: u32, highest_modseq: Option<u64>) {
        if let Some(m) = self.selected.as_mut() {
            m.exists = Some(exists);
            m.exists_at_select = Some(exists);
            m.uidnext = Some(uidnext);
            m.expunged = 0;
            if highest_modseq.is_some() {
                m.highest_modseq = highest_modseq;
            }
        }
    }

    /// A tagged reply arrived for the command the relay is still reading (its literal is on
    /// the way): the command is answered once it ends. `BAD` still desynchronises.
    pub(crate) fn answered_early(&mut self, tag: Tag, status: Status) {
        match status {
            Status::Ok | Status::No => self.answered_early = Some(Box::new(tag)),
            Status::Bad => self.worsen(Condition::Desynchronised(Desync::Bad)),
            _ => self.worsen(Condition::Desynchronised(Desync::Malformed)),
        }
    }

    fn on_tagged(
        &mut self,
        tag: Option<Tag>,
        status: Status,
        message: Option<&[u8]>,
    ) -> Option<Answered> {
        let Some(tag) = tag else {
            self.worsen(Condition::Desynchronised(Desync::Malformed));
            return None;
        };
        // The oldest command with this tag: a client may reuse a tag once it was answered,
        // and servers answer same-tag commands in order.
        let Some(pending) = self
            .outstanding
            .iter()
            .position(|p| p.tag.is(&tag))
            .and_then(|i| self.outstanding.remove(i))
        else {
            self.worsen(Condition::Desynchronised(Desync::UnknownTag));
            return None;
        };
        if self.outstanding.is_empty() && self.outstanding.capacity() > 1 {
            // A burst of pipelined commands is over: an idle session keeps room for one
            // command at most (an `IDLE`, say), not for the burst.
            self.outstanding = VecDeque::new();
        }
        let code = message.and_then(response::code);
        match (status, pending.effect) {
            (Status::Bad, _) => self.worsen(Condition::Desynchronised(Desync::Bad)),
            (Status::Bye | Status::PreAuth | Status::Other, _) => {
                self.worsen(Condition::Desynchronised(Desync::Malformed));
            }
            (Status::Ok, Effect::Select { read_only }) => {
                let mut mailbox = self.selecting.take().unwrap_or_default();
                mailbox.name = pending.mailbox;
                mailbox.exists_at_select = mailbox.exists;
                mailbox.expunged = 0;
                mailbox.read_only = match code {
                    Some(c) if c.is("READ-ONLY") => true,
                    Some(c) if c.is("READ-WRITE") => false,
                    _ => read_only,
                };
                self.selected = Some(mailbox);
            }
            // RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected.
            (Status::No, Effect::Select { .. }) | (Status::Ok, Effect::Deselect) => {
                self.selecting = None;
                self.selected = None;
            }
            _ => {}
        }
        if matches!(pending.effect, Effect::Idle) {
            self.idling = false;
            self.idle_continued = false;
        }
        Some(Answered {
            name: pending.name,
            timing: pending.timing,
        })
    }

    fn on_untagged(&mut self, kind: UntaggedKind, message: Option<&[u8]>) {
        match kind {
            UntaggedKind::Status(Status::Bye) => {
                self.worsen(Condition::Desynchronised(Desync::Bye));
                return;
            }
            UntaggedKind::Status(Status::Bad) => {
                self.worsen(Condition::Desynchronised(Desync::Bad));
                return;
            }
            _ => {}
        }
        let Some(line) = message else { return };
        match kind {
            UntaggedKind::Status(_) => self.on_code(line),
            UntaggedKind::Exists => {
                if let Some((n, _)) = response::numbered(line) {
                    self.mailbox_mut().exists = u32::try_from(n).ok();
                }
            }
            UntaggedKind::Expunge => {
                let m = self.mailbox_mut();
                m.exists = m.exists.map(|e| e.saturating_sub(1));
                m.expunged += 1;
            }
            UntaggedKind::Fetch | UntaggedKind::Other => {
                if let Some(names) = response::enabled(line) {
                    for name in names {
                        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
                        if !self.enabled.iter().any(|e| **e == *name) {
                            self.enabled.push(name.into_boxed_str());
                        }
                    }
                    self.worsen(Condition::Tainted(Taint::Enable));
                } else if response::reveals_modseq(line) {
                    self.worsen(Condition::Tainted(Taint::Condstore));
                }
            }
            _ => {}
        }
    }

    fn on_code(&mut self, line: &[u8]) {
        let Some(code) = response::code(line) else {
            return;
        };
        if code.is("CLOSED") {
            // RFC 7162 §3.2.11: the previous mailbox is closed; a new one is being selected.
            self.selected = None;
        } else if code.is("UIDVALIDITY") {
            self.mailbox_mut().uidvalidity = code.number().and_then(|n| u32::try_from(n).ok());
        } else if code.is("UIDNEXT") {
            self.mailbox_mut().uidnext = code.number().and_then(|n| u32::try_from(n).ok());
        } else if code.is("HIGHESTMODSEQ") {
            self.mailbox_mut().highest_modseq = code.number();
        }
    }

    /// The mailbox untagged data describes: the one being selected while a `SELECT` is in
    /// flight, else the selected one (or a placeholder when none is).
    fn mailbox_mut(&mut self) -> &mut Mailbox {
        let selecting = self
            .outstanding
            .iter()
            .any(|p| matches!(p.effect, Effect::Select { .. }));
        let slot = if selecting || self.selected.is_none() {
            &mut self.selecting
        } else {
            &mut self.selected
        };
        slot.get_or_insert_with(Box::default)
    }
}

fn taint_bit(t: Taint) -> u32 {
    match t {
        Taint::Enable => 0,
        Taint::Compress => 1,
        Taint::Notify => 2,
        Taint::Unauthenticate => 3,
        Taint::Language => 4,
        Taint::Condstore => 5,
        Taint::SearchResult => 6,
        Taint::SearchContext => 7,
        Taint::OutOfState => 8,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imapproxy_codec::{Direction, Framer};

    /// Feeds `bytes` through a framer of `dir` into the state.
    fn feed(state: &mut SessionState, dir: Direction, bytes: &[u8]) {
        let mut f = Framer::new(dir);
        let mut rest = bytes;
        while let Some((n, frame)) = f.advance(rest) {
            let whole = &rest[..n];
            match dir {
                Direction::Client => {
                    state.on_command(&frame, Some(whole), Instant::now());
                }
                Direction::Server => {
                    state.on_response(&frame, Some(whole));
                }
            }
            rest = &rest[n..];
        }
    }

    #[test]
    fn select_fetch_unselect_stays_clean_and_tracks_the_mailbox() {
        let mut s = SessionState::new();
        feed(
            &mut s,
            Direction::Client,
            b"a SELECT INBOX\r\nb UID FETCH 1:* (FLAGS)\r\n",
        );
        assert_eq!(s.outstanding(), 2);
        feed(
            &mut s,
            Direction::Server,
            b"* 3 EXISTS\r\n* OK [UIDVALIDITY 17] x\r\n* OK [UIDNEXT 4] x\r\n\
              * OK [HIGHESTMODSEQ 9] x\r\na OK [READ-WRITE] done\r\n\
              * 1 FETCH (UID 1 FLAGS ())\r\nb OK done\r\n",
        );
        let m = s.selected().unwrap();
        assert_eq!(m.name.as_deref(), Some(&b"INBOX"[..]));
        assert_eq!(
            (
                m.exists,
                m.uidvalidity,
                m.uidnext,
                m.highest_modseq,
                m.read_only
            ),
            (Some(3), Some(17), Some(4), Some(9), false)
        );
        assert!(s.reusable(true));
        assert!(!s.reusable(false));
        feed(&mut s, Direction::Client, b"c UNSELECT\r\n");
        feed(&mut s, Direction::Server, b"c OK done\r\n");
        assert!(s.selected().is_none());
        assert!(s.reusable(true));
    }

    #[test]
    fn server_revealed_state_taints() {
        let mut s = SessionState::new();
        feed(&mut s, Direction::Client, b"a NOOP\r\n");
        feed(
            &mut s,
            Direction::Server,
            b"* ENABLED CONDSTORE\r\na OK done\r\n",
        );
        assert_eq!(s.condition(), Condition::Tainted(Taint::Enable));
        assert_eq!(s.enabled(), [Box::from("CONDSTORE")]);
        let mut s = SessionState::new();
        feed(&mut s, Direction::Client, b"a FETCH 1 (FLAGS)\r\n");
        feed(
            &mut s,
            Direction::Server,
            b"* 1 FETCH (FLAGS () MODSEQ (3))\r\na OK done\r\n",
        );
        assert!(!s.reusable(true));
    }

    #[test]
    fn unknown_tags_bad_and_bye_desynchronise() {
        for reply in [
            &b"zz OK what\r\n"[..],
            b"a BAD nope\r\n",
            b"* BYE going\r\n",
            b"garbage\r\n",
        ] {
            let mut s = SessionState::new();
            feed(&mut s, Direction::Client, b"a NOOP\r\n");
            feed(&mut s, Direction::Server, reply);
            assert!(s.is_desynchronised(), "{reply:?}");
            assert!(!s.reusable(true));
        }
    }

    #[test]
    fn a_reused_tag_is_answered_in_order() {
        let mut s = SessionState::new();
        feed(&mut s, Direction::Client, b"a1 NOOP\r\na1 SELECT INBOX\r\n");
        feed(&mut s, Direction::Server, b"a1 OK noop\r\n");
        assert!(s.selected().is_none());
        feed(&mut s, Direction::Server, b"a1 OK [READ-ONLY] sel\r\n");
        assert!(s.selected().unwrap().read_only);
        assert_eq!(s.condition(), Condition::Clean);
        feed(&mut s, Direction::Server, b"a1 OK again\r\n");
        assert!(s.is_desynchronised());
    }

    #[test]
    fn a_failed_select_leaves_nothing_selected() {
        let mut s = SessionState::new();
        feed(&mut s, Direction::Client, b"a SELECT INBOX\r\n");
        feed(&mut s, Direction::Server, b"a OK [READ-WRITE] ok\r\n");
        feed(&mut s, Direction::Client, b"b SELECT nosuch\r\n");
        feed(
            &mut s,
            Direction::Server,
            b"* OK [CLOSED] x\r\nb NO no such mailbox\r\n",
        );
        assert!(s.selected().is_none());
        assert!(s.reusable(true));
    }

    #[test]
    fn tags_in_flight_keep_every_byte_inline_or_boxed() {
        for len in [1, PendingTag::INLINE, PendingTag::INLINE + 1, Tag::MAX_LEN] {
            let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let tag = Tag::new(&bytes).unwrap();
            let held = PendingTag::new(&tag);
            assert_eq!(held.as_bytes(), &bytes[..], "{len}");
            assert!(held.is(&tag));
            assert_eq!(
                matches!(held, PendingTag::Inline { .. }),
                len <= PendingTag::INLINE
            );
            let other = Tag::new(
                &bytes[..len - 1]
                    .iter()
                    .chain(b"Z")
                    .copied()
                    .collect::<Vec<_>>(),
            );
            assert!(!held.is(&other.unwrap()), "{len}");
        }
        assert_eq!(std::mem::size_of::<Pending>(), 96);
    }

    #[test]
    fn sequence_numbers_hold_only_when_every_removal_was_seen() {
        let mut s = SessionState::new();
        feed(&mut s, Direction::Client, b"a SELECT INBOX\r\n");
        feed(
            &mut s,
            Direction::Server,
            b"* 5 EXISTS\r\n* OK [UIDVALIDITY 1] x\r\n* OK [UIDNEXT 6] x\r\na OK [READ-WRITE] x\r\n",
        );
        let m = s.selected().unwrap().clone();
        assert!(m.numbering_holds(5, 6), "nothing changed");
        assert!(m.numbering_holds(7, 8), "two messages added");
        assert!(
            !m.numbering_holds(4, 6),
            "an expunge the client did not see"
        );
        assert!(!m.numbering_holds(6, 8), "one added, one expunged");
        assert!(!m.numbering_holds(5, 5), "UIDNEXT went back");
        assert!(
            !m.numbering_holds(u32::MAX, u32::MAX),
            "absurd numbers are no proof"
        );
        // The client saw one EXPUNGE and one new message.
        feed(&mut s, Direction::Server, b"* 2 EXPUNGE\r\n* 5 EXISTS\r\n");
        let m = s.selected().unwrap().clone();
        assert_eq!((m.exists, m.expunged), (Some(5), 1));
        assert!(m.numbering_holds(5, 7));
        assert!(m.numbering_holds(6, 8));
        assert!(!m.numbering_holds(4, 7), "a second expunge");

        // Beyond 32 bits (RFC 9051 §9): not kept, so no proof either.
        let mut s = SessionState::new();
        feed(&mut s, Direction::Client, b"b SELECT INBOX\r\n");
        feed(
            &mut s,
            Direction::Server,
            b"* 5 EXISTS\r\n* OK [UIDVALIDITY 4294967296] x\r\n* OK [UIDNEXT 4294967297] x\r\n\
              b OK [READ-WRITE] x\r\n",
        );
        let m = s.selected().unwrap().clone();
        assert_eq!((m.uidvalidity, m.uidnext, m.exists), (None, None, Some(5)));
        assert!(!m.numbering_holds(5, 6));
    }

    #[test]
    fn in_flight_commands_keep_their_bytes_only_while_unanswered() {
        let mut s = SessionState::new();
        feed(
            &mut s,
            Direction::Client,
            b"a UID FETCH 1:* (FLAGS)\r\nb APPEND INBOX {0}\r\n\r\nc STORE 1 FLAGS (x)\r\n",
        );
        let f = s.take_in_flight();
        assert_eq!(f.len(), 3);
        assert!(f[0].replay.is_some(), "a read is sent again");
        assert!(f[1].replay.is_none(), "APPEND is not");
        assert!(f[2].replay.is_some(), "absolute flags are");
        feed(&mut s, Direction::Client, b"d FETCH 1 (FLAGS)\r\n");
        feed(&mut s, Direction::Server, b"* 1 FETCH (FLAGS ())\r\n");
        let f = s.take_in_flight();
        assert!(
            f[0].replay.is_none(),
            "part of its answer reached the client"
        );
    }

    #[test]
    fn tagged_replies_name_the_command_and_its_forwarding_time() {
        let mut s = SessionState::new();
        let t0 = Instant::now();
        let mut f = Framer::new(Direction::Client);
        let mut rest = &b"a UID FETCH 1 (FLAGS)\r\nb NOOP\r\n"[..];
        while let Some((n, frame)) = f.advance(rest) {
            s.on_command(&frame, Some(&rest[..n]), t0);
            rest = &rest[n..];
        }
        assert!(s.awaiting_forward());
        s.forwarded(t0 + std::time::Duration::from_micros(5));
        assert!(!s.awaiting_forward());
        feed(&mut s, Direction::Client, b"c CHECK\r\n");
        assert!(s.awaiting_forward(), "only the newest waits");
        let mut f = Framer::new(Direction::Server);
        let (_, reply) = f.advance(b"b OK done\r\n").unwrap();
        let answered = s.on_response(&reply, None).unwrap();
        assert_eq!(answered.name, CommandName::Noop);
        assert!(answered.timing.is_forwarded());
        let (_, reply) = f.advance(b"c OK done\r\n").unwrap();
        let answered = s.on_response(&reply, None).unwrap();
        assert_eq!(answered.name, CommandName::Check);
        assert!(!answered.timing.is_forwarded());
        let (_, untagged) = f.advance(b"* 1 FETCH (FLAGS ())\r\n").unwrap();
        assert!(s.on_response(&untagged, None).is_none());
    }

    #[test]
    fn idle_blocks_reuse_until_done_is_answered() {
        let mut s = SessionState::new();
        feed(&mut s, Direction::Client, b"i IDLE\r\n");
        assert!(s.idling() && !s.reusable(true));
        feed(&mut s, Direction::Server, b"+ idling\r\n");
        feed(&mut s, Direction::Client, b"DONE\r\n");
        assert!(!s.idling());
        assert!(!s.reusable(true), "IDLE not answered yet");
        feed(&mut s, Direction::Server, b"i OK done\r\n");
        assert!(s.reusable(true));
    }
}
