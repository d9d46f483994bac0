//! Backends: their identity and configuration ([`Backend`]) and their live state
//! ([`BackendState`]: health and active sessions, lock-free).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// The name of a backend, as configured (`[[backends]] name = "mail1"`).
///
/// Cheap to clone (an `Arc<str>`), so selectors can hand out lists of ids freely.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(Arc<str>);

impl BackendId {
    /// Makes an id from any string.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Deref for BackendId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for BackendId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Lets maps keyed by `BackendId` be queried with a plain `&str`.
impl Borrow<str> for BackendId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for BackendId {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl From<String> for BackendId {
    fn from(name: String) -> Self {
        Self(Arc::from(name))
    }
}

/// Default for [`Backend::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 500;

/// One backend IMAP server, as configured. How to connect (TLS, credentials) is not the
/// router's business and lives with the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Unique name; used in logs, metrics and the admin API, never shown to clients.
    pub id: BackendId,
    /// `host:port` to connect to.
    pub addr: String,
    /// Relative share for weighted strategies (plain round-robin ignores it).
    pub weight: u32,
    /// Cap on concurrent backend connections, enforced by the pool.
    pub max_connections: u32,
}

impl Backend {
    /// A backend with weight 1 and [`DEFAULT_MAX_CONNECTIONS`].
    pub fn new(id: impl Into<BackendId>, addr: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            addr: addr.into(),
            weight: 1,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// Sets the weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the connection cap.
    #[must_use]
    pub fn with_max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections;
        self
    }
}

/// Whether a backend takes new sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Takes new sessions.
    Up,
    /// Failing; takes nothing. Sessions on it are expected to fail over.
    Down,
    /// Being emptied by an operator: no new sessions, existing ones run to their end.
    Draining,
}

impl Health {
    /// Lower-case name, as used by the admin API and metrics labels.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Draining => "draining",
        }
    }

    const fn to_u8(self) -> u8 {
        match self {
            Self::Up => 0,
            Self::Down => 1,
            Self::Draining => 2,
        }
    }

    const fn from_u8(raw: u8) -> Self {
        // Only `to_u8` writes the atomic, so other values cannot occur; treating them as
        // Down is the safe reading anyway.
        match raw {
            0 => Self::Up,
            2 => Self::Draining,
            _ => Self::Down,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Live state of one backend, shared by selection, health checks, sessions and the admin API.
///
/// Reads and writes are single atomic operations: selection never takes a lock.
#[derive(Debug)]
pub struct BackendState {
    health: AtomicU8,
    active: AtomicUsize,
}

impl Default for BackendState {
    fn default() -> Self {
        Self::new(Health::Up)
    }
}

impl BackendState {
    /// A state with the given health and no sessions.
    #[must_use]
    pub fn new(health: Health) -> Self {
        Self {
            health: AtomicU8::new(health.to_u8()),
            active: AtomicUsize::new(0),
        }
    }

    /// Current health.
    #[must_use]
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Changes the health; returns the previous value.
    pub fn set_health(&self, health: Health) -> Health {
        Health::from_u8(self.health.swap(health.to_u8(), Ordering::AcqRel))
    }

    /// Changes the health from `current` to `new` only if it is still `current` (so a health
    /// check never overwrites an operator's concurrent drain); true when it changed.
    pub fn compare_and_set_health(&self, current: Health, new: Health) -> bool {
        self.health
            .compare_exchange(
                current.to_u8(),
                new.to_u8(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Number of client sessions currently routed to this backend.
    #[must_use]
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Counts a session on this backend until the returned guard is dropped.
    #[must_use = "the session is counted only while the guard lives"]
    pub fn session_started(self: &Arc<Self>) -> SessionGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        SessionGuard {
            state: Arc::clone(self),
        }
    }
}

/// Keeps one session counted in [`BackendState::active`]; dropping it ends the count.
#[derive(Debug)]
pub struct SessionGuard {
    state: Arc<BackendState>,
}

impl SessionGuard {
    /// The state this session is counted in.
    #[must_use]
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        // Each guard added exactly one, so this never goes below zero.
        self.state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_guard_counts_while_alive() {
        let state = Arc::new(BackendState::default());
        assert_eq!(state.active(), 0);
        let a = state.session_started();
        let b = state.session_started();
        assert_eq!(state.active(), 2);
        drop(a);
        assert_eq!(state.active(), 1);
        assert!(Arc::ptr_eq(b.state(), &state));
        drop(b);
        assert_eq!(state.active(), 0);
    }

    #[test]
    fn session_guards_count_across_threads() {
        let state = Arc::new(BackendState::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let _guard = state.session_started();
                    }
                    state.session_started()
                })
            })
            .collect();
        let guards: Vec<SessionGuard> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(state.active(), 4);
        drop(guards);
        assert_eq!(state.active(), 0);
    }

    #[test]
    fn health_round_trips_through_the_atomic() {
        let state = BackendState::default();
        assert_eq!(state.health(), Health::Up);
        for health in [Health::Down, Health::Draining, Health::Up] {
            let before = state.health();
            assert_eq!(state.set_health(health), before);
            assert_eq!(state.health(), health);
        }
        assert_eq!(Health::Draining.to_string(), "draining");
    }

    #[test]
    fn backend_ids_compare_and_print_as_their_name() {
        let id = BackendId::from("mail1");
        assert_eq!(id, BackendId::new(String::from("mail1")));
        assert_eq!(id.to_string(), "mail1");
        assert_eq!(format!("{id:?}"), "\"mail1\"");
        assert_eq!(id.as_str(), "mail1");
        let backend = Backend::new("mail1", "127.0.0.1:143").with_weight(3);
        assert_eq!(backend.weight, 3);
        assert_eq!(backend.max_connections, DEFAULT_MAX_CONNECTIONS);
    }
}
