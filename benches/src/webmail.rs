//! `webmail`: short implicit-TLS sessions, one per page view, the way a webmail backend
//! talks IMAP (DESIGN.md "Performance", first two rows; issue #3).
//!
//! `--clients` (20) closed-loop clients, each running session after session for
//! `--secs` (10) after a `--warmup-secs` (2) warm-up that is not counted. A session:
//! connect, TLS handshake (implicit TLS, RFC 8314; no resumption unless
//! `--tls-resumption`), greeting, `LOGIN`, `SELECT INBOX`,
//! `UID FETCH 1:5 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])`, `LOGOUT` (to its tagged
//! `OK`). Users `user1..user<--users>` (100), picked round robin over all sessions (or
//! seeded at random with `--random-seed`). Two configurations, in alternating order from
//! run to run:
//!
//! | configuration | path |
//! |---|---|
//! | direct TLS | client → Dovecot imaps port |
//! | proxy TLS | client → proxy `tls = "implicit"` listener → Dovecot plain, `[pool]` reuse on |
//!
//! Figures: sessions/s (sessions that ended inside the window over its length), `LOGIN`
//! latency p50/p99 (sending `LOGIN` to its tagged `OK`), whole-session p50/p99 (connect to
//! the `LOGOUT` reply), and Dovecot's own logins during the window (`imap-login: Info:
//! Login:` lines in its log, counted at both ends) as a share of client sessions.
//! Each proxy measurement uses a freshly started proxy, so the warm-up also fills its
//! session cache.

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

use crate::clients::{self, Window, pick_user};
use crate::error::BenchError;
use crate::imap::{
    ImapConn, SMALL_READ_BUF, Security, insecure_connector, insecure_connector_no_resumption,
};
use crate::proxy::ProxyProcess;
use crate::report::{Series, percentile, print_table, unix_time, write_json};

/// Dovecot logs this for every successful IMAP login, direct or from the proxy.
pub const LOGIN_LINE: &str = "imap-login: Info: Login:";
/// The page view: flags and two header fields of the first five messages.
const FETCH: &str = "UID FETCH 1:5 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])";
/// Messages per mailbox (UIDs 1..=5).
pub(crate) const MESSAGES: usize = 5;
/// Bound on one whole session; a session that takes longer counts as failed.
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Aim: proxy sessions/s at least this multiple of direct (DESIGN.md "Performance").
const AIM_RATIO: f64 = 3.0;
/// Aim: Dovecot logins below this share of client sessions through the proxy.
const AIM_LOGIN_SHARE: f64 = 0.05;

/// Options of the `webmail` scenario.
#[derive(Debug, Clone, Args)]
pub struct WebmailArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub clients: u32,
    /// Users the sessions are spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub users: u32,
    /// Measured seconds per configuration and run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub secs: u64,
    /// Uncounted seconds before each measurement.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60))]
    pub warmup_secs: u64,
    /// Pick each session's user at random, seeded (the same picks in every run), instead
    /// of round robin.
    #[arg(long)]
    pub random_seed: Option<u64>,
    /// Let the client resume TLS sessions (default: a full handshake every session).
    #[arg(long)]
    pub tls_resumption: bool,
    /// The proxy's `[pool] max_per_user`.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_per_user: u32,
}

/// The two ways of reaching Dovecot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Direct,
    Proxy,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct TLS",
            Config::Proxy => "proxy TLS",
        }
    }
}

/// One successful session.
pub(crate) struct Sample {
    /// Sending `LOGIN` to its tagged `OK`.
    pub login_ms: f64,
    /// Connect to the `LOGOUT` reply.
    pub session_ms: f64,
    /// The login was answered with `* OK [XPROXYREUSE]`.
    pub reused: bool,
}

/// One configuration in one run.
#[derive(Debug, Clone, Serialize)]
struct Measurement {
    config: &'static str,
    run: u32,
    window_secs: f64,
    sessions: u64,
    sessions_per_sec: f64,
    login_p50_ms: f64,
    login_p99_ms: f64,
    session_p50_ms: f64,
    session_p99_ms: f64,
    dovecot_logins: u64,
    dovecot_logins_per_session: f64,
    /// Logins answered with `* OK [XPROXYREUSE]` (a cached backend session).
    reused_logins: u64,
    failed: u64,
    failed_outside_window: u64,
    failure_reasons: BTreeMap<String, u64>,
}

/// The printed and summarised figures of one configuration.
struct ConfigSeries {
    rate: Series,
    login_p50: Series,
    login_p99: Series,
    session_p50: Series,
    login_share: Series,
    failed: Series,
}

impl ConfigSeries {
    fn new(config: Config) -> ConfigSeries {
        let n = config.name();
        ConfigSeries {
            rate: Series::new(&format!("{n}, sessions"), "sessions/s"),
            login_p50: Series::new(&format!("{n}, login p50"), "ms"),
            login_p99: Series::new(&format!("{n}, login p99"), "ms"),
            session_p50: Series::new(&format!("{n}, session p50"), "ms"),
            login_share: Series::new(&format!("{n}, Dovecot logins"), "% of sessions"),
            failed: Series::new(&format!("{n}, failed"), "sessions"),
        }
    }

    fn push(&mut self, m: &Measurement) {
        self.rate.push(m.sessions_per_sec);
        self.login_p50.push(m.login_p50_ms);
        self.login_p99.push(m.login_p99_ms);
        self.session_p50.push(m.session_p50_ms);
        self.login_share.push(m.dovecot_logins_per_session * 100.0);
        self.failed.push(m.failed as f64);
    }

    fn all(&self) -> [&Series; 6] {
        [
            &self.rate,
            &self.login_p50,
            &self.login_p99,
            &self.session_p50,
            &self.login_share,
            &self.failed,
        ]
    }
}

/// Everything a measurement needs besides the address.
struct Setup {
    dovecot: Arc<Dovecot>,
    tls: TlsConnector,
    accounts: Arc<Vec<(String, String)>>,
}

/// Runs the scenario.
pub async fn run(proxy_bin: &Path, runs: u32, args: &WebmailArgs) -> Result<(), BenchError> {
    let users = args.users as usize;
    println!(
        "webmail: {} clients, sessions of connect + implicit TLS{} + LOGIN + SELECT INBOX + \
         {FETCH} + LOGOUT over {users} users ({}), {} s measured after {} s warm-up per \
         configuration, {runs} runs",
        args.clients,
        if args.tls_resumption {
            " (resumption allowed)"
        } else {
            " (full handshake)"
        },
        match args.random_seed {
            Some(s) => format!("random, seed {s}"),
            None => "round robin".to_owned(),
        },
        args.secs,
        args.warmup_secs,
    );
    let seed = mailboxes(users);
    // Dovecot runs an imap-login and an imap process per direct session (and an imap
    // process per session the proxy caches): raise the process and client limits well
    // above what 20 clients and 100 users' cached sessions need, and the per-user-and-IP
    // cap above the proxy's max_per_user (all sessions come from 127.0.0.1).
    let extra = "default_client_limit = 4000\n\
                 default_process_limit = 1000\n\
                 service imap {\n  process_limit = 2000\n}\n";
    let dovecot = Dovecot::builder()
        .users(users)
        .max_userip_connections((args.max_per_user + args.clients).max(100))
        .seed_messages(seed)
        .extra_config(extra)
        .start()
        .map_err(BenchError::Dovecot)?;
    let (cert, key) = dovecot.server_cert_paths();
    let setup = Setup {
        accounts: Arc::new(dovecot.users().to_vec()),
        dovecot: Arc::new(dovecot),
        tls: if args.tls_resumption {
            insecure_connector()?
        } else {
            insecure_connector_no_resumption()?
        },
    };
    let pool = pool_section(args.max_per_user);

    let mut direct = ConfigSeries::new(Config::Direct);
    let mut proxied = ConfigSeries::new(Config::Proxy);
    let mut measurements = Vec::new();
    for r in 1..=runs {
        // Alternate the order so that drift (page cache, Dovecot's indexes) hits both.
        let order = if r % 2 == 1 {
            [Config::Direct, Config::Proxy]
        } else {
            [Config::Proxy, Config::Direct]
        };
        for config in order {
            let m = match config {
                Config::Direct => {
                    let res = measure(config, setup.dovecot.imaps_addr(), &setup, args, r).await;
                    if res.is_err() {
                        eprintln!(
                            "--- Dovecot log (tail) ---\n{}",
                            tail(&setup.dovecot.log(), 30)
                        );
                    }
                    res?
                }
                Config::Proxy => {
                    let proxy = ProxyProcess::start_with(
                        proxy_bin,
                        setup.dovecot.imap_addr(),
                        &cert,
                        &key,
                        &pool,
                    )
                    .await?;
                    let res = measure(config, proxy.implicit, &setup, args, r).await;
                    let log = proxy.log();
                    drop(proxy);
                    match &res {
                        Err(_) => {
                            eprintln!("--- proxy output ---\n{log}");
                            eprintln!(
                                "--- Dovecot log (tail) ---\n{}",
                                tail(&setup.dovecot.log(), 30)
                            );
                        }
                        // RUST_LOG=warn: anything logged is worth a look.
                        Ok(_) if !log.trim().is_empty() => {
                            eprintln!("--- proxy output (tail) ---\n{}", tail(&log, 10));
                        }
                        Ok(_) => {}
                    }
                    res?
                }
            };
            eprintln!(
                "  run {r}: {:<10} {:7.1} sessions/s, login p50 {:6.2} ms p99 {:6.2} ms, \
                 session p50 {:6.2} ms, Dovecot logins {:5.1}% of {} sessions, reused {}, \
                 failed {}",
                m.config,
                m.sessions_per_sec,
                m.login_p50_ms,
                m.login_p99_ms,
                m.session_p50_ms,
                m.dovecot_logins_per_session * 100.0,
                m.sessions,
                m.reused_logins,
                m.failed,
            );
            for (reason, n) in &m.failure_reasons {
                eprintln!("      {n} x {reason}");
            }
            match config {
                Config::Direct => direct.push(&m),
                Config::Proxy => proxied.push(&m),
            }
            measurements.push(m);
            // Let the imap processes of the sessions just closed exit.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    drop(setup);

    let rows: Vec<Series> = direct
        .all()
        .iter()
        .zip(proxied.all())
        .flat_map(|(d, p)| [(*d).clone(), p.clone()])
        .collect();
    print_table(
        &format!(
            "webmail: {} clients, {} users, implicit TLS, {} s per configuration and run",
            args.clients, args.users, args.secs
        ),
        &rows,
        2,
    );
    let ratio = proxied.rate.median / direct.rate.median;
    let per_run: Vec<f64> = proxied
        .rate
        .runs
        .iter()
        .zip(&direct.rate.runs)
        .map(|(p, d)| p / d)
        .collect();
    let login_ok = proxied.login_p50.median < direct.login_p50.median;
    let share = proxied.login_share.median / 100.0;
    println!();
    println!(
        "ratio sessions/s proxy TLS / direct TLS = {ratio:.2}  (aim >= {AIM_RATIO:.1}; \
         peers: up-imapproxy 428/224 = 1.91 plain only, nginx 0.96, HAProxy 1.02)  {}",
        verdict(ratio >= AIM_RATIO)
    );
    println!(
        "login p50: proxy {:.2} ms, direct {:.2} ms  (aim: proxy below direct)  {}",
        proxied.login_p50.median,
        direct.login_p50.median,
        verdict(login_ok)
    );
    println!(
        "Dovecot logins through the proxy: {:.2}% of client sessions  (aim < {:.0}%; \
         direct: {:.1}%)  {}",
        share * 100.0,
        AIM_LOGIN_SHARE * 100.0,
        direct.login_share.median,
        verdict(share < AIM_LOGIN_SHARE)
    );
    let failures: f64 = proxied.failed.runs.iter().chain(&direct.failed.runs).sum();
    if failures > 0.0 {
        println!("failed sessions in the measured windows: {failures} (see the runs above)");
    }

    let summary = json!({
        "scenario": "webmail",
        "unix_time": unix_time(),
        "runs": runs,
        "clients": args.clients,
        "users": args.users,
        "measured_secs": args.secs,
        "warmup_secs": args.warmup_secs,
        "user_pick": match args.random_seed {
            Some(s) => format!("random, seed {s}"),
            None => "round robin".to_owned(),
        },
        "tls_resumption": args.tls_resumption,
        "session": ["connect", "implicit TLS", "LOGIN", "SELECT INBOX", FETCH, "LOGOUT"],
        "proxy_pool": pool,
        "series": rows,
        "measurements": measurements,
        "ratios": {
            "sessions_per_sec_proxy/direct": ratio,
            "per_run_sessions_per_sec_proxy/direct": per_run,
            "login_p50_proxy/direct": proxied.login_p50.median / direct.login_p50.median,
            "dovecot_logins_per_proxy_session": share,
        },
        "aims": {
            "sessions_per_sec_proxy/direct": AIM_RATIO,
            "login_p50": "proxy below direct",
            "dovecot_logins_per_proxy_session": AIM_LOGIN_SHARE,
        },
        "peers_sessions_per_sec": {
            "direct_tls": 224, "up-imapproxy_plain": 428, "nginx_tls": 214, "haproxy_tls": 229,
        },
    });
    let path = write_json("webmail", &summary)?;
    println!("summary written to {}", path.display());
    Ok(())
}

/// The `[pool]` section the proxy runs with (DESIGN.md "Configuration").
pub fn pool_section(max_per_user: u32) -> String {
    format!(
        "[pool]\nreuse = true\nwarm = 2\nidle_timeout = \"60s\"\nmax_per_user = {max_per_user}\n\
         wait_timeout = \"10s\"\n"
    )
}

/// One configuration for one window: the clients, the Dovecot log at both ends of the
/// window, the figures.
async fn measure(
    config: Config,
    addr: SocketAddr,
    setup: &Setup,
    args: &WebmailArgs,
    run: u32,
) -> Result<Measurement, BenchError> {
    let window = Window::new(
        Duration::from_secs(args.warmup_secs),
        Duration::from_secs(args.secs),
    );
    let clients_n = args.clients as usize;
    let accounts = Arc::clone(&setup.accounts);
    let tls = setup.tls.clone();
    let seed = args.random_seed;
    let name = config.name();
    let set = clients::spawn(clients_n, window, SESSION_TIMEOUT, move |c, i| {
        let (user, pass) = accounts
            .get(pick_user(c, i, clients_n, accounts.len(), seed))
            .cloned()
            .unwrap_or_default();
        let tls = tls.clone();
        async move { session(addr, Security::Tls, &tls, name, &user, &pass).await }
    });
    tokio::time::sleep_until(window.from.into()).await;
    let before = count_logins(&setup.dovecot).await?;
    tokio::time::sleep_until(window.until.into()).await;
    let after = count_logins(&setup.dovecot).await?;
    let tally = clients::collect(set).await?;
    if tally.ok.is_empty() {
        return Err(BenchError::protocol(
            name,
            format!("no session succeeded; failures: {:?}", tally.reasons),
        ));
    }
    let sessions = tally.ok.len() as u64;
    let mut login: Vec<f64> = tally.ok.iter().map(|s| s.login_ms).collect();
    let mut whole: Vec<f64> = tally.ok.iter().map(|s| s.session_ms).collect();
    let logins = after.saturating_sub(before);
    Ok(Measurement {
        config: name,
        run,
        window_secs: window.secs(),
        sessions,
        sessions_per_sec: sessions as f64 / window.secs(),
        login_p50_ms: percentile(&mut login, 50.0),
        login_p99_ms: percentile(&mut login, 99.0),
        session_p50_ms: percentile(&mut whole, 50.0),
        session_p99_ms: percentile(&mut whole, 99.0),
        dovecot_logins: logins,
        dovecot_logins_per_session: logins as f64 / sessions as f64,
        reused_logins: tally.ok.iter().filter(|s| s.reused).count() as u64,
        failed: tally.failed,
        failed_outside_window: tally.failed_outside,
        failure_reasons: tally.reasons,
    })
}

/// One webmail session over `security` (the scenario's own is implicit TLS), timed.
pub(crate) async fn session(
    addr: SocketAddr,
    security: Security,
    tls: &TlsConnector,
    label: &str,
    user: &str,
    pass: &str,
) -> Result<Sample, BenchError> {
    let start = Instant::now();
    let mut conn = ImapConn::connect(addr, security, tls, label, SMALL_READ_BUF).await?;
    let sent = Instant::now();
    let login = conn.command(&format!("LOGIN {user} {pass}")).await?;
    let login_ms = ms(sent.elapsed());
    let reused = login.untagged.iter().any(|l| l.contains("[XPROXYREUSE]"));
    conn.command("SELECT INBOX").await?;
    let fetch = conn.command(FETCH).await?;
    if fetch.fetches != MESSAGES as u64 {
        return Err(BenchError::protocol(
            format!("{label}: {FETCH}"),
            format!("{} FETCH responses, expected {MESSAGES}", fetch.fetches),
        ));
    }
    conn.logout().await?;
    Ok(Sample {
        login_ms,
        session_ms: ms(start.elapsed()),
        reused,
    })
}

/// Dovecot's login lines so far, read off the runtime thread (the log grows to a few
/// MB; reading it inline would stall every client for that long).
pub async fn count_logins(dovecot: &Arc<Dovecot>) -> Result<u64, BenchError> {
    let d = Arc::clone(dovecot);
    tokio::task::spawn_blocking(move || d.log_count(LOGIN_LINE) as u64)
        .await
        .map_err(|e| BenchError::protocol("reading the Dovecot log", e.to_string()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok { "[meets aim]" } else { "[BELOW AIM]" }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or(&[])
        .join("\n")
}

/// `user1..userN`, each with `MESSAGES` small messages: the mail store of the session
/// scenarios.
pub fn mailboxes(users: usize) -> Seed {
    (1..=users)
        .map(|i| {
            let u = format!("user{i}");
            let msgs = (1..=MESSAGES).map(|n| small_message(&u, n)).collect();
            (u, msgs)
        })
        .collect()
}
