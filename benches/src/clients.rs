//! Closed-loop clients for the session scenarios (`webmail`, `burst`): N tasks, each
//! running one operation (a whole IMAP session) after another until a deadline. A warm-up
//! comes first; only operations that *end* inside the measured window count, so
//! throughput is counted operations over the window's length.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::error::BenchError;
use crate::imap::bounded;

/// Longest failure reason kept as a key (error texts carry the server's words).
const REASON_MAX: usize = 160;

/// The measured window: `[from, until]`, after a warm-up that starts when it is made.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Start of the measured part (end of the warm-up).
    pub from: Instant,
    /// End of the measured part; no operation starts after it.
    pub until: Instant,
}

impl Window {
    /// A window starting `warmup` from now and lasting `measure`.
    pub fn new(warmup: Duration, measure: Duration) -> Window {
        let from = Instant::now() + warmup;
        Window {
            from,
            until: from + measure,
        }
    }

    /// Length of the measured part in seconds.
    pub fn secs(&self) -> f64 {
        self.until.duration_since(self.from).as_secs_f64()
    }
}

/// What the clients did.
#[derive(Debug)]
pub struct Tally<T> {
    /// One sample per operation that succeeded inside the window.
    pub ok: Vec<T>,
    /// Operations that failed inside the window.
    pub failed: u64,
    /// Failures inside the window by reason (the error's text, shortened).
    pub reasons: BTreeMap<String, u64>,
    /// Failures outside the window (warm-up, or ending after it): not counted in
    /// `failed`, reported so that none goes unseen.
    pub failed_outside: u64,
}

impl<T> Default for Tally<T> {
    fn default() -> Self {
        Tally {
            ok: Vec::new(),
            failed: 0,
            reasons: BTreeMap::new(),
            failed_outside: 0,
        }
    }
}

impl<T> Tally<T> {
    fn merge(&mut self, other: Tally<T>) {
        self.ok.extend(other.ok);
        self.failed += other.failed;
        self.failed_outside += other.failed_outside;
        for (k, v) in other.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
    }
}

/// Starts `clients` tasks; task `c` runs `op(c, i)` for i = 0, 1, … until the window
/// ends, each bounded by `bound` (a timeout is a failure). Collect with [`collect`].
pub fn spawn<T, F, Fut>(clients: usize, window: Window, bound: Duration, op: F) -> JoinSet<Tally<T>>
where
    T: Send + 'static,
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, BenchError>> + Send + 'static,
{
    let op = Arc::new(op);
    let mut set = JoinSet::new();
    for c in 0..clients {
        let op = Arc::clone(&op);
        set.spawn(async move {
            let mut tally = Tally::default();
            let mut i = 0u64;
            while Instant::now() < window.until {
                let result = bounded("session", bound, op(c, i)).await;
                i += 1;
                let end = Instant::now();
                let inside = end >= window.from && end <= window.until;
                match result {
                    Ok(sample) if inside => tally.ok.push(sample),
                    Ok(_) => {}
                    Err(e) if inside => {
                        tally.failed += 1;
                        *tally.reasons.entry(reason(&e)).or_default() += 1;
                    }
                    Err(_) => tally.failed_outside += 1,
                }
            }
            tally
        });
    }
    set
}

/// Waits for every task of [`spawn`] and merges what they counted.
pub async fn collect<T: 'static>(mut set: JoinSet<Tally<T>>) -> Result<Tally<T>, BenchError> {
    let mut all = Tally::default();
    while let Some(joined) = set.join_next().await {
        let tally = joined.map_err(|e| BenchError::protocol("client task", e.to_string()))?;
        all.merge(tally);
    }
    Ok(all)
}

/// The error's text, shortened, as a key for counting alike failures together.
pub fn reason(e: &BenchError) -> String {
    let text = e.to_string();
    match text.char_indices().nth(REASON_MAX) {
        Some((cut, _)) => format!("{}...", text.get(..cut).unwrap_or_default()),
        None => text,
    }
}

/// Session number `i` of client `c` out of `clients`, mapped onto one of `users`
/// accounts: round robin over all clients (session i of client c is the
/// (i·clients + c)-th session overall), or, with `seed`, a seeded pseudo-random pick
/// (splitmix64 of the client, session and seed: the same sequence in every run).
pub fn pick_user(c: usize, i: u64, clients: usize, users: usize, seed: Option<u64>) -> usize {
    let users = users.max(1) as u64;
    let n = i.wrapping_mul(clients as u64).wrapping_add(c as u64);
    let k = match seed {
        None => n % users,
        Some(s) => splitmix64(n ^ s.rotate_left(32)) % users,
    };
    k as usize
}

/// splitmix64 (Steele, Lea, Flood 2014): a tiny, well-mixed, fixed hash for seeding.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_user_once_per_cycle() {
        let clients = 20;
        let users = 100;
        let mut seen = vec![0u32; users];
        // The first 100 sessions overall: 5 per client.
        for i in 0..5 {
            for c in 0..clients {
                seen[pick_user(c, i, clients, users, None)] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn seeded_picks_are_stable_and_in_range() {
        let a: Vec<usize> = (0..50).map(|i| pick_user(3, i, 20, 100, Some(7))).collect();
        let b: Vec<usize> = (0..50).map(|i| pick_user(3, i, 20, 100, Some(7))).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&u| u < 100));
        let c: Vec<usize> = (0..50).map(|i| pick_user(3, i, 20, 100, Some(8))).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let e = BenchError::protocol("x", "é".repeat(300));
        let r = reason(&e);
        assert!(r.ends_with("..."));
        assert!(r.chars().count() <= REASON_MAX + 3);
    }
}
