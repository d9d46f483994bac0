//! `latency` (one client) and `sessions` (20 clients over 100 users): closed-loop
//! clients running the webmail scenario's session (connect, TLS when the column is TLS
//! with a full handshake each time, `LOGIN`, `SELECT INBOX`, a header `FETCH` of five
//! messages, `LOGOUT`) against each target in turn, a fresh target process each time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imapproxy_testkit::Dovecot;
use tokio::task::JoinSet;

use super::disturbance::Probe;
use super::table::{Better, LoadRecord, Row};
use super::target::{Column, Stack, rotated};
use super::{Ctx, Outcome, note_failure};
use crate::clients::{self, Tally, Window, pick_user};
use crate::error::BenchError;
use crate::imap::{Security, insecure_connector_no_resumption};
use crate::report::percentile;
use crate::webmail::{self, SESSION_TIMEOUT, Sample, count_logins, pool_section};

/// Process and client limits well above 20 clients' sessions and what the pooling
/// proxies cache for 100 users (as in `webmail`).
pub const DOVECOT_LIMITS: &str = "default_client_limit = 4000\n\
                              default_process_limit = 1000\n\
                              service imap {\n  process_limit = 2000\n}\n";

/// What differs between `latency` and `sessions`.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Scenario name in the table and the notes.
    pub scenario: &'static str,
    /// Closed-loop clients.
    pub clients: u32,
    /// Users, picked round robin over all sessions.
    pub users: u32,
    /// Measured seconds per target and run.
    pub secs: u64,
    /// Uncounted seconds before each window.
    pub warmup_secs: u64,
}

/// One target in one run.
struct Figures {
    sessions_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    dovecot_logins_per_session: f64,
    failed: u64,
    reasons: BTreeMap<String, u64>,
}

/// Runs `spec` over every plain and TLS column; returns its rows.
pub async fn run(ctx: &Ctx<'_>, spec: Spec) -> Result<Outcome, BenchError> {
    let users = spec.users as usize;
    let seed = crate::webmail::mailboxes(users);
    let dovecot = Arc::new(
        Dovecot::builder()
            .users(users)
            .max_userip_connections(100)
            .seed_messages(seed)
            .extra_config(DOVECOT_LIMITS)
            .start()
            .map_err(BenchError::Dovecot)?,
    );
    let stack = Stack::new(&dovecot, ctx.proxy_bin, &pool_section(8), ctx.installed)?;
    let columns = ctx.installed.columns(&[Security::Plain, Security::Tls]);
    let mut out = Outcome::default();
    let mut rows = if spec.clients == 1 {
        vec![
            Row::new(
                "latency p50",
                &format!(
                    "latency: 1 client, {}, connect → LOGOUT p50",
                    users_text(users)
                ),
                "ms",
                Better::Lower,
                2,
            ),
            Row::new(
                "latency p99",
                &format!(
                    "latency: 1 client, {}, connect → LOGOUT p99",
                    users_text(users)
                ),
                "ms",
                Better::Lower,
                2,
            ),
        ]
    } else {
        vec![
            Row::new(
                "sessions/s",
                &format!("sessions: {} clients over {users} users", spec.clients),
                "sessions/s",
                Better::Higher,
                1,
            ),
            Row::new(
                "Dovecot logins",
                "sessions: Dovecot logins per client session",
                "%",
                Better::Lower,
                1,
            ),
        ]
    };
    for r in 1..=ctx.runs {
        for col in rotated(&columns, r) {
            let res = measure(&stack, &dovecot, col, spec, ctx, r, &mut out.loads).await;
            let ((x, y), disturbed) = match res {
                Ok((f, disturbed)) => {
                    eprintln!(
                        "  {} run {r}: {:<18} {:7.1} sessions/s, p50 {:6.2} ms, p99 {:7.2} ms, \
                         Dovecot logins {:5.1}%, failed {}{}",
                        spec.scenario,
                        col.name(),
                        f.sessions_per_sec,
                        f.p50_ms,
                        f.p99_ms,
                        f.dovecot_logins_per_session * 100.0,
                        f.failed,
                        if disturbed { "  [disturbed]" } else { "" }
                    );
                    if f.failed > 0 {
                        out.notes.push(format!(
                            "{} run {r}, {}: {} sessions failed in the window: {}",
                            spec.scenario,
                            col.name(),
                            f.failed,
                            reasons_text(&f.reasons)
                        ));
                    }
                    if spec.clients == 1 {
                        ((f.p50_ms, f.p99_ms), disturbed)
                    } else {
                        (
                            (f.sessions_per_sec, f.dovecot_logins_per_session * 100.0),
                            disturbed,
                        )
                    }
                }
                Err(e) => {
                    note_failure(&mut out, spec.scenario, r, col, &e)?;
                    ((f64::NAN, f64::NAN), false)
                }
            };
            if let [first, second] = rows.as_mut_slice() {
                first.push(col, r, x, disturbed);
                second.push(col, r, y, disturbed);
            }
            // Let Dovecot's processes of the sessions just closed exit.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    out.rows = rows;
    Ok(out)
}

/// Starts the column's server, runs the clients for one window, stops the server.
async fn measure(
    stack: &Stack<'_>,
    dovecot: &Arc<Dovecot>,
    col: Column,
    spec: Spec,
    ctx: &Ctx<'_>,
    run: u32,
    loads: &mut Vec<LoadRecord>,
) -> Result<(Figures, bool), BenchError> {
    let running = stack.start(col.server()).await?;
    let addr: SocketAddr = running
        .addr(col.security())
        .ok_or_else(|| BenchError::protocol(col.name(), "no such listener"))?;
    let window = Window::new(
        Duration::from_secs(spec.warmup_secs),
        Duration::from_secs(spec.secs),
    );
    let name = col.name();
    let set = spawn_clients(
        dovecot,
        addr,
        col.security(),
        name,
        spec.clients as usize,
        window,
    )?;
    tokio::time::sleep_until(window.from.into()).await;
    let probe = Probe::start();
    let before = count_logins(dovecot).await?;
    tokio::time::sleep_until(window.until.into()).await;
    let after = count_logins(dovecot).await?;
    let load = probe.finish();
    let tally = clients::collect(set).await?;
    let log = running.log();
    drop(running);
    let disturbed = load.disturbed(ctx.args.disturbed_cores);
    loads.push(LoadRecord {
        scenario: spec.scenario,
        run,
        column: Some(col),
        load,
        disturbed,
    });
    if tally.ok.is_empty() {
        return Err(BenchError::protocol(
            name,
            format!(
                "no session succeeded: {}; its output: {}",
                reasons_text(&tally.reasons),
                log.trim()
            ),
        ));
    }
    let n = tally.ok.len() as f64;
    let mut whole: Vec<f64> = tally.ok.iter().map(|s| s.session_ms).collect();
    Ok((
        Figures {
            sessions_per_sec: n / window.secs(),
            p50_ms: percentile(&mut whole, 50.0),
            p99_ms: percentile(&mut whole, 99.0),
            dovecot_logins_per_session: after.saturating_sub(before) as f64 / n,
            failed: tally.failed,
            reasons: tally.reasons,
        },
        disturbed,
    ))
}

/// `clients` closed-loop clients running the webmail session (a full TLS handshake each
/// time over TLS) against `addr` for `window`, over `dovecot`'s users round robin; collect
/// them with [`clients::collect`].
pub fn spawn_clients(
    dovecot: &Dovecot,
    addr: SocketAddr,
    security: Security,
    label: &'static str,
    clients_n: usize,
    window: Window,
) -> Result<JoinSet<Tally<Sample>>, BenchError> {
    let accounts = Arc::new(dovecot.users().to_vec());
    let tls = insecure_connector_no_resumption()?;
    Ok(clients::spawn(
        clients_n,
        window,
        SESSION_TIMEOUT,
        move |c, i| {
            let (user, pass) = accounts
                .get(pick_user(c, i, clients_n, accounts.len(), None))
                .cloned()
                .unwrap_or_default();
            let tls = tls.clone();
            async move { webmail::session(addr, security, &tls, label, &user, &pass).await }
        },
    ))
}

fn users_text(users: usize) -> String {
    if users == 1 {
        "1 user".to_owned()
    } else {
        format!("{users} users")
    }
}

/// `3 x reason; 1 x other`.
pub fn reasons_text(reasons: &BTreeMap<String, u64>) -> String {
    reasons
        .iter()
        .map(|(r, n)| format!("{n} x {r}"))
        .collect::<Vec<_>>()
        .join("; ")
}
