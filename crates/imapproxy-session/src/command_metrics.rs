//! Per-command latency in `/metrics`, at a cost the relay does not notice.
//!
//! Two histograms per command name, fed by the relay from the commands the session state
//! already tracks (nothing is parsed twice):
//!
//! - `imapproxy_command_backend_seconds{command}`: from the moment the command was flushed
//!   to the backend until the read that brought its tagged reply. The backend's time plus
//!   loopback or network; for an answer larger than the socket buffers (a big `FETCH`) also
//!   the time the client took to take it, since a backend cannot send faster than the client
//!   reads.
//! - `imapproxy_command_proxy_seconds{command}`: the proxy's own part: from the read that
//!   completed the command to its flush towards the backend, plus from the read that brought
//!   the tagged reply to its flush towards the client. Time a session's task waits for a
//!   worker thread before it reads is not seen (no timestamp exists for it).
//!
//! `command` is a name from [`CommandName`], a fixed list of the IMAP commands a proxy
//! meets; anything else (vendor commands, `UID` with an unknown word) is `OTHER`, so the
//! label set stays bounded whatever clients send. `IDLE` is not timed: its length is the
//! client's choice, not anyone's latency. A command answered before it was all forwarded
//! (RFC 7888 early replies, a refused synchronizing literal) is not timed either.
//!
//! Cost per command: the clock is read once per read that brings bytes and once per flush
//! that completes a command or delivers a reply (never per literal chunk in between); the
//! handles are registered on first use of a name and kept in a table indexed by
//! [`CommandName::index`], so a record is an array lookup and the recorder's lock-free push.
//! No allocation and no label strings per command.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imapproxy_codec::CommandName;
use metrics::{Counter, Histogram};

const BACKEND_SECONDS: &str = "imapproxy_command_backend_seconds";
const PROXY_SECONDS: &str = "imapproxy_command_proxy_seconds";
const BYTES: &str = "imapproxy_bytes_relayed_total";
/// One slot per [`CommandName`].
const SLOTS: usize = CommandName::ALL.len();
/// [`CommandTiming::forwarded_ns`] of a command not yet all forwarded.
const NOT_FORWARDED: u32 = u32::MAX;
/// Answers waiting for delivery kept between bursts; a longer list is freed once delivered,
/// so that an idle session holds none.
const KEEP_WAITING: usize = 16;

/// The label of `name`: its upper-case name, `OTHER` for anything off the list.
fn label(name: CommandName) -> &'static str {
    match name {
        CommandName::UidOther => CommandName::Other.as_str(),
        name => name.as_str(),
    }
}

/// The histogram handles of one proxy, registered with the installed recorder on the first
/// command of each name (a name never seen shows no empty series in `/metrics`). Per proxy
/// rather than process-wide, so that a recorder installed later (a test's, a bench's) is used
/// by the proxies built after it.
pub(crate) struct CommandMetrics {
    backend: [OnceLock<Histogram>; SLOTS],
    proxy: [OnceLock<Histogram>; SLOTS],
    /// `imapproxy_bytes_relayed_total{direction}`, counted as bytes are written (so that a
    /// rate over a few seconds shows traffic as it flows, not as sessions end).
    to_backend: OnceLock<Counter>,
    to_client: OnceLock<Counter>,
}

impl Default for CommandMetrics {
    fn default() -> Self {
        Self {
            backend: [const { OnceLock::new() }; SLOTS],
            proxy: [const { OnceLock::new() }; SLOTS],
            to_backend: OnceLock::new(),
            to_client: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for CommandMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandMetrics").finish_non_exhaustive()
    }
}

impl CommandMetrics {
    /// `n` bytes of the client's went to the backend.
    pub(crate) fn relayed_to_backend(&self, n: usize) {
        self.to_backend
            .get_or_init(|| metrics::counter!(BYTES, "direction" => "client_to_backend"))
            .increment(n as u64);
    }

    /// `n` bytes of the backend's went to the client.
    pub(crate) fn relayed_to_client(&self, n: usize) {
        self.to_client
            .get_or_init(|| metrics::counter!(BYTES, "direction" => "backend_to_client"))
            .increment(n as u64);
    }

    fn backend(&self, name: CommandName) -> &Histogram {
        Self::handle(&self.backend, BACKEND_SECONDS, name)
    }

    fn proxy(&self, name: CommandName) -> &Histogram {
        Self::handle(&self.proxy, PROXY_SECONDS, name)
    }

    fn handle<'a>(
        table: &'a [OnceLock<Histogram>; SLOTS],
        metric: &'static str,
        name: CommandName,
    ) -> &'a Histogram {
        // `index()` is below `SLOTS` by construction (`ALL` lists every name); `Other`'s slot
        // is the fallback all the same, so that no input can index out of bounds.
        let slot = table
            .get(name.index())
            .unwrap_or(&table[CommandName::Other.index()]);
        slot.get_or_init(|| metrics::histogram!(metric, "command" => label(name)))
    }
}

/// When a command reached the proxy and how long it took to get all of it to the backend.
/// Kept with the command in the session state; 24 bytes with its name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CommandTiming {
    /// When the read that completed the command returned.
    received: Instant,
    /// Nanoseconds from `received` until the command was flushed to the backend (saturating
    /// below [`NOT_FORWARDED`], at 4.3 s), or [`NOT_FORWARDED`]. Not an `Option<Instant>`:
    /// this saves 16 bytes per command in flight, and a session in `IDLE` keeps one.
    forwarded_ns: u32,
}

impl CommandTiming {
    /// A command completed by the read that returned at `at`.
    pub(crate) fn received(at: Instant) -> Self {
        Self {
            received: at,
            forwarded_ns: NOT_FORWARDED,
        }
    }

    pub(crate) fn is_forwarded(&self) -> bool {
        self.forwarded_ns != NOT_FORWARDED
    }

    /// The command's last byte was flushed to the backend at `at`.
    pub(crate) fn forwarded(&mut self, at: Instant) {
        let ns = at.saturating_duration_since(self.received).as_nanos();
        self.forwarded_ns =
            u32::try_from(ns).map_or(NOT_FORWARDED - 1, |n| n.min(NOT_FORWARDED - 1));
    }

    /// When the command was all forwarded, and how long the proxy held it.
    fn forwarded_at(&self) -> Option<(Instant, Duration)> {
        self.is_forwarded().then(|| {
            let held = Duration::from_nanos(u64::from(self.forwarded_ns));
            (self.received + held, held)
        })
    }
}

/// A command whose tagged reply was just read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answered {
    pub name: CommandName,
    pub timing: CommandTiming,
}

/// A tagged reply read but not yet flushed to the client: its proxy time is known then.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    name: CommandName,
    /// The proxy's time on the command's way up.
    up: Duration,
    /// When the read that brought the reply returned.
    read_at: Instant,
}

/// The tagged replies of one backend connection between their read and their delivery.
#[derive(Debug, Default)]
pub(crate) struct Delivering {
    waiting: Vec<Waiting>,
}

impl Delivering {
    /// The tagged reply to `answered` came with the read that returned at `at`: its backend
    /// time is recorded now, its proxy time once it is delivered.
    pub(crate) fn answered(&mut self, metrics: &CommandMetrics, answered: Answered, at: Instant) {
        let Answered { name, timing } = answered;
        if name == CommandName::Idle {
            return;
        }
        let Some((forwarded, up)) = timing.forwarded_at() else {
            return;
        };
        metrics
            .backend(name)
            .record(at.saturating_duration_since(forwarded));
        self.waiting.push(Waiting {
            name,
            up,
            read_at: at,
        });
    }

    /// Whether a reply waits for its delivery to be timed.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Everything read so far reached the client at `at`.
    pub(crate) fn delivered(&mut self, metrics: &CommandMetrics, at: Instant) {
        for w in self.waiting.drain(..) {
            let down = at.saturating_duration_since(w.read_at);
            metrics.proxy(w.name).record(w.up + down);
        }
        if self.waiting.capacity() > KEEP_WAITING {
            self.waiting = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_a_slot_and_unknown_ones_share_other() {
        for name in CommandName::ALL {
            assert!(name.index() < SLOTS);
        }
        assert_eq!(label(CommandName::UidOther), "OTHER");
        assert_eq!(label(CommandName::Other), "OTHER");
        assert_eq!(label(CommandName::UidFetch), "UID FETCH");
    }

    #[test]
    fn forwarding_time_saturates_instead_of_reading_as_unforwarded() {
        let t0 = Instant::now();
        let mut t = CommandTiming::received(t0);
        assert!(!t.is_forwarded() && t.forwarded_at().is_none());
        t.forwarded(t0 + Duration::from_micros(7));
        assert_eq!(
            t.forwarded_at(),
            Some((t0 + Duration::from_micros(7), Duration::from_micros(7)))
        );
        t.forwarded(t0 + Duration::from_secs(3600));
        assert!(t.is_forwarded());
        let (_, held) = t.forwarded_at().unwrap();
        assert!(held > Duration::from_secs(4) && held < Duration::from_secs(5));
        // A clock that went backwards (it cannot, but the state must not care) is zero.
        t.forwarded(t0 - Duration::from_millis(1));
        assert_eq!(t.forwarded_at().map(|(_, h)| h), Some(Duration::ZERO));
    }

    #[test]
    fn delivered_replies_are_timed_and_an_idle_session_keeps_no_list() {
        let metrics = CommandMetrics::default();
        let mut d = Delivering::default();
        let t0 = Instant::now();
        let mut timing = CommandTiming::received(t0);
        let unforwarded = Answered {
            name: CommandName::Noop,
            timing,
        };
        d.answered(&metrics, unforwarded, t0);
        assert!(d.is_empty(), "an early reply is not timed");
        timing.forwarded(t0);
        for name in [CommandName::Idle, CommandName::Noop] {
            d.answered(&metrics, Answered { name, timing }, t0);
        }
        assert_eq!(d.waiting.len(), 1, "IDLE is not timed");
        for _ in 0..100 {
            d.answered(
                &metrics,
                Answered {
                    name: CommandName::UidFetch,
                    timing,
                },
                t0,
            );
        }
        d.delivered(&metrics, t0);
        assert!(d.is_empty());
        assert_eq!(d.waiting.capacity(), 0);
    }
}
