//! `scaling`: the proxy's sessions/s and bulk MB/s with 1 and with 2 runtime worker
//! threads (`[server] threads`), and its CPU time per session and per GB at each.
//!
//! On a machine with few cores the load generator and Dovecot share them with the proxy,
//! so a second thread cannot give the proxy a second core (on two cores, without a quota,
//! the proxy uses 0.4 to 0.7 cores and the machine is full). So each configuration runs the
//! proxy in a cgroup of its own with a CPU quota of `--core-share` cores per worker thread
//! (1 thread: 0.15 cores, 2 threads: 0.30), and the rest of the machine is left to the
//! clients and Dovecot. The proxy is then the bottleneck (the tables show the share of CFS
//! periods in which it used up its quota), and throughput with 2 threads and 0.30 cores
//! over throughput with 1 thread and 0.15 is how it scales with the CPU it is given.
//!
//! A quota below one core could be used by one thread alone, so a **control** runs too:
//! 1 thread with the 2 threads' quota. 2 threads over that control, at the same CPU, is
//! what the second thread itself costs (cross-thread wake-ups, stolen tasks, shared cache
//! lines), apart from the CPU it brings.
//!
//! What a quota cannot show: how far a lock that serialised the threads would limit
//! throughput, since that limit (one core) is above the quota. Contention's cost in CPU
//! (futex waits, cache lines moving between cores) does show, in the proxy's CPU per unit.
//!
//! `--core-share 0` runs without a quota (what the machine gives). A quota needs root: the
//! group is made under the cgroup root (v2 `cpu.max`, or the v1 `cpu` controller).
//!
//! Parts: `sessions` (the `peers` scenario's closed-loop webmail sessions, 20 clients over
//! 100 users, plain and implicit TLS with a full handshake each) and `bulk` (`UID FETCH
//! 1:* BODY.PEEK[]` on 4 concurrent sessions, so that the sessions can spread over the
//! threads, plain and TLS, whole rounds for at least `--bulk-secs`). Configurations
//! alternate within each run, in an order rotated from run to run; a fresh proxy per
//! measurement. Ratios are medians of the per-run ratios (each run measures every
//! configuration back to back).

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
use crate::clients::{self, Window};
use crate::error::BenchError;
use crate::imap::{BULK_READ_BUF, ImapConn, Security, insecure_connector, login_select};
use crate::peers::disturbance::Probe;
use crate::peers::procfs::{self, ContextSwitches};
use crate::peers::{reasons_text, rotated, spawn_clients, utc_text};
use crate::proxy::{self, ProxyProcess};
use crate::report::{median, unix_time, write_json};
use crate::webmail::{self, pool_section};

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
    #[arg(long, default_value_t = 0.15, value_parser = parse_share)]
    core_share: f64,
    /// The quota's CFS period in milliseconds (1 to 1,000): the proxy runs for its share
    /// of each period, then waits for the next. Short periods keep the proxy's bursts
    /// short (at the kernel's 100 ms, both threads take both cores for 15 ms while the
    /// clients and Dovecot wait, then all wait on them).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    period_ms: u64,
    /// Worker-thread counts to compare; ratios are to the first.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 2],
          value_parser = clap::value_parser!(u32).range(1..=64))]
    thread_counts: Vec<u32>,
    /// Leave out the control (the first thread count with each other count's quota).
    #[arg(long)]
    no_control: bool,
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
    /// Timed bulk fetching lasts at least this long (whole rounds, every session fetching
    /// once per round, after one untimed round).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    bulk_secs: u64,
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

/// `--core-share`: a finite number of cores, 0 or more.
fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("{text:?} is not a number of cores (0 or more)")),
    }
}

/// One proxy configuration: worker threads and CPU quota (cores; `None`: no quota).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Config {
    threads: u32,
    cores: Option<f64>,
}

impl Config {
    fn label(self) -> String {
        let threads = if self.threads == 1 {
            "1 thread".to_owned()
        } else {
            format!("{} threads", self.threads)
        };
        match self.cores {
            Some(c) => format!("{threads}, {c:.2} cores"),
            None => threads,
        }
    }
}

/// The configurations: each thread count with its quota, then the controls (the first
/// count with each other count's quota).
fn configs(counts: &[u32], share: Option<f64>, control: bool) -> Vec<Config> {
    let mut unique: Vec<u32> = Vec::new();
    for &t in counts {
        if !unique.contains(&t) {
            unique.push(t);
        }
    }
    let mut out: Vec<Config> = unique
        .iter()
        .map(|&t| Config {
            threads: t,
            cores: share.map(|s| s * f64::from(t)),
        })
        .collect();
    if let (Some(s), true, Some((&first, rest))) = (share, control, unique.split_first()) {
        out.extend(rest.iter().map(|&t| Config {
            threads: first,
            cores: Some(s * f64::from(t)),
        }));
    }
    out
}

/// A ratio the tables show: configuration `num` over configuration `den`, per run.
#[derive(Debug, Clone)]
struct Comparison {
    label: String,
    num: usize,
    den: usize,
}

/// For each thread count after the first: its throughput over the first's, and over the
/// control's (same CPU) when there is one.
fn comparisons(configs: &[Config]) -> Vec<Comparison> {
    let Some(base) = configs.first().copied() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, c) in configs.iter().enumerate().skip(1) {
        if c.threads == base.threads {
            continue; // a control
        }
        out.push(Comparison {
            label: format!("{} ÷ {}", c.threads, base.threads),
            num: i,
            den: 0,
        });
        let control = configs
            .iter()
            .position(|k| k.threads == base.threads && c.cores.is_some() && k.cores == c.cores);
        if let Some(k) = control {
            out.push(Comparison {
                label: format!("{} ÷ {}, same CPU", c.threads, base.threads),
                num: i,
                den: k,
            });
        }
    }
    out
}

/// One row of the tables: a part over one transport.
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
        let security = match self.security {
            Security::Plain => "plain",
            Security::Tls => "TLS",
        };
        format!("{what} {security}")
    }

    /// The unit of the proxy's CPU per unit of work.
    fn cpu_unit(self) -> &'static str {
        match self.part {
            Part::Sessions => "µs/session",
            Part::Bulk => "ms/GB",
        }
    }

    /// What the proxy's context switches are counted per.
    fn switch_unit(self) -> &'static str {
        match self.part {
            Part::Sessions => "session",
            Part::Bulk => "MB",
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// Sessions/s or MB/s.
    throughput: f64,
    /// Proxy CPU per session (µs) or per GB (ms), when its threads could be read.
    cpu_per_unit: Option<f64>,
    /// Cores' worth of CPU the proxy used over the measurement.
    proxy_cores: Option<f64>,
    /// The proxy's context switches (its threads', voluntary and not) per session or
    /// per MB.
    switches_per_unit: Option<f64>,
    /// Of them, the voluntary ones: a thread went to sleep.
    sleeps_per_unit: Option<f64>,
    /// Share of CFS periods in which the quota ran out.
    throttled: Option<f64>,
    /// Sessions or fetches that failed inside the measurement.
    failed: u64,
    disturbed: bool,
}

/// A figure of a reading, when it has one.
type Metric<'a> = &'a dyn Fn(&Reading) -> Option<f64>;

/// Every measurement of one row and configuration, by run.
type Readings = BTreeMap<(Row, usize), BTreeMap<u32, Reading>>;

/// The servers every measurement shares.
struct Setup<'a> {
    binary: &'a Path,
    args: &'a ScalingArgs,
    sessions: Option<Arc<Dovecot>>,
    bulk: Option<Dovecot>,
}

/// A proxy, in its quota's cgroup when there is one; the process stops first.
struct Started {
    proxy: ProxyProcess,
    quota: Option<CpuQuota>,
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
    let share = if args.core_share > 0.0 {
        quota_share(args)?
    } else {
        None
    };
    let configs = configs(&args.thread_counts, share, !args.no_control);
    let comparisons = comparisons(&configs);
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
    };
    println!(
        "scaling: {}; {}; {runs} runs",
        configs
            .iter()
            .map(|c| c.label())
            .collect::<Vec<_>>()
            .join(" / "),
        quota_text(args, share)
    );
    let mut rows: Vec<Row> = Vec::new();
    for part in [Part::Sessions, Part::Bulk] {
        if args.only.contains(&part) {
            for security in [Security::Plain, Security::Tls] {
                rows.push(Row { part, security });
            }
        }
    }
    let mut readings = Readings::new();
    let mut notes: Vec<String> = Vec::new();
    let order: Vec<usize> = (0..configs.len()).collect();
    for r in 1..=runs {
        for row in &rows {
            for i in rotated(&order, r) {
                let Some(config) = configs.get(i).copied() else {
                    continue;
                };
                let measured = match row.part {
                    Part::Sessions => measure_sessions(&setup, row.security, config).await,
                    Part::Bulk => measure_bulk(&setup, row.security, config).await,
                };
                match measured {
                    Ok((reading, mut more)) => {
                        print_reading(r, *row, config, &reading);
                        for n in more.drain(..) {
                            notes.push(format!("run {r}, {}, {}: {n}", row.name(), config.label()));
                        }
                        readings.entry((*row, i)).or_default().insert(r, reading);
                    }
                    Err(e) => {
                        eprintln!(
                            "  run {r}: {:<18} {}: failed: {e}",
                            row.name(),
                            config.label()
                        );
                        notes.push(format!(
                            "run {r}, {}, {}: failed: {e}",
                            row.name(),
                            config.label()
                        ));
                    }
                }
                // Let Dovecot's processes of the sessions just closed exit.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let report = Report {
        args,
        share,
        configs: &configs,
        comparisons: &comparisons,
        rows: &rows,
        readings: &readings,
        runs,
    };
    let text = report.markdown(&notes);
    println!("\n{text}");
    let path = write_json("scaling", &report.json(&notes, &text))?;
    println!("summary: {}", path.display());
    Ok(())
}

/// The share per thread when a quota can be made here; `None` (said why) when this
/// machine has no cgroup with the cpu controller or we may not make one. A share the
/// kernel cannot take is an error.
fn quota_share(args: &ScalingArgs) -> Result<Option<f64>, BenchError> {
    let most = args.thread_counts.iter().copied().max().unwrap_or(1);
    let least = args.thread_counts.iter().copied().min().unwrap_or(1);
    // The arithmetic first, so that a bad share is never mistaken for a missing cgroup.
    for threads in [least, most] {
        CpuQuota::check(args.core_share * f64::from(threads), args.period())
            .map_err(|e| BenchError::protocol("--core-share / --period-ms", e))?;
    }
    let stale = crate::cgroup::remove_stale();
    if stale > 0 {
        println!("scaling: removed {stale} cgroup(s) left by loadbench runs that were killed");
    }
    match CpuQuota::create(args.core_share, args.period()) {
        Ok(_) => Ok(Some(args.core_share)),
        Err(e) => {
            println!("scaling: no CPU quota ({e}); measuring without one");
            Ok(None)
        }
    }
}

fn quota_text(args: &ScalingArgs, share: Option<f64>) -> String {
    match share {
        Some(s) => format!(
            "each proxy in a cgroup with {s} cores of CPU per worker thread ({} ms CFS period)",
            args.period_ms
        ),
        None => "no CPU quota".to_owned(),
    }
}

/// `x` with `decimals` decimals, or a dash when unknown.
fn number(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(|| "—".to_owned(), |v| format!("{v:.decimals$}"))
}

fn print_reading(run: u32, row: Row, config: Config, reading: &Reading) {
    eprintln!(
        "  run {run}: {:<18} {:<22} {:8.1}, proxy {} {}, {} cores, {} context switches ({} voluntary) per {}{}{}{}",
        row.name(),
        config.label(),
        reading.throughput,
        number(reading.cpu_per_unit, 1),
        row.cpu_unit(),
        number(reading.proxy_cores, 2),
        number(reading.switches_per_unit, 1),
        number(reading.sleeps_per_unit, 1),
        row.switch_unit(),
        reading.throttled.map_or_else(String::new, |t| format!(
            ", quota out in {:.0} % of periods",
            t * 100.0
        )),
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
}

/// Starts the proxy in `config` in front of `part`'s Dovecot, in its quota's cgroup: the
/// sessions part with `[pool] max_per_user = 8` (as in `peers`), bulk with the pool's
/// defaults (as in `bulk`).
async fn start<'s>(
    setup: &'s Setup<'_>,
    part: Part,
    config: Config,
) -> Result<(&'s Dovecot, Started), BenchError> {
    let (dovecot, extra) = match part {
        Part::Sessions => (setup.sessions.as_deref(), pool_section(8)),
        Part::Bulk => (setup.bulk.as_ref(), String::new()),
    };
    let dovecot =
        dovecot.ok_or_else(|| BenchError::protocol("scaling", "no Dovecot for this part"))?;
    let quota = config
        .cores
        .map(|cores| CpuQuota::create(cores, setup.args.period()))
        .transpose()
        .map_err(|e| BenchError::protocol("CPU quota", e))?;
    let (cert, key) = dovecot.server_cert_paths();
    let toml = format!("{extra}\n[server]\nthreads = {}\n", config.threads);
    let proxy =
        ProxyProcess::start_with(setup.binary, dovecot.imap_addr(), &cert, &key, &toml).await?;
    if let Some(q) = &quota {
        q.add(proxy.pid())
            .map_err(|e| BenchError::protocol("CPU quota", e))?;
    }
    Ok((dovecot, Started { proxy, quota }))
}

fn listener(started: &Started, security: Security) -> SocketAddr {
    match security {
        Security::Plain => started.proxy.plain,
        Security::Tls => started.proxy.implicit,
    }
}

/// One sessions window through a fresh proxy; the reading and notes on failures.
async fn measure_sessions(
    setup: &Setup<'_>,
    security: Security,
    config: Config,
) -> Result<(Reading, Vec<String>), BenchError> {
    let args = setup.args;
    let (dovecot, started) = start(setup, Part::Sessions, config).await?;
    let addr = listener(&started, security);
    let window = Window::new(
        Duration::from_secs(args.warmup_secs),
        Duration::from_secs(args.secs),
    );
    let set = spawn_clients(
        dovecot,
        addr,
        security,
        "proxy",
        args.clients as usize,
        window,
    )?;
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
                reasons_text(&tally.reasons),
                started.proxy.log().trim()
            ),
        ));
    }
    let mut notes = Vec::new();
    if tally.failed > 0 {
        notes.push(format!(
            "{} sessions failed in the window: {}",
            tally.failed,
            reasons_text(&tally.reasons)
        ));
    }
    if tally.failed_outside > 0 {
        notes.push(format!(
            "{} sessions failed outside the window",
            tally.failed_outside
        ));
    }
    let n = tally.ok.len() as f64;
    let reading = after.since(&before).reading(
        n / window.secs(),
        n,
        tally.failed,
        load.disturbed(args.disturbed_cores),
    );
    Ok((reading, notes))
}

/// `--bulk-sessions` concurrent fetches through a fresh proxy; the reading and notes on
/// failures.
async fn measure_bulk(
    setup: &Setup<'_>,
    security: Security,
    config: Config,
) -> Result<(Reading, Vec<String>), BenchError> {
    let args = setup.args;
    let (dovecot, started) = start(setup, Part::Bulk, config).await?;
    let addr = listener(&started, security);
    let (user, pass) = dovecot.user(1);
    let tls = insecure_connector()?;
    let shape = Shape {
        messages: args.messages as usize,
        size: args.size_kib as usize * 1024,
    };
    let mut conns = Vec::new();
    for _ in 0..args.bulk_sessions {
        let mut conn = ImapConn::connect(addr, security, &tls, "proxy", BULK_READ_BUF).await?;
        login_select(&mut conn, &user, &pass).await?;
        conns.push(conn);
    }
    let mut notes = Vec::new();
    // One untimed round: Dovecot's cache, the page cache and every buffer at its
    // working size.
    let warm = fetch_round(conns, shape).await?;
    if warm.failed > 0 {
        notes.push(format!(
            "{} of {} sessions failed their untimed fetch: {}",
            warm.failed,
            args.bulk_sessions,
            warm.errors.join("; ")
        ));
    }
    let mut conns = warm.conns;
    let probe = Probe::start();
    let before = Snapshot::take(&started);
    let (mut bytes, mut failed) = (0u64, 0u64);
    let least = Duration::from_secs(args.bulk_secs);
    while !conns.is_empty() && before.at.elapsed() < least {
        let round = fetch_round(conns, shape).await?;
        bytes += round.bytes;
        failed += round.failed;
        if round.failed > 0 {
            notes.push(format!("fetches failed: {}", round.errors.join("; ")));
        }
        conns = round.conns;
    }
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
                "no fetch succeeded; proxy output: {}",
                started.proxy.log().trim()
            ),
        ));
    }
    let spent = after.since(&before);
    let mb = bytes as f64 / 1e6;
    let throughput = mb / spent.secs.max(1e-9);
    let reading = spent.reading(throughput, mb, failed, load.disturbed(args.disturbed_cores));
    Ok((reading, notes))
}

/// The bulk mailbox: what a whole fetch must return.
#[derive(Debug, Clone, Copy)]
struct Shape {
    messages: usize,
    size: usize,
}

/// What one round of fetches gave.
struct Round {
    /// The connections still usable.
    conns: Vec<ImapConn>,
    bytes: u64,
    failed: u64,
    errors: Vec<String>,
}

/// One fetch on every connection, the connections concurrently.
async fn fetch_round(conns: Vec<ImapConn>, shape: Shape) -> Result<Round, BenchError> {
    let mut set = JoinSet::new();
    for mut conn in conns {
        set.spawn(async move {
            match fetch_all(&mut conn, "proxy", shape.messages, shape.size).await {
                Ok(n) => (Some(conn), n, None),
                Err(e) => (None, 0, Some(e)),
            }
        });
    }
    let mut round = Round {
        conns: Vec::new(),
        bytes: 0,
        failed: 0,
        errors: Vec::new(),
    };
    while let Some(joined) = set.join_next().await {
        let (conn, n, err) =
            joined.map_err(|e| BenchError::protocol("bulk task", e.to_string()))?;
        round.bytes += n;
        round.conns.extend(conn);
        if let Some(e) = err {
            round.failed += 1;
            round.errors.push(clients::reason(&e));
        }
    }
    Ok(round)
}

/// The proxy's CPU time and context switches, the group's throttling and the time, at
/// one moment.
struct Snapshot {
    at: Instant,
    cpu_ns: Option<u64>,
    switches: Option<ContextSwitches>,
    throttling: Option<Throttling>,
}

impl Snapshot {
    fn take(started: &Started) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            cpu_ns: started.proxy.cpu_ns(),
            switches: procfs::context_switches(started.proxy.pid()),
            throttling: started.quota.as_ref().and_then(CpuQuota::throttling),
        }
    }

    fn since(&self, earlier: &Snapshot) -> Spent {
        let diff = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Spent {
            secs: self.at.duration_since(earlier.at).as_secs_f64(),
            cpu_ns: diff(self.cpu_ns, earlier.cpu_ns),
            switches: self.switches.zip(earlier.switches).map(|(a, b)| a.since(b)),
            throttling: self
                .throttling
                .zip(earlier.throttling)
                .map(|(a, b)| a.since(b)),
        }
    }
}

/// Between two snapshots.
struct Spent {
    secs: f64,
    cpu_ns: Option<u64>,
    switches: Option<ContextSwitches>,
    throttling: Option<Throttling>,
}

impl Spent {
    /// The reading of `units` sessions or MB done in this interval at `throughput`. The CPU
    /// per unit is in µs per session or per MB, which is ms per GB.
    fn reading(&self, throughput: f64, units: f64, failed: u64, disturbed: bool) -> Reading {
        let per_unit = |x: u64| x as f64 / units;
        Reading {
            throughput,
            cpu_per_unit: self.cpu_ns.map(|ns| per_unit(ns) / 1e3),
            proxy_cores: self.cpu_ns.map(|ns| ns as f64 / 1e9 / self.secs.max(1e-9)),
            switches_per_unit: self.switches.map(|s| per_unit(s.total())),
            sleeps_per_unit: self.switches.map(|s| per_unit(s.voluntary)),
            throttled: self.throttling.and_then(Throttling::share),
            failed,
            disturbed,
        }
    }
}

/// What the tables are made from.
struct Report<'a> {
    args: &'a ScalingArgs,
    share: Option<f64>,
    configs: &'a [Config],
    comparisons: &'a [Comparison],
    rows: &'a [Row],
    readings: &'a Readings,
    runs: u32,
}

/// The median of `f` over `readings`, leaving out those without a value.
fn median_of(
    readings: Option<&BTreeMap<u32, Reading>>,
    f: impl Fn(&Reading) -> Option<f64>,
) -> Option<f64> {
    let xs: Vec<f64> = readings?.values().filter_map(f).collect();
    (!xs.is_empty()).then(|| median(&xs))
}

/// The median over runs of `f(num) / f(den)`, over the runs that measured both.
fn paired_ratio(
    num: Option<&BTreeMap<u32, Reading>>,
    den: Option<&BTreeMap<u32, Reading>>,
    f: impl Fn(&Reading) -> Option<f64>,
) -> Option<f64> {
    let (num, den) = (num?, den?);
    let xs: Vec<f64> = num
        .iter()
        .filter_map(|(run, a)| {
            let (x, y) = (f(a)?, f(den.get(run)?)?);
            (y > 0.0).then(|| x / y)
        })
        .collect();
    (!xs.is_empty()).then(|| median(&xs))
}

impl Report<'_> {
    fn readings(&self, row: Row, config: usize) -> Option<&BTreeMap<u32, Reading>> {
        self.readings.get(&(row, config))
    }

    /// One table: a row per part, a column per configuration (`cell` of its readings),
    /// then, with `ratio_of`, the paired ratios of that figure for each comparison.
    fn table(
        &self,
        title: &str,
        cell: impl Fn(Row, Option<&BTreeMap<u32, Reading>>) -> String,
        ratio_of: Option<Metric<'_>>,
    ) -> String {
        let mut header = format!("| {title} |");
        let mut rule = "|---|".to_owned();
        for c in self.configs {
            header.push_str(&format!(" {} |", c.label()));
            rule.push_str("---|");
        }
        if ratio_of.is_some() {
            for k in self.comparisons {
                header.push_str(&format!(" {} |", k.label));
                rule.push_str("---|");
            }
        }
        let mut out = format!("{header}\n{rule}\n");
        for &row in self.rows {
            let mut line = format!("| {} |", row.name());
            for i in 0..self.configs.len() {
                line.push_str(&format!(" {} |", cell(row, self.readings(row, i))));
            }
            if let Some(f) = ratio_of {
                for k in self.comparisons {
                    let r = paired_ratio(self.readings(row, k.num), self.readings(row, k.den), f);
                    line.push_str(&format!(
                        " {} |",
                        r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"))
                    ));
                }
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    fn markdown(&self, notes: &[String]) -> String {
        let mut out = format!(
            "Scaling with the proxy's worker threads: {}; medians of {} runs, ratios the \
             medians of per-run ratios; {} CPUs ({}), {}.\n\n",
            quota_text(self.args, self.share),
            self.runs,
            procfs::cpus(),
            procfs::cpu_model(),
            utc_text(unix_time()),
        );
        out.push_str(&self.table(
            "throughput (↑)",
            |_, rs| number(median_of(rs, |r| Some(r.throughput)), 1),
            Some(&|r: &Reading| Some(r.throughput)),
        ));
        out.push('\n');
        out.push_str(&self.table(
            "proxy CPU per session (µs) or per GB (ms) (↓)",
            |_, rs| number(median_of(rs, |r| r.cpu_per_unit), 0),
            Some(&|r: &Reading| r.cpu_per_unit),
        ));
        out.push('\n');
        out.push_str(&self.table(
            "proxy cores used; periods its quota ran out",
            |_, rs| {
                let cores = number(median_of(rs, |r| r.proxy_cores), 2);
                match median_of(rs, |r| r.throttled) {
                    Some(t) => format!("{cores}; {:.0} %", t * 100.0),
                    None => cores,
                }
            },
            None,
        ));
        out.push('\n');
        out.push_str(&self.table(
            "proxy context switches per session or per MB: all / voluntary (a thread went to sleep)",
            |_, rs| {
                format!(
                    "{} / {}",
                    number(median_of(rs, |r| r.switches_per_unit), 1),
                    number(median_of(rs, |r| r.sleeps_per_unit), 1)
                )
            },
            None,
        ));
        let all: Vec<&Reading> = self.readings.values().flat_map(|m| m.values()).collect();
        let disturbed = all.iter().filter(|r| r.disturbed).count();
        let failed: u64 = all.iter().map(|r| r.failed).sum();
        out.push_str(&format!(
            "\n{disturbed} of {} measurements disturbed by other load (≥ {} cores of other \
             processes' CPU and steal); {failed} sessions or fetches failed inside them.\n",
            all.len(),
            self.args.disturbed_cores
        ));
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
        out
    }

    fn json(&self, notes: &[String], table: &str) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|&row| {
                let per: Vec<serde_json::Value> = self
                    .configs
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let rs: Vec<(u32, Reading)> = self
                            .readings(row, i)
                            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
                            .unwrap_or_default();
                        json!({
                            "threads": c.threads,
                            "cores": c.cores,
                            "runs": rs.iter().map(|(r, x)| json!({
                                "run": r,
                                "throughput": x.throughput,
                                "cpu_per_unit": x.cpu_per_unit,
                                "proxy_cores": x.proxy_cores,
                                "switches_per_unit": x.switches_per_unit,
                                "voluntary_switches_per_unit": x.sleeps_per_unit,
                                "throttled": x.throttled,
                                "failed": x.failed,
                                "disturbed": x.disturbed,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let ratios: Vec<serde_json::Value> = self
                    .comparisons
                    .iter()
                    .map(|k| {
                        let (a, b) = (self.readings(row, k.num), self.readings(row, k.den));
                        json!({
                            "label": k.label,
                            "throughput": paired_ratio(a, b, |r| Some(r.throughput)),
                            "cpu_per_unit": paired_ratio(a, b, |r| r.cpu_per_unit),
                        })
                    })
                    .collect();
                json!({
                    "row": row.name(),
                    "cpu_unit": row.cpu_unit(),
                    "configs": per,
                    "ratios": ratios,
                })
            })
            .collect();
        json!({
            "scenario": "scaling",
            "runs": self.runs,
            "core_share": self.share,
            "period_ms": self.share.map(|_| self.args.period_ms),
            "clients": self.args.clients,
            "users": self.args.users,
            "bulk_sessions": self.args.bulk_sessions,
            "bulk_secs": self.args.bulk_secs,
            "messages": self.args.messages,
            "size_kib": self.args.size_kib,
            "rows": rows,
            "notes": notes,
            "table": table,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(throughput: f64) -> Reading {
        Reading {
            throughput,
            cpu_per_unit: Some(1_000.0 / throughput),
            proxy_cores: None,
            switches_per_unit: None,
            sleeps_per_unit: None,
            throttled: None,
            failed: 0,
            disturbed: false,
        }
    }

    #[test]
    fn the_controls_run_the_first_count_with_each_other_counts_quota() {
        let with = configs(&[1, 2, 2], Some(0.15), true);
        let cores: Vec<(u32, Option<f64>)> = with.iter().map(|c| (c.threads, c.cores)).collect();
        assert_eq!(
            cores,
            vec![(1, Some(0.15)), (2, Some(0.3)), (1, Some(0.3))],
            "a repeated count is measured once"
        );
        assert_eq!(
            with.get(2).map(|c| c.label()).as_deref(),
            Some("1 thread, 0.30 cores")
        );
        let labels: Vec<(String, usize, usize)> = comparisons(&with)
            .into_iter()
            .map(|k| (k.label, k.num, k.den))
            .collect();
        assert_eq!(
            labels,
            vec![
                ("2 ÷ 1".to_owned(), 1, 0),
                ("2 ÷ 1, same CPU".to_owned(), 1, 2)
            ]
        );
        // Without a quota there is no control: one thread could not be given more CPU.
        let without = configs(&[1, 2], None, true);
        assert_eq!(without.len(), 2);
        assert_eq!(comparisons(&without).len(), 1);
        assert_eq!(configs(&[1, 2], Some(0.15), false).len(), 2);
    }

    #[test]
    fn ratios_pair_the_runs() {
        // Run 2 of the numerator has no partner and is left out; the ratios of runs 1 and
        // 3 are 2.0 and 1.5 (the ratio of the medians would be 2.0).
        let num: BTreeMap<u32, Reading> =
            [(1, reading(2.0)), (2, reading(9.0)), (3, reading(1.5))].into();
        let den: BTreeMap<u32, Reading> = [(1, reading(1.0)), (3, reading(1.0))].into();
        assert_eq!(
            paired_ratio(Some(&num), Some(&den), |r| Some(r.throughput)),
            Some(1.75)
        );
        assert_eq!(paired_ratio(Some(&num), None, |r| Some(r.throughput)), None);
        assert_eq!(
            median_of(Some(&num), |r| Some(r.throughput)),
            Some(2.0),
            "median of 2.0, 9.0, 1.5"
        );
        assert_eq!(median_of(Some(&num), |r| r.proxy_cores), None);
    }

    #[test]
    fn a_core_share_is_a_finite_number_of_cores() {
        assert_eq!(parse_share("0.15"), Ok(0.15));
        assert_eq!(parse_share("0"), Ok(0.0));
        for bad in ["-0.1", "NaN", "inf", "x", ""] {
            assert!(parse_share(bad).is_err(), "{bad:?}");
        }
    }
}
