//! `bench`: criterion micro-benches, then the load scenarios.

use std::process::Command;

use crate::error::XtaskError;
use crate::run::{cargo, root, run};

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

/// The load scenarios, run in order after the criterion benches (each one well under
/// two minutes, `peers` about eleven; see benches/README.md).
pub const LOAD_SCENARIOS: &[LoadScenario] = &[
    // Relay throughput of one big FETCH, plain and TLS.
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["bulk"],
    },
    // Proxy memory per session in IDLE (1,000 sessions: needs the raised open-file limit).
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["idle-memory"],
    },
    // Short implicit-TLS sessions over 100 users: sessions/s, login latency, Dovecot
    // logins per client session.
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["webmail"],
    },
    // 50 workers of one user against Dovecot's cap of 10 per user and IP.
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["burst"],
    },
    // The same, with workers that stay logged in for 200 ms: without it Dovecot's login
    // rate keeps overlapping sessions below the cap, so direct never fails.
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["burst", "--hold-ms", "200"],
    },
    // 50 workers of one user, each logged in once, SELECT + FETCH with 100 ms pauses:
    // parking (park_after 50 ms) serves all 50 through max_per_user = 8; vs direct and vs
    // 8 workers. 5 s windows here (the default of 10 s makes it ~2 minutes).
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["burst-held", "--secs", "5"],
    },
    // 200 logged-in sessions (half in IDLE) on two Dovecots over one store: drain with
    // migration, then kill -9 of the backend 150 of them are on; survival and pauses.
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["failover"],
    },
    // The relay's cost per command: batches of 1,000 pipelined NOOP / UID FETCH n (FLAGS)
    // on one plain session, direct vs proxy (about 10 s).
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["pipeline"],
    },
    // Login latency fleet mode adds (Redis on loopback): pool hits and fresh backend logins,
    // a proxy on local state vs one in fleet mode (about 30 s).
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["fleet"],
    },
    // 10,000 logged-in sessions on a proxy with one runtime thread: sessions/s to open,
    // proxy memory per session in IDLE, NOOP p99 at 1,000 NOOP/s while they idle, proxy CPU;
    // against direct Dovecot (about 2 minutes). Where the hard open-file limit cannot be
    // raised to the proxy's 2 x 10,000 + 64 (no CAP_SYS_RESOURCE), as many as fit.
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["many", "--fit-fd-limit"],
    },
    // Sessions/s and bulk MB/s with 1 and 2 proxy worker threads, each proxy given 0.15
    // cores per thread (a cgroup CPU quota: the proxy is the bottleneck, the clients and
    // Dovecot keep the rest of the machine; without root, no quota), and 1 thread with the
    // 2 threads' quota as a control; about 3 minutes.
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["scaling"],
    },
    // Direct Dovecot, imapproxy and the installed peers (HAProxy, nginx mail, up-imapproxy;
    // missing ones are skipped and named), interleaved: latency, sessions/s, bulk, idle
    // memory, burst; one markdown table in target/loadbench/peers.md. About 11 minutes
    // with all three peers (5 without).
    LoadScenario {
        package: "imapproxy-bench",
        bin: "loadbench",
        args: &["peers"],
    },
];

/// Set (to anything) to have `cargo xtask bench` install the peers of the `peers`
/// scenario first (Debian, as root; their services are not started).
pub const INSTALL_PEERS_ENV: &str = "IMAPPROXY_BENCH_INSTALL_PEERS";

/// Soft open-file limit the load scenarios run under: `idle-memory` holds 1,000 client
/// sockets and its Dovecot a process per session, `many`'s proxy 20,064 files for 10,000
/// sessions (loadbench checks what it needs).
const NOFILE: u32 = 65536;

/// `cargo xtask bench` (with [`INSTALL_PEERS_ENV`] set, installs the peers first).
pub fn bench() -> Result<(), XtaskError> {
    crate::install::ensure_test_tools()?;
    if std::env::var_os(INSTALL_PEERS_ENV).is_some() {
        crate::install::ensure_bench_peers()?;
    }
    run(cargo().args(["bench", "--workspace"]))?;
    run_load_scenarios()
}

/// Builds the release proxy (loadbench runs that binary and builds nothing), then runs
/// every entry of [`LOAD_SCENARIOS`] in release mode under a raised open-file limit.
pub fn run_load_scenarios() -> Result<(), XtaskError> {
    if LOAD_SCENARIOS.is_empty() {
        eprintln!("xtask: no load scenarios registered yet (xtask/src/bench.rs, LOAD_SCENARIOS)");
        return Ok(());
    }
    run(cargo().args(["build", "--release", "-p", "imapproxy"]))?;
    for s in LOAD_SCENARIOS {
        let mut inner = cargo();
        inner
            .args(["run", "--release", "-p", s.package, "--bin", s.bin, "--"])
            .args(s.args)
            // What the peers table names as its command.
            .env("LOADBENCH_COMMAND", "cargo xtask bench");
        run(&mut with_nofile(&inner))?;
    }
    Ok(())
}

/// `inner` run through `sh`, which first raises the open-file limit to [`NOFILE`] when
/// it is lower (to the hard limit when [`NOFILE`] is not allowed), then `exec`s it with
/// `inner`'s environment changes. The limit is inherited by cargo, loadbench, the proxy
/// and Dovecot.
fn with_nofile(inner: &Command) -> Command {
    let script = format!(
        "cur=$(ulimit -n); \
         if [ \"$cur\" != unlimited ] && [ \"$cur\" -lt {NOFILE} ]; then \
           ulimit -n {NOFILE} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\" 2>/dev/null || \
           echo \"xtask: could not raise the open-file limit above $cur\" >&2; \
         fi; exec \"$@\""
    );
    let mut c = Command::new("sh");
    c.current_dir(inner.get_current_dir().map_or_else(root, ToOwned::to_owned))
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        match value {
            Some(v) => c.env(key, v),
            None => c.env_remove(key),
        };
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_is_a_loadbench_subcommand() {
        let known = [
            "bulk",
            "idle-memory",
            "webmail",
            "burst",
            "burst-held",
            "failover",
            "pipeline",
            "fleet",
            "many",
            "scaling",
            "peers",
        ];
        for s in LOAD_SCENARIOS {
            assert_eq!((s.package, s.bin), ("imapproxy-bench", "loadbench"));
            assert!(s.args.first().is_some_and(|a| known.contains(a)));
        }
    }

    #[test]
    fn nofile_wrapper_execs_the_inner_command_with_its_arguments() {
        let mut inner = Command::new("echo");
        inner.args(["a b", "c"]);
        let out = with_nofile(&inner).output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b c\n");
        let mut env = Command::new("sh");
        env.args(["-c", "echo \"$LOADBENCH_COMMAND\""])
            .env("LOADBENCH_COMMAND", "cargo xtask bench");
        let out = with_nofile(&env).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "cargo xtask bench\n");
        let mut limit = Command::new("sh");
        limit.args(["-c", "ulimit -n"]);
        let out = with_nofile(&limit).output().unwrap();
        let n = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(n == "unlimited" || n.parse::<u64>().unwrap() > 0, "{n}");
    }
}
