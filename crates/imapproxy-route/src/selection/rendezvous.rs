//! [`RendezvousHash`]: highest-random-weight hashing by user.

use crate::hash::rendezvous_score;
use crate::selection::up_entries;
use crate::{BackendId, Registry, Request, Selector};

/// Rendezvous (highest-random-weight) hashing of [`Request::user`]: every backend gets a
/// score from a fixed hash of (user, backend name), and candidates come in descending score.
///
/// - The same user gets the same order every time, on every proxy of a fleet and across
///   releases (the hash is fixed, see the crate's `hash` module; not `std`'s
///   `DefaultHasher`), so a user's sessions share one backend and its caches.
/// - Adding an n-th backend moves only about 1/n of the users (those for whom it scores
///   highest); removing one moves only the users whose first choice it was, each to its own
///   second choice, which is already the next candidate in the list.
/// - A backend that is down or draining is skipped: its users fall through to their second
///   choice and come back when it is up again.
///
/// Scores depend on backend *names*, not on their order or addresses: renaming a backend moves
/// its users, re-addressing it does not.
///
/// With [`RendezvousHash::weighted`], [`crate::Backend::weight`] scales each backend's share
/// (the logarithmic method: score = weight / −ln(u), u uniform in (0, 1)), and weight 0 puts a
/// backend last. That uses floating-point `ln`, whose last bits may differ between platforms'
/// math libraries; keep a fleet on one platform, or use the unweighted form, which is integer
/// only.
#[derive(Debug, Default, Clone, Copy)]
pub struct RendezvousHash {
    weighted: bool,
}

impl RendezvousHash {
    /// Unweighted rendezvous hashing: every backend gets an equal share.
    #[must_use]
    pub const fn new() -> Self {
        Self { weighted: false }
    }

    /// Weighted rendezvous hashing: shares proportional to [`crate::Backend::weight`].
    #[must_use]
    pub const fn weighted() -> Self {
        Self { weighted: true }
    }
}

/// Maps a 64-bit hash to a float in the open interval (0, 1), so that `ln` is finite and
/// negative.
fn unit_interval(hash: u64) -> f64 {
    // The top 53 bits fit an f64 mantissa exactly; the + 0.5 keeps 0 out.
    #[allow(clippy::cast_precision_loss)]
    let top = (hash >> 11) as f64;
    (top + 0.5) / 9_007_199_254_740_992.0 // 2^53
}

impl Selector for RendezvousHash {
    fn select(&self, registry: &Registry, req: &Request<'_>) -> Vec<BackendId> {
        let up = up_entries(registry);
        if self.weighted {
            let mut scored: Vec<(f64, BackendId)> = up
                .into_iter()
                .map(|(backend, _)| {
                    let u = unit_interval(rendezvous_score(req.user, &backend.id));
                    (f64::from(backend.weight) / -u.ln(), backend.id.clone())
                })
                .collect();
            // total_cmp: no NaN can occur (weight ≥ 0, −ln(u) > 0), and it is a total order.
            // Stable sort: equal scores keep registry order.
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            scored.into_iter().map(|(_, id)| id).collect()
        } else {
            let mut scored: Vec<(u64, BackendId)> = up
                .into_iter()
                .map(|(backend, _)| (rendezvous_score(req.user, &backend.id), backend.id.clone()))
                .collect();
            scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
            scored.into_iter().map(|(_, id)| id).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::testing::{registry, weighted};
    use crate::{Backend, Health};
    use std::collections::HashMap;

    fn users() -> Vec<String> {
        (0..10_000)
            .map(|i| format!("user{i}@example.org"))
            .collect()
    }

    fn firsts(selector: &RendezvousHash, registry: &Registry, users: &[String]) -> Vec<BackendId> {
        users
            .iter()
            .map(|u| selector.select(registry, &Request::new(u))[0].clone())
            .collect()
    }

    #[test]
    fn same_user_same_order_every_time() {
        let registry = registry(&["a", "b", "c", "d"]);
        let hash = RendezvousHash::new();
        let req = Request::new("alice@example.org");
        let first = hash.select(&registry, &req);
        assert_eq!(first.len(), 4);
        for _ in 0..100 {
            assert_eq!(hash.select(&registry, &req), first);
        }
        // Another selector instance, and another registry order, agree: only names count.
        let shuffled = crate::selection::testing::registry(&["d", "b", "a", "c"]);
        assert_eq!(RendezvousHash::new().select(&shuffled, &req), first);
    }

    #[test]
    fn users_spread_evenly() {
        let registry = registry(&["a", "b", "c", "d"]);
        let mut counts: HashMap<BackendId, usize> = HashMap::new();
        for id in firsts(&RendezvousHash::new(), &registry, &users()) {
            *counts.entry(id).or_default() += 1;
        }
        assert_eq!(counts.len(), 4);
        for count in counts.values() {
            assert!((2250..2750).contains(count), "{counts:?}");
        }
    }

    #[test]
    fn adding_a_fifth_backend_moves_about_a_fifth_of_users() {
        let users = users();
        let four = registry(&["a", "b", "c", "d"]);
        let five = four
            .reload(
                ["a", "b", "c", "d", "e"]
                    .iter()
                    .map(|n| Backend::new(*n, "127.0.0.1:1"))
                    .collect(),
            )
            .unwrap();
        let hash = RendezvousHash::new();
        let before = firsts(&hash, &four, &users);
        let after = firsts(&hash, &five, &users);
        let mut moved = 0usize;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                moved += 1;
                // Only ever to the new backend.
                assert_eq!(a.as_str(), "e");
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let fraction = moved as f64 / users.len() as f64;
        assert!((0.15..0.25).contains(&fraction), "moved {fraction}");
    }

    #[test]
    fn removing_a_backend_moves_only_its_users() {
        let users = users();
        let four = registry(&["a", "b", "c", "d"]);
        let three = registry(&["a", "b", "d"]);
        let hash = RendezvousHash::new();
        let before = firsts(&hash, &four, &users);
        let after = firsts(&hash, &three, &users);
        let mut moved = 0usize;
        for (b, a) in before.iter().zip(&after) {
            if b.as_str() == "c" {
                moved += 1;
            } else {
                assert_eq!(a, b);
            }
        }
        assert!(moved > 2000, "{moved}");
    }

    #[test]
    fn down_backend_falls_through_to_second_choice_preserving_order() {
        let registry = registry(&["a", "b", "c", "d"]);
        let hash = RendezvousHash::new();
        for user in ["alice", "bob", "carol", "dave", "eve"] {
            let req = Request::new(user);
            let full = hash.select(&registry, &req);
            registry.set_health(&full[0], Health::Down).unwrap();
            registry.set_health(&full[2], Health::Draining).unwrap();
            let degraded = hash.select(&registry, &req);
            assert_eq!(degraded, [full[1].clone(), full[3].clone()], "{user}");
            registry.set_health(&full[0], Health::Up).unwrap();
            registry.set_health(&full[2], Health::Up).unwrap();
            assert_eq!(hash.select(&registry, &req), full);
        }
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let registry = weighted(&[("a", 1), ("b", 3), ("zero", 0)]);
        let hash = RendezvousHash::weighted();
        let mut counts: HashMap<BackendId, usize> = HashMap::new();
        for user in users() {
            let candidates = hash.select(&registry, &Request::new(&user));
            assert_eq!(candidates.len(), 3);
            assert_eq!(candidates[2].as_str(), "zero");
            *counts.entry(candidates[0].clone()).or_default() += 1;
        }
        let b = counts[&BackendId::from("b")];
        assert!((7_200..7_800).contains(&b), "{counts:?}");
        // Equal weights behave as the unweighted form would in share.
        let equal = registry_names_equal();
        let firsts_w = firsts(&RendezvousHash::weighted(), &equal, &users());
        let a = firsts_w.iter().filter(|id| id.as_str() == "a").count();
        assert!((4_700..5_300).contains(&a), "{a}");
    }

    fn registry_names_equal() -> Registry {
        weighted(&[("a", 2), ("b", 2)])
    }
}
