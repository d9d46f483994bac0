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
///
/// Before it runs, the unpacked copies of this workspace's crates that earlier runs left in
/// Cargo's registry cache are removed: the temporary registry gives every run's packages the
/// same name and version, and Cargo, finding a crate of that name and version unpacked
/// already, builds the old sources instead of the new package (seen: a sibling's new API
/// missing in the verify build, on a machine that had packaged before).
pub fn package() -> Result<(), XtaskError> {
    forget_unpacked_packages()?;
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

/// Removes `$CARGO_HOME/registry/{src,cache}/*/<crate>-<version>[.crate]` for this
/// workspace's publishable crates (see [`package`]).
fn forget_unpacked_packages() -> Result<(), XtaskError> {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")));
    let Some(home) = home else {
        return Ok(());
    };
    let version = workspace_version()?;
    let ours: Vec<String> = members()?
        .into_iter()
        .filter(|m| !m.unpublished)
        .map(|m| format!("{}-{version}", m.name))
        .collect();
    for (kind, suffix) in [("src", ""), ("cache", ".crate")] {
        let Ok(registries) = std::fs::read_dir(home.join("registry").join(kind)) else {
            continue;
        };
        for registry in registries.flatten() {
            for name in &ours {
                let path = registry.path().join(format!("{name}{suffix}"));
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else if path.is_file() {
                    std::fs::remove_file(&path)
                } else {
                    continue;
                };
                removed.map_err(|e| {
                    XtaskError::Missing(format!("cannot remove {}: {e}", path.display()))
                })?;
            }
        }
    }
    Ok(())
}

/// `[workspace.package] version`, which every publishable member inherits.
fn workspace_version() -> Result<String, XtaskError> {
    let path = crate::run::root().join("Cargo.toml");
    let manifest = std::fs::read_to_string(&path)
        .map_err(|e| XtaskError::Missing(format!("cannot read {}: {e}", path.display())))?;
    manifest
        .split_once("[workspace.package]")
        .and_then(|(_, section)| {
            section
                .lines()
                .take_while(|l| !l.starts_with('['))
                .find_map(|l| l.strip_prefix("version = "))
        })
        .map(|v| v.trim().trim_matches('"').to_owned())
        .ok_or_else(|| XtaskError::Missing("no [workspace.package] version".into()))
}

/// A workspace member, from its manifest.
struct Member {
    name: String,
    unpublished: bool,
}

/// Every workspace member listed in the root manifest.
fn members() -> Result<Vec<Member>, XtaskError> {
    let root = crate::run::root();
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path)
            .map_err(|e| XtaskError::Missing(format!("cannot read {}: {e}", path.display())))
    };
    let manifest = read(root.join("Cargo.toml"))?;
    let list = manifest
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .ok_or_else(|| XtaskError::Missing("no members list in Cargo.toml".into()))?;
    let mut out = Vec::new();
    for dir in list
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
    {
        let text = read(root.join(dir).join("Cargo.toml"))?;
        let package = text.split("\n[").next().unwrap_or_default();
        let name = package
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .ok_or_else(|| XtaskError::Missing(format!("no package name in {dir}/Cargo.toml")))?
            .trim_matches('"')
            .to_owned();
        let unpublished = package.lines().any(|l| l.trim() == "publish = false");
        out.push(Member { name, unpublished });
    }
    Ok(out)
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

    #[test]
    fn unpublished_list_matches_the_manifests() {
        let members = members().unwrap();
        let mut from_manifests: Vec<String> = members
            .iter()
            .filter(|m| m.unpublished)
            .map(|m| m.name.clone())
            .collect();
        from_manifests.sort();
        let mut listed: Vec<String> = UNPUBLISHED.iter().map(|s| (*s).to_owned()).collect();
        listed.sort();
        assert_eq!(from_manifests, listed);
        assert!(members.len() > UNPUBLISHED.len(), "nothing left to package");
        let version = workspace_version().unwrap();
        assert!(
            version.starts_with(|c: char| c.is_ascii_digit()),
            "{version}"
        );
    }
}
