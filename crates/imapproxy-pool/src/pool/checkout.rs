//! Lending a session: from the cache, or a fresh login on a warm or new connection, waiting
//! in the user's queue when all of the user's slots are taken.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::oneshot;

use super::cache::Idle;
use super::sasl::SaslLogin;
use super::session::{Lease, PooledSession};
use super::slots::{ConnCount, Grant, UserSlot, Waiter};
use super::status::Counters;
use super::{Backend, SessionPool};
use crate::digest::Digest;
use crate::sync::lock;
use crate::warm;
use crate::{BackendConn, ClientAddrs, Credentials, Error, Secret};

/// Whom a fresh backend login is for.
struct LoginFor<'a> {
    creds: &'a Credentials,
    id_fields: &'a [(String, String)],
    client: Option<ClientAddrs>,
    /// Leave the connection unauthenticated: the caller relays a SASL exchange.
    sasl: bool,
    /// Its place under the shared per-user cap.
    shared: Option<super::SharedPlace>,
}

enum Plan {
    Reuse(Box<Idle>),
    New(UserSlot, Option<Box<Lease>>),
    /// The waiter's id, its grant, and whether it is the first of the user's queue.
    Wait(u64, oneshot::Receiver<Grant>, bool),
}

impl SessionPool {
    /// A logged-in session of `creds.username` on `backend`: a cached one with the same
    /// credentials when there is one (no backend round trip, or a `NOOP` after
    /// [`PoolSettings::noop_after`](crate::PoolSettings::noop_after)), else a warm connection
    /// (or a new one) logged in with `creds`, sending `id_fields` first. Waits in the user's
    /// queue for at most `wait_timeout` when all of the user's slots are busy.
    pub async fn checkout(
        &self,
        backend: &str,
        creds: &Credentials,
        id_fields: &[(String, String)],
    ) -> Result<PooledSession, Error> {
        self.checkout_for(backend, creds, id_fields, None).await
    }

    /// [`SessionPool::checkout`] on behalf of `client`: a backend with
    /// [`BackendTarget::proxy_protocol`](crate::BackendTarget::proxy_protocol) gets a new
    /// connection whose PROXY v2 header names `client` (never a warm one). A cached session of
    /// the same user and password is still reused, and keeps the address of the client it
    /// was first opened for.
    pub async fn checkout_for(
        &self,
        backend: &str,
        creds: &Credentials,
        id_fields: &[(String, String)],
        client: Option<ClientAddrs>,
    ) -> Result<PooledSession, Error> {
        self.checkout_inner(backend, creds, id_fields, client, false)
            .await
    }

    /// A connection to `backend` reserved for `username` (waiting in the user's queue like
    /// [`SessionPool::checkout`]), not logged in: the caller relays a SASL exchange through
    /// the returned [`SaslLogin`]. Never served from the cache, and the session it yields is
    /// never reused.
    pub async fn checkout_sasl(
        &self,
        backend: &str,
        username: &str,
        client: Option<ClientAddrs>,
    ) -> Result<SaslLogin, Error> {
        let creds = Credentials {
            username: username.to_owned(),
            password: Secret::new(Vec::new()),
        };
        let session = self
            .checkout_inner(backend, &creds, &[], client, true)
            .await?;
        Ok(SaslLogin { session, tag: None })
    }

    async fn checkout_inner(
        &self,
        name: &str,
        creds: &Credentials,
        id_fields: &[(String, String)],
        client: Option<ClientAddrs>,
        sasl: bool,
    ) -> Result<PooledSession, Error> {
        let (backend, be) = self.backend(name).ok_or_else(|| Error::UnknownBackend {
            name: name.to_owned(),
        })?;
        let digest = if sasl {
            self.inner.key.unmatchable(&creds.username)?
        } else {
            self.inner
                .key
                .digest(&creds.username, creds.password.expose())
        };
        let settings = &self.inner.settings;
        let counters = &self.inner.counters;

        let (user, mut plan) = self.plan(creds.username.to_lowercase(), &backend, digest);
        loop {
            match plan {
                // Boxed, as is the warm take in `login`: a revival (1.2 KB of state) is one
                // way of several, and inline it would size the future of every login in
                // flight, whichever way it went.
                Plan::Reuse(idle) => match Box::pin(self.revive(*idle)).await {
                    Ok(session) => {
                        Counters::bump(&counters.hits);
                        metrics::counter!("imapproxy_pool_checkouts_total", "result" => "hit")
                            .increment(1);
                        return Ok(session);
                    }
                    // Dead: its slot is ours now; log in afresh.
                    Err(slot) => plan = Plan::New(slot, None),
                },
                Plan::New(slot, evicted) => {
                    if let Some(lease) = evicted {
                        metrics::counter!("imapproxy_pool_evictions_total", "reason" => "user_full")
                            .increment(1);
                        lease.close();
                    }
                    Counters::bump(&counters.misses);
                    metrics::counter!("imapproxy_pool_checkouts_total", "result" => "miss")
                        .increment(1);
                    // Outside every lock, and before the backend is touched.
                    let shared = self.shared_place(&user).await?;
                    let who = LoginFor {
                        creds,
                        id_fields,
                        client,
                        sasl,
                        shared,
                    };
                    return self.login(backend, &be, slot, digest, who).await;
                }
                Plan::Wait(id, rx, first) => {
                    Counters::bump(&counters.waits);
                    if first {
                        // Outside the users lock: sessions of the user may now park.
                        self.inner.waiter_arrived(&user);
                    }
                    match tokio::time::timeout(settings.wait_timeout, rx).await {
                        Ok(Ok(Grant::Session(idle))) => plan = Plan::Reuse(idle),
                        Ok(Ok(Grant::Slot(slot))) => plan = Plan::New(slot, None),
                        Ok(Err(_)) | Err(_) => {
                            self.inner.abandon_wait(&user, id);
                            Counters::bump(&counters.timeouts);
                            metrics::counter!("imapproxy_pool_checkouts_total", "result" => "timeout")
                                .increment(1);
                            return Err(Error::PoolTimeout);
                        }
                    }
                }
            }
        }
    }

    /// Decides, under the users lock, how a checkout proceeds: a cached session of the same
    /// credentials, a free slot, the slot of the user's oldest cached session, or the queue.
    /// Returns the user's key with it: `user` (lower-cased) as the users map holds it, shared
    /// with the user's other sessions while the pool knows the user (one allocation per user
    /// rather than per session).
    fn plan(&self, user: String, backend: &Arc<str>, digest: Digest) -> (Arc<str>, Plan) {
        let settings = &self.inner.settings;
        let mut users = lock(&self.inner.users);
        let user = users
            .get_key_value(user.as_str())
            .map_or_else(|| Arc::from(user), |(known, _)| Arc::clone(known));
        let state = users.entry(Arc::clone(&user)).or_default();
        let hit = state
            .idle
            .iter()
            .position(|s| s.lease.backend == *backend && s.lease.digest.matches(&digest));
        let plan = if let Some(i) = hit.filter(|_| settings.reuse) {
            Plan::Reuse(Box::new(state.idle.swap_remove(i)))
        } else if state.slots < settings.max_per_user {
            state.slots += 1;
            Plan::New(self.inner.slot(&user), None)
        } else if !state.idle.is_empty() {
            // Every slot is held, some by cached sessions nobody asked for: close the
            // oldest and take its slot (the user's count does not change).
            let oldest = state
                .idle
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.since)
                .map_or(0, |(i, _)| i);
            let Idle { lease, slot, .. } = state.idle.swap_remove(oldest);
            Plan::New(slot, Some(Box::new(lease)))
        } else {
            let (tx, rx) = oneshot::channel();
            let id = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed);
            let first = state.waiters.is_empty();
            state.waiters.push_back(Waiter {
                id,
                backend: Arc::clone(backend),
                digest,
                tx,
            });
            Plan::Wait(id, rx, first)
        };
        (user, plan)
    }

    /// A fresh backend session under `slot`: makes room under `max_connections` (closing the
    /// least recently used cached session of the backend) or fails with
    /// [`Error::BackendFull`], then logs in on a warm or new connection.
    async fn login(
        &self,
        backend: Arc<str>,
        be: &Backend,
        slot: UserSlot,
        digest: Digest,
        who: LoginFor<'_>,
    ) -> Result<PooledSession, Error> {
        let LoginFor {
            creds,
            id_fields,
            client,
            sasl,
            shared,
        } = who;
        let (conn_count, count) = ConnCount::open(&be.conns);
        if count > be.max_connections {
            // Our increment stands: the evicted session's count is given back instead. Each
            // login that finds the backend over its cap evicts one, so concurrent ones settle
            // at the cap. Without anything to evict, dropping `conn_count` undoes ours.
            let Some(evicted) = self.evict_lru(&be.conns) else {
                return Err(Error::BackendFull);
            };
            tracing::debug!(%backend, "backend full: closing its least recently used session");
            metrics::counter!("imapproxy_pool_evictions_total", "reason" => "backend_full")
                .increment(1);
            // Outside the users lock: the slot's drop takes it (and may hand the slot to a
            // waiter of the evicted session's user).
            let Idle { lease, slot, .. } = evicted;
            lease.close();
            drop(slot);
        }
        let warm = match &be.warm {
            // A warm connection's PROXY header (if any) could not name this client.
            Some(pool) if !be.target.proxy_protocol => Box::pin(warm::take_ready(pool)).await,
            _ => None,
        };
        let mut conn = match warm {
            Some(conn) => conn,
            None => BackendConn::connect_for(&be.target, client).await?,
        };
        warm::record_prelogin(&be.prelogin, &conn);
        if !sasl {
            conn.login(creds, id_fields).await?;
            conn.share_capabilities(&be.capabilities);
        }
        Ok(PooledSession {
            lease: Lease {
                conn,
                backend,
                digest,
                born: Instant::now(),
                conn_count,
                _shared: shared,
            },
            slot,
            reused: false,
            reusable: !sasl,
        })
    }
}
