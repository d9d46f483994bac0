//! One direction of the relay: bytes read from a source, framed, written to a destination.
//!
//! A [`Pump`] owns the direction's buffer and [`Framer`]; what the bytes mean to the session
//! (state, rewrites, counters, timings) is its [`Observer`]'s business. The per-chunk work
//! (frame what a read brought, write it, account for it) is split from the socket calls so
//! that the relay's cost per chunk can be measured without sockets (`benches/relay.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use imapproxy_codec::framer::{Direction, Frame, Framer};

#[cfg(target_os = "linux")]
use super::splice::Pipe;
use crate::stream::ReadReady;

/// Size of a direction's buffer while data flows.
pub(super) const BUF_SIZE: usize = 16 * 1024;
/// The largest read, reached while reads keep filling the buffer.
const MAX_READ: usize = 64 * 1024;
/// An unfinished first line shorter than this is held back until it completes, so that a
/// response that needs rewriting is seen whole. Longer lines are forwarded as they come.
const HOLD_MAX: usize = 8 * 1024;
/// A literal with at least this many bytes still to come, between two plain TCP sockets, goes
/// through a pipe with `splice(2)` rather than through the buffer. Below it, the extra system
/// call (into the pipe, out of it) costs more than the copies it saves.
#[cfg(target_os = "linux")]
const SPLICE_MIN: u64 = 16 * 1024;

/// What becomes of a message that just ended.
pub(super) enum Action {
    Forward,
    Replace(Vec<u8>),
    /// Drop this message and everything after it, and stop reading this direction.
    Stop,
}

/// Which end of a pump failed.
pub(super) enum Side {
    Src(io::Error),
    Dst(io::Error),
}

/// What a [`Pump`] tells the session about the bytes it moves; the session's answers steer
/// it. One value per direction and poll, holding the parts of the session it updates.
pub(super) trait Observer {
    /// A message ended. `whole` is all of it when the pump still holds its start; `at` is
    /// when the bytes that ended it were framed (right after the read that brought them).
    fn on_frame(&mut self, frame: &Frame, whole: Option<&[u8]>, at: Instant) -> Action;
    /// The source gave bytes (not its end).
    fn on_read(&mut self) {}
    /// `n` bytes went to the destination.
    fn on_written(&mut self, n: usize);
    /// Everything written so far was flushed to the destination.
    fn on_flushed(&mut self) {}
}

/// One direction: bytes read from `src`, scanned, written to `dst`. What it needs while bytes
/// flow (the framer, the buffer, the offsets into it, a splice pipe) is boxed and exists only
/// then: at rest (nothing buffered, at a message boundary, nothing to flush) it is dropped,
/// so that an idle session holds 16 bytes per direction instead of 248. A framer at a
/// boundary is a new framer, so nothing is lost; the one thing forgotten is that making a
/// pipe failed, and the next long literal tries again.
pub(super) struct Pump {
    dir: Direction,
    flow: Option<Box<Flow>>,
}

impl Pump {
    /// A direction whose first poll reads at once (rather than waiting for the socket): a
    /// TLS stream may already hold decrypted bytes from before the relay started.
    pub(super) fn new(dir: Direction) -> Self {
        Self {
            dir,
            flow: Some(Box::new(Flow::new(dir, BUF_SIZE))),
        }
    }

    /// The direction's working state, made if it is at rest.
    fn flow(&mut self) -> &mut Flow {
        let dir = self.dir;
        self.flow.get_or_insert_with(|| Box::new(Flow::new(dir, 0)))
    }

    /// Drops the working state if it is at rest.
    fn rest(&mut self) {
        if self.flow.as_ref().is_some_and(|f| f.at_rest()) {
            self.flow = None;
        }
    }

    /// Nothing buffered and no message half-way.
    pub(super) fn is_idle(&self) -> bool {
        self.flow.as_ref().is_none_or(|f| f.is_idle())
    }

    /// Everything read was written.
    pub(super) fn drained(&self) -> bool {
        self.flow.as_ref().is_none_or(|f| f.drained())
    }

    /// At a message boundary.
    pub(super) fn at_boundary(&self) -> bool {
        self.flow.as_ref().is_none_or(|f| f.framer.at_boundary())
    }

    /// See [`Framer::partial_tag`].
    pub(super) fn partial_tag(&self) -> Option<imapproxy_codec::Tag> {
        self.flow.as_ref()?.framer.partial_tag()
    }

    /// See [`Framer::continuation_seen`]; nothing to do at rest.
    pub(super) fn continuation_seen(&mut self) {
        if let Some(f) = &mut self.flow {
            f.framer.continuation_seen();
        }
    }

    /// See [`Framer::refused`]: the unfinished command ends here (its start is no longer
    /// held back). `None` at rest.
    pub(super) fn refuse(&mut self) -> Option<Frame> {
        let f = self.flow.as_mut()?;
        let frame = f.framer.refused()?;
        f.msg_start = None;
        Some(frame)
    }

    /// Stops reading (after the client's `LOGOUT`, or to move the session).
    pub(super) fn pause(&mut self) {
        self.flow().paused = true;
    }

    /// Reads again after [`Pump::pause`].
    pub(super) fn resume(&mut self) {
        if let Some(f) = &mut self.flow {
            f.paused = false;
        }
        self.rest();
    }

    /// The buffer, for bytes that arrived outside the relay (behind a login, while parked).
    pub(super) fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.flow().buf
    }

    /// Bytes read and not yet fed to the framer.
    pub(super) fn unscanned(&self) -> Option<&[u8]> {
        let f = self.flow.as_ref()?;
        f.buf.get(f.scanned..)
    }

    /// Feeds the unscanned bytes to the framer and decides what may be forwarded.
    pub(super) fn scan(&mut self, obs: &mut impl Observer) {
        if let Some(f) = &mut self.flow {
            f.scan(obs);
        }
    }

    /// Moves this direction forward as far as it can. `Ready(Ok(()))` means the source reached
    /// end of stream and everything was delivered.
    pub(super) fn poll_pump<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        obs: &mut impl Observer,
    ) -> Poll<Result<(), Side>>
    where
        S: ReadReady,
        D: ReadReady,
    {
        if self.flow.is_none() {
            // At rest: wait for the socket without holding anything.
            ready!(src.poll_read_ready(cx)).map_err(Side::Src)?;
        }
        let polled = self.flow().poll_pump(cx, src, dst, obs);
        if polled.is_pending() {
            self.rest();
        }
        polled
    }

    /// A read appended `filled` bytes to [`Pump::buffer_mut`] (0: end of stream): they are
    /// framed. For measuring the relay without sockets.
    pub(super) fn read(&mut self, filled: usize, obs: &mut impl Observer) {
        self.flow().read(filled, obs);
    }

    /// See [`Flow::write_all_to_sink`].
    pub(super) fn write_all_to_sink(&mut self, obs: &mut impl Observer) -> usize {
        let n = self.flow().write_all_to_sink(obs);
        self.rest();
        n
    }
}

/// What a [`Pump`] needs while bytes flow.
struct Flow {
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
    /// While a long literal streams between plain sockets: the pipe its bytes go through.
    /// Dropped when the direction goes idle.
    #[cfg(target_os = "linux")]
    pipe: Option<Pipe>,
    /// Making a pipe failed (out of descriptors, say): this direction stays on the buffer.
    #[cfg(target_os = "linux")]
    no_splice: bool,
}

impl Flow {
    /// With a buffer of `capacity` (none: the first poll waits for the socket).
    fn new(dir: Direction, capacity: usize) -> Self {
        Self {
            framer: Framer::new(dir),
            buf: BytesMut::with_capacity(capacity),
            read_size: BUF_SIZE,
            written: 0,
            forwardable: 0,
            scanned: 0,
            msg_start: None,
            needs_flush: false,
            eof: false,
            paused: false,
            #[cfg(target_os = "linux")]
            pipe: None,
            #[cfg(target_os = "linux")]
            no_splice: false,
        }
    }

    /// Bytes moved into the pipe and not yet out of it.
    fn piped(&self) -> usize {
        #[cfg(target_os = "linux")]
        if let Some(pipe) = &self.pipe {
            return pipe.held();
        }
        0
    }

    /// Nothing buffered and no message half-way.
    fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.framer.at_boundary() && self.piped() == 0
    }

    /// Nothing held, nothing owed (a flush, an end of stream to deliver), reading: what a new
    /// [`Flow`] would be, so it can go.
    fn at_rest(&self) -> bool {
        self.buf.capacity() == 0
            && self.framer.at_boundary()
            && self.pipe_is_none()
            && !self.needs_flush
            && !self.eof
            && !self.paused
    }

    fn pipe_is_none(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.pipe.is_none();
        #[cfg(not(target_os = "linux"))]
        true
    }

    /// Everything read was written.
    fn drained(&self) -> bool {
        self.written == self.buf.len() && self.piped() == 0
    }

    /// Feeds the unscanned bytes to the framer and decides what may be forwarded.
    fn scan(&mut self, obs: &mut impl Observer) {
        // Read when a message ends here, once for all that end in these bytes (which came
        // with one read, microseconds ago): a chunk in the middle of a literal costs no clock.
        let mut now = None;
        loop {
            if self.framer.at_boundary() {
                self.msg_start = Some(self.scanned);
            }
            match self.framer.advance(&self.buf[self.scanned..]) {
                Some((n, frame)) => {
                    let mut end = self.scanned + n;
                    let whole = self.msg_start.and_then(|s| self.buf.get(s..end));
                    let at = *now.get_or_insert_with(Instant::now);
                    match obs.on_frame(&frame, whole, at) {
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

    /// See [`Pump::poll_pump`].
    fn poll_pump<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        obs: &mut impl Observer,
    ) -> Poll<Result<(), Side>>
    where
        S: ReadReady,
        D: ReadReady,
    {
        // Bytes read while no relay ran (a parked session's next command) are scanned first.
        if self.scanned < self.buf.len() && !self.paused {
            self.scan(obs);
        }
        loop {
            while self.written < self.forwardable {
                let chunk = &self.buf[self.written..self.forwardable];
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, chunk)).map_err(Side::Dst)?;
                if n == 0 {
                    return Poll::Ready(Err(Side::Dst(io::ErrorKind::WriteZero.into())));
                }
                self.wrote(n, obs);
            }
            // What the pipe holds came after everything in the buffer, and before anything
            // read after it.
            #[cfg(target_os = "linux")]
            if let Some(pipe) = self.pipe.as_mut().filter(|p| p.held() > 0) {
                let Some(tcp) = dst.plain_tcp() else {
                    return Poll::Ready(Err(Side::Dst(io::Error::other(
                        "destination changed while a literal streamed",
                    ))));
                };
                let n = ready!(pipe.poll_drain(cx, tcp)).map_err(Side::Dst)?;
                self.needs_flush = true;
                obs.on_written(n);
                continue;
            }
            if self.needs_flush {
                ready!(Pin::new(&mut *dst).poll_flush(cx)).map_err(Side::Dst)?;
                self.flushed(obs);
            }
            self.compact();
            if self.eof {
                // The destination's write side stays open: the client's end of stream is
                // not the backend's (its session may be reused), nor the backend's the
                // client's (the session may move on).
                return Poll::Ready(Ok(()));
            }
            if self.paused {
                self.release_if_empty();
                return Poll::Pending;
            }
            #[cfg(target_os = "linux")]
            if let Some(want) = self.splice_len(src, dst) {
                ready!(self.poll_splice_in(cx, src, want, obs))?;
                continue;
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
            if filled > 0 {
                // Acknowledge at once: a client that wrote half a command waits for our ACK
                // before it sends the rest (Nagle), and a delayed ACK costs it ~40 ms.
                src.after_read();
            }
            self.read(filled, obs);
        }
    }

    /// How many bytes to move with `splice(2)` next, if this is the moment: the buffer is
    /// empty (everything before was written), a long literal streams, both ends are plain TCP
    /// and, towards the backend, the server already asked for the literal.
    #[cfg(target_os = "linux")]
    fn splice_len<S: ReadReady, D: ReadReady>(&self, src: &S, dst: &D) -> Option<usize> {
        if self.no_splice || !self.buf.is_empty() || self.framer.awaiting_continuation() {
            return None;
        }
        let remaining = self.framer.literal_remaining()?;
        if remaining < SPLICE_MIN {
            return None;
        }
        src.plain_tcp()?;
        dst.plain_tcp()?;
        // The pipe takes what fits; asking for more than a usize holds is pointless.
        Some(usize::try_from(remaining).unwrap_or(usize::MAX))
    }

    /// Moves up to `want` bytes of a literal from `src` into the pipe (made on first use).
    /// They count as read and are framed; the next turn of the loop writes them out.
    #[cfg(target_os = "linux")]
    fn poll_splice_in<S: ReadReady>(
        &mut self,
        cx: &mut Context<'_>,
        src: &S,
        want: usize,
        obs: &mut impl Observer,
    ) -> Poll<Result<(), Side>> {
        let Some(tcp) = src.plain_tcp() else {
            return Poll::Ready(Ok(()));
        };
        let pipe = match &mut self.pipe {
            Some(pipe) => pipe,
            None => match Pipe::new() {
                Ok(pipe) => self.pipe.insert(pipe),
                Err(e) => {
                    tracing::debug!(error = %e, "no pipe for splice(2); relaying through the buffer");
                    self.no_splice = true;
                    return Poll::Ready(Ok(()));
                }
            },
        };
        let n = match pipe.poll_fill(cx, tcp, want) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Side::Src(e))),
            Poll::Pending => {
                // Mid-literal: keep the pipe, but not the (empty) buffer.
                self.release_if_empty();
                return Poll::Pending;
            }
        };
        if n == 0 {
            self.read(0, obs);
        } else {
            // n <= want <= the literal's remaining bytes.
            self.framer.skip_literal(n as u64);
            src.after_read();
            obs.on_read();
        }
        Poll::Ready(Ok(()))
    }

    /// A read appended `filled` bytes to the buffer (0: end of stream): they are framed.
    fn read(&mut self, filled: usize, obs: &mut impl Observer) {
        if filled == 0 {
            self.eof = true;
        } else {
            obs.on_read();
        }
        self.scan(obs);
    }

    /// `n` more bytes of the buffer were written to the destination.
    fn wrote(&mut self, n: usize, obs: &mut impl Observer) {
        self.written += n;
        self.needs_flush = true;
        obs.on_written(n);
    }

    /// The destination flushed what was written.
    fn flushed(&mut self, obs: &mut impl Observer) {
        self.needs_flush = false;
        obs.on_flushed();
    }

    /// What [`Pump::poll_pump`] does with a destination that takes everything at once: the
    /// forwardable bytes are written and flushed, the buffer compacted. Returns how many
    /// bytes were written. For measuring the relay without sockets.
    fn write_all_to_sink(&mut self, obs: &mut impl Observer) -> usize {
        let n = self.forwardable - self.written;
        if n > 0 {
            self.wrote(n, obs);
        }
        if self.needs_flush {
            self.flushed(obs);
        }
        self.compact();
        n
    }

    /// Between reads with nothing buffered: give the memory back and start small again.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.read_size = BUF_SIZE;
            #[cfg(target_os = "linux")]
            if self.framer.at_boundary() && self.piped() == 0 {
                self.pipe = None;
            }
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
