//! [`LeastConnections`]: the healthy backend with the fewest active sessions first.

use crate::selection::up_entries;
use crate::{BackendId, Registry, Request, Selector};

/// Orders the healthy backends by [`crate::BackendState::active`], fewest first; ties keep
/// registry (configuration) order.
///
/// Suits long-lived IMAP sessions (IDLE clients stay connected for hours), where spreading
/// new sessions evenly over time does not keep the live count even.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastConnections;

impl LeastConnections {
    /// The strategy (it has no state).
    #[must_use]
    pub const fn new() -> Self {
        Self
    }
}

impl Selector for LeastConnections {
    fn select(&self, registry: &Registry, _req: &Request<'_>) -> Vec<BackendId> {
        // Snapshot the counts once: they change under our feet, and a sort whose keys move
        // while it runs gives an unspecified order.
        let mut up: Vec<(usize, BackendId)> = up_entries(registry)
            .into_iter()
            .map(|(backend, state)| (state.active(), backend.id.clone()))
            .collect();
        // Stable sort: equal counts keep registry order.
        up.sort_by_key(|(active, _)| *active);
        up.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Health;
    use crate::selection::testing::{names, registry};

    #[test]
    fn fewest_active_first_ties_in_registry_order() {
        let registry = registry(&["a", "b", "c", "d"]);
        let _a1 = registry.state("a").unwrap().session_started();
        let _a2 = registry.state("a").unwrap().session_started();
        let _c1 = registry.state("c").unwrap().session_started();
        let req = Request::new("alice");
        assert_eq!(
            names(&LeastConnections.select(&registry, &req)),
            ["b", "d", "c", "a"]
        );
    }

    #[test]
    fn spreads_sessions_evenly_when_callers_count_them() {
        let registry = registry(&["a", "b", "c"]);
        let req = Request::new("alice");
        let mut guards = Vec::new();
        for _ in 0..300 {
            let first = LeastConnections.select(&registry, &req)[0].clone();
            guards.push(registry.state(&first).unwrap().session_started());
        }
        for (_, state) in registry.iter() {
            assert_eq!(state.active(), 100);
        }
    }

    #[test]
    fn skips_down_and_draining_keeping_order() {
        let registry = registry(&["a", "b", "c", "d"]);
        registry.set_health("a", Health::Down).unwrap();
        registry.set_health("c", Health::Draining).unwrap();
        let _d = registry.state("d").unwrap().session_started();
        let _b1 = registry.state("b").unwrap().session_started();
        let _b2 = registry.state("b").unwrap().session_started();
        let req = Request::new("alice");
        assert_eq!(names(&LeastConnections.select(&registry, &req)), ["d", "b"]);
    }
}
