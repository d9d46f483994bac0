//! `[pool] max_per_user_fleet`: a user's backend sessions counted across the fleet, as a
//! [`SharedUserCap`] for the pool.
//!
//! Each user has a sorted set `{prefix}places:{user}` whose members are the places held
//! (`{proxy_id}:{n}`), scored by when they expire by Redis's own clock (`TIME`, so the
//! proxies' clocks do not matter). Taking a place drops the expired ones, counts the rest and
//! adds one if there is room, all in one Lua script. A proxy renews the places it holds every
//! [`RENEW`] (re-adding them, so they survive a Redis restart) and removes a place when its
//! backend session ends; the places of a proxy that died expire after [`LEASE`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imapproxy_pool::{Acquire, SharedUserCap};
use tokio_util::sync::CancellationToken;

use super::{Fleet, lock, millis};

/// How long a place lives without renewal.
const LEASE: Duration = Duration::from_secs(30);
/// How often held places are renewed.
const RENEW: Duration = Duration::from_secs(10);

/// KEYS: the user's set. ARGV: lease ms, cap, member. 1: taken, 0: full.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
";

/// KEYS: sets; ARGV: lease ms, then one member per key.
const RENEW_ALL: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('PEXPIRE', key, tonumber(ARGV[1]) * 2)
end
return #KEYS
";

/// The fleet-wide per-user cap.
#[derive(Clone)]
pub struct RedisUserCap {
    inner: Arc<CapInner>,
}

struct CapInner {
    fleet: Fleet,
    cap: u32,
    next: AtomicU64,
    /// Places held by this proxy: member → set key.
    held: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for RedisUserCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUserCap")
            .field("cap", &self.inner.cap)
            .field("held", &lock(&self.inner.held).len())
            .finish()
    }
}

impl RedisUserCap {
    /// `cap` places per user on `fleet`, renewed until `stop`.
    pub fn start(fleet: Fleet, cap: u32, stop: CancellationToken) -> Self {
        let this = Self {
            inner: Arc::new(CapInner {
                fleet,
                cap,
                next: AtomicU64::new(1),
                held: Mutex::new(HashMap::new()),
            }),
        };
        tokio::spawn(this.clone().renew(stop));
        this
    }

    async fn renew(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let held: Vec<(String, String)> = lock(&self.inner.held)
                .iter()
                .map(|(m, k)| (m.clone(), k.clone()))
                .collect();
            if held.is_empty() || !self.inner.fleet.connected() {
                continue;
            }
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(RENEW_ALL).arg(held.len());
            for (_, key) in &held {
                cmd.arg(key);
            }
            cmd.arg(millis(LEASE));
            for (member, _) in &held {
                cmd.arg(member);
            }
            let _: Option<i64> = self.inner.fleet.query(cmd).await;
        }
    }
}

/// A place held; removed from Redis (in the background) when dropped.
struct Place {
    cap: RedisUserCap,
    key: String,
    member: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        lock(&self.cap.inner.held).remove(&self.member);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let fleet = self.cap.inner.fleet.clone();
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(&self.key).arg(&self.member);
        runtime.spawn(async move {
            let _: Option<i64> = fleet.query(cmd).await;
        });
    }
}

#[async_trait::async_trait]
impl SharedUserCap for RedisUserCap {
    async fn acquire(&self, user: &str) -> Acquire {
        let fleet = &self.inner.fleet;
        if !fleet.connected() {
            return Acquire::Unknown;
        }
        let key = fleet.key(&format!("places:{user}"));
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{n}", fleet.id());
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TAKE)
            .arg(1)
            .arg(&key)
            .arg(millis(LEASE))
            .arg(self.inner.cap)
            .arg(&member);
        match fleet.query::<i64>(cmd).await {
            Some(1) => {
                lock(&self.inner.held).insert(member.clone(), key.clone());
                Acquire::Granted(Box::new(Place {
                    cap: self.clone(),
                    key,
                    member,
                }))
            }
            Some(_) => Acquire::Full,
            None => Acquire::Unknown,
        }
    }
}
