//! What the admin endpoint shows: sessions and backends as JSON, gauges for `/metrics`,
//! and the escaping every page uses.

use std::time::{SystemTime, UNIX_EPOCH};

use imapproxy_route::Health;
use imapproxy_session::SessionInfo;

use super::AdminState;

/// One live session as `GET /sessions` lists it (and fleet mode publishes it): `since` in
/// seconds since the Unix epoch, `seconds` its age at `now`.
pub(crate) fn session_json(s: &SessionInfo, now: SystemTime) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "user": s.user,
        "client": s.client.to_string(),
        "backend": s.backend,
        "since": s.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "seconds": now.duration_since(s.since).map_or(0, |d| d.as_secs()),
    })
}

pub(super) fn sessions_json(state: &AdminState) -> serde_json::Value {
    let now = SystemTime::now();
    let sessions: Vec<serde_json::Value> = state
        .proxy
        .sessions()
        .list()
        .iter()
        .map(|s| session_json(s, now))
        .collect();
    let overrides: serde_json::Map<String, serde_json::Value> = state
        .proxy
        .overrides()
        .all()
        .into_iter()
        .map(|(u, b)| (u, serde_json::Value::String(b.to_string())))
        .collect();
    serde_json::json!({
        "count": sessions.len(),
        "sessions": sessions,
        "overrides": overrides,
    })
}

/// Gauges read at scrape time: backend health and sessions, pool occupancy.
pub(super) fn record_gauges(state: &AdminState) {
    for (b, s) in state.proxy.upstreams().registry.iter() {
        let name = b.id.to_string();
        let health = s.health();
        for h in [Health::Up, Health::Down, Health::Draining] {
            metrics::gauge!("imapproxy_backend_health", "backend" => name.clone(), "state" => h.to_string())
                .set(if h == health { 1.0 } else { 0.0 });
        }
        metrics::gauge!("imapproxy_backend_sessions", "backend" => name).set(s.active() as f64);
    }
    let pool = state.proxy.pool().status();
    metrics::gauge!("imapproxy_pool_idle_sessions").set(pool.idle_sessions as f64);
    metrics::gauge!("imapproxy_pool_slots_in_use").set(pool.slots_in_use as f64);
    metrics::gauge!("imapproxy_pool_waiting").set(pool.waiting as f64);
}

pub(super) fn backends_json(state: &AdminState) -> serde_json::Value {
    let pool = state.proxy.pool().status();
    let backends: Vec<serde_json::Value> = state
        .proxy
        .upstreams()
        .registry
        .iter()
        .map(|(b, s)| {
            let warm = pool
                .warm
                .iter()
                .find(|(name, _)| name == b.id.as_str())
                .map_or(0, |(_, n)| *n);
            serde_json::json!({
                "name": b.id.as_str(),
                "addr": b.addr,
                "health": s.health().to_string(),
                "sessions": s.active(),
                "weight": b.weight,
                "max_connections": b.max_connections,
                "warm_connections": warm,
            })
        })
        .collect();
    serde_json::json!({
        "backends": backends,
        "client_sessions": state.sessions.len(),
        "pool": {
            "idle_sessions": pool.idle_sessions,
            "slots_in_use": pool.slots_in_use,
            "waiting": pool.waiting,
            "hits": pool.hits,
            "misses": pool.misses,
            "waits": pool.waits,
            "timeouts": pool.timeouts,
        },
    })
}

/// Escapes text for HTML, in element content and in quoted attribute values alike.
pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
