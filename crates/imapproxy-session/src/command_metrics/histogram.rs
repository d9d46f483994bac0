//! Fixed-bucket latency histograms, one series per command name, kept in atomic counters.
//!
//! Why not the `metrics` facade: `metrics-exporter-prometheus` keeps every raw sample of a
//! histogram in a lock-free block list (an allocation every few dozen samples) and sorts them
//! into buckets only at upkeep or render time. A record here is two relaxed `fetch_add`s into
//! counters allocated once, in static memory: the bucket found by comparing against at most
//! [`MAX_BOUNDS`] bounds (no branch per bound), and the sum in nanoseconds. No allocation, no
//! lock, no label strings. The count is not a third counter: it is the total of the buckets,
//! so that a scrape always shows `_count` equal to the `+Inf` bucket.
//!
//! The bounds are the ones the binary used to give the exporter for these two metrics, so
//! that dashboards and recording rules see the same `le` labels.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use imapproxy_codec::CommandName;

/// Bounds of a histogram at most; each slot has room for this many buckets and `+Inf`.
const MAX_BOUNDS: usize = 14;
/// One slot per [`CommandName`].
const SLOTS: usize = CommandName::ALL.len();

/// `imapproxy_command_backend_seconds` bucket bounds, in nanoseconds: 0.5 ms to 10 s, the
/// binary's `LATENCY_BUCKETS` for every other `_seconds` histogram.
const BACKEND_BOUNDS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// `imapproxy_command_proxy_seconds` bucket bounds, in nanoseconds: the proxy's own time per
/// command is microseconds, 1 µs to 10 ms.
const PROXY_BOUNDS_NS: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000,
    10_000_000,
];

/// The two per-command histograms of the process. Process-wide, like the `metrics`
/// recorder the rest of the proxy's metrics go to: every proxy in a process adds to the
/// same series, as they did when these were `metrics` histograms.
pub(crate) static COMMAND_HISTOGRAMS: CommandHistograms = CommandHistograms::new();

/// The per-command latency histograms: backend time and proxy time.
pub(crate) struct CommandHistograms {
    pub(super) backend: Histogram<14>,
    pub(super) proxy: Histogram<12>,
    /// Off: records are dropped (for benches that measure what the histograms cost).
    enabled: AtomicBool,
}

impl CommandHistograms {
    pub(crate) const fn new() -> Self {
        Self {
            backend: Histogram::new(
                "imapproxy_command_backend_seconds",
                "Time from a command flushed to the backend until the read that brought its \
                 tagged reply, by command.",
                BACKEND_BOUNDS_NS,
            ),
            proxy: Histogram::new(
                "imapproxy_command_proxy_seconds",
                "The proxy's own time per command: from the read that completed it to its \
                 flush to the backend, plus from the read of its tagged reply to its flush to \
                 the client, by command.",
                PROXY_BOUNDS_NS,
            ),
            enabled: AtomicBool::new(true),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed);
    }

    /// Appends both histograms to `out` in the Prometheus text format.
    pub(crate) fn render(&self, out: &mut String) {
        self.backend.render(out);
        self.proxy.render(out);
    }
}

/// The counters of one command name: the sum first, then the buckets (`+Inf` last), 16
/// counters in two cache lines of their own, so that two commands recorded on two threads do
/// not contend for a line.
#[repr(align(64))]
struct Slot {
    sum_ns: AtomicU64,
    buckets: [AtomicU64; MAX_BOUNDS + 1],
}

impl Slot {
    const fn new() -> Self {
        Self {
            sum_ns: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; MAX_BOUNDS + 1],
        }
    }
}

/// One histogram metric with `N` bucket bounds, a series per command name.
pub(crate) struct Histogram<const N: usize> {
    name: &'static str,
    help: &'static str,
    /// Upper bounds in nanoseconds, ascending; a sample equal to a bound is in its bucket
    /// (Prometheus `le`, "less than or equal").
    bounds_ns: [u64; N],
    slots: [Slot; SLOTS],
}

impl<const N: usize> Histogram<N> {
    const fn new(name: &'static str, help: &'static str, bounds_ns: [u64; N]) -> Self {
        const { assert!(N <= MAX_BOUNDS, "a slot has room for MAX_BOUNDS bounds") };
        Self {
            name,
            help,
            bounds_ns,
            slots: [const { Slot::new() }; SLOTS],
        }
    }

    /// Adds `elapsed` to the series of `name`.
    pub(crate) fn record(&self, name: CommandName, elapsed: Duration) {
        let ns = elapsed
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(elapsed.subsec_nanos()));
        // The number of bounds below the sample is its bucket's index: `N` compares that the
        // compiler unrolls into branch-free code, cheaper than a search over so few.
        let bucket = self.bounds_ns.iter().filter(|&&b| ns > b).count();
        // `slot()` is below `SLOTS` and `bucket` at most `N`: neither `get` fails.
        let Some(slot) = self.slots.get(slot(name)) else {
            return;
        };
        if let Some(b) = slot.buckets.get(bucket) {
            b.fetch_add(1, Relaxed);
        }
        slot.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Appends the series of every command name recorded so far, by label, to `out`: nothing
    /// at all when no command was recorded (as the exporter shows no family without series).
    fn render(&self, out: &mut String) {
        let mut seen: Vec<(&'static str, Snapshot<N>)> = CommandName::ALL
            .iter()
            .filter(|&&name| slot(name) == name.index())
            .filter_map(|&name| {
                let s = self.snapshot(name);
                (s.count > 0).then_some((label(name), s))
            })
            .collect();
        if seen.is_empty() {
            return;
        }
        seen.sort_unstable_by_key(|&(label, _)| label);
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (command, s) in &seen {
            for (bound, cumulative) in self.bounds_ns.iter().zip(s.cumulative) {
                let le = seconds(*bound);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{command=\"{command}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let (count, sum) = (s.count, seconds(s.sum_ns));
            let _ = writeln!(
                out,
                "{name}_bucket{{command=\"{command}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "{name}_sum{{command=\"{command}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{command=\"{command}\"}} {count}");
        }
        out.push('\n');
    }

    /// Samples of `name` so far.
    #[cfg(test)]
    pub(super) fn count(&self, name: CommandName) -> u64 {
        self.snapshot(name).count
    }

    /// The counters of `name`'s series as they are now, made cumulative.
    fn snapshot(&self, name: CommandName) -> Snapshot<N> {
        let mut s = Snapshot {
            cumulative: [0; N],
            count: 0,
            sum_ns: 0,
        };
        let Some(slot) = self.slots.get(slot(name)) else {
            return s;
        };
        for (i, bucket) in slot.buckets.iter().take(N + 1).enumerate() {
            s.count += bucket.load(Relaxed);
            if let Some(c) = s.cumulative.get_mut(i) {
                *c = s.count;
            }
        }
        s.sum_ns = slot.sum_ns.load(Relaxed);
        s
    }
}

/// One series read for rendering.
struct Snapshot<const N: usize> {
    /// Samples at or below each bound.
    cumulative: [u64; N],
    /// All samples: the `+Inf` bucket.
    count: u64,
    sum_ns: u64,
}

/// The slot of `name`: its own, but `UID` with an unknown word shares `OTHER`'s (one label).
fn slot(name: CommandName) -> usize {
    match name {
        CommandName::UidOther => CommandName::Other.index(),
        name => name.index(),
    }
}

/// The label of `name`: its upper-case name, `OTHER` for anything off the list.
fn label(name: CommandName) -> &'static str {
    match name {
        CommandName::UidOther => CommandName::Other.as_str(),
        name => name.as_str(),
    }
}

/// Nanoseconds as seconds, printed the way the exporter prints its `f64`s (`0.0005`, `1`,
/// `2.5`): the quotient is the `f64` nearest the decimal, as a literal `0.0005` is.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary's bucket bounds as it gave them to the exporter, in seconds.
    const LATENCY_BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    const PROXY_TIME_BUCKETS: &[f64] = &[
        0.000_001,
        0.000_002_5,
        0.000_005,
        0.000_01,
        0.000_025,
        0.000_05,
        0.000_1,
        0.000_25,
        0.000_5,
        0.001,
        0.005,
        0.01,
    ];

    /// `name{labels} value` lines of `text` as (series, value); panics on a line that is
    /// neither that, a `# HELP`/`# TYPE` comment nor blank.
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.is_empty() && !l.starts_with("# HELP ") && !l.starts_with("# TYPE "))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect(l);
                (series.to_owned(), value.parse().expect(l))
            })
            .collect()
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        samples(text)
            .into_iter()
            .find_map(|(s, v)| (s == series).then_some(v))
    }

    fn rendered(h: &CommandHistograms) -> String {
        let mut out = String::new();
        h.render(&mut out);
        out
    }

    #[test]
    fn bounds_are_the_ones_dashboards_know() {
        let h = CommandHistograms::new();
        let le = |bounds: &[u64]| -> Vec<String> {
            bounds.iter().map(|&b| seconds(b).to_string()).collect()
        };
        let exporter =
            |bounds: &[f64]| -> Vec<String> { bounds.iter().map(|b| b.to_string()).collect() };
        assert_eq!(le(&h.backend.bounds_ns), exporter(LATENCY_BUCKETS));
        assert_eq!(le(&h.proxy.bounds_ns), exporter(PROXY_TIME_BUCKETS));
        assert_eq!(seconds(h.proxy.bounds_ns[1]).to_string(), "0.0000025");
        assert!(h.backend.bounds_ns.is_sorted() && h.proxy.bounds_ns.is_sorted());
    }

    #[test]
    fn a_sample_equal_to_a_bound_is_in_that_bucket() {
        let h = CommandHistograms::new();
        let us = Duration::from_micros;
        for d in [
            us(1),
            us(1) + Duration::from_nanos(1),
            Duration::ZERO,
            us(10_000),
        ] {
            h.proxy.record(CommandName::Noop, d);
        }
        h.proxy.record(CommandName::Noop, Duration::from_secs(3600));
        h.proxy.record(CommandName::Noop, Duration::MAX);
        let s = h.proxy.snapshot(CommandName::Noop);
        // le=1µs: 0 and 1 µs; le=2.5µs: + 1.001 µs; le=10ms: + 10 ms; +Inf: + an hour, MAX.
        assert_eq!(s.cumulative[0], 2);
        assert_eq!(s.cumulative[1], 3);
        assert_eq!(s.cumulative[10], 3);
        assert_eq!(s.cumulative[11], 4);
        assert_eq!(s.count, 6);
    }

    #[test]
    fn sum_and_count_add_up_per_command() {
        let h = CommandHistograms::new();
        h.backend
            .record(CommandName::Select, Duration::from_millis(3));
        h.backend
            .record(CommandName::Select, Duration::from_millis(7));
        h.backend
            .record(CommandName::Fetch, Duration::from_secs(20));
        let text = rendered(&h);
        let series = |s: &str| value(&text, s);
        let b = "imapproxy_command_backend_seconds";
        assert_eq!(
            series(&format!("{b}_count{{command=\"SELECT\"}}")),
            Some(2.0)
        );
        assert_eq!(
            series(&format!("{b}_sum{{command=\"SELECT\"}}")),
            Some(0.01)
        );
        assert_eq!(
            series(&format!("{b}_count{{command=\"FETCH\"}}")),
            Some(1.0)
        );
        assert_eq!(series(&format!("{b}_sum{{command=\"FETCH\"}}")), Some(20.0));
        assert_eq!(
            series(&format!("{b}_bucket{{command=\"FETCH\",le=\"10\"}}")),
            Some(0.0)
        );
        assert_eq!(
            series(&format!("{b}_bucket{{command=\"FETCH\",le=\"+Inf\"}}")),
            Some(1.0)
        );
        assert_eq!(
            series(&format!("{b}_bucket{{command=\"SELECT\",le=\"0.005\"}}")),
            Some(1.0)
        );
        assert!(!text.contains("imapproxy_command_proxy_seconds"), "{text}");
    }

    #[test]
    fn rendering_is_prometheus_text_with_only_the_names_seen() {
        let h = CommandHistograms::new();
        assert_eq!(rendered(&h), "", "no command, no family");
        h.proxy
            .record(CommandName::UidFetch, Duration::from_micros(4));
        h.proxy
            .record(CommandName::Other, Duration::from_micros(30));
        h.proxy
            .record(CommandName::UidOther, Duration::from_micros(30));
        h.proxy
            .record(CommandName::Noop, Duration::from_micros(600));
        let text = rendered(&h);
        let p = "imapproxy_command_proxy_seconds";
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("# HELP {p} {}", h.proxy.help));
        assert_eq!(lines[1], format!("# TYPE {p} histogram"));
        assert!(text.ends_with("\n\n"), "a blank line ends the family");
        // Per series: 12 buckets, +Inf, sum, count; by label; UID with an unknown word is
        // OTHER, one series with OTHER's.
        let samples = samples(&text);
        assert_eq!(samples.len(), 3 * 15, "{text}");
        let commands: Vec<&str> = samples
            .iter()
            .filter(|(s, _)| s.starts_with(&format!("{p}_count")))
            .map(|(s, _)| s.split('"').nth(1).unwrap())
            .collect();
        assert_eq!(commands, ["NOOP", "OTHER", "UID FETCH"]);
        assert_eq!(
            value(&text, &format!("{p}_count{{command=\"OTHER\"}}")),
            Some(2.0)
        );
        // Buckets are cumulative, ascending in `le`, and end at the count.
        for command in commands {
            let buckets: Vec<(f64, f64)> = samples
                .iter()
                .filter_map(|(s, v)| {
                    let rest =
                        s.strip_prefix(&format!("{p}_bucket{{command=\"{command}\",le=\""))?;
                    let le = rest.strip_suffix("\"}")?;
                    Some((
                        if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap()
                        },
                        *v,
                    ))
                })
                .collect();
            assert_eq!(buckets.len(), 13);
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
            );
            let count = value(&text, &format!("{p}_count{{command=\"{command}\"}}"));
            assert_eq!(buckets.last().map(|b| b.1), count);
        }
        assert_eq!(
            value(
                &text,
                &format!("{p}_bucket{{command=\"NOOP\",le=\"0.0005\"}}")
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                &format!("{p}_bucket{{command=\"NOOP\",le=\"0.001\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, &format!("{p}_sum{{command=\"NOOP\"}}")),
            Some(0.0006)
        );
    }

    #[test]
    fn every_name_has_a_slot_and_unknown_ones_share_other() {
        for name in CommandName::ALL {
            assert!(slot(name) < SLOTS);
        }
        assert_eq!(slot(CommandName::UidOther), slot(CommandName::Other));
        assert_eq!(label(CommandName::UidOther), "OTHER");
        assert_eq!(label(CommandName::Other), "OTHER");
        assert_eq!(label(CommandName::UidFetch), "UID FETCH");
    }

    #[test]
    fn a_slot_is_two_cache_lines() {
        assert_eq!(size_of::<Slot>(), 128);
        assert_eq!(align_of::<Slot>(), 64);
    }
}
