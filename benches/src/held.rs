//! `burst-held`: many workers of ONE user, each logged in ONCE for the whole run, against
//! a server that caps sessions per user and IP (issue #9: parking).
//!
//! Dovecot runs with `mail_max_userip_connections = --limit` (10). `--clients` (50)
//! workers, all `user1`, each connect (plain) and `LOGIN` once, then loop for `--secs`
//! (10) after a `--warmup-secs` (1) warm-up: `SELECT INBOX`, `FETCH 1:* (FLAGS)` (one
//! *operation*), then `--pause-ms` of quiet before the next one. Any `NO`, `BAD`, `BYE`,
//! EOF or a 30 s timeout, at login or in an operation, is a failure: the worker drops its
//! connection, waits `--retry-ms` and logs in again. Configurations, in rotating order
//! from run to run:
//!
//! | configuration | path |
//! |---|---|
//! | direct, N workers | workers → Dovecot imap port |
//! | proxy, N workers | workers → proxy plain listener → Dovecot, `max_per_user = 8`, `park_after` |
//! | proxy, 8 workers | the same proxy settings, `--baseline-clients` (8) workers |
//!
//! With `max_per_user` below the number of workers, the proxy's only way to serve them all
//! is parking: a session quiet between commands for `park_after` gives its backend session
//! to the first waiting login of its user and is re-homed at its next command. That needs
//! the quiet: with `--pause-ms 0` nothing parks and the workers past the eighth wait in the
//! proxy's queue until `wait_timeout` (10 s) answers `NO [LIMIT]`. `park_after` is set to
//! `--park-after-ms` (50 ms; the default of the proxy is 2 s, longer than the pauses here).
//!
//! Figures per configuration: operations per second in the window, workers that completed
//! at least one operation in it, failures (by reason), operation p50/p99, client logins,
//! Dovecot logins in the window, and for the proxy `imapproxy_parks_total`,
//! `imapproxy_rehomes_total{cause="unpark"}` and re-homing failures. Aims: every worker
//! served, no failure, operations/s at least those of the 8-worker case.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use imapproxy_testkit::{Dovecot, Seed, small_message};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::admin;
use crate::clients::{Window, reason};
use crate::error::BenchError;
use crate::imap::{ImapConn, SMALL_READ_BUF, Security, bounded, insecure_connector};
use crate::proxy::ProxyProcess;
use crate::report::{Series, percentile, print_table, unix_time, write_json};
use crate::webmail::{count_logins, tail};

/// Bound on one login (longer than the proxy's queue `wait_timeout` of 10 s, so that the
/// proxy's own answer is what a worker sees) and on one operation.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The messages in `user1`'s INBOX.
const MESSAGES: u64 = 3;
/// Pause between configurations (Dovecot's processes of the closed sessions exit), and
/// before the proxy's counters are read again after the workers closed their connections.
const SETTLE: Duration = Duration::from_millis(500);
/// The admin token of the proxies this scenario starts (loopback, throwaway).
const ADMIN_TOKEN: &str = "loadbench-burst-held";

/// Options of the `burst-held` scenario.
#[derive(Debug, Clone, Args)]
pub struct HeldArgs {
    /// Concurrent workers, all the same user, each logged in once.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub clients: u32,
    /// Workers of the comparison case (as many as the proxy's `max_per_user`: each has a
    /// backend session of its own).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub baseline_clients: u32,
    /// Measured seconds per configuration and run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub secs: u64,
    /// Uncounted seconds before each measurement (the logins happen in it).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub warmup_secs: u64,
    /// Dovecot's `mail_max_userip_connections`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// The proxy's `[pool] max_per_user`.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_per_user: u32,
    /// Milliseconds a worker stays quiet (logged in) after each operation.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub pause_ms: u64,
    /// The proxy's `[pool] park_after`, in milliseconds (0: parking off).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub park_after_ms: u64,
    /// Milliseconds a worker waits after a failure before it logs in again.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub retry_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Direct,
    Proxy,
    ProxyBaseline,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::Proxy => "proxy",
            Config::ProxyBaseline => "proxy, baseline",
        }
    }

    fn workers(self, args: &HeldArgs) -> u32 {
        match self {
            Config::Direct | Config::Proxy => args.clients,
            Config::ProxyBaseline => args.baseline_clients,
        }
    }

    fn label(self, args: &HeldArgs) -> String {
        format!("{} {}w", self.name(), self.workers(args))
    }
}

/// One configuration in one run.
#[derive(Debug, Clone, Serialize)]
struct Measurement {
    config: String,
    run: u32,
    workers: u32,
    window_secs: f64,
    ops: u64,
    ops_per_sec: f64,
    /// Workers with at least one operation that ended inside the window.
    workers_served: u32,
    /// Workers with at least one operation at all (warm-up included).
    workers_served_any: u32,
    failed: u64,
    failed_outside_window: u64,
    failure_reasons: BTreeMap<String, u64>,
    /// Failures in the warm-up (or ending after the window), by reason.
    failure_reasons_outside: BTreeMap<String, u64>,
    op_p50_ms: f64,
    op_p99_ms: f64,
    /// Successful client logins (1 per worker when nothing fails).
    client_logins: u64,
    dovecot_logins_in_window: u64,
    /// Re-homing and parking counters of the proxy at the end of the window.
    proxy_metrics: BTreeMap<String, f64>,
    /// The same counters 0.5 s after the workers closed their connections (a parked
    /// session whose client closes is re-homed first, see benches/README.md).
    proxy_metrics_after_close: BTreeMap<String, f64>,
    /// Per worker: [logins, operations at all, operations in the window, failures].
    per_worker: Vec<[u64; 4]>,
}

/// What one worker did.
#[derive(Debug, Default)]
struct WorkerTally {
    ok: Vec<f64>,
    ops_any: u64,
    failed: u64,
    failed_outside: u64,
    reasons: BTreeMap<String, u64>,
    reasons_outside: BTreeMap<String, u64>,
    logins: u64,
}

impl WorkerTally {
    fn fail(&mut self, window: &Window, e: &BenchError) {
        let now = Instant::now();
        if now >= window.from && now <= window.until {
            self.failed += 1;
            *self.reasons.entry(reason(e)).or_default() += 1;
        } else {
            self.failed_outside += 1;
            *self.reasons_outside.entry(reason(e)).or_default() += 1;
        }
    }
}

/// Runs the scenario.
pub async fn run(proxy_bin: &Path, runs: u32, args: &HeldArgs) -> Result<(), BenchError> {
    println!(
        "burst-held: {} workers of one user, each logged in once, looping SELECT INBOX + \
         FETCH 1:* (FLAGS) + {} ms pause; Dovecot mail_max_userip_connections = {}, proxy \
         max_per_user = {}, park_after = {} ms; baseline {} workers through the proxy; {} s \
         measured after {} s warm-up per configuration, {runs} runs",
        args.clients,
        args.pause_ms,
        args.limit,
        args.max_per_user,
        args.park_after_ms,
        args.baseline_clients,
        args.secs,
        args.warmup_secs
    );
    let seed: Seed = vec![(
        "user1".to_owned(),
        (1..=MESSAGES as usize)
            .map(|n| small_message("user1", n))
            .collect(),
    )];
    // Process and client limits well above the workers, so that the per-user-and-IP cap
    // is the only limit the direct workers run into.
    let extra = "default_client_limit = 4000\n\
                 default_process_limit = 1000\n\
                 service imap {\n  process_limit = 2000\n}\n";
    let dovecot = Dovecot::builder()
        .users(1)
        .max_userip_connections(args.limit)
        .seed_messages(seed)
        .extra_config(extra)
        .start()
        .map_err(BenchError::Dovecot)?;
    let (cert, key) = dovecot.server_cert_paths();
    let dovecot = Arc::new(dovecot);
    let account = Arc::new(dovecot.user(1));
    let tls = insecure_connector()?;
    let pool = pool_section(args);

    let configs = [Config::Direct, Config::Proxy, Config::ProxyBaseline];
    let mut ops: Vec<Series> = configs
        .iter()
        .map(|c| Series::new(&format!("{}, operations", c.label(args)), "ops/s"))
        .collect();
    let mut served: Vec<Series> = configs
        .iter()
        .map(|c| Series::new(&format!("{}, workers served", c.label(args)), "workers"))
        .collect();
    let mut failed: Vec<Series> = configs
        .iter()
        .map(|c| Series::new(&format!("{}, failures", c.label(args)), "failures"))
        .collect();
    let mut p50: Vec<Series> = configs
        .iter()
        .map(|c| Series::new(&format!("{}, operation p50", c.label(args)), "ms"))
        .collect();
    let mut parks = Series::new(&format!("{}, parks", Config::Proxy.label(args)), "parks");
    let mut measurements = Vec::new();
    for r in 1..=runs {
        // Rotating order, so that no configuration always follows the same one.
        let mut order = configs;
        order.rotate_left((r as usize - 1) % configs.len());
        for config in order {
            let workers = config.workers(args);
            let m = match config {
                Config::Direct => {
                    measure(
                        config,
                        dovecot.imap_addr(),
                        None,
                        &dovecot,
                        &account,
                        &tls,
                        args,
                        r,
                    )
                    .await?
                }
                Config::Proxy | Config::ProxyBaseline => {
                    let proxy = ProxyProcess::start_multi(
                        proxy_bin,
                        &[("bench", dovecot.imap_addr())],
                        &cert,
                        &key,
                        &pool,
                        Some(ADMIN_TOKEN),
                    )
                    .await?;
                    let res = measure(
                        config,
                        proxy.plain,
                        Some(&proxy),
                        &dovecot,
                        &account,
                        &tls,
                        args,
                        r,
                    )
                    .await;
                    let log = proxy.log();
                    drop(proxy);
                    let m = res?;
                    // RUST_LOG=warn: anything logged is worth a look.
                    if !log.trim().is_empty() {
                        eprintln!("--- proxy output (tail) ---\n{}", tail(&log, 10));
                    }
                    m
                }
            };
            eprintln!(
                "  run {r}: {:<18} {:8.1} ops/s, {:3}/{workers} workers served ({} at all), \
                 {:5} failed, op p50 {:7.2} ms p99 {:8.2} ms, client logins {}, Dovecot \
                 logins {}",
                m.config,
                m.ops_per_sec,
                m.workers_served,
                m.workers_served_any,
                m.failed,
                m.op_p50_ms,
                m.op_p99_ms,
                m.client_logins,
                m.dovecot_logins_in_window,
            );
            for (reason, n) in &m.failure_reasons {
                eprintln!("      {n} x {reason}");
            }
            if m.failed_outside_window > 0 {
                eprintln!(
                    "      {} more failed outside the measured window:",
                    m.failed_outside_window
                );
                for (reason, n) in &m.failure_reasons_outside {
                    eprintln!("        {n} x {reason}");
                }
            }
            if !m.proxy_metrics.is_empty() {
                let shown: Vec<String> = m
                    .proxy_metrics
                    .iter()
                    .filter(|(k, _)| !k.contains("quantile") && !k.contains("_bucket"))
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                eprintln!("      proxy: {}", shown.join(", "));
                let changed: Vec<String> = m
                    .proxy_metrics_after_close
                    .iter()
                    .filter(|(k, v)| !k.contains("quantile") && m.proxy_metrics.get(*k) != Some(*v))
                    .map(|(k, v)| {
                        format!(
                            "{k} +{}",
                            v - m.proxy_metrics.get(k).copied().unwrap_or(0.0)
                        )
                    })
                    .collect();
                if !changed.is_empty() {
                    eprintln!("      proxy, as the clients closed: {}", changed.join(", "));
                }
            }
            let i = configs.iter().position(|c| *c == config).unwrap_or(0);
            for (series, x) in [
                (&mut ops, m.ops_per_sec),
                (&mut served, f64::from(m.workers_served)),
                (&mut failed, m.failed as f64),
                (&mut p50, m.op_p50_ms),
            ] {
                if let Some(s) = series.get_mut(i) {
                    s.push(x);
                }
            }
            if config == Config::Proxy {
                parks.push(admin::total(&m.proxy_metrics, "imapproxy_parks_total"));
            }
            measurements.push(m);
            // Let Dovecot's imap processes of the last sessions exit, so that the next
            // configuration starts under the cap.
            tokio::time::sleep(SETTLE).await;
        }
    }
    drop(dovecot);

    let rows: Vec<Series> = ops
        .into_iter()
        .chain(served)
        .chain(failed)
        .chain(p50)
        .chain(std::iter::once(parks))
        .collect();
    print_table(
        &format!(
            "burst-held: {} workers of one user logged in once, SELECT + FETCH, {} ms pause, \
             Dovecot limit {} per user+IP, proxy max_per_user {} park_after {} ms, {} s per \
             configuration and run",
            args.clients,
            args.pause_ms,
            args.limit,
            args.max_per_user,
            args.park_after_ms,
            args.secs
        ),
        &rows,
        1,
    );
    let med = |i: usize| rows.get(i).map_or(f64::NAN, |s| s.median);
    let (direct_ops, proxy_ops, base_ops) = (med(0), med(1), med(2));
    let (direct_served, proxy_served) = (med(3), med(4));
    let proxy_failed_runs: Vec<f64> = rows.get(7).map_or(Vec::new(), |s| s.runs.clone());
    let proxy_outside: u64 = measurements
        .iter()
        .filter(|m| m.config == Config::Proxy.label(args))
        .map(|m| m.failed_outside_window)
        .sum();
    let ratio_base = proxy_ops / base_ops;
    let ratio_direct = proxy_ops / direct_ops;
    let all_served = rows
        .get(4)
        .is_some_and(|s| s.runs.iter().all(|&w| w >= f64::from(args.clients)));
    let no_failures = proxy_failed_runs.iter().all(|&f| f == 0.0) && proxy_outside == 0;
    println!();
    println!(
        "proxy {n}w: {proxy_served:.0}/{n} workers served (median; direct {direct_served:.0}/{n})  \
         (aim: {n} in every run)  {}",
        verdict(all_served),
        n = args.clients
    );
    println!(
        "proxy {}w: failures per run {:?}, {proxy_outside} outside the windows  (aim: 0)  {}",
        args.clients,
        proxy_failed_runs,
        verdict(no_failures)
    );
    println!(
        "ratio operations/s proxy {}w / proxy {}w = {ratio_base:.2}  (aim >= 1.00)  {}",
        args.clients,
        args.baseline_clients,
        verdict(ratio_base >= 1.0)
    );
    println!(
        "ratio operations/s proxy {}w / direct {}w = {ratio_direct:.2}",
        args.clients, args.clients
    );

    let summary = json!({
        "scenario": "burst-held",
        "unix_time": unix_time(),
        "runs": runs,
        "clients": args.clients,
        "baseline_clients": args.baseline_clients,
        "user": "user1",
        "dovecot_mail_max_userip_connections": args.limit,
        "measured_secs": args.secs,
        "warmup_secs": args.warmup_secs,
        "operation": ["SELECT INBOX", "FETCH 1:* (FLAGS)"],
        "login": "once per worker (again after a failure)",
        "pause_ms": args.pause_ms,
        "retry_ms": args.retry_ms,
        "proxy_pool": pool,
        "series": rows,
        "measurements": measurements,
        "ratios": {
            "ops_per_sec_proxy/proxy_baseline": ratio_base,
            "ops_per_sec_proxy/direct": ratio_direct,
        },
        "aims": {
            "proxy_workers_served": args.clients,
            "proxy_failed": 0,
            "ops_per_sec_proxy/proxy_baseline": 1.0,
        },
    });
    let path = write_json(&format!("burst-held-pause{}ms", args.pause_ms), &summary)?;
    println!("summary written to {}", path.display());
    Ok(())
}

/// The `[pool]` section of the proxies: as `burst` and `webmail` have it, plus `park_after`.
fn pool_section(args: &HeldArgs) -> String {
    format!(
        "[pool]\nreuse = true\nwarm = 2\nidle_timeout = \"60s\"\nmax_per_user = {}\n\
         wait_timeout = \"10s\"\npark_after = \"{}ms\"\n",
        args.max_per_user, args.park_after_ms
    )
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    config: Config,
    addr: SocketAddr,
    proxy: Option<&ProxyProcess>,
    dovecot: &Arc<Dovecot>,
    account: &Arc<(String, String)>,
    tls: &TlsConnector,
    args: &HeldArgs,
    run: u32,
) -> Result<Measurement, BenchError> {
    let window = Window::new(
        Duration::from_secs(args.warmup_secs),
        Duration::from_secs(args.secs),
    );
    let workers = config.workers(args);
    let pause = Duration::from_millis(args.pause_ms);
    let retry = Duration::from_millis(args.retry_ms);
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let account = Arc::clone(account);
        let tls = tls.clone();
        let label = config.name();
        set.spawn(async move {
            worker(
                addr, &tls, label, &account.0, &account.1, window, pause, retry,
            )
            .await
        });
    }
    tokio::time::sleep_until(window.from.into()).await;
    let before = count_logins(dovecot).await?;
    tokio::time::sleep_until(window.until.into()).await;
    let after = count_logins(dovecot).await?;
    // Read while the workers are still connected (they stop at the window's end).
    let proxy_metrics = match proxy {
        Some(p) => admin::metrics(p, admin::REHOME_METRICS).await?,
        None => BTreeMap::new(),
    };
    let mut all = WorkerTally::default();
    let (mut served, mut served_any) = (0u32, 0u32);
    let mut per_worker = Vec::with_capacity(workers as usize);
    while let Some(joined) = set.join_next().await {
        let t = joined.map_err(|e| BenchError::protocol("worker task", e.to_string()))?;
        per_worker.push([
            t.logins,
            t.ops_any,
            t.ok.len() as u64,
            t.failed + t.failed_outside,
        ]);
        served += u32::from(!t.ok.is_empty());
        served_any += u32::from(t.ops_any > 0);
        all.ok.extend(t.ok);
        all.failed += t.failed;
        all.failed_outside += t.failed_outside;
        all.logins += t.logins;
        for (k, v) in t.reasons {
            *all.reasons.entry(k).or_default() += v;
        }
        for (k, v) in t.reasons_outside {
            *all.reasons_outside.entry(k).or_default() += v;
        }
    }
    // What closing the clients cost the proxy (parked sessions among them).
    let proxy_metrics_after_close = match proxy {
        Some(p) => {
            tokio::time::sleep(SETTLE).await;
            admin::metrics(p, admin::REHOME_METRICS).await?
        }
        None => BTreeMap::new(),
    };
    let secs = window.secs();
    let ops = all.ok.len() as u64;
    Ok(Measurement {
        config: config.label(args),
        run,
        workers,
        window_secs: secs,
        ops,
        ops_per_sec: ops as f64 / secs,
        workers_served: served,
        workers_served_any: served_any,
        failed: all.failed,
        failed_outside_window: all.failed_outside,
        failure_reasons: all.reasons,
        failure_reasons_outside: all.reasons_outside,
        op_p50_ms: percentile(&mut all.ok, 50.0),
        op_p99_ms: percentile(&mut all.ok, 99.0),
        client_logins: all.logins,
        dovecot_logins_in_window: after.saturating_sub(before),
        proxy_metrics,
        proxy_metrics_after_close,
        per_worker,
    })
}

/// One worker: logs in once, then operations with pauses until the window ends; after a
/// failure it waits `retry` and logs in again. Connections are dropped at the end without
/// `LOGOUT` (the next configuration starts from a clean slate anyway).
#[allow(clippy::too_many_arguments)]
async fn worker(
    addr: SocketAddr,
    tls: &TlsConnector,
    label: &str,
    user: &str,
    pass: &str,
    window: Window,
    pause: Duration,
    retry: Duration,
) -> WorkerTally {
    let mut t = WorkerTally::default();
    let mut conn: Option<ImapConn> = None;
    while Instant::now() < window.until {
        if conn.is_none() {
            match bounded("login", STEP_TIMEOUT, login(addr, tls, label, user, pass)).await {
                Ok(c) => {
                    t.logins += 1;
                    conn = Some(c);
                }
                Err(e) => {
                    t.fail(&window, &e);
                    tokio::time::sleep(retry).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let start = Instant::now();
        match bounded("operation", STEP_TIMEOUT, operation(c, label)).await {
            Ok(()) => {
                let end = Instant::now();
                t.ops_any += 1;
                if end >= window.from && end <= window.until {
                    t.ok.push(end.duration_since(start).as_secs_f64() * 1e3);
                }
            }
            Err(e) => {
                t.fail(&window, &e);
                conn = None;
                tokio::time::sleep(retry).await;
                continue;
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    t
}

async fn login(
    addr: SocketAddr,
    tls: &TlsConnector,
    label: &str,
    user: &str,
    pass: &str,
) -> Result<ImapConn, BenchError> {
    let mut conn = ImapConn::connect(addr, Security::Plain, tls, label, SMALL_READ_BUF).await?;
    conn.command(&format!("LOGIN {user} {pass}")).await?;
    Ok(conn)
}

/// `SELECT INBOX` and `FETCH 1:* (FLAGS)`, which must return every message.
async fn operation(conn: &mut ImapConn, label: &str) -> Result<(), BenchError> {
    conn.command("SELECT INBOX").await?;
    let fetch = conn.command("FETCH 1:* (FLAGS)").await?;
    if fetch.fetches != MESSAGES {
        return Err(BenchError::protocol(
            format!("{label}: FETCH 1:* (FLAGS)"),
            format!("{} FETCH responses, expected {MESSAGES}", fetch.fetches),
        ));
    }
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "[meets aim]" } else { "[BELOW AIM]" }
}
