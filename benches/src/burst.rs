//! `burst`: many workers of ONE user against a server that caps sessions per user and IP
//! (DESIGN.md "Performance", last row; issue #3).
//!
//! Dovecot runs with `mail_max_userip_connections = --limit` (10). `--clients` (50)
//! closed-loop workers, all logging in as `user1`, loop for `--secs` (10) after a
//! `--warmup-secs` (1) warm-up: connect (plain), `LOGIN`, `SELECT INBOX`,
//! `FETCH 1 (FLAGS)`, `LOGOUT`. A loop that meets any `NO`, `BAD`, `BYE`, EOF or a
//! timeout is a failure (Dovecot's answer over the cap is `Maximum number of connections
//! from user+IP exceeded`); failed workers go straight into their next loop, as a worker
//! with an immediate retry would. Configurations, in alternating order from run to run:
//!
//! | configuration | path |
//! |---|---|
//! | direct plain | workers → Dovecot imap port |
//! | proxy plain | workers → proxy `tls = "none"` listener → Dovecot plain, `max_per_user = 8` |
//!
//! Figures: completed loops per second and failed loops in the measured window; aim:
//! zero failures through the proxy (its per-user cap stays below Dovecot's and queues
//! the rest). `--hold-ms N` keeps each worker logged in for N ms before `LOGOUT`: with
//! 0 (the loop as specified) Dovecot's login rate, not the cap, limits how many of the
//! user's sessions overlap, and direct workers rarely fail on a small machine.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use imapproxy_testkit::{Dovecot, Seed, small_message};
use serde::Serialize;
use serde_json::json;
use tokio_rustls::TlsConnector;

use crate::clients::{self, Window};
use crate::error::BenchError;
use crate::imap::{ImapConn, SMALL_READ_BUF, Security, insecure_connector};
use crate::proxy::ProxyProcess;
use crate::report::{Series, percentile, print_table, unix_time, write_json};
use crate::webmail::{count_logins, pool_section, tail};

/// Bound on one loop. Longer than the proxy's queue `wait_timeout` (10 s), so that the
/// proxy's own answer is what a worker sees.
pub(crate) const LOOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The messages in `user1`'s INBOX.
const MESSAGES: usize = 3;

/// Options of the `burst` scenario.
#[derive(Debug, Clone, Args)]
pub struct BurstArgs {
    /// Concurrent workers, all the same user.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub clients: u32,
    /// Measured seconds per configuration and run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub secs: u64,
    /// Uncounted seconds before each measurement.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub warmup_secs: u64,
    /// Dovecot's `mail_max_userip_connections`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// The proxy's `[pool] max_per_user`.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_per_user: u32,
    /// Milliseconds a worker stays logged in after its FETCH before LOGOUT (its work on
    /// the message). With 0, Dovecot's login rate alone decides how many sessions of the
    /// user overlap, and on a 2-core machine that stays far below the cap.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub hold_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Direct,
    Proxy,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct plain",
            Config::Proxy => "proxy plain",
        }
    }
}

/// One configuration in one run.
#[derive(Debug, Clone, Serialize)]
struct Measurement {
    config: &'static str,
    run: u32,
    window_secs: f64,
    completed: u64,
    completed_per_sec: f64,
    failed: u64,
    failed_per_sec: f64,
    loop_p50_ms: f64,
    loop_p99_ms: f64,
    dovecot_logins: u64,
    failed_outside_window: u64,
    failure_reasons: BTreeMap<String, u64>,
}

/// Runs the scenario.
pub async fn run(proxy_bin: &Path, runs: u32, args: &BurstArgs) -> Result<(), BenchError> {
    println!(
        "burst: {} workers of one user, each looping connect + LOGIN + SELECT INBOX + \
         FETCH 1 (FLAGS) + {}LOGOUT; Dovecot mail_max_userip_connections = {}, proxy \
         max_per_user = {}; {} s measured after {} s warm-up per configuration, {runs} runs",
        args.clients,
        hold_text(args.hold_ms),
        args.limit,
        args.max_per_user,
        args.secs,
        args.warmup_secs
    );
    let seed: Seed = vec![(
        "user1".to_owned(),
        (1..=MESSAGES).map(|n| small_message("user1", n)).collect(),
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
    let pool = pool_section(args.max_per_user);

    let new_series = |c: Config| {
        (
            Series::new(&format!("{}, completed", c.name()), "loops/s"),
            Series::new(&format!("{}, failed", c.name()), "loops"),
            Series::new(&format!("{}, loop p50", c.name()), "ms"),
        )
    };
    let mut direct = new_series(Config::Direct);
    let mut proxied = new_series(Config::Proxy);
    let mut measurements = Vec::new();
    for r in 1..=runs {
        let order = if r % 2 == 1 {
            [Config::Direct, Config::Proxy]
        } else {
            [Config::Proxy, Config::Direct]
        };
        for config in order {
            let m = match config {
                Config::Direct => {
                    measure(
                        config,
                        dovecot.imap_addr(),
                        &dovecot,
                        &account,
                        &tls,
                        args,
                        r,
                    )
                    .await?
                }
                Config::Proxy => {
                    let proxy = ProxyProcess::start_with(
                        proxy_bin,
                        dovecot.imap_addr(),
                        &cert,
                        &key,
                        &pool,
                    )
                    .await?;
                    let res = measure(config, proxy.plain, &dovecot, &account, &tls, args, r).await;
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
                "  run {r}: {:<12} {:8.1} loops/s, {:6} failed ({:7.1}/s), loop p50 {:6.2} ms \
                 p99 {:7.2} ms, Dovecot logins {}",
                m.config,
                m.completed_per_sec,
                m.failed,
                m.failed_per_sec,
                m.loop_p50_ms,
                m.loop_p99_ms,
                m.dovecot_logins,
            );
            for (reason, n) in &m.failure_reasons {
                eprintln!("      {n} x {reason}");
            }
            if m.failed_outside_window > 0 {
                eprintln!(
                    "      {} more failed outside the measured window",
                    m.failed_outside_window
                );
            }
            let s = match config {
                Config::Direct => &mut direct,
                Config::Proxy => &mut proxied,
            };
            s.0.push(m.completed_per_sec);
            s.1.push(m.failed as f64);
            s.2.push(m.loop_p50_ms);
            measurements.push(m);
            // Let Dovecot's imap processes of the last sessions exit, so that the next
            // configuration starts under the cap.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    drop(dovecot);

    let rows = vec![
        direct.0, proxied.0, direct.1, proxied.1, direct.2, proxied.2,
    ];
    print_table(
        &format!(
            "burst: {} workers of one user, {}Dovecot limit {} per user+IP, {} s per \
             configuration and run",
            args.clients,
            hold_text(args.hold_ms),
            args.limit,
            args.secs
        ),
        &rows,
        1,
    );
    let med = |i: usize| rows.get(i).map_or(f64::NAN, |s| s.median);
    let ratio = med(1) / med(0);
    let proxy_failures: f64 = rows.get(3).map_or(0.0, |s| s.runs.iter().sum());
    let proxy_outside: u64 = measurements
        .iter()
        .filter(|m| m.config == Config::Proxy.name())
        .map(|m| m.failed_outside_window)
        .sum();
    let direct_fail_share = {
        let (c, f) = measurements
            .iter()
            .filter(|m| m.config == Config::Direct.name())
            .fold((0u64, 0u64), |(c, f), m| (c + m.completed, f + m.failed));
        f as f64 / (c + f).max(1) as f64
    };
    println!();
    println!("ratio completed loops/s proxy / direct = {ratio:.2}");
    println!(
        "direct: {:.1}% of loops failed  (peers: most fail, for every proxy measured)",
        direct_fail_share * 100.0
    );
    println!(
        "proxy: {proxy_failures} failed loops in the measured windows, {proxy_outside} \
         outside them  (aim: 0)  {}",
        if proxy_failures == 0.0 && proxy_outside == 0 {
            "[meets aim]"
        } else {
            "[BELOW AIM]"
        }
    );

    let summary = json!({
        "scenario": "burst",
        "unix_time": unix_time(),
        "runs": runs,
        "clients": args.clients,
        "user": "user1",
        "dovecot_mail_max_userip_connections": args.limit,
        "measured_secs": args.secs,
        "warmup_secs": args.warmup_secs,
        "loop": ["connect plain", "LOGIN", "SELECT INBOX", "FETCH 1 (FLAGS)", "LOGOUT"],
        "hold_ms_before_logout": args.hold_ms,
        "proxy_pool": pool,
        "series": rows,
        "measurements": measurements,
        "ratios": {
            "completed_per_sec_proxy/direct": ratio,
            "direct_failed_share": direct_fail_share,
        },
        "aims": { "proxy_failed": 0 },
    });
    // A variant with workers that hold their session must not overwrite the plain one.
    let file = if args.hold_ms == 0 {
        "burst".to_owned()
    } else {
        format!("burst-hold{}ms", args.hold_ms)
    };
    let path = write_json(&file, &summary)?;
    println!("summary written to {}", path.display());
    Ok(())
}

async fn measure(
    config: Config,
    addr: SocketAddr,
    dovecot: &Arc<Dovecot>,
    account: &Arc<(String, String)>,
    tls: &TlsConnector,
    args: &BurstArgs,
    run: u32,
) -> Result<Measurement, BenchError> {
    let window = Window::new(
        Duration::from_secs(args.warmup_secs),
        Duration::from_secs(args.secs),
    );
    let name = config.name();
    let account = Arc::clone(account);
    let tls = tls.clone();
    let hold = Duration::from_millis(args.hold_ms);
    let set = clients::spawn(args.clients as usize, window, LOOP_TIMEOUT, move |_, _| {
        let account = Arc::clone(&account);
        let tls = tls.clone();
        async move { one_loop(addr, &tls, name, &account.0, &account.1, hold).await }
    });
    tokio::time::sleep_until(window.from.into()).await;
    let before = count_logins(dovecot).await?;
    tokio::time::sleep_until(window.until.into()).await;
    let after = count_logins(dovecot).await?;
    let tally = clients::collect(set).await?;
    let completed = tally.ok.len() as u64;
    let mut loops = tally.ok;
    let secs = window.secs();
    Ok(Measurement {
        config: name,
        run,
        window_secs: secs,
        completed,
        completed_per_sec: completed as f64 / secs,
        failed: tally.failed,
        failed_per_sec: tally.failed as f64 / secs,
        loop_p50_ms: percentile(&mut loops, 50.0),
        loop_p99_ms: percentile(&mut loops, 99.0),
        dovecot_logins: after.saturating_sub(before),
        failed_outside_window: tally.failed_outside,
        failure_reasons: tally.reasons,
    })
}

/// One worker loop; returns its duration in ms.
pub(crate) async fn one_loop(
    addr: SocketAddr,
    tls: &TlsConnector,
    label: &str,
    user: &str,
    pass: &str,
    hold: Duration,
) -> Result<f64, BenchError> {
    let start = Instant::now();
    let mut conn = ImapConn::connect(addr, Security::Plain, tls, label, SMALL_READ_BUF).await?;
    conn.command(&format!("LOGIN {user} {pass}")).await?;
    conn.command("SELECT INBOX").await?;
    let fetch = conn.command("FETCH 1 (FLAGS)").await?;
    if fetch.fetches != 1 {
        return Err(BenchError::protocol(
            format!("{label}: FETCH 1 (FLAGS)"),
            format!("{} FETCH responses, expected 1", fetch.fetches),
        ));
    }
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    conn.logout().await?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn hold_text(hold_ms: u64) -> String {
    if hold_ms == 0 {
        String::new()
    } else {
        format!("{hold_ms} ms logged in + ")
    }
}
