//! Sending signals to processes the testkit started.
//!
//! This is the crate's only `unsafe`: `kill(2)` through `libc`. It is sound because
//! `kill` takes two integers and touches no memory of ours; the only hazard is
//! signalling the wrong process, which callers avoid by passing PIDs of children
//! they spawned (and, for groups, groups those children lead).
#![allow(unsafe_code)]

/// `SIGTERM`: ask Dovecot's master to shut down its children and exit.
pub(crate) const TERM: libc::c_int = libc::SIGTERM;
/// `SIGKILL`: no questions asked.
pub(crate) const KILL: libc::c_int = libc::SIGKILL;

fn raw_kill(pid: libc::pid_t, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions; see the module docs.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Sends `sig` to one process. Returns whether the signal was delivered.
pub(crate) fn process(pid: u32, sig: libc::c_int) -> bool {
    match libc::pid_t::try_from(pid) {
        // pid 0 or 1 would mean "my group" or init: never.
        Ok(p) if p > 1 => raw_kill(p, sig),
        _ => false,
    }
}

/// Sends `sig` to every process in the group led by `pgid` (a child spawned with
/// `process_group(0)`, so its PID is its group id). Returns whether it was delivered.
pub(crate) fn group(pgid: u32, sig: libc::c_int) -> bool {
    match libc::pid_t::try_from(pgid) {
        Ok(p) if p > 1 => raw_kill(-p, sig),
        _ => false,
    }
}
