//! The crate's one way to take a lock.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poisoning.
///
/// Every mutex in this crate guards plain data (maps of cached sessions, capability lists)
/// whose every update is a single assignment or collection operation: a panic elsewhere while
/// the lock was held leaves it consistent enough to keep serving, and refusing all later
/// checkouts would turn one bug into an outage.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
