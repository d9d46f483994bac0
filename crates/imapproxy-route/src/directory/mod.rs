//! User directories: where a user's mailbox lives, asked before selection.
//!
//! A [`Directory`] maps a login name to a [`Route`] (one backend, or an ordered list of
//! candidates), or to nothing when it has no opinion, in which case the [`crate::Selector`]
//! alone decides. [`StaticMap`] reads a file; [`CachedDirectory`] puts a TTL cache and a
//! timeout in front of any directory so a slow one never hangs a login. [`route_first`] and
//! [`resolve`] combine a directory's answer with a selector's candidates.

use std::net::IpAddr;
use std::sync::Arc;

use crate::{BackendId, Error, Health, Registry, Request, Selector};

mod cached;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "redis")]
mod redis_hash;
mod static_map;

pub use cached::CachedDirectory;
#[cfg(feature = "http")]
pub use http::HttpAuthDirectory;
#[cfg(feature = "redis")]
pub use redis_hash::RedisDirectory;
pub use static_map::StaticMap;

/// A directory's answer for one user.
///
/// Ids name backends of the [`Registry`]; ids the registry does not know are skipped when
/// the route is applied (a map may be reloaded before or after the backends).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// The user lives on this backend.
    Backend(BackendId),
    /// The user may be served by these backends, preferred first (e.g. replicas sharing a
    /// mail store).
    Candidates(Vec<BackendId>),
}

impl Route {
    /// The backend ids of this route, preferred first.
    #[must_use]
    pub fn ids(&self) -> &[BackendId] {
        match self {
            Self::Backend(id) => std::slice::from_ref(id),
            Self::Candidates(ids) => ids,
        }
    }
}

impl From<BackendId> for Route {
    fn from(id: BackendId) -> Self {
        Self::Backend(id)
    }
}

/// A source of user → backend routes (static file, HTTP auth service, Redis, your own).
///
/// Object-safe: hold it as `Arc<dyn Directory>`. Implementations need not bound their own
/// time: wrap them in [`CachedDirectory`], which does.
#[async_trait::async_trait]
pub trait Directory: Send + Sync + 'static {
    /// The route for `user` (lower-cased by the caller), or `None` when the directory has no
    /// entry for it and the selector should decide alone.
    ///
    /// # Errors
    /// [`Error::DirectoryUnavailable`] when the directory cannot answer now; the session then
    /// refuses the login with `NO [UNAVAILABLE]` rather than guess a backend.
    async fn lookup(&self, user: &str) -> Result<Option<Route>, Error>;

    /// The route for a login with everything the session knows about it; directories that
    /// authenticate (an nginx-style HTTP auth service) need the password and client address.
    ///
    /// The default asks [`Directory::lookup`] with `ctx.user`, so directories that only map
    /// names implement `lookup` alone. Sessions should call this one.
    ///
    /// # Errors
    /// As [`Directory::lookup`], plus [`Error::Denied`] when the directory refuses the login
    /// (the session answers `NO [AUTHENTICATIONFAILED]`).
    async fn lookup_with(&self, ctx: &LookupContext<'_>) -> Result<Option<Route>, Error> {
        self.lookup(ctx.user).await
    }
}

#[async_trait::async_trait]
impl<D: Directory + ?Sized> Directory for Arc<D> {
    async fn lookup(&self, user: &str) -> Result<Option<Route>, Error> {
        (**self).lookup(user).await
    }

    async fn lookup_with(&self, ctx: &LookupContext<'_>) -> Result<Option<Route>, Error> {
        (**self).lookup_with(ctx).await
    }
}

/// What the session knows about a login when it asks [`Directory::lookup_with`].
///
/// ```
/// use imapproxy_route::LookupContext;
/// let ctx = LookupContext::new("alice")
///     .with_password(b"secret")
///     .with_client_ip("192.0.2.42".parse().unwrap())
///     .with_login_attempt(2);
/// assert_eq!(ctx.user, "alice");
/// ```
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct LookupContext<'a> {
    /// The login name (lower-cased by the caller, as for [`Directory::lookup`]).
    pub user: &'a str,
    /// The password of a `LOGIN` or SASL `PLAIN`; `None` for other mechanisms.
    pub password: Option<&'a [u8]>,
    /// The client's address (after PROXY protocol), if known.
    pub client_ip: Option<IpAddr>,
    /// 1 for the session's first login attempt, 2 for the next, and so on.
    pub login_attempt: u32,
}

impl<'a> LookupContext<'a> {
    /// A context with only the user name (first attempt, no password, no address).
    #[must_use]
    pub const fn new(user: &'a str) -> Self {
        Self {
            user,
            password: None,
            client_ip: None,
            login_attempt: 1,
        }
    }

    /// Adds the password.
    #[must_use]
    pub const fn with_password(mut self, password: &'a [u8]) -> Self {
        self.password = Some(password);
        self
    }

    /// Adds the client's address.
    #[must_use]
    pub const fn with_client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    /// Sets the attempt number (1-based; 0 is taken as 1).
    #[must_use]
    pub const fn with_login_attempt(mut self, attempt: u32) -> Self {
        self.login_attempt = if attempt == 0 { 1 } else { attempt };
        self
    }
}

impl std::fmt::Debug for LookupContext<'_> {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookupContext")
            .field("user", &self.user)
            .field("password", &self.password.map(|_| "<redacted>"))
            .field("client_ip", &self.client_ip)
            .field("login_attempt", &self.login_attempt)
            .finish()
    }
}

/// Puts the [`Health::Up`] backends of `route` first, in the route's order, then the
/// `fallback` candidates (typically a selector's) that are not already listed.
///
/// With `route = None` this is `fallback` unchanged. Backends of the route that are down,
/// draining or unknown are left out, so a pinned user whose backend is down falls through to
/// the strategy; callers that must never do that (a mailbox that exists on one server only)
/// pass an empty `fallback`.
pub fn route_first(
    route: Option<&Route>,
    registry: &Registry,
    fallback: impl IntoIterator<Item = BackendId>,
) -> Vec<BackendId> {
    let mut out: Vec<BackendId> = Vec::new();
    for id in route.map(Route::ids).unwrap_or_default() {
        match registry.state(id) {
            Some(state) if state.health() == Health::Up => {
                if !out.contains(id) {
                    out.push(id.clone());
                }
            }
            Some(_) => {}
            None => tracing::warn!(backend = %id, "directory names an unknown backend"),
        }
    }
    for id in fallback {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Asks `directory` for `req.user`, then `selector`: the directory's healthy backends first,
/// the selector's candidates after them (see [`route_first`]).
///
/// # Errors
/// The directory's error (wrap it in [`CachedDirectory`] for a timeout), or
/// [`Error::NoHealthyBackend`] when no candidate is left.
pub async fn resolve(
    directory: &dyn Directory,
    selector: &dyn Selector,
    registry: &Registry,
    req: &Request<'_>,
) -> Result<Vec<BackendId>, Error> {
    let route = directory.lookup(req.user).await?;
    let candidates = route_first(route.as_ref(), registry, selector.select(registry, req));
    if candidates.is_empty() {
        Err(Error::NoHealthyBackend)
    } else {
        Ok(candidates)
    }
}

/// A [`Selector`] that also takes a directory's answer into account: [`Routed::select_routed`]
/// puts the route's healthy backends first and, unless built [`Routed::strict`], the
/// strategy's candidates after them. As a plain `Selector` (no route) it is the strategy.
///
/// The session calls the (asynchronous) directory first, then this (synchronous) selector.
#[derive(Debug, Default)]
pub struct Routed<S> {
    strategy: S,
    fallback: bool,
}

impl<S: Selector> Routed<S> {
    /// Directory first, then `strategy`'s candidates as fallback.
    pub const fn new(strategy: S) -> Self {
        Self {
            strategy,
            fallback: true,
        }
    }

    /// When the directory names backends, only those (a mailbox that lives on one server
    /// must not be opened on another); `strategy` decides only for users without a route.
    pub const fn strict(strategy: S) -> Self {
        Self {
            strategy,
            fallback: false,
        }
    }

    /// The wrapped strategy.
    pub const fn strategy(&self) -> &S {
        &self.strategy
    }

    /// Candidates for `req` given the directory's answer `route`.
    pub fn select_routed(
        &self,
        registry: &Registry,
        req: &Request<'_>,
        route: Option<&Route>,
    ) -> Vec<BackendId> {
        match route {
            Some(route) if !self.fallback => route_first(Some(route), registry, []),
            _ => route_first(route, registry, self.strategy.select(registry, req)),
        }
    }
}

impl<S: Selector> Selector for Routed<S> {
    fn select(&self, registry: &Registry, req: &Request<'_>) -> Vec<BackendId> {
        self.strategy.select(registry, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::testing::{names, registry};
    use crate::{LeastConnections, RendezvousHash};

    #[test]
    fn route_comes_first_then_strategy_without_duplicates() {
        let registry = registry(&["a", "b", "c"]);
        let routed = Routed::new(LeastConnections);
        let req = Request::new("alice");
        let route = Route::Backend(BackendId::from("c"));
        assert_eq!(
            names(&routed.select_routed(&registry, &req, Some(&route))),
            ["c", "a", "b"]
        );
        assert_eq!(
            names(&routed.select_routed(&registry, &req, None)),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn unhealthy_or_unknown_routed_backends_fall_through() {
        let registry = registry(&["a", "b", "c"]);
        registry.set_health("c", Health::Down).unwrap();
        let route = Route::Candidates(vec!["zz".into(), "c".into(), "b".into()]);
        let req = Request::new("alice");
        assert_eq!(
            names(&Routed::new(LeastConnections).select_routed(&registry, &req, Some(&route))),
            ["b", "a"]
        );
        assert_eq!(
            names(&Routed::strict(LeastConnections).select_routed(&registry, &req, Some(&route))),
            ["b"]
        );
        registry.set_health("b", Health::Draining).unwrap();
        assert!(
            Routed::strict(LeastConnections)
                .select_routed(&registry, &req, Some(&route))
                .is_empty()
        );
    }

    #[tokio::test]
    async fn resolve_asks_the_directory_then_the_selector() {
        let registry = registry(&["a", "b", "c", "d"]);
        let map: StaticMap = "alice d\n".parse().unwrap();
        let hash = RendezvousHash::new();
        let got = resolve(&map, &hash, &registry, &Request::new("alice"))
            .await
            .unwrap();
        assert_eq!(got[0].as_str(), "d");
        assert_eq!(got.len(), 4);
        let bob = resolve(&map, &hash, &registry, &Request::new("bob"))
            .await
            .unwrap();
        assert_eq!(bob, hash.select(&registry, &Request::new("bob")));
        for name in ["a", "b", "c", "d"] {
            registry.set_health(name, Health::Down).unwrap();
        }
        assert_eq!(
            resolve(&map, &hash, &registry, &Request::new("alice")).await,
            Err(Error::NoHealthyBackend)
        );
    }
}
