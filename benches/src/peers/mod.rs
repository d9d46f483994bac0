//! `peers`: imapproxy and the proxies it is compared with — HAProxy (TCP mode, plain
//! and TLS-terminating frontends), nginx's mail proxy (IMAP, `auth_http`) and
//! up-imapproxy — against direct Dovecot, in the same run, on loopback (issue #10,
//! DESIGN.md "Performance").
//!
//! Five scenarios, each over the targets in an order rotated from run to run:
//! `latency` (one client), `sessions` (20 clients over 100 users), `bulk` (MB/s of a
//! large FETCH), `idle` (memory per idle session) and `burst` (50 workers of one user
//! against Dovecot's per-user cap). Peers whose executable is missing are skipped and
//! named in the output. The result is one markdown table of ratios against direct
//! Dovecot (medians of the runs, runs disturbed by other load marked), printed and
//! written to `target/loadbench/peers.md`, with every run in `peers.json`.

mod auth_http;
mod bulk;
mod burst;
pub(crate) mod disturbance;
mod haproxy;
mod idle;
mod nginx;
mod process;
pub(crate) mod procfs;
mod sessions;
mod table;
mod target;
#[cfg(test)]
mod tests;
mod up_imapproxy;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, ValueEnum};
use serde_json::json;

use crate::error::BenchError;
use crate::imap::Security;
use crate::proxy::target_dir;
use crate::report::{unix_time, write_json};
use table::{LoadRecord, Row};
use target::{Column, Installed, PeerName};

pub(crate) use sessions::{DOVECOT_LIMITS, reasons_text, spawn_clients};
pub(crate) use table::utc_text;
pub(crate) use target::rotated;

/// The parts of the comparison, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// One client: connect … LOGOUT p50/p99.
    Latency,
    /// 20 clients over 100 users: sessions/s.
    Sessions,
    /// MB/s of `UID FETCH 1:* BODY.PEEK[]`.
    Bulk,
    /// KiB per session in IDLE.
    Idle,
    /// 50 workers of one user against Dovecot's per-user cap.
    Burst,
}

/// Options of the `peers` scenario.
#[derive(Debug, Clone, Args)]
pub struct PeersArgs {
    /// Parts to run (comma-separated; default all).
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Part::Latency, Part::Sessions, Part::Bulk, Part::Idle, Part::Burst])]
    pub only: Vec<Part>,
    /// Peers to leave out even when installed (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub skip: Vec<PeerName>,
    /// Uncounted seconds before each measured window of the latency and burst parts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub warmup_secs: u64,
    /// Uncounted seconds before each measured window of the sessions part (as in
    /// `webmail`: long enough for a pooling proxy to have met every user).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub sessions_warmup_secs: u64,
    /// Users the one client of the latency part logs in as, in turn (1: the same user
    /// page after page, what a pooling proxy is for).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub latency_users: u32,
    /// Measured seconds per target and run, one client.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub latency_secs: u64,
    /// Measured seconds per target and run, many clients.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub sessions_secs: u64,
    /// Clients of the sessions part.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub clients: u32,
    /// Users of the sessions and idle parts.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub users: u32,
    /// Messages of the bulk mailbox.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub messages: u32,
    /// Size of each bulk message in KiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(4..=16_384))]
    pub size_kib: u32,
    /// Timed bulk fetches per target and run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub fetches: u32,
    /// Sessions in IDLE at the second memory reading.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(20..=5000))]
    pub idle_sessions: u32,
    /// Sessions open at the first memory reading.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub idle_baseline: u32,
    /// Sessions in IDLE at a third reading, for the per-session cost at scale (growth from
    /// `--idle-sessions` to this, per added session); proxies only, not direct Dovecot (an
    /// imap process per session: 1.8 GB at 1,000 TLS sessions). 0: no third reading.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub idle_scale_sessions: u32,
    /// Seconds between the last session entering IDLE and the second reading: long enough
    /// for a proxy that gives freed memory back after a burst to have done so (imapproxy
    /// looks once a second and waits for a still second, unless it trimmed in the last 5),
    /// the same for every target.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub idle_settle_secs: u64,
    /// Workers of the burst part, all the same user.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub burst_clients: u32,
    /// Dovecot's `mail_max_userip_connections` in the burst part.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub burst_limit: u32,
    /// Milliseconds a burst worker stays logged in before LOGOUT.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub burst_hold_ms: u64,
    /// Measured seconds per target and run of the burst part.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub burst_secs: u64,
    /// A measurement is disturbed when processes outside the bench plus hypervisor steal
    /// used at least this many cores on average while it ran.
    #[arg(long, default_value_t = 0.25)]
    pub disturbed_cores: f64,
}

/// What every part needs.
pub struct Ctx<'a> {
    proxy_bin: &'a Path,
    runs: u32,
    args: &'a PeersArgs,
    installed: &'a Installed,
}

/// What a part produced.
#[derive(Default)]
pub struct Outcome {
    rows: Vec<Row>,
    loads: Vec<LoadRecord>,
    notes: Vec<String>,
}

impl Outcome {
    fn extend(&mut self, other: Outcome) {
        self.rows.extend(other.rows);
        self.loads.extend(other.loads);
        self.notes.extend(other.notes);
    }
}

/// Records a failed measurement of a column as a note (its cell then shows the other
/// runs, or "failed"), except for direct Dovecot: without it there is nothing to divide
/// by, so that ends the part.
fn note_failure(
    out: &mut Outcome,
    scenario: &str,
    run: u32,
    col: Column,
    e: &BenchError,
) -> Result<(), BenchError> {
    if col.server() == target::Server::Direct {
        return Err(BenchError::protocol(
            format!("{scenario} run {run}, {}", col.name()),
            e.to_string(),
        ));
    }
    eprintln!("  {scenario} run {run}: {:<18} FAILED: {e}", col.name());
    let text = e.to_string();
    let short: String = text.chars().take(300).collect();
    out.notes.push(format!(
        "{scenario} run {run}, {}: failed: {}{}",
        col.name(),
        short.replace('\n', " "),
        if short.len() < text.len() { "…" } else { "" }
    ));
    Ok(())
}

/// Runs the comparison.
pub async fn run(proxy_bin: &Path, runs: u32, args: &PeersArgs) -> Result<(), BenchError> {
    let started = Instant::now();
    // Soft open-file limit up to the hard one, for the idle sessions and inherited by
    // Dovecot and every peer.
    rlimit::increase_nofile_limit(u64::MAX).map_err(BenchError::io("RLIMIT_NOFILE"))?;
    let installed = Installed::detect(&args.skip);
    let columns = installed.columns(&[Security::Plain, Security::Tls]);
    println!(
        "peers: {} ({runs} interleaved runs each) against {}",
        args.only
            .iter()
            .map(|p| format!("{p:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(", "),
        columns
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for s in &installed.skipped {
        println!("  {s}");
    }
    let ctx = Ctx {
        proxy_bin,
        runs,
        args,
        installed: &installed,
    };
    let mut all = Outcome::default();
    let mut failures = Vec::new();
    for part in &args.only {
        let t = Instant::now();
        eprintln!("peers: {part:?} ...");
        let res = match part {
            Part::Latency => {
                sessions::run(
                    &ctx,
                    sessions::Spec {
                        scenario: "latency",
                        clients: 1,
                        users: args.latency_users,
                        secs: args.latency_secs,
                        warmup_secs: args.warmup_secs,
                    },
                )
                .await
            }
            Part::Sessions => {
                sessions::run(
                    &ctx,
                    sessions::Spec {
                        scenario: "sessions",
                        clients: args.clients,
                        users: args.users,
                        secs: args.sessions_secs,
                        warmup_secs: args.sessions_warmup_secs,
                    },
                )
                .await
            }
            Part::Bulk => bulk::run(&ctx).await,
            Part::Idle => idle::run(&ctx).await,
            Part::Burst => burst::run(&ctx).await,
        };
        match res {
            Ok(o) => all.extend(o),
            Err(e) => {
                eprintln!("peers: {part:?} failed: {e}");
                all.notes.push(format!("{part:?}: not measured: {e}"));
                failures.push(format!("{part:?}: {e}"));
            }
        }
        eprintln!("peers: {part:?} took {:.0} s", t.elapsed().as_secs_f64());
    }
    let secs = started.elapsed().as_secs_f64();
    let md = document(&all, &columns, &installed, runs, args, secs);
    println!();
    println!("{md}");
    let path = write_markdown(&md)?;
    println!("table written to {}", path.display());
    let summary = json!({
        "scenario": "peers",
        "unix_time": unix_time(),
        "runs": runs,
        "duration_secs": secs,
        "columns": columns.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "skipped": installed.skipped,
        "versions": installed.versions,
        "disturbed_cores": args.disturbed_cores,
        "rows": all.rows.iter().map(Row::json).collect::<Vec<_>>(),
        "loads": all.loads.iter().map(|l| json!({
            "scenario": l.scenario,
            "run": l.run,
            "column": l.column.map(Column::name),
            "load": l.load,
            "disturbed": l.disturbed,
        })).collect::<Vec<_>>(),
        "notes": all.notes,
    });
    let json_path = write_json("peers", &summary)?;
    println!("summary written to {}", json_path.display());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(BenchError::protocol("peers", failures.join("; ")))
    }
}

/// The whole markdown document.
fn document(
    all: &Outcome,
    columns: &[Column],
    installed: &Installed,
    runs: u32,
    args: &PeersArgs,
    secs: f64,
) -> String {
    let cpus = procfs::cpus();
    let command = std::env::var("LOADBENCH_COMMAND").unwrap_or_else(|_| {
        let args: Vec<String> = std::env::args().skip(1).collect();
        format!(
            "cargo run --release -p imapproxy-bench --bin loadbench -- {}",
            args.join(" ")
        )
    });
    let dovecot = imapproxy_testkit::find_dovecot()
        .and_then(|d| std::process::Command::new(d).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut versions = vec![format!("Dovecot {dovecot}")];
    versions.extend(installed.versions.iter().cloned());
    let header = vec![
        format!(
            "{} on {cpus} × {} (nproc {cpus}); `{command}`; {:.0} s.",
            table::utc_text(unix_time()),
            procfs::cpu_model(),
            secs
        ),
        format!("Versions: {}.", versions.join(", ")),
        format!(
            "Cells: ratio of the target's median to direct Dovecot's over the same transport \
             (plain or implicit TLS), then the median; medians of {runs} runs, targets \
             interleaved in an order rotated each run; ↑/↓: which way is better."
        ),
    ];
    let mut notes = Vec::new();
    notes.extend(table::load_notes(&all.loads, args.disturbed_cores, cpus));
    let spreads: Vec<String> = all
        .rows
        .iter()
        .filter_map(|r| {
            let p = r.direct_spread(Column::DirectPlain);
            let t = r.direct_spread(Column::DirectTls);
            (p.is_finite() || t.is_finite()).then(|| format!("{} {} / {}", r.key, pct(p), pct(t)))
        })
        .collect();
    if !spreads.is_empty() {
        notes.push(format!(
            "Spread of direct Dovecot's runs ((max − min) / median, plain / TLS): {}.",
            spreads.join("; ")
        ));
    }
    notes.extend(installed.skipped.iter().cloned());
    notes.push(
        "Settings: imapproxy as in the single scenarios (`[pool] reuse = true, warm = 2, \
         max_per_user = 8` for latency and sessions, `max_per_user` at Dovecot's cap for burst; \
         defaults for bulk; \
         `max_per_user = 1000, warm = 0` for idle); HAProxy `mode tcp`, a thread per core; \
         nginx `worker_processes auto`, `auth_http` answered by loadbench; up-imapproxy \
         Debian's defaults. TLS sessions do a full handshake each (no resumption)."
            .to_owned(),
    );
    notes.extend(all.notes.iter().cloned());
    table::markdown(&all.rows, columns, &header, &notes)
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.0}%", x * 100.0)
    } else {
        "—".to_owned()
    }
}

/// Writes `target/loadbench/peers.md`; returns the path.
fn write_markdown(md: &str) -> Result<PathBuf, BenchError> {
    let dir = target_dir().join("loadbench");
    fs::create_dir_all(&dir).map_err(|source| BenchError::File {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join("peers.md");
    fs::write(&path, md).map_err(|source| BenchError::File {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
