//! Failed-login counters shared through Redis ([`SharedFailures`] for the session crate's
//! throttle).
//!
//! Keys, all expiring: `{prefix}fail:u:{user}|{ip}` and `{prefix}fail:ip:{ip}` count failures
//! in the window (the expiry is set by the first failure, as the local window starts at the
//! first failure); when one reaches its limit it is replaced by `…:block`, which lives for
//! the block duration. Counting and blocking run as one Lua script, so two proxies counting
//! at once cannot both miss the limit.

use std::net::IpAddr;
use std::time::Duration;

use imapproxy_session::{SharedCounts, SharedFailures, ThrottleSettings};

use super::{Fleet, millis};

/// KEYS: pair count, pair block, address count, address block. ARGV: window ms, block ms,
/// pair limit, address limit.
const FAIL: &str = r"
local function bump(count, block, limit)
  local n = redis.call('INCR', count)
  if n == 1 then redis.call('PEXPIRE', count, ARGV[1]) end
  if n >= tonumber(limit) then
    redis.call('SET', block, '1', 'PX', ARGV[2])
    redis.call('DEL', count)
  end
end
bump(KEYS[1], KEYS[2], ARGV[3])
bump(KEYS[3], KEYS[4], ARGV[4])
return 1
";

/// KEYS: pair count, pair block, address count. Clears the pair and takes its failures off
/// the address, as the local throttle forgives a user's own typos.
const FORGIVE: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('DEL', KEYS[1], KEYS[2])
if n > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  if redis.call('DECRBY', KEYS[3], n) <= 0 then redis.call('DEL', KEYS[3]) end
end
return n
";

/// The fleet's failure counters.
#[derive(Clone)]
pub struct RedisFailures {
    fleet: Fleet,
}

impl std::fmt::Debug for RedisFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFailures")
            .field("proxy", &self.fleet.id())
            .finish()
    }
}

impl RedisFailures {
    /// Counters on `fleet`'s link.
    pub fn new(fleet: Fleet) -> Self {
        Self { fleet }
    }

    fn keys(&self, user: &str, ip: IpAddr) -> [String; 4] {
        let pair = self.fleet.key(&format!("fail:u:{user}|{ip}"));
        let addr = self.fleet.key(&format!("fail:ip:{ip}"));
        [
            pair.clone(),
            format!("{pair}:block"),
            addr.clone(),
            format!("{addr}:block"),
        ]
    }

    /// Runs a script in the background: a login never waits for a count to be written.
    fn spawn_script(&self, script: &'static str, keys: Vec<String>, args: Vec<u64>) {
        if !self.fleet.connected() {
            return;
        }
        let fleet = self.fleet.clone();
        tokio::spawn(async move {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
            let _: Option<redis::Value> = fleet.query(cmd).await;
        });
    }
}

/// PTTL's answer as time left: -2 (no key) and -1 (no expiry, never written so) are none.
fn left(pttl: i64) -> Option<Duration> {
    u64::try_from(pttl)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

#[async_trait::async_trait]
impl SharedFailures for RedisFailures {
    async fn lookup(&self, user: &str, ip: IpAddr) -> Option<SharedCounts> {
        if !self.fleet.connected() {
            return None;
        }
        let [pair, pair_block, addr, addr_block] = self.keys(user, ip);
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(pair)
            .cmd("GET")
            .arg(addr)
            .cmd("PTTL")
            .arg(pair_block)
            .cmd("PTTL")
            .arg(addr_block);
        let (user_failures, ip_failures, user_blocked, ip_blocked): (
            Option<u32>,
            Option<u32>,
            i64,
            i64,
        ) = self.fleet.query(pipe).await?;
        Some(SharedCounts::new(
            user_failures.unwrap_or(0),
            ip_failures.unwrap_or(0),
            left(user_blocked),
            left(ip_blocked),
        ))
    }

    fn failed(&self, user: &str, ip: IpAddr, settings: &ThrottleSettings) {
        let args = vec![
            millis(settings.failure_window),
            millis(settings.block_duration),
            u64::from(settings.max_failures.max(1)),
            u64::from(settings.max_failures_per_ip.max(1)),
        ];
        self.spawn_script(FAIL, self.keys(user, ip).to_vec(), args);
    }

    fn succeeded(&self, user: &str, ip: IpAddr) {
        let [pair, pair_block, addr, _] = self.keys(user, ip);
        self.spawn_script(FORGIVE, vec![pair, pair_block, addr], Vec::new());
    }
}
