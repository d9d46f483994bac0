//! Counters and gauges of the pool.

use std::sync::atomic::{AtomicU64, Ordering};

use super::SessionPool;
use crate::sync::lock;

/// Counters for status pages and tests.
#[derive(Clone, Debug, Default)]
pub struct PoolStatus {
    /// Authenticated sessions cached, all users.
    pub idle_sessions: usize,
    /// User slots in use (sessions lent out plus cached).
    pub slots_in_use: usize,
    /// Clients waiting for a slot.
    pub waiting: usize,
    /// Warm connections ready, per backend.
    pub warm: Vec<(String, usize)>,
    /// Checkouts served from the cache.
    pub hits: u64,
    /// Checkouts that logged in on a backend.
    pub misses: u64,
    /// Checkouts that had to wait in the queue.
    pub waits: u64,
    /// Checkouts that gave up after `wait_timeout`.
    pub timeouts: u64,
    /// Cached sessions closed to make room for another user on a full backend.
    pub evictions: u64,
}

/// The pool's running counters.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) waits: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) evictions: AtomicU64,
}

impl Counters {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl SessionPool {
    /// Counters and gauges.
    pub fn status(&self) -> PoolStatus {
        let c = &self.inner.counters;
        let mut st = PoolStatus {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            ..PoolStatus::default()
        };
        for state in lock(&self.inner.users).values() {
            st.idle_sessions += state.idle.len();
            st.slots_in_use += state.slots;
            st.waiting += state.waiters.len();
        }
        for (name, be) in lock(&self.inner.backends).iter() {
            let ready = be.warm.as_ref().map_or(0, |w| w.status().available);
            st.warm.push((name.to_string(), ready));
        }
        st
    }
}
