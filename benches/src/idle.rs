//! `idle-memory`: resident memory the proxy spends on each logged-in session sitting in IDLE.
//!
//! Per run and listener (plain, then implicit TLS, each with a freshly started proxy):
//! open `baseline` sessions (LOGIN, SELECT INBOX, IDLE, `+ idling`), read the proxy's
//! `VmRSS`; open the rest in concurrent batches, all in IDLE; wait `settle` seconds, read
//! `VmRSS` again. KiB per session = (after − baseline) / (sessions − baseline). Then all
//! sessions are closed and `VmRSS` is read once more (memory given back, or not).
//! Direct Dovecot spends a process per session, so there is no direct figure to divide
//! by; the aims are HAProxy's (DESIGN.md "Performance": 4 KB plain, 21 KB TLS).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use imapproxy_testkit::{Dovecot, Seed, small_message};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::error::BenchError;
use crate::imap::{
    COMMAND_TIMEOUT, ImapConn, SMALL_READ_BUF, Security, bounded, insecure_connector, login_select,
};
use crate::proxy::ProxyProcess;
use crate::report::{Series, print_table, unix_time, write_json};
use crate::webmail::tail;

/// HAProxy's memory per idle session on the same kind of machine (DESIGN.md).
const AIM_PLAIN_KIB: f64 = 4.0;
/// See [`AIM_PLAIN_KIB`].
const AIM_TLS_KIB: f64 = 21.0;

/// Options of the `idle-memory` scenario.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Sessions in IDLE at the second measurement.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(20..=5000))]
    pub sessions: u32,
    /// Sessions open at the baseline measurement.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub baseline: u32,
    /// Users the sessions are spread over (round robin).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub users: u32,
    /// Sessions opened concurrently.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub batch: u32,
    /// Seconds to wait after the last session entered IDLE before measuring (the proxy gives
    /// freed memory back once its resident size held still for a second).
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
}

/// One measurement of one listener.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    listener: &'static str,
    run: u32,
    baseline_kib: u64,
    after_kib: u64,
    after_close_kib: u64,
    kib_per_session: f64,
    open_secs: f64,
}

/// Runs the scenario.
pub async fn run(proxy_bin: &Path, runs: u32, args: &IdleArgs) -> Result<(), BenchError> {
    if args.baseline >= args.sessions {
        return Err(BenchError::protocol(
            "arguments",
            "--baseline must be smaller than --sessions",
        ));
    }
    ensure_fd_limit(u64::from(args.sessions))?;
    let users = args.users as usize;
    let per_user = (args.sessions as usize).div_ceil(users);
    println!(
        "idle-memory: {} sessions in IDLE over {users} users, batches of {}, baseline at {}, \
         {runs} runs per listener",
        args.sessions, args.batch, args.baseline
    );

    let names: Vec<String> = (1..=users).map(|i| format!("user{i}")).collect();
    let seed: Seed = names
        .iter()
        .map(|u| (u.clone(), (1..=3).map(|n| small_message(u, n)).collect()))
        .collect();
    // Dovecot runs one imap process per session (client_limit = 1), each of which also
    // talks to stats and anvil: raise the process and client limits well above the
    // session count (a previous listener's processes may still be exiting), and the
    // per-user-and-IP cap above sessions per user (all come from 127.0.0.1).
    let sessions = args.sessions as usize;
    let extra = format!(
        "default_client_limit = {clients}\n\
         default_process_limit = 500\n\
         service imap {{\n  process_limit = {procs}\n}}\n",
        clients = sessions * 4 + 1000,
        procs = sessions * 2 + 100,
    );
    let dovecot = Dovecot::builder()
        .users(users)
        .max_userip_connections(u32::try_from(per_user * 2 + 10).unwrap_or(u32::MAX))
        .seed_messages(seed)
        .extra_config(&extra)
        .start()
        .map_err(BenchError::Dovecot)?;
    let (cert, key) = dovecot.server_cert_paths();
    let tls = insecure_connector()?;
    let accounts: Vec<(String, String)> = dovecot.users().to_vec();

    let mut plain = Series::new("proxy plain", "KiB/session");
    let mut tls_series = Series::new("proxy TLS", "KiB/session");
    let mut samples = Vec::new();
    for r in 1..=runs {
        for (listener, security) in [("plain", Security::Plain), ("TLS", Security::Tls)] {
            // 50 sessions per user sit in IDLE at once: lift the pool's per-user cap, and keep
            // no warm connections so that only sessions are counted.
            let proxy = ProxyProcess::start_with(
                proxy_bin,
                dovecot.imap_addr(),
                &cert,
                &key,
                "[pool]\nmax_per_user = 1000\nwarm = 0\n",
            )
            .await?;
            let addr = match security {
                Security::Plain => proxy.plain,
                Security::Tls => proxy.implicit,
            };
            let result = measure(&proxy, addr, security, &tls, &accounts, args, listener, r).await;
            let sample = match result {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("--- proxy output ---\n{}", proxy.log());
                    eprintln!("--- Dovecot log (tail) ---\n{}", tail(&dovecot.log(), 30));
                    return Err(e);
                }
            };
            eprintln!(
                "  run {r}: {listener:<5} baseline {:>7} KiB, {} sessions {:>7} KiB, \
                 closed {:>7} KiB -> {:6.2} KiB/session (opened in {:.1} s)",
                sample.baseline_kib,
                args.sessions,
                sample.after_kib,
                sample.after_close_kib,
                sample.kib_per_session,
                sample.open_secs
            );
            match security {
                Security::Plain => plain.push(sample.kib_per_session),
                Security::Tls => tls_series.push(sample.kib_per_session),
            }
            samples.push(sample);
            drop(proxy);
            // Let Dovecot's imap processes of the closed sessions exit.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    drop(dovecot);

    let series = [plain, tls_series];
    print_table(
        &format!(
            "idle-memory: proxy VmRSS growth per session in IDLE, KiB \
             ((RSS at {} - RSS at {}) / {})",
            args.sessions,
            args.baseline,
            args.sessions - args.baseline
        ),
        &series,
        2,
    );
    println!();
    for (s, aim) in series.iter().zip([AIM_PLAIN_KIB, AIM_TLS_KIB]) {
        let factor = s.median / aim;
        println!(
            "{:<12} median {:6.2} KiB/session, aim <= {aim} (HAProxy): {}",
            s.name,
            s.median,
            if factor <= 1.0 {
                "[meets aim]".to_owned()
            } else {
                format!("[{factor:.1}x the aim, {:.1} KiB over]", s.median - aim)
            }
        );
    }
    let summary = json!({
        "scenario": "idle-memory",
        "unix_time": unix_time(),
        "runs": runs,
        "sessions": args.sessions,
        "baseline_sessions": args.baseline,
        "users": args.users,
        "batch": args.batch,
        "settle_secs": args.settle_secs,
        "unit": "KiB of proxy VmRSS per session in IDLE",
        "series": series,
        "samples": samples,
        "aims": { "plain": AIM_PLAIN_KIB, "tls": AIM_TLS_KIB },
    });
    let path = write_json("idle-memory", &summary)?;
    println!("summary written to {}", path.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    proxy: &ProxyProcess,
    addr: SocketAddr,
    security: Security,
    tls: &TlsConnector,
    accounts: &[(String, String)],
    args: &IdleArgs,
    listener: &'static str,
    run: u32,
) -> Result<Sample, BenchError> {
    let total = args.sessions as usize;
    let baseline_n = args.baseline as usize;
    let started = Instant::now();
    let mut open = open_sessions(0..baseline_n, addr, security, tls, accounts, args.batch).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline_kib = proxy.rss_kib()?;
    let mut rest =
        open_sessions(baseline_n..total, addr, security, tls, accounts, args.batch).await?;
    open.append(&mut rest);
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after_kib = proxy.rss_kib()?;
    // Close every session from the client side and see what the proxy gives back.
    drop(open);
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after_close_kib = proxy.rss_kib()?;
    let grown = after_kib.saturating_sub(baseline_kib) as f64;
    Ok(Sample {
        listener,
        run,
        baseline_kib,
        after_kib,
        after_close_kib,
        kib_per_session: grown / (total - baseline_n) as f64,
        open_secs,
    })
}

/// Opens sessions `range` (session `i` logs in as account `i % accounts`), `batch` at a
/// time, each left in IDLE.
pub(crate) async fn open_sessions(
    range: std::ops::Range<usize>,
    addr: SocketAddr,
    security: Security,
    tls: &TlsConnector,
    accounts: &[(String, String)],
    batch: u32,
) -> Result<Vec<ImapConn>, BenchError> {
    let mut out = Vec::with_capacity(range.len());
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(batch.max(1) as usize) {
        let mut set = JoinSet::new();
        for &i in chunk {
            let (user, pass) = accounts
                .get(i % accounts.len().max(1))
                .cloned()
                .unwrap_or_default();
            let tls = tls.clone();
            set.spawn(async move { idle_session(i, addr, security, &tls, &user, &pass).await });
        }
        while let Some(joined) = set.join_next().await {
            let conn =
                joined.map_err(|e| BenchError::protocol("session task", e.to_string()))??;
            out.push(conn);
        }
    }
    Ok(out)
}

/// One session: LOGIN, SELECT INBOX, IDLE, and the `+ idling` continuation (RFC 2177).
async fn idle_session(
    i: usize,
    addr: SocketAddr,
    security: Security,
    tls: &TlsConnector,
    user: &str,
    pass: &str,
) -> Result<ImapConn, BenchError> {
    let label = format!("session {i} ({user})");
    let mut conn = ImapConn::connect(addr, security, tls, &label, SMALL_READ_BUF).await?;
    login_select(&mut conn, user, pass).await?;
    bounded(&format!("{label}: IDLE"), COMMAND_TIMEOUT, async {
        conn.send("IDLE").await?;
        conn.read_until_continuation("IDLE").await
    })
    .await?;
    Ok(conn)
}

/// Raises the soft open-file limit to the hard one (the `rlimit` crate does the
/// `setrlimit`), and fails clearly when that is still too low for `sessions` client
/// sockets plus Dovecot's processes, which inherit the limit.
pub(crate) fn ensure_fd_limit(sessions: u64) -> Result<(), BenchError> {
    let need = sessions * 4 + 1024;
    let have = rlimit::increase_nofile_limit(u64::MAX).map_err(BenchError::io("RLIMIT_NOFILE"))?;
    if have < need {
        return Err(BenchError::FdLimit { have, need });
    }
    Ok(())
}
