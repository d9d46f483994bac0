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
//! that completes a command or delivers a reply (never per literal chunk in between); a
//! record is two relaxed atomic additions into the process's fixed-bucket table
//! ([`histogram`]), not the `metrics` recorder: no allocation, no lock, no label strings.
//! The binary appends the table to the exporter's text with [`render_command_histograms`].

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imapproxy_codec::CommandName;
use metrics::Counter;

mod histogram;

use histogram::{COMMAND_HISTOGRAMS, CommandHistograms};

const BYTES: &str = "imapproxy_bytes_relayed_total";
/// [`CommandTiming::forwarded_ns`] of a command not yet all forwarded.
const NOT_FORWARDED: u32 = u32::MAX;

/// Appends the per-command latency histograms (`imapproxy_command_backend_seconds` and
/// `imapproxy_command_proxy_seconds`, by `command`) to `out`, in the Prometheus text format:
/// what the binary adds to its exporter's rendering for `GET /metrics`. A command name never
/// timed has no series; nothing is appended before the first command.
pub fn render_command_histograms(out: &mut String) {
    COMMAND_HISTOGRAMS.render(out);
}

/// Not an API: turns the recording of the per-command histograms on (the default) or off,
/// for the whole process, so that a bench can measure what they cost.
#[doc(hidden)]
pub fn set_command_histograms(enabled: bool) {
    COMMAND_HISTOGRAMS.set_enabled(enabled);
}

/// What the relay records into: the process's per-command histograms, and the bytes
/// counters, registered with the installed `metrics` recorder on first use. The counters are
/// per value rather than process-wide, so that a recorder installed later (a test's, a
/// bench's) is used by the proxies built after it.
pub(crate) struct CommandMetrics {
    histograms: &'static CommandHistograms,
    /// `imapproxy_bytes_relayed_total{direction}`, counted as bytes are written (so that a
    /// rate over a few seconds shows traffic as it flows, not as sessions end).
    to_backend: OnceLock<Counter>,
    to_client: OnceLock<Counter>,
}

impl Default for CommandMetrics {
    fn default() -> Self {
        Self::recording_into(&COMMAND_HISTOGRAMS)
    }
}

impl std::fmt::Debug for CommandMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandMetrics").finish_non_exhaustive()
    }
}

impl CommandMetrics {
    fn recording_into(histograms: &'static CommandHistograms) -> Self {
        Self {
            histograms,
            to_backend: OnceLock::new(),
            to_client: OnceLock::new(),
        }
    }

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
    /// The proxy's time on the command's way up, in nanoseconds (saturating at 4.3 s, as
    /// [`CommandTiming`] holds it): a relay keeps one of these inline.
    up_ns: u32,
    /// When the read that brought the reply returned.
    read_at: Instant,
}

/// The tagged replies of one backend connection between their read and their delivery.
/// The first is kept inline: one reply at a time (the usual case) allocates nothing, and the
/// list that holds the rest of a pipelined burst is freed once it is delivered, so that an
/// idle session holds none (a list kept between bursts cost every idle session 160 bytes).
#[derive(Debug, Default)]
pub(crate) struct Delivering {
    first: Option<Waiting>,
    /// Empty while `first` is `None`.
    more: Vec<Waiting>,
}

impl Delivering {
    /// The tagged reply to `answered` came with the read that returned at `at`: its backend
    /// time is recorded now, its proxy time once it is delivered.
    pub(crate) fn answered(&mut self, metrics: &CommandMetrics, answered: Answered, at: Instant) {
        let Answered { name, timing } = answered;
        if name == CommandName::Idle || !metrics.histograms.enabled() {
            return;
        }
        let Some((forwarded, up)) = timing.forwarded_at() else {
            return;
        };
        metrics
            .histograms
            .backend
            .record(name, at.saturating_duration_since(forwarded));
        let waiting = Waiting {
            name,
            up_ns: u32::try_from(up.as_nanos()).unwrap_or(u32::MAX),
            read_at: at,
        };
        if self.first.is_none() {
            self.first = Some(waiting);
        } else {
            self.more.push(waiting);
        }
    }

    /// Whether a reply waits for its delivery to be timed.
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Everything read so far reached the client at `at`.
    pub(crate) fn delivered(&mut self, metrics: &CommandMetrics, at: Instant) {
        let more = std::mem::take(&mut self.more);
        for w in self.first.take().into_iter().chain(more) {
            let down = at.saturating_duration_since(w.read_at);
            let up = Duration::from_nanos(u64::from(w.up_ns));
            metrics.histograms.proxy.record(w.name, up + down);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let table = Box::leak(Box::new(CommandHistograms::new()));
        let metrics = CommandMetrics::recording_into(table);
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
        assert!(d.first.is_some() && d.more.is_empty(), "IDLE is not timed");
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
        assert_eq!(table.backend.count(CommandName::UidFetch), 100);
        assert_eq!(
            table.proxy.count(CommandName::UidFetch),
            0,
            "not delivered yet"
        );
        d.delivered(&metrics, t0);
        assert!(d.is_empty());
        assert!(d.first.is_none() && d.more.capacity() == 0);
        for name in [CommandName::Noop, CommandName::UidFetch, CommandName::Idle] {
            let n = table.backend.count(name);
            assert_eq!(
                table.proxy.count(name),
                n,
                "{name:?}: both times or neither"
            );
        }
        assert_eq!(table.proxy.count(CommandName::Noop), 1);
        assert_eq!(table.proxy.count(CommandName::UidFetch), 100);
        assert_eq!(table.proxy.count(CommandName::Idle), 0);
    }

    #[test]
    fn nothing_is_recorded_while_the_histograms_are_off() {
        let table = Box::leak(Box::new(CommandHistograms::new()));
        let metrics = CommandMetrics::recording_into(table);
        let mut d = Delivering::default();
        let t0 = Instant::now();
        let mut timing = CommandTiming::received(t0);
        timing.forwarded(t0);
        let answered = Answered {
            name: CommandName::Noop,
            timing,
        };
        table.set_enabled(false);
        d.answered(&metrics, answered, t0);
        d.delivered(&metrics, t0);
        assert_eq!(table.backend.count(CommandName::Noop), 0);
        assert_eq!(table.proxy.count(CommandName::Noop), 0);
        table.set_enabled(true);
        d.answered(&metrics, answered, t0);
        d.delivered(&metrics, t0);
        assert_eq!(table.backend.count(CommandName::Noop), 1);
        assert_eq!(table.proxy.count(CommandName::Noop), 1);
    }
}
