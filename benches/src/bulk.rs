//! `bulk`: relay throughput of one large `UID FETCH 1:* BODY.PEEK[]`.
//!
//! One user with N messages of S KiB (default 200 × 256 KiB ≈ 52 MB). For each
//! configuration — direct Dovecot plain, proxy plain listener, proxy implicit-TLS listener
//! (backend plain), direct Dovecot implicit TLS — a fresh session logs in, selects INBOX,
//! does one untimed warm-up fetch (page cache, Dovecot's index), then the timed fetches.
//! A fetch is timed from sending the command to its tagged `OK`; the figure is response
//! bytes (everything the server sent for it) per second, in MB/s (10^6 bytes).
//! Configurations are interleaved within each run so that drift hits them alike. With
//! `--baseline`, a second proxy binary (e.g. built from the commit before a change) is
//! measured alongside on its plain listener: the per-run ratio is what the change costs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use imapproxy_testkit::{Dovecot, Seed};
use serde_json::json;
use tokio_rustls::TlsConnector;

use crate::error::BenchError;
use crate::imap::{BULK_READ_BUF, ImapConn, Security, bounded, insecure_connector, login_select};
use crate::proxy::ProxyProcess;
use crate::report::{Series, print_table, unix_time, write_json};

/// Bound on one whole FETCH of the mailbox (about 0.1 s at loopback speeds).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Printable characters for message bodies.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Body line length including CRLF.
const LINE: usize = 78;

/// Options of the `bulk` scenario.
#[derive(Debug, Clone, Args)]
pub struct BulkArgs {
    /// Messages in the mailbox.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub messages: u32,
    /// Size of each message in KiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(4..=16_384))]
    pub size_kib: u32,
    /// Timed fetches per configuration and run (after the warm-up); a run's figure is
    /// their total bytes over their total time.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub fetches: u32,
    /// A second proxy binary measured in the same runs on its plain listener ("baseline
    /// plain").
    #[arg(long)]
    pub baseline: Option<PathBuf>,
}

/// One way of reaching the mailbox.
struct Target<'a> {
    name: &'static str,
    addr: std::net::SocketAddr,
    security: Security,
    /// The proxy process behind `addr`, whose CPU time is read around each fetch.
    process: Option<&'a ProxyProcess>,
}

/// Runs the scenario: `runs` rounds over the four configurations, then the table, the
/// ratios and the JSON summary.
pub async fn run(proxy_bin: &Path, runs: u32, args: &BulkArgs) -> Result<(), BenchError> {
    let size = args.size_kib as usize * 1024;
    let messages = args.messages as usize;
    println!(
        "bulk: UID FETCH 1:* BODY.PEEK[] of {messages} messages x {} KiB ({:.1} MB of bodies), \
         {} timed fetches per configuration, {runs} runs",
        args.size_kib,
        (messages * size) as f64 / 1e6,
        args.fetches
    );
    let dovecot = bulk_dovecot(messages, size)?;
    let (cert, key) = dovecot.server_cert_paths();
    let proxy = ProxyProcess::start(proxy_bin, dovecot.imap_addr(), &cert, &key).await?;
    let baseline = match &args.baseline {
        Some(bin) => Some(ProxyProcess::start(bin, dovecot.imap_addr(), &cert, &key).await?),
        None => None,
    };
    let tls = insecure_connector()?;
    let (user, pass) = dovecot.user(1);

    let mut targets = vec![
        Target {
            name: "direct plain",
            addr: dovecot.imap_addr(),
            security: Security::Plain,
            process: None,
        },
        Target {
            name: "proxy plain",
            addr: proxy.plain,
            security: Security::Plain,
            process: Some(&proxy),
        },
        Target {
            name: "proxy TLS",
            addr: proxy.implicit,
            security: Security::Tls,
            process: Some(&proxy),
        },
        Target {
            name: "direct TLS",
            addr: dovecot.imaps_addr(),
            security: Security::Tls,
            process: None,
        },
    ];
    if let Some(b) = &baseline {
        targets.push(Target {
            name: "baseline plain",
            addr: b.plain,
            security: Security::Plain,
            process: Some(b),
        });
    }
    let mut series: Vec<Series> = targets
        .iter()
        .map(|t| Series::new(t.name, "MB/s"))
        .collect();
    // The proxies' CPU time per byte relayed: what the relay costs, less sensitive than
    // MB/s to other load on a small machine (the proxy competes with Dovecot and the client
    // for the same cores).
    let mut cpu_series: Vec<Series> = targets
        .iter()
        .filter(|t| t.process.is_some())
        .map(|t| Series::new(t.name, "CPU ms/GB"))
        .collect();
    let mut response_bytes = 0u64;
    for r in 1..=runs {
        let totals = run_once(&targets, &tls, &user, &pass, messages, size, args.fetches).await?;
        for ((t, s), m) in targets.iter().zip(series.iter_mut()).zip(totals) {
            response_bytes = m.bytes_per_fetch;
            let mbps = m.bytes as f64 / m.secs / 1e6;
            match m.cpu_ns {
                Some(ns) => {
                    let ms_per_gb = ns as f64 / 1e6 / (m.bytes as f64 / 1e9);
                    eprintln!(
                        "  run {r}: {:<13} {mbps:8.1} MB/s  proxy CPU {ms_per_gb:6.1} ms/GB",
                        t.name
                    );
                    if let Some(c) = cpu_series.iter_mut().find(|c| c.name == t.name) {
                        c.push(ms_per_gb);
                    }
                }
                None => eprintln!("  run {r}: {:<13} {mbps:8.1} MB/s", t.name),
            }
            s.push(mbps);
        }
    }
    drop(baseline);
    drop(proxy);
    drop(dovecot);

    print_table(
        &format!(
            "bulk FETCH relay, MB/s (10^6 bytes/s of response, {response_bytes} bytes per fetch)"
        ),
        &series,
        1,
    );
    if cpu_series.iter().all(|c| !c.runs.is_empty()) {
        println!();
        print_table(
            "proxy CPU time per GB relayed (all threads, /proc/<pid>/task/*/schedstat)",
            &cpu_series,
            1,
        );
    }
    let med = |name: &str| {
        series
            .iter()
            .find(|s| s.name == name)
            .map_or(f64::NAN, |s| s.median)
    };
    let per_run = |a: &str, b: &str| -> Vec<f64> {
        let sa = series.iter().find(|s| s.name == a);
        let sb = series.iter().find(|s| s.name == b);
        match (sa, sb) {
            (Some(sa), Some(sb)) => sa.runs.iter().zip(&sb.runs).map(|(x, y)| x / y).collect(),
            _ => Vec::new(),
        }
    };
    let plain_ratio = med("proxy plain") / med("direct plain");
    let tls_ratio = med("proxy TLS") / med("direct TLS");
    let tls_vs_plain = med("proxy TLS") / med("direct plain");
    println!();
    println!(
        "ratio proxy plain / direct plain = {plain_ratio:.3}  (aim >= 1.00; HAProxy 657/591 = 1.11)  {}",
        verdict(plain_ratio >= 1.0)
    );
    println!("ratio proxy TLS / direct TLS     = {tls_ratio:.3}  (HAProxy 521/196 = 2.66)");
    println!("ratio proxy TLS / direct plain   = {tls_vs_plain:.3}");
    let vs_baseline = per_run("proxy plain", "baseline plain");
    let cpu_vs_baseline: Vec<f64> = match (
        cpu_series.iter().find(|s| s.name == "proxy plain"),
        cpu_series.iter().find(|s| s.name == "baseline plain"),
    ) {
        (Some(a), Some(b)) => a.runs.iter().zip(&b.runs).map(|(x, y)| x / y).collect(),
        _ => Vec::new(),
    };
    if !cpu_vs_baseline.is_empty() {
        println!(
            "CPU per byte, proxy plain / baseline plain = {:.3} (median of per-run ratios {:?})",
            crate::report::median(&cpu_vs_baseline),
            cpu_vs_baseline
                .iter()
                .map(|x| (x * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
    }
    if !vs_baseline.is_empty() {
        println!(
            "ratio proxy plain / baseline plain = {:.3} (median of per-run ratios {:?})",
            crate::report::median(&vs_baseline),
            vs_baseline
                .iter()
                .map(|x| (x * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
    }

    let summary = json!({
        "scenario": "bulk",
        "unix_time": unix_time(),
        "runs": runs,
        "messages": messages,
        "message_bytes": size,
        "timed_fetches_per_run": args.fetches,
        "response_bytes_per_fetch": response_bytes,
        "unit": "MB/s (1e6 bytes of response per second)",
        "series": series,
        "proxy_cpu": cpu_series,
        "ratios": {
            "proxy_plain/direct_plain": plain_ratio,
            "proxy_tls/direct_tls": tls_ratio,
            "proxy_tls/direct_plain": tls_vs_plain,
            "per_run_proxy_plain/direct_plain": per_run("proxy plain", "direct plain"),
            "per_run_proxy_tls/direct_tls": per_run("proxy TLS", "direct TLS"),
            "per_run_proxy_plain/baseline_plain": vs_baseline,
            "per_run_cpu_proxy_plain/baseline_plain": cpu_vs_baseline,
        },
        "aims": {
            "proxy_plain/direct_plain": 1.0,
            "haproxy_plain_ratio": 657.0 / 591.0,
            "haproxy_tls_ratio": 521.0 / 196.0,
        },
    });
    let path = write_json("bulk", &summary)?;
    println!("summary written to {}", path.display());
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "[meets aim]" } else { "[BELOW AIM]" }
}

/// The timed part of one configuration in one run.
struct Measured {
    bytes: u64,
    secs: f64,
    bytes_per_fetch: u64,
    /// CPU time of the target's proxy process during the timed fetches.
    cpu_ns: Option<u64>,
}

/// One run: a fresh session per configuration (login, SELECT, untimed warm-up fetch),
/// then `fetches` rounds in which every configuration does one timed fetch in turn (each
/// round starting one further along), so that load from elsewhere on the machine hits all
/// configurations alike.
async fn run_once(
    targets: &[Target<'_>],
    tls: &TlsConnector,
    user: &str,
    pass: &str,
    messages: usize,
    size: usize,
    fetches: u32,
) -> Result<Vec<Measured>, BenchError> {
    let mut conns = Vec::with_capacity(targets.len());
    for t in targets {
        let mut conn = ImapConn::connect(t.addr, t.security, tls, t.name, BULK_READ_BUF).await?;
        let select = login_select(&mut conn, user, pass).await?;
        let exists = format!("* {messages} EXISTS");
        if !select.untagged.iter().any(|l| l == &exists) {
            return Err(BenchError::protocol(
                format!("{}: SELECT INBOX", t.name),
                format!("no {exists:?} in {:?}", select.untagged),
            ));
        }
        // Warm-up: page cache and Dovecot's cache file, untimed.
        fetch_all(&mut conn, t.name, messages, size).await?;
        conns.push(conn);
    }
    let mut out: Vec<Measured> = targets
        .iter()
        .map(|t| Measured {
            bytes: 0,
            secs: 0.0,
            bytes_per_fetch: 0,
            cpu_ns: t.process.map(|_| 0),
        })
        .collect();
    for round in 0..fetches as usize {
        // Each round starts with the next configuration: none always follows the same one
        // (the one after direct Dovecot, say, measured consistently faster).
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let (Some(t), Some(conn), Some(m)) = (targets.get(i), conns.get_mut(i), out.get_mut(i))
            else {
                continue;
            };
            let cpu_before = t.process.and_then(ProxyProcess::cpu_ns);
            let start = Instant::now();
            let n = fetch_all(conn, t.name, messages, size).await?;
            m.secs += start.elapsed().as_secs_f64();
            let cpu_after = t.process.and_then(ProxyProcess::cpu_ns);
            m.cpu_ns = match (m.cpu_ns, cpu_before, cpu_after) {
                (Some(sum), Some(a), Some(b)) => Some(sum + b.saturating_sub(a)),
                _ => None,
            };
            m.bytes += n;
            m.bytes_per_fetch = n;
        }
    }
    for conn in &mut conns {
        // Polite end; the answer does not matter.
        let _ = conn.send("LOGOUT").await;
    }
    Ok(out)
}

/// One `UID FETCH 1:* BODY.PEEK[]`, checked for completeness; returns the response bytes.
pub(crate) async fn fetch_all(
    conn: &mut ImapConn,
    name: &str,
    messages: usize,
    size: usize,
) -> Result<u64, BenchError> {
    let what = format!("{name}: UID FETCH 1:* BODY.PEEK[]");
    let reply = bounded(
        &what,
        FETCH_TIMEOUT,
        conn.command("UID FETCH 1:* BODY.PEEK[]"),
    )
    .await?;
    let want = (messages * size) as u64;
    if reply.fetches != messages as u64 || reply.literal_bytes != want {
        return Err(BenchError::protocol(
            what,
            format!(
                "{} FETCH responses with {} literal bytes, expected {messages} with {want}",
                reply.fetches, reply.literal_bytes
            ),
        ));
    }
    Ok(reply.bytes)
}

/// A Dovecot whose `user1` holds `messages` messages of `size` bytes.
pub fn bulk_dovecot(messages: usize, size: usize) -> Result<Dovecot, BenchError> {
    let seed: Seed = vec![(
        "user1".to_owned(),
        (1..=messages).map(|n| bulk_message(n, size)).collect(),
    )];
    Dovecot::builder()
        .users(1)
        .seed_messages(seed)
        .start()
        .map_err(BenchError::Dovecot)
}

/// Message `n` of the bulk mailbox: exactly `size` bytes of CRLF lines of printable ASCII,
/// the same in every run.
pub fn bulk_message(n: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Bench <bench@example.org>\r\n\
         To: user1 <user1@example.org>\r\n\
         Subject: Bulk {n}\r\n\
         Date: Tue, 14 Nov 2023 22:13:00 +0000\r\n\
         Message-ID: <bulk.{n}@imapproxy.bench>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n"
    )
    .into_bytes();
    let mut line_no = 0usize;
    while m.len() < size {
        let room = size - m.len();
        // Full lines, but never leave a single byte for the last one; the last line is
        // cut to land exactly on `size`.
        let len = match room {
            r if r > LINE + 1 => LINE,
            r if r > LINE => LINE - 1,
            r => r,
        };
        let mut k = n.wrapping_mul(7).wrapping_add(line_no);
        let mut line = format!("{n:04} {line_no:07} ").into_bytes();
        while line.len() < len.saturating_sub(2) {
            line.push(ALPHABET.get(k % ALPHABET.len()).copied().unwrap_or(b'x'));
            k += 1;
        }
        line.truncate(len.saturating_sub(2));
        if len >= 2 {
            line.extend_from_slice(b"\r\n");
        } else {
            line.push(b'\n');
        }
        m.extend_from_slice(&line);
        line_no += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_messages_have_the_exact_size_and_crlf_lines() {
        for size in [4096, 4097, 4096 + 79, 256 * 1024] {
            let m = bulk_message(3, size);
            assert_eq!(m.len(), size);
            assert!(m.ends_with(b"\r\n"), "size {size}");
            let text = std::str::from_utf8(&m).unwrap();
            assert!(
                text.split("\r\n")
                    .all(|l| !l.contains('\n') && !l.contains('\r'))
            );
        }
        assert_eq!(bulk_message(5, 8192), bulk_message(5, 8192));
        assert_ne!(bulk_message(5, 8192), bulk_message(6, 8192));
    }
}
