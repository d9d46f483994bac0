//! `cargo xtask <command>`: workspace automation (the alias lives in `.cargo/config.toml`).
//!
//! ```text
//! cargo xtask test                    install Dovecot & co. if missing, run every test
//! cargo xtask ci                      fmt --check, clippy -D warnings, package, cargo-deny, test
//! cargo xtask demo                    Dovecot + the proxy on 127.0.0.1:1143/1993, admin :8143
//! cargo xtask fuzz [--time SECS] [T]  run each fuzz target (or T) for SECS seconds
//! cargo xtask bench                   criterion benches, then the load scenarios
//! ```
//!
//! Plain std and blocking, except `demo`, which builds a small tokio runtime to wait
//! for Ctrl-C and the proxy at once.

mod bench;
mod ci;
mod demo;
mod error;
mod fuzz;
mod install;
mod run;

use error::XtaskError;

const USAGE: &str = "usage: cargo xtask <test | ci | demo | fuzz [--time SECS] [TARGET] | bench>";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") if args.len() == 1 => ci::test(),
        Some("ci") if args.len() == 1 => ci::ci(),
        Some("demo") if args.len() == 1 => demo::demo(),
        Some("fuzz") => {
            fuzz::parse_args(args.get(1..).unwrap_or_default()).and_then(|a| fuzz::fuzz(&a))
        }
        Some("bench") if args.len() == 1 => bench::bench(),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(XtaskError::Usage(USAGE.to_owned())),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        std::process::exit(e.exit_code());
    }
}
