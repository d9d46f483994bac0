//! `fleet`: what fleet mode adds to a login.
//!
//! Two proxies in front of one Dovecot, the same binary and settings but for `[fleet]`: one
//! on local state, one sharing its state through a redis-server on loopback, with
//! `[pool] max_per_user_fleet` set. Loopback is not a trusted network here, so every login
//! asks Redis for the fleet's failure counts (the worst case: trusted addresses skip it),
//! and every fresh backend login takes a place in Redis too.
//!
//! One client logs in and out `--logins` times per proxy and run, the two proxies taking
//! turns login by login, so that load from elsewhere hits them alike. Timed: connect to the
//! tagged `OK` of `LOGIN`. Two cases: with `[pool] reuse` (a pool hit: no backend round trip,
//! only the throttle's Redis round trip) and without (a fresh backend login, plus the place).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use clap::Args;
use imapproxy_testkit::{Dovecot, RedisServer};
use serde_json::json;

use crate::error::BenchError;
use crate::imap::{ImapConn, Security, insecure_connector};
use crate::proxy::ProxyProcess;
use crate::report::{Series, median, percentile, print_table, unix_time, write_json};

/// Options of the `fleet` scenario.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Logins per proxy, case and run.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub logins: u32,
}

/// The `[pool]` and `[limits]` both proxies share, and the fleet's extra sections.
fn config(reuse: bool, redis: Option<&str>) -> String {
    let (cap, fleet) = match redis {
        Some(url) => (
            "max_per_user_fleet = 10\n",
            format!("[fleet]\nredis_url = \"{url}\"\n"),
        ),
        None => ("", String::new()),
    };
    format!(
        "[pool]\nreuse = {reuse}\n{cap}\n[limits]\ntrusted_networks = []\n\
         max_connections_per_ip = 0\nmax_new_connections_per_ip_per_sec = 0\n\n{fleet}"
    )
}

/// Runs the scenario.
pub async fn run(proxy_bin: &Path, runs: u32, args: &FleetArgs) -> Result<(), BenchError> {
    let logins = args.logins as usize;
    println!(
        "fleet: login latency through a proxy on local state and one in fleet mode (Redis on \
         loopback), {logins} logins each per case, {runs} runs"
    );
    let dovecot = Dovecot::builder()
        .users(1)
        .start()
        .map_err(BenchError::Dovecot)?;
    let redis = RedisServer::start();
    let (cert, key) = dovecot.server_cert_paths();
    let (user, pass) = dovecot.user(1);
    let mut summary = Vec::new();
    for (case, reuse) in [("pool hit", true), ("fresh backend login", false)] {
        let local = ProxyProcess::start_with(
            proxy_bin,
            dovecot.imap_addr(),
            &cert,
            &key,
            &config(reuse, None),
        )
        .await?;
        let fleet = ProxyProcess::start_with(
            proxy_bin,
            dovecot.imap_addr(),
            &cert,
            &key,
            &config(reuse, Some(&redis.url())),
        )
        .await?;
        let names = ["local p50", "fleet p50", "local p99", "fleet p99"];
        let mut series: Vec<Series> = names.iter().map(|n| Series::new(n, "ms")).collect();
        for r in 1..=runs {
            let [mut a, mut b] = [Vec::new(), Vec::new()];
            for _ in 0..logins {
                a.push(login_ms(local.plain, &user, &pass).await?);
                b.push(login_ms(fleet.plain, &user, &pass).await?);
            }
            let figures = [
                percentile(&mut a, 50.0),
                percentile(&mut b, 50.0),
                percentile(&mut a, 99.0),
                percentile(&mut b, 99.0),
            ];
            eprintln!(
                "  run {r} ({case}): p50 local {:.3} fleet {:.3} ms, p99 local {:.3} fleet {:.3} ms",
                figures[0], figures[1], figures[2], figures[3]
            );
            for (s, x) in series.iter_mut().zip(figures) {
                s.push(x);
            }
        }
        print_table(&format!("login latency, {case} (ms)"), &series, 3);
        let added = |i: usize, j: usize| -> Vec<f64> {
            series[j]
                .runs
                .iter()
                .zip(&series[i].runs)
                .map(|(f, l)| f - l)
                .collect()
        };
        let (p50, p99) = (added(0, 1), added(2, 3));
        println!(
            "added by fleet mode ({case}): p50 {:+.3} ms, p99 {:+.3} ms (medians of per-run \
             differences)",
            median(&p50),
            median(&p99)
        );
        summary.push(json!({
            "case": case,
            "series": series,
            "added_p50_ms_per_run": p50,
            "added_p99_ms_per_run": p99,
        }));
    }
    let path = write_json(
        "fleet",
        &json!({
            "scenario": "fleet",
            "unix_time": unix_time(),
            "runs": runs,
            "logins": logins,
            "cases": summary,
        }),
    )?;
    println!("summary written to {}", path.display());
    Ok(())
}

/// Connect, LOGIN (timed to its tagged OK), LOGOUT.
async fn login_ms(addr: SocketAddr, user: &str, pass: &str) -> Result<f64, BenchError> {
    let tls = insecure_connector()?;
    let started = Instant::now();
    let mut conn = ImapConn::connect(addr, Security::Plain, &tls, "fleet", 4096).await?;
    conn.command(&format!("LOGIN {user} {pass}")).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    conn.logout().await?;
    Ok(ms)
}
