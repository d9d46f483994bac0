//! [`RoundRobin`]: every healthy backend, rotated by one per call.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{BackendId, Health, Registry, Request, Selector};

/// Takes the healthy backends in turn: each call starts one further along the list.
///
/// Ignores [`crate::Backend::weight`] and the request; every [`Health::Up`] backend is a
/// candidate, so a failed connect falls through to all the others.
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// A round-robin starting at the first backend.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl Selector for RoundRobin {
    fn select(&self, registry: &Registry, _req: &Request<'_>) -> Vec<BackendId> {
        let mut up: Vec<BackendId> = registry
            .iter()
            .filter(|(_, state)| state.health() == Health::Up)
            .map(|(backend, _)| backend.id.clone())
            .collect();
        if up.is_empty() {
            return up;
        }
        // Relaxed is enough: the cursor only spreads load, it orders nothing. fetch_add
        // wraps on overflow, which merely skips a step once every 2^64 calls.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % up.len();
        up.rotate_left(start);
        up
    }
}
