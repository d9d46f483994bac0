//! The cache of authenticated sessions: check-in (reset, hand-off to a waiting client of the
//! same credentials, or caching), liveness before a cached session is lent again, expiry,
//! eviction, and which backends hold one for given credentials.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use super::session::{Lease, PooledSession};
use super::slots::{Grant, UserSlot};
use super::status::Counters;
use super::{PoolSettings, SessionPool};
use crate::Credentials;
use crate::checkin::{self, Disposition};
use crate::liveness::idle_and_alive;
use crate::sync::lock;

/// A cached session: logged in, reset, nobody's.
pub(super) struct Idle {
    pub(super) lease: Lease,
    pub(super) slot: UserSlot,
    /// Cached since (the last check-in): for `idle_timeout`, `noop_after` and
    /// least-recently-used eviction.
    pub(super) since: Instant,
}

impl SessionPool {
    /// Takes a session back after its client is done.
    ///
    /// With [`Disposition::Close`] (the session ran `ENABLE` or `COMPRESS`, saw an error, or
    /// its client vanished mid-command) it is closed, and so is a session the pool may not
    /// reuse at all ([`PooledSession::reusable`]), one past [`PoolSettings::max_age`], or
    /// any when `reuse` is off or the backend lacks `UNSELECT`. Otherwise the pool always
    /// sends `UNSELECT` (RFC 3691; never `CLOSE`, which expunges), whatever the caller
    /// believes was selected: `OK` or `BAD` (nothing selected) with no untagged data but
    /// `* OK [CLOSED]` keeps the session; `NO`, `BYE`, anything unsolicited, an I/O error or
    /// no answer within [`PoolSettings::liveness_timeout`] closes it. A kept session goes to
    /// the first waiting client with the same credentials, or into the cache.
    pub async fn checkin(&self, session: PooledSession, disposition: Disposition) {
        let PooledSession {
            mut lease,
            slot,
            reusable,
            ..
        } = session;
        let settings = &self.inner.settings;
        if disposition != Disposition::Reuse
            || !reusable
            || !settings.reuse
            || !lease.conn.has_capability("UNSELECT")
        {
            lease.close();
            drop(slot);
            return;
        }
        if lease.too_old(settings.max_age) {
            tracing::debug!(backend = %lease.backend, "session past max_age; not cached");
            metrics::counter!("imapproxy_pool_evictions_total", "reason" => "max_age").increment(1);
            lease.close();
            drop(slot);
            return;
        }
        if let Err(failure) = checkin::reset(&mut lease.conn, settings.liveness_timeout).await {
            tracing::debug!(backend = %lease.backend, reason = failure.reason, "session not cached");
            if failure.polite {
                lease.close();
            }
            drop(slot);
            return;
        }
        if !idle_and_alive(lease.conn.stream_mut()) {
            drop(slot);
            return;
        }
        self.cache_or_hand_off(Idle {
            lease,
            slot,
            since: Instant::now(),
        });
    }

    /// Gives a reset session to the first waiter of its user: the session itself to one with
    /// the same credentials and backend, else its slot (closing the session). Without
    /// waiters it is cached.
    fn cache_or_hand_off(&self, idle: Idle) {
        let mut trash: Vec<Grant> = Vec::new();
        let mut to_close = None;
        {
            let mut users = lock(&self.inner.users);
            let state = users.entry(Arc::clone(&idle.slot.user)).or_default();
            let mut idle = idle;
            loop {
                let Some(w) = state.waiters.pop_front() else {
                    state.idle.push(idle);
                    break;
                };
                if w.backend == idle.lease.backend && w.digest.matches(&idle.lease.digest) {
                    // Same user, same password, same backend: the waiter gets this session
                    // without a backend login.
                    match w.tx.send(Grant::Session(Box::new(idle))) {
                        Ok(()) => break,
                        Err(Grant::Session(back)) => idle = *back,
                        Err(other) => {
                            trash.push(other);
                            break;
                        }
                    }
                } else {
                    // Another client of this user waits with other credentials or for another
                    // backend: the slot is worth more to it than the cached session.
                    let Idle { lease, slot, since } = idle;
                    match w.tx.send(Grant::Slot(slot)) {
                        Ok(()) => {
                            to_close = Some(lease);
                            break;
                        }
                        Err(Grant::Slot(slot)) => idle = Idle { lease, slot, since },
                        Err(other) => {
                            trash.push(other);
                            to_close = Some(lease);
                            break;
                        }
                    }
                }
            }
        }
        // Only now: a slot's drop takes the users lock.
        drop(trash);
        if let Some(lease) = to_close {
            lease.close();
        }
    }

    /// Checks a cached session before lending it: not past `max_age`, nothing unsolicited
    /// waiting on the socket, and, when it has been idle for `noop_after`, a `NOOP` answered
    /// within `liveness_timeout`. On failure the session is closed and its slot returned for
    /// a fresh login.
    pub(super) async fn revive(&self, idle: Idle) -> Result<PooledSession, UserSlot> {
        let PoolSettings {
            max_age,
            noop_after,
            liveness_timeout,
            ..
        } = self.inner.settings;
        let Idle {
            mut lease,
            slot,
            since,
        } = idle;
        if lease.too_old(max_age) {
            tracing::debug!(backend = %lease.backend, "cached session past max_age; new login");
            metrics::counter!("imapproxy_pool_evictions_total", "reason" => "max_age").increment(1);
            lease.close();
            return Err(slot);
        }
        let mut alive = idle_and_alive(lease.conn.stream_mut());
        if alive && since.elapsed() >= noop_after {
            alive = match tokio::time::timeout(liveness_timeout, lease.conn.command("NOOP")).await {
                Ok(Ok(r)) => r.is_ok() && r.untagged.is_empty(),
                Ok(Err(_)) => false,
                Err(_) => {
                    tracing::warn!(
                        backend = %lease.backend,
                        timeout = ?liveness_timeout,
                        "cached session did not answer NOOP; logging in afresh"
                    );
                    false
                }
            };
        }
        if alive {
            Ok(PooledSession {
                lease,
                slot,
                reused: true,
                reusable: true,
            })
        } else {
            tracing::debug!(backend = %lease.backend, "cached session is gone; logging in afresh");
            metrics::counter!("imapproxy_pool_evictions_total", "reason" => "liveness")
                .increment(1);
            // Out of step or gone: no LOGOUT.
            drop(lease);
            Err(slot)
        }
    }

    /// Takes the least recently used cached session, of any user, that counts against
    /// `conns` (one backend's counter: after a reload replaced that backend, sessions cached
    /// on its old entry count against the old counter, and evicting them would free nothing
    /// here). The caller closes it after the lock is released.
    pub(super) fn evict_lru(&self, conns: &Arc<AtomicUsize>) -> Option<Idle> {
        let mut users = lock(&self.inner.users);
        let mut oldest: Option<(Arc<str>, usize, Instant)> = None;
        for (user, state) in users.iter() {
            for (i, idle) in state.idle.iter().enumerate() {
                let older = oldest.as_ref().is_none_or(|(_, _, t)| idle.since < *t);
                if older && Arc::ptr_eq(&idle.lease.conn_count.0, conns) {
                    oldest = Some((Arc::clone(user), i, idle.since));
                }
            }
        }
        let (user, i, _) = oldest?;
        let evicted = users.get_mut(&user).map(|state| state.idle.swap_remove(i));
        if evicted.is_some() {
            Counters::bump(&self.inner.counters.evictions);
        }
        evicted
    }

    /// Closes cached sessions idle past `idle_timeout` or logged in longer ago than
    /// `max_age`.
    pub fn expire(&self) {
        let PoolSettings {
            idle_timeout,
            max_age,
            ..
        } = self.inner.settings;
        let mut expired = Vec::new();
        {
            let mut users = lock(&self.inner.users);
            for state in users.values_mut() {
                let mut i = 0;
                while i < state.idle.len() {
                    let idle = &state.idle[i];
                    let reason = if idle.lease.too_old(max_age) {
                        "max_age"
                    } else if idle.since.elapsed() >= idle_timeout {
                        "idle_timeout"
                    } else {
                        i += 1;
                        continue;
                    };
                    expired.push((reason, state.idle.swap_remove(i)));
                }
            }
        }
        // Closed (and their slots released) only now: a slot's drop takes the users lock.
        for (reason, idle) in expired {
            metrics::counter!("imapproxy_pool_evictions_total", "reason" => reason).increment(1);
            idle.lease.close();
        }
    }

    /// Closes `user`'s cached sessions on every backend (the user name is compared
    /// case-insensitively, as checkouts key it). Used when an operator moves a user to
    /// another backend: a cached session on the old one must not be handed out again.
    /// Sessions checked out at the moment are not touched. Returns how many were closed.
    pub fn forget_user(&self, user: &str) -> usize {
        let key = user.to_lowercase();
        let forgotten: Vec<Idle> = {
            let mut users = lock(&self.inner.users);
            users
                .get_mut(key.as_str())
                .map(|state| state.idle.drain(..).collect())
                .unwrap_or_default()
        };
        // Closed (and their slots released) only now: a slot's drop takes the users lock.
        let n = forgotten.len();
        for idle in forgotten {
            idle.lease.close();
        }
        n
    }

    /// Closes every cached session (on shutdown).
    pub fn close_all(&self) {
        let all: Vec<Idle> = {
            let mut users = lock(&self.inner.users);
            users.values_mut().flat_map(|s| s.idle.drain(..)).collect()
        };
        for idle in all {
            idle.lease.close();
        }
    }

    /// The names of the backends holding a cached session that a checkout with `creds` would
    /// reuse (same user, same password, within `max_age`), most recently used first, each
    /// name once. A router can put these first among its candidates, so that a returning
    /// client gets its session back without a backend login.
    ///
    /// Credentials are compared as the cache compares them: keyed digests, in constant time;
    /// the user name case-insensitively for the lookup, exactly for the digest. Empty when
    /// `reuse` is off. The answer is a snapshot: another client may take the session first.
    pub fn backends_with_idle(&self, creds: &Credentials) -> Vec<String> {
        let digest = self
            .inner
            .key
            .digest(&creds.username, creds.password.expose());
        let user = creds.username.to_lowercase();
        let max_age = self.inner.settings.max_age;
        let users = lock(&self.inner.users);
        let Some(state) = users.get(user.as_str()) else {
            return Vec::new();
        };
        let mut matching: Vec<&Idle> = state
            .idle
            .iter()
            .filter(|i| i.lease.digest.matches(&digest) && !i.lease.too_old(max_age))
            .collect();
        matching.sort_by_key(|i| std::cmp::Reverse(i.since));
        let mut names: Vec<String> = Vec::with_capacity(matching.len());
        for idle in matching {
            if !names.iter().any(|n| **n == *idle.lease.backend) {
                names.push(idle.lease.backend.to_string());
            }
        }
        names
    }
}
