//! `loadbench`: load scenarios that measure the `imapproxy` binary against direct Dovecot
//! in the same run (DESIGN.md "Performance": the ratios are what matter).
//!
//! Each scenario starts its own sandboxed Dovecot (through `imapproxy-testkit`) and its own
//! proxy process (generated config in a temp dir, free loopback ports, `RUST_LOG=warn`),
//! repeats the measurement `--runs` times, prints every run and the median, and writes a
//! JSON summary to `target/loadbench/<scenario>.json`. It builds nothing: build the proxy
//! first.
//!
//! ```text
//! cargo build --release -p imapproxy
//! cargo run --release -p imapproxy-bench --bin loadbench -- bulk --runs 3
//! ulimit -n 65536; cargo run --release -p imapproxy-bench --bin loadbench -- idle-memory
//! ```
//!
//! Scenarios:
//! - `bulk`: MB/s of one `UID FETCH 1:* BODY.PEEK[]` of 200 × 256 KiB, direct plain,
//!   proxy plain, proxy implicit TLS, direct implicit TLS.
//! - `idle-memory`: proxy `VmRSS` growth per session over 1,000 sessions in IDLE, plain
//!   and implicit-TLS listeners.
//! - `webmail`: short implicit-TLS sessions (LOGIN, SELECT, a header FETCH, LOGOUT) from
//!   20 clients over 100 users: sessions/s, login and session latency, and Dovecot's own
//!   logins per client session, direct vs through the pooling proxy.
//! - `burst`: 50 workers of one user looping short plain sessions against Dovecot capped
//!   at 10 sessions per user and IP: completed loops/s and failures, direct vs proxy.
//! - `burst-held`: 50 workers of one user, each logged in once, looping SELECT + FETCH
//!   with pauses against the same cap: workers served, failures, operations/s, direct vs
//!   proxy (`max_per_user = 8`, parking) vs 8 workers through the proxy.
//! - `failover`: 200 logged-in sessions (half in IDLE) through the proxy in front of two
//!   Dovecots over one mail store; the backend most are on is drained with migration, or
//!   killed: share of sessions that survive with the same data, and the pause they see.
//! - `pipeline`: batches of 1,000 pipelined small commands (`NOOP`, `UID FETCH n (FLAGS)`)
//!   on one plain session: commands/s, direct vs proxy (and vs a `--baseline` proxy binary,
//!   for the cost of a change such as per-command metrics).
//! - `fleet`: login latency through a proxy on local state and one in fleet mode (Redis on
//!   loopback, loopback not trusted, `max_per_user_fleet` set): pool hits and fresh backend
//!   logins, p50/p99 and what fleet mode adds.
//! - `many`: 10,000 logged-in sessions on a proxy with one runtime thread: sessions/s to
//!   open them, proxy `VmRSS` per session in IDLE, NOOP latency (p50/p99/max) and the
//!   proxy's CPU while they idle and poll at 1,000 NOOP/s, against direct Dovecot.
//! - `scaling`: sessions/s and bulk MB/s of the proxy with 1 and 2 runtime worker threads,
//!   each proxy in a cgroup with a CPU quota per thread (the proxy is the bottleneck on a
//!   small machine), and its CPU per session and per GB at each.
//! - `peers`: direct Dovecot, imapproxy and whichever of HAProxy, nginx's mail proxy and
//!   up-imapproxy are installed, interleaved: one-client latency, sessions/s of 20
//!   clients, bulk MB/s, memory per idle session, a one-user burst; one markdown table of
//!   ratios to direct Dovecot in `target/loadbench/peers.md`.
#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod admin;
mod bulk;
mod burst;
mod cgroup;
mod clients;
mod error;
mod failover;
mod fleet;
mod held;
mod idle;
mod imap;
mod many;
mod peers;
mod pipeline;
mod proxy;
mod report;
mod scaling;
mod webmail;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::BenchError;

/// Load scenarios: the imapproxy binary against direct Dovecot, same run, loopback.
#[derive(Debug, Parser)]
#[command(name = "loadbench", version)]
struct Cli {
    /// The release proxy binary (default: <target>/release/imapproxy; build it first with
    /// `cargo build --release -p imapproxy`).
    #[arg(long, global = true, env = "IMAPPROXY_BIN")]
    proxy: Option<PathBuf>,
    /// Repetitions; every run is printed, and the median.
    #[arg(long, global = true, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// The proxy's `[server] threads` (runtime worker threads); default: its own default,
    /// one per core.
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Bulk FETCH relay throughput (MB/s), proxy vs direct Dovecot, plain and TLS.
    Bulk(bulk::BulkArgs),
    /// Proxy memory per logged-in session sitting in IDLE (KiB), plain and TLS listeners.
    IdleMemory(idle::IdleArgs),
    /// Short implicit-TLS webmail sessions over many users (sessions/s, login latency,
    /// Dovecot logins per session), proxy vs direct Dovecot.
    Webmail(webmail::WebmailArgs),
    /// Many workers of one user against Dovecot's per-user+IP cap (loops/s, failures),
    /// proxy vs direct Dovecot.
    Burst(burst::BurstArgs),
    /// Many workers of one user, each logged in once, looping SELECT + FETCH with pauses
    /// against Dovecot's per-user+IP cap (workers served, failures, operations/s), direct
    /// vs the proxy (parking) vs as many workers as the proxy's per-user cap.
    BurstHeld(held::HeldArgs),
    /// Logged-in sessions (half in IDLE) while their backend is drained with migration or
    /// killed (share that survives with the same data, pause), two Dovecots, one store.
    Failover(failover::FailoverArgs),
    /// Batches of pipelined small commands on one session (commands/s), proxy vs direct
    /// Dovecot (and vs a baseline proxy binary).
    Pipeline(pipeline::PipelineArgs),
    /// Login latency added by fleet mode (Redis on loopback): pool hits and fresh backend
    /// logins, a proxy on local state vs one in fleet mode.
    Fleet(fleet::FleetArgs),
    /// 10,000 logged-in sessions through a proxy on one runtime thread: sessions/s to open,
    /// proxy memory per session in IDLE, NOOP latency and proxy CPU while they idle,
    /// against direct Dovecot.
    Many(many::ManyArgs),
    /// imapproxy, HAProxy, nginx's mail proxy and up-imapproxy (those installed) against
    /// direct Dovecot: latency, sessions/s, bulk MB/s, memory per idle session and a
    /// one-user burst, as one markdown table of ratios (target/loadbench/peers.md).
    Peers(peers::PeersArgs),
    /// Sessions/s and bulk MB/s with 1 and 2 proxy worker threads, each given the same CPU
    /// quota per thread (a cgroup), and the proxy's CPU per session and per GB at each.
    Scaling(scaling::ScalingArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadbench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), BenchError> {
    let binary = proxy::find_binary(cli.proxy.as_deref())?;
    if let Some(threads) = cli.threads {
        proxy::set_worker_threads(threads);
        println!("proxy worker threads: {threads}");
    }
    // One thread for the measuring client: the two cores are for the proxy and Dovecot.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("tokio runtime"))?;
    rt.block_on(async {
        match &cli.scenario {
            Scenario::Bulk(a) => bulk::run(&binary, cli.runs, a).await,
            Scenario::IdleMemory(a) => idle::run(&binary, cli.runs, a).await,
            Scenario::Webmail(a) => webmail::run(&binary, cli.runs, a).await,
            Scenario::Burst(a) => burst::run(&binary, cli.runs, a).await,
            Scenario::BurstHeld(a) => held::run(&binary, cli.runs, a).await,
            Scenario::Failover(a) => failover::run(&binary, cli.runs, a).await,
            Scenario::Pipeline(a) => pipeline::run(&binary, cli.runs, a).await,
            Scenario::Fleet(a) => fleet::run(&binary, cli.runs, a).await,
            Scenario::Many(a) => many::run(&binary, cli.runs, a).await,
            Scenario::Peers(a) => peers::run(&binary, cli.runs, a).await,
            Scenario::Scaling(a) => scaling::run(&binary, cli.runs, a).await,
        }
    })
}
