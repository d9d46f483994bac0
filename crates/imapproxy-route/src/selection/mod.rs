//! Choosing backends for a session: the [`Selector`] trait and its strategies, one module
//! each.
//!
//! A selector returns an ordered list of candidates, preferred first, rather than one answer,
//! so the caller can fall through to the next when a connection or login fails without
//! asking again. Every strategy here returns *all* healthy backends, only the order differs.

use std::net::IpAddr;
use std::sync::Arc;

use crate::{Backend, BackendId, BackendState, Error, Health, Registry};

mod least_connections;
mod p2c;
mod rendezvous;
mod round_robin;
mod weighted;

pub use least_connections::LeastConnections;
pub use p2c::PowerOfTwoChoices;
pub use rendezvous::RendezvousHash;
pub use round_robin::RoundRobin;
pub use weighted::WeightedRoundRobin;

/// What a selector may know about the session it routes.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The login name, lower-cased by the caller.
    pub user: &'a str,
    /// The client's address (after a PROXY header, if any).
    pub client_ip: Option<IpAddr>,
    /// The fields of the client's `ID` command (RFC 2971), as sent; empty when it sent none.
    pub client_id: &'a [(String, Option<String>)],
}

impl<'a> Request<'a> {
    /// A request for `user` with no address and no `ID` fields.
    #[must_use]
    pub fn new(user: &'a str) -> Self {
        Self {
            user,
            client_ip: None,
            client_id: &[],
        }
    }

    /// Sets the client address.
    #[must_use]
    pub fn with_client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    /// Sets the client's `ID` fields.
    #[must_use]
    pub fn with_client_id(mut self, fields: &'a [(String, Option<String>)]) -> Self {
        self.client_id = fields;
        self
    }
}

/// A routing strategy.
///
/// Implementations must be cheap and must not block: `select` runs on the session's task for
/// every login. Anything slow (directory lookups over the network) belongs before selection,
/// in the asynchronous `Directory` layer, whose answer a selector may then take into account.
pub trait Selector: Send + Sync + 'static {
    /// Candidates for this request, preferred first. Only backends whose health is
    /// [`Health::Up`] may appear; an empty list means none can take the session.
    fn select(&self, registry: &Registry, req: &Request<'_>) -> Vec<BackendId>;

    /// [`Selector::select`], with an empty answer turned into [`Error::NoHealthyBackend`].
    ///
    /// # Errors
    /// [`Error::NoHealthyBackend`] when there is no candidate.
    fn candidates(&self, registry: &Registry, req: &Request<'_>) -> Result<Vec<BackendId>, Error> {
        let candidates = self.select(registry, req);
        if candidates.is_empty() {
            Err(Error::NoHealthyBackend)
        } else {
            Ok(candidates)
        }
    }
}

/// The [`Health::Up`] backends with their states, in registry order: what every strategy
/// starts from.
pub(crate) fn up_entries(registry: &Registry) -> Vec<(&Backend, &Arc<BackendState>)> {
    registry
        .iter()
        .filter(|(_, state)| state.health() == Health::Up)
        .collect()
}

/// Shared helpers for the strategies' tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{Backend, BackendId, Registry};

    pub(crate) fn registry(names: &[&str]) -> Registry {
        Registry::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| Backend::new(*n, format!("127.0.0.1:{}", 10_000 + i)))
                .collect(),
        )
        .unwrap()
    }

    pub(crate) fn weighted(entries: &[(&str, u32)]) -> Registry {
        Registry::new(
            entries
                .iter()
                .enumerate()
                .map(|(i, (n, w))| {
                    Backend::new(*n, format!("127.0.0.1:{}", 10_000 + i)).with_weight(*w)
                })
                .collect(),
        )
        .unwrap()
    }

    pub(crate) fn names(ids: &[BackendId]) -> Vec<&str> {
        ids.iter().map(BackendId::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{names, registry};
    use super::*;

    #[test]
    fn round_robin_cycles_over_all_backends() {
        let registry = registry(&["a", "b", "c"]);
        let rr = RoundRobin::new();
        let req = Request::new("alice");
        assert_eq!(names(&rr.select(&registry, &req)), ["a", "b", "c"]);
        assert_eq!(names(&rr.select(&registry, &req)), ["b", "c", "a"]);
        assert_eq!(names(&rr.select(&registry, &req)), ["c", "a", "b"]);
        assert_eq!(names(&rr.select(&registry, &req)), ["a", "b", "c"]);
    }

    #[test]
    fn round_robin_skips_down_and_draining_backends() {
        let registry = registry(&["a", "b", "c", "d"]);
        registry.set_health("b", Health::Down).unwrap();
        registry.set_health("d", Health::Draining).unwrap();
        let rr = RoundRobin::new();
        let req = Request::new("alice");
        let firsts: Vec<BackendId> = (0..4)
            .map(|_| {
                let candidates = rr.select(&registry, &req);
                assert_eq!(candidates.len(), 2);
                candidates[0].clone()
            })
            .collect();
        assert_eq!(names(&firsts), ["a", "c", "a", "c"]);

        registry.set_health("b", Health::Up).unwrap();
        let mut seen: Vec<BackendId> = (0..3)
            .map(|_| rr.select(&registry, &req)[0].clone())
            .collect();
        seen.sort();
        assert_eq!(names(&seen), ["a", "b", "c"]);
    }

    #[test]
    fn no_healthy_backend_is_an_error() {
        let registry = registry(&["a", "b"]);
        registry.set_health("a", Health::Down).unwrap();
        registry.set_health("b", Health::Draining).unwrap();
        let rr = RoundRobin::new();
        let req = Request::new("alice");
        assert!(rr.select(&registry, &req).is_empty());
        assert_eq!(rr.candidates(&registry, &req), Err(Error::NoHealthyBackend));
        assert_eq!(
            rr.candidates(&Registry::default(), &req),
            Err(Error::NoHealthyBackend)
        );
    }

    #[test]
    fn selectors_work_behind_dyn() {
        let selector: std::sync::Arc<dyn Selector> = std::sync::Arc::new(RoundRobin::new());
        let registry = registry(&["a"]);
        let id_fields = [("name".to_owned(), Some("Thunderbird".to_owned()))];
        let req = Request::new("bob")
            .with_client_ip(IpAddr::from([127, 0, 0, 1]))
            .with_client_id(&id_fields);
        assert_eq!(names(&selector.candidates(&registry, &req).unwrap()), ["a"]);
    }
}
