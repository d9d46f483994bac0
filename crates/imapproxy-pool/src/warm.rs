//! Warm connections: connected, TLS done, greeting read, not logged in — one deadpool per
//! backend, kept topped up to `warm` by the pool's maintenance task.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult, Timeouts};

use crate::capabilities::Capabilities;
use crate::liveness::idle_and_alive;
use crate::sync::lock;
use crate::{BackendConn, BackendTarget, Error};

/// Creates and checks warm connections for one backend.
pub(crate) struct WarmManager {
    pub(crate) target: BackendTarget,
    /// Servers drop connections that stay unauthenticated for long (Dovecot after about
    /// three minutes); a warm connection is replaced well before that.
    pub(crate) max_age: Duration,
    /// Where the backend's pre-login capability list is recorded for the session layer.
    pub(crate) prelogin: Arc<Mutex<Option<Capabilities>>>,
}

impl managed::Manager for WarmManager {
    type Type = BackendConn;
    type Error = Error;

    async fn create(&self) -> Result<BackendConn, Error> {
        // Boxed: deadpool nests this future in four layers of its own (timeouts, hooks),
        // each a copy of its size in the state of every checkout that waits on it.
        let conn = Box::pin(BackendConn::connect(&self.target)).await?;
        record_prelogin(&self.prelogin, &conn);
        Ok(conn)
    }

    async fn recycle(&self, conn: &mut BackendConn, metrics: &Metrics) -> RecycleResult<Error> {
        if metrics.age() >= self.max_age {
            return Err(RecycleError::message("warm connection too old"));
        }
        if !idle_and_alive(conn.stream_mut()) {
            return Err(RecycleError::message("warm connection closed or not idle"));
        }
        Ok(())
    }
}

pub(crate) type WarmPool = managed::Pool<WarmManager>;

/// Remembers `conn`'s (pre-login) capability list as its backend's.
pub(crate) fn record_prelogin(cell: &Mutex<Option<Capabilities>>, conn: &BackendConn) {
    let caps = conn.capability_list();
    let mut cell = lock(cell);
    if cell.as_ref() != Some(caps) {
        *cell = Some(caps.clone());
    }
}

pub(crate) fn build(
    target: BackendTarget,
    size: usize,
    max_age: Duration,
    prelogin: Arc<Mutex<Option<Capabilities>>>,
) -> Option<WarmPool> {
    managed::Pool::builder(WarmManager {
        target,
        max_age,
        prelogin,
    })
    .max_size(size.max(1))
    .runtime(deadpool::Runtime::Tokio1)
    .build()
    .ok()
}

/// A warm connection if one is ready now; never waits for one to be created.
pub(crate) async fn take_ready(pool: &WarmPool) -> Option<BackendConn> {
    if pool.status().available == 0 {
        return None;
    }
    let timeouts = Timeouts {
        wait: Some(Duration::ZERO),
        create: Some(Duration::from_secs(5)),
        recycle: Some(Duration::from_secs(1)),
    };
    let obj = pool.timeout_get(&timeouts).await.ok()?;
    Some(Object::take(obj))
}

/// Drops connections past their age, and any beyond `want`, and opens new ones until `want`
/// are idle.
pub(crate) async fn top_up(pool: &WarmPool, want: usize, max_age: Duration) {
    pool.retain(|_, m| m.age() < max_age);
    let mut excess = pool.status().available.saturating_sub(want);
    if excess > 0 {
        pool.retain(|_, _| {
            let keep = excess == 0;
            excess = excess.saturating_sub(1);
            keep
        });
    }
    let status = pool.status();
    let missing = want.saturating_sub(status.available);
    if missing == 0 {
        return;
    }
    // Hold every object until all are created, so `get` cannot hand back the same idle one;
    // dropping them returns them to the pool as idle.
    let mut held = Vec::with_capacity(missing);
    for _ in 0..missing {
        match pool.get().await {
            Ok(obj) => held.push(obj),
            Err(e) => tracing::debug!(error = %e, "warm connection failed"),
        }
    }
    drop(held);
}
