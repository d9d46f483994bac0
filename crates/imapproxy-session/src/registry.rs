//! The live logged-in sessions of one proxy, and the operator's user → backend overrides.
//!
//! A session registers once its backend login succeeded and stays registered until its relay
//! ends (the [`Registration`] guard deregisters on drop, whatever the path out). Each entry
//! carries its own cancellation token: [`SessionRegistry::kick_user`] cancels it and the relay
//! ends the session with `BYE` (RFC 9051 §7.1.5), so the client reconnects, possibly to
//! another backend. [`SessionRegistry::migrate_user`] and [`SessionRegistry::migrate_backend`]
//! instead ask sessions to move to another backend connection without the client noticing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::SystemTime;

use imapproxy_route::BackendId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

/// A pending request to move one session.
#[derive(Debug, Default)]
struct Migration {
    notify: Notify,
    cause: AtomicU8,
}

impl Migration {
    fn request(&self, cause: MigrationCause) {
        self.cause.store(cause.code(), Ordering::Release);
        // A permit is stored when the session is not waiting right now (mid-re-home, say).
        self.notify.notify_one();
    }
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

struct Entry {
    info: SessionInfo,
    token: CancellationToken,
    kicked: Arc<AtomicBool>,
    migration: Arc<Migration>,
}

#[derive(Default)]
struct Inner {
    sessions: Mutex<HashMap<u64, Entry>>,
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
    pub fn register(&self, id: u64, user: &str, client: SocketAddr, backend: &str) -> Registration {
        let token = CancellationToken::new();
        let kicked = Arc::new(AtomicBool::new(false));
        let migration = Arc::new(Migration::default());
        let entry = Entry {
            info: SessionInfo {
                id,
                user: user.to_lowercase(),
                client,
                backend: backend.to_owned(),
                since: SystemTime::now(),
            },
            token: token.clone(),
            kicked: Arc::clone(&kicked),
            migration: Arc::clone(&migration),
        };
        lock(&self.inner.sessions).insert(id, entry);
        Registration {
            registry: Arc::clone(&self.inner),
            id,
            token,
            kicked,
            migration,
        }
    }

    /// Asks every live session of `user` to move to another backend connection (its next
    /// login target: set the override first). Returns how many were asked.
    pub fn migrate_user(&self, user: &str) -> usize {
        let user = user.to_lowercase();
        self.migrate_where(|info| info.user == user, MigrationCause::Move)
    }

    /// Asks every live session on `backend` to move to another backend. Returns how many
    /// were asked.
    pub fn migrate_backend(&self, backend: &str) -> usize {
        self.migrate_where(|info| info.backend == backend, MigrationCause::Drain)
    }

    fn migrate_where(&self, f: impl Fn(&SessionInfo) -> bool, cause: MigrationCause) -> usize {
        let sessions = lock(&self.inner.sessions);
        let mut n = 0;
        for e in sessions.values().filter(|e| f(&e.info)) {
            e.migration.request(cause);
            n += 1;
        }
        n
    }

    /// The live sessions, oldest first.
    #[must_use]
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = lock(&self.inner.sessions)
            .values()
            .map(|e| e.info.clone())
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
        for e in sessions.values().filter(|e| e.info.user == user) {
            e.kicked.store(true, Ordering::Release);
            e.token.cancel();
            n += 1;
        }
        n
    }

    /// Ends session `id`. False when there is no such session.
    pub fn kick(&self, id: u64) -> bool {
        match lock(&self.inner.sessions).get(&id) {
            Some(e) => {
                e.kicked.store(true, Ordering::Release);
                e.token.cancel();
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
    token: CancellationToken,
    kicked: Arc<AtomicBool>,
    migration: Arc<Migration>,
}

impl Registration {
    /// Cancelled when an operator ends the session.
    #[must_use]
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether an operator ended the session.
    #[must_use]
    pub fn kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    /// Resolves when an operator asks the session to move, with why.
    pub async fn migration_requested(&self) -> MigrationCause {
        loop {
            self.migration.notify.notified().await;
            if let Some(cause) =
                MigrationCause::from_code(self.migration.cause.swap(0, Ordering::AcqRel))
            {
                return cause;
            }
        }
    }

    /// The session now runs on `backend` (after a move).
    pub fn set_backend(&self, backend: &str) {
        if let Some(e) = lock(&self.registry.sessions).get_mut(&self.id) {
            backend.clone_into(&mut e.info.backend);
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

    #[test]
    fn sessions_register_list_kick_and_deregister() {
        let reg = SessionRegistry::new();
        let a = reg.register(1, "Alice", addr(), "mail1");
        let b = reg.register(2, "bob", addr(), "mail2");
        let a2 = reg.register(3, "alice", addr(), "mail2");
        assert_eq!(reg.count(), 3);
        let list = reg.list();
        assert_eq!(list[0].user, "alice");
        assert_eq!(list[1].backend, "mail2");
        assert_eq!(reg.kick_user("ALICE"), 2);
        assert!(a.token().is_cancelled() && a2.token().is_cancelled());
        assert!(a.kicked() && !b.kicked());
        assert!(!b.token().is_cancelled());
        drop(a);
        drop(a2);
        assert_eq!(reg.count(), 1);
        assert_eq!(reg.kick_user("alice"), 0);
        assert!(reg.kick(2));
        assert_eq!(reg.migrate_backend("mail2"), 1);
        b.set_backend("mail3");
        assert_eq!(reg.list()[0].backend, "mail3");
        assert_eq!(reg.migrate_user("BOB"), 1);
        drop(b);
        assert!(!reg.kick(2));
        assert_eq!(reg.count(), 0);
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
