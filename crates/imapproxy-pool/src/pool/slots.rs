//! Per-user slots (`max_per_user`) with a FIFO queue of waiting clients, and the count of a
//! backend's open connections (`max_connections`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::oneshot;

use super::Inner;
use super::cache::Idle;
use crate::digest::Digest;
use crate::sync::lock;

/// What a waiting client is handed.
pub(super) enum Grant {
    /// A cached session that matches the waiter's backend and credentials.
    Session(Box<Idle>),
    /// A slot: connect and log in.
    Slot(UserSlot),
}

/// A client waiting for one of its user's slots.
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) backend: Arc<str>,
    pub(super) digest: Digest,
    pub(super) tx: oneshot::Sender<Grant>,
}

/// One user's slots in use, cached sessions and queue.
#[derive(Default)]
pub(super) struct UserState {
    pub(super) slots: usize,
    pub(super) idle: Vec<Idle>,
    pub(super) waiters: VecDeque<Waiter>,
}

/// One of a user's `max_per_user` slots. Dropping it hands the slot to the first waiter or
/// frees it. Never dropped while the users lock is held.
pub(super) struct UserSlot {
    pub(super) pool: Weak<Inner>,
    pub(super) user: Arc<str>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.release_slot(&self.user);
        }
    }
}

/// One open connection counted against its backend's `max_connections`.
pub(super) struct ConnCount(pub(super) Arc<AtomicUsize>);

impl ConnCount {
    /// Counts one more connection on `conns`; returns the count and the new total.
    pub(super) fn open(conns: &Arc<AtomicUsize>) -> (Self, usize) {
        let total = conns.fetch_add(1, Ordering::AcqRel) + 1;
        (Self(Arc::clone(conns)), total)
    }
}

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    pub(super) fn release_slot(self: &Arc<Self>, user: &Arc<str>) {
        // Declared before the guard, so dropped after it: nothing holding a slot may be
        // dropped while the lock is held (its Drop takes the lock).
        let mut trash: Vec<Grant> = Vec::new();
        let mut users = lock(&self.users);
        let Some(state) = users.get_mut(user) else {
            return;
        };
        while let Some(w) = state.waiters.pop_front() {
            let slot = self.slot(user);
            match w.tx.send(Grant::Slot(slot)) {
                Ok(()) => return,
                // That waiter gave up. The slot token goes nowhere: disarm it so that its
                // drop does not release the slot a second time, and try the next waiter.
                Err(Grant::Slot(mut slot)) => slot.pool = Weak::new(),
                Err(other) => trash.push(other),
            }
        }
        state.slots = state.slots.saturating_sub(1);
        if state.slots == 0 && state.idle.is_empty() && state.waiters.is_empty() {
            users.remove(user);
        }
    }

    pub(super) fn slot(self: &Arc<Self>, user: &Arc<str>) -> UserSlot {
        UserSlot {
            pool: Arc::downgrade(self),
            user: Arc::clone(user),
        }
    }

    /// Leaves the queue after a timeout. A grant sent in the meantime was dropped with the
    /// receiver, which released it again.
    pub(super) fn abandon_wait(&self, user: &Arc<str>, id: u64) {
        let mut users = lock(&self.users);
        if let Some(state) = users.get_mut(user) {
            state.waiters.retain(|w| w.id != id);
        }
    }
}
