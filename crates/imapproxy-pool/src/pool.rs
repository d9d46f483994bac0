//! The session pool: warm connections per backend, a cache of authenticated sessions, and
//! per-user caps with a fair (FIFO) queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::checkin::{self, Disposition};
use crate::digest::{Digest, DigestKey};
use crate::liveness::idle_and_alive;
use crate::warm::{self, WarmPool};
use crate::{BackendConn, BackendTarget, ClientAddrs, Credentials, Error, SaslStep};

/// Pool behaviour. The binary fills it from `[pool]`.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Keep authenticated sessions after the client logs out, for the next login of the same
    /// user with the same password.
    pub reuse: bool,
    /// Warm (connected, greeted, not logged in) connections kept per backend, in the room
    /// its `max_connections` leaves beside the sessions lent out and cached.
    pub warm: usize,
    /// Replace warm connections older than this (servers drop idle unauthenticated ones).
    pub warm_max_age: Duration,
    /// Close cached sessions idle for longer than this.
    pub idle_timeout: Duration,
    /// Backend sessions per user, active and cached together. More clients wait in a queue.
    pub max_per_user: usize,
    /// How long a client waits in that queue.
    pub wait_timeout: Duration,
    /// A cached session idle for longer than this is checked with `NOOP` before reuse.
    pub noop_after: Duration,
    /// The longest a backend session is served from the cache, counted from its backend
    /// login, however busy it is: older sessions are closed at check-in, at checkout (a fresh
    /// login takes their place) and by [`SessionPool::expire`]. A backend checks the password
    /// only at login, so this bounds how long a changed password or a disabled account keeps
    /// working through the cache; a fresh login costs the backend a few milliseconds.
    pub max_age: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            reuse: true,
            warm: 2,
            warm_max_age: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_per_user: 50,
            wait_timeout: Duration::from_secs(10),
            noop_after: Duration::from_secs(30),
            max_age: Duration::from_secs(300),
        }
    }
}

/// A logged-in backend session lent to one client.
///
/// Give it back with [`SessionPool::checkin`]; dropping it closes the connection and frees
/// the user's slot for the next client in the queue.
pub struct PooledSession {
    conn: BackendConn,
    backend: Arc<str>,
    digest: Digest,
    slot: UserSlot,
    reused: bool,
    /// When the backend login happened (not the checkout): see [`PoolSettings::max_age`].
    born: Instant,
    /// False for sessions logged in by a relayed SASL exchange: there is no password to
    /// match a later login against, so they are never cached.
    cacheable: bool,
    _conn_count: ConnCount,
}

impl std::fmt::Debug for PooledSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledSession")
            .field("backend", &self.backend)
            .field("user", &self.slot.user)
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

impl PooledSession {
    /// The backend connection, logged in.
    pub fn conn(&mut self) -> &mut BackendConn {
        &mut self.conn
    }

    /// The backend connection, read-only.
    pub fn conn_ref(&self) -> &BackendConn {
        &self.conn
    }

    /// Whether this session came from the cache (no backend login happened for this client).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The backend's name.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Whether [`SessionPool::checkin`] may cache this session at all (false after a relayed
    /// SASL login, which has no password to key the cache with). Even then the pool closes it
    /// unless the caller returns it with [`Disposition::Reuse`] and its reset succeeds.
    pub fn cacheable(&self) -> bool {
        self.cacheable
    }
}

/// A backend connection reserved for one user (slot taken, counted against the backend's
/// cap) that is not logged in yet: the caller relays a SASL exchange through it (RFC 9051
/// §6.2.2), for mechanisms the proxy cannot verify itself (XOAUTH2, OAUTHBEARER, SCRAM-*).
/// From [`SessionPool::checkout_sasl`].
#[derive(Debug)]
pub struct SaslLogin {
    session: PooledSession,
    tag: Option<String>,
}

impl SaslLogin {
    /// Sends `ID` and `AUTHENTICATE <mechanism>` with the client's first message (raw bytes);
    /// see [`BackendConn::sasl_start`].
    pub async fn start(
        &mut self,
        mechanism: &str,
        initial_response: Option<&[u8]>,
        id_fields: &[(String, String)],
    ) -> Result<SaslStep, Error> {
        let (tag, step) = self
            .session
            .conn
            .sasl_start(mechanism, initial_response, id_fields)
            .await?;
        self.tag = Some(tag);
        Ok(step)
    }

    /// Relays the client's answer (raw bytes) to the last challenge.
    pub async fn respond(&mut self, response: &[u8]) -> Result<SaslStep, Error> {
        let tag = self.started()?;
        self.session.conn.sasl_respond(&tag, response).await
    }

    /// Relays the client's `*` (cancel) and reads the backend's answer.
    pub async fn cancel(&mut self) -> Result<(), Error> {
        let tag = self.started()?;
        self.session.conn.sasl_cancel(&tag).await
    }

    fn started(&self) -> Result<String, Error> {
        self.tag
            .clone()
            .ok_or_else(|| Error::Protocol("SASL exchange not started".into()))
    }

    /// The logged-in session, once a step returned [`SaslStep::Done`]. It is never cached
    /// ([`PooledSession::cacheable`] is false).
    pub fn into_session(self) -> PooledSession {
        self.session
    }
}

/// Counters for status pages and tests.
#[derive(Clone, Debug, Default)]
pub struct PoolStatus {
    /// Authenticated sessions cached, all users.
    pub idle_sessions: usize,
    /// User slots in use (sessions lent out plus cached).
    pub slots_in_use: usize,
    /// Clients waiting for a slot.
    pub waiting: usize,
    /// Warm connections ready, per backend.
    pub warm: Vec<(String, usize)>,
    /// Checkouts served from the cache.
    pub hits: u64,
    /// Checkouts that logged in on a backend.
    pub misses: u64,
    /// Checkouts that had to wait in the queue.
    pub waits: u64,
    /// Checkouts that gave up after `wait_timeout`.
    pub timeouts: u64,
    /// Cached sessions closed to make room for another user on a full backend.
    pub evictions: u64,
}

struct Idle {
    conn: BackendConn,
    backend: Arc<str>,
    digest: Digest,
    /// Cached since (the last check-in): for `idle_timeout` and least-recently-used eviction.
    since: Instant,
    /// Logged in on the backend at: for `max_age`.
    born: Instant,
    slot: UserSlot,
    conn_count: ConnCount,
}

impl Idle {
    fn too_old(&self, max_age: Duration) -> bool {
        self.born.elapsed() >= max_age
    }
}

enum Grant {
    /// A cached session that matches the waiter's backend and credentials.
    Session(Box<Idle>),
    /// A slot: connect and log in.
    Slot(UserSlot),
}

struct Waiter {
    id: u64,
    backend: Arc<str>,
    digest: Digest,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct UserState {
    slots: usize,
    idle: Vec<Idle>,
    waiters: VecDeque<Waiter>,
}

struct Backend {
    target: BackendTarget,
    /// The post-login capability list last seen, shared by this backend's sessions.
    capabilities: Mutex<Option<Arc<str>>>,
    /// The pre-login capability list last seen (warm or fresh connections).
    prelogin: Arc<Mutex<Option<Arc<str>>>>,
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
    hits: AtomicU64,
    misses: AtomicU64,
    waits: AtomicU64,
    timeouts: AtomicU64,
    evictions: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain data; a panic elsewhere while holding the lock leaves it consistent
    // enough to keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One of a user's `max_per_user` slots. Dropping it hands the slot to the first waiter or
/// frees it. Never dropped while the users lock is held.
struct UserSlot {
    pool: Weak<Inner>,
    user: Arc<str>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.release_slot(&self.user);
        }
    }
}

/// One open connection counted against its backend's `max_connections`.
struct ConnCount(Arc<AtomicUsize>);

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    fn release_slot(self: &Arc<Self>, user: &Arc<str>) {
        // Declared before the guard, so dropped after it: nothing holding a slot may be
        // dropped while the lock is held (its Drop takes the lock).
        let mut trash: Vec<Grant> = Vec::new();
        let mut users = lock(&self.users);
        let Some(state) = users.get_mut(user) else {
            return;
        };
        while let Some(w) = state.waiters.pop_front() {
            let slot = self.slot(user);
            match w.tx.send(Grant::Slot(slot)) {
                Ok(()) => return,
                // That waiter gave up. The slot token goes nowhere: disarm it so that its
                // drop does not release the slot a second time, and try the next waiter.
                Err(Grant::Slot(mut slot)) => slot.pool = Weak::new(),
                Err(other) => trash.push(other),
            }
        }
        state.slots = state.slots.saturating_sub(1);
        if state.slots == 0 && state.idle.is_empty() && state.waiters.is_empty() {
            users.remove(user);
        }
    }

    fn slot(self: &Arc<Self>, user: &Arc<str>) -> UserSlot {
        UserSlot {
            pool: Arc::downgrade(self),
            user: Arc::clone(user),
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

/// Whom a fresh backend login is for.
struct LoginFor<'a> {
    creds: &'a Credentials,
    id_fields: &'a [(String, String)],
    client: Option<ClientAddrs>,
    /// Leave the connection unauthenticated: the caller relays a SASL exchange.
    sasl: bool,
}

enum Plan {
    Reuse(Box<Idle>),
    New(UserSlot, Option<(BackendConn, ConnCount)>),
    Wait(u64, oneshot::Receiver<Grant>),
}

impl SessionPool {
    /// An empty pool. Add backends with [`SessionPool::add_backend`] and start
    /// [`SessionPool::maintain`] on a runtime to keep warm connections and expire idle ones.
    pub fn new(settings: PoolSettings) -> Result<Self, Error> {
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                key: DigestKey::random()?,
                users: Mutex::new(HashMap::new()),
                backends: Mutex::new(HashMap::new()),
                next_waiter: AtomicU64::new(1),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                waits: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
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

    /// SASL mechanisms (upper-cased, without `AUTH=`) that every backend whose pre-login
    /// capabilities are known advertises; empty while none is known. Learnt from warm and
    /// fresh connections, so it fills in once [`SessionPool::maintain`] or a login has
    /// connected.
    pub fn common_prelogin_mechanisms(&self) -> Vec<String> {
        let lists: Vec<Arc<str>> = lock(&self.inner.backends)
            .values()
            .filter_map(|be| lock(&be.prelogin).clone())
            .collect();
        let mechs = |caps: &str| -> Vec<String> {
            caps.split_ascii_whitespace()
                .filter_map(|c| {
                    c.get(..5)
                        .filter(|p| p.eq_ignore_ascii_case("AUTH="))
                        .and_then(|_| c.get(5..))
                })
                .map(str::to_ascii_uppercase)
                .collect()
        };
        let Some((first, rest)) = lists.split_first() else {
            return Vec::new();
        };
        let others: Vec<Vec<String>> = rest.iter().map(|c| mechs(c)).collect();
        mechs(first)
            .into_iter()
            .filter(|m| others.iter().all(|o| o.contains(m)))
            .collect()
    }

    /// A connection to `backend` reserved for `username` (waiting in the user's queue like
    /// [`SessionPool::checkout`]), not logged in: the caller relays a SASL exchange through
    /// the returned [`SaslLogin`]. Never served from the cache, and the session it yields is
    /// never cached.
    pub async fn checkout_sasl(
        &self,
        backend: &str,
        username: &str,
        client: Option<ClientAddrs>,
    ) -> Result<SaslLogin, Error> {
        let creds = Credentials {
            username: username.to_owned(),
            password: imapproxy_codec::Secret::new(Vec::new()),
        };
        let session = self
            .checkout_inner(backend, &creds, &[], client, true)
            .await?;
        Ok(SaslLogin { session, tag: None })
    }

    fn backend(&self, name: &str) -> Option<(Arc<str>, Arc<Backend>)> {
        lock(&self.inner.backends)
            .get_key_value(name)
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
    }

    /// A logged-in session of `creds.username` on `backend`: a cached one with the same
    /// credentials when there is one (no backend round trip), else a warm connection (or a
    /// new one) logged in with `creds`, sending `id_fields` first. Waits in the user's queue
    /// for at most `wait_timeout` when all of the user's slots are busy.
    pub async fn checkout(
        &self,
        backend: &str,
        creds: &Credentials,
        id_fields: &[(String, String)],
    ) -> Result<PooledSession, Error> {
        self.checkout_for(backend, creds, id_fields, None).await
    }

    /// [`SessionPool::checkout`] on behalf of `client`: a backend with
    /// [`BackendTarget::proxy_protocol`] gets a new connection whose PROXY v2 header names
    /// `client` (never a warm one). A cached session of the same user and password is still
    /// reused, and keeps the address of the client it was first opened for.
    pub async fn checkout_for(
        &self,
        backend: &str,
        creds: &Credentials,
        id_fields: &[(String, String)],
        client: Option<ClientAddrs>,
    ) -> Result<PooledSession, Error> {
        self.checkout_inner(backend, creds, id_fields, client, false)
            .await
    }

    async fn checkout_inner(
        &self,
        backend: &str,
        creds: &Credentials,
        id_fields: &[(String, String)],
        client: Option<ClientAddrs>,
        sasl: bool,
    ) -> Result<PooledSession, Error> {
        let (backend, be) = self
            .backend(backend)
            .ok_or_else(|| Error::Protocol(format!("unknown backend {backend:?}")))?;
        let user: Arc<str> = Arc::from(creds.username.to_lowercase());
        let digest = if sasl {
            self.inner.key.unmatchable(&creds.username)?
        } else {
            self.inner
                .key
                .digest(&creds.username, creds.password.expose())
        };
        let settings = &self.inner.settings;

        let plan = {
            let mut users = lock(&self.inner.users);
            let state = users.entry(Arc::clone(&user)).or_default();
            let hit = state
                .idle
                .iter()
                .position(|s| s.backend == backend && s.digest.matches(&digest));
            if let Some(i) = hit.filter(|_| settings.reuse) {
                Plan::Reuse(Box::new(state.idle.swap_remove(i)))
            } else if state.slots < settings.max_per_user {
                state.slots += 1;
                Plan::New(self.inner.slot(&user), None)
            } else if !state.idle.is_empty() {
                // Every slot is held, some by cached sessions nobody asked for: close the
                // oldest and take its slot.
                let oldest = state
                    .idle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.since)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                // The evicted session's slot becomes ours: the user's count does not change.
                let Idle {
                    conn,
                    slot,
                    conn_count,
                    ..
                } = state.idle.swap_remove(oldest);
                Plan::New(slot, Some((conn, conn_count)))
            } else {
                let (tx, rx) = oneshot::channel();
                let id = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed);
                state.waiters.push_back(Waiter {
                    id,
                    backend: Arc::clone(&backend),
                    digest,
                    tx,
                });
                Plan::Wait(id, rx)
            }
        };

        let mut plan = plan;
        loop {
            match plan {
                Plan::Reuse(idle) => {
                    let idle = *idle;
                    match self.revive(idle).await {
                        Ok(session) => {
                            self.inner.hits.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("imapproxy_pool_checkouts_total", "result" => "hit")
                                .increment(1);
                            return Ok(session);
                        }
                        // Dead: its slot is ours now; log in afresh.
                        Err(slot) => plan = Plan::New(slot, None),
                    }
                }
                Plan::New(slot, evicted) => {
                    if let Some((conn, conn_count)) = evicted {
                        metrics::counter!("imapproxy_pool_evictions_total", "reason" => "user_full")
                            .increment(1);
                        close_politely(conn);
                        drop(conn_count);
                    }
                    self.inner.misses.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("imapproxy_pool_checkouts_total", "result" => "miss")
                        .increment(1);
                    return self
                        .login(
                            backend,
                            &be,
                            slot,
                            digest,
                            LoginFor {
                                creds,
                                id_fields,
                                client,
                                sasl,
                            },
                        )
                        .await;
                }
                Plan::Wait(id, rx) => {
                    self.inner.waits.fetch_add(1, Ordering::Relaxed);
                    match tokio::time::timeout(settings.wait_timeout, rx).await {
                        Ok(Ok(Grant::Session(idle))) => plan = Plan::Reuse(idle),
                        Ok(Ok(Grant::Slot(slot))) => plan = Plan::New(slot, None),
                        Ok(Err(_)) | Err(_) => {
                            self.abandon_wait(&user, id);
                            self.inner.timeouts.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("imapproxy_pool_checkouts_total", "result" => "timeout")
                                .increment(1);
                            return Err(Error::PoolTimeout);
                        }
                    }
                }
            }
        }
    }

    /// Leaves the queue after a timeout. A grant sent in the meantime was dropped with the
    /// receiver, which released it again.
    fn abandon_wait(&self, user: &Arc<str>, id: u64) {
        let mut users = lock(&self.inner.users);
        if let Some(state) = users.get_mut(user) {
            state.waiters.retain(|w| w.id != id);
        }
    }

    /// Checks a cached session before lending it: not past `max_age`, nothing unsolicited
    /// waiting on the socket, and a `NOOP` round trip when it has been idle for long. On
    /// failure the slot is returned for a fresh login.
    async fn revive(&self, idle: Idle) -> Result<PooledSession, UserSlot> {
        if idle.too_old(self.inner.settings.max_age) {
            tracing::debug!(backend = %idle.backend, "cached session past max_age; new login");
            metrics::counter!("imapproxy_pool_evictions_total", "reason" => "max_age").increment(1);
            let Idle {
                conn,
                slot,
                conn_count,
                ..
            } = idle;
            close_politely(conn);
            drop(conn_count);
            return Err(slot);
        }
        let Idle {
            mut conn,
            backend,
            digest,
            since,
            born,
            slot,
            conn_count,
        } = idle;
        let mut ok = idle_and_alive(conn.stream_mut());
        if ok && since.elapsed() >= self.inner.settings.noop_after {
            ok = matches!(conn.command("NOOP").await, Ok(r) if r.is_ok() && r.untagged.is_empty());
        }
        if ok {
            Ok(PooledSession {
                conn,
                backend,
                digest,
                slot,
                reused: true,
                born,
                cacheable: true,
                _conn_count: conn_count,
            })
        } else {
            tracing::debug!(%backend, "cached session is gone; logging in afresh");
            drop(conn);
            drop(conn_count);
            Err(slot)
        }
    }

    async fn login(
        &self,
        backend: Arc<str>,
        be: &Backend,
        slot: UserSlot,
        digest: Digest,
        who: LoginFor<'_>,
    ) -> Result<PooledSession, Error> {
        let LoginFor {
            creds,
            id_fields,
            client,
            sasl,
        } = who;
        let count = be.conns.fetch_add(1, Ordering::AcqRel) + 1;
        let conn_count = ConnCount(Arc::clone(&be.conns));
        if count > be.max_connections {
            // Our increment stands: the evicted session's count is given back instead. Each
            // login that finds the backend over its cap evicts one, so concurrent ones settle
            // at the cap. Without anything to evict, dropping `conn_count` undoes ours.
            let Some(evicted) = self.evict_lru(&be.conns) else {
                return Err(Error::BackendFull);
            };
            tracing::debug!(%backend, "backend full: closing its least recently used session");
            self.inner.evictions.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("imapproxy_pool_evictions_total", "reason" => "backend_full")
                .increment(1);
            // Outside the users lock: the slot's drop takes it (and may hand the slot to a
            // waiter of the evicted session's user).
            close_politely(evicted.conn);
            drop(evicted.slot);
            drop(evicted.conn_count);
        }
        let warm = match &be.warm {
            // A warm connection's PROXY header (if any) could not name this client.
            Some(pool) if !be.target.proxy_protocol => warm::take_ready(pool).await,
            _ => None,
        };
        let mut conn = match warm {
            Some(conn) => conn,
            None => BackendConn::connect_for(&be.target, client).await?,
        };
        warm::record_prelogin(&be.prelogin, &conn);
        if !sasl {
            conn.login(creds, id_fields).await?;
            conn.intern_capabilities(&be.capabilities);
        }
        Ok(PooledSession {
            conn,
            backend,
            digest,
            slot,
            reused: false,
            born: Instant::now(),
            cacheable: !sasl,
            _conn_count: conn_count,
        })
    }

    /// Takes the least recently used cached session, of any user, that counts against
    /// `conns` (one backend's counter: after a reload replaced that backend, sessions cached
    /// on its old entry count against the old counter, and evicting them would free nothing
    /// here). The caller closes it after the lock is released.
    fn evict_lru(&self, conns: &Arc<AtomicUsize>) -> Option<Idle> {
        let mut users = lock(&self.inner.users);
        let mut oldest: Option<(Arc<str>, usize, Instant)> = None;
        for (user, state) in users.iter() {
            for (i, idle) in state.idle.iter().enumerate() {
                let older = oldest.as_ref().is_none_or(|(_, _, t)| idle.since < *t);
                if older && Arc::ptr_eq(&idle.conn_count.0, conns) {
                    oldest = Some((Arc::clone(user), i, idle.since));
                }
            }
        }
        let (user, i, _) = oldest?;
        users.get_mut(&user).map(|state| state.idle.swap_remove(i))
    }

    /// Takes a session back after its client is done.
    ///
    /// With [`Disposition::Close`] (the session ran `ENABLE` or `COMPRESS`, saw an error, or
    /// its client vanished mid-command) it is closed, and so is a session that may not be
    /// cached at all ([`PooledSession::cacheable`]), one past [`PoolSettings::max_age`], or
    /// any when `reuse` is off or the backend lacks `UNSELECT`. Otherwise the pool always
    /// sends `UNSELECT` (RFC 3691; never `CLOSE`, which expunges), whatever the caller
    /// believes was selected: `OK` or `BAD` (nothing selected) with no untagged data but
    /// `* OK [CLOSED]` keeps the session; `NO`, `BYE`, anything unsolicited, an I/O error or
    /// no answer within 2 s closes it. A kept session goes to the first waiting client with
    /// the same credentials, or into the cache.
    pub async fn checkin(&self, session: PooledSession, disposition: Disposition) {
        let PooledSession {
            mut conn,
            backend,
            digest,
            slot,
            born,
            cacheable,
            _conn_count: conn_count,
            ..
        } = session;
        let settings = &self.inner.settings;
        if disposition != Disposition::Reuse
            || !cacheable
            || !settings.reuse
            || !conn.has_capability("UNSELECT")
        {
            close_politely(conn);
            drop(slot);
            return;
        }
        if born.elapsed() >= settings.max_age {
            tracing::debug!(%backend, "session past max_age; not cached");
            metrics::counter!("imapproxy_pool_evictions_total", "reason" => "max_age").increment(1);
            close_politely(conn);
            drop(slot);
            return;
        }
        if let Err(failure) = checkin::reset(&mut conn).await {
            tracing::debug!(%backend, reason = failure.reason, "session not cached");
            if failure.polite {
                close_politely(conn);
            }
            drop(slot);
            return;
        }
        if !idle_and_alive(conn.stream_mut()) {
            drop(slot);
            return;
        }
        let idle = Idle {
            conn,
            backend,
            digest,
            since: Instant::now(),
            born,
            slot,
            conn_count,
        };
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
                if w.backend == idle.backend && w.digest.matches(&idle.digest) {
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
                    let Idle {
                        conn,
                        backend,
                        digest,
                        since,
                        born,
                        slot,
                        conn_count,
                    } = idle;
                    match w.tx.send(Grant::Slot(slot)) {
                        Ok(()) => {
                            to_close = Some((conn, conn_count));
                            break;
                        }
                        Err(Grant::Slot(slot)) => {
                            idle = Idle {
                                conn,
                                backend,
                                digest,
                                since,
                                born,
                                slot,
                                conn_count,
                            };
                        }
                        Err(other) => {
                            trash.push(other);
                            to_close = Some((conn, conn_count));
                            break;
                        }
                    }
                }
            }
        }
        drop(trash);
        if let Some((conn, conn_count)) = to_close {
            close_politely(conn);
            drop(conn_count);
        }
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
                    let reason = if idle.too_old(max_age) {
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
            close_politely(idle.conn);
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
            close_politely(idle.conn);
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
            close_politely(idle.conn);
        }
    }

    /// Counters and gauges.
    pub fn status(&self) -> PoolStatus {
        let mut st = PoolStatus {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            waits: self.inner.waits.load(Ordering::Relaxed),
            timeouts: self.inner.timeouts.load(Ordering::Relaxed),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            ..PoolStatus::default()
        };
        for state in lock(&self.inner.users).values() {
            st.idle_sessions += state.idle.len();
            st.slots_in_use += state.slots;
            st.waiting += state.waiters.len();
        }
        for (name, be) in lock(&self.inner.backends).iter() {
            let ready = be.warm.as_ref().map_or(0, |w| w.status().available);
            st.warm.push((name.to_string(), ready));
        }
        st
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
