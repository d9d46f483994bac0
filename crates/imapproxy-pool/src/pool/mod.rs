//! The session pool: warm connections per backend, a cache of authenticated sessions, and
//! per-user caps with a fair (FIFO) queue.
//!
//! - `settings`: [`PoolSettings`].
//! - `checkout`: lending a session (cache, warm connection or fresh login; the queue).
//! - `cache`: check-in, liveness, expiry, eviction of cached sessions.
//! - `slots`: per-user slots and their queue, per-backend connection counts.
//! - `session` and `sasl`: what the caller holds ([`PooledSession`], [`SaslLogin`]).

mod cache;
mod checkout;
mod sasl;
mod session;
mod settings;
mod shared;
mod slots;
mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use sasl::SaslLogin;
pub use session::PooledSession;
pub use settings::PoolSettings;
pub use shared::{Acquire, SharedPlace, SharedUserCap};
pub use status::PoolStatus;

use crate::capabilities::Capabilities;
use crate::digest::DigestKey;
use crate::sync::lock;
use crate::warm::{self, WarmPool};
use crate::{BackendConn, BackendTarget, Error};
use slots::UserState;
use status::Counters;

struct Backend {
    target: BackendTarget,
    /// The post-login capability list last seen, shared by this backend's sessions.
    capabilities: Mutex<Option<Capabilities>>,
    /// The pre-login capability list last seen (warm or fresh connections).
    prelogin: Arc<Mutex<Option<Capabilities>>>,
    warm: Option<WarmPool>,
    conns: Arc<AtomicUsize>,
    max_connections: usize,
}

struct Inner {
    settings: PoolSettings,
    key: DigestKey,
    users: Mutex<HashMap<Arc<str>, UserState>>,
    backends: Mutex<HashMap<Arc<str>, Arc<Backend>>>,
    next_waiter: AtomicU64,
    counters: Counters,
    /// Places per user shared with other proxies, if any.
    shared_cap: Mutex<Option<Arc<dyn SharedUserCap>>>,
    /// Told the user's key when a client of the user starts a queue (see
    /// [`SessionPool::on_waiter`]).
    waiter_hook: Mutex<Option<WaiterHook>>,
}

/// See [`SessionPool::on_waiter`].
type WaiterHook = Arc<dyn Fn(&str) + Send + Sync>;

impl Inner {
    fn waiter_arrived(&self, user: &str) {
        let hook = lock(&self.waiter_hook).clone();
        if let Some(hook) = hook {
            hook(user);
        }
    }
}

/// Backend sessions shared by many clients: see the crate docs.
#[derive(Clone)]
pub struct SessionPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl SessionPool {
    /// An empty pool. Add backends with [`SessionPool::add_backend`] and start
    /// [`SessionPool::maintain`] on a runtime to keep warm connections and expire idle ones.
    ///
    /// # Errors
    /// [`Error::NoRandomness`] when the key for credential digests cannot be drawn.
    pub fn new(settings: PoolSettings) -> Result<Self, Error> {
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                key: DigestKey::random()?,
                users: Mutex::new(HashMap::new()),
                backends: Mutex::new(HashMap::new()),
                next_waiter: AtomicU64::new(1),
                counters: Counters::default(),
                shared_cap: Mutex::new(None),
                waiter_hook: Mutex::new(None),
            }),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// Registers (or replaces) a backend under `name`, with its connection cap.
    pub fn add_backend(&self, name: &str, target: BackendTarget, max_connections: usize) {
        let s = &self.inner.settings;
        // Warm connections are opened before their client is known: a backend that takes a
        // PROXY header (naming the client) gets none.
        let prelogin = Arc::new(Mutex::new(None));
        let warm = (s.warm > 0 && !target.proxy_protocol)
            .then(|| {
                warm::build(
                    target.clone(),
                    s.warm,
                    s.warm_max_age,
                    Arc::clone(&prelogin),
                )
            })
            .flatten();
        let backend = Arc::new(Backend {
            target,
            capabilities: Mutex::new(None),
            prelogin,
            warm,
            conns: Arc::new(AtomicUsize::new(0)),
            max_connections: max_connections.max(1),
        });
        lock(&self.inner.backends).insert(Arc::from(name), backend);
    }

    fn backend(&self, name: &str) -> Option<(Arc<str>, Arc<Backend>)> {
        lock(&self.inner.backends)
            .get_key_value(name)
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
    }

    /// SASL mechanisms (upper-cased, without `AUTH=`) that every backend whose pre-login
    /// capabilities are known advertises; empty while none is known. Learnt from warm and
    /// fresh connections, so it fills in once [`SessionPool::maintain`] or a login has
    /// connected.
    pub fn common_prelogin_mechanisms(&self) -> Vec<String> {
        let lists: Vec<Capabilities> = lock(&self.inner.backends)
            .values()
            .filter_map(|be| lock(&be.prelogin).clone())
            .collect();
        let Some((first, rest)) = lists.split_first() else {
            return Vec::new();
        };
        let others: Vec<Vec<String>> = rest.iter().map(|c| c.auth_mechanisms().collect()).collect();
        first
            .auth_mechanisms()
            .filter(|m| others.iter().all(|o| o.contains(m)))
            .collect()
    }

    /// Closes cached sessions idle past `idle_timeout` or older than `max_age`, and keeps
    /// warm connections topped up (within the room each backend's `max_connections` leaves).
    /// Runs until the pool is dropped; spawn it once.
    pub async fn maintain(self) {
        let weak = Arc::downgrade(&self.inner);
        drop(self);
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let pool = SessionPool { inner };
            pool.expire();
            let backends: Vec<Arc<Backend>> =
                lock(&pool.inner.backends).values().cloned().collect();
            let s = pool.inner.settings.clone();
            drop(pool);
            for be in backends {
                if let Some(w) = &be.warm {
                    // Warm connections are connections too: they get only the room that
                    // `max_connections` leaves beside the sessions lent out and cached.
                    let room = be
                        .max_connections
                        .saturating_sub(be.conns.load(Ordering::Acquire));
                    warm::top_up(w, s.warm.min(room), s.warm_max_age).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether clients of `user` (compared case-insensitively) wait for one of the user's
    /// `max_per_user` slots: a session idle between commands may then park, giving its
    /// backend session to the first of them.
    pub fn has_waiters(&self, user: &str) -> bool {
        let key = user.to_lowercase();
        lock(&self.inner.users)
            .get(key.as_str())
            .is_some_and(|s| !s.waiters.is_empty())
    }

    /// Calls `hook` with the user's key (lower-cased) when a client of that user starts
    /// waiting for one of the user's `max_per_user` slots and nobody of the user waited
    /// before (the queue's first; [`SessionPool::has_waiters`] stays true for as long as
    /// anyone waits). With it, sessions that could park sleep until someone waits instead of
    /// checking [`SessionPool::has_waiters`] on a timer: idle sessions cost no wake-ups.
    /// Called outside the pool's locks; replaces any hook set before.
    pub fn on_waiter(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        *lock(&self.inner.waiter_hook) = Some(Arc::new(hook));
    }
}

/// Sends `LOGOUT` and closes, in the background, bounded in time.
fn close_politely(mut conn: BackendConn) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.command("LOGOUT")).await;
        });
    }
}
