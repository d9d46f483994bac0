//! `test` and `ci`.

use crate::error::XtaskError;
use crate::install;
use crate::run::{cargo, on_path, run, succeeds};

/// `cargo xtask test`: install what the integration tests need, then run every
/// test target and the doctests.
pub fn test() -> Result<(), XtaskError> {
    install::ensure_test_tools()?;
    run(cargo().args(["test", "--workspace", "--all-targets"]))?;
    // --all-targets does not include doctests.
    run(cargo().args(["test", "--workspace", "--doc"]))
}

/// `cargo xtask ci`: formatting, lints, supply-chain checks, then `test`.
pub fn ci() -> Result<(), XtaskError> {
    install::ensure_rust_components()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    cargo_deny()?;
    test()
}

/// Supply-chain checks with cargo-deny (licenses, bans, sources; advisories need a
/// network database, so they run where one is reachable).
///
/// Hook for whoever owns `deny.toml`: runs when both `deny.toml` and cargo-deny are
/// present, and says so when skipped.
pub fn cargo_deny() -> Result<(), XtaskError> {
    if !crate::run::root().join("deny.toml").exists() {
        eprintln!("xtask: cargo-deny skipped: no deny.toml yet");
        return Ok(());
    }
    if on_path("cargo-deny").is_none() && !succeeds(cargo().args(["deny", "--version"])) {
        eprintln!("xtask: cargo-deny skipped: not installed (`cargo install cargo-deny --locked`)");
        return Ok(());
    }
    run(cargo().args(["deny", "check", "licenses", "bans", "sources"]))
}
