//! The live logged-in sessions of one proxy, and the operator's user → backend overrides.
//!
//! A session registers once its backend login succeeded and stays registered until its relay
//! ends (the [`Registration`] guard deregisters on drop, whatever the path out). Each entry
//! carries what reaches the session from outside, heard through one small future
//! ([`Registration::requested`] for an operator's requests; the relay also hears the proxy's
//! shutdown, its idle deadline and a waiting client of its user):
//! [`SessionRegistry::kick_user`] has the relay end the session with `BYE` (RFC 9051 §7.1.5),
//! so the client reconnects, possibly to another backend; [`SessionRegistry::migrate_user`]
//! and [`SessionRegistry::migrate_backend`] instead ask sessions to move to another backend
//! connection without the client noticing.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures_util::task::AtomicWaker;
use imapproxy_route::BackendId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sync::lock;

/// Why an operator asked a session to move to another backend connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MigrationCause {
    /// Its backend is drained with migration.
    Drain,
    /// Its user was moved to another backend.
    Move,
}

impl MigrationCause {
    fn code(self) -> u8 {
        match self {
            Self::Drain => 1,
            Self::Move => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Drain),
            2 => Some(Self::Move),
            _ => None,
        }
    }
}

/// What an operator asked of a session, as [`Registration::requested`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Request {
    /// End the session (a kick).
    End,
    /// Move it to another backend connection.
    Move(MigrationCause),
}

/// Bits of [`Control::flags`]: what reached a session from outside, besides its sockets.
const KICKED: u8 = 1;
/// A client of the session's user started waiting for one of the user's slots (parking).
const WAITER: u8 = 2;
/// The session's idle deadline passed, as the registry's sweep saw it.
const DUE: u8 = 4;
/// The proxy is shutting down (the session's shutdown token was cancelled).
const SHUTDOWN: u8 = 8;

/// How often the registry looks for sessions past their idle deadline: the precision of the
/// authenticated idle timeout (RFC 9051 §5.4 asks for at least 30 minutes).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What reaches one session from outside (an operator's kick or move, the proxy's shutdown, a
/// waiting client of its user, its idle deadline), shared by its entry and its [`Registration`]. One allocation per
/// session, and the session waits on all of it with one waker instead of a future per cause:
/// what an idle session holds is what every idle session costs.
#[derive(Debug)]
struct Control {
    waker: AtomicWaker,
    /// [`KICKED`], [`WAITER`], [`DUE`], [`SHUTDOWN`].
    flags: AtomicU8,
    /// A [`MigrationCause`] code, 0 when none is pending.
    cause: AtomicU8,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            waker: AtomicWaker::new(),
            flags: AtomicU8::new(0),
            cause: AtomicU8::new(0),
        }
    }
}

impl Control {
    /// Sets `flag` and wakes the session; the flag stays set until the session takes it, so
    /// a session that is not waiting right now (mid-re-home, say) hears it when it next does.
    fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
        self.waker.wake();
    }

    fn migrate(&self, cause: MigrationCause) {
        self.cause.store(cause.code(), Ordering::Release);
        self.waker.wake();
    }

    fn kick(&self) {
        self.raise(KICKED);
    }

    /// A kick (every time once kicked), else a move asked (taken; with `moves` only).
    fn request(&self, moves: bool) -> Option<Request> {
        if self.flags.load(Ordering::Acquire) & KICKED != 0 {
            return Some(Request::End);
        }
        if !moves {
            return None;
        }
        MigrationCause::from_code(self.cause.swap(0, Ordering::AcqRel)).map(Request::Move)
    }

    /// Takes `flag` if it is set.
    fn take(&self, flag: u8) -> bool {
        self.flags.load(Ordering::Acquire) & flag != 0
            && self.flags.fetch_and(!flag, Ordering::AcqRel) & flag != 0
    }
}

/// What woke a session, as [`Registration::signalled`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// An operator's request.
    Request(Request),
    /// The proxy is shutting down: the session says `BYE`.
    Shutdown,
    /// A client of the session's user started waiting for a slot.
    WaiterArrived,
    /// The idle deadline armed with [`Registration::arm_idle`] passed (give or take the
    /// sweep's second): the session checks its own clock and ends or arms it again.
    IdleDue,
}

/// One live logged-in session, as listed by [`SessionRegistry::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's id (the one in its log span).
    pub id: u64,
    /// The user, lower-cased.
    pub user: String,
    /// The client's address (after a PROXY header, the real client's).
    pub client: SocketAddr,
    /// The backend the session is relayed to.
    pub backend: String,
    /// When the login succeeded.
    pub since: SystemTime,
}

/// What the registry keeps of a session; its [`SessionInfo`] is made when asked for. Kept
/// small: the map holds one per live session, and up to twice as many slots.
struct Entry {
    /// Lower-cased; shared with the session (and the pool's slots of the user).
    user: Arc<str>,
    client: SocketAddr,
    /// Shared with the backend's other sessions.
    backend: BackendId,
    since: SystemTime,
    control: Arc<Control>,
    /// What tells the session the proxy is shutting down, watched by the sweep.
    shutdown: Option<CancellationToken>,
    /// [`SHUTDOWN`] was raised.
    shutdown_told: bool,
    /// The idle deadline in milliseconds of the registry's clock (`u64::MAX`: none), kept
    /// here rather than in the `Control` so that the sweep reads the table in order.
    due: u64,
}

impl Entry {
    fn info(&self, id: u64) -> SessionInfo {
        SessionInfo {
            id,
            user: self.user.to_string(),
            client: self.client,
            backend: self.backend.as_str().to_owned(),
            since: self.since,
        }
    }
}

struct Inner {
    sessions: Mutex<HashMap<u64, Entry>>,
    /// The clock of the idle deadlines.
    epoch: Instant,
    /// The sweep that raises [`DUE`] runs (started with the first deadline armed).
    sweeping: AtomicBool,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            epoch: Instant::now(),
            sweeping: AtomicBool::new(false),
        }
    }
}

impl Inner {
    /// `at` in milliseconds of the registry's clock.
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts the sweep once, on the current runtime (none: no idle deadline is enforced, and
    /// the next arm tries again).
    fn start_sweep(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let inner = Arc::downgrade(self);
                rt.spawn(async move {
                    // However the sweep ends (its runtime shut down, say), the next deadline
                    // armed starts another.
                    let _restart = Restart(inner.clone());
                    sweep(inner).await;
                });
            }
            Err(_) => self.sweeping.store(false, Ordering::Release),
        }
    }
}

/// Clears [`Inner::sweeping`] when the sweep's task ends or is dropped.
struct Restart(Weak<Inner>);

impl Drop for Restart {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.sweeping.store(false, Ordering::Release);
        }
    }
}

/// Once a second, wakes the sessions whose idle deadline passed or whose shutdown token was
/// cancelled: one timer for the whole proxy instead of a timer and a cancellation future in
/// every session (a timer entry, a 100-byte allocation and 72 bytes of future each). Ends
/// with the registry.
async fn sweep(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = inner.millis(Instant::now());
        let mut sessions = lock(&inner.sessions);
        // Sessions share their token, as a rule: it is read once per token met in a row. What
        // is looked at of every session lies in the table itself (a pass over 10,000 sessions
        // reads memory in order); only a session to wake is followed to its `Control`.
        let mut token: Option<(CancellationToken, bool)> = None;
        for e in sessions.values_mut() {
            if let Some(shutdown) = &e.shutdown {
                let cancelled = match &token {
                    Some((t, cancelled)) if t == shutdown => *cancelled,
                    _ => {
                        let cancelled = shutdown.is_cancelled();
                        token = Some((shutdown.clone(), cancelled));
                        cancelled
                    }
                };
                if cancelled && !e.shutdown_told {
                    e.shutdown_told = true;
                    e.control.raise(SHUTDOWN);
                }
            }
            if e.due <= now {
                // Raised once: the session arms its next deadline itself.
                e.due = u64::MAX;
                e.control.raise(DUE);
            }
        }
    }
}

/// The proxy's live logged-in sessions. Cheap to clone; clones share the sessions.
#[derive(Clone, Default)]
pub struct SessionRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRegistry")
            .field("count", &self.count())
            .finish()
    }
}

impl SessionRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers session `id` of `user` (lower-cased here) from `client` on `backend`. The
    /// session stays listed until the returned guard is dropped.
    pub fn register(
        &self,
        id: u64,
        user: &str,
        client: SocketAddr,
        backend: &BackendId,
    ) -> Registration {
        self.register_until(id, Arc::from(user.to_lowercase()), client, backend, None)
    }

    /// [`SessionRegistry::register`] of a `user` already lower-cased (shared with the
    /// session), and the session hears [`Signal::Shutdown`] (within the sweep's second) once
    /// `shutdown` is cancelled.
    pub(crate) fn register_until(
        &self,
        id: u64,
        user: Arc<str>,
        client: SocketAddr,
        backend: &BackendId,
        shutdown: Option<&CancellationToken>,
    ) -> Registration {
        let control = Arc::new(Control::default());
        let entry = Entry {
            user,
            client,
            backend: backend.clone(),
            since: SystemTime::now(),
            control: Arc::clone(&control),
            shutdown: shutdown.cloned(),
            shutdown_told: false,
            due: u64::MAX,
        };
        lock(&self.inner.sessions).insert(id, entry);
        Registration {
            registry: Arc::clone(&self.inner),
            id,
            control,
        }
    }

    /// Asks every live session of `user` to move to another backend connection (its next
    /// login target: set the override first). Returns how many were asked.
    pub fn migrate_user(&self, user: &str) -> usize {
        let user = user.to_lowercase();
        self.migrate_where(|e| *e.user == *user, MigrationCause::Move)
    }

    /// Asks every live session on `backend` to move to another backend. Returns how many
    /// were asked.
    pub fn migrate_backend(&self, backend: &str) -> usize {
        self.migrate_where(|e| e.backend.as_str() == backend, MigrationCause::Drain)
    }

    fn migrate_where(&self, f: impl Fn(&Entry) -> bool, cause: MigrationCause) -> usize {
        let sessions = lock(&self.inner.sessions);
        let mut n = 0;
        for e in sessions.values().filter(|e| f(e)) {
            e.control.migrate(cause);
            n += 1;
        }
        n
    }

    /// The live sessions, oldest first.
    #[must_use]
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = lock(&self.inner.sessions)
            .iter()
            .map(|(id, e)| e.info(*id))
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// How many sessions are live.
    #[must_use]
    pub fn count(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Ends every live session of `user` (compared case-insensitively). Returns how many were
    /// told to end; each says `BYE` and closes as soon as its relay notices.
    pub fn kick_user(&self, user: &str) -> usize {
        let user = user.to_lowercase();
        let sessions = lock(&self.inner.sessions);
        let mut n = 0;
        for e in sessions.values().filter(|e| *e.user == *user) {
            e.control.kick();
            n += 1;
        }
        n
    }

    /// What tells every live session of a user (lower-cased) that a client of the user
    /// started waiting for one of its slots, so that a session quiet between commands may
    /// park: for [`SessionPool::on_waiter`](imapproxy_pool::SessionPool::on_waiter), which
    /// calls it for a user's first waiter only. It looks at every session (no index by user:
    /// that would cost every session memory), about 50 µs at 10,000 sessions; it holds the
    /// registry weakly.
    pub(crate) fn waiter_hook(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let inner = Arc::downgrade(&self.inner);
        move |user| {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            for e in lock(&inner.sessions).values() {
                if *e.user == *user {
                    e.control.raise(WAITER);
                }
            }
        }
    }

    /// Ends session `id`. False when there is no such session.
    pub fn kick(&self, id: u64) -> bool {
        match lock(&self.inner.sessions).get(&id) {
            Some(e) => {
                e.control.kick();
                true
            }
            None => false,
        }
    }
}

/// A session's place in the [`SessionRegistry`]; dropping it deregisters the session.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Inner>,
    id: u64,
    control: Arc<Control>,
}

impl Registration {
    /// Whether an operator ended the session.
    #[must_use]
    pub fn kicked(&self) -> bool {
        self.control.flags.load(Ordering::Acquire) & KICKED != 0
    }

    /// Resolves when an operator asks something of the session: at once, and every time
    /// after, once it was kicked; once per move asked, with why. With `moves` false only a
    /// kick is reported, and a move asked meanwhile stays asked for a later call. One waiter
    /// at a time: a session waits on its registration from one place.
    pub async fn requested(&self, moves: bool) -> Request {
        let c = &*self.control;
        std::future::poll_fn(|cx| {
            // Listening before looking: what is raised in between is not missed.
            c.waker.register(cx.waker());
            match c.request(moves) {
                Some(request) => Poll::Ready(request),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Resolves once an operator ended the session (move requests are left for
    /// [`Registration::requested`]).
    pub async fn ended(&self) {
        self.requested(false).await;
    }

    /// Resolves with the next thing that reached the session from outside: a kick or the
    /// proxy's shutdown (at once, and every time after), a move (with `moves`; otherwise it
    /// stays asked), a waiting client of its user, its idle deadline (with `timers`;
    /// otherwise they stay raised).
    /// Small (a reference and two flags), unlike a `Notified` per cause.
    pub(crate) fn signalled(
        &self,
        moves: bool,
        timers: bool,
    ) -> impl Future<Output = Signal> + Send + '_ {
        let c = &*self.control;
        std::future::poll_fn(move |cx| {
            // Listening before looking: what is raised in between is not missed.
            c.waker.register(cx.waker());
            if c.flags.load(Ordering::Acquire) & SHUTDOWN != 0 {
                return Poll::Ready(Signal::Shutdown);
            }
            if let Some(request) = c.request(moves) {
                return Poll::Ready(Signal::Request(request));
            }
            if timers {
                if c.take(DUE) {
                    return Poll::Ready(Signal::IdleDue);
                }
                if c.take(WAITER) {
                    return Poll::Ready(Signal::WaiterArrived);
                }
            }
            Poll::Pending
        })
    }

    /// Wakes the session with [`Signal::IdleDue`] once `deadline` passed (checked by the
    /// registry's sweep, once a second), replacing any deadline armed before.
    pub(crate) fn arm_idle(&self, deadline: Instant) {
        let ms = self.registry.millis(deadline);
        if let Some(e) = lock(&self.registry.sessions).get_mut(&self.id) {
            e.due = ms;
        }
        self.registry.start_sweep();
    }

    /// The session now runs on `backend` (after a move).
    pub fn set_backend(&self, backend: &BackendId) {
        if let Some(e) = lock(&self.registry.sessions).get_mut(&self.id) {
            e.backend = backend.clone();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.registry.sessions).remove(&self.id);
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

/// Operator overrides: user (lower-cased) → backend, consulted before the directory and the
/// selection strategy. An override whose backend is not up is ignored (the user is routed as
/// if it did not exist) rather than locking the user out.
#[derive(Clone, Default)]
pub struct Overrides {
    map: Arc<Mutex<HashMap<String, BackendId>>>,
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(lock(&self.map).iter()).finish()
    }
}

impl Overrides {
    /// No overrides.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `user` to `backend` from its next login on. Returns the previous override.
    pub fn set(&self, user: &str, backend: BackendId) -> Option<BackendId> {
        lock(&self.map).insert(user.to_lowercase(), backend)
    }

    /// Removes `user`'s override. Returns it.
    pub fn remove(&self, user: &str) -> Option<BackendId> {
        lock(&self.map).remove(&user.to_lowercase())
    }

    /// `user`'s override.
    #[must_use]
    pub fn get(&self, user: &str) -> Option<BackendId> {
        lock(&self.map).get(&user.to_lowercase()).cloned()
    }

    /// Every override, sorted by user.
    #[must_use]
    pub fn all(&self) -> Vec<(String, BackendId)> {
        let mut out: Vec<(String, BackendId)> = lock(&self.map)
            .iter()
            .map(|(u, b)| (u.clone(), b.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Replaces every override at once (loading a saved set).
    pub fn replace_all(&self, entries: impl IntoIterator<Item = (String, BackendId)>) {
        let map = entries
            .into_iter()
            .map(|(u, b)| (u.to_lowercase(), b))
            .collect();
        *lock(&self.map) = map;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    }

    /// What the session is asked within 20 ms, if anything.
    async fn asked_soon(r: &Registration) -> Option<Request> {
        tokio::time::timeout(std::time::Duration::from_millis(20), r.requested(true))
            .await
            .ok()
    }

    #[tokio::test]
    async fn sessions_register_list_kick_move_and_deregister() {
        let reg = SessionRegistry::new();
        let a = reg.register(1, "Alice", addr(), &BackendId::new("mail1"));
        let b = reg.register(2, "bob", addr(), &BackendId::new("mail2"));
        let a2 = reg.register(3, "alice", addr(), &BackendId::new("mail2"));
        assert_eq!(reg.count(), 3);
        let list = reg.list();
        assert_eq!(list[0].user, "alice");
        assert_eq!(list[1].backend, "mail2");
        assert!(asked_soon(&a).await.is_none(), "nothing asked yet");
        assert_eq!(reg.kick_user("ALICE"), 2);
        assert!(a.kicked() && a2.kicked() && !b.kicked());
        // A kick is heard at once, and again every time after.
        assert_eq!(a.requested(true).await, Request::End);
        assert_eq!(a.requested(true).await, Request::End);
        a2.ended().await;
        assert!(asked_soon(&b).await.is_none());
        drop(a);
        drop(a2);
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.kick_user("alice"), 0);
        // A move is heard once, with its cause; a session that does not listen right now
        // hears it when it next does.
        assert_eq!(reg.migrate_backend("mail2"), 1);
        assert_eq!(
            b.requested(true).await,
            Request::Move(MigrationCause::Drain)
        );
        assert!(asked_soon(&b).await.is_none());
        b.set_backend(&BackendId::new("mail3"));
        assert_eq!(reg.list()[0].backend, "mail3");
        assert_eq!(reg.migrate_user("BOB"), 1);
        // Waiting for the end does not take a move away.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), b.ended())
                .await
                .is_err()
        );
        assert_eq!(b.requested(true).await, Request::Move(MigrationCause::Move));
        assert!(reg.kick(2));
        assert_eq!(b.requested(true).await, Request::End);
        drop(b);
        assert!(!reg.kick(2));
        assert_eq!(reg.count(), 0);
    }

    /// What `signalled` reports within `within` (paused time advances on its own).
    async fn signalled_within(r: &Registration, timers: bool, within: Duration) -> Option<Signal> {
        tokio::time::timeout(within, r.signalled(true, timers))
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_clients_and_idle_deadlines_are_heard_once_each() {
        let reg = SessionRegistry::new();
        let a = reg.register(1, "Alice", addr(), &BackendId::new("mail1"));
        let b = reg.register(2, "bob", addr(), &BackendId::new("mail1"));
        let soon = Duration::from_millis(20);
        let waiter_arrived = reg.waiter_hook();
        waiter_arrived("alice");
        assert_eq!(
            signalled_within(&a, true, soon).await,
            Some(Signal::WaiterArrived)
        );
        assert_eq!(signalled_within(&a, true, soon).await, None, "taken");
        assert_eq!(signalled_within(&b, true, soon).await, None, "another user");
        // Without timers it is not reported, and stays raised for a later wait.
        waiter_arrived("alice");
        assert_eq!(signalled_within(&a, false, soon).await, None);
        assert_eq!(
            signalled_within(&a, true, soon).await,
            Some(Signal::WaiterArrived)
        );

        // The sweep wakes a session once its deadline passed, within its second, and once.
        let start = Instant::now();
        a.arm_idle(start + Duration::from_secs(5));
        b.arm_idle(start + Duration::from_secs(60));
        let heard = signalled_within(&a, true, Duration::from_secs(10)).await;
        let waited = start.elapsed();
        assert_eq!(heard, Some(Signal::IdleDue));
        assert!(waited >= Duration::from_secs(5), "{waited:?}");
        assert!(waited <= Duration::from_secs(5) + SWEEP_EVERY, "{waited:?}");
        assert_eq!(
            signalled_within(&a, true, Duration::from_secs(5)).await,
            None
        );
        assert_eq!(signalled_within(&b, true, soon).await, None, "not due yet");
        // Armed again: heard again.
        a.arm_idle(Instant::now());
        assert_eq!(
            signalled_within(&a, true, Duration::from_secs(2)).await,
            Some(Signal::IdleDue)
        );
        // A kick comes first, and is heard every time.
        b.arm_idle(Instant::now());
        waiter_arrived("bob");
        assert!(reg.kick(2));
        for _ in 0..2 {
            assert_eq!(
                signalled_within(&b, true, soon).await,
                Some(Signal::Request(Request::End))
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_shutdown_token_reaches_its_sessions_within_a_sweep() {
        let reg = SessionRegistry::new();
        let stop = CancellationToken::new();
        let other = CancellationToken::new();
        let a = reg.register_until(1, Arc::from("a"), addr(), &BackendId::new("m"), Some(&stop));
        let b = reg.register_until(
            2,
            Arc::from("b"),
            addr(),
            &BackendId::new("m"),
            Some(&other),
        );
        let c = reg.register(3, "c", addr(), &BackendId::new("m"));
        // The sweep runs once a deadline is armed; none of these is due.
        for r in [&a, &b, &c] {
            r.arm_idle(Instant::now() + Duration::from_secs(3600));
        }
        stop.cancel();
        let start = Instant::now();
        let heard = signalled_within(&a, true, Duration::from_secs(5)).await;
        assert_eq!(heard, Some(Signal::Shutdown));
        assert!(start.elapsed() <= SWEEP_EVERY, "{:?}", start.elapsed());
        // Heard every time after; not an operator's request (no spinning on it either).
        assert_eq!(
            signalled_within(&a, true, Duration::from_millis(20)).await,
            Some(Signal::Shutdown)
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(20), a.requested(true))
                .await
                .is_err()
        );
        // Other tokens, and sessions without one, are not told.
        for r in [&b, &c] {
            assert_eq!(
                signalled_within(r, true, Duration::from_secs(3)).await,
                None
            );
        }
    }

    #[test]
    fn overrides_are_case_insensitive() {
        let o = Overrides::new();
        assert!(o.set("Alice", BackendId::new("mail2")).is_none());
        assert_eq!(o.get("alice"), Some(BackendId::new("mail2")));
        assert_eq!(o.all().len(), 1);
        o.replace_all([("BOB".to_owned(), BackendId::new("mail1"))]);
        assert!(o.get("alice").is_none());
        assert_eq!(o.remove("bob"), Some(BackendId::new("mail1")));
        assert!(o.all().is_empty());
    }
}
