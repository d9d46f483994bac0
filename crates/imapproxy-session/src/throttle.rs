//! Failed-login throttling: progressive delay, then a temporary block, per client address
//! and per (user, client address).
//!
//! Two counters see every failed login:
//!
//! - **per (user, address)**: the user name lower-cased, together with the exact client
//!   address. After [`ThrottleSettings::max_failures`] failures within
//!   [`ThrottleSettings::failure_window`] further attempts for that user *from that address*
//!   are refused for [`ThrottleSettings::block_duration`] without asking a backend, and
//!   answered exactly like a wrong password (`NO [AUTHENTICATIONFAILED]`), so a guesser
//!   learns nothing. The address is part of the key on purpose: a per-user counter shared by
//!   every address would let one attacker lock anyone out of their mailbox. The user's own
//!   logins from elsewhere keep working. The price: guesses spread over many addresses are
//!   limited only per address, which the per-address counter below bounds.
//! - **per address**: all failures from one client address, whatever the user, up to
//!   [`ThrottleSettings::max_failures_per_ip`]. This stops a spray of one password over many
//!   users. A blocked address gets `* BYE [LIMIT]` and the connection is closed.
//!
//! Before the block, failures past [`ThrottleSettings::free_failures`] are answered after a
//! delay that doubles each time, from [`ThrottleSettings::base_delay`] up to
//! [`ThrottleSettings::max_delay`]; blocked attempts are answered after the longest delay,
//! so the timing does not tell a block from a wrong password either.
//!
//! A successful login clears the (user, address) counter and takes that user's failures off
//! the address counter: a user's own typos are forgiven, but an attacker who owns one valid
//! account cannot wipe the address counter by logging in between guesses at other users.
//!
//! Addresses in [`ThrottleSettings::trusted`] are never counted nor blocked (a webmail or a
//! balancer speaking for many users). Memory is bounded: at most
//! [`ThrottleSettings::max_tracked`] entries, expired ones dropped first, then the oldest.
//!
//! `governor` was considered: it limits rates, not failures within a window followed by a
//! block, and its keyed store grows until `retain_recent` is called. A small table fits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::proxy_protocol::TrustedNetworks;

/// How failed logins are throttled. `max_failures = 0` turns throttling off.
#[derive(Clone, Debug)]
pub struct ThrottleSettings {
    /// Failures of one user from one address within the window before that pair is blocked.
    pub max_failures: u32,
    /// Failures from one address (any users) within the window before it is blocked.
    pub max_failures_per_ip: u32,
    /// Window in which failures are counted; it starts at the first failure.
    pub failure_window: Duration,
    /// How long a block lasts.
    pub block_duration: Duration,
    /// Failures answered without delay.
    pub free_failures: u32,
    /// Delay after the first failure past `free_failures`; doubles with each further one.
    pub base_delay: Duration,
    /// Cap on the delay; blocked attempts are answered after this long.
    pub max_delay: Duration,
    /// Addresses never throttled.
    pub trusted: TrustedNetworks,
    /// Cap on tracked entries (addresses plus user/address pairs).
    pub max_tracked: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            max_failures: 5,
            max_failures_per_ip: 20,
            failure_window: Duration::from_secs(5 * 60),
            block_duration: Duration::from_secs(15 * 60),
            free_failures: 2,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(4),
            trusted: TrustedNetworks::parse(&["127.0.0.0/8", "::1/128"]).unwrap_or_default(),
            max_tracked: 100_000,
        }
    }
}

/// Whether a login attempt may go to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// This user is blocked from this address: answer as a failed login.
    UserBlocked,
    /// This address is blocked: refuse with `BYE [LIMIT]`.
    IpBlocked,
}

/// The address a client is counted under: IPv4 as is, IPv6 by its /64, since anyone with a
/// home connection has a /64 to pick fresh source addresses from.
pub(crate) fn counted_addr(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    User(String, IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
    last_seen: Instant,
}

/// The failure counters of one proxy. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Throttle {
    /// Swapped on reload (SIGHUP); the counters stay.
    settings: arc_swap::ArcSwap<ThrottleSettings>,
    table: Mutex<HashMap<Key, Entry>>,
}

impl Throttle {
    /// Counters with these settings.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings: arc_swap::ArcSwap::from_pointee(settings),
            table: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> std::sync::Arc<ThrottleSettings> {
        self.settings.load_full()
    }

    /// Replaces the settings (SIGHUP); counters, blocks and open connections are kept.
    pub fn set_settings(&self, settings: ThrottleSettings) {
        self.settings.store(std::sync::Arc::new(settings));
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.settings.load().max_failures == 0 || self.settings.load().trusted.contains(ip)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic elsewhere while holding the lock leaves counters that are still usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks an attempt by `user` (any case) from `ip` before any backend work.
    pub fn check(&self, ip: IpAddr, user: &str) -> Verdict {
        let ip = ip.to_canonical();
        if self.exempt(ip) {
            return Verdict::Allow;
        }
        let ip = counted_addr(ip);
        let now = Instant::now();
        let table = self.table();
        let blocked = |key: &Key| {
            table
                .get(key)
                .and_then(|e| e.blocked_until)
                .is_some_and(|until| until > now)
        };
        if blocked(&Key::Ip(ip)) {
            Verdict::IpBlocked
        } else if blocked(&Key::User(user.to_lowercase(), ip)) {
            Verdict::UserBlocked
        } else {
            Verdict::Allow
        }
    }

    /// Records a failed login and returns how long to wait before answering it.
    pub fn record_failure(&self, ip: IpAddr, user: &str) -> Duration {
        let ip = ip.to_canonical();
        if self.exempt(ip) {
            return Duration::ZERO;
        }
        let ip = counted_addr(ip);
        let now = Instant::now();
        let s = self.settings.load();
        let mut table = self.table();
        let user_n = self.bump(
            &mut table,
            Key::User(user.to_lowercase(), ip),
            now,
            s.max_failures,
        );
        let ip_n = self.bump(&mut table, Key::Ip(ip), now, s.max_failures_per_ip.max(1));
        let n = match (user_n, ip_n) {
            (Some(u), Some(i)) => u.max(i),
            // Just blocked: answer as slowly as a blocked attempt.
            _ => return s.max_delay,
        };
        match n.checked_sub(s.free_failures.saturating_add(1)) {
            None => Duration::ZERO,
            Some(k) => s
                .base_delay
                .saturating_mul(1u32.checked_shl(k.min(31)).unwrap_or(u32::MAX))
                .min(s.max_delay),
        }
    }

    /// Counts one failure on `key`; `None` when this failure starts a block.
    fn bump(
        &self,
        table: &mut HashMap<Key, Entry>,
        key: Key,
        now: Instant,
        limit: u32,
    ) -> Option<u32> {
        if !table.contains_key(&key) && table.len() >= self.settings.load().max_tracked {
            self.make_room(table, now);
            if table.len() >= self.settings.load().max_tracked {
                // Full of live blocks: those are never dropped to make room (that would let
                // an attacker lift them by flooding the table); this failure goes uncounted.
                return Some(0);
            }
        }
        let e = table.entry(key).or_insert(Entry {
            failures: 0,
            window_start: now,
            blocked_until: None,
            last_seen: now,
        });
        e.last_seen = now;
        if now.duration_since(e.window_start) > self.settings.load().failure_window {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= limit {
            e.blocked_until = Some(now + self.settings.load().block_duration);
            e.failures = 0;
            e.window_start = now;
            return None;
        }
        Some(e.failures)
    }

    /// Records a successful login: see the module docs for what is forgiven.
    pub fn record_success(&self, ip: IpAddr, user: &str) {
        let ip = ip.to_canonical();
        if self.exempt(ip) {
            return;
        }
        let ip = counted_addr(ip);
        let mut table = self.table();
        let Some(user_entry) = table.remove(&Key::User(user.to_lowercase(), ip)) else {
            return;
        };
        if let Some(ip_entry) = table.get_mut(&Key::Ip(ip)) {
            ip_entry.failures = ip_entry.failures.saturating_sub(user_entry.failures);
        }
    }

    /// Number of tracked entries (for metrics and tests).
    pub fn tracked(&self) -> usize {
        self.table().len()
    }

    /// Drops expired entries; if that is not enough, the oldest eighth. Runs only when the
    /// table is full, so its cost is spread over many insertions.
    fn make_room(&self, table: &mut HashMap<Key, Entry>, now: Instant) {
        let window = self.settings.load().failure_window;
        table.retain(|_, e| {
            let blocking = e.blocked_until.is_some_and(|u| u > now);
            let counting = e.failures > 0 && now.duration_since(e.window_start) <= window;
            blocking || counting
        });
        if table.len() < self.settings.load().max_tracked {
            return;
        }
        // Still full: drop the oldest eighth of what is only counting, never a live block.
        let blocking = |e: &Entry| e.blocked_until.is_some_and(|u| u > now);
        let mut ages: Vec<Instant> = table
            .values()
            .filter(|e| !blocking(e))
            .map(|e| e.last_seen)
            .collect();
        if ages.is_empty() {
            return;
        }
        let cut = (ages.len() / 8).min(ages.len() - 1);
        let (_, nth, _) = ages.select_nth_unstable(cut);
        let threshold = *nth;
        table.retain(|_, e| blocking(e) || e.last_seen > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            max_failures: 3,
            max_failures_per_ip: 5,
            failure_window: Duration::from_secs(60),
            block_duration: Duration::from_secs(10),
            free_failures: 1,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            trusted: TrustedNetworks::parse(&["10.0.0.0/8"]).unwrap(),
            max_tracked: 100,
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[tokio::test(start_paused = true)]
    async fn user_blocked_only_from_the_failing_address_and_lifted_after_block() {
        let t = Throttle::new(settings());
        assert_eq!(t.record_failure(A, "Bob"), Duration::ZERO);
        assert_eq!(t.record_failure(A, "bob"), Duration::from_millis(100));
        assert_eq!(t.check(A, "BOB"), Verdict::Allow);
        assert_eq!(t.record_failure(A, "bob"), Duration::from_millis(350));
        assert_eq!(t.check(A, "bob"), Verdict::UserBlocked);
        assert_eq!(t.check(B, "bob"), Verdict::Allow);
        assert_eq!(t.check(A, "alice"), Verdict::Allow);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(t.check(A, "bob"), Verdict::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_fresh_addresses_does_not_lift_blocks() {
        let t = Throttle::new(settings());
        for _ in 0..3 {
            t.record_failure(A, "bob");
        }
        assert_eq!(t.check(A, "bob"), Verdict::UserBlocked);
        // 1,000 failures from other addresses, far beyond max_tracked (100).
        for i in 0..1000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0xC633_6400 + i));
            t.record_failure(ip, "x");
        }
        assert!(t.tracked() <= 100, "{}", t.tracked());
        assert_eq!(t.check(A, "bob"), Verdict::UserBlocked);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(counted_addr(a), counted_addr(b));
        assert_ne!(counted_addr(a), counted_addr(other));
        assert_eq!(counted_addr(A), A);
        let t = Throttle::new(settings());
        for _ in 0..3 {
            t.record_failure(a, "bob");
        }
        assert_eq!(
            t.check(b, "bob"),
            Verdict::UserBlocked,
            "a new address in the same /64"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delays_grow_and_are_capped() {
        let mut s = settings();
        s.max_failures = 10;
        s.max_failures_per_ip = 10;
        let t = Throttle::new(s);
        let delays: Vec<u64> = (0..5)
            .map(|_| t.record_failure(A, "u").as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 100, 200, 350, 350]);
    }

    #[tokio::test(start_paused = true)]
    async fn spray_over_users_blocks_the_address() {
        let t = Throttle::new(settings());
        for i in 0..5 {
            assert_eq!(t.check(A, &format!("user{i}")), Verdict::Allow);
            t.record_failure(A, &format!("user{i}"));
        }
        assert_eq!(t.check(A, "user9"), Verdict::IpBlocked);
        assert_eq!(t.check(B, "user9"), Verdict::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_are_forgotten() {
        let t = Throttle::new(settings());
        t.record_failure(A, "u");
        t.record_failure(A, "u");
        tokio::time::advance(Duration::from_secs(61)).await;
        t.record_failure(A, "u");
        assert_eq!(t.check(A, "u"), Verdict::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn success_forgives_only_that_users_failures() {
        let t = Throttle::new(settings());
        t.record_failure(A, "x");
        t.record_failure(A, "y");
        t.record_failure(A, "me");
        t.record_failure(A, "me");
        t.record_success(A, "Me");
        // Two failures left on the address (x, y): three more block it.
        t.record_failure(A, "z1");
        t.record_failure(A, "z2");
        assert_eq!(t.check(A, "me"), Verdict::Allow);
        t.record_failure(A, "z3");
        assert_eq!(t.check(A, "me"), Verdict::IpBlocked);
    }

    #[tokio::test(start_paused = true)]
    async fn trusted_and_disabled_are_exempt() {
        let t = Throttle::new(settings());
        let trusted: IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(t.record_failure(trusted, "u"), Duration::ZERO);
        }
        assert_eq!(t.check(trusted, "u"), Verdict::Allow);
        let mut s = settings();
        s.max_failures = 0;
        let off = Throttle::new(s);
        for _ in 0..10 {
            off.record_failure(A, "u");
        }
        assert_eq!(off.check(A, "u"), Verdict::Allow);
        assert_eq!(off.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let t = Throttle::new(settings());
        for i in 0..1000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0000 + i));
            t.record_failure(ip, "u");
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(t.tracked() <= 100, "{}", t.tracked());
    }
}
