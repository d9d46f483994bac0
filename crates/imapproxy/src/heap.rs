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
//! from 200 to 1,000 sessions 2.6 → 2.37; TLS 11.0 → 10.0. The binary with this module, in
//! the README's peers table (5 runs): 2.3 KiB against HAProxy's 2.6.
//!
//! The price: each allocation and each free takes its arena's lock, which the cache skipped.
//! The relay allocates nothing per chunk and a login about 150 times; sessions/s, login
//! latency and the relay's CPU per GB moved within the noise of four alternated rounds of
//! three runs (on, off, off, on), and the CPU per NOOP over 10,000 sessions did not rise.
//! Threads share an arena four to one, so that a many-core host does not queue on one lock.
//!
//! The cache can only be set before the process's first allocation, from the environment
//! (`GLIBC_TUNABLES`). So at start, before any thread, the binary executes itself again
//! through `/proc/self/exe` (the file it was started from, even if an upgrade replaced it
//! since): the same process id, arguments and environment, plus `GLIBC_TUNABLES` and a marker
//! that stops it from doing so twice; it then names itself again as it was named (exec
//! would call it `exe`, which `pgrep`, `killall` and monitoring go by). It does not where it
//! cannot work, and says so in the log:
//! - a process that gained privileges (setuid, or file capabilities such as
//!   `cap_net_bind_service` to bind port 143): glibc ignores malloc settings there (2.36
//!   drops some, 2.39 all). Give the capability with systemd's `AmbientCapabilities=`
//!   instead;
//! - a binary started through the dynamic loader (`ld-linux-x86-64.so.2 imapproxy ...`):
//!   `/proc/self/exe` is the loader, which would not take the proxy's arguments.
//!
//! An operator's own `GLIBC_TUNABLES` is left as it is (set it empty to keep glibc's defaults
//! without a configuration file: under a debugger or valgrind, say), and `[server]
//! heap_compact = false` turns this off.

use std::ffi::{CString, OsString};
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use tracing::{info, warn};

/// Set, to the settings asked for, in the process that was executed again (the
/// configuration's environment ignores it).
const MARKER: &str = "IMAPPROXY_HEAP_COMPACTED";
const TUNABLES: &str = "GLIBC_TUNABLES";
/// Worker threads per arena.
const THREADS_PER_ARENA: usize = 4;
/// The longest name the kernel keeps for a thread (`comm`), its terminating zero left out.
const NAME_MAX: usize = 15;

/// What [`prepare`] found or did, to be logged once logging is up.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// `[server] heap_compact = false`.
    Off,
    /// The operator set `GLIBC_TUNABLES`: left as it is.
    Operators,
    /// Running with these settings.
    Compact(String),
    /// Executed again with these settings, but they are not in the environment as asked.
    Dropped(String),
    /// Not executed again: the process gained privileges, where glibc ignores the settings.
    Privileged,
    /// Not executed again: started through the dynamic loader.
    Loader,
    /// Executing again failed: glibc's defaults.
    Failed(std::io::Error),
}

/// What the process found at start.
#[derive(Debug, Default)]
struct Start {
    /// The marker's value: this is the process executed again.
    marker: Option<OsString>,
    /// `GLIBC_TUNABLES`.
    tunables: Option<OsString>,
    /// The kernel's `AT_SECURE`: setuid, setgid or file capabilities.
    privileged: bool,
    /// `/proc/self/exe` is the dynamic loader.
    loader: bool,
}

/// The settings for `threads` worker threads.
fn tunables(threads: NonZeroUsize) -> String {
    let arenas = threads.get().div_ceil(THREADS_PER_ARENA);
    format!("glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0:glibc.malloc.arena_max={arenas}")
}

/// Executes the binary again with the compact settings, unless that was done already, is
/// turned off, the operator set their own, or it cannot work. Returns only when it did not
/// execute again. Call it before any thread starts.
pub(crate) fn prepare(enabled: bool, threads: NonZeroUsize) -> Outcome {
    let start = Start {
        marker: std::env::var_os(MARKER),
        tunables: std::env::var_os(TUNABLES),
        privileged: privileged(),
        loader: std::env::current_exe().is_ok_and(|exe| is_loader(&exe)),
    };
    let outcome = decide(enabled, threads, start, exec_again);
    if matches!(outcome, Outcome::Compact(_) | Outcome::Dropped(_)) {
        rename();
    }
    outcome
}

/// [`prepare`]'s decision, what the process found and the execution passed in.
fn decide(
    enabled: bool,
    threads: NonZeroUsize,
    start: Start,
    exec: impl FnOnce(&str) -> std::io::Error,
) -> Outcome {
    if let Some(asked) = start.marker {
        let asked = asked.to_string_lossy().into_owned();
        return if start.tunables.is_some_and(|t| t == *asked) {
            Outcome::Compact(asked)
        } else {
            Outcome::Dropped(asked)
        };
    }
    if !enabled {
        return Outcome::Off;
    }
    if start.tunables.is_some() {
        return Outcome::Operators;
    }
    if start.privileged {
        return Outcome::Privileged;
    }
    if start.loader {
        return Outcome::Loader;
    }
    Outcome::Failed(exec(&tunables(threads)))
}

/// Whether the kernel started this process in secure mode (`AT_SECURE`): setuid, setgid, or
/// file capabilities. glibc ignores malloc settings there.
#[allow(unsafe_code)]
fn privileged() -> bool {
    // SAFETY: `getauxval` takes a key and returns a number (0 for a key the kernel did not
    // pass); it reads the auxiliary vector glibc saved at start and touches no memory of ours.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Whether `exe` is the dynamic loader (`ld-linux-x86-64.so.2`, `ld-linux-aarch64.so.1`,
/// `ld.so`): the binary was started through it.
fn is_loader(exe: &Path) -> bool {
    exe.file_name()
        .is_some_and(|name| name.as_bytes().starts_with(b"ld-") || name == "ld.so")
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

/// The process's name as the kernel gave it at the first start: the file name of its
/// first argument, cut to what `comm` keeps.
fn name_from(arg0: &OsString) -> Option<CString> {
    let name = Path::new(arg0).file_name()?.as_bytes();
    CString::new(name.get(..NAME_MAX).unwrap_or(name)).ok()
}

/// Names the process (its main thread, before any other starts) as it was named before it
/// executed `/proc/self/exe`, which the kernel called `exe`. A failure leaves `exe`.
fn rename() {
    if let Some(name) = std::env::args_os().next().as_ref().and_then(name_from) {
        let _ = rustix::thread::set_name(&name);
    }
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
                "heap: the compact allocator settings did not reach the process; running on \
                 glibc's defaults"
            ),
            Self::Privileged => warn!(
                "heap: started with privileges (setuid or file capabilities), where glibc \
                 ignores allocator settings: glibc's defaults (give capabilities with \
                 systemd's AmbientCapabilities= instead)"
            ),
            Self::Loader => info!(
                "heap: started through the dynamic loader, not executed again: glibc's defaults"
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

    fn again(asked: &str, tunables: Option<&str>) -> Start {
        Start {
            marker: Some(asked.into()),
            tunables: tunables.map(OsString::from),
            ..Start::default()
        }
    }

    #[test]
    fn executes_again_once_with_an_arena_per_four_threads() {
        let mut asked = String::new();
        let out = decide(true, threads(2), Start::default(), |t| {
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
        let out = decide(true, threads(2), again(&asked, Some(&asked)), never);
        assert!(
            matches!(&out, Outcome::Compact(s) if *s == asked),
            "{out:?}"
        );
        // Even when the configuration now says otherwise.
        let out = decide(false, threads(2), again(&asked, Some(&asked)), never);
        assert!(matches!(out, Outcome::Compact(_)), "{out:?}");
        // The settings did not arrive whole (glibc 2.36 drops some in secure mode): said,
        // not retried.
        let out = decide(true, threads(2), again(&asked, None), never);
        assert!(matches!(out, Outcome::Dropped(_)), "{out:?}");
        let out = decide(
            true,
            threads(2),
            again(
                &asked,
                Some("glibc.malloc.mxfast=0:glibc.malloc.arena_max=1"),
            ),
            never,
        );
        assert!(matches!(out, Outcome::Dropped(_)), "{out:?}");
    }

    #[test]
    fn leaves_the_operators_settings_a_disabled_heap_and_a_privileged_start_alone() {
        let theirs = || Start {
            tunables: Some("glibc.malloc.arena_max=8".into()),
            ..Start::default()
        };
        let out = decide(true, threads(2), theirs(), never);
        assert!(matches!(out, Outcome::Operators), "{out:?}");
        let out = decide(false, threads(2), theirs(), never);
        assert!(matches!(out, Outcome::Off), "{out:?}");
        let out = decide(false, threads(2), Start::default(), never);
        assert!(matches!(out, Outcome::Off), "{out:?}");
        // glibc ignores the settings in a privileged process; the loader would not take the
        // proxy's arguments.
        let privileged = Start {
            privileged: true,
            ..Start::default()
        };
        let out = decide(true, threads(2), privileged, never);
        assert!(matches!(out, Outcome::Privileged), "{out:?}");
        let loader = Start {
            loader: true,
            ..Start::default()
        };
        let out = decide(true, threads(2), loader, never);
        assert!(matches!(out, Outcome::Loader), "{out:?}");
    }

    #[test]
    fn knows_the_loader_and_the_name_the_kernel_gave() {
        assert!(is_loader(Path::new("/lib64/ld-linux-x86-64.so.2")));
        assert!(is_loader(Path::new("/lib/ld-linux-aarch64.so.1")));
        assert!(is_loader(Path::new("/lib/ld.so")));
        assert!(!is_loader(Path::new("/usr/sbin/imapproxy")));
        assert!(!is_loader(Path::new("/opt/ldap-proxy")));
        // This test process was not started in secure mode.
        assert!(!privileged());

        let name = |a: &str| name_from(&OsString::from(a));
        assert_eq!(
            name("/usr/sbin/imapproxy").unwrap().as_bytes(),
            b"imapproxy"
        );
        assert_eq!(name("imapproxy").unwrap().as_bytes(), b"imapproxy");
        assert_eq!(
            name("./a-very-long-binary-name").unwrap().as_bytes(),
            b"a-very-long-bin"
        );
        assert_eq!(name("/"), None);
    }
}
