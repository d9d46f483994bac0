//! The last minutes of the proxy's own metrics, for the console's charts (`GET /stats`).
//!
//! A task samples every [`INTERVAL`] into a ring of [`CAPACITY`] samples (five minutes), so
//! memory stays bounded however long the proxy runs; nothing is kept anywhere else.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::scrape::{Latency, Scrape};

/// How often a sample is taken.
pub(super) const INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: five minutes at one per second.
pub(super) const CAPACITY: usize = 300;

/// One interval between two readings of the metrics.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sample {
    /// When the interval ended, in milliseconds since the Unix epoch.
    pub(super) at_ms: u64,
    /// Client connections open at its end.
    pub(super) sessions: usize,
    /// Logins per second during the interval, by result.
    pub(super) logins_per_s: BTreeMap<String, f64>,
    /// Login latency percentiles, in seconds; `None` without logins to describe.
    pub(super) login_p50: Option<f64>,
    pub(super) login_p99: Option<f64>,
    /// Which logins the percentiles describe.
    pub(super) latency_over: LatencyOver,
    /// Bytes per second from clients to backends, and back, as relayed during the interval
    /// (the session library counts them as it writes them).
    pub(super) bytes_in_per_s: f64,
    pub(super) bytes_out_per_s: f64,
}

/// Which logins a sample's latency percentiles describe; it depends on how the exporter keeps
/// `imapproxy_login_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LatencyOver {
    /// A histogram: the logins of this interval, from the difference of the cumulative bucket
    /// counts. Each percentile is the upper bound of the bucket that holds it (the largest
    /// finite bound when it lies beyond), so it is as fine as the buckets are.
    Interval,
    /// A summary (the exporter's default): the logins in the exporter's sliding window, the
    /// last 40 to 60 s, read at the end of the interval. Smoother than the interval's own, and
    /// said so on the chart.
    SlidingWindow,
    /// Not reported yet (no login so far).
    Unknown,
}

impl LatencyOver {
    fn as_str(self) -> &'static str {
        match self {
            Self::Interval => "per 1 s interval",
            Self::SlidingWindow => "over a sliding window of the last 40-60 s",
            Self::Unknown => "no logins yet",
        }
    }
}

impl Sample {
    /// The interval from `before` to `after`, `elapsed` long, ending at `at`.
    pub(super) fn between(
        before: &Scrape,
        after: &Scrape,
        elapsed: Duration,
        sessions: usize,
        at: SystemTime,
    ) -> Self {
        // Rates over the measured time, not the nominal second: a late tick is not a spike.
        let secs = elapsed.as_secs_f64().max(1e-3);
        let rate = |now: f64, then: f64| (now - then).max(0.0) / secs;
        let logins_per_s = after
            .logins
            .iter()
            .map(|(result, n)| {
                let then = before.logins.get(result).copied().unwrap_or(0.0);
                (result.clone(), rate(*n, then))
            })
            .collect();
        let (login_p50, login_p99, latency_over) = latency(&before.latency, &after.latency);
        Self {
            at_ms: at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            sessions,
            logins_per_s,
            login_p50,
            login_p99,
            latency_over,
            bytes_in_per_s: rate(after.bytes_in, before.bytes_in),
            bytes_out_per_s: rate(after.bytes_out, before.bytes_out),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "t": self.at_ms,
            "sessions": self.sessions,
            "logins_per_s": self.logins_per_s,
            "login_p50": self.login_p50,
            "login_p99": self.login_p99,
            "bytes_in_per_s": self.bytes_in_per_s,
            "bytes_out_per_s": self.bytes_out_per_s,
        })
    }
}

/// The p50 and p99 of the logins between two readings (see [`LatencyOver`]).
fn latency(before: &Latency, after: &Latency) -> (Option<f64>, Option<f64>, LatencyOver) {
    match after {
        Latency::Absent => (None, None, LatencyOver::Unknown),
        Latency::Window { p50, p99 } => (*p50, *p99, LatencyOver::SlidingWindow),
        Latency::Buckets(now) => {
            let then = match before {
                Latency::Buckets(then) if same_bounds(then, now) => then.as_slice(),
                _ => &[],
            };
            let delta: Vec<(f64, f64)> = now
                .iter()
                .enumerate()
                .map(|(i, (le, n))| (*le, n - then.get(i).map_or(0.0, |(_, c)| *c)))
                .collect();
            (
                bucket_quantile(&delta, 0.5),
                bucket_quantile(&delta, 0.99),
                LatencyOver::Interval,
            )
        }
    }
}

fn same_bounds(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0)
}

/// The `q` quantile of cumulative `(upper bound, count)` buckets, as the upper bound of the
/// bucket that holds it; `None` without observations.
fn bucket_quantile(cumulative: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (le, _) = cumulative.iter().find(|(_, n)| *n >= rank)?;
    if le.is_finite() {
        Some(*le)
    } else {
        cumulative
            .iter()
            .rev()
            .map(|(le, _)| *le)
            .find(|le| le.is_finite())
    }
}

/// The ring of samples, shared by the sampler and `GET /stats`.
pub(super) struct History {
    samples: Mutex<VecDeque<Sample>>,
    capacity: usize,
}

impl History {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            samples: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Adds `sample`, forgetting the oldest when full.
    pub(super) fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        while samples.len() >= self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// `GET /stats`: the samples, oldest first, and what their latency percentiles cover.
    pub(super) fn to_json(&self) -> serde_json::Value {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let latency_over = samples
            .back()
            .map_or(LatencyOver::Unknown, |s| s.latency_over);
        serde_json::json!({
            "interval_ms": INTERVAL.as_millis() as u64,
            "capacity": self.capacity,
            "latency_over": latency_over.as_str(),
            "samples": samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Samples every `every` until `stop`: `read` gives the rendered metrics text and the number
/// of client connections. The first reading only sets the baseline.
pub(super) async fn run(
    every: Duration,
    read: impl Fn() -> (String, usize),
    history: &History,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(Instant, Scrape)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let (text, sessions) = read();
        let (now, scrape) = (Instant::now(), Scrape::parse(&text));
        if let Some((then, before)) = &last {
            let sample = Sample::between(before, &scrape, now - *then, sessions, SystemTime::now());
            history.push(sample);
        }
        last = Some((now, scrape));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(ok: f64, bytes_out: f64, latency: Latency) -> Scrape {
        Scrape {
            logins: [("ok".to_owned(), ok)].into(),
            bytes_in: 0.0,
            bytes_out,
            latency,
        }
    }

    #[test]
    fn counters_become_rates_over_the_measured_time() {
        let a = scrape(10.0, 1000.0, Latency::Absent);
        let b = scrape(14.0, 5000.0, Latency::Absent);
        let s = Sample::between(&a, &b, Duration::from_secs(2), 3, UNIX_EPOCH);
        assert_eq!(s.logins_per_s.get("ok"), Some(&2.0));
        assert_eq!(s.bytes_out_per_s, 2000.0);
        assert_eq!(s.sessions, 3);
        // A result seen for the first time counts from zero; a counter never goes negative.
        let mut c = b.clone();
        c.logins.insert("failed".into(), 1.0);
        c.bytes_out = 0.0;
        let s = Sample::between(&b, &c, Duration::from_secs(1), 3, UNIX_EPOCH);
        assert_eq!(s.logins_per_s.get("failed"), Some(&1.0));
        assert_eq!(s.bytes_out_per_s, 0.0);
    }

    #[test]
    fn histogram_percentiles_cover_only_the_interval() {
        // Before: 100 slow logins. During: 10 fast ones, one of them slower.
        let before = Latency::Buckets(vec![
            (0.01, 0.0),
            (0.1, 0.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ]);
        let after = Latency::Buckets(vec![
            (0.01, 9.0),
            (0.1, 10.0),
            (1.0, 110.0),
            (f64::INFINITY, 110.0),
        ]);
        let s = Sample::between(
            &scrape(0.0, 0.0, before),
            &scrape(0.0, 0.0, after.clone()),
            INTERVAL,
            0,
            UNIX_EPOCH,
        );
        assert_eq!((s.login_p50, s.login_p99), (Some(0.01), Some(0.1)));
        assert_eq!(s.latency_over, LatencyOver::Interval);
        // No login in the interval: no percentile, rather than the lifetime's.
        let idle = Sample::between(
            &scrape(0.0, 0.0, after.clone()),
            &scrape(0.0, 0.0, after),
            INTERVAL,
            0,
            UNIX_EPOCH,
        );
        assert_eq!((idle.login_p50, idle.login_p99), (None, None));
    }

    #[test]
    fn a_quantile_beyond_the_last_bucket_is_its_largest_finite_bound() {
        let b = [(0.1, 1.0), (1.0, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(bucket_quantile(&b, 0.99), Some(1.0));
        assert_eq!(bucket_quantile(&b, 0.05), Some(0.1));
        assert_eq!(bucket_quantile(&[], 0.5), None);
    }

    #[test]
    fn summary_quantiles_are_labelled_as_the_sliding_window() {
        let w = Latency::Window {
            p50: Some(0.004),
            p99: None,
        };
        let s = Sample::between(
            &scrape(0.0, 0.0, w.clone()),
            &scrape(0.0, 0.0, w),
            INTERVAL,
            0,
            UNIX_EPOCH,
        );
        assert_eq!((s.login_p50, s.login_p99), (Some(0.004), None));
        let history = History::new(4);
        history.push(s);
        let json = history.to_json();
        assert_eq!(
            json["latency_over"],
            "over a sliding window of the last 40-60 s"
        );
        assert_eq!(json["samples"][0]["login_p50"], 0.004);
        assert!(json["samples"][0]["login_p99"].is_null());
    }

    #[test]
    fn the_ring_keeps_the_newest_samples_only() {
        let history = History::new(3);
        for i in 0..10u64 {
            let mut s = Sample::between(
                &Scrape::default(),
                &Scrape::default(),
                INTERVAL,
                0,
                UNIX_EPOCH,
            );
            s.at_ms = i;
            history.push(s);
        }
        assert_eq!(history.len(), 3);
        let json = history.to_json();
        let times: Vec<u64> = json["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["t"].as_u64().unwrap())
            .collect();
        assert_eq!(times, [7, 8, 9]);
    }

    #[tokio::test]
    async fn the_sampler_records_until_stopped() {
        let history = std::sync::Arc::new(History::new(CAPACITY));
        let stop = CancellationToken::new();
        let logins = std::sync::atomic::AtomicU64::new(0);
        let read = move || {
            let n = logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (format!("imapproxy_logins_total{{result=\"ok\"}} {n}\n"), 2)
        };
        let task = tokio::spawn({
            let (history, stop) = (std::sync::Arc::clone(&history), stop.clone());
            async move { run(Duration::from_millis(10), read, &history, stop).await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while history.len() < 3 {
            assert!(std::time::Instant::now() < deadline, "no samples");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the sampler stops when told")
            .unwrap();
        let samples = history.len();
        let json = history.to_json();
        assert!(json["samples"][0]["logins_per_s"]["ok"].as_f64().unwrap() > 0.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(history.len(), samples, "nothing recorded after the stop");
    }
}
