//! [`RedisDirectory`]: a Redis hash of user → backend, shared by every proxy of a fleet.

use std::sync::Mutex;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::directory::{Directory, Route};
use crate::{BackendId, Error};

/// Looks users up with `HGET <hash> <user>` on a Redis server.
///
/// The value is a backend name, or a comma-separated list of candidates, preferred first
/// (`HSET imapproxy:users alice@example.org mail2` or `... "mail2,mail3"`). A missing field
/// or an empty value is `None` (the selector decides). Any Redis error (refused connection,
/// wrong type, timeout) is [`Error::DirectoryUnavailable`].
///
/// The connection is a [`ConnectionManager`] made on the first lookup (so the proxy starts
/// while Redis is down) and reconnected by it after errors. Wrap the directory in
/// [`crate::CachedDirectory`] for a TTL and an overall time bound.
pub struct RedisDirectory {
    client: ::redis::Client,
    hash: String,
    timeout: Duration,
    manager: Mutex<Option<ConnectionManager>>,
}

impl std::fmt::Debug for RedisDirectory {
    // The URL may hold a password: show only the hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDirectory")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl RedisDirectory {
    /// Connection and response timeout of the Redis connection (the caller's
    /// [`crate::CachedDirectory`] timeout bounds the whole lookup as well).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// A directory reading `hash` on the server at `url` (`redis://host:port/db`,
    /// `redis://:password@host/`, `redis+unix:///path`). Does not connect yet.
    ///
    /// # Errors
    /// [`Error::InvalidDirectory`] when the URL is malformed or the hash name is empty.
    pub fn new(url: &str, hash: impl Into<String>) -> Result<Self, Error> {
        let hash = hash.into();
        if hash.is_empty() {
            return Err(Error::InvalidDirectory("redis hash name is empty".into()));
        }
        let client = ::redis::Client::open(url)
            .map_err(|e| Error::InvalidDirectory(format!("redis url: {e}")))?;
        Ok(Self {
            client,
            hash,
            timeout: Self::DEFAULT_TIMEOUT,
            manager: Mutex::new(None),
        })
    }

    /// Sets the connection and response timeout (default [`Self::DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The hash's name.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    fn manager(&self) -> Result<ConnectionManager, Error> {
        let mut slot = crate::sync::lock(&self.manager);
        if let Some(manager) = slot.as_ref() {
            return Ok(manager.clone());
        }
        // Few retries: a login waits for this, and the next login will ask again anyway.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(unavailable)?;
        *slot = Some(manager.clone());
        Ok(manager)
    }
}

fn unavailable(e: ::redis::RedisError) -> Error {
    Error::DirectoryUnavailable(format!("redis: {e}"))
}

/// `mail1` → one backend; `mail1, mail2` → candidates; empty → none.
fn parse_route(value: &str) -> Option<Route> {
    let mut ids: Vec<BackendId> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(BackendId::from)
        .collect();
    match ids.len() {
        0 => None,
        1 => ids.pop().map(Route::Backend),
        _ => Some(Route::Candidates(ids)),
    }
}

#[async_trait::async_trait]
impl Directory for RedisDirectory {
    async fn lookup(&self, user: &str) -> Result<Option<Route>, Error> {
        let mut conn = self.manager()?;
        let value: Option<String> = ::redis::cmd("HGET")
            .arg(&self.hash)
            .arg(user)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(value.as_deref().and_then(parse_route))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_routes() {
        assert_eq!(parse_route("mail1"), Some(Route::Backend("mail1".into())));
        assert_eq!(
            parse_route(" mail2 , mail3,"),
            Some(Route::Candidates(vec!["mail2".into(), "mail3".into()]))
        );
        assert_eq!(parse_route(" , "), None);
    }

    #[test]
    fn urls_are_checked() {
        assert!(RedisDirectory::new("redis://127.0.0.1:6379/", "h").is_ok());
        assert!(RedisDirectory::new("http://x/", "h").is_err());
        assert!(RedisDirectory::new("redis://127.0.0.1/", "").is_err());
    }
}
