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
//! **Attempts in flight count.** A login is admitted with [`Throttle::admit`] before any
//! backend work and settled once the backend has answered ([`Attempt::succeeded`],
//! [`Attempt::failed`]). While it is at the backend it counts against both limits as if it
//! will fail, so twenty parallel connections get no more guesses past `max_failures` than one
//! connection would; an attempt over the budget waits for one in flight to settle (success
//! frees the budget, failure may block), at most [`ThrottleSettings::queue_timeout`].
//!
//! **Proven passwords skip the queue.** The proxy keeps, per user, a keyed digest (HMAC-SHA256
//! under a per-process key) of the last password that logged the user in. Attempts with any
//! other password share [`ThrottleSettings::max_unproven_per_user`] places at the backends:
//! guessers spread over many addresses hold at most those few of the user's backend slots,
//! and the owner's password, once it has worked, passes straight through. A password the
//! backend refuses loses its proof (it was changed).
//!
//! Addresses in [`ThrottleSettings::trusted`] are never counted nor blocked (a webmail or a
//! balancer speaking for many users). Memory is bounded: at most
//! [`ThrottleSettings::max_tracked`] entries, expired ones dropped first, then the oldest.
//!
//! **Several proxies** (fleet mode) share their counts through a [`SharedFailures`] store set
//! with [`Throttle::set_shared`]: every failure and forgiveness is also sent there, and an
//! admitted attempt first takes in what the store knows (failures counted and blocks set by
//! the other proxies), so limits hold for the fleet as a whole. Attempts in flight, delays and
//! proven passwords stay per proxy. The store must answer quickly or not at all: when it
//! does not know, local counts alone apply.
//!
//! `governor` was considered: it limits rates, not failures within a window followed by a
//! block, and its keyed store grows until `retain_recent` is called. A small table fits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use imapproxy_codec::constant_time_eq;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Notify;
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
    /// Cap on tracked entries (addresses plus user/address pairs, and proven passwords).
    pub max_tracked: usize,
    /// Logins of one user, from all addresses together, that may be at a backend at once
    /// with a password not yet proven (one that has not logged this user in lately). Keep
    /// it well below `[pool] max_per_user`: the rest of the user's backend slots stay free
    /// for the password that works, whatever guessers do. `0`: no such cap.
    pub max_unproven_per_user: u32,
    /// The longest an attempt waits for its turn (the in-flight budget or the cap above)
    /// before it is refused with `NO [LIMIT]` (not counted as a failure: it reached no
    /// backend).
    pub queue_timeout: Duration,
    /// How long a password stays proven after it logged its user in.
    pub proven_for: Duration,
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
            max_unproven_per_user: 4,
            queue_timeout: Duration::from_secs(10),
            proven_for: Duration::from_secs(24 * 60 * 60),
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
    /// The attempt waited [`ThrottleSettings::queue_timeout`] for its turn behind other
    /// attempts in flight; answer `NO [LIMIT]`.
    Busy,
}

/// What a [`SharedFailures`] store knows of one (user, address) pair and its address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedCounts {
    /// Failures of the user from the address in the current window, fleet-wide.
    pub user_failures: u32,
    /// Failures from the address (any user) in the current window, fleet-wide.
    pub ip_failures: u32,
    /// Time left on a block of the (user, address) pair.
    pub user_blocked_for: Option<Duration>,
    /// Time left on a block of the address.
    pub ip_blocked_for: Option<Duration>,
}

impl SharedCounts {
    /// Counts with these values.
    #[must_use]
    pub fn new(
        user_failures: u32,
        ip_failures: u32,
        user_blocked_for: Option<Duration>,
        ip_blocked_for: Option<Duration>,
    ) -> Self {
        Self {
            user_failures,
            ip_failures,
            user_blocked_for,
            ip_blocked_for,
        }
    }
}

/// Failure counters kept outside the process and shared by several proxies, such as Redis
/// (the `imapproxy` binary's fleet mode). Users arrive lower-cased and addresses as counted
/// (IPv6 by its /64); exempt addresses never reach the store.
#[async_trait::async_trait]
pub trait SharedFailures: Send + Sync + std::fmt::Debug + 'static {
    /// What the store knows of `user` from `ip`; `None` when it cannot tell quickly (it is
    /// down or slow): the attempt then goes on local counts. Must be bounded in time.
    async fn lookup(&self, user: &str, ip: IpAddr) -> Option<SharedCounts>;
    /// Counts one failure, blocking the pair or the address when it reaches its limit
    /// under `settings`. Must not wait: send it in the background.
    fn failed(&self, user: &str, ip: IpAddr, settings: &ThrottleSettings);
    /// The user logged in from `ip`: clear the pair and take its failures off the address.
    /// Must not wait.
    fn succeeded(&self, user: &str, ip: IpAddr);
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
    /// Attempts on this key at a backend now, each a possible failure.
    in_flight: u32,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            window_start: now,
            blocked_until: None,
            last_seen: now,
            in_flight: 0,
        }
    }

    fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| until > now)
    }

    fn failures_in(&self, window: Duration, now: Instant) -> u32 {
        if now.duration_since(self.window_start) > window {
            0
        } else {
            self.failures
        }
    }

    /// Nothing to remember: no failures, no block, nothing in flight.
    fn empty(&self, window: Duration, now: Instant) -> bool {
        self.in_flight == 0 && !self.blocked(now) && self.failures_in(window, now) == 0
    }
}

/// The length of the keyed digest of a password (HMAC-SHA256).
const DIGEST_LEN: usize = 32;

/// A password that logged its user in: its keyed digest, and when. Kept for every user who
/// logged in lately, so kept small: the digest's bytes, not ring's 72-byte `Tag` (an entry of
/// [`Table::proven`] is 64 bytes with its key, was 112).
struct Proof {
    tag: [u8; DIGEST_LEN],
    at: Instant,
}

#[derive(Default)]
struct Table {
    entries: HashMap<Key, Entry>,
    /// Unproven attempts at a backend per user (lower-cased).
    unproven: HashMap<String, u32>,
    /// The last password that logged each user in (lower-cased).
    proven: HashMap<Box<str>, Proof>,
}

struct Shared {
    /// Swapped on reload (SIGHUP); the counters stay.
    settings: arc_swap::ArcSwap<ThrottleSettings>,
    table: Mutex<Table>,
    /// Signalled whenever an attempt ends, for those waiting for their turn.
    settled: Notify,
    /// Key of the password digests, drawn at start; the digests mean nothing elsewhere.
    key: hmac::Key,
    /// Counts shared with other proxies, if any.
    store: arc_swap::ArcSwapOption<Box<dyn SharedFailures>>,
}

/// The failure counters of one proxy. Clones share the counters.
#[derive(Clone)]
pub struct Throttle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("settings", &self.shared.settings.load())
            .field("tracked", &self.tracked())
            .finish_non_exhaustive()
    }
}

/// One login attempt admitted by [`Throttle::admit`]: it holds its place in the in-flight
/// counts until it is settled with [`Attempt::succeeded`] or [`Attempt::failed`], or dropped
/// (a backend could not be reached: nothing is counted).
#[must_use = "an attempt holds its place until settled or dropped"]
pub struct Attempt {
    shared: Arc<Shared>,
    user: String,
    /// Counted under this address (None: exempt from counting).
    counted: Option<IpAddr>,
    /// Holds one of the user's unproven places.
    unproven: bool,
    proven: bool,
    /// Out of the in-flight counts already.
    released: bool,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("user", &self.user)
            .field("counted", &self.counted)
            .field("proven", &self.proven)
            .finish()
    }
}

impl Attempt {
    /// The password is the one that last logged this user in.
    pub fn proven(&self) -> bool {
        self.proven
    }

    /// The backend accepted the credentials: forgives this user's failures from this
    /// address (see the module docs) and remembers the password as proven.
    pub fn succeeded(mut self, password: Option<&[u8]>) {
        let now = Instant::now();
        let shared = self.shared.clone();
        let tag = password.map(|p| shared.digest(&self.user, p));
        let mut table = shared.table();
        self.release(&mut table, now);
        if let Some(ip) = self.counted {
            shared.forgive(&mut table, &self.user, ip);
        }
        if let Some(tag) = tag {
            shared.prove(&mut table, &self.user, &tag, now);
        }
        drop(table);
        shared.settled.notify_waiters();
        if let Some(ip) = self.counted {
            shared.share_success(&self.user, ip);
        }
    }

    /// The credentials were refused: counts the failure and returns how long to wait before
    /// answering. Counting and leaving the in-flight count happen at once, so that a waiting
    /// attempt never sees the budget without this failure in it.
    pub fn failed(mut self, password: Option<&[u8]>) -> Duration {
        let now = Instant::now();
        let shared = self.shared.clone();
        let presented = password.map(|p| shared.digest(&self.user, p));
        let mut table = shared.table();
        self.release(&mut table, now);
        if let Some(presented) = &presented {
            shared.disprove(&mut table, &self.user, presented);
        }
        let delay = match self.counted {
            Some(ip) => shared.fail(&mut table, ip, &self.user, now),
            None => Duration::ZERO,
        };
        drop(table);
        shared.settled.notify_waiters();
        if let Some(ip) = self.counted {
            shared.share_failure(&self.user, ip);
        }
        delay
    }

    /// Leaves the in-flight counts (once).
    fn release(&mut self, table: &mut Table, now: Instant) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let window = self.shared.settings.load().failure_window;
        if let Some(ip) = self.counted {
            for key in [Key::User(self.user.clone(), ip), Key::Ip(ip)] {
                if let Some(e) = table.entries.get_mut(&key) {
                    e.in_flight = e.in_flight.saturating_sub(1);
                    if e.empty(window, now) {
                        table.entries.remove(&key);
                    }
                }
            }
        }
        if std::mem::take(&mut self.unproven)
            && let Some(n) = table.unproven.get_mut(&self.user)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.unproven.remove(&self.user);
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let shared = self.shared.clone();
        let mut table = shared.table();
        self.release(&mut table, Instant::now());
        drop(table);
        shared.settled.notify_waiters();
    }
}

impl Throttle {
    /// Counters with these settings.
    pub fn new(settings: ThrottleSettings) -> Self {
        let mut bytes = [0u8; 32];
        // Without system randomness the digests are keyed by the start time and address of
        // this allocation: they never leave the process, so this only weakens them against
        // someone who can already read its memory.
        if SystemRandom::new().fill(&mut bytes).is_err() {
            let seed = format!("{:?}{:p}", std::time::SystemTime::now(), &bytes);
            bytes = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes())
                .as_ref()
                .try_into()
                .unwrap_or([7; 32]);
        }
        Self {
            shared: Arc::new(Shared {
                settings: arc_swap::ArcSwap::from_pointee(settings),
                table: Mutex::new(Table::default()),
                settled: Notify::new(),
                key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
                store: arc_swap::ArcSwapOption::empty(),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> Arc<ThrottleSettings> {
        self.shared.settings.load_full()
    }

    /// Shares the counts with other proxies through `store` (see the module docs).
    pub fn set_shared(&self, store: Box<dyn SharedFailures>) {
        self.shared.store.store(Some(Arc::new(store)));
    }

    /// Replaces the settings (SIGHUP); counters, blocks and open connections are kept.
    pub fn set_settings(&self, settings: ThrottleSettings) {
        self.shared.settings.store(Arc::new(settings));
    }

    /// Checks an attempt by `user` (any case) from `ip` against blocks, without taking a
    /// place in flight. [`Throttle::admit`] is what a login uses.
    pub fn check(&self, ip: IpAddr, user: &str) -> Verdict {
        let ip = ip.to_canonical();
        if self.shared.exempt(ip) {
            return Verdict::Allow;
        }
        let table = self.shared.table();
        self.shared
            .blocked(
                &table,
                counted_addr(ip),
                &user.to_lowercase(),
                Instant::now(),
            )
            .unwrap_or(Verdict::Allow)
    }

    /// Admits a login attempt by `user` (any case) from `ip`, before any backend work.
    ///
    /// Refused at once when the address or the (user, address) pair is blocked. Otherwise
    /// the attempt waits, at most [`ThrottleSettings::queue_timeout`], until
    /// - the failures counted plus the attempts in flight stay under both limits, so that
    ///   parallel connections cannot each slip a guess past them, and
    /// - fewer than [`ThrottleSettings::max_unproven_per_user`] attempts of this user with
    ///   unproven passwords are in flight, so that guessers cannot hold every backend slot
    ///   of the user they target.
    ///
    /// `password` is the one presented (`None` for SASL the proxy cannot read): when it is
    /// the one that last logged this user in, the attempt passes both waits. An attempt that
    /// waits too long is refused with [`Verdict::Busy`], uncounted: it reached no backend.
    pub async fn admit(
        &self,
        ip: IpAddr,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<Attempt, Verdict> {
        let ip = ip.to_canonical();
        let user = user.to_lowercase();
        let settings = self.settings();
        let mut attempt = Attempt {
            shared: self.shared.clone(),
            counted: None,
            unproven: false,
            proven: false,
            released: false,
            user,
        };
        if settings.max_failures == 0 {
            attempt.released = true;
            return Ok(attempt);
        }
        let exempt = settings.trusted.contains(ip);
        let counted = counted_addr(ip);
        let deadline = Instant::now() + settings.queue_timeout;
        // Hashed once, outside the lock.
        let presented = password.map(|p| self.shared.digest(&attempt.user, p));
        let store = if exempt {
            None
        } else {
            self.shared.store.load_full()
        };
        loop {
            let settled = self.shared.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            // What the other proxies counted, taken in before judging (outside the lock).
            let fleet = match &store {
                Some(store) => store.lookup(&attempt.user, counted).await,
                None => None,
            };
            {
                let now = Instant::now();
                let mut table = self.shared.table();
                if let Some(fleet) = fleet {
                    self.shared
                        .take_in(&mut table, &attempt.user, counted, fleet, now);
                }
                if !exempt
                    && let Some(verdict) = self.shared.blocked(&table, counted, &attempt.user, now)
                {
                    attempt.released = true;
                    return Err(verdict);
                }
                attempt.proven = presented
                    .as_ref()
                    .is_some_and(|tag| self.shared.is_proven(&table, &attempt.user, tag, now));
                let budget = exempt
                    || attempt.proven
                    || (self
                        .shared
                        .room(&table, &Key::User(attempt.user.clone(), counted), now)
                        && self.shared.room(&table, &Key::Ip(counted), now));
                let gate = attempt.proven
                    || settings.max_unproven_per_user == 0
                    || table.unproven.get(&attempt.user).copied().unwrap_or(0)
                        < settings.max_unproven_per_user;
                if budget && gate {
                    if !exempt && !attempt.proven {
                        self.shared.enter(&mut table, &attempt.user, counted, now);
                    }
                    if !exempt {
                        attempt.counted = Some(counted);
                    }
                    if !attempt.proven && settings.max_unproven_per_user > 0 {
                        *table.unproven.entry(attempt.user.clone()).or_insert(0) += 1;
                        attempt.unproven = true;
                    }
                    return Ok(attempt);
                }
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                // Not counted: a waiting attempt reached no backend, and the many parallel
                // logins of an office behind one address must not block it.
                attempt.released = true;
                return Err(Verdict::Busy);
            }
        }
    }

    /// Records a failed login that was not admitted through [`Throttle::admit`] (a user
    /// directory refused it) and returns how long to wait before answering it.
    pub fn record_failure(&self, ip: IpAddr, user: &str) -> Duration {
        let ip = ip.to_canonical();
        if self.shared.exempt(ip) {
            return Duration::ZERO;
        }
        let (ip, user) = (counted_addr(ip), user.to_lowercase());
        let mut table = self.shared.table();
        let delay = self.shared.fail(&mut table, ip, &user, Instant::now());
        drop(table);
        self.shared.share_failure(&user, ip);
        delay
    }

    /// Records a successful login that was not admitted through [`Throttle::admit`]: see
    /// the module docs for what is forgiven.
    pub fn record_success(&self, ip: IpAddr, user: &str) {
        let ip = ip.to_canonical();
        if self.shared.exempt(ip) {
            return;
        }
        let (ip, user) = (counted_addr(ip), user.to_lowercase());
        let mut table = self.shared.table();
        self.shared.forgive(&mut table, &user, ip);
        drop(table);
        self.shared.share_success(&user, ip);
    }

    /// Number of tracked entries (for metrics and tests).
    pub fn tracked(&self) -> usize {
        let table = self.shared.table();
        table.entries.len() + table.proven.len()
    }
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        crate::sync::lock(&self.table)
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let s = self.settings.load();
        s.max_failures == 0 || s.trusted.contains(ip)
    }

    fn share_failure(&self, user: &str, ip: IpAddr) {
        if let Some(store) = self.store.load().as_deref() {
            store.failed(user, ip, &self.settings.load());
        }
    }

    fn share_success(&self, user: &str, ip: IpAddr) {
        if let Some(store) = self.store.load().as_deref() {
            store.succeeded(user, ip);
        }
    }

    /// Raises the local counts of `user` from `ip` to what the fleet counted, and takes in
    /// the fleet's blocks. Never lowers anything: the store may lag behind this proxy.
    fn take_in(
        &self,
        table: &mut Table,
        user: &str,
        ip: IpAddr,
        fleet: SharedCounts,
        now: Instant,
    ) {
        let window = self.settings.load().failure_window;
        for (key, failures, blocked_for) in [
            (
                Key::User(user.to_owned(), ip),
                fleet.user_failures,
                fleet.user_blocked_for,
            ),
            (Key::Ip(ip), fleet.ip_failures, fleet.ip_blocked_for),
        ] {
            if failures == 0 && blocked_for.is_none() {
                continue;
            }
            if !table.entries.contains_key(&key) {
                self.make_room(table, now);
            }
            let e = table.entries.entry(key).or_insert_with(|| Entry::new(now));
            if e.failures_in(window, now) < failures {
                if e.failures_in(window, now) == 0 {
                    e.window_start = now;
                }
                e.failures = failures;
            }
            if let Some(left) = blocked_for {
                let until = now + left;
                if e.blocked_until.is_none_or(|b| b < until) {
                    e.blocked_until = Some(until);
                }
            }
            e.last_seen = now;
        }
    }

    fn blocked(&self, table: &Table, ip: IpAddr, user: &str, now: Instant) -> Option<Verdict> {
        let blocked = |key: &Key| table.entries.get(key).is_some_and(|e| e.blocked(now));
        if blocked(&Key::Ip(ip)) {
            Some(Verdict::IpBlocked)
        } else if blocked(&Key::User(user.to_owned(), ip)) {
            Some(Verdict::UserBlocked)
        } else {
            None
        }
    }

    /// One more attempt on `key` stays under its limit even if every attempt in flight
    /// fails.
    fn room(&self, table: &Table, key: &Key, now: Instant) -> bool {
        let s = self.settings.load();
        let limit = match key {
            Key::User(..) => s.max_failures,
            Key::Ip(_) => s.max_failures_per_ip.max(1),
        };
        table.entries.get(key).is_none_or(|e| {
            e.failures_in(s.failure_window, now)
                .saturating_add(e.in_flight)
                < limit
        })
    }

    /// Takes a place in flight on both keys.
    fn enter(&self, table: &mut Table, user: &str, ip: IpAddr, now: Instant) {
        for key in [Key::User(user.to_owned(), ip), Key::Ip(ip)] {
            if !table.entries.contains_key(&key) {
                self.make_room(table, now);
            }
            let e = table.entries.entry(key).or_insert_with(|| Entry::new(now));
            e.in_flight = e.in_flight.saturating_add(1);
            e.last_seen = now;
        }
    }

    /// Counts a failure on both keys; returns the delay before answering it.
    fn fail(&self, table: &mut Table, ip: IpAddr, user: &str, now: Instant) -> Duration {
        let s = self.settings.load();
        let user_n = self.bump(table, Key::User(user.to_owned(), ip), now, s.max_failures);
        let ip_n = self.bump(table, Key::Ip(ip), now, s.max_failures_per_ip.max(1));
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
    fn bump(&self, table: &mut Table, key: Key, now: Instant, limit: u32) -> Option<u32> {
        let s = self.settings.load();
        if !table.entries.contains_key(&key) {
            self.make_room(table, now);
            if table.entries.len() + table.proven.len() >= s.max_tracked {
                // Full of live blocks: those are never dropped to make room (that would let
                // an attacker lift them by flooding the table); this failure goes uncounted.
                return Some(0);
            }
        }
        let e = table.entries.entry(key).or_insert_with(|| Entry::new(now));
        e.last_seen = now;
        if now.duration_since(e.window_start) > s.failure_window {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= limit {
            e.blocked_until = Some(now + s.block_duration);
            e.failures = 0;
            e.window_start = now;
            return None;
        }
        Some(e.failures)
    }

    /// Clears the (user, address) counter and takes its failures off the address counter.
    fn forgive(&self, table: &mut Table, user: &str, ip: IpAddr) {
        let key = Key::User(user.to_owned(), ip);
        let Some(user_entry) = table.entries.get_mut(&key) else {
            return;
        };
        let forgiven = std::mem::take(&mut user_entry.failures);
        user_entry.blocked_until = None;
        if user_entry.in_flight == 0 {
            table.entries.remove(&key);
        }
        if let Some(ip_entry) = table.entries.get_mut(&Key::Ip(ip)) {
            ip_entry.failures = ip_entry.failures.saturating_sub(forgiven);
        }
    }

    fn digest(&self, user: &str, password: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password);
        ctx.sign()
    }

    /// Whether `presented` (the [`Shared::digest`] of the password offered) is the user's
    /// proven password.
    fn is_proven(&self, table: &Table, user: &str, presented: &hmac::Tag, now: Instant) -> bool {
        let proven_for = self.settings.load().proven_for;
        table.proven.get(user).is_some_and(|proof| {
            now.duration_since(proof.at) <= proven_for
                && constant_time_eq(presented.as_ref(), &proof.tag)
        })
    }

    fn prove(&self, table: &mut Table, user: &str, tag: &hmac::Tag, now: Instant) {
        // Always 32 bytes (the key is HMAC-SHA256); anything else is not remembered.
        let Ok(tag) = <[u8; DIGEST_LEN]>::try_from(tag.as_ref()) else {
            return;
        };
        if !table.proven.contains_key(user) {
            self.make_room(table, now);
            if table.entries.len() + table.proven.len() >= self.settings.load().max_tracked {
                return;
            }
        }
        table.proven.insert(user.into(), Proof { tag, at: now });
    }

    /// A refused password is no longer proven (it changed on the backend).
    fn disprove(&self, table: &mut Table, user: &str, presented: &hmac::Tag) {
        let now = Instant::now();
        if self.is_proven(table, user, presented, now) {
            table.proven.remove(user);
        }
    }

    /// Drops expired entries and proofs; if that is not enough, the oldest eighth of what is
    /// only counting. Runs only when the table is full, so its cost is spread over many
    /// insertions. Live blocks and attempts in flight are never dropped.
    fn make_room(&self, table: &mut Table, now: Instant) {
        let s = self.settings.load();
        if table.entries.len() + table.proven.len() < s.max_tracked {
            return;
        }
        let window = s.failure_window;
        table.entries.retain(|_, e| !e.empty(window, now));
        table
            .proven
            .retain(|_, p| now.duration_since(p.at) <= s.proven_for);
        if table.entries.len() + table.proven.len() < s.max_tracked {
            return;
        }
        // Still full: drop the oldest eighth of the proofs and of what is only counting.
        let pinned = |e: &Entry| e.blocked(now) || e.in_flight > 0;
        let mut ages: Vec<Instant> = table
            .entries
            .values()
            .filter(|e| !pinned(e))
            .map(|e| e.last_seen)
            .chain(table.proven.values().map(|p| p.at))
            .collect();
        if ages.is_empty() {
            return;
        }
        let cut = (ages.len() / 8).min(ages.len() - 1);
        let (_, nth, _) = ages.select_nth_unstable(cut);
        let threshold = *nth;
        table
            .entries
            .retain(|_, e| pinned(e) || e.last_seen > threshold);
        table.proven.retain(|_, p| p.at > threshold);
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
            max_unproven_per_user: 2,
            queue_timeout: Duration::from_secs(5),
            proven_for: Duration::from_secs(3600),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_proof_is_the_digest_and_an_instant() {
        // What every user who logged in lately costs in the table, beside the user's name.
        assert_eq!(std::mem::size_of::<(Box<str>, Proof)>(), 64);
        // Every digest fits a proof (else `prove` would remember nothing).
        let t = Throttle::new(settings());
        assert_eq!(
            t.shared.digest("user", b"password").as_ref().len(),
            DIGEST_LEN
        );
    }

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

    /// Resolves `fut` if it is ready after letting the runtime run; `None` while it waits.
    async fn now_or_never<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = fut => Some(out),
            _ = tokio::task::yield_now() => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_in_flight_count_against_the_limit() {
        let mut s = settings();
        s.max_unproven_per_user = 0;
        let t = Throttle::new(s);
        // max_failures 3: three guesses may be at a backend at once, the fourth waits.
        let a1 = t.admit(A, "bob", Some(b"x1")).await.unwrap();
        let a2 = t.admit(A, "bob", Some(b"x2")).await.unwrap();
        let a3 = t.admit(A, "bob", Some(b"x3")).await.unwrap();
        let fourth = t.admit(A, "bob", Some(b"x4"));
        tokio::pin!(fourth);
        assert!(now_or_never(fourth.as_mut()).await.is_none());
        // The three fail: the pair is blocked and the waiting one is refused as blocked,
        // without ever reaching a backend.
        a1.failed(Some(b"x1"));
        a2.failed(Some(b"x2"));
        assert!(now_or_never(fourth.as_mut()).await.is_none());
        a3.failed(Some(b"x3"));
        assert_eq!(fourth.await.unwrap_err(), Verdict::UserBlocked);
        // Another address is not held up.
        assert!(t.admit(B, "bob", Some(b"y")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_ends_without_an_answer_frees_its_place_uncounted() {
        let mut s = settings();
        s.max_failures = 1;
        let t = Throttle::new(s);
        let only = t.admit(A, "bob", Some(b"pw")).await.unwrap();
        let next = t.admit(A, "bob", Some(b"pw"));
        tokio::pin!(next);
        assert!(now_or_never(next.as_mut()).await.is_none());
        // The backend was unreachable: dropped, not failed.
        drop(only);
        let next = next.await.unwrap();
        next.succeeded(Some(b"pw"));
        assert_eq!(t.check(A, "bob"), Verdict::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn unproven_passwords_share_a_few_places_per_user_and_the_proven_one_skips_them() {
        let t = Throttle::new(settings());
        // The owner's password works once, from B.
        t.admit(B, "alice", Some(b"right"))
            .await
            .unwrap()
            .succeeded(Some(b"right"));
        // Guessers from many addresses: two at a time (max_unproven_per_user = 2).
        let ips: Vec<IpAddr> = (10..14u8)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, i)))
            .collect();
        let g1 = t.admit(ips[0], "alice", Some(b"g1")).await.unwrap();
        let g2 = t.admit(ips[1], "Alice", Some(b"g2")).await.unwrap();
        assert!(!g1.proven());
        let g3 = t.admit(ips[2], "alice", Some(b"g3"));
        tokio::pin!(g3);
        assert!(now_or_never(g3.as_mut()).await.is_none());
        // The right password goes straight through, from anywhere.
        let owner = now_or_never(std::pin::pin!(t.admit(ips[3], "alice", Some(b"right"))))
            .await
            .expect("not queued")
            .unwrap();
        assert!(owner.proven());
        owner.succeeded(Some(b"right"));
        g1.failed(Some(b"g1"));
        let g3 = g3.await.unwrap();
        drop((g2, g3));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_too_long_is_refused_uncounted() {
        let mut s = settings();
        s.max_unproven_per_user = 1;
        let t = Throttle::new(s);
        let _holder = t.admit(A, "bob", Some(b"g0")).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            t.admit(B, "bob", Some(b"g1")).await.unwrap_err(),
            Verdict::Busy
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // Nothing counted against B: five failures are still needed to block it.
        for i in 0..4 {
            t.record_failure(B, &format!("other{i}"));
        }
        assert_eq!(t.check(B, "anyone"), Verdict::Allow);
        t.record_failure(B, "other4");
        assert_eq!(t.check(B, "anyone"), Verdict::IpBlocked);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_password_is_no_longer_proven() {
        let t = Throttle::new(settings());
        t.admit(A, "bob", Some(b"old"))
            .await
            .unwrap()
            .succeeded(Some(b"old"));
        let a = t.admit(A, "bob", Some(b"old")).await.unwrap();
        assert!(a.proven());
        // The password was changed on the backend.
        a.failed(Some(b"old"));
        assert!(!t.admit(A, "bob", Some(b"old")).await.unwrap().proven());
        // Proofs expire.
        t.admit(A, "bob", Some(b"new"))
            .await
            .unwrap()
            .succeeded(Some(b"new"));
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(!t.admit(A, "bob", Some(b"new")).await.unwrap().proven());
    }

    /// A store shared by two throttles, as Redis is by two proxies: counts per key, a block
    /// when a count reaches its limit.
    #[derive(Debug, Default, Clone)]
    struct MemoryStore(Arc<Mutex<HashMap<String, (u32, bool)>>>);

    impl MemoryStore {
        fn bump(&self, key: String, limit: u32) {
            let mut m = self.0.lock().unwrap();
            let e = m.entry(key).or_default();
            e.0 += 1;
            if e.0 >= limit {
                *e = (0, true);
            }
        }
    }

    #[async_trait::async_trait]
    impl SharedFailures for MemoryStore {
        async fn lookup(&self, user: &str, ip: IpAddr) -> Option<SharedCounts> {
            let m = self.0.lock().unwrap();
            let get = |k: String| m.get(&k).copied().unwrap_or_default();
            let (u, ub) = get(format!("{user}|{ip}"));
            let (i, ib) = get(ip.to_string());
            let block = |b: bool| b.then_some(Duration::from_secs(10));
            Some(SharedCounts::new(u, i, block(ub), block(ib)))
        }

        fn failed(&self, user: &str, ip: IpAddr, settings: &ThrottleSettings) {
            self.bump(format!("{user}|{ip}"), settings.max_failures);
            self.bump(ip.to_string(), settings.max_failures_per_ip);
        }

        fn succeeded(&self, user: &str, ip: IpAddr) {
            self.0.lock().unwrap().remove(&format!("{user}|{ip}"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn two_throttles_sharing_a_store_hold_the_limits_together() {
        let store = MemoryStore::default();
        let (one, two) = (Throttle::new(settings()), Throttle::new(settings()));
        one.set_shared(Box::new(store.clone()));
        two.set_shared(Box::new(store.clone()));
        // A spray over five users from one address, alternating between the two: the address
        // limit (5) is reached as if on one throttle, and both refuse the sixth.
        for i in 0..5 {
            let t = if i % 2 == 0 { &one } else { &two };
            let attempt = t.admit(A, &format!("user{i}"), Some(b"x")).await.unwrap();
            let _ = attempt.failed(Some(b"x"));
        }
        for t in [&one, &two] {
            assert_eq!(
                t.admit(A, "user9", Some(b"x")).await.err(),
                Some(Verdict::IpBlocked)
            );
        }
        // Another address is unaffected; three failures of one user over both block the pair.
        for t in [&one, &two, &one] {
            let _ = t
                .admit(B, "bob", Some(b"x"))
                .await
                .unwrap()
                .failed(Some(b"x"));
        }
        assert_eq!(
            two.admit(B, "bob", Some(b"x")).await.err(),
            Some(Verdict::UserBlocked)
        );
        assert!(two.admit(B, "alice", Some(b"x")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_does_not_know_leaves_local_counts_alone() {
        #[derive(Debug)]
        struct Down;
        #[async_trait::async_trait]
        impl SharedFailures for Down {
            async fn lookup(&self, _: &str, _: IpAddr) -> Option<SharedCounts> {
                None
            }
            fn failed(&self, _: &str, _: IpAddr, _: &ThrottleSettings) {}
            fn succeeded(&self, _: &str, _: IpAddr) {}
        }
        let t = Throttle::new(settings());
        t.set_shared(Box::new(Down));
        for _ in 0..3 {
            let _ = t
                .admit(A, "bob", Some(b"x"))
                .await
                .unwrap()
                .failed(Some(b"x"));
        }
        assert_eq!(
            t.admit(A, "bob", Some(b"x")).await.err(),
            Some(Verdict::UserBlocked)
        );
    }
}
