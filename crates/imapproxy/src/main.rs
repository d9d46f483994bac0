//! `imapproxy`: the proxy binary. Reads the configuration, builds the library pieces, runs the
//! listeners, and stops cleanly on SIGTERM/SIGINT.
#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod actions;
mod admin;
mod build;
mod config;
mod fleet;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod heap;
mod server;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod trim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A fast, secure IMAP proxy.
#[derive(Debug, Parser)]
#[command(name = "imapproxy", version, about)]
struct Cli {
    /// Configuration file (TOML). Without one, built-in defaults are used.
    #[arg(long, short, global = true, env = "IMAPPROXY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and exit.
    Check,
    /// Run the proxy (the default).
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match config::load(cli.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("imapproxy: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = cfg.server.threads.resolve();
    // Before any thread: this may execute the binary again (same process), and then returns
    // only there.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let heap = matches!(cli.command, Some(Command::Run) | None)
        .then(|| heap::prepare(cfg.server.heap_compact, threads));
    server::init_logging(&cfg.log);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Some(heap) = heap {
        heap.log();
    }
    match cli.command {
        Some(Command::Check) => match build::Built::from_config(&cfg) {
            Ok(_) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("imapproxy: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Some(Command::Run) | None => {
            if cli.config.is_none() {
                tracing::warn!(
                    "no --config given: running on built-in defaults \
                     (STARTTLS on 127.0.0.1:1143, implicit TLS on 127.0.0.1:1993, \
                     backend 127.0.0.1:143, self-signed certificate)"
                );
            }
            tracing::info!(threads, "starting the runtime");
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.get())
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("imapproxy: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(server::run(cfg, cli.config.clone())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("imapproxy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
