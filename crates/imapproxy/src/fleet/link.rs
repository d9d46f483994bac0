//! The link to Redis: where it is (a URL, or a master found through Sentinel), opening a
//! connection with bounded time, and the keeper that probes it and reconnects.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, IntoConnectionInfo};
use tokio_util::sync::CancellationToken;

use super::{Fleet, HEARTBEAT};
use crate::config::FleetConfig;

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where the Redis master is.
pub(super) enum Source {
    Direct(redis::Client),
    /// Asked again on every connection, so a Sentinel failover is followed.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Source {
    /// `None` when fleet mode is off (no `redis_url`, no `sentinels`).
    pub(super) fn from_config(cfg: &FleetConfig) -> Result<Option<Self>, String> {
        let url = cfg.redis_url.as_ref().map(|s| s.expose().to_owned());
        if cfg.sentinels.is_empty() {
            let Some(url) = url else {
                return Ok(None);
            };
            let client = redis::Client::open(url.as_str())
                .map_err(|e| format!("[fleet] redis_url: {}", redacted(&e)))?;
            return Ok(Some(Self::Direct(client)));
        }
        let mut node = SentinelNodeConnectionInfo::default();
        if let Some(url) = url {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| format!("[fleet] redis_url: {}", redacted(&e)))?;
            node = node.set_redis_connection_info(info.redis_settings().clone());
        }
        let client = SentinelClient::build(
            cfg.sentinels.clone(),
            cfg.sentinel_master.clone(),
            Some(node),
            SentinelServerType::Master,
        )
        .map_err(|e| format!("[fleet] sentinels: {}", redacted(&e)))?;
        Ok(Some(Self::Sentinel(tokio::sync::Mutex::new(client))))
    }
}

/// A URL error may quote the URL, password included: say what kind of error it was only.
fn redacted(e: &redis::RedisError) -> String {
    format!("invalid ({:?})", e.kind())
}

/// Opens a command connection, within `timeout` for each step.
pub(super) async fn open(
    source: &Source,
    timeout: Duration,
) -> Result<(redis::Client, MultiplexedConnection), String> {
    let client = match source {
        Source::Direct(client) => client.clone(),
        Source::Sentinel(sentinel) => {
            let mut sentinel = sentinel.lock().await;
            tokio::time::timeout(timeout * 4, sentinel.async_get_client())
                .await
                .map_err(|_| "the sentinels did not answer in time".to_owned())?
                .map_err(|e| format!("no master from the sentinels: {e}"))?
        }
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn = tokio::time::timeout(
        timeout * 2,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| "connecting timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    // A replica (stale Sentinel answer) takes no writes: only a master will do.
    let role: redis::Value =
        tokio::time::timeout(timeout, redis::cmd("ROLE").query_async(&mut conn))
            .await
            .map_err(|_| "ROLE timed out".to_owned())?
            .map_err(|e| e.to_string())?;
    let is_master = match &role {
        redis::Value::Array(items) => matches!(
            items.first(),
            Some(redis::Value::BulkString(b)) if b.as_slice() == b"master"
        ),
        _ => false,
    };
    if !is_master {
        return Err("the server is not a master".into());
    }
    Ok((client, conn))
}

/// Probes the link every heartbeat and reconnects, with backoff, when it is down. (The
/// subscriber follows each new link: it shares the changes made meanwhile and reads the
/// shared state back.)
pub(super) async fn keep(fleet: Fleet, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if fleet.connected() {
            backoff = Duration::from_millis(100);
            let pong: Option<String> = fleet.query(redis::cmd("PING")).await;
            if pong.is_none() && fleet.connected() {
                fleet.broken("no answer to PING");
            }
            tokio::select! {
                () = tokio::time::sleep(HEARTBEAT) => {}
                () = fleet.inner.broken.notified() => {}
                () = stop.cancelled() => return,
            }
        } else {
            if fleet.connect().await {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
