//! [`WeightedRoundRobin`]: smooth weighted round-robin, as nginx's upstream module does it.

use std::sync::Mutex;

use crate::selection::up_entries;
use crate::{BackendId, Registry, Request, Selector};

/// Smooth weighted round-robin over the healthy backends, by [`crate::Backend::weight`].
///
/// Each call adds every backend's weight to its running score, puts the highest score first
/// and takes the sum of the weights off the winner. Over any window of `sum(weights)` calls,
/// each backend comes first exactly `weight` times, interleaved rather than in bursts (weights
/// 5, 1, 1 give `a a b a c a a`, not `a a a a a b c`).
///
/// The remaining candidates follow in descending score, i.e. in the order they would be
/// picked next. A backend of weight 0 is a standby: it is never first while any weighted
/// backend is up, and comes after all of them (in registry order) as a last resort.
///
/// The running scores sit behind a short mutex held for one pass over the backends, no I/O.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    scores: Mutex<Vec<(BackendId, i64)>>,
}

impl WeightedRoundRobin {
    /// A weighted round-robin with all scores at zero.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl Selector for WeightedRoundRobin {
    fn select(&self, registry: &Registry, _req: &Request<'_>) -> Vec<BackendId> {
        let up = up_entries(registry);
        let (weighted, standby): (Vec<_>, Vec<_>) =
            up.into_iter().partition(|(backend, _)| backend.weight > 0);

        let mut scores = crate::sync::lock(&self.scores);
        // Forget backends a reload removed, so the table stays as small as the registry.
        if scores.len() > registry.len() {
            scores.retain(|(id, _)| registry.get(id).is_some());
        }

        let total: i64 = weighted.iter().map(|(b, _)| i64::from(b.weight)).sum();
        let mut ranked: Vec<(i64, usize, BackendId)> = Vec::with_capacity(weighted.len());
        for (order, (backend, _)) in weighted.iter().enumerate() {
            let slot = match scores.iter().position(|(id, _)| *id == backend.id) {
                Some(slot) => slot,
                None => {
                    scores.push((backend.id.clone(), 0));
                    scores.len() - 1
                }
            };
            if let Some((_, score)) = scores.get_mut(slot) {
                *score = score.saturating_add(i64::from(backend.weight));
                ranked.push((*score, order, backend.id.clone()));
            }
        }
        // Highest score first; ties keep registry order (as nginx's first-max scan does).
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        if let Some((_, _, winner)) = ranked.first()
            && let Some((_, score)) = scores.iter_mut().find(|(id, _)| id == winner)
        {
            *score = score.saturating_sub(total);
        }
        drop(scores);

        ranked
            .into_iter()
            .map(|(_, _, id)| id)
            .chain(standby.into_iter().map(|(backend, _)| backend.id.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Health;
    use crate::selection::testing::{names, weighted};

    fn firsts(wrr: &WeightedRoundRobin, registry: &Registry, n: usize) -> Vec<BackendId> {
        let req = Request::new("alice");
        (0..n)
            .map(|_| wrr.select(registry, &req)[0].clone())
            .collect()
    }

    #[test]
    fn smooth_sequence_matches_nginx() {
        let registry = weighted(&[("a", 5), ("b", 1), ("c", 1)]);
        let wrr = WeightedRoundRobin::new();
        let seq = firsts(&wrr, &registry, 7);
        assert_eq!(names(&seq), ["a", "a", "b", "a", "c", "a", "a"]);
    }

    #[test]
    fn shares_follow_weights_and_all_are_candidates() {
        let registry = weighted(&[("a", 3), ("b", 2), ("c", 1)]);
        let wrr = WeightedRoundRobin::new();
        let req = Request::new("alice");
        let mut counts = [0usize; 3];
        for _ in 0..600 {
            let candidates = wrr.select(&registry, &req);
            assert_eq!(candidates.len(), 3);
            let i = ["a", "b", "c"]
                .iter()
                .position(|n| *n == candidates[0].as_str())
                .unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts, [300, 200, 100]);
    }

    #[test]
    fn weight_zero_is_never_first_and_comes_last() {
        let registry = weighted(&[("spare", 0), ("a", 1), ("b", 1)]);
        let wrr = WeightedRoundRobin::new();
        let req = Request::new("alice");
        for _ in 0..20 {
            let candidates = wrr.select(&registry, &req);
            assert_eq!(candidates.len(), 3);
            assert_ne!(candidates[0].as_str(), "spare");
            assert_eq!(candidates[2].as_str(), "spare");
        }
        registry.set_health("a", Health::Down).unwrap();
        registry.set_health("b", Health::Draining).unwrap();
        assert_eq!(names(&wrr.select(&registry, &req)), ["spare"]);
    }

    #[test]
    fn skips_unhealthy_and_forgets_removed_backends() {
        let registry = weighted(&[("a", 2), ("b", 1), ("c", 1)]);
        registry.set_health("a", Health::Down).unwrap();
        let wrr = WeightedRoundRobin::new();
        let seq = firsts(&wrr, &registry, 4);
        assert_eq!(names(&seq), ["b", "c", "b", "c"]);

        let smaller = registry
            .reload(vec![crate::Backend::new("c", "x:1")])
            .unwrap();
        assert_eq!(names(&firsts(&wrr, &smaller, 2)), ["c", "c"]);
        assert!(wrr.scores.lock().unwrap().len() <= 1);
    }
}
