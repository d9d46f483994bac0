//! `pipeline`: many small pipelined commands, the relay's per-command cost.
//!
//! One user with `--messages` small messages. For each configuration (direct Dovecot plain,
//! proxy plain listener, and with `--baseline` a second proxy binary, e.g. the commit before a
//! change) a fresh session logs in, selects INBOX and sends one untimed batch, then the timed
//! batches: `--commands` commands written at once (`NOOP` and `UID FETCH n (FLAGS)` in
//! turn, RFC 9051 §5.5 pipelining), timed from the write to the last tagged `OK`. The figure
//! is commands per second. Configurations take turns batch by batch, so that load from
//! elsewhere on the machine hits them alike; the per-run ratio of the proxy to the baseline
//! is what a change costs. Dovecot is the slower end of this path, so the proxy's own CPU
//! time per command (`/proc/<pid>/stat`, over the whole scenario) is printed too: the
//! finer measure of what the relay spends per command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use imapproxy_testkit::{Dovecot, Seed, small_message};
use serde_json::json;

use crate::error::BenchError;
use crate::imap::{ImapConn, Security, bounded, insecure_connector, login_select};
use crate::peers::procfs;
use crate::proxy::ProxyProcess;
use crate::report::{Series, median, print_table, unix_time, write_json};

/// Bound on one batch (about 10 ms at loopback speeds).
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Read buffer of the measuring client: a batch's answers come in a few reads.
const READ_BUF: usize = 64 * 1024;
/// Clock ticks per second of `/proc/<pid>/stat` CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Options of the `pipeline` scenario.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Commands written at once per batch. At most 2,000: a batch and its answers then fit
    /// the loopback socket buffers, so writing it whole before reading cannot stall.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..=2000))]
    pub commands: u32,
    /// Timed batches per configuration and run (after one untimed).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batches: u32,
    /// Messages in the mailbox (`UID FETCH n` cycles through them).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub messages: u32,
    /// A second proxy binary measured in the same runs ("baseline proxy plain"), e.g. one
    /// built from the commit before a change.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
}

/// One way of reaching the mailbox.
struct Target {
    name: &'static str,
    addr: SocketAddr,
}

/// Runs the scenario.
pub async fn run(proxy_bin: &Path, runs: u32, args: &PipelineArgs) -> Result<(), BenchError> {
    let messages = args.messages as usize;
    let commands = args.commands as usize;
    println!(
        "pipeline: batches of {commands} pipelined commands (NOOP, UID FETCH n (FLAGS)) over \
         {messages} messages, {} timed batches per configuration, {runs} runs",
        args.batches
    );
    let seed: Seed = vec![(
        "user1".to_owned(),
        (1..=messages).map(|n| small_message("user1", n)).collect(),
    )];
    let dovecot = Dovecot::builder()
        .users(1)
        .seed_messages(seed)
        .start()
        .map_err(BenchError::Dovecot)?;
    let (cert, key) = dovecot.server_cert_paths();
    let proxy = ProxyProcess::start(proxy_bin, dovecot.imap_addr(), &cert, &key).await?;
    let baseline = match &args.baseline {
        Some(bin) => Some(ProxyProcess::start(bin, dovecot.imap_addr(), &cert, &key).await?),
        None => None,
    };
    let mut targets = vec![
        Target {
            name: "direct plain",
            addr: dovecot.imap_addr(),
        },
        Target {
            name: "proxy plain",
            addr: proxy.plain,
        },
    ];
    if let Some(b) = &baseline {
        targets.push(Target {
            name: "baseline proxy plain",
            addr: b.plain,
        });
    }
    let batch = batch(commands, messages);
    let (user, pass) = dovecot.user(1);
    let cpu_ticks = |p: &ProxyProcess| procfs::stat(p.pid()).map_or(0, |s| s.cpu_ticks);
    let cpu_start = (cpu_ticks(&proxy), baseline.as_ref().map(cpu_ticks));
    let mut series: Vec<Series> = targets
        .iter()
        .map(|t| Series::new(t.name, "commands/s"))
        .collect();
    for r in 1..=runs {
        let rates = run_once(&targets, &user, &pass, &batch, commands, args.batches).await?;
        for ((t, s), rate) in targets.iter().zip(series.iter_mut()).zip(rates) {
            eprintln!("  run {r}: {:<20} {rate:10.0} commands/s", t.name);
            s.push(rate);
        }
    }
    // Every batch through each proxy, the untimed ones included.
    let through = f64::from(runs) * f64::from(args.batches + 1) * commands as f64;
    let cpu_us = |ticks: u64| ticks as f64 / USER_HZ * 1e6 / through;
    let proxy_cpu = cpu_us(cpu_ticks(&proxy).saturating_sub(cpu_start.0));
    let baseline_cpu = baseline
        .as_ref()
        .zip(cpu_start.1)
        .map(|(b, start)| cpu_us(cpu_ticks(b).saturating_sub(start)));
    drop(baseline);
    drop(proxy);
    drop(dovecot);

    print_table(
        &format!("pipelined commands, commands/s ({commands} per batch)"),
        &series,
        0,
    );
    let per_run = |a: &str, b: &str| -> Vec<f64> {
        let sa = series.iter().find(|s| s.name == a);
        let sb = series.iter().find(|s| s.name == b);
        match (sa, sb) {
            (Some(sa), Some(sb)) => sa.runs.iter().zip(&sb.runs).map(|(x, y)| x / y).collect(),
            _ => Vec::new(),
        }
    };
    let vs_direct = per_run("proxy plain", "direct plain");
    let vs_baseline = per_run("proxy plain", "baseline proxy plain");
    println!();
    println!(
        "ratio proxy plain / direct plain = {:.3} (median of per-run ratios)",
        median(&vs_direct)
    );
    if !vs_baseline.is_empty() {
        println!(
            "ratio proxy plain / baseline proxy plain = {:.3} (median of per-run ratios {:?})",
            median(&vs_baseline),
            vs_baseline
                .iter()
                .map(|x| (x * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
    }
    match baseline_cpu {
        Some(b) => println!(
            "proxy CPU per command: {proxy_cpu:.2} us (baseline {b:.2} us, ratio {:.3}; \
             10 ms ticks over {through:.0} commands each)",
            proxy_cpu / b
        ),
        None => println!(
            "proxy CPU per command: {proxy_cpu:.2} us (10 ms ticks over {through:.0} commands)"
        ),
    }
    let summary = json!({
        "scenario": "pipeline",
        "unix_time": unix_time(),
        "runs": runs,
        "commands_per_batch": commands,
        "timed_batches_per_run": args.batches,
        "messages": messages,
        "unit": "commands/s",
        "proxy_cpu_us_per_command": proxy_cpu,
        "baseline_proxy_cpu_us_per_command": baseline_cpu,
        "series": series,
        "ratios": {
            "per_run_proxy_plain/direct_plain": vs_direct,
            "per_run_proxy_plain/baseline_proxy_plain": vs_baseline,
        },
    });
    let path = write_json("pipeline", &summary)?;
    println!("summary written to {}", path.display());
    Ok(())
}

/// `commands` commands, `NOOP` and `UID FETCH n (FLAGS)` in turn, tagged `p0`, `p1`, ...
fn batch(commands: usize, messages: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(commands * 32);
    for i in 0..commands {
        let line = if i % 2 == 0 {
            format!("p{i} NOOP\r\n")
        } else {
            format!("p{i} UID FETCH {} (FLAGS)\r\n", (i / 2) % messages + 1)
        };
        out.extend_from_slice(line.as_bytes());
    }
    out
}

/// One run: a fresh session per configuration (login, SELECT, an untimed batch), then
/// `batches` rounds in which every configuration does one timed batch in turn (each round
/// starting one further along). Returns commands/s per configuration.
async fn run_once(
    targets: &[Target],
    user: &str,
    pass: &str,
    batch_bytes: &[u8],
    commands: usize,
    batches: u32,
) -> Result<Vec<f64>, BenchError> {
    let last = format!("p{}", commands - 1);
    let tls = insecure_connector()?;
    let mut conns = Vec::with_capacity(targets.len());
    for t in targets {
        let mut conn = ImapConn::connect(t.addr, Security::Plain, &tls, t.name, READ_BUF).await?;
        login_select(&mut conn, user, pass).await?;
        one_batch(&mut conn, batch_bytes, commands, &last).await?;
        conns.push(conn);
    }
    let mut secs = vec![0.0f64; targets.len()];
    for round in 0..batches as usize {
        // Each round starts with the next configuration: none always follows the same one.
        for k in 0..conns.len() {
            let i = (round + k) % conns.len();
            let (Some(conn), Some(s)) = (conns.get_mut(i), secs.get_mut(i)) else {
                continue;
            };
            let start = Instant::now();
            one_batch(conn, batch_bytes, commands, &last).await?;
            *s += start.elapsed().as_secs_f64();
        }
    }
    for conn in &mut conns {
        let _ = conn.logout().await;
    }
    Ok(secs
        .into_iter()
        .map(|s| (commands as f64 * f64::from(batches)) / s)
        .collect())
}

/// Writes the batch at once and reads every answer.
async fn one_batch(
    conn: &mut ImapConn,
    batch: &[u8],
    commands: usize,
    last: &str,
) -> Result<(), BenchError> {
    bounded("pipelined batch", BATCH_TIMEOUT, async {
        conn.write_raw(batch).await?;
        conn.read_pipelined(commands, last, "pipelined batch").await
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_alternates_noop_and_fetch_and_cycles_the_messages() {
        let b = batch(6, 2);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "p0 NOOP\r\np1 UID FETCH 1 (FLAGS)\r\np2 NOOP\r\np3 UID FETCH 2 (FLAGS)\r\n\
             p4 NOOP\r\np5 UID FETCH 1 (FLAGS)\r\n"
        );
    }
}
