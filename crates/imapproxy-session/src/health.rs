//! The pool crate's IMAP check as a route-crate [`HealthCheck`]: the glue between the two
//! (the route crate knows no connections, the pool crate no backend registry).

use std::collections::HashMap;

use imapproxy_pool::{BackendTarget, ImapCheck};
use imapproxy_route::{Backend, BackendId, HealthCheck};

/// Checks each backend with [`ImapCheck`] over its [`BackendTarget`] (TLS, PROXY header and
/// timeouts as the sessions use them).
#[derive(Debug, Clone)]
pub struct ImapHealthCheck {
    targets: HashMap<BackendId, BackendTarget>,
    check: ImapCheck,
}

impl ImapHealthCheck {
    /// A check of the backends in `targets` (usually a clone of `Upstreams::targets`).
    #[must_use]
    pub fn new(targets: HashMap<BackendId, BackendTarget>, check: ImapCheck) -> Self {
        Self { targets, check }
    }
}

#[async_trait::async_trait]
impl HealthCheck for ImapHealthCheck {
    async fn check(&self, backend: &Backend) -> Result<(), String> {
        let target = self
            .targets
            .get(&backend.id)
            .ok_or_else(|| "no connection settings for this backend".to_owned())?;
        self.check.check(target).await.map_err(|e| e.to_string())
    }
}
