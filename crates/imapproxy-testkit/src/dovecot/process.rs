//! Starting, watching and stopping the Dovecot master process.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::signal;

/// How long a graceful SIGTERM shutdown may take before SIGKILL (Dovecot waits for
/// its children, which takes about a second).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where to look for `dovecot` besides `PATH` (root's PATH has sbin, a user's may not).
const SBIN_DIRS: [&str; 4] = ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"];

/// The `dovecot` binary: first on `PATH`, then in the usual sbin directories.
pub fn find_dovecot() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join("dovecot"))
        .find(|p| p.is_file())
}

/// Spawns `dovecot -F -c <config>` in its own process group (so a terminal's
/// Ctrl-C reaches the test, not Dovecot, and the whole group can be killed at
/// once), with stdout/stderr in `output`.
pub(crate) fn spawn(binary: &Path, config: &Path, output: &Path) -> io::Result<Child> {
    let out = File::create(output)?;
    let err = out.try_clone()?;
    Command::new(binary)
        .arg("-F")
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
}

/// Spawns a tiny `sh` watchdog that polls every 200 ms whether this process is
/// still alive and, once it is gone, stops Dovecot (SIGTERM, then SIGKILL to the
/// group). A `static` Dovecot is never dropped, so without this it would outlive
/// the test binary; nor would its temp dir be removed, so the watchdog removes
/// `dir` too once Dovecot is gone, and `extra` (paths named `imapproxy-*` only). It ends
/// by itself when Dovecot exits first.
pub(crate) fn spawn_watchdog(
    dovecot_pid: u32,
    dir: &Path,
    extra: &[std::path::PathBuf],
) -> io::Result<Child> {
    let script = r#"
        while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 0.2; done
        if kill -0 "$2" 2>/dev/null; then
            kill -TERM "$2" 2>/dev/null
            i=0
            while kill -0 "$2" 2>/dev/null && [ "$i" -lt 25 ]; do sleep 0.2; i=$((i+1)); done
            kill -KILL -- "-$2" 2>/dev/null
            case "$IMAPPROXY_TESTKIT_DIR" in
                */imapproxy-dovecot-*) sleep 0.2; rm -rf -- "$IMAPPROXY_TESTKIT_DIR" ;;
            esac
            printf '%s\n' "$IMAPPROXY_TESTKIT_EXTRA" | while IFS= read -r p; do
                case "$p" in */imapproxy-*) rm -rf -- "$p" ;; esac
            done
        fi
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("imapproxy-testkit-watchdog")
        .arg(std::process::id().to_string())
        .arg(dovecot_pid.to_string())
        // Passed in the environment, not argv, so `pgrep -f <dir>` finds Dovecot only.
        .env("IMAPPROXY_TESTKIT_DIR", dir)
        .env("IMAPPROXY_TESTKIT_EXTRA", join_lines(extra))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

/// `paths`, one per line (a path with a line break in it is left out).
fn join_lines(paths: &[std::path::PathBuf]) -> String {
    paths
        .iter()
        .filter_map(|p| p.to_str())
        .filter(|p| !p.contains('\n'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Outcome of waiting for the greeting.
pub(crate) enum Ready {
    /// `* OK` seen on the plain port.
    Yes,
    /// The master exited first (e.g. a port was taken meanwhile).
    Exited(std::process::ExitStatus),
    /// Nothing within the bound.
    TimedOut,
}

/// Polls until the plain port answers with a real `* OK` greeting (not the interim
/// "Waiting for authentication process" one), the child exits, or `timeout` passes.
pub(crate) fn wait_ready(child: &mut Child, addr: SocketAddr, timeout: Duration) -> Ready {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Ready::Exited(status);
        }
        if greets(addr) {
            return Ready::Yes;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ready::TimedOut
}

fn greets(addr: SocketAddr) -> bool {
    let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    if s.set_read_timeout(Some(Duration::from_secs(1))).is_err() {
        return false;
    }
    let mut line = String::new();
    if BufReader::new(&s).read_line(&mut line).is_err() {
        return false;
    }
    line.starts_with("* OK") && !line.contains("Waiting for authentication")
}

/// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL the whole process group.
pub(crate) fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal::process(child.id(), signal::TERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(child);
}

/// SIGKILL the master and every process in its group, and reap the master.
pub(crate) fn kill(child: &mut Child) {
    if !signal::group(child.id(), signal::KILL) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Stops and reaps a watchdog we no longer need.
pub(crate) fn end_watchdog(watchdog: &mut Child) {
    let _ = watchdog.kill();
    let _ = watchdog.wait();
}
