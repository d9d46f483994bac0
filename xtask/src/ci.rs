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

/// `cargo xtask ci`: formatting, lints, packaging, supply-chain checks, then `test`.
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
    package()?;
    cargo_deny()?;
    test()
}

/// Workspace members that are never published (`publish = false`): test support, automation,
/// examples and load benches. Every other member must package.
const UNPUBLISHED: &[&str] = &[
    "imapproxy-testkit",
    "xtask",
    "imapproxy-examples",
    "imapproxy-bench",
];

/// Every publishable crate, packaged as crates.io would receive it and built from that
/// package alone: metadata, README and only files inside the crate directory (tests that
/// include `fuzz/` or need the unpublished testkit are excluded by each crate's manifest),
/// path dependencies with versions. The crates depend on each other, so they are packaged
/// together: `cargo package --workspace` (Cargo ≥ 1.89) resolves the unpublished siblings
/// through a temporary local registry and everything else from crates.io, the only network
/// access it needs; `--locked` keeps the versions of the committed `Cargo.lock`.
///
/// The binary `imapproxy` is packaged too: `cargo install imapproxy` is a real way to get
/// it, and its package is the one place the published crates are built together the way
/// the binary uses them. `--all-features` also builds the route crate's `http` and `redis`
/// directories from its own package.
///
/// Each package is verify-built (`cargo build` of the unpacked `.crate` into `target/`): that
/// is the point of the step and nearly all of its time, since the unpacked crates, and the
/// dependency feature sets each selects on its own, are not the workspace's build. Measured
/// on the shared 2-core machine (other builds running): 7 min 42 s wall (≈ 5 min CPU) with an
/// empty `target/`, as on a fresh CI machine, of which 3 min for the binary; 30 s once
/// `target/` holds the dependencies (only the six crates are rebuilt). Verifying only the
/// libraries would save those 3 min on a cold machine, but `cargo package` verifies all or
/// none of one invocation; the whole step is kept, and `--no-verify` is the knob should CI
/// ever run short of its 30 minutes.
///
/// `--allow-dirty`: like every other step this checks what is on disk, committed or not;
/// nothing is published here.
pub fn package() -> Result<(), XtaskError> {
    let mut cmd = cargo();
    cmd.args([
        "package",
        "--workspace",
        "--all-features",
        "--locked",
        "--allow-dirty",
    ]);
    for name in UNPUBLISHED {
        cmd.args(["--exclude", name]);
    }
    run(&mut cmd)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `(name, publish = false)` of every workspace member listed in the root manifest.
    fn members() -> Vec<(String, bool)> {
        let root = crate::run::root();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let list = manifest
            .split_once("members = [")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(list, _)| list)
            .unwrap();
        list.split(',')
            .map(|m| m.trim().trim_matches('"'))
            .filter(|m| !m.is_empty())
            .map(|dir| {
                let text = std::fs::read_to_string(root.join(dir).join("Cargo.toml")).unwrap();
                let package = text.split("\n[").next().unwrap_or_default();
                let name = package
                    .lines()
                    .find_map(|l| l.strip_prefix("name = "))
                    .unwrap()
                    .trim_matches('"')
                    .to_owned();
                let unpublished = package.lines().any(|l| l.trim() == "publish = false");
                (name, unpublished)
            })
            .collect()
    }

    #[test]
    fn unpublished_list_matches_the_manifests() {
        let mut from_manifests: Vec<String> = members()
            .into_iter()
            .filter(|(_, unpublished)| *unpublished)
            .map(|(name, _)| name)
            .collect();
        from_manifests.sort();
        let mut listed: Vec<String> = UNPUBLISHED.iter().map(|s| (*s).to_owned()).collect();
        listed.sort();
        assert_eq!(from_manifests, listed);
        assert!(
            members().len() > UNPUBLISHED.len(),
            "nothing left to package"
        );
    }
}
