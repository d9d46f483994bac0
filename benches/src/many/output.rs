//! What `many` prints and writes: a line per run and configuration, the tables with their
//! medians, the verdicts against the aims, Dovecot's log summary, and the JSON summary.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::json;

use super::noop::DISTURBED_CORES;
use super::{AIM_KIB_PER_SESSION, AIM_NOOP_P99_MS, Config, ManyArgs, Measurement, Setup};
use crate::error::BenchError;
use crate::report::median;
use crate::report::{Series, print_table, unix_time, write_json};

/// What Dovecot logged that was not information: errors (and fatal errors, panics) and
/// warnings, counted, with the distinct texts (first few).
#[derive(Debug, Default, Serialize)]
pub(super) struct DovecotLog {
    errors: usize,
    warnings: usize,
    distinct: Vec<String>,
}

impl DovecotLog {
    pub(super) fn read(log: &str) -> DovecotLog {
        let mut out = DovecotLog::default();
        for line in log.lines() {
            let found = [": Error: ", ": Fatal: ", ": Panic: ", ": Warning: "]
                .iter()
                .find_map(|needle| line.find(needle).map(|at| (needle, at)));
            let Some((needle, at)) = found else { continue };
            if *needle == ": Warning: " {
                out.warnings += 1;
            } else {
                out.errors += 1;
            }
            // From the process name on: the timestamp would make every line distinct.
            let from = line
                .get(..at)
                .and_then(|s| s.rfind(' '))
                .map_or(0, |p| p + 1);
            let text: String = line.get(from..).unwrap_or(line).chars().take(240).collect();
            if out.distinct.len() < 10 && !out.distinct.contains(&text) {
                out.distinct.push(text);
            }
        }
        out
    }
}

pub(super) fn print_measurement(m: &Measurement) {
    let n = &m.noop;
    let mut line = format!(
        "  run {}: {:<12} opened {} in {:.1} s ({:.0}/s), IDLE in {:.2} s, DONE in {:.2} s",
        m.run, m.config, m.sessions, m.open_secs, m.open_per_sec, m.idle_enter_secs, m.done_secs
    );
    if let Some(mem) = &m.memory {
        let _ = write!(
            line,
            "; VmRSS {} -> {} selected -> {} KiB in IDLE: {:.2} KiB/session in IDLE \
             ({:.2} selected); {} open files; CPU in IDLE {:.2} % of a core",
            mem.baseline_kib,
            mem.selected_kib,
            mem.idle_kib,
            mem.kib_per_session_idle,
            mem.kib_per_session_selected,
            m.proxy_open_files.unwrap_or(0),
            m.proxy_idle_cpu_pct.unwrap_or(f64::NAN)
        );
    }
    eprintln!("{line}");
    let mut line = format!(
        "      NOOP: {} in {:.1} s ({:.0}/s): p50 {:.2} ms, p99 {:.2}, p99.9 {:.2}, max {:.2}; \
         send lag p99 {:.2} ms; CPU % of a core: dovecot {:.1}, loadbench {:.1}",
        n.count,
        n.window_secs,
        n.per_sec,
        n.p50_ms,
        n.p99_ms,
        n.p999_ms,
        n.max_ms,
        n.lag_p99_ms,
        n.dovecot_cpu_pct,
        n.loadbench_cpu_pct
    );
    if let (Some(pct), Some(us)) = (n.proxy_cpu_pct, n.proxy_cpu_us_per_noop) {
        let _ = write!(line, ", proxy {pct:.1} ({us:.0} µs/NOOP)");
    }
    let _ = write!(
        line,
        "; machine {:.2} cores busy, {:.2} of them others, steal {:.2}",
        n.machine_busy_cores, n.other_cores, n.steal_cores
    );
    if n.disturbed() {
        line.push_str(" [DISTURBED]");
    }
    eprintln!("{line}");
    if m.proxy_log_lines > 0 {
        eprintln!("      proxy logged {} lines, first:", m.proxy_log_lines);
        for l in &m.proxy_log {
            eprintln!("        {l}");
        }
    }
}

/// NOOP p99 over the measurements no other load disturbed.
#[derive(Debug, Serialize)]
struct Quiet {
    proxy_runs: usize,
    proxy_p99_ms: f64,
    direct_runs: usize,
    direct_p99_ms: f64,
    /// Other processes' CPU from which a measurement counts as disturbed, in cores.
    disturbed_from_cores: f64,
}

impl Quiet {
    fn of(measurements: &[Measurement]) -> Quiet {
        let p99s = |config: Config| -> Vec<f64> {
            measurements
                .iter()
                .filter(|m| m.config == config.name() && !m.noop.disturbed())
                .map(|m| m.noop.p99_ms)
                .collect()
        };
        let (proxy, direct) = (p99s(Config::Proxy), p99s(Config::Direct));
        Quiet {
            proxy_runs: proxy.len(),
            proxy_p99_ms: median(&proxy),
            direct_runs: direct.len(),
            direct_p99_ms: median(&direct),
            disturbed_from_cores: DISTURBED_CORES,
        }
    }
}

pub(super) fn summarise(
    runs: u32,
    args: &ManyArgs,
    setup: &Setup,
    measurements: &[Measurement],
    log: &DovecotLog,
) -> Result<(), BenchError> {
    let series_of = |config: Config,
                     name: &str,
                     unit: &'static str,
                     f: &dyn Fn(&Measurement) -> Option<f64>| {
        let mut s = Series::new(&format!("{} {name}", config.name()), unit);
        for m in measurements.iter().filter(|m| m.config == config.name()) {
            if let Some(x) = f(m) {
                s.push(x);
            }
        }
        s
    };
    let configs: &[Config] = if args.no_direct {
        &[Config::Proxy]
    } else {
        &[Config::Proxy, Config::Direct]
    };
    let mut open = Vec::new();
    let mut noop = Vec::new();
    let mut cpu = Vec::new();
    for &c in configs {
        open.push(series_of(c, "open", "sessions/s", &|m| {
            Some(m.open_per_sec)
        }));
        noop.push(series_of(c, "NOOP p50", "ms", &|m| Some(m.noop.p50_ms)));
        noop.push(series_of(c, "NOOP p99", "ms", &|m| Some(m.noop.p99_ms)));
        noop.push(series_of(c, "NOOP p99.9", "ms", &|m| Some(m.noop.p999_ms)));
        noop.push(series_of(c, "NOOP max", "ms", &|m| Some(m.noop.max_ms)));
        noop.push(series_of(c, "send lag p99", "ms", &|m| {
            Some(m.noop.lag_p99_ms)
        }));
        cpu.push(series_of(c, "Dovecot CPU", "% of a core", &|m| {
            Some(m.noop.dovecot_cpu_pct)
        }));
        cpu.push(series_of(c, "loadbench CPU", "% of a core", &|m| {
            Some(m.noop.loadbench_cpu_pct)
        }));
    }
    let p = Config::Proxy;
    let memory = vec![
        series_of(p, "VmRSS in IDLE", "KiB/session", &|m| {
            m.memory.as_ref().map(|x| x.kib_per_session_idle)
        }),
        series_of(p, "VmRSS selected", "KiB/session", &|m| {
            m.memory.as_ref().map(|x| x.kib_per_session_selected)
        }),
    ];
    cpu.insert(
        0,
        series_of(p, "CPU", "% of a core", &|m| m.noop.proxy_cpu_pct),
    );
    cpu.insert(
        1,
        series_of(p, "CPU per NOOP", "µs", &|m| m.noop.proxy_cpu_us_per_noop),
    );
    cpu.insert(
        2,
        series_of(p, "CPU, all in IDLE", "% of a core", &|m| {
            m.proxy_idle_cpu_pct
        }),
    );
    let n = args.sessions;
    print_table(
        &format!(
            "many: opening {n} sessions (LOGIN, SELECT INBOX), {} at a time",
            args.batch
        ),
        &open,
        1,
    );
    print_table(
        &format!(
            "many: proxy memory per session ((VmRSS at {n} - VmRSS at {}) / {})",
            args.baseline,
            n - args.baseline
        ),
        &memory,
        2,
    );
    print_table(
        &format!(
            "many: NOOP latency, {} NOOP/s over {n} sessions for {} s (write to tagged OK)",
            args.rate, args.secs
        ),
        &noop,
        2,
    );
    print_table("many: CPU over the NOOP phase", &cpu, 1);
    println!();
    let median_of = |name: &str| {
        [&open, &memory, &noop, &cpu]
            .iter()
            .flat_map(|v| v.iter())
            .find(|s| s.name == name)
            .map_or(f64::NAN, |s| s.median)
    };
    let kib = median_of("proxy plain VmRSS in IDLE");
    // Latency suffers first from other load on two cores: judged on the undisturbed runs
    // when there are any.
    let quiet = Quiet::of(measurements);
    let (p99, direct_p99, over) = if quiet.proxy_runs > 0 {
        (
            quiet.proxy_p99_ms,
            quiet.direct_p99_ms,
            format!("median of the {} undisturbed runs", quiet.proxy_runs),
        )
    } else {
        (
            median_of("proxy plain NOOP p99"),
            median_of("direct plain NOOP p99"),
            "median of all runs, every one disturbed".to_owned(),
        )
    };
    let direct = if direct_p99.is_nan() {
        String::new()
    } else {
        format!(
            " (direct {direct_p99:.2} ms, ratio {:.2})",
            p99 / direct_p99
        )
    };
    println!(
        "proxy NOOP p99 {p99:.2} ms{direct}, {over}; aim < {AIM_NOOP_P99_MS} ms: {}",
        verdict(p99 < AIM_NOOP_P99_MS)
    );
    println!(
        "proxy memory {kib:.2} KiB/session in IDLE, aim <= {AIM_KIB_PER_SESSION} KiB: {}",
        verdict(kib <= AIM_KIB_PER_SESSION)
    );
    for m in measurements {
        let n = &m.noop;
        if n.disturbed() {
            println!(
                "disturbed: run {} {}: other processes {:.2} cores, steal {:.2} over the NOOP \
                 phase (its figures are in the medians)",
                m.run, m.config, n.other_cores, n.steal_cores
            );
        }
    }
    if args.sessions < setup.requested {
        println!(
            "NOTE: measured {n} sessions, not the {} asked for (--fit-fd-limit: the open-file \
             limit allows no more)",
            setup.requested
        );
    }
    println!(
        "Dovecot log: {} errors, {} warnings{}",
        log.errors,
        log.warnings,
        if log.distinct.is_empty() {
            ""
        } else {
            "; distinct:"
        }
    );
    for l in &log.distinct {
        println!("  {l}");
    }
    let series: Vec<&Series> = [&open, &memory, &noop, &cpu]
        .into_iter()
        .flat_map(|v| v.iter())
        .collect();
    let summary = json!({
        "scenario": "many",
        "unix_time": unix_time(),
        "runs": runs,
        "sessions": args.sessions,
        "sessions_requested": setup.requested,
        "baseline_sessions": args.baseline,
        "users": args.users,
        "batch": args.batch,
        "noop_secs": args.secs,
        "noop_rate": args.rate,
        "settle_secs": args.settle_secs,
        "seed": args.seed,
        "park_after_ms": args.park_after_ms,
        "dovecot_imap_client_limit": args.imap_client_limit,
        "proxy_threads": setup.threads,
        "nofile": setup.nofile,
        "series": series,
        "measurements": measurements,
        "dovecot_log": log,
        "undisturbed": quiet,
        "aims": { "noop_p99_ms": AIM_NOOP_P99_MS, "kib_per_idle_session_plain": AIM_KIB_PER_SESSION },
    });
    let path = write_json("many", &summary)?;
    println!("summary written to {}", path.display());
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "[meets aim]" } else { "[MISSES AIM]" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_log_counts_errors_and_warnings_once_per_text() {
        let log = "Dec 03 10:00:00 master: Info: Dovecot v2.3.19.1 starting up\n\
                   Dec 03 10:00:01 master: Warning: fd limit (ulimit -n) is lower\n\
                   Dec 03 10:00:02 imap(user1)<12><ab>: Error: read() failed\n\
                   Dec 03 10:00:03 imap(user1)<12><ab>: Error: read() failed\n";
        let l = DovecotLog::read(log);
        assert_eq!((l.errors, l.warnings), (2, 1));
        assert_eq!(
            l.distinct,
            [
                "master: Warning: fd limit (ulimit -n) is lower",
                "imap(user1)<12><ab>: Error: read() failed"
            ]
        );
    }
}
