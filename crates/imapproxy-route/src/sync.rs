//! The crate's one way of taking a lock.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering from poisoning: what these locks guard (health records, caches,
/// scores, a connection slot) stays valid whatever a panicking holder left half-done, and a
/// login must never fail because of it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
