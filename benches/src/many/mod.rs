//! `many`: 10,000 concurrent logged-in sessions on one proxy with one runtime thread
//! (issue #10: "10,000 concurrent logged-in sessions on one core with a NOOP p99 under
//! 5 ms while they idle", "memory per idle session ≤ 4 KB plain").
//!
//! One Dovecot for all runs, configured so that 10,000 sessions do not need 10,000
//! processes (every testkit user runs as the one mail uid, so an `imap` process may serve
//! many of them; long-running login processes). Per run and configuration, in an order
//! that alternates from run to run:
//!
//! - **proxy plain**, a freshly started proxy with `[server] threads = 1` (unless
//!   `loadbench --threads` says otherwise): `--baseline` sessions log in (plain `LOGIN`,
//!   `SELECT INBOX`) and enter `IDLE`, the proxy's `VmRSS` is read; the rest up to
//!   `--sessions` log in, `--batch` at a time (sessions/s), `VmRSS` again ("selected");
//!   they enter `IDLE` too, `--settle-secs` later `VmRSS` once more (and the proxy's CPU
//!   over those quiet seconds). KiB per session = (reading − baseline) / (sessions −
//!   baseline). `DONE` on all, then the NOOP phase.
//! - **direct plain**: the same sessions, `IDLE` and `DONE` straight at Dovecot, the same
//!   NOOP phase: what the proxy's latency is compared with.
//!
//! NOOP phase: for `--secs`, every session sends `NOOP` once every `sessions / rate`
//! seconds (10 s by default) at a phase of its own (seeded), so that `--rate` NOOPs per
//! second arrive spread out; each timed from its write to the tagged `OK`. Besides the
//! latency percentiles, the phase reads the CPU time of the proxy (its threads'
//! `schedstat`), of Dovecot's process tree and of loadbench itself (`/proc/<pid>/stat`), the
//! machine's busy cores, and how late loadbench sent each NOOP against its schedule: the
//! load generator shares the two cores, and these say whether it kept up and whether other
//! processes disturbed the measurement.
//!
//! Files: this one runs the scenario (Dovecot's and the proxy's settings, opening sessions,
//! `IDLE`, memory); `noop` the NOOP phase and its CPU readings; `limits` the open-file
//! limit; `output` the printed tables, the verdicts and the JSON summary.

mod limits;
mod noop;
mod output;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use imapproxy_testkit::{Dovecot, Seed, small_message};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::error::BenchError;
use crate::imap::{
    COMMAND_TIMEOUT, ImapConn, SMALL_READ_BUF, Security, bounded, insecure_connector, login_select,
};
use crate::proxy::{self, ProxyProcess};
use crate::webmail::tail;
use limits::{fit_fd_limit, open_files};
use noop::{Noop, cpu_ns, noop_phase};
use output::{DovecotLog, print_measurement, summarise};

/// Issue #10: NOOP p99 through the proxy under this while 10,000 sessions idle.
const AIM_NOOP_P99_MS: f64 = 5.0;
/// Issue #10 / DESIGN.md "Performance": proxy memory per idle plain session (HAProxy's).
const AIM_KIB_PER_SESSION: f64 = 4.0;
/// Sessions entering or leaving `IDLE` at once.
const IDLE_WINDOW: usize = 1000;

/// Options of the `many` scenario.
#[derive(Debug, Clone, Args)]
pub struct ManyArgs {
    /// Sessions held at once.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(100..=15_000))]
    pub sessions: u32,
    /// Sessions open (in IDLE) at the baseline memory reading.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub baseline: u32,
    /// Users the sessions are spread over (round robin).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub users: u32,
    /// Sessions being opened at once (a sliding window).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
    /// Seconds of the NOOP phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub secs: u64,
    /// NOOPs per second over all sessions (each session sends one every sessions / rate
    /// seconds).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub rate: u32,
    /// Seconds after the last session entered IDLE before the memory reading (the proxy gives
    /// freed memory back once its resident size held still for a second).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub settle_secs: u64,
    /// Dovecot's `service imap { client_limit }`: sessions one imap process serves.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub imap_client_limit: u32,
    /// The proxy's `[pool] park_after`, in milliseconds (0: parking off); default: the
    /// proxy's own (2 s). A quiet session that could park waits on its user's signal, so
    /// parking costs idle sessions no wake-ups; this is to measure with it off.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub park_after_ms: Option<u64>,
    /// Leave out the direct-Dovecot measurement.
    #[arg(long)]
    pub no_direct: bool,
    /// Where the open-file limit cannot be raised enough (its hard limit needs root with
    /// CAP_SYS_RESOURCE), measure as many sessions as fit instead of failing.
    #[arg(long)]
    pub fit_fd_limit: bool,
    /// Seed of the NOOP schedule (the same phases in every run).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The two ways of reaching Dovecot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Proxy,
    Direct,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Proxy => "proxy plain",
            Config::Direct => "direct plain",
        }
    }
}

/// The proxy's memory readings of one run, `VmRSS` in KiB.
#[derive(Debug, Clone, Serialize)]
struct Memory {
    baseline_kib: u64,
    selected_kib: u64,
    idle_kib: u64,
    kib_per_session_selected: f64,
    kib_per_session_idle: f64,
}

/// One configuration in one run.
#[derive(Debug, Clone, Serialize)]
struct Measurement {
    config: &'static str,
    run: u32,
    sessions: u32,
    open_secs: f64,
    open_per_sec: f64,
    idle_enter_secs: f64,
    done_secs: f64,
    memory: Option<Memory>,
    /// The proxy's open files with every session in IDLE.
    proxy_open_files: Option<usize>,
    /// The proxy's CPU while every session sits in IDLE, nothing sent (`--settle-secs`).
    proxy_idle_cpu_pct: Option<f64>,
    noop: Noop,
    /// The proxy's warnings and errors (it runs with `RUST_LOG=warn`), first lines.
    proxy_log: Vec<String>,
    proxy_log_lines: usize,
}

/// Runs the scenario.
pub async fn run(proxy_bin: &Path, runs: u32, args: &ManyArgs) -> Result<(), BenchError> {
    if args.baseline >= args.sessions {
        return Err(BenchError::protocol(
            "arguments",
            "--baseline must be smaller than --sessions",
        ));
    }
    let requested = args.sessions;
    let (nofile, args) = fit_fd_limit(args)?;
    let args = &args;
    let sessions = args.sessions as usize;
    proxy::set_worker_threads(1);
    let threads = proxy::worker_threads().unwrap_or(1);
    let users = args.users as usize;
    let per_user = sessions.div_ceil(users);
    let period = f64::from(args.sessions) / f64::from(args.rate);
    println!(
        "many: {sessions} sessions over {users} users ({per_user} per user), opened {} at a \
         time; IDLE, then NOOP for {} s at {} NOOP/s (one per session every {period:.1} s); \
         proxy threads = {threads}; open-file limit {nofile}; {runs} runs",
        args.batch, args.secs, args.rate
    );

    let dovecot = start_dovecot(args, per_user)?;
    let (cert, key) = dovecot.server_cert_paths();
    let accounts: Vec<(String, String)> = dovecot.users().to_vec();
    let mut measurements = Vec::new();
    for r in 1..=runs {
        let order = if r % 2 == 1 {
            [Config::Proxy, Config::Direct]
        } else {
            [Config::Direct, Config::Proxy]
        };
        for config in order {
            if config == Config::Direct && args.no_direct {
                continue;
            }
            let m = match config {
                Config::Proxy => {
                    let proxy = ProxyProcess::start_with(
                        proxy_bin,
                        dovecot.imap_addr(),
                        &cert,
                        &key,
                        &proxy_toml(args, per_user),
                    )
                    .await?;
                    let m = measure(config, r, Some(&proxy), &dovecot, &accounts, args).await;
                    if m.is_err() {
                        eprintln!("--- proxy output (tail) ---\n{}", tail(&proxy.log(), 30));
                    }
                    m
                }
                Config::Direct => measure(config, r, None, &dovecot, &accounts, args).await,
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("--- Dovecot log (tail) ---\n{}", tail(&dovecot.log(), 30));
                    return Err(e);
                }
            };
            print_measurement(&m);
            measurements.push(m);
            // Let Dovecot's imap processes see the closed sessions go.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let log = DovecotLog::read(&dovecot.log());
    drop(dovecot);
    let setup = Setup {
        requested,
        threads,
        nofile,
    };
    summarise(runs, args, &setup, &measurements, &log)
}

/// What the run was measured with, besides the arguments.
struct Setup {
    /// `--sessions` as asked (more than measured when `--fit-fd-limit` lowered it).
    requested: u32,
    /// The proxy's `[server] threads`.
    threads: u32,
    /// The open-file limit the proxy and Dovecot inherited.
    nofile: u64,
}

/// Dovecot for many sessions with few processes (Dovecot's wiki, "Services" and
/// "LoginProcess", v2.3): `imap` processes of `client_limit` sessions each (allowed because
/// every testkit user runs as the one mail uid), kept running (`service_count = 0`), one
/// per core at least; long-running login processes ("high-performance mode"); the
/// client limits of anvil, log and auth (`default_client_limit`) above every process that
/// may connect to them; no address-space limit on imap (hundreds of sessions each).
fn start_dovecot(args: &ManyArgs, per_user: usize) -> Result<Dovecot, BenchError> {
    let sessions = args.sessions as usize;
    let client_limit = args.imap_client_limit as usize;
    // Twice the sessions: the closed sessions of one configuration may still be going
    // when the next one logs in.
    let imap_procs = (2 * sessions).div_ceil(client_limit) + 10;
    let extra = format!(
        "default_client_limit = {default_clients}\n\
         service imap {{\n  client_limit = {client_limit}\n  service_count = 0\n  \
         process_limit = {imap_procs}\n  process_min_avail = 2\n  vsz_limit = 0\n}}\n\
         service imap-login {{\n  service_count = 0\n  client_limit = {login_clients}\n  \
         process_min_avail = 2\n  process_limit = 4\n  vsz_limit = 1G\n}}\n",
        default_clients = imap_procs + 2000,
        login_clients = 2 * args.batch + 1000,
    );
    let names: Vec<String> = (1..=args.users).map(|i| format!("user{i}")).collect();
    let seed: Seed = names
        .iter()
        .map(|u| (u.clone(), (1..=3).map(|n| small_message(u, n)).collect()))
        .collect();
    Dovecot::builder()
        .users(args.users as usize)
        // All from 127.0.0.1 (the proxy passes the client's address on): the proxied
        // sessions of one configuration and the direct ones of the next may overlap.
        .max_userip_connections(u32::try_from(per_user * 3 + 10).unwrap_or(u32::MAX))
        .seed_messages(seed)
        .extra_config(&extra)
        .start()
        .map_err(BenchError::Dovecot)
}

/// The proxy's settings: every session holds a backend session, so the pool's per-user cap
/// is above sessions per user, no warm connections (only sessions are counted), and no
/// global cap on client connections (its default is 10,000).
fn proxy_toml(args: &ManyArgs, per_user: usize) -> String {
    let park = args
        .park_after_ms
        .map_or_else(String::new, |ms| format!("park_after = \"{ms}ms\"\n"));
    format!(
        "[pool]\nmax_per_user = {}\nwarm = 0\n{park}\n[limits]\nmax_connections = {}\n",
        per_user + 10,
        args.sessions + 1000
    )
}

async fn measure(
    config: Config,
    run: u32,
    proxy: Option<&ProxyProcess>,
    dovecot: &Dovecot,
    accounts: &[(String, String)],
    args: &ManyArgs,
) -> Result<Measurement, BenchError> {
    let addr = proxy.map_or_else(|| dovecot.imap_addr(), |p| p.plain);
    let total = args.sessions as usize;
    let base_n = args.baseline as usize;
    let window = args.batch as usize;
    let dovecot_pid = dovecot.pid();

    // The baseline: a few sessions in IDLE.
    let opened = open(0..base_n, addr, config, accounts, window).await?;
    let mut idle = enter_idle(opened).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline_kib = proxy.map(ProxyProcess::rss_kib).transpose()?;

    let started = Instant::now();
    let rest = open(base_n..total, addr, config, accounts, window).await?;
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let selected_kib = proxy.map(ProxyProcess::rss_kib).transpose()?;

    let started = Instant::now();
    idle.extend(enter_idle(rest).await?);
    let idle_enter_secs = started.elapsed().as_secs_f64();
    // What the proxy spends on sessions that say nothing (timers, housekeeping).
    let quiet_from = Instant::now();
    let quiet_cpu = proxy.and_then(|p| cpu_ns(p.pid()));
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let proxy_idle_cpu_pct = quiet_cpu
        .zip(proxy.and_then(|p| cpu_ns(p.pid())))
        .map(|(b, a)| {
            a.saturating_sub(b) as f64 / 1e9 / quiet_from.elapsed().as_secs_f64() * 100.0
        });
    let idle_kib = proxy.map(ProxyProcess::rss_kib).transpose()?;
    let proxy_open_files = proxy.and_then(|p| open_files(p.pid()));

    let started = Instant::now();
    let conns = leave_idle(idle).await?;
    let done_secs = started.elapsed().as_secs_f64();

    let noop = noop_phase(conns, args, proxy.map(ProxyProcess::pid), dovecot_pid).await?;

    let added = (total - base_n) as f64;
    let memory = match (baseline_kib, selected_kib, idle_kib) {
        (Some(b), Some(s), Some(i)) => Some(Memory {
            baseline_kib: b,
            selected_kib: s,
            idle_kib: i,
            kib_per_session_selected: s.saturating_sub(b) as f64 / added,
            kib_per_session_idle: i.saturating_sub(b) as f64 / added,
        }),
        _ => None,
    };
    let log = proxy.map(ProxyProcess::log).unwrap_or_default();
    let log_lines: Vec<String> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Measurement {
        config: config.name(),
        run,
        sessions: args.sessions,
        open_secs,
        open_per_sec: added / open_secs,
        idle_enter_secs,
        done_secs,
        memory,
        proxy_open_files,
        proxy_idle_cpu_pct,
        noop,
        proxy_log_lines: log_lines.len(),
        proxy_log: log_lines.into_iter().take(5).collect(),
    })
}

/// Runs `f` on every item, at most `window` at a time (a sliding window), each in a task
/// of its own; the results come back in the order they finish. The first error ends it
/// (dropping the set aborts the other tasks).
async fn each<I, O, F, Fut>(items: Vec<I>, window: usize, f: F) -> Result<Vec<O>, BenchError>
where
    O: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: Future<Output = Result<O, BenchError>> + Send + 'static,
{
    let mut out = Vec::with_capacity(items.len());
    let mut set = JoinSet::new();
    let mut items = items.into_iter();
    loop {
        while set.len() < window.max(1) {
            let Some(item) = items.next() else { break };
            set.spawn(f(item));
        }
        match set.join_next().await {
            None => return Ok(out),
            Some(joined) => {
                out.push(joined.map_err(|e| BenchError::protocol("session task", e.to_string()))??);
            }
        }
    }
}

/// Opens sessions `range` (session `i` logs in as account `i % accounts`): connect, plain
/// `LOGIN`, `SELECT INBOX`.
async fn open(
    range: std::ops::Range<usize>,
    addr: SocketAddr,
    config: Config,
    accounts: &[(String, String)],
    window: usize,
) -> Result<Vec<ImapConn>, BenchError> {
    // Plain sessions only; the connector is what ImapConn::connect takes.
    let tls: TlsConnector = insecure_connector()?;
    each(range.collect(), window, |i| {
        let (user, pass) = accounts
            .get(i % accounts.len().max(1))
            .cloned()
            .unwrap_or_default();
        let tls = tls.clone();
        let label = format!("{} session {i} ({user})", config.name());
        async move {
            let mut conn =
                ImapConn::connect(addr, Security::Plain, &tls, &label, SMALL_READ_BUF).await?;
            login_select(&mut conn, &user, &pass).await?;
            Ok(conn)
        }
    })
    .await
}

/// `IDLE` on every session, up to its `+` (RFC 2177); each comes back with its tag.
async fn enter_idle(conns: Vec<ImapConn>) -> Result<Vec<(ImapConn, String)>, BenchError> {
    each(conns, IDLE_WINDOW, |mut conn| async move {
        let tag = bounded("IDLE", COMMAND_TIMEOUT, conn.idle()).await?;
        Ok((conn, tag))
    })
    .await
}

/// `DONE` on every session, up to the tagged `OK` of its `IDLE`.
async fn leave_idle(idle: Vec<(ImapConn, String)>) -> Result<Vec<ImapConn>, BenchError> {
    each(idle, IDLE_WINDOW, |(mut conn, tag)| async move {
        bounded("DONE", COMMAND_TIMEOUT, conn.done(&tag)).await?;
        Ok(conn)
    })
    .await
}
