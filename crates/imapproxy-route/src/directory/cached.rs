//! [`CachedDirectory`]: a TTL cache and a time bound in front of any [`Directory`].

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::Error;
use crate::directory::{Directory, LookupContext, Route};

/// Caches a directory's answers for `ttl` and bounds each lookup by `timeout`.
///
/// - Answers, including "no entry" (`None`), are cached per user until the TTL runs out, so a
///   burst of logins asks the directory once per user and TTL.
/// - A lookup that takes longer than `timeout` is abandoned and yields
///   [`Error::DirectoryUnavailable`]: a slow or dead directory costs a login at most
///   `timeout`, never a hang. Errors are not cached, so the next login asks again.
/// - At most `max_entries` users are cached; when full, expired entries are dropped first,
///   and if none had expired the whole cache is (a crude bound, but memory stays bounded
///   whatever logins arrive).
///
/// Concurrent misses for the same user each ask the directory (no request coalescing).
///
/// Answers are cached per user. For a directory that also authenticates (an nginx-style
/// HTTP auth service), [`CachedDirectory::keyed_by_password`] caches per user *and* password
/// (by a keyed in-process hash, never the password itself), so a wrong password always
/// reaches the service and gets its refusal.
#[derive(Debug)]
pub struct CachedDirectory<D> {
    inner: D,
    ttl: Duration,
    timeout: Duration,
    max_entries: usize,
    password_key: Option<RandomState>,
    cache: Mutex<HashMap<String, (Instant, Option<Route>)>>,
}

impl<D> CachedDirectory<D> {
    /// Default for [`CachedDirectory::with_max_entries`].
    pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
}

impl<D: Directory> CachedDirectory<D> {
    /// Wraps `inner`, caching answers for `ttl` and giving each lookup `timeout`.
    pub fn new(inner: D, ttl: Duration, timeout: Duration) -> Self {
        Self {
            inner,
            ttl,
            timeout,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            password_key: None,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the bound on cached users (at least 1).
    #[must_use]
    pub fn with_max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries.max(1);
        self
    }

    /// Caches answers per user and password (see the type's docs); lookups without a
    /// password share one entry per user.
    #[must_use]
    pub fn keyed_by_password(mut self) -> Self {
        self.password_key = Some(RandomState::new());
        self
    }

    fn key(&self, ctx: &LookupContext<'_>) -> String {
        match (&self.password_key, ctx.password) {
            // NUL cannot occur in an IMAP user name, so keys of different users never mix.
            (Some(state), Some(password)) => {
                format!("{}\0{:016x}", ctx.user, state.hash_one(password))
            }
            _ => ctx.user.to_owned(),
        }
    }

    /// The wrapped directory.
    pub const fn inner(&self) -> &D {
        &self.inner
    }

    /// Forgets the cached answer for `user` (e.g. after an admin moved it).
    pub fn invalidate(&self, user: &str) {
        let mut entries = self.entries();
        entries.remove(user);
        if self.password_key.is_some() {
            entries.retain(|key, _| {
                key.strip_prefix(user)
                    .is_none_or(|rest| !rest.starts_with('\0'))
            });
        }
    }

    /// Forgets every cached answer (e.g. after a reload of the directory).
    pub fn clear(&self) {
        self.entries().clear();
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<Route>)>> {
        crate::sync::lock(&self.cache)
    }

    fn cached(&self, user: &str) -> Option<Option<Route>> {
        let now = Instant::now();
        let entries = self.entries();
        let (expires, route) = entries.get(user)?;
        (*expires > now).then(|| route.clone())
    }

    fn store(&self, user: &str, route: Option<Route>) {
        let now = Instant::now();
        let mut entries = self.entries();
        if entries.len() >= self.max_entries && !entries.contains_key(user) {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(user.to_owned(), (now + self.ttl, route));
    }
}

#[async_trait::async_trait]
impl<D: Directory> Directory for CachedDirectory<D> {
    async fn lookup(&self, user: &str) -> Result<Option<Route>, Error> {
        self.lookup_with(&LookupContext::new(user)).await
    }

    /// Cached by `ctx.user` (a route is where the mailbox lives, whoever asks), or by user
    /// and password when built [`CachedDirectory::keyed_by_password`]. Refusals
    /// ([`Error::Denied`]) and failures are never cached.
    async fn lookup_with(&self, ctx: &LookupContext<'_>) -> Result<Option<Route>, Error> {
        let key = self.key(ctx);
        if let Some(route) = self.cached(&key) {
            return Ok(route);
        }
        let route = tokio::time::timeout(self.timeout, self.inner.lookup_with(ctx))
            .await
            .map_err(|_| {
                tracing::warn!(timeout = ?self.timeout, "directory lookup timed out");
                Error::DirectoryUnavailable(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                ))
            })??;
        self.store(&key, route.clone());
        Ok(route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendId;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory that answers `mail1` for everyone after `delay`, or fails when `down`.
    #[derive(Debug, Default)]
    struct Fake {
        delay: Duration,
        down: std::sync::atomic::AtomicBool,
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Directory for Fake {
        async fn lookup(&self, user: &str) -> Result<Option<Route>, Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::DirectoryUnavailable("fake is down".into()));
            }
            Ok((user != "nobody").then(|| Route::Backend(BackendId::from("mail1"))))
        }
    }

    fn fake(delay_ms: u64) -> Arc<Fake> {
        Arc::new(Fake {
            delay: Duration::from_millis(delay_ms),
            ..Fake::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_cached_until_the_ttl_runs_out() {
        let inner = fake(10);
        let dir = CachedDirectory::new(
            Arc::clone(&inner),
            Duration::from_secs(30),
            Duration::from_secs(1),
        );
        let mail1 = Some(Route::Backend(BackendId::from("mail1")));
        assert_eq!(dir.lookup("alice").await, Ok(mail1.clone()));
        assert_eq!(dir.lookup("alice").await, Ok(mail1.clone()));
        assert_eq!(dir.lookup("nobody").await, Ok(None));
        assert_eq!(dir.lookup("nobody").await, Ok(None));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);

        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(dir.lookup("alice").await, Ok(mail1));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);

        dir.invalidate("alice");
        dir.lookup("alice").await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
        dir.clear();
        dir.lookup("alice").await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_directory_is_unavailable_after_the_timeout_never_a_hang() {
        let dir = CachedDirectory::new(
            fake(60_000),
            Duration::from_secs(30),
            Duration::from_millis(500),
        );
        let started = Instant::now();
        let err = dir.lookup("alice").await.unwrap_err();
        assert!(matches!(err, Error::DirectoryUnavailable(_)), "{err}");
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        // Timeouts are not cached: the next login asks (and waits) again.
        assert!(dir.lookup("alice").await.is_err());
        assert_eq!(dir.inner().calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_pass_through_uncached() {
        let inner = fake(1);
        inner.down.store(true, Ordering::SeqCst);
        let dir = CachedDirectory::new(
            Arc::clone(&inner),
            Duration::from_secs(30),
            Duration::from_secs(1),
        );
        assert!(matches!(
            dir.lookup("alice").await,
            Err(Error::DirectoryUnavailable(_))
        ));
        inner.down.store(false, Ordering::SeqCst);
        assert!(dir.lookup("alice").await.unwrap().is_some());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_by_password_asks_again_for_another_password() {
        let inner = fake(0);
        let dir = CachedDirectory::new(
            Arc::clone(&inner),
            Duration::from_secs(30),
            Duration::from_secs(1),
        )
        .keyed_by_password();
        let right = LookupContext::new("alice").with_password(b"right");
        let wrong = LookupContext::new("alice").with_password(b"wrong");
        dir.lookup_with(&right).await.unwrap();
        dir.lookup_with(&right).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        dir.lookup_with(&wrong).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        dir.lookup_with(&LookupContext::new("alicex").with_password(b"right"))
            .await
            .unwrap();
        dir.invalidate("alice");
        assert_eq!(dir.entries().len(), 1, "only alicex is left");
        dir.lookup_with(&right).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_stays_bounded() {
        let dir = CachedDirectory::new(fake(0), Duration::from_secs(30), Duration::from_secs(1))
            .with_max_entries(3);
        for user in ["a", "b", "c", "d", "e"] {
            dir.lookup(user).await.unwrap();
            assert!(dir.entries().len() <= 3);
        }
    }
}
