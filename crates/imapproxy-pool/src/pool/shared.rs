//! A per-user cap on backend sessions counted across several proxies ([`SharedUserCap`]),
//! on top of each pool's own [`PoolSettings::max_per_user`](crate::PoolSettings::max_per_user).
//!
//! A backend limits a user's connections whichever proxy opened them (Dovecot's
//! `mail_max_userip_connections`): with several proxies, each one's local cap cannot keep the
//! sum under it. With a shared cap set ([`SessionPool::set_shared_cap`]), every fresh backend
//! login first takes one of the user's places in the shared store and keeps it as long as
//! the backend session lives, cached or lent out. When the user's places are all taken, the
//! pool closes one of the user's cached sessions of its own if it has any, or waits (up to
//! `wait_timeout`) for a place to come free; when the store cannot tell, the local cap alone
//! applies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::SessionPool;
use super::cache::Idle;
use crate::Error;
use crate::sync::lock;

/// One of a user's places in a shared store, given back when dropped.
pub type SharedPlace = Box<dyn std::any::Any + Send + Sync>;

/// What [`SharedUserCap::acquire`] found.
#[non_exhaustive]
pub enum Acquire {
    /// A place, held until the guard is dropped.
    Granted(SharedPlace),
    /// Every place of the user is taken.
    Full,
    /// The store cannot tell now (down or slow): go on under the local cap.
    Unknown,
}

impl std::fmt::Debug for Acquire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Granted(_) => "Granted",
            Self::Full => "Full",
            Self::Unknown => "Unknown",
        })
    }
}

/// Places per user shared by several pools (the `imapproxy` binary keeps them in Redis).
#[async_trait::async_trait]
pub trait SharedUserCap: Send + Sync + std::fmt::Debug + 'static {
    /// Takes one of `user`'s places (the user lower-cased). Must be bounded in time.
    async fn acquire(&self, user: &str) -> Acquire;
}

/// Pause between attempts while the user's places are all taken; doubles up to the cap.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(200);

impl SessionPool {
    /// Counts every fresh backend login against `cap` as well (see the module docs).
    pub fn set_shared_cap(&self, cap: Arc<dyn SharedUserCap>) {
        *lock(&self.inner.shared_cap) = Some(cap);
    }

    /// A shared place for a fresh login of `user`; `None` without a shared cap or when the
    /// store cannot tell.
    pub(super) async fn shared_place(&self, user: &str) -> Result<Option<SharedPlace>, Error> {
        let Some(cap) = lock(&self.inner.shared_cap).clone() else {
            return Ok(None);
        };
        let deadline = Instant::now() + self.inner.settings.wait_timeout;
        let mut pause = FIRST_PAUSE;
        loop {
            match cap.acquire(user).await {
                Acquire::Granted(place) => return Ok(Some(place)),
                Acquire::Unknown => return Ok(None),
                Acquire::Full => {
                    if self.close_oldest_idle(user) {
                        continue;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        metrics::counter!("imapproxy_pool_checkouts_total", "result" => "fleet_full")
                            .increment(1);
                        return Err(Error::PoolTimeout);
                    }
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }

    /// Closes `user`'s oldest cached session (on any backend), giving back its places;
    /// whether there was one.
    fn close_oldest_idle(&self, user: &str) -> bool {
        let taken: Option<Idle> = {
            let mut users = lock(&self.inner.users);
            users.get_mut(user).and_then(|state| {
                let oldest = state
                    .idle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.since)
                    .map(|(i, _)| i)?;
                Some(state.idle.swap_remove(oldest))
            })
        };
        // Outside the lock: dropping the slot takes it.
        match taken {
            Some(Idle { lease, slot, .. }) => {
                metrics::counter!("imapproxy_pool_evictions_total", "reason" => "fleet_full")
                    .increment(1);
                lease.close();
                drop(slot);
                true
            }
            None => false,
        }
    }
}
