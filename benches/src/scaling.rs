//! `scaling`: the proxy's sessions/s and bulk MB/s with 1 and with 2 runtime worker
//! threads (`[server] threads`), and its CPU time per session and per GB at each.
//!
//! On a machine with few cores the load generator and Dovecot share them with the proxy,
//! so a second thread cannot give the proxy a second core: on two cores, the earlier
//! measurement without limits went from 1,283 to 1,155 webmail sessions/s. So each
//! configuration runs the proxy in a cgroup of its own with a CPU quota of
//! `--core-share` cores per worker thread (1 thread: 0.15 cores, 2 threads: 0.30), and
//! the rest of the machine is left to the clients and Dovecot. The proxy is then the
//! bottleneck (the table shows the share of CFS periods in which it used up its quota),
//! and throughput with 2 threads over throughput with 1 is how it scales with the CPU it
//! is given.
//!
//! Two readings answer different questions:
//! - **throughput, 2 threads ÷ 1**: 2.0 is linear. The quota is on the group's total, so a
//!   lock that serialised the threads completely would still fit 0.30 cores of work into
//!   the time; this ratio shows what running on two threads costs in work (cross-thread
//!   wake-ups, stolen tasks, shared counters), not contention.
//! - **proxy CPU per unit** (µs per session, ms per GB; every thread's `schedstat`): the
//!   same at 1 and 2 threads when a second thread adds no work of its own.
//!
//! `--core-share 0` runs without a quota (what the machine gives); a quota needs root or a
//! delegated cgroup, and the scenario says when it has none.
//!
//! Parts: `sessions` (the `peers` scenario's closed-loop webmail sessions, 20 clients over
//! 100 users, plain and implicit TLS with a full handshake each) and `bulk` (`UID FETCH
//! 1:* BODY.PEEK[]` on 4 concurrent sessions, so that both threads have work, plain and
//! TLS). Configurations alternate within each run, in an order rotated from run to run; a
//! fresh proxy per measurement.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use imapproxy_testkit::Dovecot;
use serde_json::json;
use tokio::task::JoinSet;

use crate::bulk::{bulk_dovecot, fetch_all};
use crate::cgroup::{CpuQuota, Throttling};
use crate::clients::{self, Window, pick_user};
use crate::error::BenchError;
use crate::imap::{
    BULK_READ_BUF, ImapConn, Security, insecure_connector, insecure_connector_no_resumption,
    login_select,
};
use crate::peers::disturbance::Probe;
use crate::peers::procfs;
use crate::proxy::{self, ProxyProcess};
use crate::report::{median, unix_time, write_json};
use crate::webmail::{self, SESSION_TIMEOUT, pool_section};

/// What a part measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Part {
    /// Closed-loop webmail sessions: sessions/s.
    Sessions,
    /// Concurrent bulk fetches: MB/s.
    Bulk,
}

/// `loadbench scaling` options.
#[derive(Debug, Args)]
pub struct ScalingArgs {
    /// Cores' worth of CPU the proxy gets per worker thread (a cgroup CPU quota); 0: no
    /// quota.
    #[arg(long, default_value_t = 0.15)]
    core_share: f64,
    /// The quota's CFS period in milliseconds (1 to 1,000): the proxy runs for its share
    /// of each period, then waits for the next. The default is the kernel's, and that of
    /// a container's CPU limit under Docker or Kubernetes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    period_ms: u64,
    /// Worker-thread counts to compare; ratios are to the first.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 2],
          value_parser = clap::value_parser!(u32).range(1..=64))]
    thread_counts: Vec<u32>,
    /// Parts to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Sessions, Part::Bulk])]
    only: Vec<Part>,
    /// Closed-loop clients of the sessions part.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    clients: u32,
    /// Users of the sessions part, picked round robin.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    users: u32,
    /// Uncounted seconds before each sessions window.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60))]
    warmup_secs: u64,
    /// Measured seconds of each sessions window.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=600))]
    secs: u64,
    /// Concurrent sessions of the bulk part.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    bulk_sessions: u32,
    /// Messages in the bulk mailbox.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    messages: u32,
    /// Size of each bulk message, KiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(4..=16_384))]
    size_kib: u32,
    /// Timed fetches per bulk session and measurement (after one untimed).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    fetches: u32,
    /// Other processes' CPU plus steal (cores) from which a measurement counts as
    /// disturbed.
    #[arg(long, default_value_t = 0.25)]
    disturbed_cores: f64,
}

impl ScalingArgs {
    fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }
}

/// One row of the table: a part over one transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    part: Part,
    security: Security,
}

impl Row {
    fn name(self) -> String {
        let what = match self.part {
            Part::Sessions => "sessions/s",
            Part::Bulk => "bulk MB/s",
        };
        format!("{what} {}", security_name(self.security))
    }

    /// What the proxy's context switches are counted per.
    fn switch_unit(self) -> &'static str {
        match self.part {
            Part::Sessions => "session",
            Part::Bulk => "MB",
        }
    }

    /// The unit of the proxy's CPU per unit of work.
    fn cpu_unit(self) -> &'static str {
        match self.part {
            Part::Sessions => "µs/session",
            Part::Bulk => "ms/GB",
        }
    }
}

fn security_name(s: Security) -> &'static str {
    match s {
        Security::Plain => "plain",
        Security::Tls => "TLS",
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// Sessions/s or MB/s.
    throughput: f64,
    /// Proxy CPU per session (µs) or per GB (ms).
    cpu_per_unit: f64,
    /// Cores' worth of CPU the proxy used over the measurement.
    proxy_cores: f64,
    /// The proxy's context switches (its threads', voluntary and not) per session or
    /// per MB.
    switches_per_unit: f64,
    /// Share of CFS periods in which the quota ran out.
    throttled: Option<f64>,
    /// Sessions or fetches that failed.
    failed: u64,
    disturbed: bool,
}

/// The servers every measurement shares.
struct Setup<'a> {
    binary: &'a Path,
    args: &'a ScalingArgs,
    sessions: Option<Arc<Dovecot>>,
    bulk: Option<Dovecot>,
    /// Whether the quota can be set here.
    quota: bool,
}

/// A proxy, in its quota's cgroup when there is one; the process stops first.
struct Started {
    proxy: ProxyProcess,
    quota: Option<CpuQuota>,
}

impl Started {
    fn throttling(&self) -> Option<Throttling> {
        self.quota.as_ref().and_then(CpuQuota::throttling)
    }
}

/// Runs the scenario.
pub async fn run(binary: &Path, runs: u32, args: &ScalingArgs) -> Result<(), BenchError> {
    if proxy::worker_threads().is_some() {
        return Err(BenchError::protocol(
            "loadbench --threads",
            "scaling sets the proxy's threads itself (--thread-counts)",
        ));
    }
    if args.thread_counts.is_empty() || args.only.is_empty() {
        return Err(BenchError::protocol("scaling", "nothing to measure"));
    }
    let quota = args.core_share > 0.0 && quota_available(args.core_share, args.period());
    let users = args.users as usize;
    let sessions = if args.only.contains(&Part::Sessions) {
        Some(Arc::new(
            Dovecot::builder()
                .users(users)
                .seed_messages(webmail::mailboxes(users))
                .extra_config(crate::peers::DOVECOT_LIMITS)
                .start()
                .map_err(BenchError::Dovecot)?,
        ))
    } else {
        None
    };
    let bulk = if args.only.contains(&Part::Bulk) {
        Some(bulk_dovecot(
            args.messages as usize,
            args.size_kib as usize * 1024,
        )?)
    } else {
        None
    };
    let setup = Setup {
        binary,
        args,
        sessions,
        bulk,
        quota,
    };
    println!(
        "scaling: proxy threads {:?}, {}; {} runs",
        args.thread_counts,
        if quota {
            format!(
                "{} cores of CPU per thread (cgroup quota, {} ms period)",
                args.core_share, args.period_ms
            )
        } else {
            "no CPU quota".to_owned()
        },
        runs
    );
    let mut rows: Vec<Row> = Vec::new();
    for part in [Part::Sessions, Part::Bulk] {
        if args.only.contains(&part) {
            for security in [Security::Plain, Security::Tls] {
                rows.push(Row { part, security });
            }
        }
    }
    let mut readings: BTreeMap<(Row, u32), Vec<Reading>> = BTreeMap::new();
    for r in 1..=runs {
        for row in &rows {
            for threads in rotated(&args.thread_counts, r) {
                let reading = match row.part {
                    Part::Sessions => measure_sessions(&setup, row.security, threads).await,
                    Part::Bulk => measure_bulk(&setup, row.security, threads).await,
                }?;
                eprintln!(
                    "  run {r}: {:<18} {threads} thread(s): {:8.1}, proxy {:7.1} {}, {:.2} cores, \
                     {:.1} context switches per {}{}{}{}",
                    row.name(),
                    reading.throughput,
                    reading.cpu_per_unit,
                    row.cpu_unit(),
                    reading.proxy_cores,
                    reading.switches_per_unit,
                    row.switch_unit(),
                    reading
                        .throttled
                        .map_or_else(String::new, |t| format!(", throttled {:.0} %", t * 100.0)),
                    if reading.failed > 0 {
                        format!(", {} failed", reading.failed)
                    } else {
                        String::new()
                    },
                    if reading.disturbed {
                        "  [disturbed]"
                    } else {
                        ""
                    },
                );
                readings.entry((*row, threads)).or_default().push(reading);
                // Let Dovecot's processes of the sessions just closed exit.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let table = markdown(&setup, &rows, &readings, runs);
    println!("\n{table}");
    let path = write_json("scaling", &summary(&setup, &rows, &readings, runs, &table))?;
    println!("summary: {}", path.display());
    Ok(())
}

/// Whether a cgroup with a CPU quota can be made here (says why not).
fn quota_available(cores: f64, period: Duration) -> bool {
    match CpuQuota::create(cores, period) {
        Ok(_) => true,
        Err(e) => {
            println!("scaling: no CPU quota ({e}); measuring without one");
            false
        }
    }
}

/// `items` rotated left by `run - 1`: each configuration goes first in turn.
fn rotated(items: &[u32], run: u32) -> Vec<u32> {
    let n = items.len().max(1);
    let k = (run as usize).saturating_sub(1) % n;
    items
        .iter()
        .cycle()
        .skip(k)
        .take(items.len())
        .copied()
        .collect()
}

/// Starts the proxy with `threads` worker threads, `extra` configuration, and its quota.
async fn start(
    setup: &Setup<'_>,
    dovecot: &Dovecot,
    threads: u32,
    extra: &str,
) -> Result<Started, BenchError> {
    let quota = if setup.quota {
        Some(
            CpuQuota::create(
                setup.args.core_share * f64::from(threads),
                setup.args.period(),
            )
            .map_err(|e| BenchError::protocol("CPU quota", e))?,
        )
    } else {
        None
    };
    let (cert, key) = dovecot.server_cert_paths();
    let config = format!("{extra}\n[server]\nthreads = {threads}\n");
    let proxy =
        ProxyProcess::start_with(setup.binary, dovecot.imap_addr(), &cert, &key, &config).await?;
    if let Some(q) = &quota {
        q.add(proxy.pid())
            .map_err(|e| BenchError::protocol("CPU quota", e))?;
    }
    Ok(Started { proxy, quota })
}

/// One sessions window through a fresh proxy.
async fn measure_sessions(
    setup: &Setup<'_>,
    security: Security,
    threads: u32,
) -> Result<Reading, BenchError> {
    let args = setup.args;
    let dovecot = setup
        .sessions
        .as_ref()
        .ok_or_else(|| BenchError::protocol("scaling", "no sessions Dovecot"))?;
    let started = start(setup, dovecot, threads, &pool_section(8)).await?;
    let addr: SocketAddr = match security {
        Security::Plain => started.proxy.plain,
        Security::Tls => started.proxy.implicit,
    };
    let window = Window::new(
        Duration::from_secs(args.warmup_secs),
        Duration::from_secs(args.secs),
    );
    let clients_n = args.clients as usize;
    let accounts = Arc::new(dovecot.users().to_vec());
    let tls = insecure_connector_no_resumption()?;
    let set = clients::spawn(clients_n, window, SESSION_TIMEOUT, move |c, i| {
        let (user, pass) = accounts
            .get(pick_user(c, i, clients_n, accounts.len(), None))
            .cloned()
            .unwrap_or_default();
        let tls = tls.clone();
        async move { webmail::session(addr, security, &tls, "proxy", &user, &pass).await }
    });
    tokio::time::sleep_until(window.from.into()).await;
    let probe = Probe::start();
    let before = Snapshot::take(&started);
    tokio::time::sleep_until(window.until.into()).await;
    let after = Snapshot::take(&started);
    let load = probe.finish();
    let tally = clients::collect(set).await?;
    if tally.ok.is_empty() {
        return Err(BenchError::protocol(
            "scaling sessions",
            format!(
                "no session succeeded: {}; proxy output: {}",
                crate::peers::reasons_text(&tally.reasons),
                started.proxy.log().trim()
            ),
        ));
    }
    let n = tally.ok.len() as f64;
    let spent = after.since(&before);
    Ok(Reading {
        throughput: n / window.secs(),
        cpu_per_unit: spent.cpu_ns as f64 / 1e3 / n,
        proxy_cores: spent.cores(),
        switches_per_unit: spent.switches as f64 / n,
        throttled: spent.throttling.and_then(Throttling::share),
        failed: tally.failed,
        disturbed: load.disturbed(args.disturbed_cores),
    })
}

/// `--bulk-sessions` concurrent fetches through a fresh proxy.
async fn measure_bulk(
    setup: &Setup<'_>,
    security: Security,
    threads: u32,
) -> Result<Reading, BenchError> {
    let args = setup.args;
    let dovecot = setup
        .bulk
        .as_ref()
        .ok_or_else(|| BenchError::protocol("scaling", "no bulk Dovecot"))?;
    // The pool's defaults, as in `bulk`.
    let started = start(setup, dovecot, threads, "").await?;
    let addr = match security {
        Security::Plain => started.proxy.plain,
        Security::Tls => started.proxy.implicit,
    };
    let (user, pass) = dovecot.user(1);
    let tls = insecure_connector()?;
    let messages = args.messages as usize;
    let size = args.size_kib as usize * 1024;
    let mut conns = Vec::new();
    for _ in 0..args.bulk_sessions {
        let mut conn = ImapConn::connect(addr, security, &tls, "proxy", BULK_READ_BUF).await?;
        login_select(&mut conn, &user, &pass).await?;
        conns.push(conn);
    }
    // One untimed fetch each, concurrently: Dovecot's cache, the page cache and every
    // buffer at its working size.
    let conns = fetch_rounds(conns, 1, messages, size).await?.0;
    let probe = Probe::start();
    let before = Snapshot::take(&started);
    let (conns, bytes, failed) = fetch_rounds(conns, args.fetches, messages, size).await?;
    let after = Snapshot::take(&started);
    let load = probe.finish();
    for mut conn in conns {
        // Polite end; the answer does not matter.
        let _ = conn.send("LOGOUT").await;
    }
    if bytes == 0 {
        return Err(BenchError::protocol(
            "scaling bulk",
            format!(
                "every fetch failed; proxy output: {}",
                started.proxy.log().trim()
            ),
        ));
    }
    let spent = after.since(&before);
    let gb = bytes as f64 / 1e9;
    Ok(Reading {
        throughput: bytes as f64 / 1e6 / spent.secs,
        cpu_per_unit: spent.cpu_ns as f64 / 1e6 / gb,
        proxy_cores: spent.cores(),
        switches_per_unit: spent.switches as f64 / (bytes as f64 / 1e6),
        throttled: spent.throttling.and_then(Throttling::share),
        failed,
        disturbed: load.disturbed(args.disturbed_cores),
    })
}

/// `rounds` fetches on every connection, the connections concurrently; returns the
/// connections still usable, the bytes fetched and the fetches that failed.
async fn fetch_rounds(
    conns: Vec<ImapConn>,
    rounds: u32,
    messages: usize,
    size: usize,
) -> Result<(Vec<ImapConn>, u64, u64), BenchError> {
    let mut set = JoinSet::new();
    for mut conn in conns {
        set.spawn(async move {
            let mut bytes = 0u64;
            for _ in 0..rounds {
                match fetch_all(&mut conn, "proxy", messages, size).await {
                    Ok(n) => bytes += n,
                    Err(e) => return (None, bytes, Some(e)),
                }
            }
            (Some(conn), bytes, None)
        });
    }
    let (mut kept, mut bytes, mut failed) = (Vec::new(), 0u64, 0u64);
    while let Some(joined) = set.join_next().await {
        let (conn, n, err) =
            joined.map_err(|e| BenchError::protocol("bulk task", e.to_string()))?;
        bytes += n;
        kept.extend(conn);
        if let Some(e) = err {
            eprintln!("  bulk fetch failed: {e}");
            failed += 1;
        }
    }
    Ok((kept, bytes, failed))
}

/// The proxy's CPU time, the group's throttling and the time, at one moment.
struct Snapshot {
    at: Instant,
    cpu_ns: u64,
    switches: u64,
    throttling: Option<Throttling>,
}

impl Snapshot {
    fn take(started: &Started) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            cpu_ns: procfs::process_cpu_ns(started.proxy.pid()).unwrap_or(0),
            switches: procfs::context_switches(started.proxy.pid()).unwrap_or(0),
            throttling: started.throttling(),
        }
    }

    fn since(&self, earlier: &Snapshot) -> Spent {
        Spent {
            secs: self.at.duration_since(earlier.at).as_secs_f64(),
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            switches: self.switches.saturating_sub(earlier.switches),
            throttling: match (self.throttling, earlier.throttling) {
                (Some(a), Some(b)) => Some(a.since(b)),
                _ => None,
            },
        }
    }
}

/// Between two snapshots.
struct Spent {
    secs: f64,
    cpu_ns: u64,
    switches: u64,
    throttling: Option<Throttling>,
}

impl Spent {
    fn cores(&self) -> f64 {
        self.cpu_ns as f64 / 1e9 / self.secs.max(1e-9)
    }
}

/// Medians of one row and thread count.
#[derive(Debug, Clone, Copy)]
struct Medians {
    throughput: f64,
    cpu_per_unit: f64,
    proxy_cores: f64,
    throttled: Option<f64>,
}

fn medians(readings: &[Reading]) -> Medians {
    let pick = |f: fn(&Reading) -> f64| median(&readings.iter().map(f).collect::<Vec<_>>());
    let throttled: Vec<f64> = readings.iter().filter_map(|r| r.throttled).collect();
    Medians {
        throughput: pick(|r| r.throughput),
        cpu_per_unit: pick(|r| r.cpu_per_unit),
        proxy_cores: pick(|r| r.proxy_cores),
        throttled: (!throttled.is_empty()).then(|| median(&throttled)),
    }
}

/// The table: per row, throughput at each thread count and its ratio to the first, the
/// proxy's CPU per unit of work and its ratio, the cores it used and how often its quota
/// ran out.
fn markdown(
    setup: &Setup<'_>,
    rows: &[Row],
    readings: &BTreeMap<(Row, u32), Vec<Reading>>,
    runs: u32,
) -> String {
    let counts = &setup.args.thread_counts;
    let first = counts.first().copied().unwrap_or(1);
    let label = |t: u32| {
        if t == 1 {
            "1 thread".to_owned()
        } else {
            format!("{t} threads")
        }
    };
    let mut out = String::new();
    out.push_str(&format!(
        "Scaling with the proxy's worker threads ({}), {}, medians of {runs} runs; {} CPUs ({}), {}.\n\n",
        counts
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if setup.quota {
            format!(
                "each proxy in a cgroup with {} cores of CPU per thread ({} ms period)",
                setup.args.core_share, setup.args.period_ms
            )
        } else {
            "no CPU quota".to_owned()
        },
        procfs::cpus(),
        procfs::cpu_model(),
        crate::peers::utc_text(unix_time()),
    ));
    let mut header = "| row |".to_owned();
    let mut rule = "|---|".to_owned();
    for &t in counts {
        header.push_str(&format!(" {} |", label(t)));
        rule.push_str("---|");
        if t != first {
            header.push_str(&format!(" {t} ÷ {first} |"));
            rule.push_str("---|");
        }
    }
    header.push_str(" proxy CPU per unit | proxy cores used | quota used up |");
    rule.push_str("---|---|---|");
    out.push_str(&format!("{header}\n{rule}\n"));
    for row in rows {
        let per: Vec<(u32, Option<Medians>)> = counts
            .iter()
            .map(|&t| (t, readings.get(&(*row, t)).map(|r| medians(r))))
            .collect();
        let base = per.first().and_then(|(_, m)| *m);
        let mut line = format!("| {} |", row.name());
        for (t, m) in &per {
            match m {
                Some(m) => line.push_str(&format!(" {:.1} |", m.throughput)),
                None => line.push_str(" — |"),
            }
            if *t != first {
                match (m, base) {
                    (Some(m), Some(b)) => {
                        line.push_str(&format!(" {:.2}× |", m.throughput / b.throughput));
                    }
                    _ => line.push_str(" — |"),
                }
            }
        }
        let cpu = per
            .iter()
            .map(|(_, m)| m.map_or("—".to_owned(), |m| format!("{:.0}", m.cpu_per_unit)))
            .collect::<Vec<_>>()
            .join(" → ");
        let cpu_ratio = match (per.last().and_then(|(_, m)| *m), base) {
            (Some(l), Some(b)) if per.len() > 1 => {
                format!(" ({:.2}×)", l.cpu_per_unit / b.cpu_per_unit)
            }
            _ => String::new(),
        };
        let cores = per
            .iter()
            .map(|(_, m)| m.map_or("—".to_owned(), |m| format!("{:.2}", m.proxy_cores)))
            .collect::<Vec<_>>()
            .join(" / ");
        let throttled = per
            .iter()
            .map(|(_, m)| {
                m.and_then(|m| m.throttled)
                    .map_or("—".to_owned(), |t| format!("{:.0} %", t * 100.0))
            })
            .collect::<Vec<_>>()
            .join(" / ");
        line.push_str(&format!(
            " {cpu} {}{cpu_ratio} | {cores} | {throttled} |",
            row.cpu_unit()
        ));
        out.push_str(&line);
        out.push('\n');
    }
    let disturbed: usize = readings.values().flatten().filter(|r| r.disturbed).count();
    let failed: u64 = readings.values().flatten().map(|r| r.failed).sum();
    out.push_str(&format!(
        "\n{disturbed} of {} measurements disturbed by other load (≥ {} cores of other \
         processes' CPU and steal); {failed} sessions or fetches failed.\n",
        readings.values().map(Vec::len).sum::<usize>(),
        setup.args.disturbed_cores
    ));
    out
}

fn summary(
    setup: &Setup<'_>,
    rows: &[Row],
    readings: &BTreeMap<(Row, u32), Vec<Reading>>,
    runs: u32,
    table: &str,
) -> serde_json::Value {
    let rows_json: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let per: Vec<serde_json::Value> = setup
                .args
                .thread_counts
                .iter()
                .map(|&t| {
                    let rs = readings.get(&(*row, t)).cloned().unwrap_or_default();
                    json!({
                        "threads": t,
                        "throughput": rs.iter().map(|r| r.throughput).collect::<Vec<_>>(),
                        "cpu_per_unit": rs.iter().map(|r| r.cpu_per_unit).collect::<Vec<_>>(),
                        "switches_per_unit": rs.iter().map(|r| r.switches_per_unit).collect::<Vec<_>>(),
                        "proxy_cores": rs.iter().map(|r| r.proxy_cores).collect::<Vec<_>>(),
                        "throttled": rs.iter().map(|r| r.throttled).collect::<Vec<_>>(),
                        "failed": rs.iter().map(|r| r.failed).sum::<u64>(),
                        "disturbed": rs.iter().map(|r| r.disturbed).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({ "row": row.name(), "cpu_unit": row.cpu_unit(), "threads": per })
        })
        .collect();
    json!({
        "scenario": "scaling",
        "runs": runs,
        "core_share": setup.quota.then_some(setup.args.core_share),
        "period_ms": setup.quota.then_some(setup.args.period_ms),
        "clients": setup.args.clients,
        "users": setup.args.users,
        "bulk_sessions": setup.args.bulk_sessions,
        "messages": setup.args.messages,
        "size_kib": setup.args.size_kib,
        "rows": rows_json,
        "table": table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_configuration_goes_first_in_turn() {
        assert_eq!(rotated(&[1, 2], 1), vec![1, 2]);
        assert_eq!(rotated(&[1, 2], 2), vec![2, 1]);
        assert_eq!(rotated(&[1, 2], 3), vec![1, 2]);
        assert_eq!(rotated(&[1, 2, 4], 3), vec![4, 1, 2]);
    }
}
