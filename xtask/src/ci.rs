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

/// Supply-chain checks with cargo-deny: licenses, bans and sources, which need nothing but
/// `Cargo.lock` and `deny.toml`. Advisories are left out: they need the RustSec database
/// fetched over the network, which CI runs here cannot count on.
///
/// cargo-deny is installed when missing (`cargo install cargo-deny --locked`: measured 7 min 25 s wall,
/// 4 min 17 s CPU on a shared 2-core machine; then cached in `~/.cargo/bin`).
pub fn cargo_deny() -> Result<(), XtaskError> {
    if !crate::run::root().join("deny.toml").exists() {
        return Err(XtaskError::Missing(
            "no deny.toml at the workspace root".into(),
        ));
    }
    if on_path("cargo-deny").is_none() && !succeeds(cargo().args(["deny", "--version"])) {
        eprintln!("xtask: installing cargo-deny");
        run(cargo().args(["install", "cargo-deny", "--locked"]))?;
    }
    run(cargo().args(["deny", "check", "licenses", "bans", "sources"]))
}
