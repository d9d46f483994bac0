//! Backend registry and selection for IMAP proxies.
//!
//! - [`Backend`] and [`BackendId`]: what is configured.
//! - [`BackendState`]: live health ([`Health`]: up, down, draining) and the number of active
//!   sessions, read without locks; [`SessionGuard`] counts a session while it lives.
//! - [`Registry`]: the ordered set of backends with their states; rebuilt on reload with the
//!   states of surviving backends kept.
//! - [`Selector`]: a routing strategy returning an ordered list of candidates (first =
//!   preferred) so callers fall through on failure; [`RoundRobin`] is the simplest.
//!
//! The crate knows nothing of connections: the pool connects, the session counts.
//!
//! # Example
//!
//! ```
//! use imapproxy_route::{Backend, Health, Registry, Request, RoundRobin, Selector};
//!
//! let registry = Registry::new(vec![
//!     Backend::new("mail1", "127.0.0.1:10143"),
//!     Backend::new("mail2", "127.0.0.1:10144").with_weight(2),
//! ])?;
//! registry.set_health("mail1", Health::Draining)?;
//!
//! let selector = RoundRobin::new();
//! let candidates = selector.candidates(&registry, &Request::new("alice"))?;
//! assert_eq!(candidates[0].as_str(), "mail2");
//!
//! // The session holds a guard for as long as it uses the backend.
//! let state = registry.state(&candidates[0]).expect("selected from this registry");
//! let guard = state.session_started();
//! assert_eq!(state.active(), 1);
//! drop(guard);
//! assert_eq!(state.active(), 0);
//! # Ok::<(), imapproxy_route::Error>(())
//! ```
//!
//! # Feature flags
//!
//! None yet; HTTP and Redis directories will sit behind features.

#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod backend;
mod error;
mod registry;
mod selection;

pub use backend::{
    Backend, BackendId, BackendState, DEFAULT_MAX_CONNECTIONS, Health, SessionGuard,
};
pub use error::Error;
pub use registry::Registry;
pub use selection::{Request, RoundRobin, Selector};
