//! `[server]`: how the proxy process itself runs.

use std::num::NonZeroUsize;

use serde::Deserialize;

use super::defaults::default_true;

/// `[server]`.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads of the async runtime that runs every session. `0` or absent: one per
    /// core the process may use. Fewer leave cores to a backend on the same host; read at
    /// start only (a reload cannot resize a running runtime).
    #[serde(default)]
    pub threads: WorkerThreads,
    /// Give the allocator's free pages back to the system once a burst is over (glibc
    /// builds; see `trim.rs`). On by default; off where a trim's walk of a very large heap
    /// is unwelcome (HAProxy's `no-memory-trimming`).
    #[serde(default = "default_true")]
    pub heap_trim: bool,
    /// Set glibc's allocator for many small long-lived sessions: no per-thread caches, no
    /// fast bins, an arena per four worker threads (glibc builds; see `heap.rs`). On by
    /// default; read at start only. An operator's own `GLIBC_TUNABLES` wins.
    #[serde(default = "default_true")]
    pub heap_compact: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            threads: WorkerThreads::default(),
            heap_trim: true,
            heap_compact: true,
        }
    }
}

/// A number of runtime worker threads, checked when the file is read (so that
/// `imapproxy check` refuses it too): `1..=`[`WorkerThreads::MAX`], or all cores (`0`, the
/// default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct WorkerThreads(Option<NonZeroUsize>);

impl WorkerThreads {
    /// The most threads accepted. Far above any core count the proxy meets; a larger value
    /// is a typo (a connection count, say) that would otherwise cost a thread stack each.
    pub const MAX: usize = 1024;

    /// The thread count to start: the configured one, or the cores this process may use
    /// (its CPU affinity and cgroup quota count, see [`std::thread::available_parallelism`];
    /// 1 when that cannot be known).
    pub fn resolve(self) -> NonZeroUsize {
        self.0
            .unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
    }
}

impl TryFrom<u64> for WorkerThreads {
    type Error = String;

    fn try_from(n: u64) -> Result<Self, String> {
        match usize::try_from(n).ok().filter(|&n| n <= Self::MAX) {
            Some(n) => Ok(Self(NonZeroUsize::new(n))),
            None => Err(format!(
                "[server] threads = {n}: at most {} (0: one per core)",
                Self::MAX
            )),
        }
    }
}
