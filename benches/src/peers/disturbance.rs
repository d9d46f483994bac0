//! Other load on the machine during a measurement.
//!
//! The machine is shared: another build or test run takes cores from Dovecot and the
//! target, and the ratios drift. A [`Probe`] takes readings at both ends of a
//! measurement and estimates the CPU that processes outside this bench's own tree
//! (loadbench, the Dovecot it started, the peer or proxy it started, their children) used
//! in between, twice:
//!
//! - **machine**: the machine's busy time (`/proc/stat` user + nice + system) minus the CPU
//!   time of our tree. Right over long spans, but our own tree's time shows up late: the
//!   CPU of a child that exited is added to its parent only when reaped, so a window in
//!   which Dovecot's short-lived processes ran can show a core of "foreign" CPU that is
//!   really ours (measured: up to 0.6 cores over a 4 s window, none of it visible in any
//!   other process);
//! - **processes**: the CPU time gained by every process outside our tree, including the
//!   children each reaped. Never late for others' long-running work, but too high when a
//!   foreign parent reaps a child that ran before the window too.
//!
//! Each errs on the high side in its own way, so the smaller of the two is taken. With the
//! hypervisor's steal time, averaged over the measurement and expressed in cores, it
//! decides whether the measurement counts as disturbed. Interrupt time (loopback traffic
//! is mostly softirq) is left out: it belongs to nobody in particular.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::procfs::{self, CpuCounters, ProcStat};

/// Readings at the start of a measurement.
#[derive(Debug, Clone)]
pub struct Probe {
    machine: CpuCounters,
    procs: Vec<ProcStat>,
    load1: f64,
}

/// Other load during one measurement.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Load {
    /// Cores' worth of CPU used by processes outside this bench's tree, on average.
    pub foreign_cores: f64,
    /// Cores' worth of CPU time stolen by the hypervisor, on average.
    pub steal_cores: f64,
    /// One-minute load average at the start.
    pub load1_before: f64,
    /// One-minute load average at the end.
    pub load1_after: f64,
}

impl Load {
    /// Whether foreign CPU and steal together reach `limit` cores.
    pub fn disturbed(&self, limit: f64) -> bool {
        self.foreign_cores + self.steal_cores >= limit
    }
}

impl Probe {
    /// Reads the counters now.
    pub fn start() -> Probe {
        Probe {
            machine: procfs::cpu_counters().unwrap_or_default(),
            procs: procfs::all(),
            load1: procfs::loadavg1().unwrap_or(f64::NAN),
        }
    }

    /// Reads the counters again and returns the load in between.
    pub fn finish(self) -> Load {
        let machine = procfs::cpu_counters().unwrap_or_default();
        let procs = procfs::all();
        let me = std::process::id();
        let ours: HashSet<u32> = procfs::tree(me, &self.procs)
            .iter()
            .chain(&procfs::tree(me, &procs))
            .map(|p| p.pid)
            .collect();
        let own_ticks =
            |ps: &[ProcStat]| -> u64 { procfs::tree(me, ps).iter().map(|p| p.cpu_ticks).sum() };
        let own = own_ticks(&procs).saturating_sub(own_ticks(&self.procs));
        let others = others_ticks(&self.procs, &procs, &ours);
        let span = Span {
            before: self.machine,
            after: machine,
            cpus: procfs::cpus(),
        };
        Load {
            foreign_cores: span.cores(span.busy().saturating_sub(own).min(others)),
            steal_cores: span.cores(machine.steal.saturating_sub(self.machine.steal)),
            load1_before: self.load1,
            load1_after: procfs::loadavg1().unwrap_or(f64::NAN),
        }
    }
}

/// CPU ticks gained between `before` and `after` by the processes not in `ours` (a
/// process that appeared meanwhile counts from zero).
fn others_ticks(before: &[ProcStat], after: &[ProcStat], ours: &HashSet<u32>) -> u64 {
    let start: HashMap<u32, u64> = before.iter().map(|p| (p.pid, p.cpu_ticks)).collect();
    after
        .iter()
        .filter(|p| !ours.contains(&p.pid))
        .map(|p| {
            p.cpu_ticks
                .saturating_sub(start.get(&p.pid).copied().unwrap_or(0))
        })
        .sum()
}

/// The machine's counters at both ends of an interval.
struct Span {
    before: CpuCounters,
    after: CpuCounters,
    cpus: usize,
}

impl Span {
    /// Busy ticks in the interval.
    fn busy(&self) -> u64 {
        self.after.busy.saturating_sub(self.before.busy)
    }

    /// `ticks` as cores over the interval (`total` counts every CPU's ticks, so the
    /// interval is `total / cpus` ticks long).
    fn cores(&self, ticks: u64) -> f64 {
        let len =
            self.after.total.saturating_sub(self.before.total) as f64 / self.cpus.max(1) as f64;
        if len > 0.0 { ticks as f64 / len } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, cpu_ticks: u64) -> ProcStat {
        ProcStat {
            pid,
            ppid,
            pgrp: pid,
            cpu_ticks,
        }
    }

    #[test]
    fn ticks_become_cores_over_the_interval() {
        // 2 CPUs, 1,000 ticks each.
        let span = Span {
            before: CpuCounters {
                busy: 1000,
                steal: 0,
                total: 10_000,
            },
            after: CpuCounters {
                busy: 2600,
                steal: 100,
                total: 12_000,
            },
            cpus: 2,
        };
        assert_eq!(span.busy(), 1600);
        assert!((span.cores(400) - 0.4).abs() < 1e-9);
        let empty = Span {
            before: span.after,
            after: span.after,
            cpus: 2,
        };
        assert_eq!(empty.cores(100), 0.0);
    }

    #[test]
    fn others_are_every_process_outside_our_tree() {
        let before = [p(1, 0, 50), p(10, 1, 100), p(11, 10, 5), p(20, 1, 30)];
        // 20 gained 70 ticks, 21 appeared with 40; ours (10, 11, 12) are not counted.
        let after = [
            p(1, 0, 50),
            p(10, 1, 300),
            p(12, 10, 9),
            p(20, 1, 100),
            p(21, 1, 40),
        ];
        let ours: HashSet<u32> = [10, 11, 12].into();
        assert_eq!(others_ticks(&before, &after, &ours), 110);
    }

    #[test]
    fn a_probe_around_nothing_sees_little() {
        let l = Probe::start().finish();
        assert!(l.foreign_cores >= 0.0 && l.steal_cores >= 0.0);
        assert!(!l.disturbed(f64::INFINITY));
    }
}
