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
//! readiness instead; a direction at rest (at a message boundary, nothing held) drops its
//! framer and offsets too, so an idle session holds 16 bytes per direction.
//!
//! Reads go into the buffer's spare capacity without initialising it first
//! (`tokio_util::io::poll_read_buf` into a `BytesMut`), so a 20-byte command costs no 16 KiB
//! memset; forwarded bytes are dropped from the front in O(1). While reads keep filling the
//! buffer (a large literal streaming), the read size doubles up to 64 KiB, fewer reads and
//! wake-ups for the same bytes; it falls back to 16 KiB when the stream goes quiet. One
//! direction's mechanics are in [`pump`]; what the bytes mean to the session is decided here,
//! by each direction's [`Observer`] (including the per-command latency of
//! [`crate::command_metrics`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use imapproxy_codec::Tag;
use imapproxy_codec::capability::filter_capabilities;
use imapproxy_codec::framer::{CommandName, Direction, Frame, FrameKind, Framer, UntaggedKind};
use tokio::time::Instant;

use crate::command_metrics::{CommandMetrics, Delivering};
use crate::registry::Registration;
use crate::state::{Condition, SessionState};
use crate::stream::ReadReady;

mod bench;
mod pump;
#[cfg(target_os = "linux")]
mod splice;

pub use bench::ChunkBench;
use pump::{Action, BUF_SIZE, Observer, Pump, Side};

/// How long the relay keeps delivering answers after the client closed its side.
const EOF_LINGER: Duration = Duration::from_secs(5);

/// `d` in whole milliseconds, at most `u32::MAX` (49 days).
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Why the relay stopped.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// The client sent `LOGOUT` (with this tag) and everything before it was answered; the
    /// backend session is untouched and the client awaits the proxy's answer.
    Logout(Box<Tag>),
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

/// What the relay counts over a session's life (kept by its [`Link`]).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    bytes_up: u64,
    bytes_down: u64,
    commands: u64,
}

/// What the relay counted and where each direction stands, for logging and for deciding reuse
/// (the session's state proper is its [`SessionState`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SessionFacts {
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

/// What outlives one backend connection of a logged-in session: the client direction, the
/// session's state, its idle timeout. A session re-homed onto another backend keeps its `Link`
/// and gets a new [`Relay`].
pub(crate) struct Link {
    up: Pump,
    /// The authenticated idle timeout in milliseconds (the linger once the client closed its
    /// side; beyond 49 days, 49 days): 4 bytes beside the flags rather than a `Duration`'s 16
    /// of every idle session. Its deadline is watched by the registry's sweep (see
    /// [`Relay::idle_expired`]).
    idle_timeout_ms: u32,
    last_client: Instant,
    counts: Counts,
    state: SessionState,
    /// The client's `LOGOUT`, answered by the proxy once everything before it is answered.
    /// Boxed: a session keeps this slot for its whole life and needs it once.
    logout: Option<Box<Tag>>,
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
            up: Pump::new(Direction::Client),
            idle_timeout_ms: millis(idle_timeout),
            last_client: Instant::now(),
            counts: Counts::default(),
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
                counts,
                state,
                logout,
                ..
            } = &mut link;
            up.buffer_mut().extend_from_slice(&client_leftover);
            up.scan(&mut Commands {
                metrics: None,
                counts,
                state,
                logout,
                intercept_logout,
                active: false,
            });
        }
        link
    }

    /// What the relay learned so far. `down` is the backend direction of the relay that ran
    /// last (`None`: nothing of it is pending).
    fn facts_with(&self, down_idle: bool) -> SessionFacts {
        SessionFacts {
            mid_command: !self.up.at_boundary() || !self.up.drained(),
            mid_response: !down_idle,
            bytes_up: self.counts.bytes_up,
            bytes_down: self.counts.bytes_down,
            commands: self.counts.commands,
        }
    }

    /// When the session times out unless the client is heard from again.
    pub(crate) fn idle_deadline(&self) -> Instant {
        self.last_client + Duration::from_millis(self.idle_timeout_ms.into())
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
        self.up.resume();
        self.swallow_continuation = swallow_continuation;
    }

    /// The client's unfinished command waits for the `+` of a synchronizing literal (the
    /// client sends nothing until then): it ends here, and its tag is returned so that the
    /// client can be told `NO` (RFC 9051 §7.5: a tagged reply instead of `+` means the
    /// literal is not to be sent). `None` when the client is elsewhere.
    pub(crate) fn cancel_waiting_command(&mut self) -> Option<Tag> {
        if !self.up.drained() {
            return None;
        }
        self.up.refuse()?.tag
    }

    /// Reads what a parked session's client sends next (keeping it for the relay that
    /// follows). `Ok(0)`: the client closed.
    pub(crate) async fn read_parked<C>(&mut self, client: &mut C) -> io::Result<usize>
    where
        C: tokio::io::AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt;
        let buf = self.up.buffer_mut();
        buf.reserve(BUF_SIZE);
        let n = client.read_buf(buf).await?;
        if n > 0 {
            self.last_client = Instant::now();
        }
        Ok(n)
    }

    /// The tag of a `LOGOUT` that is all the client sent while parked: the proxy answers it
    /// itself, with no backend.
    pub(crate) fn lone_logout(&self) -> Option<Tag> {
        let pending = self.up.unscanned()?;
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
        self.up.at_boundary() && self.up.drained()
    }
}

/// The relay of one logged-in session over one backend connection: both directions. The
/// authenticated idle timeout is its caller's, woken by the registry (see
/// [`Relay::idle_expired`]).
pub(crate) struct Relay<'a, C, B> {
    client: &'a mut C,
    backend: &'a mut B,
    link: &'a mut Link,
    /// Where the idle deadline is armed (shortened to the linger when the client closes).
    registration: &'a Registration,
    down: Pump,
    backend_bye: bool,
    policy: &'a ResponsePolicy,
    metrics: &'a CommandMetrics,
    /// Tagged replies read from the backend, timed once the client has them.
    delivering: Delivering,
}

impl<'a, C: ReadReady, B: ReadReady> Relay<'a, C, B> {
    /// `backend_leftover` are bytes the backend sent after the login response (or the
    /// re-home's last exchange), which belong to the client.
    pub(crate) fn new(
        client: &'a mut C,
        backend: &'a mut B,
        link: &'a mut Link,
        registration: &'a Registration,
        backend_leftover: Vec<u8>,
        policy: &'a ResponsePolicy,
        metrics: &'a CommandMetrics,
    ) -> Self {
        let mut down = Pump::new(Direction::Server);
        let mut backend_bye = false;
        let mut delivering = Delivering::default();
        if !backend_leftover.is_empty() {
            down.buffer_mut().extend_from_slice(&backend_leftover);
            let Link {
                up,
                state,
                swallow_continuation,
                counts,
                ..
            } = &mut *link;
            down.scan(&mut Responses {
                policy,
                metrics,
                state,
                up,
                swallow_continuation,
                backend_bye: &mut backend_bye,
                delivering: &mut delivering,
                bytes_down: &mut counts.bytes_down,
            });
        }
        registration.arm_idle(link.idle_deadline());
        Self {
            client,
            backend,
            link,
            registration,
            down,
            backend_bye,
            policy,
            metrics,
            delivering,
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

    /// After the registry's [`Signal::IdleDue`](crate::registry::Signal::IdleDue): how the
    /// relay ends when the client was silent for the idle timeout (the linger, once it closed
    /// its side). Otherwise (the client was heard from since the deadline was armed) the next
    /// deadline is armed, and `None`: the timer moves only when it fires early, cheaper than
    /// moving it on every read.
    pub(crate) fn idle_expired(&self) -> Option<RelayEnd> {
        let deadline = self.link.idle_deadline();
        if deadline <= Instant::now() {
            return Some(if self.link.client_eof {
                RelayEnd::ClientClosed
            } else {
                RelayEnd::IdleTimeout
            });
        }
        self.registration.arm_idle(deadline);
        None
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

/// The backend direction's observer: responses into the session state and the command
/// metrics, rewritten for the client.
struct Responses<'l> {
    policy: &'l ResponsePolicy,
    metrics: &'l CommandMetrics,
    state: &'l mut SessionState,
    /// The client direction, whose framer learns of continuations and refusals.
    up: &'l mut Pump,
    swallow_continuation: &'l mut bool,
    backend_bye: &'l mut bool,
    delivering: &'l mut Delivering,
    bytes_down: &'l mut u64,
}

impl Observer for Responses<'_> {
    fn on_frame(&mut self, frame: &Frame, whole: Option<&[u8]>, at: std::time::Instant) -> Action {
        let state = &mut *self.state;
        let up = &mut *self.up;
        match frame.kind {
            FrameKind::Continuation if std::mem::take(self.swallow_continuation) => {
                // The `+` of an IDLE re-entered for the client on a new connection.
                state.on_response(frame, whole);
                return Action::Replace(Vec::new());
            }
            // A synchronizing literal the client waits to send may come now.
            FrameKind::Continuation => up.continuation_seen(),
            // RFC 9051 §7.1.5: a BYE that does not answer LOGOUT means the server is going
            // away. The client is not told: the session may move to another backend.
            // A desynchronised session cannot know what the BYE answers: it is relayed.
            FrameKind::Untagged(UntaggedKind::Status(imapproxy_codec::Status::Bye))
                if !state.logging_out() && !state.is_desynchronised() =>
            {
                *self.backend_bye = true;
                return Action::Stop;
            }
            FrameKind::Tagged(_) => {
                if let Some(tag) = frame.tag.filter(|t| !state.is_outstanding(t)) {
                    if up.partial_tag() == Some(tag) {
                        match up.refuse() {
                            // RFC 9051 §4.3, §7.5: a reply to a command whose synchronizing
                            // literal the server never asked for (`NO [TRYCREATE]` to an
                            // APPEND) ends that command; the client sends neither the literal
                            // nor the rest of it.
                            Some(refused) => {
                                state.on_command(&refused, None, at);
                            }
                            // RFC 7888 §4: a server may answer a command whose
                            // non-synchronizing literal (or one it already asked for) is still
                            // coming; the client sends the rest all the same and the server
                            // reads and drops it. The answer belongs to the command the framer
                            // is still reading.
                            None => {
                                if let FrameKind::Tagged(status) = frame.kind {
                                    state.answered_early(tag, status);
                                }
                                return policy_rewrite(self.policy, frame, whole);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(answered) = state.on_response(frame, whole) {
            self.delivering.answered(self.metrics, answered, at);
        }
        policy_rewrite(self.policy, frame, whole)
    }

    fn on_written(&mut self, n: usize) {
        *self.bytes_down += n as u64;
        self.metrics.relayed_to_client(n);
    }

    fn on_flushed(&mut self) {
        if !self.delivering.is_empty() {
            self.delivering
                .delivered(self.metrics, std::time::Instant::now());
        }
    }
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
            registration,
            down,
            backend_bye,
            policy,
            metrics,
            delivering,
        } = this;
        let Link {
            up,
            idle_timeout_ms,
            last_client,
            counts,
            state,
            logout,
            intercept_logout,
            client_eof,
            migrate,
            swallow_continuation,
        } = &mut **link;

        {
            let down_result = down.poll_pump(
                cx,
                &mut **backend,
                &mut **client,
                &mut Responses {
                    policy,
                    metrics,
                    state,
                    up,
                    swallow_continuation,
                    backend_bye,
                    delivering,
                    bytes_down: &mut counts.bytes_down,
                },
            );
            match down_result {
                Poll::Ready(Ok(())) => return Poll::Ready(RelayEnd::BackendClosed),
                Poll::Ready(Err(Side::Src(e))) => return Poll::Ready(RelayEnd::BackendError(e)),
                Poll::Ready(Err(Side::Dst(e))) => return Poll::Ready(RelayEnd::ClientError(e)),
                Poll::Pending => {}
            }
            if *backend_bye && down.drained() {
                return Poll::Ready(RelayEnd::BackendBye);
            }

            // While a move is pending, no new command is read: the session gets to a point
            // where it can move.
            if *migrate && up.at_boundary() && up.drained() {
                up.pause();
            }
            let mut client_active = false;
            if !*client_eof {
                let mut commands = Commands {
                    metrics: Some(metrics),
                    counts,
                    state,
                    logout,
                    intercept_logout: *intercept_logout,
                    active: false,
                };
                let up_result = up.poll_pump(cx, &mut **client, &mut **backend, &mut commands);
                client_active = commands.active;
                match up_result {
                    Poll::Ready(Ok(())) => {
                        // Answers to what the client sent before closing (a LOGOUT followed
                        // by FIN, say) still reach it if it only half-closed; wait a little.
                        *client_eof = true;
                        *last_client = Instant::now();
                        *idle_timeout_ms = millis(EOF_LINGER);
                        registration.arm_idle(*last_client + EOF_LINGER);
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
                // Cheaper than moving the deadline on every read: it is only moved when it
                // fires early (see `idle_expired`).
                *last_client = Instant::now();
            }
            // RFC 9051 §6.1.3: answer LOGOUT once every earlier command has its answer.
            if let Some(tag) = logout {
                if state.outstanding() == 0 && down.is_idle() && up.drained() {
                    return Poll::Ready(RelayEnd::Logout(tag.clone()));
                }
            }
        }
        if this.link.migrate && this.movable() {
            return Poll::Ready(RelayEnd::Migrate);
        }
        Poll::Pending
    }
}

/// The client direction's observer: commands into the session state.
struct Commands<'l> {
    /// For the bytes relayed (`None` while only framing what came with the login).
    metrics: Option<&'l CommandMetrics>,
    counts: &'l mut Counts,
    state: &'l mut SessionState,
    logout: &'l mut Option<Box<Tag>>,
    intercept_logout: bool,
    /// The client sent bytes.
    active: bool,
}

impl Observer for Commands<'_> {
    fn on_frame(&mut self, frame: &Frame, whole: Option<&[u8]>, at: std::time::Instant) -> Action {
        let FrameKind::Command(name) = frame.kind else {
            return Action::Forward;
        };
        self.counts.commands += 1;
        // The proxy answers LOGOUT itself (once everything before it is answered) so that the
        // backend session can be reused; a desynchronised session cannot know when that is,
        // so its LOGOUT goes to the server.
        if name == CommandName::Logout
            && self.intercept_logout
            && whole.is_some()
            && frame.literals == 0
            && !self.state.idling()
            && !self.state.is_desynchronised()
        {
            if let Some(tag) = frame.tag {
                *self.logout = Some(Box::new(tag));
                return Action::Stop;
            }
        }
        self.state.on_command(frame, whole, at);
        Action::Forward
    }

    fn on_read(&mut self) {
        self.active = true;
    }

    fn on_written(&mut self, n: usize) {
        self.counts.bytes_up += n as u64;
        if let Some(metrics) = self.metrics {
            metrics.relayed_to_backend(n);
        }
    }

    fn on_flushed(&mut self) {
        // The clock only when a command just went out, not for every literal chunk.
        if self.state.awaiting_forward() {
            self.state.forwarded(std::time::Instant::now());
        }
    }
}
