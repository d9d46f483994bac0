//! A session lent to a client, and the logged-in connection at its heart.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::close_politely;
use super::slots::{ConnCount, UserSlot};
use crate::BackendConn;
use crate::digest::Digest;

/// A logged-in backend connection and what it is accounted against (its backend's connection
/// count), lent or cached alike.
pub(super) struct Lease {
    pub(super) conn: BackendConn,
    pub(super) backend: Arc<str>,
    /// The credentials it was logged in with, as the reuse key.
    pub(super) digest: Digest,
    /// When the backend login happened (not the checkout): see
    /// [`PoolSettings::max_age`](crate::PoolSettings::max_age).
    pub(super) born: Instant,
    pub(super) conn_count: ConnCount,
    /// Its place under a shared per-user cap, given back with the connection.
    pub(super) _shared: Option<super::SharedPlace>,
}

impl Lease {
    pub(super) fn too_old(&self, max_age: Duration) -> bool {
        self.born.elapsed() >= max_age
    }

    /// Says `LOGOUT` in the background and gives the connection's place under its backend's
    /// `max_connections` back at once.
    pub(super) fn close(self) {
        close_politely(self.conn);
    }
}

/// A logged-in backend session lent to one client.
///
/// Give it back with [`SessionPool::checkin`](crate::SessionPool::checkin); dropping it closes
/// the connection and frees the user's slot for the next client in the queue.
pub struct PooledSession {
    pub(super) lease: Lease,
    pub(super) slot: UserSlot,
    pub(super) reused: bool,
    /// False for sessions logged in by a relayed SASL exchange: there is no password to
    /// match a later login against.
    pub(super) reusable: bool,
}

impl fmt::Debug for PooledSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledSession")
            .field("backend", &self.lease.backend)
            .field("user", &self.slot.user)
            .field("reused", &self.reused)
            .field("conn", &self.lease.conn)
            .finish_non_exhaustive()
    }
}

impl PooledSession {
    /// The backend connection, logged in.
    pub fn conn(&mut self) -> &mut BackendConn {
        &mut self.lease.conn
    }

    /// The backend connection, read-only.
    pub fn conn_ref(&self) -> &BackendConn {
        &self.lease.conn
    }

    /// Whether this session came from the cache (no backend login happened for this client).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The user it is logged in as, lower-cased: the key of the user's slots, shared by the
    /// user's sessions.
    pub fn user(&self) -> &Arc<str> {
        &self.slot.user
    }

    /// The backend's name.
    pub fn backend(&self) -> &str {
        &self.lease.backend
    }

    /// Whether the pool may reuse this session at all. False after a relayed SASL login,
    /// which has no password to key the cache with: [`SessionPool::checkin`] then treats
    /// [`Disposition::Reuse`] as [`Disposition::Close`]. Even when true, the pool reuses it
    /// only if the caller returns it with `Reuse` and its reset succeeds.
    ///
    /// [`SessionPool::checkin`]: crate::SessionPool::checkin
    /// [`Disposition::Reuse`]: crate::Disposition::Reuse
    /// [`Disposition::Close`]: crate::Disposition::Close
    pub fn reusable(&self) -> bool {
        self.reusable
    }
}
