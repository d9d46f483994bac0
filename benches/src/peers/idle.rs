//! `idle`: memory per logged-in session sitting in IDLE, for every target.
//!
//! Per run and column, a freshly started target: open `--idle-baseline` sessions (LOGIN,
//! SELECT INBOX, IDLE, `+ idling`), read the target's memory; open the rest up to
//! `--idle-sessions` in batches of 50 (4 for up-imapproxy); wait `--idle-settle-secs`; read it again. Figure:
//! growth / added sessions. Then, for the proxies, open more up to `--idle-scale-sessions`,
//! wait and read a third time: the cost of a session at scale, where what a target spends
//! once (tables, allocator arenas, the high-water mark of a login burst) weighs on each
//! added session far less. Memory is the sum of `Pss` over the target's process tree
//! ([`super::procfs`]), so nginx's master and workers count, and a forking or threaded
//! peer is measured the same way as a single process.
//!
//! Direct Dovecot's figure is Dovecot's own process tree (an `imap` process per session,
//! and for TLS the `imap-login` process that keeps the TLS session): what a session
//! costs the server. A proxy's figure is only the proxy's, on top of that.

use std::time::{Duration, Instant};

use imapproxy_testkit::{Dovecot, Seed, small_message};

use super::disturbance::{Load, Probe};
use super::procfs;
use super::table::{Better, LoadRecord, Row};
use super::target::{Column, Server, Stack, rotated};
use super::{Ctx, Outcome, note_failure};
use crate::error::BenchError;
use crate::idle::open_sessions;
use crate::imap::{Security, insecure_connector};

const SCENARIO: &str = "idle";
/// The third reading's part of the scenario, with a load reading and failures of its own.
const SCALE: &str = "idle at scale";
/// Sessions opened concurrently.
const BATCH: u32 = 50;
/// Sessions opened concurrently through up-imapproxy: it listens with a backlog of 5,
/// so 50 at once overflow it and the dropped SYNs are retried after 1, 3, 7, 15 s.
const UP_IMAPPROXY_BATCH: u32 = 4;
/// Longest wait for Dovecot's process count to stop falling between measurements.
const DOVECOT_SETTLE: Duration = Duration::from_secs(5);

/// Runs the idle-memory comparison; returns its row.
pub async fn run(ctx: &Ctx<'_>) -> Result<Outcome, BenchError> {
    let args = ctx.args;
    let sessions = args.idle_sessions as usize;
    let baseline = (args.idle_baseline as usize).min(sessions.saturating_sub(1));
    // 0 (or not above `sessions`): no third reading.
    let scale = Some(args.idle_scale_sessions as usize).filter(|&n| n > sessions);
    let most = scale.unwrap_or(sessions);
    crate::idle::ensure_fd_limit(most as u64)?;
    let users = args.users as usize;
    let per_user = most.div_ceil(users.max(1));
    let names: Vec<String> = (1..=users).map(|i| format!("user{i}")).collect();
    let seed: Seed = names
        .iter()
        .map(|u| (u.clone(), (1..=3).map(|n| small_message(u, n)).collect()))
        .collect();
    // As in `idle-memory`: an imap process per session (and an imap-login per TLS
    // session), each talking to stats and anvil.
    let extra = format!(
        "default_client_limit = {clients}\n\
         default_process_limit = 500\n\
         service imap {{\n  process_limit = {procs}\n}}\n\
         service imap-login {{\n  process_limit = {procs}\n}}\n",
        clients = most * 4 + 1000,
        procs = most * 2 + 100,
    );
    let dovecot = Dovecot::builder()
        .users(users)
        .max_userip_connections(u32::try_from(per_user * 2 + 10).unwrap_or(u32::MAX))
        .seed_messages(seed)
        .extra_config(&extra)
        .start()
        .map_err(BenchError::Dovecot)?;
    let accounts: Vec<(String, String)> = dovecot.users().to_vec();
    // No warm connections and no per-user cap in the way, as in `idle-memory`.
    let stack = Stack::new(
        &dovecot,
        ctx.proxy_bin,
        "[pool]\nmax_per_user = 1000\nwarm = 0\n",
        ctx.installed,
    )?;
    let columns = ctx.installed.columns(&[Security::Plain, Security::Tls]);
    let tls = insecure_connector()?;
    let mut out = Outcome::default();
    let mut row = Row::new(
        "idle KiB",
        &format!("idle: memory per session in IDLE ({sessions} sessions)"),
        "KiB",
        Better::Lower,
        1,
    );
    let mut scale_row = scale.map(|n| {
        Row::new(
            "idle KiB at scale",
            &format!("idle at scale: memory per session added from {sessions} to {n} in IDLE"),
            "KiB",
            Better::Lower,
            1,
        )
    });
    for r in 1..=ctx.runs {
        for col in rotated(&columns, r) {
            settle(&dovecot).await;
            let res = async {
                let running = stack.start(col.server()).await?;
                let addr = running
                    .addr(col.security())
                    .ok_or_else(|| BenchError::protocol(col.name(), "no such listener"))?;
                let root = running
                    .memory_root()
                    .ok_or_else(|| BenchError::protocol(col.name(), "no process to measure"))?;
                let memory = || {
                    procfs::tree_pss_kib(root).ok_or_else(|| {
                        BenchError::protocol(col.name(), format!("process {root} is gone"))
                    })
                };
                let batch = if col.server() == Server::UpImapproxy {
                    UP_IMAPPROXY_BATCH
                } else {
                    BATCH
                };
                let probe = Probe::start();
                let started = Instant::now();
                let mut open =
                    open_sessions(0..baseline, addr, col.security(), &tls, &accounts, batch)
                        .await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let before = memory()?;
                let mut rest = open_sessions(
                    baseline..sessions,
                    addr,
                    col.security(),
                    &tls,
                    &accounts,
                    batch,
                )
                .await?;
                let open_secs = started.elapsed().as_secs_f64();
                open.append(&mut rest);
                tokio::time::sleep(Duration::from_secs(args.idle_settle_secs)).await;
                let after = memory()?;
                let load = probe.finish();
                // Direct Dovecot is left at `sessions`: its figure is the server's own cost,
                // already known, and 1,000 TLS sessions would take it 1.8 GB. A failure here
                // costs only the third reading.
                let scaled = match scale {
                    Some(n) if col.server() != Server::Direct => {
                        let probe = Probe::start();
                        let reading = async {
                            let mut more = open_sessions(
                                sessions..n,
                                addr,
                                col.security(),
                                &tls,
                                &accounts,
                                batch,
                            )
                            .await?;
                            open.append(&mut more);
                            tokio::time::sleep(Duration::from_secs(args.idle_settle_secs)).await;
                            memory()
                        }
                        .await;
                        Some((n, reading, probe.finish()))
                    }
                    _ => None,
                };
                drop(open);
                drop(running);
                Ok::<_, BenchError>((before, after, scaled, open_secs, load))
            }
            .await;
            match res {
                Ok((before, after, scaled, open_secs, load)) => {
                    let kib = after.saturating_sub(before) as f64 / (sessions - baseline) as f64;
                    let mark = record(
                        &mut out,
                        &mut row,
                        SCENARIO,
                        r,
                        col,
                        kib,
                        load,
                        args.disturbed_cores,
                    );
                    eprintln!(
                        "  {SCENARIO} run {r}: {:<18} {before:>8} KiB at {baseline}, {after:>8} KiB \
                         at {sessions} -> {kib:7.2} KiB/session (opened in {open_secs:.1} s){mark}",
                        col.name(),
                    );
                    if let (Some((n, reading, load)), Some(row)) = (scaled, scale_row.as_mut()) {
                        match reading {
                            Ok(at_scale) => {
                                let kib =
                                    at_scale.saturating_sub(after) as f64 / (n - sessions) as f64;
                                let mark = record(
                                    &mut out,
                                    row,
                                    SCALE,
                                    r,
                                    col,
                                    kib,
                                    load,
                                    args.disturbed_cores,
                                );
                                eprintln!(
                                    "  {SCENARIO} run {r}: {:<18} {at_scale:>8} KiB at {n} -> \
                                     {kib:7.2} KiB/session from {sessions}{mark}",
                                    col.name(),
                                );
                            }
                            Err(e) => {
                                note_failure(&mut out, SCALE, r, col, &e)?;
                                row.push(col, r, f64::NAN, false);
                            }
                        }
                    }
                }
                Err(e) => {
                    note_failure(&mut out, SCENARIO, r, col, &e)?;
                    row.push(col, r, f64::NAN, false);
                    if let Some(row) = scale_row.as_mut() {
                        if col.server() != Server::Direct {
                            row.push(col, r, f64::NAN, false);
                        }
                    }
                }
            }
        }
    }
    out.rows.push(row);
    out.rows.extend(scale_row);
    out.notes.push(format!(
        "idle: growth of the summed `Pss` of the target's process tree from {baseline} to \
         {sessions} sessions in IDLE, per added session. Direct: Dovecot's own tree (its \
         cost per session); proxies: the proxy's tree only, on top of Dovecot's. \
         up-imapproxy serves each client with a thread of one process (opened \
         {UP_IMAPPROXY_BATCH} at a time: its listen backlog is 5), nginx with its workers \
         (all counted)."
    ));
    if args.idle_scale_sessions != 0 && scale.is_none() {
        out.notes.push(format!(
            "idle at scale: not measured (--idle-scale-sessions {} is not above \
             --idle-sessions {sessions}).",
            args.idle_scale_sessions
        ));
    }
    if let Some(n) = scale {
        out.notes.push(format!(
            "idle at scale: the same processes, opened on from {sessions} to {n} sessions in \
             IDLE, growth per added session; proxies only (direct Dovecot's cost per session \
             is the row above)."
        ));
    }
    Ok(out)
}

/// Files one measurement: its load reading, and its figure in `row` (marked if disturbed).
/// Returns the mark for the run's line.
#[allow(clippy::too_many_arguments)]
fn record(
    out: &mut Outcome,
    row: &mut Row,
    scenario: &'static str,
    run: u32,
    column: Column,
    kib: f64,
    load: Load,
    limit: f64,
) -> &'static str {
    let disturbed = load.disturbed(limit);
    out.loads.push(LoadRecord {
        scenario,
        run,
        column: Some(column),
        load,
        disturbed,
    });
    row.push(column, run, kib, disturbed);
    if disturbed { "  [disturbed]" } else { "" }
}

/// Waits until Dovecot's process count stops falling (the previous target's sessions
/// have ended), at most [`DOVECOT_SETTLE`].
async fn settle(dovecot: &Dovecot) {
    let Some(pid) = dovecot.pid() else { return };
    let deadline = Instant::now() + DOVECOT_SETTLE;
    let mut last = usize::MAX;
    let mut steady = 0;
    while Instant::now() < deadline && steady < 2 {
        let n = procfs::tree(pid, &procfs::all()).len();
        steady = if n >= last { steady + 1 } else { 0 };
        last = n;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
