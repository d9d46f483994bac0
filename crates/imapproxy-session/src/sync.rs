//! The crate's one way of taking a lock.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering from poisoning: every table behind these locks is a plain map or
/// counter that a panic elsewhere leaves consistent, and the proxy must keep serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
