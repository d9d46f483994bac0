//! The ordered set of configured backends with their live state.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use crate::{Backend, BackendId, BackendState, Error, Health};

/// All configured backends, in configuration order, each with its shared [`BackendState`].
///
/// Immutable once built: a configuration change builds a new registry with
/// [`Registry::reload`] (which keeps the state of backends that stay) and the caller swaps it
/// in, e.g. behind an `ArcSwap`. Health and session counts change in place through the
/// shared states.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<(Backend, Arc<BackendState>)>,
    index: HashMap<BackendId, usize>,
}

impl Registry {
    /// Builds a registry; every backend starts [`Health::Up`] with no sessions.
    ///
    /// # Errors
    /// [`Error::DuplicateBackend`] when two backends share an id; [`Error::InvalidBackend`]
    /// when an id or address is empty.
    pub fn new(backends: Vec<Backend>) -> Result<Self, Error> {
        Self::build(backends, |_| Arc::new(BackendState::default()))
    }

    /// Builds the registry for a new configuration, reusing the state (health, active
    /// sessions) of every backend whose id already exists here, so a reload neither forgets
    /// that a backend is draining nor loses count of its sessions.
    ///
    /// # Errors
    /// As for [`Registry::new`].
    pub fn reload(&self, backends: Vec<Backend>) -> Result<Self, Error> {
        Self::build(backends, |id| {
            self.state(id)
                .map_or_else(|| Arc::new(BackendState::default()), Arc::clone)
        })
    }

    fn build(
        backends: Vec<Backend>,
        mut state_for: impl FnMut(&BackendId) -> Arc<BackendState>,
    ) -> Result<Self, Error> {
        let mut entries = Vec::with_capacity(backends.len());
        let mut index = HashMap::with_capacity(backends.len());
        for backend in backends {
            if backend.id.trim().is_empty() {
                return Err(Error::InvalidBackend {
                    id: backend.id.to_string(),
                    reason: "the name is empty",
                });
            }
            if backend.addr.trim().is_empty() {
                return Err(Error::InvalidBackend {
                    id: backend.id.to_string(),
                    reason: "the address is empty",
                });
            }
            if index.insert(backend.id.clone(), entries.len()).is_some() {
                return Err(Error::DuplicateBackend(backend.id));
            }
            let state = state_for(&backend.id);
            entries.push((backend, state));
        }
        Ok(Self { entries, index })
    }

    /// The backend and its state, by id (a [`BackendId`] or a `&str`).
    pub fn get<Q>(&self, id: &Q) -> Option<(&Backend, &Arc<BackendState>)>
    where
        BackendId: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.entries.get(*self.index.get(id)?)?;
        Some((&entry.0, &entry.1))
    }

    /// The backend's configuration, by id.
    pub fn backend<Q>(&self, id: &Q) -> Option<&Backend>
    where
        BackendId: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(id).map(|(backend, _)| backend)
    }

    /// The backend's live state, by id.
    pub fn state<Q>(&self, id: &Q) -> Option<&Arc<BackendState>>
    where
        BackendId: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(id).map(|(_, state)| state)
    }

    /// Sets a backend's health (admin drain, health checks); returns the previous health.
    ///
    /// # Errors
    /// [`Error::UnknownBackend`] when no backend has this id.
    pub fn set_health<Q>(&self, id: &Q, health: Health) -> Result<Health, Error>
    where
        BackendId: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToString,
    {
        let state = self
            .state(id)
            .ok_or_else(|| Error::UnknownBackend(id.to_string()))?;
        let previous = state.set_health(health);
        if previous != health {
            tracing::info!(backend = %id.to_string(), from = %previous, to = %health, "backend health changed");
        }
        Ok(previous)
    }

    /// All backends in configuration order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Backend, &Arc<BackendState>)> + '_ {
        self.entries.iter().map(|(backend, state)| (backend, state))
    }

    /// The backends that take new sessions now, in configuration order.
    pub fn up(&self) -> impl Iterator<Item = &Backend> + '_ {
        self.iter()
            .filter(|(_, state)| state.health() == Health::Up)
            .map(|(backend, _)| backend)
    }

    /// Number of backends.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no backends.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl TryFrom<Vec<Backend>> for Registry {
    type Error = Error;

    fn try_from(backends: Vec<Backend>) -> Result<Self, Error> {
        Self::new(backends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Vec<Backend> {
        vec![
            Backend::new("a", "127.0.0.1:1"),
            Backend::new("b", "127.0.0.1:2"),
            Backend::new("c", "127.0.0.1:3"),
        ]
    }

    #[test]
    fn keeps_configuration_order_and_finds_by_id_or_str() {
        let registry = Registry::new(three()).unwrap();
        let ids: Vec<&str> = registry.iter().map(|(b, _)| b.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.backend("b").unwrap().addr, "127.0.0.1:2");
        assert!(registry.get(&BackendId::from("c")).is_some());
        assert!(registry.get("zz").is_none());
    }

    #[test]
    fn rejects_duplicates_and_empty_fields() {
        let mut backends = three();
        backends.push(Backend::new("b", "127.0.0.1:9"));
        assert_eq!(
            Registry::new(backends).unwrap_err(),
            Error::DuplicateBackend(BackendId::from("b"))
        );
        assert!(matches!(
            Registry::new(vec![Backend::new("", "127.0.0.1:1")]),
            Err(Error::InvalidBackend { .. })
        ));
        assert!(matches!(
            Registry::try_from(vec![Backend::new("x", " ")]),
            Err(Error::InvalidBackend { .. })
        ));
    }

    #[test]
    fn set_health_changes_shared_state_and_rejects_unknown_ids() {
        let registry = Registry::new(three()).unwrap();
        assert_eq!(registry.set_health("b", Health::Draining), Ok(Health::Up));
        assert_eq!(registry.state("b").unwrap().health(), Health::Draining);
        let up: Vec<&str> = registry.up().map(|b| b.id.as_str()).collect();
        assert_eq!(up, ["a", "c"]);
        assert_eq!(
            registry.set_health("nope", Health::Down),
            Err(Error::UnknownBackend("nope".into()))
        );
    }

    #[test]
    fn reload_keeps_state_of_backends_that_stay() {
        let old = Registry::new(three()).unwrap();
        old.set_health("a", Health::Draining).unwrap();
        let guard = old.state("c").unwrap().session_started();

        let new = old
            .reload(vec![
                Backend::new("c", "10.0.0.3:143"),
                Backend::new("a", "10.0.0.1:143"),
                Backend::new("d", "10.0.0.4:143"),
            ])
            .unwrap();
        assert_eq!(new.state("a").unwrap().health(), Health::Draining);
        assert_eq!(new.state("c").unwrap().active(), 1);
        assert!(Arc::ptr_eq(new.state("c").unwrap(), guard.state()));
        assert_eq!(new.state("d").unwrap().health(), Health::Up);
        assert!(new.get("b").is_none());
        drop(guard);
        assert_eq!(new.state("c").unwrap().active(), 0);
    }
}
