//! `bulk`: MB/s of one `UID FETCH 1:* BODY.PEEK[]` of the `bulk` scenario's mailbox
//! (200 × 256 KiB) through every target. Per run every server is started once, each
//! column gets a session (LOGIN, SELECT, an untimed warm-up fetch), then the timed
//! fetches go round the columns in turn, as in `bulk`, so that drift hits them alike.

use std::time::{Duration, Instant};

use super::disturbance::Probe;
use super::procfs;
use super::table::{Better, LoadRecord, Row};
use super::target::{Column, Running, Server, Stack, rotated};
use super::{Ctx, Outcome, note_failure};
use crate::bulk::fetch_all;
use crate::error::BenchError;
use crate::imap::{BULK_READ_BUF, ImapConn, Security, insecure_connector, login_select};

const SCENARIO: &str = "bulk";

/// Runs the bulk comparison; returns its row.
pub async fn run(ctx: &Ctx<'_>) -> Result<Outcome, BenchError> {
    let args = ctx.args;
    let messages = args.messages as usize;
    let size = args.size_kib as usize * 1024;
    let dovecot = crate::bulk::bulk_dovecot(messages, size)?;
    let (user, pass) = dovecot.user(1);
    // imapproxy with its defaults, as in `bulk`.
    let stack = Stack::new(&dovecot, ctx.proxy_bin, "", ctx.installed)?;
    let columns = ctx.installed.columns(&[Security::Plain, Security::Tls]);
    let tls = insecure_connector()?;
    let mut out = Outcome::default();
    let mut row = Row::new(
        "bulk MB/s",
        &format!(
            "bulk: UID FETCH 1:* BODY.PEEK[] of {messages} × {} KiB",
            args.size_kib
        ),
        "MB/s",
        Better::Higher,
        0,
    );
    // What each server's processes spent relaying: robust where MB/s is not, on a small
    // machine whose cores the client, Dovecot and the target share. For direct Dovecot it
    // is Dovecot's own cost of serving the fetch, so a proxy's ratio is what it adds to
    // the work of the server behind it.
    let mut cpu_row = Row::new(
        "bulk CPU ms/GB",
        "bulk: CPU time of the target's processes per GB relayed",
        "ms",
        Better::Lower,
        0,
    );
    for r in 1..=ctx.runs {
        let order = rotated(&columns, r);
        // Every server once per run; a peer that does not start is a failure of its
        // columns in this run.
        let mut servers: Vec<(Server, Running)> = Vec::new();
        for server in dedup(order.iter().map(|c| c.server())) {
            match stack.start(server).await {
                Ok(running) => servers.push((server, running)),
                Err(e) => {
                    for c in order.iter().filter(|c| c.server() == server) {
                        note_failure(&mut out, SCENARIO, r, *c, &e)?;
                        row.push(*c, r, f64::NAN, false);
                    }
                }
            }
        }
        let mut conns: Vec<(Column, ImapConn, u64, f64, Option<u64>)> = Vec::new();
        for col in order {
            let Some(addr) = servers
                .iter()
                .find(|(s, _)| *s == col.server())
                .and_then(|(_, running)| running.addr(col.security()))
            else {
                continue;
            };
            let open = async {
                let mut conn =
                    ImapConn::connect(addr, col.security(), &tls, col.name(), BULK_READ_BUF)
                        .await?;
                login_select(&mut conn, &user, &pass).await?;
                // Warm-up: page cache and Dovecot's cache file, untimed.
                fetch_all(&mut conn, col.name(), messages, size).await?;
                Ok::<_, BenchError>(conn)
            };
            match open.await {
                Ok(conn) => conns.push((col, conn, 0, 0.0, Some(0))),
                Err(e) => {
                    note_failure(&mut out, SCENARIO, r, col, &e)?;
                    row.push(col, r, f64::NAN, false);
                }
            }
        }
        let probe = Probe::start();
        for _ in 0..args.fetches {
            let mut failed = Vec::new();
            for (i, (col, conn, bytes, secs, cpu)) in conns.iter_mut().enumerate() {
                let root = servers
                    .iter()
                    .find(|(s, _)| *s == col.server())
                    .and_then(|(_, running)| running.memory_root());
                let cpu_before = root.and_then(procfs::tree_cpu_ns);
                let start = Instant::now();
                match fetch_all(conn, col.name(), messages, size).await {
                    Ok(n) => {
                        *secs += start.elapsed().as_secs_f64();
                        *bytes += n;
                        let cpu_after = root.and_then(procfs::tree_cpu_ns);
                        *cpu = match (*cpu, cpu_before, cpu_after) {
                            (Some(sum), Some(a), Some(b)) => Some(sum + b.saturating_sub(a)),
                            _ => None,
                        };
                    }
                    Err(e) => {
                        note_failure(&mut out, SCENARIO, r, *col, &e)?;
                        failed.push(i);
                    }
                }
            }
            for i in failed.into_iter().rev() {
                let (col, ..) = conns.remove(i);
                row.push(col, r, f64::NAN, false);
                cpu_row.push(col, r, f64::NAN, false);
            }
        }
        let load = probe.finish();
        let disturbed = load.disturbed(args.disturbed_cores);
        out.loads.push(LoadRecord {
            scenario: SCENARIO,
            run: r,
            column: None,
            load,
            disturbed,
        });
        for (col, mut conn, bytes, secs, cpu) in conns {
            let mbps = bytes as f64 / secs / 1e6;
            let cpu_ms_per_gb = cpu.map_or(f64::NAN, |ns| ns as f64 / 1e6 / (bytes as f64 / 1e9));
            eprintln!(
                "  {SCENARIO} run {r}: {:<18} {mbps:8.1} MB/s, CPU {cpu_ms_per_gb:6.1} ms/GB{}",
                col.name(),
                if disturbed { "  [disturbed]" } else { "" }
            );
            row.push(col, r, mbps, disturbed);
            cpu_row.push(col, r, cpu_ms_per_gb, disturbed);
            // Polite end; the answer does not matter.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.send("LOGOUT")).await;
        }
        drop(servers);
    }
    out.rows.push(row);
    out.rows.push(cpu_row);
    Ok(out)
}

/// `servers` without repeats, in first-seen order.
fn dedup(servers: impl Iterator<Item = Server>) -> Vec<Server> {
    let mut v: Vec<Server> = Vec::new();
    for s in servers {
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v
}
