//! `burst`: `burst --hold-ms 200` against every plain target: 50 closed-loop workers of
//! one user (connect, `LOGIN`, `SELECT INBOX`, `FETCH 1 (FLAGS)`, 200 ms logged in,
//! `LOGOUT`) against Dovecot capped at 10 sessions per user and IP. A fresh target
//! process per measurement; imapproxy with `max_per_user` at Dovecot's cap (what the
//! README tells operators to set; its queue keeps it under the cap), the peers with their
//! defaults.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use imapproxy_testkit::{Dovecot, Seed, small_message};

use super::disturbance::Probe;
use super::sessions::reasons_text;
use super::table::{Better, LoadRecord, Row};
use super::target::{Column, Stack, rotated};
use super::{Ctx, Outcome, note_failure};
use crate::burst::{LOOP_TIMEOUT, one_loop};
use crate::clients::{self, Window};
use crate::error::BenchError;
use crate::imap::{Security, insecure_connector};
use crate::webmail::pool_section;

const SCENARIO: &str = "burst";
/// Messages in `user1`'s INBOX.
const MESSAGES: usize = 3;

/// One target in one run.
struct Figures {
    completed_per_sec: f64,
    failed: u64,
    served: usize,
}

/// Runs the burst comparison over the plain columns; returns its rows.
pub async fn run(ctx: &Ctx<'_>) -> Result<Outcome, BenchError> {
    let args = ctx.args;
    let seed: Seed = vec![(
        "user1".to_owned(),
        (1..=MESSAGES).map(|n| small_message("user1", n)).collect(),
    )];
    let extra = "default_client_limit = 4000\n\
                 default_process_limit = 1000\n\
                 service imap {\n  process_limit = 2000\n}\n";
    let dovecot = Arc::new(
        Dovecot::builder()
            .users(1)
            .max_userip_connections(args.burst_limit)
            .seed_messages(seed)
            .extra_config(extra)
            .start()
            .map_err(BenchError::Dovecot)?,
    );
    let stack = Stack::new(
        &dovecot,
        ctx.proxy_bin,
        &pool_section(args.burst_limit),
        ctx.installed,
    )?;
    let columns = ctx.installed.columns(&[Security::Plain]);
    let account = Arc::new(dovecot.user(1));
    let workers = args.burst_clients;
    let mut out = Outcome::default();
    let title = format!(
        "burst: {workers} workers of 1 user, {} ms logged in, Dovecot cap {}",
        args.burst_hold_ms, args.burst_limit
    );
    let mut completed = Row::new(
        "burst loops/s",
        &format!("{title}: completed loops"),
        "loops/s",
        Better::Higher,
        1,
    );
    let mut failed = Row::new(
        "burst failed",
        "burst: failed loops",
        "per window",
        Better::Lower,
        0,
    );
    let mut served = Row::new(
        "burst served",
        &format!("burst: workers that completed a loop, of {workers}"),
        "workers",
        Better::Higher,
        0,
    );
    for r in 1..=ctx.runs {
        for col in rotated(&columns, r) {
            match measure(&stack, col, &account, ctx, r, &mut out).await {
                Ok((f, disturbed)) => {
                    completed.push(col, r, f.completed_per_sec, disturbed);
                    failed.push(col, r, f.failed as f64, disturbed);
                    served.push(col, r, f.served as f64, disturbed);
                }
                Err(e) => {
                    note_failure(&mut out, SCENARIO, r, col, &e)?;
                    for row in [&mut completed, &mut failed, &mut served] {
                        row.push(col, r, f64::NAN, false);
                    }
                }
            }
            // Let Dovecot's processes of the last sessions exit, so that the next target
            // starts under the cap.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    out.rows.extend([completed, failed, served]);
    Ok(out)
}

async fn measure(
    stack: &Stack<'_>,
    col: Column,
    account: &Arc<(String, String)>,
    ctx: &Ctx<'_>,
    run: u32,
    out: &mut Outcome,
) -> Result<(Figures, bool), BenchError> {
    let args = ctx.args;
    let running = stack.start(col.server()).await?;
    let addr = running
        .addr(Security::Plain)
        .ok_or_else(|| BenchError::protocol(col.name(), "no plain listener"))?;
    let window = Window::new(
        Duration::from_secs(args.warmup_secs),
        Duration::from_secs(args.burst_secs),
    );
    let account = Arc::clone(account);
    let tls = insecure_connector()?;
    let hold = Duration::from_millis(args.burst_hold_ms);
    let name = col.name();
    let set = clients::spawn(
        args.burst_clients as usize,
        window,
        LOOP_TIMEOUT,
        move |c, _| {
            let account = Arc::clone(&account);
            let tls = tls.clone();
            async move {
                one_loop(addr, &tls, name, &account.0, &account.1, hold)
                    .await
                    .map(|ms| (c, ms))
            }
        },
    );
    tokio::time::sleep_until(window.from.into()).await;
    let probe = Probe::start();
    tokio::time::sleep_until(window.until.into()).await;
    let load = probe.finish();
    let tally = clients::collect(set).await?;
    drop(running);
    let disturbed = load.disturbed(args.disturbed_cores);
    out.loads.push(LoadRecord {
        scenario: SCENARIO,
        run,
        column: Some(col),
        load,
        disturbed,
    });
    let served: BTreeSet<usize> = tally.ok.iter().map(|(c, _)| *c).collect();
    let f = Figures {
        completed_per_sec: tally.ok.len() as f64 / window.secs(),
        failed: tally.failed,
        served: served.len(),
    };
    eprintln!(
        "  {SCENARIO} run {run}: {:<18} {:7.1} loops/s, {:5} failed, {:2} of {} workers \
         served{}",
        name,
        f.completed_per_sec,
        f.failed,
        f.served,
        args.burst_clients,
        if disturbed { "  [disturbed]" } else { "" }
    );
    if f.failed > 0 && run == 1 {
        out.notes.push(format!(
            "burst run 1, {name}: failures by reason: {}",
            reasons_text(&tally.reasons)
        ));
    }
    Ok((f, disturbed))
}
