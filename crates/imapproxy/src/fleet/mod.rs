//! Fleet mode: several proxies behind one L4 balancer sharing their state through Redis (or
//! Valkey, same protocol), an existing replicated store rather than a protocol of our own.
//!
//! What is shared, and how:
//!
//! - **User moves** (`POST /users/{user}/move`): the override is written to the hash
//!   `{prefix}overrides` and announced on the channel `{prefix}events`; every proxy applies
//!   it at once (override, cached sessions dropped, live sessions moved or kicked).
//! - **Backend drains** (`POST /backends/{name}/drain[?migrate=true]`, `undrain`): kept in the
//!   hash `{prefix}health` and announced the same way, so a drain reaches every proxy.
//! - **Kicks**: announced; every proxy ends the user's sessions.
//! - **Throttling** ([`throttle::RedisFailures`]): failure counters and blocks per (user,
//!   address) and per address, expiring in Redis, so a spray spread over the fleet meets one
//!   limit.
//! - **Per-user backend caps** (`[pool] max_per_user_fleet`, [`caps::RedisUserCap`]): a
//!   user's backend sessions counted over every proxy, so that the fleet as a whole stays
//!   under a backend's per-user connection limit.
//! - **Session registry**: each proxy writes a summary of its sessions to
//!   `{prefix}sessions:{proxy_id}` every `publish_interval`, kept for three intervals;
//!   `GET /sessions` lists the whole fleet.
//!
//! **Redis down or slow.** Nothing waits on Redis for longer than `[fleet] timeout`, and a
//! login does not wait at all while the link is known to be down: each proxy serves on its
//! local state and says so (`imapproxy_fleet_connected 0`, a warning in the log). Moves and
//! drains made meanwhile apply locally at once and are kept; when the link returns they are
//! written and announced again, then the shared overrides and drains are read back, so every
//! proxy converges. Kicks reach only the proxy asked (replayed later they would end sessions
//! opened since). Throttle counts made during the outage stay local; places under the
//! fleet-wide per-user cap are re-added by their holders within a renewal period.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use imapproxy_route::BackendId;
use imapproxy_session::Proxy;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::FleetConfig;

pub mod caps;
mod link;
mod registry;
pub mod throttle;

use link::Source;

/// How long the start-up waits for Redis before serving on local state.
const START_WAIT: Duration = Duration::from_secs(2);
/// Between health probes of the link (`PING`).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// One change to shared state, as announced on the events channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// `user` now lives on `backend`; its sessions move there (or end, with `kick`).
    Move {
        user: String,
        backend: String,
        kick: bool,
    },
    /// `user`'s override is removed.
    Unmove { user: String },
    /// `user`'s sessions end.
    Kick { user: String },
    /// `backend` is drained (its sessions moved, with `migrate`) or back up.
    Health {
        backend: String,
        draining: bool,
        migrate: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    origin: String,
    #[serde(flatten)]
    change: Change,
}

/// What an announcement reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Written to Redis and announced to this many subscribed proxies (this one included).
    Shared { proxies: usize },
    /// Redis is unreachable: applied here, kept, and shared when it returns.
    Pending,
    /// Redis is unreachable: applied here only (a kick is of the moment: replayed later it
    /// would end sessions opened since).
    Local,
}

impl Reach {
    /// For the admin API's answers.
    pub fn json(self) -> serde_json::Value {
        match self {
            Self::Shared { proxies } => serde_json::json!({ "shared": true, "proxies": proxies }),
            Self::Pending => serde_json::json!({ "shared": false, "pending": true }),
            Self::Local => serde_json::json!({ "shared": false, "pending": false }),
        }
    }
}

/// The fleet link of one proxy. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    prefix: String,
    timeout: Duration,
    publish_interval: Duration,
    source: Source,
    /// The command connection; `None` while the link is down.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// The client the command connection came from (the subscriber opens its own from it).
    client: Mutex<Option<redis::Client>>,
    connected: AtomicBool,
    /// Counts new links, so that the subscriber notices one made behind its back.
    generation: AtomicU64,
    /// The shared state's epoch this proxy follows (see `registry::reseed_if_lost`).
    epoch: Mutex<Option<String>>,
    /// Changes made while the link was down, oldest first.
    pending: Mutex<Vec<Change>>,
    /// Wakes the keeper at once when an operation finds the link broken.
    broken: Notify,
    /// Signalled when a fresh link is up (the subscriber re-subscribes and resynchronises).
    relinked: Notify,
    proxy: Arc<Proxy>,
    overrides_file: Option<PathBuf>,
}

/// Milliseconds for Redis's `PX`/`PEXPIRE` arguments (at least 1: 0 is refused there).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fleet {
    /// Connects (waiting at most a moment: Redis being down never stops the proxy from
    /// starting) and starts the background tasks, which end with `stop`.
    pub async fn start(
        cfg: &FleetConfig,
        proxy: Arc<Proxy>,
        overrides_file: Option<PathBuf>,
        stop: CancellationToken,
    ) -> Result<Option<Self>, String> {
        validate(cfg)?;
        let Some(source) = Source::from_config(cfg)? else {
            return Ok(None);
        };
        let id = cfg.proxy_id.clone().unwrap_or_else(default_proxy_id);
        let fleet = Self {
            inner: Arc::new(Inner {
                id,
                prefix: cfg.key_prefix.clone(),
                timeout: cfg.timeout,
                publish_interval: cfg.publish_interval,
                source,
                conn: Mutex::new(None),
                client: Mutex::new(None),
                connected: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                epoch: Mutex::new(None),
                pending: Mutex::new(Vec::new()),
                broken: Notify::new(),
                relinked: Notify::new(),
                proxy,
                overrides_file,
            }),
        };
        metrics::gauge!("imapproxy_fleet_connected").set(0.0);
        if tokio::time::timeout(START_WAIT, fleet.connect())
            .await
            .is_err()
            || !fleet.connected()
        {
            warn!("fleet: Redis unreachable at start; serving on local state until it returns");
        }
        let subscribed = Arc::new(Notify::new());
        tokio::spawn(link::keep(fleet.clone(), stop.clone()));
        tokio::spawn(registry::subscribe(
            fleet.clone(),
            Arc::clone(&subscribed),
            stop.clone(),
        ));
        tokio::spawn(registry::publish_sessions(fleet.clone(), stop));
        // The first subscription resynchronises; wait for it briefly so that the shared
        // overrides are in place before the first client logs in.
        if fleet.connected() {
            let _ = tokio::time::timeout(START_WAIT, subscribed.notified()).await;
        }
        info!(proxy = %fleet.id(), connected = fleet.connected(), "fleet mode on");
        Ok(Some(fleet))
    }

    /// This proxy's name in the fleet.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Whether the link to Redis is up.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.prefix)
    }

    /// The command connection, if the link is up (never waits for one).
    fn conn(&self) -> Option<MultiplexedConnection> {
        lock(&self.inner.conn).clone()
    }

    /// Runs one request on the link, bounded by `[fleet] timeout`. A failure other than a
    /// reply error marks the link broken, so the keeper reconnects.
    async fn query<T: redis::FromRedisValue>(&self, request: impl Request) -> Option<T> {
        let mut conn = self.conn()?;
        match tokio::time::timeout(self.inner.timeout, request.run(&mut conn)).await {
            Ok(Ok(v)) => match redis::from_redis_value(v) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(error = %e, "fleet: unexpected reply from Redis");
                    None
                }
            },
            Ok(Err(e)) => {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    || e.is_unrecoverable_error() && !e.is_io_error()
                {
                    warn!(error = %e, "fleet: Redis refused a request");
                } else {
                    self.broken(&e.to_string());
                }
                metrics::counter!("imapproxy_fleet_errors_total").increment(1);
                None
            }
            Err(_) => {
                // Treated as down: the next logins go on local state without waiting, and
                // the keeper reconnects (a Redis that is merely slow is back within moments).
                metrics::counter!("imapproxy_fleet_errors_total").increment(1);
                self.broken("no answer within [fleet] timeout");
                None
            }
        }
    }

    fn broken(&self, why: &str) {
        let was = self.inner.connected.swap(false, Ordering::AcqRel);
        *lock(&self.inner.conn) = None;
        metrics::gauge!("imapproxy_fleet_connected").set(0.0);
        if was {
            warn!(error = %why, "fleet: lost Redis; serving on local state");
        }
        self.inner.broken.notify_one();
    }

    /// Opens a fresh link (resolving the master through Sentinel when configured).
    async fn connect(&self) -> bool {
        match link::open(&self.inner.source, self.inner.timeout).await {
            Ok((client, conn)) => {
                *lock(&self.inner.client) = Some(client);
                *lock(&self.inner.conn) = Some(conn);
                self.inner.generation.fetch_add(1, Ordering::AcqRel);
                let was = self.inner.connected.swap(true, Ordering::AcqRel);
                metrics::gauge!("imapproxy_fleet_connected").set(1.0);
                if !was {
                    info!("fleet: connected to Redis");
                }
                self.inner.relinked.notify_one();
                true
            }
            Err(e) => {
                debug!(error = %e, "fleet: cannot reach Redis");
                false
            }
        }
    }

    /// Applies `change` here at once, then writes and announces it to the fleet; while
    /// Redis is unreachable the change is kept and shared when it returns.
    pub async fn change(&self, change: Change) -> Reach {
        match self.share(&change).await {
            Some(proxies) => Reach::Shared { proxies },
            None if matches!(change, Change::Kick { .. }) => Reach::Local,
            None => {
                lock(&self.inner.pending).push(change);
                Reach::Pending
            }
        }
    }

    /// Writes `change` to the shared state and announces it; the number of proxies that
    /// heard it, or `None` when Redis did not take it.
    async fn share(&self, change: &Change) -> Option<usize> {
        let write = match change {
            Change::Move { user, backend, .. } => Some(
                redis::cmd("HSET")
                    .arg(self.key("overrides"))
                    .arg(user.to_lowercase())
                    .arg(backend)
                    .clone(),
            ),
            Change::Unmove { user } => Some(
                redis::cmd("HDEL")
                    .arg(self.key("overrides"))
                    .arg(user.to_lowercase())
                    .clone(),
            ),
            Change::Health {
                backend, draining, ..
            } => Some(if *draining {
                redis::cmd("HSET")
                    .arg(self.key("health"))
                    .arg(backend)
                    .arg("draining")
                    .clone()
            } else {
                redis::cmd("HDEL")
                    .arg(self.key("health"))
                    .arg(backend)
                    .clone()
            }),
            Change::Kick { .. } => None,
        };
        let envelope = Envelope {
            origin: self.inner.id.clone(),
            change: change.clone(),
        };
        let message = serde_json::to_string(&envelope).ok()?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(write) = write {
            pipe.add_command(write).ignore();
        }
        pipe.cmd("PUBLISH").arg(self.key("events")).arg(message);
        let (proxies,): (usize,) = self.query(pipe).await?;
        Some(proxies)
    }

    /// Shares what was changed while the link was down, oldest first; what fails stays.
    async fn flush_pending(&self) {
        let pending = std::mem::take(&mut *lock(&self.inner.pending));
        let mut left = Vec::new();
        let mut shared = 0usize;
        for change in pending {
            if left.is_empty() && self.share(&change).await.is_some() {
                shared += 1;
            } else {
                left.push(change);
            }
        }
        if shared > 0 {
            info!(
                changes = shared,
                "fleet: shared the changes made while Redis was away"
            );
        }
        if !left.is_empty() {
            let mut pending = lock(&self.inner.pending);
            left.append(&mut pending);
            *pending = left;
        }
    }

    /// Changes not yet shared (for `/sessions` and tests).
    pub fn pending(&self) -> usize {
        lock(&self.inner.pending).len()
    }
}

/// A request the link can run: one command or a pipeline.
trait Request: Send {
    fn run(
        self,
        conn: &mut MultiplexedConnection,
    ) -> impl std::future::Future<Output = redis::RedisResult<redis::Value>> + Send;
}

impl Request for redis::Cmd {
    async fn run(self, conn: &mut MultiplexedConnection) -> redis::RedisResult<redis::Value> {
        self.query_async(conn).await
    }
}

impl Request for redis::Pipeline {
    async fn run(self, conn: &mut MultiplexedConnection) -> redis::RedisResult<redis::Value> {
        self.query_async(conn).await
    }
}

/// Checks `[fleet]` without connecting (`imapproxy check` and start-up).
pub fn validate(cfg: &FleetConfig) -> Result<(), String> {
    if cfg.timeout.is_zero() || cfg.publish_interval.is_zero() {
        return Err("[fleet] timeout and publish_interval must be positive".into());
    }
    if cfg
        .key_prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("[fleet] key_prefix may not contain white space".into());
    }
    Source::from_config(cfg).map(drop)
}

/// `host-pid`: unique enough among the proxies of one fleet, and readable.
fn default_proxy_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "proxy".into());
    format!("{host}-{}", std::process::id())
}

/// Applies a change on this proxy: the same whether an operator asked here or another proxy
/// announced it. Returns (sessions kicked, sessions moving, cached sessions closed).
pub fn apply_locally(
    proxy: &Proxy,
    overrides_file: Option<&std::path::Path>,
    change: &Change,
) -> (usize, usize, usize) {
    match change {
        Change::Move {
            user,
            backend,
            kick,
        } => {
            proxy.overrides().set(user, BackendId::new(backend));
            save(proxy, overrides_file);
            crate::actions::move_sessions(proxy, user, *kick)
        }
        Change::Unmove { user } => {
            proxy.overrides().remove(user);
            save(proxy, overrides_file);
            (0, 0, 0)
        }
        Change::Kick { user } => (proxy.sessions().kick_user(user), 0, 0),
        Change::Health {
            backend,
            draining,
            migrate,
        } => match crate::actions::set_drain(proxy, backend, *draining, *migrate) {
            Ok((_, migrating)) => (0, migrating, 0),
            Err(_) => (0, 0, 0),
        },
    }
}

fn save(proxy: &Proxy, overrides_file: Option<&std::path::Path>) {
    if let Some(path) = overrides_file
        && let Err(e) = crate::admin::save_overrides(path, proxy.overrides())
    {
        warn!("fleet: {e}");
    }
}
