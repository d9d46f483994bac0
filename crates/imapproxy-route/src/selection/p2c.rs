//! [`PowerOfTwoChoices`]: two random healthy backends, the less loaded first.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hash::mix64;
use crate::selection::up_entries;
use crate::{BackendId, Registry, Request, Selector};

/// SplitMix64's increment (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Power of two choices: picks two distinct healthy backends at random and puts the one with
/// fewer active sessions first (the first pick on a tie), the other second, then the rest by
/// active sessions (ties in registry order).
///
/// Nearly as even as [`crate::LeastConnections`] while avoiding its herd effect: when many
/// proxies (or many sessions between two count updates) all see the same least-loaded
/// backend, they do not all pile onto it.
///
/// The randomness is SplitMix64 over an atomic counter: lock-free, not cryptographic (routing
/// needs spread, not secrecy). [`PowerOfTwoChoices::with_seed`] makes it reproducible.
#[derive(Debug)]
pub struct PowerOfTwoChoices {
    state: AtomicU64,
}

impl Default for PowerOfTwoChoices {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerOfTwoChoices {
    /// A selector seeded from the process's random hasher keys.
    #[must_use]
    pub fn new() -> Self {
        // RandomState is seeded from the OS once per process; its output is only a seed here,
        // never a routing decision that must be stable.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(GAMMA);
        Self::with_seed(hasher.finish())
    }

    /// A selector whose choices are determined by `seed` (tests, reproducible simulations).
    #[must_use]
    pub const fn with_seed(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    fn next(&self) -> u64 {
        mix64(
            self.state
                .fetch_add(GAMMA, Ordering::Relaxed)
                .wrapping_add(GAMMA),
        )
    }

    /// A uniform index below `n` (n > 0), by Lemire's multiply-shift; its bias is below
    /// n / 2^64, irrelevant for a handful of backends.
    fn below(&self, n: usize) -> usize {
        let wide = u128::from(self.next()) * (n as u128);
        // The high half is < n, which fits in usize.
        usize::try_from(wide >> 64).unwrap_or(0)
    }
}

impl Selector for PowerOfTwoChoices {
    fn select(&self, registry: &Registry, _req: &Request<'_>) -> Vec<BackendId> {
        let mut up: Vec<(usize, BackendId)> = up_entries(registry)
            .into_iter()
            .map(|(backend, state)| (state.active(), backend.id.clone()))
            .collect();
        let n = up.len();
        if n < 2 {
            return up.into_iter().map(|(_, id)| id).collect();
        }
        let first = self.below(n);
        // A second index distinct from the first, uniformly among the other n - 1.
        let mut second = self.below(n - 1);
        if second >= first {
            second += 1;
        }
        let (lo, hi) = (first.min(second), first.max(second));
        // Remove the higher index first so the lower one stays valid.
        let picked_hi = up.remove(hi);
        let picked_lo = up.remove(lo);
        let (a, b) = if lo == first {
            (picked_lo, picked_hi)
        } else {
            (picked_hi, picked_lo)
        };
        let (winner, runner_up) = if b.0 < a.0 { (b, a) } else { (a, b) };
        up.sort_by_key(|(active, _)| *active);
        [winner, runner_up]
            .into_iter()
            .chain(up)
            .map(|(_, id)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Health;
    use crate::selection::testing::{names, registry};

    #[test]
    fn spreads_load_evenly_when_sessions_are_counted() {
        let registry = registry(&["a", "b", "c", "d"]);
        let p2c = PowerOfTwoChoices::with_seed(7);
        let req = Request::new("alice");
        let mut guards = Vec::new();
        for _ in 0..400 {
            let candidates = p2c.select(&registry, &req);
            assert_eq!(candidates.len(), 4);
            guards.push(registry.state(&candidates[0]).unwrap().session_started());
        }
        for (backend, state) in registry.iter() {
            // Two choices keep the spread within a couple of sessions of the mean.
            assert!(
                (97..=103).contains(&state.active()),
                "{} has {}",
                backend.id,
                state.active()
            );
        }
    }

    #[test]
    fn without_load_first_picks_are_roughly_uniform() {
        let registry = registry(&["a", "b", "c", "d"]);
        let p2c = PowerOfTwoChoices::with_seed(42);
        let req = Request::new("alice");
        let mut counts = std::collections::HashMap::new();
        for _ in 0..8000 {
            *counts
                .entry(p2c.select(&registry, &req)[0].clone())
                .or_insert(0usize) += 1;
        }
        for count in counts.values() {
            assert!((1700..2300).contains(count), "{counts:?}");
        }
        assert_eq!(counts.len(), 4);
    }

    #[test]
    fn the_less_loaded_of_the_two_wins() {
        let registry = registry(&["busy", "idle"]);
        let _busy: Vec<_> = (0..5)
            .map(|_| registry.state("busy").unwrap().session_started())
            .collect();
        let p2c = PowerOfTwoChoices::new();
        let req = Request::new("alice");
        for _ in 0..20 {
            assert_eq!(names(&p2c.select(&registry, &req)), ["idle", "busy"]);
        }
    }

    #[test]
    fn skips_unhealthy_and_handles_tiny_fleets() {
        let registry = registry(&["a", "b", "c"]);
        let p2c = PowerOfTwoChoices::with_seed(1);
        let req = Request::new("alice");
        registry.set_health("a", Health::Down).unwrap();
        registry.set_health("c", Health::Draining).unwrap();
        assert_eq!(names(&p2c.select(&registry, &req)), ["b"]);
        registry.set_health("b", Health::Down).unwrap();
        assert!(p2c.select(&registry, &req).is_empty());
    }
}
