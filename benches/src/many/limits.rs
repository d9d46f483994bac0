//! The open-file limit: the proxy holds two files per session, and the limit is per process.

use std::fs;

use super::ManyArgs;
use crate::error::BenchError;

/// Open files of the proxy besides two per session: 16 with 9,992 sessions (its
/// listeners, epoll and event fds, log, health checks), with room to spare.
const PROXY_FD_BASE: u64 = 64;

/// The proxy's open files for `sessions` sessions: a client and a backend socket each. The
/// limit is per process, and the proxy is the process that holds the most (loadbench
/// holds one socket per session, Dovecot's imap processes `--imap-client-limit` each).
fn proxy_fds(sessions: u32) -> u64 {
    2 * u64::from(sessions) + PROXY_FD_BASE
}

/// Raises `RLIMIT_NOFILE` (soft, and the hard limit when needed, which takes root with
/// `CAP_SYS_RESOURCE`) to what the proxy needs for `--sessions`, before Dovecot and the
/// proxy are spawned so that they inherit it (the proxy raises its soft limit to the hard
/// one at start). Where the hard limit stays too low, `--fit-fd-limit` measures as many
/// sessions as fit instead of failing. Returns the limit and the arguments to measure with.
pub(super) fn fit_fd_limit(args: &ManyArgs) -> Result<(u64, ManyArgs), BenchError> {
    use rlimit::Resource;
    let need = proxy_fds(args.sessions);
    let (soft, hard) = Resource::NOFILE
        .get()
        .map_err(BenchError::io("getrlimit(RLIMIT_NOFILE)"))?;
    if soft >= need {
        return Ok((soft, args.clone()));
    }
    // The kernel caps the hard limit at fs.nr_open.
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let raised = if need > nr_open {
        Err(BenchError::FdLimit { have: soft, need })
    } else {
        match Resource::NOFILE.set(need, hard.max(need)) {
            Ok(()) => return Ok((need, args.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(BenchError::FdHardLimit { hard, need })
            }
            Err(e) => Err(BenchError::io("setrlimit(RLIMIT_NOFILE)")(e)),
        }
    };
    let fits = u32::try_from(hard.saturating_sub(PROXY_FD_BASE) / 2).unwrap_or(u32::MAX);
    if !args.fit_fd_limit || fits <= args.baseline || fits < 100 {
        if let Err(BenchError::FdHardLimit { .. }) = &raised {
            eprintln!(
                "many: with this hard limit at most {fits} sessions fit in the proxy's open \
                 files: pass --sessions {fits} or --fit-fd-limit"
            );
        }
        return raised.map(|()| (need, args.clone()));
    }
    Resource::NOFILE
        .set(hard, hard)
        .map_err(BenchError::io("setrlimit(RLIMIT_NOFILE)"))?;
    eprintln!(
        "many: WARNING: the hard open-file limit is {hard} and cannot be raised here (no root \
         or no CAP_SYS_RESOURCE); {} sessions need {need} in the proxy: measuring {fits} \
         sessions instead (--fit-fd-limit)",
        args.sessions
    );
    let mut fitted = args.clone();
    fitted.sessions = fits;
    Ok((hard, fitted))
}

/// Entries of `/proc/<pid>/fd`.
pub(super) fn open_files(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}
