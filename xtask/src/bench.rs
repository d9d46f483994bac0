//! `bench`: criterion micro-benches, then the load scenarios.

use crate::error::XtaskError;
use crate::run::{cargo, run};

/// A load scenario: a binary that drives the proxy and direct Dovecot in the same
/// run and prints ratios (DESIGN.md "Performance").
pub struct LoadScenario {
    /// Package that holds the binary.
    pub package: &'static str,
    /// Binary name (`cargo run --release -p <package> --bin <bin>`).
    pub bin: &'static str,
    /// Extra arguments.
    pub args: &'static [&'static str],
}

/// The load scenarios, run in order after the criterion benches.
///
/// Hook for the lead: add an entry per scenario binary here.
pub const LOAD_SCENARIOS: &[LoadScenario] = &[];

/// `cargo xtask bench`.
pub fn bench() -> Result<(), XtaskError> {
    crate::install::ensure_test_tools()?;
    run(cargo().args(["bench", "--workspace"]))?;
    run_load_scenarios()
}

/// Runs every entry of [`LOAD_SCENARIOS`] in release mode.
pub fn run_load_scenarios() -> Result<(), XtaskError> {
    if LOAD_SCENARIOS.is_empty() {
        eprintln!("xtask: no load scenarios registered yet (xtask/src/bench.rs, LOAD_SCENARIOS)");
    }
    for s in LOAD_SCENARIOS {
        run(cargo()
            .args(["run", "--release", "-p", s.package, "--bin", s.bin, "--"])
            .args(s.args))?;
    }
    Ok(())
}
