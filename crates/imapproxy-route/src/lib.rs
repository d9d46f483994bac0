//! Backend registry, selection strategies and user directories for IMAP proxies.
//!
//! - [`Backend`] and [`BackendId`]: what is configured.
//! - [`BackendState`]: live health ([`Health`]: up, down, draining) and the number of active
//!   sessions, read without locks; [`SessionGuard`] counts a session while it lives.
//! - [`Registry`]: the ordered set of backends with their states; rebuilt on reload with the
//!   states of surviving backends kept.
//! - [`Selector`]: a routing strategy returning *every* healthy backend as an ordered list of
//!   candidates (first = preferred), so callers fall through on failure. Strategies:
//!   [`RoundRobin`], [`WeightedRoundRobin`] (smooth, nginx-style), [`LeastConnections`],
//!   [`PowerOfTwoChoices`] and [`RendezvousHash`] (by user, with a fixed hash stable across
//!   builds: adding an n-th backend moves about 1/n of the users).
//! - [`Directory`]: an asynchronous user → [`Route`] lookup asked before selection;
//!   [`StaticMap`] (a file of `user`, `@domain` and `*` entries), [`CachedDirectory`] (TTL
//!   cache and timeout: a dead directory gives [`Error::DirectoryUnavailable`], never a hang),
//!   and [`route_first`], [`resolve`] and [`Routed`] to put a directory's answer in front of
//!   a selector's candidates.
//! - [`HealthCheck`] (an active check, e.g. the pool crate's IMAP check) and
//!   [`HealthMonitor`]: checks every backend each interval with a timeout, rise/fall
//!   hysteresis, passive failure reports from sessions; draining stays the operator's.
//!
//! The crate knows nothing of connections: the pool connects, the session counts.
//!
//! # Example
//!
//! ```
//! use imapproxy_route::{Backend, Health, Registry, Request, RendezvousHash, Selector};
//!
//! let registry = Registry::new(vec![
//!     Backend::new("mail1", "127.0.0.1:10143"),
//!     Backend::new("mail2", "127.0.0.1:10144").with_weight(2),
//! ])?;
//! let selector = RendezvousHash::new();
//! let req = Request::new("alice@example.org");
//! let candidates = selector.candidates(&registry, &req)?;
//! // The same user always gets the same order; every healthy backend is listed.
//! assert_eq!(selector.candidates(&registry, &req)?, candidates);
//! assert_eq!(candidates.len(), 2);
//!
//! // Draining the first choice moves the user to its second choice.
//! registry.set_health(&candidates[0], Health::Draining)?;
//! assert_eq!(selector.candidates(&registry, &req)?, [candidates[1].clone()]);
//!
//! // The session holds a guard for as long as it uses the backend.
//! let state = registry.state(&candidates[1]).expect("selected from this registry");
//! let guard = state.session_started();
//! assert_eq!(state.active(), 1);
//! drop(guard);
//! assert_eq!(state.active(), 0);
//! # Ok::<(), imapproxy_route::Error>(())
//! ```
//!
//! # Your own selector
//!
//! Extending selection needs no fork: implement [`Selector`] (one method) outside the crate
//! and hand it to the proxy as an `Arc<dyn Selector>`. This one routes webmail clients
//! (by the `name` field of their `ID` command, RFC 2971) to dedicated backends:
//!
//! ```
//! use std::sync::Arc;
//! use imapproxy_route::{Backend, BackendId, Registry, Request, RoundRobin, Selector};
//!
//! struct WebmailFirst {
//!     webmail: Vec<BackendId>,
//!     rest: RoundRobin,
//! }
//!
//! impl Selector for WebmailFirst {
//!     fn select(&self, registry: &Registry, req: &Request<'_>) -> Vec<BackendId> {
//!         let is_webmail = req.client_id.iter().any(|(key, value)| {
//!             key.eq_ignore_ascii_case("name") && value.as_deref() == Some("Roundcube")
//!         });
//!         let mut out: Vec<BackendId> = Vec::new();
//!         if is_webmail {
//!             // Only healthy backends may be returned.
//!             out.extend(registry.up().filter(|b| self.webmail.contains(&b.id)).map(|b| b.id.clone()));
//!         }
//!         // Everyone else, and webmail's fallback: the plain rotation.
//!         for id in self.rest.select(registry, req) {
//!             if !out.contains(&id) {
//!                 out.push(id);
//!             }
//!         }
//!         out
//!     }
//! }
//!
//! let registry = Registry::new(vec![
//!     Backend::new("imap1", "127.0.0.1:10143"),
//!     Backend::new("web1", "127.0.0.1:10144"),
//! ])?;
//! let selector: Arc<dyn Selector> = Arc::new(WebmailFirst {
//!     webmail: vec![BackendId::from("web1")],
//!     rest: RoundRobin::new(),
//! });
//! let id = [("name".to_owned(), Some("Roundcube".to_owned()))];
//! let req = Request::new("alice").with_client_id(&id);
//! assert_eq!(selector.candidates(&registry, &req)?[0].as_str(), "web1");
//! # Ok::<(), imapproxy_route::Error>(())
//! ```
//!
//! # A directory in front of the selector
//!
//! ```
//! use std::time::Duration;
//! use imapproxy_route::{
//!     resolve, Backend, CachedDirectory, LeastConnections, Registry, Request, StaticMap,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), imapproxy_route::Error> {
//! let registry = Registry::new(vec![
//!     Backend::new("mail1", "127.0.0.1:10143"),
//!     Backend::new("mail2", "127.0.0.1:10144"),
//! ])?;
//! let map: StaticMap = "alice@example.org mail2\n@example.net mail1\n".parse()?;
//! let directory = CachedDirectory::new(map, Duration::from_secs(60), Duration::from_secs(2));
//! let candidates =
//!     resolve(&directory, &LeastConnections, &registry, &Request::new("alice@example.org"))
//!         .await?;
//! assert_eq!(candidates[0].as_str(), "mail2"); // the map's answer, then the fallback
//! assert_eq!(candidates.len(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! - `http`: `HttpAuthDirectory`, an nginx mail-proxy compatible HTTP auth service client
//!   (`Auth-User`, `Auth-Pass`, … → `Auth-Status`, `Auth-Server`, `Auth-Port`, `Auth-Wait`).
//! - `redis`: `RedisDirectory`, `HGET <hash> <user>` → backend name(s) on a Redis server
//!   shared by every proxy of a fleet.
//!
//! Both are meant to be wrapped in [`CachedDirectory`] (TTL and timeout).

#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod backend;
mod directory;
mod error;
mod hash;
mod health;
mod registry;
mod selection;
mod sync;

pub use backend::{
    Backend, BackendId, BackendState, DEFAULT_MAX_CONNECTIONS, Health, SessionGuard,
};
#[cfg(feature = "http")]
pub use directory::HttpAuthDirectory;
#[cfg(feature = "redis")]
pub use directory::RedisDirectory;
pub use directory::{
    CachedDirectory, Directory, LookupContext, Route, Routed, StaticMap, resolve, route_first,
};
pub use error::Error;
pub use health::{
    CheckRecord, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_THRESHOLD, DEFAULT_HEALTH_TIMEOUT,
    HealthCheck, HealthMonitor, HealthSettings, MonitorHandle,
};
pub use registry::Registry;
pub use selection::{
    LeastConnections, PowerOfTwoChoices, RendezvousHash, Request, RoundRobin, Selector,
    WeightedRoundRobin,
};
