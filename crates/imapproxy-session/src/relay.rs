//! The framing-aware relay between a logged-in client and its backend session.
//!
//! Original bytes are forwarded; nothing is decoded or re-encoded. A [`Framer`] per direction
//! finds message boundaries so that the relay can rewrite the few responses that would leak the
//! backend (capability lists, `ID` replies), answer the client's `LOGOUT` itself so that the
//! backend session can be reused, and keep the session's [`SessionState`] up to date from both
//! directions (see [`crate::state`]).
//!
//! Both directions run inside one future and one task, each with its own buffer, so a slow
//! reader on one side never stops the other direction. A buffer exists only while bytes are in
//! flight: when a read would block, an empty buffer is released and the relay waits on socket
//! readiness instead, so an idle session holds no buffer at all.
//!
//! Reads go into the buffer's spare capacity without initialising it first
//! (`tokio_util::io::poll_read_buf` into a `BytesMut`), so a 20-byte command costs no 16 KiB
//! memset; forwarded bytes are dropped from the front in O(1). While reads keep filling the
//! buffer (a large literal streaming), the read size doubles up to [`MAX_READ`], fewer reads
//! and wake-ups for the same bytes; it falls back to [`BUF_SIZE`] when the stream goes quiet.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use imapproxy_codec::Tag;
use imapproxy_codec::capability::filter_capabilities;
use imapproxy_codec::framer::{CommandName, Direction, Frame, FrameKind, Framer, UntaggedKind};
use tokio::time::{Instant, Sleep};

use crate::state::{Condition, SessionState};
use crate::stream::ReadReady;

/// Size of a direction's buffer while data flows.
const BUF_SIZE: usize = 16 * 1024;
/// The largest read, reached while reads keep filling the buffer.
const MAX_READ: usize = 64 * 1024;
/// An unfinished first line shorter than this is held back until it completes, so that a
/// response that needs rewriting is seen whole. Longer lines are forwarded as they come.
const HOLD_MAX: usize = 8 * 1024;
/// How long the relay keeps delivering answers after the client closed its side.
const EOF_LINGER: Duration = Duration::from_secs(5);

/// Why the relay stopped.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// The client sent `LOGOUT` (with this tag) and everything before it was answered; the
    /// backend session is untouched and the client awaits the proxy's answer.
    Logout(Tag),
    /// The client closed its side.
    ClientClosed,
    /// The backend closed its side; everything it sent was delivered.
    BackendClosed,
    /// The backend said `BYE` on its own (not to the client's `LOGOUT`); it was not relayed.
    BackendBye,
    /// [`Link::request_migration`] was asked and the session reached a point where it can
    /// move: nothing in flight (or only an `IDLE` under way), nothing half-sent.
    Migrate,
    /// Not the relay's own end: its caller stopped it to park the session (see
    /// [`Relay::parkable`]).
    Park,
    /// The client sent nothing for the authenticated idle timeout.
    IdleTimeout,
    /// Reading from or writing to the client failed.
    ClientError(io::Error),
    /// Reading from or writing to the backend failed.
    BackendError(io::Error),
}

/// What the relay counted and where each direction stands, for logging and for deciding reuse
/// (the session's state proper is its [`SessionState`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SessionFacts {
    /// Commands sent and not yet answered.
    pub outstanding: usize,
    /// Part of a client command was forwarded without its end.
    pub mid_command: bool,
    /// Part of a backend response was forwarded without its end: nothing may be written to
    /// the client now without corrupting it.
    pub mid_response: bool,
    /// Bytes relayed client → backend and backend → client.
    pub bytes_up: u64,
    /// See `bytes_up`.
    pub bytes_down: u64,
    /// Commands the client sent.
    pub commands: u64,
}

impl SessionFacts {
    /// Nothing half-sent in either direction.
    fn quiet(&self) -> bool {
        !self.mid_command && !self.mid_response
    }
}

/// A capability predicate: true for capabilities hidden from the client.
pub(crate) type CapabilityFilter = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Rewrites applied to backend responses after login.
pub(crate) struct ResponsePolicy {
    /// Returns true for capabilities to remove from lists shown to the client.
    pub drop_capability: CapabilityFilter,
    /// What to send instead of the backend's `* ID (...)` reply (which names the backend).
    pub id_reply: Vec<u8>,
}

enum Action {
    Forward,
    Replace(Vec<u8>),
    /// Drop this message and everything after it, and stop reading this direction.
    Stop,
}

/// One direction: bytes read from `src`, scanned, written to `dst`.
struct Pump {
    framer: Framer,
    buf: BytesMut,
    /// Bytes of spare room asked for before a read: [`BUF_SIZE`], doubled while reads fill it.
    read_size: usize,
    /// `buf[..written]` has been written to the destination.
    written: usize,
    /// `buf[..forwardable]` may be written.
    forwardable: usize,
    /// `buf[..scanned]` has been fed to the framer.
    scanned: usize,
    /// Start in `buf` of the unfinished message, while none of it has been forwarded.
    msg_start: Option<usize>,
    needs_flush: bool,
    eof: bool,
    /// Stop reading (after the client's `LOGOUT`).
    paused: bool,
    /// On end of stream, shut the destination's write side. Not towards the backend: a
    /// session whose client vanished may still be reused.
    shutdown_on_eof: bool,
}

impl Pump {
    fn new(dir: Direction, shutdown_on_eof: bool) -> Self {
        Self {
            framer: Framer::new(dir),
            // Start with a buffer so the first poll reads instead of waiting for the socket:
            // a TLS stream may already hold decrypted bytes from before the relay started.
            // It is released at the first read that would block.
            buf: BytesMut::with_capacity(BUF_SIZE),
            read_size: BUF_SIZE,
            written: 0,
            forwardable: 0,
            scanned: 0,
            msg_start: None,
            needs_flush: false,
            eof: false,
            paused: false,
            shutdown_on_eof,
        }
    }

    /// Nothing buffered and no message half-way.
    fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.framer.at_boundary()
    }

    /// Feeds the unscanned bytes to the framer and decides what may be forwarded.
    fn scan(&mut self, mut on_frame: impl FnMut(&Frame, Option<&[u8]>) -> Action) {
        loop {
            if self.framer.at_boundary() {
                self.msg_start = Some(self.scanned);
            }
            match self.framer.advance(&self.buf[self.scanned..]) {
                Some((n, frame)) => {
                    let mut end = self.scanned + n;
                    let whole = self.msg_start.and_then(|s| self.buf.get(s..end));
                    match on_frame(&frame, whole) {
                        Action::Forward => {}
                        Action::Replace(bytes) => {
                            if let Some(start) = self.msg_start {
                                let tail = self.buf.split_off(end);
                                self.buf.truncate(start);
                                self.buf.extend_from_slice(&bytes);
                                end = self.buf.len();
                                self.buf.unsplit(tail);
                            }
                        }
                        Action::Stop => {
                            let start = self.msg_start.unwrap_or(end);
                            self.buf.truncate(start);
                            self.scanned = start;
                            self.forwardable = start;
                            self.msg_start = None;
                            self.paused = true;
                            return;
                        }
                    }
                    self.scanned = end;
                    self.forwardable = end;
                    self.msg_start = None;
                }
                None => {
                    self.scanned = self.buf.len();
                    self.forwardable = match self.msg_start {
                        Some(s)
                            if self.buf.len() - s < HOLD_MAX
                                && memchr::memchr(b'\n', &self.buf[s..]).is_none()
                                && !self.eof =>
                        {
                            s
                        }
                        _ => {
                            self.msg_start = None;
                            self.buf.len()
                        }
                    };
                    return;
                }
            }
        }
    }

    /// Moves this direction forward as far as it can. `Ready(Ok(()))` means the source reached
    /// end of stream and everything was delivered.
    fn poll_pump<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        counter: &mut u64,
        mut on_read: impl FnMut(),
        mut on_frame: impl FnMut(&Frame, Option<&[u8]>) -> Action,
    ) -> Poll<Result<(), Side>>
    where
        S: ReadReady,
        D: ReadReady,
    {
        // Bytes read while no relay ran (a parked session's next command) are scanned first.
        if self.scanned < self.buf.len() && !self.paused {
            self.scan(&mut on_frame);
        }
        loop {
            while self.written < self.forwardable {
                let chunk = &self.buf[self.written..self.forwardable];
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, chunk)).map_err(Side::Dst)?;
                if n == 0 {
                    return Poll::Ready(Err(Side::Dst(io::ErrorKind::WriteZero.into())));
                }
                self.written += n;
                *counter += n as u64;
                self.needs_flush = true;
            }
            if self.needs_flush {
                ready!(Pin::new(&mut *dst).poll_flush(cx)).map_err(Side::Dst)?;
                self.needs_flush = false;
            }
            self.compact();
            if self.eof {
                if self.shutdown_on_eof {
                    ready!(Pin::new(&mut *dst).poll_shutdown(cx)).map_err(Side::Dst)?;
                }
                return Poll::Ready(Ok(()));
            }
            if self.paused {
                self.release_if_empty();
                return Poll::Pending;
            }
            if self.buf.capacity() == 0 {
                // Idle: wait for the socket without holding a buffer.
                ready!(src.poll_read_ready(cx)).map_err(Side::Src)?;
            }
            // A no-op while the spare room is large enough; otherwise it grows the buffer or
            // takes back the room that forwarded bytes left at its front.
            self.buf.reserve(self.read_size);
            let room = self.buf.capacity() - self.buf.len();
            let filled = match tokio_util::io::poll_read_buf(Pin::new(&mut *src), cx, &mut self.buf)
            {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Src(e))),
                Poll::Pending => {
                    self.release_if_empty();
                    return Poll::Pending;
                }
            };
            if filled == room && self.read_size < MAX_READ {
                // The source had more than the room: it is streaming.
                self.read_size *= 2;
            }
            if filled == 0 {
                self.eof = true;
            } else {
                // Acknowledge at once: a client that wrote half a command waits for our ACK
                // before it sends the rest (Nagle), and a delayed ACK costs it ~40 ms.
                src.after_read();
                on_read();
            }
            self.scan(&mut on_frame);
        }
    }

    /// Between reads with nothing buffered: give the memory back and start small again.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.read_size = BUF_SIZE;
        }
    }

    fn compact(&mut self) {
        if self.written == 0 {
            return;
        }
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
            self.forwardable = 0;
            self.scanned = 0;
            self.msg_start = None;
        } else {
            self.buf.advance(self.written);
            self.forwardable -= self.written;
            self.scanned -= self.written;
            self.msg_start = self.msg_start.map(|s| s - self.written);
            self.written = 0;
        }
    }
}

/// Which end of a pump failed.
enum Side {
    Src(io::Error),
    Dst(io::Error),
}

/// What outlives one backend connection of a logged-in session: the client direction, the
/// session's state, the idle timer. A session re-homed onto another backend keeps its `Link`
/// and gets a new [`Relay`].
pub(crate) struct Link {
    up: Pump,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_client: Instant,
    facts: SessionFacts,
    state: SessionState,
    /// The client's `LOGOUT`, answered by the proxy once everything before it is answered.
    logout: Option<Tag>,
    intercept_logout: bool,
    /// The client closed its side; the relay lingers until its commands are answered.
    client_eof: bool,
    /// Stop at the next point where the session can move to another backend.
    migrate: bool,
    /// Drop the next `+` from the backend: the client already has its `IDLE` continuation.
    swallow_continuation: bool,
}

impl Link {
    /// A link whose client pipelined `client_leftover` behind its login. With
    /// `intercept_logout` the client's `LOGOUT` is answered by the proxy and never reaches the
    /// backend.
    pub(crate) fn new(
        client_leftover: Vec<u8>,
        idle_timeout: Duration,
        intercept_logout: bool,
    ) -> Self {
        let mut link = Self {
            up: Pump::new(Direction::Client, false),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            last_client: Instant::now(),
            facts: SessionFacts::default(),
            state: SessionState::new(),
            logout: None,
            intercept_logout,
            client_eof: false,
            migrate: false,
            swallow_continuation: false,
        };
        if !client_leftover.is_empty() {
            // Commands pipelined behind LOGIN: tracked like any other (RFC 9051 §5.5).
            let Link {
                up,
                facts,
                state,
                logout,
                ..
            } = &mut link;
            up.buf = BytesMut::from(&client_leftover[..]);
            up.scan(|f, whole| on_command(facts, state, logout, intercept_logout, f, whole));
        }
        link
    }

    /// What the relay learned so far. `down` is the backend direction of the relay that ran
    /// last (`None`: nothing of it is pending).
    fn facts_with(&self, down_idle: bool) -> SessionFacts {
        let mut facts = self.facts;
        facts.outstanding = self.state.outstanding();
        facts.mid_command = !self.up.framer.at_boundary() || self.up.written < self.up.buf.len();
        facts.mid_response = !down_idle;
        facts
    }

    /// The session's state.
    pub(crate) fn state(&self) -> &SessionState {
        &self.state
    }

    /// The session's state, for a re-home that replays it.
    pub(crate) fn state_mut(&mut self) -> &mut SessionState {
        &mut self.state
    }

    /// Asks the relay to end with [`RelayEnd::Migrate`] as soon as the session can move; it
    /// reads no new command from the client meanwhile.
    pub(crate) fn request_migration(&mut self) {
        self.migrate = true;
    }

    /// After a re-home: read the client again, and drop the new backend's first `+` when the
    /// client already has its `IDLE` continuation.
    pub(crate) fn resume(&mut self, swallow_continuation: bool) {
        self.migrate = false;
        self.up.paused = false;
        self.swallow_continuation = swallow_continuation;
    }

    /// The client's unfinished command waits for the `+` of a synchronizing literal (the
    /// client sends nothing until then): it ends here, and its tag is returned so that the
    /// client can be told `NO` (RFC 9051 §7.5: a tagged reply instead of `+` means the
    /// literal is not to be sent). `None` when the client is elsewhere.
    pub(crate) fn cancel_waiting_command(&mut self) -> Option<Tag> {
        if self.up.written != self.up.buf.len() {
            return None;
        }
        let frame = self.up.framer.refused()?;
        self.up.msg_start = None;
        frame.tag
    }

    /// Reads what a parked session's client sends next (keeping it for the relay that
    /// follows). `Ok(0)`: the client closed.
    pub(crate) async fn read_parked<C>(&mut self, client: &mut C) -> io::Result<usize>
    where
        C: tokio::io::AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt;
        self.up.buf.reserve(BUF_SIZE);
        let n = client.read_buf(&mut self.up.buf).await?;
        if n > 0 {
            self.last_client = Instant::now();
        }
        Ok(n)
    }

    /// The tag of a `LOGOUT` that is all the client sent while parked: the proxy answers it
    /// itself, with no backend.
    pub(crate) fn lone_logout(&self) -> Option<Tag> {
        let pending = self.up.buf.get(self.up.scanned..)?;
        let mut framer = Framer::new(Direction::Client);
        let (n, frame) = framer.advance(pending)?;
        (n == pending.len()
            && frame.kind == FrameKind::Command(CommandName::Logout)
            && frame.literals == 0)
            .then_some(frame.tag)
            .flatten()
    }

    /// Whether the client's side is at a command boundary with nothing half-forwarded.
    pub(crate) fn client_quiet(&self) -> bool {
        self.up.framer.at_boundary() && self.up.written == self.up.buf.len()
    }
}

/// The relay of one logged-in session over one backend connection: both directions plus the
/// authenticated idle timeout.
pub(crate) struct Relay<'a, C, B> {
    client: &'a mut C,
    backend: &'a mut B,
    link: &'a mut Link,
    down: Pump,
    backend_bye: bool,
    policy: &'a ResponsePolicy,
}

impl<'a, C: ReadReady, B: ReadReady> Relay<'a, C, B> {
    /// `backend_leftover` are bytes the backend sent after the login response (or the
    /// re-home's last exchange), which belong to the client.
    pub(crate) fn new(
        client: &'a mut C,
        backend: &'a mut B,
        link: &'a mut Link,
        backend_leftover: Vec<u8>,
        policy: &'a ResponsePolicy,
    ) -> Self {
        // The backend's end of stream is not the client's: the session may move on.
        let mut down = Pump::new(Direction::Server, false);
        let mut backend_bye = false;
        if !backend_leftover.is_empty() {
            down.buf = BytesMut::from(&backend_leftover[..]);
            let Link {
                up,
                state,
                swallow_continuation,
                ..
            } = &mut *link;
            down.scan(|f, whole| {
                on_response(
                    policy,
                    state,
                    up,
                    swallow_continuation,
                    &mut backend_bye,
                    f,
                    whole,
                )
            });
        }
        Self {
            client,
            backend,
            link,
            down,
            backend_bye,
            policy,
        }
    }

    /// What the relay learned so far.
    pub(crate) fn facts(&self) -> SessionFacts {
        self.link.facts_with(self.down.is_idle())
    }

    /// Whether the backend session may serve another client now (see
    /// [`SessionState::reusable`]).
    pub(crate) fn reusable(&self) -> bool {
        self.link.state.reusable(self.facts().quiet())
    }

    /// How far the proxy trusts its picture of the session.
    pub(crate) fn condition(&self) -> Condition {
        self.link.state.condition()
    }

    /// Asks for [`RelayEnd::Migrate`]; see [`Link::request_migration`].
    pub(crate) fn request_migration(&mut self) {
        self.link.request_migration();
    }

    /// Whether the session can give up its backend connection now: between commands (not in
    /// `IDLE`), nothing half-sent either way, and quiet on the client's side for `quiet`.
    pub(crate) fn parkable(&self, quiet: Duration) -> bool {
        self.movable()
            && self.link.state.outstanding() == 0
            && !self.link.state.idling()
            && !self.link.client_eof
            && self.link.last_client.elapsed() >= quiet
    }

    /// When the client was last heard from.
    pub(crate) fn last_client(&self) -> Instant {
        self.link.last_client
    }

    /// Whether the session is where it can move: nothing half-sent either way, and nothing
    /// in flight but an `IDLE` the server already accepted.
    fn movable(&self) -> bool {
        self.link.client_quiet()
            && self.down.is_idle()
            && self.link.logout.is_none()
            && (self.link.state.outstanding() == 0 || self.link.state.idle_established())
    }
}

fn on_response(
    policy: &ResponsePolicy,
    state: &mut SessionState,
    up: &mut Pump,
    swallow_continuation: &mut bool,
    backend_bye: &mut bool,
    frame: &Frame,
    whole: Option<&[u8]>,
) -> Action {
    match frame.kind {
        FrameKind::Continuation if std::mem::take(swallow_continuation) => {
            // The `+` of an IDLE re-entered for the client on a new connection.
            state.on_response(frame, whole);
            return Action::Replace(Vec::new());
        }
        // A synchronizing literal the client waits to send may come now.
        FrameKind::Continuation => up.framer.continuation_seen(),
        // RFC 9051 §7.1.5: a BYE that does not answer LOGOUT means the server is going away.
        // The client is not told: the session may move to another backend.
        // A desynchronised session cannot know what the BYE answers: it is relayed.
        FrameKind::Untagged(UntaggedKind::Status(imapproxy_codec::Status::Bye))
            if !state.logging_out() && !state.is_desynchronised() =>
        {
            *backend_bye = true;
            return Action::Stop;
        }
        FrameKind::Tagged(_) => {
            if let Some(tag) = frame.tag.filter(|t| !state.is_outstanding(t)) {
                if up.framer.partial_tag() == Some(tag) {
                    match up.framer.refused() {
                        // RFC 9051 §4.3, §7.5: a reply to a command whose synchronizing
                        // literal the server never asked for (`NO [TRYCREATE]` to an APPEND)
                        // ends that command; the client sends neither the literal nor the
                        // rest of it.
                        Some(refused) => {
                            up.msg_start = None;
                            state.on_command(&refused, None);
                        }
                        // RFC 7888 §4: a server may answer a command whose non-synchronizing
                        // literal (or one it already asked for) is still coming; the client
                        // sends the rest all the same and the server reads and drops it. The
                        // answer belongs to the command the framer is still reading.
                        None => {
                            if let FrameKind::Tagged(status) = frame.kind {
                                state.answered_early(tag, status);
                            }
                            return policy_rewrite(policy, frame, whole);
                        }
                    }
                }
            }
        }
        _ => {}
    }
    state.on_response(frame, whole);
    policy_rewrite(policy, frame, whole)
}

/// What the client sees of a backend response: capability lists filtered, the `ID` reply
/// replaced.
fn policy_rewrite(policy: &ResponsePolicy, frame: &Frame, whole: Option<&[u8]>) -> Action {
    let Some(bytes) = whole else {
        return Action::Forward;
    };
    match frame.kind {
        FrameKind::Untagged(UntaggedKind::Capability)
        | FrameKind::Untagged(UntaggedKind::Status(_))
        | FrameKind::Tagged(_) => match filter_capabilities(bytes, &policy.drop_capability) {
            Some(filtered) => Action::Replace(filtered),
            None => Action::Forward,
        },
        // The backend's `ID` reply names its software and version (RFC 2971 §3.3).
        FrameKind::Untagged(UntaggedKind::Other)
            if bytes.len() > 5 && bytes[..5].eq_ignore_ascii_case(b"* ID ") =>
        {
            Action::Replace(policy.id_reply.clone())
        }
        _ => Action::Forward,
    }
}

impl<C: ReadReady, B: ReadReady> Future for Relay<'_, C, B> {
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let this = self.get_mut();
        if this.link.migrate && this.movable() {
            return Poll::Ready(RelayEnd::Migrate);
        }
        let Relay {
            client,
            backend,
            link,
            down,
            backend_bye,
            policy,
        } = this;
        let policy: &ResponsePolicy = policy;
        let Link {
            up,
            idle,
            idle_timeout,
            last_client,
            facts,
            state,
            logout,
            intercept_logout,
            client_eof,
            migrate,
            swallow_continuation,
        } = &mut **link;

        {
            let mut bytes_down = facts.bytes_down;
            let down_result = down.poll_pump(
                cx,
                &mut **backend,
                &mut **client,
                &mut bytes_down,
                || {},
                |f, whole| {
                    on_response(
                        policy,
                        state,
                        up,
                        swallow_continuation,
                        backend_bye,
                        f,
                        whole,
                    )
                },
            );
            facts.bytes_down = bytes_down;
            match down_result {
                Poll::Ready(Ok(())) => return Poll::Ready(RelayEnd::BackendClosed),
                Poll::Ready(Err(Side::Src(e))) => return Poll::Ready(RelayEnd::BackendError(e)),
                Poll::Ready(Err(Side::Dst(e))) => return Poll::Ready(RelayEnd::ClientError(e)),
                Poll::Pending => {}
            }
            if *backend_bye && down.written == down.buf.len() {
                return Poll::Ready(RelayEnd::BackendBye);
            }

            // While a move is pending, no new command is read: the session gets to a point
            // where it can move.
            if *migrate && up.framer.at_boundary() && up.written == up.buf.len() {
                up.paused = true;
            }
            let mut client_active = false;
            if !*client_eof {
                let mut bytes_up = facts.bytes_up;
                let up_result = up.poll_pump(
                    cx,
                    &mut **client,
                    &mut **backend,
                    &mut bytes_up,
                    || client_active = true,
                    |f, whole| on_command(facts, state, logout, *intercept_logout, f, whole),
                );
                facts.bytes_up = bytes_up;
                match up_result {
                    Poll::Ready(Ok(())) => {
                        // Answers to what the client sent before closing (a LOGOUT followed
                        // by FIN, say) still reach it if it only half-closed; wait a little.
                        *client_eof = true;
                        *last_client = Instant::now();
                        *idle_timeout = EOF_LINGER;
                        idle.as_mut().reset(Instant::now() + EOF_LINGER);
                    }
                    Poll::Ready(Err(Side::Src(e))) => {
                        return Poll::Ready(RelayEnd::ClientError(e));
                    }
                    Poll::Ready(Err(Side::Dst(e))) => {
                        return Poll::Ready(RelayEnd::BackendError(e));
                    }
                    Poll::Pending => {}
                }
            }
            if *client_eof && state.outstanding() == 0 && down.is_idle() {
                return Poll::Ready(RelayEnd::ClientClosed);
            }
            if client_active {
                // Cheaper than resetting the timer on every read: the timer is only moved
                // when it fires early.
                *last_client = Instant::now();
            }
            // RFC 9051 §6.1.3: answer LOGOUT once every earlier command has its answer.
            if let Some(tag) = logout {
                if state.outstanding() == 0 && down.is_idle() && up.written == up.buf.len() {
                    return Poll::Ready(RelayEnd::Logout(*tag));
                }
            }
        }
        if this.link.migrate && this.movable() {
            return Poll::Ready(RelayEnd::Migrate);
        }
        let Link {
            idle,
            idle_timeout,
            last_client,
            client_eof,
            ..
        } = &mut *this.link;

        while idle.as_mut().poll(cx).is_ready() {
            let deadline = *last_client + *idle_timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(if *client_eof {
                    RelayEnd::ClientClosed
                } else {
                    RelayEnd::IdleTimeout
                });
            }
            idle.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

fn on_command(
    facts: &mut SessionFacts,
    state: &mut SessionState,
    logout: &mut Option<Tag>,
    intercept_logout: bool,
    frame: &Frame,
    whole: Option<&[u8]>,
) -> Action {
    let FrameKind::Command(name) = frame.kind else {
        return Action::Forward;
    };
    facts.commands += 1;
    // The proxy answers LOGOUT itself (once everything before it is answered) so that the
    // backend session can be reused; a desynchronised session cannot know when that is, so
    // its LOGOUT goes to the server.
    if name == CommandName::Logout
        && intercept_logout
        && whole.is_some()
        && frame.literals == 0
        && !state.idling()
        && !state.is_desynchronised()
    {
        if let Some(tag) = frame.tag {
            *logout = Some(tag);
            return Action::Stop;
        }
    }
    state.on_command(frame, whole);
    Action::Forward
}
