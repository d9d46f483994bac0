//! `failover`: logged-in sessions through the proxy while their backend is killed
//! (`kill -9`) or drained with migration (issue #9: re-homing).
//!
//! Two Dovecots (`mail1`, `mail2`) serve one mail store (`shared_mail_dir`), so UIDs and
//! UIDVALIDITY are the same on both. `--users` (20) users with five small messages each;
//! a static map routes the first `--users-on-mail1` (15) to `mail1` and the rest to
//! `mail2`. Before any proxy session, every user's INBOX is selected once directly, so that
//! no proxied session is the one that holds the `\Recent` flags (RFC 3501 §2.3.2: they
//! belong to one server connection, and a moved session is a new one).
//!
//! Per run, first a yardstick: the sessions of `mail1`'s users log in again directly at
//! `mail2`, all at once (what clients would have to do without re-homing). Then per event
//! (first the drain, then the kill, each with a fresh proxy):
//! `--sessions` (200) clients, user `i mod users`, log in (plain), `SELECT INBOX` and
//! fetch a baseline (`FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS
//! (SUBJECT MESSAGE-ID)])`); half of each user's sessions then enter `IDLE`, the others
//! stay quiet between commands. Then the event, at t0:
//!
//! - `drain`: `POST /backends/mail1/drain?migrate=true` on the admin endpoint;
//! - `kill`: SIGKILL to `mail1`'s whole process group (master and every imap process).
//!
//! Right after it every client sends `DONE` (IDLE ones; then `NOOP`) or `NOOP`, then the
//! baseline `FETCH` again. A session *survived* when it stayed connected, its first command
//! after the event was answered `OK` and the `FETCH` returned exactly the baseline. Its
//! *pause* is the time from t0 to that first `OK`; its *slowest answer* the longest wait
//! for any of its answers (in a drain the old backend may answer the first command before
//! the session moves). Figures: the share of the sessions that
//! were on `mail1` that survived, their pause p50/p99/max, where the proxy's `/sessions`
//! says the sessions are afterwards, every other outcome by reason, and the proxy's
//! `imapproxy_rehomes_total` / `imapproxy_rehome_failures_total` /
//! `imapproxy_rehome_pause_seconds` over the event.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use imapproxy_testkit::{Dovecot, Seed, shared_mail_dir, small_message};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::admin;
use crate::clients::reason;
use crate::error::BenchError;
use crate::imap::{
    COMMAND_TIMEOUT, ImapConn, SMALL_READ_BUF, Security, bounded, insecure_connector,
};
use crate::proxy::ProxyProcess;
use crate::report::{Series, percentile, print_table, unix_time, write_json};
use crate::webmail::tail;

/// Messages in every INBOX.
const MESSAGES: u64 = 5;
/// What every client compares before and after the event.
const FETCH: &str =
    "FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID)])";
/// The admin token of the proxies this scenario starts (loopback, throwaway).
const ADMIN_TOKEN: &str = "loadbench-failover";
/// Dovecot's process and client limits, well above the sessions of both events.
const DOVECOT_LIMITS: &str = "default_client_limit = 4000\n\
                              default_process_limit = 1000\n\
                              service imap {\n  process_limit = 2000\n}\n";

/// Which events to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The drain, then the kill, in every run.
    Both,
    /// `kill -9` of mail1 only.
    Kill,
    /// `POST /backends/mail1/drain?migrate=true` only.
    Drain,
}

/// Options of the `failover` scenario.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Logged-in sessions through the proxy (half in IDLE).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(2..=2000))]
    pub sessions: u32,
    /// Users the sessions are spread over (round robin).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub users: u32,
    /// Users routed to mail1, the backend that is killed or drained (the rest go to mail2).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub users_on_mail1: u32,
    /// Which events to measure.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    pub mode: Mode,
    /// Logins at once while the sessions are opened.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub batch: u32,
    /// Quiet milliseconds between the last session set up and the event.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub settle_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Drain,
    Kill,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Drain => "drain",
            Event::Kill => "kill",
        }
    }
}

/// Two Dovecots over one mail store.
struct Pair {
    mail1: Dovecot,
    mail2: Dovecot,
    _store: tempfile::TempDir,
}

/// One client session through the proxy.
struct Client {
    conn: ImapConn,
    /// Routed to mail1 (the one that is killed or drained).
    on_mail1: bool,
    /// The tag of its `IDLE`, when in it.
    idle_tag: Option<String>,
    baseline: Vec<String>,
}

/// How one session came through the event.
#[derive(Debug)]
struct ClientResult {
    on_mail1: bool,
    idle: bool,
    /// t0 to the first `OK`, when there was one.
    pause: Option<Duration>,
    /// The longest wait for an answer after the event: the first one from t0, the later
    /// ones from sending the command (a drained session may answer its first command on
    /// the old backend and move afterwards).
    slowest: Option<Duration>,
    /// `"survived"`, `"wrong data"` or the failure's class.
    outcome: String,
    /// The failure's text (or the wrong data), for the reasons table.
    detail: Option<String>,
}

impl ClientResult {
    fn survived(&self) -> bool {
        self.outcome == "survived"
    }
}

/// One event in one run.
#[derive(Debug, Clone, Serialize)]
struct Measurement {
    event: &'static str,
    run: u32,
    sessions: u32,
    on_mail1_before: u64,
    /// What the proxy's `/sessions` listed per backend before and after.
    sessions_before: BTreeMap<String, u64>,
    sessions_after: BTreeMap<String, u64>,
    survived_of_mail1: u64,
    survived_of_mail1_pct: f64,
    survived_all: u64,
    survived_all_pct: f64,
    idle_survived_of_mail1: u64,
    quiet_survived_of_mail1: u64,
    wrong_data: u64,
    pause_p50_ms: f64,
    pause_p99_ms: f64,
    pause_max_ms: f64,
    pause_mean_ms: f64,
    /// p50 and p99 of each moved survivor's longest wait for an answer after the event.
    slowest_p50_ms: f64,
    slowest_p99_ms: f64,
    /// `imapproxy_rehome_pause_seconds` sum / count over the event, in ms: the proxy's own
    /// view (from the start of each move to its end).
    proxy_rehome_pause_mean_ms: f64,
    /// Pause of the sessions on mail2 (nothing to move): the cost of the proxy being busy.
    unmoved_pause_p50_ms: f64,
    /// The yardstick of the run: as many sessions as were on mail1 connecting, logging in,
    /// selecting and fetching directly at mail2 at once (what clients would do without
    /// re-homing, minus noticing the loss): p50 and p99 of their completion from the start.
    direct_reconnect_p50_ms: f64,
    direct_reconnect_p99_ms: f64,
    /// How long the kill (signal and reaping the master) or the admin request took.
    event_ms: f64,
    /// `migrating` of the drain's answer.
    drain_migrating: Option<u64>,
    outcomes: BTreeMap<String, u64>,
    failure_reasons: BTreeMap<String, u64>,
    /// Re-homing counters over the event (after minus before).
    proxy_metrics: BTreeMap<String, f64>,
}

/// Runs the scenario.
pub async fn run(proxy_bin: &Path, runs: u32, args: &FailoverArgs) -> Result<(), BenchError> {
    if args.users_on_mail1 > args.users {
        return Err(BenchError::protocol(
            "failover options",
            "--users-on-mail1 must not exceed --users",
        ));
    }
    let events: &[Event] = match args.mode {
        Mode::Both => &[Event::Drain, Event::Kill],
        Mode::Kill => &[Event::Kill],
        Mode::Drain => &[Event::Drain],
    };
    println!(
        "failover: {} sessions over {} users ({} routed to mail1), half in IDLE, half quiet \
         with INBOX selected; two Dovecots over one mail store; events per run: {}; {runs} runs",
        args.sessions,
        args.users,
        args.users_on_mail1,
        events
            .iter()
            .map(|e| e.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let tls = insecure_connector()?;
    let mut series: BTreeMap<&'static str, [Series; 5]> = BTreeMap::new();
    for e in events {
        series.insert(
            e.name(),
            [
                Series::new(&format!("{}: survived (of mail1)", e.name()), "%"),
                Series::new(&format!("{}: pause p50", e.name()), "ms"),
                Series::new(&format!("{}: pause p99", e.name()), "ms"),
                Series::new(&format!("{}: slowest answer p50", e.name()), "ms"),
                Series::new(&format!("{}: slowest answer p99", e.name()), "ms"),
            ],
        );
    }
    let mut reconnect = [
        Series::new("yardstick: direct re-login p50", "ms"),
        Series::new("yardstick: direct re-login p99", "ms"),
    ];
    let mut measurements = Vec::new();
    for r in 1..=runs {
        let mut pair = start_pair(args)?;
        claim_recent(&pair, args, &tls).await?;
        let (p50, p99) = direct_reconnect(&pair, args, &tls).await?;
        eprintln!(
            "  run {r}: yardstick: {} sessions logging in again directly at mail2 at once \
             (connect, LOGIN, SELECT, FETCH): done after p50 {p50:.0} ms p99 {p99:.0} ms",
            on_mail1_count(args)
        );
        reconnect[0].push(p50);
        reconnect[1].push(p99);
        for &event in events {
            let mut m = measure(event, proxy_bin, &mut pair, args, &tls, r).await?;
            m.direct_reconnect_p50_ms = p50;
            m.direct_reconnect_p99_ms = p99;
            print_measurement(&m);
            if let Some(s) = series.get_mut(event.name()) {
                s[0].push(m.survived_of_mail1_pct);
                s[1].push(m.pause_p50_ms);
                s[2].push(m.pause_p99_ms);
                s[3].push(m.slowest_p50_ms);
                s[4].push(m.slowest_p99_ms);
            }
            measurements.push(m);
            // Let Dovecot's imap processes of the closed sessions exit.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(pair);
    }

    let rows: Vec<Series> = events
        .iter()
        .filter_map(|e| series.remove(e.name()))
        .flatten()
        .chain(reconnect)
        .collect();
    print_table(
        &format!(
            "failover: {} sessions ({} on mail1), half in IDLE; pause = event to the first OK",
            args.sessions,
            on_mail1_count(args)
        ),
        &rows,
        1,
    );
    println!();
    let wrong: u64 = measurements.iter().map(|m| m.wrong_data).sum();
    for e in events {
        let ms: Vec<&Measurement> = measurements
            .iter()
            .filter(|m| m.event == e.name())
            .collect();
        let all = ms.iter().all(|m| m.survived_of_mail1 == m.on_mail1_before);
        println!(
            "{}: survived of mail1 per run {:?}  (aim: all)  {}",
            e.name(),
            ms.iter()
                .map(|m| format!("{}/{}", m.survived_of_mail1, m.on_mail1_before))
                .collect::<Vec<_>>(),
            verdict(all)
        );
    }
    println!(
        "wrong data (OK with other FETCH data than before): {wrong}  (aim: 0)  {}",
        verdict(wrong == 0)
    );

    let summary = json!({
        "scenario": "failover",
        "unix_time": unix_time(),
        "runs": runs,
        "sessions": args.sessions,
        "users": args.users,
        "users_on_mail1": args.users_on_mail1,
        "on_mail1": on_mail1_count(args),
        "fetch": FETCH,
        "series": rows,
        "measurements": measurements,
        "aims": { "survived_of_mail1_pct": 100.0, "wrong_data": 0 },
    });
    let file = match args.mode {
        Mode::Both => "failover".to_owned(),
        Mode::Kill => "failover-kill".to_owned(),
        Mode::Drain => "failover-drain".to_owned(),
    };
    let path = write_json(&file, &summary)?;
    println!("summary written to {}", path.display());
    Ok(())
}

fn print_measurement(m: &Measurement) {
    eprintln!(
        "  run {}: {:<5} survived {}/{} of mail1 ({:.1}%; IDLE {}, quiet {}), {}/{} in all, \
         pause p50 {:.0} ms p99 {:.0} ms max {:.0} ms mean {:.0} ms (proxy's mean {:.0} ms; \
         unmoved p50 {:.0} ms), slowest answer p50 {:.0} ms p99 {:.0} ms, event took {:.0} ms; \
         sessions before {:?}, after {:?}",
        m.run,
        m.event,
        m.survived_of_mail1,
        m.on_mail1_before,
        m.survived_of_mail1_pct,
        m.idle_survived_of_mail1,
        m.quiet_survived_of_mail1,
        m.survived_all,
        m.sessions,
        m.pause_p50_ms,
        m.pause_p99_ms,
        m.pause_max_ms,
        m.pause_mean_ms,
        m.proxy_rehome_pause_mean_ms,
        m.unmoved_pause_p50_ms,
        m.slowest_p50_ms,
        m.slowest_p99_ms,
        m.event_ms,
        m.sessions_before,
        m.sessions_after,
    );
    for (reason, n) in &m.failure_reasons {
        eprintln!("      {n} x {reason}");
    }
    let shown: Vec<String> = m
        .proxy_metrics
        .iter()
        .filter(|(k, v)| !k.contains("quantile") && !k.contains("_bucket") && **v != 0.0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    eprintln!("      proxy over the event: {}", shown.join(", "));
}

/// Sessions of users routed to mail1.
fn on_mail1_count(args: &FailoverArgs) -> u64 {
    (0..args.sessions)
        .filter(|i| user_of(*i, args) <= args.users_on_mail1)
        .count() as u64
}

/// Session `i`'s user number (from 1).
fn user_of(i: u32, args: &FailoverArgs) -> u32 {
    i % args.users + 1
}

fn start_pair(args: &FailoverArgs) -> Result<Pair, BenchError> {
    let store = shared_mail_dir().map_err(BenchError::Dovecot)?;
    let seed: Seed = (1..=args.users)
        .map(|u| {
            let user = format!("user{u}");
            let msgs = (1..=MESSAGES as usize)
                .map(|n| small_message(&user, n))
                .collect();
            (user, msgs)
        })
        .collect();
    let start = || {
        Dovecot::builder()
            .users(args.users as usize)
            .seed_messages(seed.clone())
            .mail_dir(store.path())
            .extra_config(DOVECOT_LIMITS)
            .start()
            .map_err(BenchError::Dovecot)
    };
    let mail1 = start()?;
    let mail2 = start()?;
    Ok(Pair {
        mail1,
        mail2,
        _store: store,
    })
}

/// Selects every user's INBOX once directly at mail2, so that the `\Recent` flags belong
/// to a connection that is gone before the proxy's sessions start.
async fn claim_recent(
    pair: &Pair,
    args: &FailoverArgs,
    tls: &TlsConnector,
) -> Result<(), BenchError> {
    let addr = pair.mail2.imap_addr();
    let mut set = JoinSet::new();
    for u in 1..=args.users {
        let (user, pass) = pair.mail2.user(u as usize);
        let tls = tls.clone();
        set.spawn(async move {
            let mut c =
                ImapConn::connect(addr, Security::Plain, &tls, "direct mail2", SMALL_READ_BUF)
                    .await?;
            bounded("claim \\Recent", COMMAND_TIMEOUT, async {
                c.command(&format!("LOGIN {user} {pass}")).await?;
                c.command("SELECT INBOX").await?;
                c.logout().await
            })
            .await
        });
    }
    while let Some(j) = set.join_next().await {
        j.map_err(|e| BenchError::protocol("claim \\Recent", e.to_string()))??;
    }
    Ok(())
}

/// The yardstick: the sessions of mail1's users connecting and logging in again directly
/// at mail2, all at once; p50 and p99 of the time from the start to each one's `FETCH`.
async fn direct_reconnect(
    pair: &Pair,
    args: &FailoverArgs,
    tls: &TlsConnector,
) -> Result<(f64, f64), BenchError> {
    let addr = pair.mail2.imap_addr();
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in (0..args.sessions).filter(|i| user_of(*i, args) <= args.users_on_mail1) {
        let (user, pass) = pair.mail2.user(user_of(i, args) as usize);
        let tls = tls.clone();
        set.spawn(async move {
            let mut c =
                ImapConn::connect(addr, Security::Plain, &tls, "yardstick", SMALL_READ_BUF).await?;
            bounded("yardstick", COMMAND_TIMEOUT, async {
                c.command(&format!("LOGIN {user} {pass}")).await?;
                c.command("SELECT INBOX").await?;
                c.command(FETCH).await?;
                let done = start.elapsed().as_secs_f64() * 1e3;
                c.logout().await?;
                Ok(done)
            })
            .await
        });
    }
    let mut times = Vec::new();
    while let Some(j) = set.join_next().await {
        times.push(j.map_err(|e| BenchError::protocol("yardstick", e.to_string()))??);
    }
    // Let Dovecot's imap processes of these sessions exit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((percentile(&mut times, 50.0), percentile(&mut times, 99.0)))
}

async fn measure(
    event: Event,
    proxy_bin: &Path,
    pair: &mut Pair,
    args: &FailoverArgs,
    tls: &TlsConnector,
    run: u32,
) -> Result<Measurement, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("loadbench-failover-")
        .tempdir()
        .map_err(BenchError::io("failover temp dir"))?;
    let map = dir.path().join("users.map");
    let map_text: String = (1..=args.users)
        .map(|u| {
            let b = if u <= args.users_on_mail1 {
                "mail1"
            } else {
                "mail2"
            };
            format!("user{u} {b}\n")
        })
        .collect();
    std::fs::write(&map, map_text).map_err(BenchError::io("write users.map"))?;
    // The re-homing settings are the defaults, written out so that the scenario says what
    // it measures. max_per_user stays above the sessions per user.
    let extra = format!(
        "[routing]\nmap = \"{}\"\n\n\
         [pool]\nmax_per_user = 50\n\n\
         [session]\nrehome = true\nmax_concurrent_rehomes = 64\nrehome_timeout = \"15s\"\n",
        map.display()
    );
    let (cert, key) = pair.mail2.server_cert_paths();
    let proxy = ProxyProcess::start_multi(
        proxy_bin,
        &[
            ("mail1", pair.mail1.imap_addr()),
            ("mail2", pair.mail2.imap_addr()),
        ],
        &cert,
        &key,
        &extra,
        Some(ADMIN_TOKEN),
    )
    .await?;
    let result = measure_with(event, &proxy, pair, args, tls, run).await;
    let log = proxy.log();
    drop(proxy);
    // RUST_LOG=warn: anything logged is worth a look.
    if !log.trim().is_empty() {
        eprintln!("--- proxy output (tail) ---\n{}", tail(&log, 10));
    }
    result
}

async fn measure_with(
    event: Event,
    proxy: &ProxyProcess,
    pair: &mut Pair,
    args: &FailoverArgs,
    tls: &TlsConnector,
    run: u32,
) -> Result<Measurement, BenchError> {
    let clients = open_sessions(proxy, pair, args, tls).await?;
    let sessions_before = admin::sessions_per_backend(proxy).await?;
    let on_mail1_before = clients.iter().filter(|c| c.on_mail1).count() as u64;
    if sessions_before.get("mail1").copied().unwrap_or(0) != on_mail1_before {
        eprintln!(
            "  warning: the proxy lists {sessions_before:?} before the {}, expected {on_mail1_before} \
             on mail1",
            event.name()
        );
    }
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let metrics_before = admin::metrics(proxy, admin::REHOME_METRICS).await?;

    let t0 = Instant::now();
    let drain_migrating = match event {
        Event::Kill => {
            pair.mail1.kill();
            None
        }
        Event::Drain => {
            let v = admin::json(proxy, "POST", "/backends/mail1/drain?migrate=true").await?;
            v["migrating"].as_u64()
        }
    };
    let event_ms = t0.elapsed().as_secs_f64() * 1e3;

    let mut set = JoinSet::new();
    for c in clients {
        set.spawn(after_event(c, t0));
    }
    let mut results = Vec::with_capacity(args.sessions as usize);
    // The connections stay open until the proxy has said where their sessions are.
    let mut alive = Vec::with_capacity(args.sessions as usize);
    while let Some(j) = set.join_next().await {
        let (result, conn) = j.map_err(|e| BenchError::protocol("client task", e.to_string()))?;
        results.push(result);
        alive.extend(conn);
    }
    let sessions_after = admin::sessions_per_backend(proxy).await?;
    let metrics_after = admin::metrics(proxy, admin::REHOME_METRICS).await?;
    drop(alive);
    let proxy_metrics: BTreeMap<String, f64> = metrics_after
        .iter()
        .map(|(k, v)| {
            let before = if k.contains("quantile") {
                0.0
            } else {
                metrics_before.get(k).copied().unwrap_or(0.0)
            };
            (k.clone(), v - before)
        })
        .collect();

    let moved: Vec<&ClientResult> = results
        .iter()
        .filter(|r| r.on_mail1 && r.survived())
        .collect();
    let survived_of_mail1 = moved.len() as u64;
    let survived_all = results.iter().filter(|r| r.survived()).count() as u64;
    let mut pauses: Vec<f64> = moved
        .iter()
        .filter_map(|r| r.pause.map(|d| d.as_secs_f64() * 1e3))
        .collect();
    let mut slowest: Vec<f64> = moved
        .iter()
        .filter_map(|r| r.slowest.map(|d| d.as_secs_f64() * 1e3))
        .collect();
    let mut unmoved: Vec<f64> = results
        .iter()
        .filter(|r| !r.on_mail1 && r.survived())
        .filter_map(|r| r.pause.map(|d| d.as_secs_f64() * 1e3))
        .collect();
    let mut outcomes = BTreeMap::new();
    let mut reasons = BTreeMap::new();
    for r in &results {
        let side = if r.on_mail1 { "mail1" } else { "mail2" };
        let kind = if r.idle { "IDLE" } else { "quiet" };
        *outcomes
            .entry(format!("{side} {kind}: {}", r.outcome))
            .or_insert(0u64) += 1;
        if let Some(d) = &r.detail {
            *reasons.entry(format!("{side} {kind}: {d}")).or_insert(0u64) += 1;
        }
    }
    let proxy_rehome_pause_mean_ms = 1e3
        * admin::total(&proxy_metrics, "imapproxy_rehome_pause_seconds_sum")
        / admin::total(&proxy_metrics, "imapproxy_rehome_pause_seconds_count").max(1.0);
    let share = |n: u64, of: u64| 100.0 * n as f64 / of.max(1) as f64;
    Ok(Measurement {
        event: event.name(),
        run,
        sessions: args.sessions,
        on_mail1_before,
        sessions_before,
        sessions_after,
        survived_of_mail1,
        survived_of_mail1_pct: share(survived_of_mail1, on_mail1_before),
        survived_all,
        survived_all_pct: share(survived_all, u64::from(args.sessions)),
        idle_survived_of_mail1: moved.iter().filter(|r| r.idle).count() as u64,
        quiet_survived_of_mail1: moved.iter().filter(|r| !r.idle).count() as u64,
        wrong_data: results.iter().filter(|r| r.outcome == "wrong data").count() as u64,
        pause_max_ms: pauses.iter().copied().fold(f64::NAN, f64::max),
        pause_mean_ms: pauses.iter().sum::<f64>() / pauses.len().max(1) as f64,
        proxy_rehome_pause_mean_ms,
        pause_p50_ms: percentile(&mut pauses, 50.0),
        pause_p99_ms: percentile(&mut pauses, 99.0),
        unmoved_pause_p50_ms: percentile(&mut unmoved, 50.0),
        slowest_p50_ms: percentile(&mut slowest, 50.0),
        slowest_p99_ms: percentile(&mut slowest, 99.0),
        direct_reconnect_p50_ms: f64::NAN,
        direct_reconnect_p99_ms: f64::NAN,
        event_ms,
        drain_migrating,
        outcomes,
        failure_reasons: reasons,
        proxy_metrics,
    })
}

/// Opens every session (in concurrent batches): login, `SELECT INBOX`, the baseline
/// `FETCH`, and `IDLE` for half of each user's sessions.
async fn open_sessions(
    proxy: &ProxyProcess,
    pair: &Pair,
    args: &FailoverArgs,
    tls: &TlsConnector,
) -> Result<Vec<Client>, BenchError> {
    let addr = proxy.plain;
    let mut clients = Vec::with_capacity(args.sessions as usize);
    let mut next = 0u32;
    while next < args.sessions {
        let end = (next + args.batch).min(args.sessions);
        let mut set = JoinSet::new();
        for i in next..end {
            let u = user_of(i, args);
            let (user, pass) = pair.mail1.user(u as usize);
            let on_mail1 = u <= args.users_on_mail1;
            // Alternate per user: each user has IDLE and quiet sessions on the same backend.
            let idle = (i / args.users) % 2 == 0;
            let tls = tls.clone();
            set.spawn(async move {
                let label = format!("session {i} ({user})");
                let mut conn =
                    ImapConn::connect(addr, Security::Plain, &tls, &label, SMALL_READ_BUF).await?;
                bounded(&format!("{label}: set-up"), COMMAND_TIMEOUT, async {
                    conn.command(&format!("LOGIN {user} {pass}")).await?;
                    conn.command("SELECT INBOX").await?;
                    let baseline = conn.command(FETCH).await?;
                    if baseline.fetches != MESSAGES {
                        return Err(BenchError::protocol(
                            format!("{label}: {FETCH}"),
                            format!("{} FETCH responses, expected {MESSAGES}", baseline.fetches),
                        ));
                    }
                    let idle_tag = if idle { Some(conn.idle().await?) } else { None };
                    Ok(Client {
                        conn,
                        on_mail1,
                        idle_tag,
                        baseline: baseline.fetched,
                    })
                })
                .await
            });
        }
        while let Some(j) = set.join_next().await {
            clients.push(j.map_err(|e| BenchError::protocol("session set-up", e.to_string()))??);
        }
        next = end;
    }
    Ok(clients)
}

/// The client's side after the event: `DONE` (then `NOOP`) or `NOOP`, then the baseline
/// `FETCH`, each bounded. Returns the connection when it survived.
async fn after_event(c: Client, t0: Instant) -> (ClientResult, Option<ImapConn>) {
    let mut c = c;
    let result = after_event_steps(&mut c, t0).await;
    let conn = result.survived().then_some(c.conn);
    (result, conn)
}

async fn after_event_steps(c: &mut Client, t0: Instant) -> ClientResult {
    let idle = c.idle_tag.is_some();
    let mut result = ClientResult {
        on_mail1: c.on_mail1,
        idle,
        pause: None,
        slowest: None,
        outcome: String::new(),
        detail: None,
    };
    let first = match c.idle_tag.take() {
        Some(tag) => bounded("DONE", COMMAND_TIMEOUT, c.conn.done(&tag)).await,
        None => bounded("NOOP", COMMAND_TIMEOUT, c.conn.command("NOOP")).await,
    };
    if let Err(e) = first {
        (result.outcome, result.detail) = failure(&e);
        return result;
    }
    let pause = t0.elapsed();
    result.pause = Some(pause);
    let mut slowest = pause;
    if idle {
        let sent = Instant::now();
        if let Err(e) = bounded("NOOP", COMMAND_TIMEOUT, c.conn.command("NOOP")).await {
            (result.outcome, result.detail) = failure(&e);
            return result;
        }
        slowest = slowest.max(sent.elapsed());
    }
    let sent = Instant::now();
    let fetched = bounded("FETCH", COMMAND_TIMEOUT, c.conn.command(FETCH)).await;
    result.slowest = Some(slowest.max(sent.elapsed()));
    match fetched {
        Ok(r) if r.fetched == c.baseline && r.fetches == MESSAGES => {
            result.outcome = "survived".to_owned();
        }
        Ok(r) => {
            result.outcome = "wrong data".to_owned();
            result.detail = Some(format!(
                "wrong data: {} FETCH responses, first {:?}, expected {:?}",
                r.fetches,
                r.fetched.first(),
                c.baseline.first()
            ));
        }
        Err(e) => (result.outcome, result.detail) = failure(&e),
    }
    result
}

/// A failure's class (BYE, NO, closed, timeout, …) and its text.
fn failure(e: &BenchError) -> (String, Option<String>) {
    let text = reason(e);
    let class = match e {
        BenchError::Timeout { .. } => "timeout",
        BenchError::Io { .. } => "connection error",
        BenchError::Protocol { detail, .. } if detail.starts_with("* BYE") => "BYE",
        BenchError::Protocol { detail, .. } if detail.contains("connection closed") => "closed",
        BenchError::Protocol { detail, .. }
            if detail
                .split(' ')
                .nth(1)
                .is_some_and(|w| w == "NO" || w == "BAD") =>
        {
            "refused"
        }
        _ => "other",
    };
    (class.to_owned(), Some(text))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "[meets aim]" } else { "[BELOW AIM]" }
}
