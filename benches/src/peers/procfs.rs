//! What `/proc` says about process trees (their proportional memory and CPU time) and
//! about the machine (CPU counters, load average, CPU model).
//!
//! A target's memory is the sum of `Pss` (`/proc/<pid>/smaps_rollup`) over the process
//! it was started as and every descendant: proportional set size splits each shared page
//! among the processes that map it, so a forking server (Dovecot, nginx's workers) is
//! neither counted once per process for its shared libraries nor undercounted, and a
//! threaded one (up-imapproxy, HAProxy, imapproxy) is just its one process.

use std::collections::HashMap;
use std::fs;

/// The fields of `/proc/<pid>/stat` the bench uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Process group id.
    pub pgrp: u32,
    /// `utime + stime + cutime + cstime`, in clock ticks: this process's CPU time and
    /// that of the children it has reaped.
    pub cpu_ticks: u64,
}

/// `/proc/<pid>/stat`, when the process exists.
pub fn stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Parses one `/proc/<pid>/stat` line (proc(5)).
fn parse_stat(pid: u32, text: &str) -> Option<ProcStat> {
    // Field 2 (comm) may hold spaces and parentheses: the fixed fields start after the
    // last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let num = |n: usize| -> Option<u64> {
        let raw = fields.get(n.checked_sub(3)?)?;
        // cutime and cstime are signed in the kernel; never negative in practice.
        raw.parse::<i64>().ok().map(|v| v.max(0).unsigned_abs())
    };
    Some(ProcStat {
        pid,
        ppid: u32::try_from(num(4)?).ok()?,
        pgrp: u32::try_from(num(5)?).ok()?,
        cpu_ticks: num(14)? + num(15)? + num(16)? + num(17)?,
    })
}

/// Every process the kernel lists now (thread group leaders only).
pub fn all() -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

/// `root` and all its descendants among `procs` (empty when `root` is not there).
pub fn tree(root: u32, procs: &[ProcStat]) -> Vec<ProcStat> {
    let mut children: HashMap<u32, Vec<&ProcStat>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out: Vec<ProcStat> = procs.iter().filter(|p| p.pid == root).copied().collect();
    let mut i = 0;
    while let Some(p) = out.get(i).copied() {
        if let Some(kids) = children.get(&p.pid) {
            out.extend(kids.iter().filter(|k| k.pid != p.pid).map(|k| **k));
        }
        i += 1;
    }
    out
}

/// CPU time used so far by `root`'s tree, every thread of every process, in nanoseconds:
/// the first field of `/proc/<pid>/task/<tid>/schedstat` (time on a CPU at the scheduler's
/// precision; clock ticks are too coarse for a few hundred milliseconds of work). `None`
/// when `root` is gone. Threads and processes that end in between are not counted, so a
/// difference of two readings is only meaningful for a tree that keeps its members (a
/// server with one connection open, say).
pub fn tree_cpu_ns(root: u32) -> Option<u64> {
    let members = tree(root, &all());
    if members.is_empty() {
        return None;
    }
    Some(
        members
            .iter()
            .map(|p| process_cpu_ns(p.pid).unwrap_or(0))
            .sum(),
    )
}

/// CPU time of every thread of `pid` so far, in nanoseconds: the first field of
/// `/proc/<pid>/task/<tid>/schedstat` (time on a CPU, at the scheduler's precision where
/// utime + stime come in 10 ms ticks). A thread that ends while it is read is not counted;
/// `None` when `pid` is gone or the kernel keeps no schedstat.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let times: Vec<u64> = tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .collect();
    (!times.is_empty()).then(|| times.iter().sum())
}

/// Context switches of a process's threads, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextSwitches {
    /// The thread gave up the CPU itself: it went to sleep (`voluntary_ctxt_switches`).
    pub voluntary: u64,
    /// The thread was taken off the CPU while it could run: preempted, or its CPU quota ran
    /// out (`nonvoluntary_ctxt_switches`).
    pub involuntary: u64,
}

impl ContextSwitches {
    /// Both kinds.
    pub fn total(self) -> u64 {
        self.voluntary + self.involuntary
    }

    /// The switches since `earlier` (none where a count went backwards).
    pub fn since(self, earlier: ContextSwitches) -> ContextSwitches {
        ContextSwitches {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }
}

/// Context switches of every thread of `pid` so far (`voluntary_ctxt_switches` and
/// `nonvoluntary_ctxt_switches` of each `/proc/<pid>/task/<tid>/status`); `None` when
/// `pid` is gone.
pub fn context_switches(pid: u32) -> Option<ContextSwitches> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
        .map(|text| status_switches(&text))
        .reduce(|sum, c| ContextSwitches {
            voluntary: sum.voluntary + c.voluntary,
            involuntary: sum.involuntary + c.involuntary,
        })
}

/// The context switches in one `/proc/.../status` text (a missing line counts 0).
fn status_switches(text: &str) -> ContextSwitches {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    ContextSwitches {
        voluntary: field("voluntary_ctxt_switches:"),
        involuntary: field("nonvoluntary_ctxt_switches:"),
    }
}

/// Sum of `Pss` over `root`'s tree, in KiB; `None` when `root` is gone. Processes that
/// exit while the tree is read are skipped.
pub fn tree_pss_kib(root: u32) -> Option<u64> {
    let members = tree(root, &all());
    if members.is_empty() {
        return None;
    }
    Some(members.iter().filter_map(|p| pss_kib(p.pid)).sum())
}

/// `Pss` of one process (`/proc/<pid>/smaps_rollup`), in KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_kib_field(&text, "Pss:")
}

/// The value of a `Name:   123 kB` line.
fn parse_kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The machine's CPU time counters (the `cpu` line of `/proc/stat`), in clock ticks,
/// summed over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuCounters {
    /// user + nice + system: time spent running processes (guest time is inside user).
    pub busy: u64,
    /// Time the hypervisor ran something else while this VM wanted to run.
    pub steal: u64,
    /// Every counter but guest: wall-clock ticks times CPUs.
    pub total: u64,
}

/// The `cpu` line of `/proc/stat`.
pub fn cpu_counters() -> Option<CpuCounters> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(text.lines().next()?)
}

fn parse_cpu_line(line: &str) -> Option<CpuCounters> {
    let mut it = line.split_whitespace();
    if it.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = it.map_while(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    if v.len() < 4 {
        return None;
    }
    Some(CpuCounters {
        busy: get(0) + get(1) + get(2),
        steal: get(7),
        total: (0..8).map(get).sum(),
    })
}

/// The one-minute load average.
pub fn loadavg1() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Online CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The CPU's `model name` from `/proc/cpuinfo` ("unknown CPU" when absent).
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|v| v.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_switches_keep_both_kinds() {
        let status = "Name:\ttokio-rt-worker\nState:\tS (sleeping)\n\
                      voluntary_ctxt_switches:\t1200\n\
                      nonvoluntary_ctxt_switches:\t34\n";
        let switches = status_switches(status);
        assert_eq!(
            switches,
            ContextSwitches {
                voluntary: 1200,
                involuntary: 34
            }
        );
        assert_eq!(switches.total(), 1234);
        assert_eq!(status_switches("Name:\tx\n"), ContextSwitches::default());
        let earlier = ContextSwitches {
            voluntary: 1000,
            involuntary: 40,
        };
        assert_eq!(
            switches.since(earlier),
            ContextSwitches {
                voluntary: 200,
                involuntary: 0
            }
        );
    }

    #[test]
    fn a_sleep_is_a_voluntary_switch_and_counts_in_the_process() {
        // This thread's own counts: the process's total can drop when another test's
        // thread exits between two reads, this thread's cannot.
        let own =
            || status_switches(&fs::read_to_string("/proc/thread-self/status").expect("readable"));
        let before = own();
        std::thread::sleep(std::time::Duration::from_millis(1));
        let after = own();
        assert!(
            after.voluntary > before.voluntary,
            "a sleep is a voluntary switch"
        );
        // The process's sum, read after, holds at least this thread's share.
        let process = context_switches(std::process::id()).expect("our own /proc entry");
        assert!(process.voluntary >= after.voluntary);
        assert!(process.involuntary >= after.involuntary);
    }

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    7 3 2 1 20 0 1 0 12345 1000000 200 18446744073709551615";
        let s = parse_stat(4242, line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 4242,
                ppid: 1,
                pgrp: 4242,
                cpu_ticks: 13,
            }
        );
        assert_eq!(parse_stat(1, "garbage"), None);
    }

    #[test]
    fn trees_follow_parents_only() {
        let p = |pid, ppid| ProcStat {
            pid,
            ppid,
            pgrp: pid,
            cpu_ticks: 1,
        };
        let procs = [p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(20, 1), p(13, 10)];
        let mut t: Vec<u32> = tree(10, &procs).iter().map(|s| s.pid).collect();
        t.sort_unstable();
        assert_eq!(t, [10, 11, 12, 13]);
        assert!(tree(99, &procs).is_empty());
    }

    #[test]
    fn cpu_and_memory_fields_parse() {
        let c = parse_cpu_line("cpu  100 5 50 1000 10 1 2 7 0 0").unwrap();
        assert_eq!(
            c,
            CpuCounters {
                busy: 155,
                steal: 7,
                total: 1175,
            }
        );
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4"), None);
        let rollup = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  2048 kB\nPss:  1500 kB\n";
        assert_eq!(parse_kib_field(rollup, "Pss:"), Some(1500));
        assert_eq!(parse_kib_field(rollup, "Swap:"), None);
    }

    #[test]
    fn this_process_is_its_own_tree_and_has_memory() {
        let me = std::process::id();
        assert!(tree(me, &all()).iter().any(|p| p.pid == me));
        assert!(tree_pss_kib(me).is_some_and(|k| k > 0));
        assert!(cpu_counters().is_some_and(|c| c.total >= c.busy));
    }
}
