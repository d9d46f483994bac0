//! The NOOP phase: every session polls with `NOOP` on a schedule of its own, timed from the
//! write to the tagged `OK`, while the CPU time of the proxy, Dovecot and loadbench is read.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{ManyArgs, each};
use crate::clients::splitmix64;
use crate::error::BenchError;
use crate::imap::{COMMAND_TIMEOUT, ImapConn, bounded};
use crate::peers::procfs::{self, CpuCounters};
use crate::report::percentile;

/// `/proc` reports CPU times in clock ticks of `USER_HZ`, 100 per second on Linux.
const USER_HZ: f64 = 100.0;
/// Other processes' CPU (or the hypervisor's steal) over the NOOP phase, in cores, from
/// which a measurement counts as disturbed (as in `peers`).
pub(super) const DISTURBED_CORES: f64 = 0.25;
/// Lead time between scheduling the NOOP phase and its first NOOP (spawning the tasks).
const NOOP_LEAD: Duration = Duration::from_millis(200);

/// The NOOP phase of one configuration.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Noop {
    pub(super) count: usize,
    pub(super) window_secs: f64,
    pub(super) per_sec: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) p999_ms: f64,
    pub(super) max_ms: f64,
    /// How late loadbench wrote a NOOP against its schedule.
    pub(super) lag_p99_ms: f64,
    pub(super) lag_max_ms: f64,
    pub(super) proxy_cpu_pct: Option<f64>,
    pub(super) proxy_cpu_us_per_noop: Option<f64>,
    pub(super) dovecot_cpu_pct: f64,
    pub(super) loadbench_cpu_pct: f64,
    /// Both cores together: everything the machine ran (user + nice + system).
    pub(super) machine_busy_cores: f64,
    /// What of that was not the proxy, Dovecot or loadbench: other load on the machine
    /// (builds, tests) that disturbs the measurement.
    pub(super) other_cores: f64,
    pub(super) steal_cores: f64,
}

impl Noop {
    /// Other processes (or the hypervisor) took enough CPU to disturb the measurement.
    pub(super) fn disturbed(&self) -> bool {
        self.other_cores >= DISTURBED_CORES || self.steal_cores >= DISTURBED_CORES
    }
}

/// CPU times at one moment: clock ticks, the proxy's in ns.
struct CpuSnapshot {
    at: Instant,
    proxy: Option<u64>,
    dovecot: u64,
    loadbench: u64,
    machine: Option<CpuCounters>,
}

impl CpuSnapshot {
    fn take(proxy: Option<u32>, dovecot: Option<u32>) -> CpuSnapshot {
        let dovecot = dovecot.map_or(0, |pid| {
            procfs::tree(pid, &procfs::all())
                .iter()
                .map(|p| p.cpu_ticks)
                .sum()
        });
        CpuSnapshot {
            at: Instant::now(),
            proxy: proxy.and_then(cpu_ns),
            dovecot,
            loadbench: procfs::stat(std::process::id()).map_or(0, |s| s.cpu_ticks),
            machine: procfs::cpu_counters(),
        }
    }
}

/// The NOOP phase: every session sends `NOOP` on its own schedule (see the module docs);
/// returns the sessions' figures. The sessions are closed at the end.
pub(super) async fn noop_phase(
    conns: Vec<ImapConn>,
    args: &ManyArgs,
    proxy_pid: Option<u32>,
    dovecot_pid: Option<u32>,
) -> Result<Noop, BenchError> {
    let period = Duration::from_secs_f64(f64::from(args.sessions) / f64::from(args.rate));
    let length = Duration::from_secs(args.secs);
    let before = CpuSnapshot::take(proxy_pid, dovecot_pid);
    let start = Instant::now() + NOOP_LEAD;
    let items: Vec<(ImapConn, Vec<Instant>)> = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c, schedule(i, args.seed, start, period, length)))
        .collect();
    let all = items.len();
    let results = bounded(
        "NOOP phase",
        length + NOOP_LEAD + COMMAND_TIMEOUT,
        each(items, all, |(mut conn, times)| async move {
            let mut timed = Vec::with_capacity(times.len());
            for at in times {
                tokio::time::sleep_until(at.into()).await;
                let sent = Instant::now();
                bounded("NOOP", COMMAND_TIMEOUT, conn.command("NOOP")).await?;
                timed.push((ms(sent.elapsed()), ms(sent.saturating_duration_since(at))));
            }
            Ok((conn, timed))
        }),
    )
    .await?;
    let after = CpuSnapshot::take(proxy_pid, dovecot_pid);
    let (conns, timed): (Vec<ImapConn>, Vec<Vec<(f64, f64)>>) = results.into_iter().unzip();
    drop(conns);

    let (mut latency, mut lag): (Vec<f64>, Vec<f64>) = timed.into_iter().flatten().unzip();
    let count = latency.len();
    let wall = after.at.duration_since(start.min(after.at)).as_secs_f64();
    let window = after.at.duration_since(before.at).as_secs_f64();
    let pct = |ticks: u64| ticks as f64 / USER_HZ / window * 100.0;
    let proxy_ns = before
        .proxy
        .zip(after.proxy)
        .map(|(b, a)| a.saturating_sub(b));
    let dovecot_ticks = after.dovecot.saturating_sub(before.dovecot);
    let loadbench_ticks = after.loadbench.saturating_sub(before.loadbench);
    let ours =
        (dovecot_ticks + loadbench_ticks) as f64 / USER_HZ + proxy_ns.unwrap_or(0) as f64 / 1e9;
    let (busy, steal) = match (before.machine, after.machine) {
        (Some(b), Some(a)) => (
            a.busy.saturating_sub(b.busy) as f64 / USER_HZ / window,
            a.steal.saturating_sub(b.steal) as f64 / USER_HZ / window,
        ),
        _ => (f64::NAN, f64::NAN),
    };
    Ok(Noop {
        count,
        window_secs: wall,
        per_sec: count as f64 / wall.max(f64::MIN_POSITIVE),
        p50_ms: percentile(&mut latency, 50.0),
        p99_ms: percentile(&mut latency, 99.0),
        p999_ms: percentile(&mut latency, 99.9),
        max_ms: percentile(&mut latency, 100.0),
        lag_p99_ms: percentile(&mut lag, 99.0),
        lag_max_ms: percentile(&mut lag, 100.0),
        proxy_cpu_pct: proxy_ns.map(|ns| ns as f64 / 1e9 / window * 100.0),
        proxy_cpu_us_per_noop: proxy_ns.map(|ns| ns as f64 / 1e3 / count.max(1) as f64),
        dovecot_cpu_pct: pct(dovecot_ticks),
        loadbench_cpu_pct: pct(loadbench_ticks),
        machine_busy_cores: busy,
        other_cores: (busy - ours / window).max(0.0),
        steal_cores: steal,
    })
}

/// When session `i` sends its NOOPs: every `period` from a phase of its own in
/// `[0, period)` (seeded, the same in every run), while inside `length` from `start`.
fn schedule(
    i: usize,
    seed: u64,
    start: Instant,
    period: Duration,
    length: Duration,
) -> Vec<Instant> {
    // The top 53 bits as a fraction in [0, 1).
    let unit = (splitmix64(seed.rotate_left(32) ^ i as u64) >> 11) as f64 / (1u64 << 53) as f64;
    let mut at = period.mul_f64(unit);
    let mut times = Vec::new();
    while at < length {
        times.push(start + at);
        at += period.max(Duration::from_micros(1));
    }
    times
}

/// CPU time of every thread of `pid` ([`procfs::process_cpu_ns`]), or failing that its
/// utime + stime.
pub(super) fn cpu_ns(pid: u32) -> Option<u64> {
    procfs::process_cpu_ns(pid)
        .or_else(|| procfs::stat(pid).map(|s| (s.cpu_ticks as f64 / USER_HZ * 1e9) as u64))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_spread_the_rate_over_sessions() {
        let start = Instant::now();
        let period = Duration::from_secs(10);
        let length = Duration::from_secs(10);
        let all: Vec<Vec<Instant>> = (0..1000)
            .map(|i| schedule(i, 1, start, period, length))
            .collect();
        // A period as long as the phase: one NOOP per session, at phases all over it.
        assert!(all.iter().all(|t| t.len() == 1));
        let first_half = all
            .iter()
            .filter(|t| t[0] < start + Duration::from_secs(5))
            .count();
        assert!((400..600).contains(&first_half), "{first_half}");
        // Seeded: the same schedule again.
        assert_eq!(schedule(7, 1, start, period, length), all[7]);
        // A short period: several per session, `period` apart.
        let t = schedule(3, 1, start, Duration::from_secs(1), length);
        assert!((9..=10).contains(&t.len()));
        assert!(t.windows(2).all(|w| w[1] - w[0] == Duration::from_secs(1)));
    }
}
