//! glibc's allocator set for a proxy's heap (glibc only): thousands of sessions, each a few
//! small allocations that live as long as the session, made between the short-lived ones of
//! every login.
//!
//! By default glibc keeps freed chunks of up to 1 KiB in a cache per thread (tcache, 7 of
//! each size) and chunks of up to 128 bytes in fast bins, and neither merges with its free
//! neighbours; each thread that meets contention gets an arena of its own. After a burst of
//! logins that leaves a heap of small free holes between the sessions that stay, holes no
//! later request of another size fits and that [`crate::trim`] cannot give back (a page
//! goes back only when it is free as a whole). Without the caches and fast bins, a freed
//! chunk merges with its neighbours at once; with fewer arenas, the threads share one set of
//! holes. Measured (`loadbench --runs 3 peers --only idle`, Dovecot 2.3, 2 worker threads,
//! 100 users), memory per session in `IDLE`, plain: 2.99 KiB (3.08, 2.99, 2.97) by default,
//! 2.41 without the caches, 2.23 (2.19, 2.23, 2.24) with fast bins off and one arena too;
//! from 200 to 1,000 sessions 2.6 → 2.37; TLS 11.0 → 10.0.
//!
//! The price: each allocation and each free takes its arena's lock, which the cache skipped.
//! The relay allocates nothing per chunk and a login about 150 times; sessions/s, login
//! latency and the relay's CPU per GB moved within the noise of three runs. Threads share an
//! arena four to one, so that a many-core host does not queue on one lock.
//!
//! The cache can only be set before the process's first allocation, from the environment
//! (`GLIBC_TUNABLES`). So at start, before any thread, the binary executes itself again:
//! the same process id, arguments and environment, plus `GLIBC_TUNABLES` and a marker that
//! stops it from doing so twice (glibc drops `GLIBC_TUNABLES` itself for a binary that
//! gains privileges, file capabilities say: then the process runs on glibc's defaults).
//! An operator's own `GLIBC_TUNABLES` is left as it is (set it empty to keep glibc's defaults
//! without a configuration file: under a debugger or valgrind, say), and `[server]
//! heap_compact = false` turns this off.

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::os::unix::process::CommandExt;
use std::process::Command;

use tracing::{info, warn};

/// Set, to the settings asked for, in the process that was executed again (the
/// configuration's environment ignores it).
const MARKER: &str = "IMAPPROXY_HEAP_COMPACTED";
const TUNABLES: &str = "GLIBC_TUNABLES";
/// Worker threads per arena.
const THREADS_PER_ARENA: usize = 4;

/// What [`prepare`] found or did, to be logged once logging is up.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// `[server] heap_compact = false`.
    Off,
    /// The operator set `GLIBC_TUNABLES`: left as it is.
    Operators,
    /// Running with these settings.
    Compact(String),
    /// Executed again with these settings, but they are not in the environment now (glibc
    /// drops them for a binary that gains privileges).
    Dropped(String),
    /// Executing again failed: glibc's defaults.
    Failed(std::io::Error),
}

/// The settings for `threads` worker threads.
fn tunables(threads: NonZeroUsize) -> String {
    let arenas = threads.get().div_ceil(THREADS_PER_ARENA);
    format!("glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0:glibc.malloc.arena_max={arenas}")
}

/// Executes the binary again with the compact settings, unless that was done already, is
/// turned off, or the operator set their own. Returns only when it did not execute again.
/// Call it before any thread starts.
pub(crate) fn prepare(enabled: bool, threads: NonZeroUsize) -> Outcome {
    decide(
        enabled,
        threads,
        std::env::var_os(MARKER),
        std::env::var_os(TUNABLES),
        exec_again,
    )
}

/// [`prepare`]'s decision, the environment and the execution passed in.
fn decide(
    enabled: bool,
    threads: NonZeroUsize,
    marker: Option<OsString>,
    operators: Option<OsString>,
    exec: impl FnOnce(&str) -> std::io::Error,
) -> Outcome {
    if let Some(asked) = marker {
        let asked = asked.to_string_lossy().into_owned();
        return if operators.is_some_and(|t| t == *asked) {
            Outcome::Compact(asked)
        } else {
            Outcome::Dropped(asked)
        };
    }
    if !enabled {
        return Outcome::Off;
    }
    if operators.is_some() {
        return Outcome::Operators;
    }
    Outcome::Failed(exec(&tunables(threads)))
}

/// Replaces this process's image with itself, `tunables` added to its environment. Returns
/// only on failure.
fn exec_again(tunables: &str) -> std::io::Error {
    let mut args = std::env::args_os();
    let mut command = Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command
        .args(args)
        .env(TUNABLES, tunables)
        .env(MARKER, tunables)
        .exec()
}

impl Outcome {
    /// One line in the log, once logging is up.
    pub(crate) fn log(&self) {
        match self {
            Self::Off => info!("heap: glibc's allocator defaults ([server] heap_compact = false)"),
            Self::Operators => info!("heap: GLIBC_TUNABLES set by the operator, left as it is"),
            Self::Compact(tunables) => info!(%tunables, "heap: compact allocator settings"),
            Self::Dropped(tunables) => warn!(
                %tunables,
                "heap: glibc ignored the compact allocator settings (a binary with file \
                 capabilities or setuid?); running on its defaults"
            ),
            Self::Failed(error) => warn!(
                %error,
                "heap: cannot execute the binary again with compact allocator settings; \
                 running on glibc's defaults"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    fn never(_: &str) -> std::io::Error {
        panic!("executed again")
    }

    #[test]
    fn executes_again_once_with_an_arena_per_four_threads() {
        let mut asked = String::new();
        let out = decide(true, threads(2), None, None, |t| {
            asked = t.to_owned();
            std::io::Error::other("exec refused")
        });
        assert!(matches!(out, Outcome::Failed(_)), "{out:?}");
        assert_eq!(
            asked,
            "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0:glibc.malloc.arena_max=1"
        );
        assert!(tunables(threads(4)).ends_with("arena_max=1"));
        assert!(tunables(threads(5)).ends_with("arena_max=2"));
        assert!(tunables(threads(64)).ends_with("arena_max=16"));

        // Executed again: the marker says so, and it does not go round again.
        let t = OsString::from(&asked);
        let out = decide(true, threads(2), Some(t.clone()), Some(t.clone()), never);
        assert!(
            matches!(&out, Outcome::Compact(s) if *s == asked),
            "{out:?}"
        );
        // Even when the configuration now says otherwise.
        let out = decide(false, threads(2), Some(t.clone()), Some(t.clone()), never);
        assert!(matches!(out, Outcome::Compact(_)), "{out:?}");
        // glibc dropped the variable: said, not retried.
        let out = decide(true, threads(2), Some(t), None, never);
        assert!(matches!(out, Outcome::Dropped(_)), "{out:?}");
    }

    #[test]
    fn leaves_the_operators_settings_and_a_disabled_heap_alone() {
        let theirs = Some(OsString::from("glibc.malloc.arena_max=8"));
        assert!(matches!(
            decide(true, threads(2), None, theirs.clone(), never),
            Outcome::Operators
        ));
        assert!(matches!(
            decide(false, threads(2), None, theirs, never),
            Outcome::Off
        ));
        assert!(matches!(
            decide(false, threads(2), None, None, never),
            Outcome::Off
        ));
        // Not the settings asked for: said, not retried.
        let out = decide(
            true,
            threads(2),
            Some(OsString::from(tunables(threads(2)))),
            Some(OsString::from("glibc.malloc.arena_max=8")),
            never,
        );
        assert!(matches!(out, Outcome::Dropped(_)), "{out:?}");
    }
}
