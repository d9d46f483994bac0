//! The fleet's channel and its session registry: following the events other proxies
//! announce, reading the shared state back after every new link, and publishing this proxy's
//! sessions for `GET /sessions`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use imapproxy_route::Health;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Change, Envelope, Fleet, HEARTBEAT, apply_locally, lock, millis};

/// Follows the events channel while the link is up; on every new subscription shares the
/// changes made while away, then reads the shared overrides and drains back (announcements
/// sent meanwhile were missed). Signals `subscribed` after each resynchronisation.
pub(super) async fn subscribe(fleet: Fleet, subscribed: Arc<Notify>, stop: CancellationToken) {
    loop {
        if !fleet.connected() {
            tokio::select! {
                () = fleet.inner.relinked.notified() => {}
                () = tokio::time::sleep(HEARTBEAT) => {}
                () = stop.cancelled() => return,
            }
            continue;
        }
        let generation = fleet.inner.generation.load(Ordering::Acquire);
        let client = lock(&fleet.inner.client).clone();
        let Some(client) = client else {
            tokio::time::sleep(HEARTBEAT).await;
            continue;
        };
        let wait = fleet.inner.timeout * 2;
        let mut pubsub = match tokio::time::timeout(wait, client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            _ => {
                debug!("fleet: cannot open the subscription");
                tokio::time::sleep(HEARTBEAT).await;
                continue;
            }
        };
        if !matches!(
            tokio::time::timeout(wait, pubsub.subscribe(fleet.key("events"))).await,
            Ok(Ok(()))
        ) {
            tokio::time::sleep(HEARTBEAT).await;
            continue;
        }
        fleet.flush_pending().await;
        resync(&fleet).await;
        subscribed.notify_one();
        let mut messages = pubsub.into_on_message();
        let mut probe = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(m) => handle(&fleet, &m),
                    None => break,
                },
                // The keeper found the link dead (a silent one never closes this socket).
                _ = probe.tick() => if !fleet.connected()
                    || fleet.inner.generation.load(Ordering::Acquire) != generation
                {
                    break;
                },
                () = stop.cancelled() => return,
            }
        }
        debug!("fleet: subscription ended");
    }
}

fn handle(fleet: &Fleet, message: &redis::Msg) {
    let Ok(payload) = message.get_payload::<String>() else {
        return;
    };
    let envelope: Envelope = match serde_json::from_str(&payload) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "fleet: ignoring a malformed event");
            return;
        }
    };
    if envelope.origin == fleet.inner.id {
        return;
    }
    let (kicked, migrating, forgotten) = apply_locally(
        &fleet.inner.proxy,
        fleet.inner.overrides_file.as_deref(),
        &envelope.change,
    );
    info!(
        origin = %envelope.origin,
        change = ?envelope.change,
        kicked,
        migrating,
        cached_sessions_closed = forgotten,
        "fleet: applied a change from another proxy"
    );
}

/// Redis's state is trusted only if it is the one this proxy last followed: the key `epoch`
/// holds a random value set by whoever first wrote the shared state. Missing (Redis lost its
/// data: restarted without persistence, or a new instance) or different from the one seen
/// before, the proxy first writes its own overrides and drains back, without overwriting what
/// others wrote meanwhile, so nothing is lost; a proxy that has followed no epoch yet (just
/// started) adopts Redis's state as it is.
async fn reseed_if_lost(fleet: &Fleet) -> bool {
    let Some(current): Option<Option<String>> = fleet
        .query(redis::cmd("GET").arg(fleet.key("epoch")).clone())
        .await
    else {
        return false;
    };
    let followed = lock(&fleet.inner.epoch).clone();
    let lost = match (&current, &followed) {
        (Some(now), Some(before)) => now != before,
        (None, _) => true,
        (Some(_), None) => false,
    };
    if lost {
        let proxy = &fleet.inner.proxy;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (user, backend) in proxy.overrides().all() {
            pipe.cmd("HSETNX")
                .arg(fleet.key("overrides"))
                .arg(user)
                .arg(backend.to_string())
                .ignore();
        }
        let upstreams = proxy.upstreams();
        for (b, s) in upstreams.registry.iter() {
            if s.health() == Health::Draining {
                pipe.cmd("HSETNX")
                    .arg(fleet.key("health"))
                    .arg(b.id.to_string())
                    .arg("draining")
                    .ignore();
            }
        }
        pipe.cmd("SET")
            .arg(fleet.key("epoch"))
            .arg(new_epoch())
            .arg("NX")
            .ignore();
        if fleet.query::<()>(pipe).await.is_none() {
            return false;
        }
        info!("fleet: Redis had lost the shared state; wrote this proxy's back");
    }
    let Some(Some(epoch)): Option<Option<String>> = fleet
        .query(redis::cmd("GET").arg(fleet.key("epoch")).clone())
        .await
    else {
        return false;
    };
    *lock(&fleet.inner.epoch) = Some(epoch);
    true
}

fn new_epoch() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // Unique enough without randomness: the time and this process.
        return format!("{:?}-{}", SystemTime::now(), std::process::id());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes this proxy's overrides and drains what Redis holds (after writing them back if Redis
/// lost them: see [`reseed_if_lost`]).
async fn resync(fleet: &Fleet) {
    if !reseed_if_lost(fleet).await {
        return;
    }
    let proxy = &fleet.inner.proxy;
    let file = fleet.inner.overrides_file.as_deref();
    let shared: Option<HashMap<String, String>> = fleet
        .query(redis::cmd("HGETALL").arg(fleet.key("overrides")).clone())
        .await;
    let mut changed = 0usize;
    if let Some(shared) = &shared {
        let local: HashMap<String, String> = proxy
            .overrides()
            .all()
            .into_iter()
            .map(|(u, b)| (u, b.to_string()))
            .collect();
        for (user, backend) in shared {
            if local.get(user) != Some(backend) {
                let change = Change::Move {
                    user: user.clone(),
                    backend: backend.clone(),
                    kick: false,
                };
                apply_locally(proxy, file, &change);
                changed += 1;
            }
        }
        for user in local.keys().filter(|u| !shared.contains_key(*u)) {
            apply_locally(proxy, file, &Change::Unmove { user: user.clone() });
            changed += 1;
        }
    }
    let drains: Option<HashMap<String, String>> = fleet
        .query(redis::cmd("HGETALL").arg(fleet.key("health")).clone())
        .await;
    if let Some(drains) = &drains {
        let upstreams = proxy.upstreams();
        for (b, s) in upstreams.registry.iter() {
            let name = b.id.to_string();
            let draining = drains.contains_key(&name);
            if draining != (s.health() == Health::Draining) {
                let change = Change::Health {
                    backend: name,
                    draining,
                    migrate: false,
                };
                apply_locally(proxy, file, &change);
                changed += 1;
            }
        }
    }
    if shared.is_some() && drains.is_some() {
        info!(changed, "fleet: in step with the shared state");
    }
}

/// Writes this proxy's session summary every `publish_interval`, kept for three; removes it
/// at shutdown.
pub(super) async fn publish_sessions(fleet: Fleet, stop: CancellationToken) {
    let interval = fleet.inner.publish_interval;
    let own = fleet.key(&format!("sessions:{}", fleet.id()));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => {
                let _: Option<i64> = fleet.query(redis::cmd("DEL").arg(&own).clone()).await;
                return;
            }
        }
        if !fleet.connected() {
            continue;
        }
        let summary = serde_json::json!({
            "proxy": fleet.id(),
            "at": unix(SystemTime::now()),
            "sessions": local_sessions(&fleet),
        });
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&own)
            .arg(summary.to_string())
            .arg("PX")
            .arg(millis(interval * 3))
            .ignore()
            .cmd("SADD")
            .arg(fleet.key("proxies"))
            .arg(fleet.id())
            .ignore();
        let _: Option<()> = fleet.query(pipe).await;
    }
}

fn local_sessions(fleet: &Fleet) -> Vec<serde_json::Value> {
    let now = SystemTime::now();
    fleet
        .inner
        .proxy
        .sessions()
        .list()
        .iter()
        .map(|s| crate::admin::session_json(s, now))
        .collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Fleet {
    /// Adds the other proxies' sessions to `GET /sessions`'s answer (`view`, as built for
    /// this proxy alone): each session names its proxy, and `fleet` says which proxies
    /// answered and whether the link is up. Without Redis the view stays local.
    pub async fn annotate_sessions(&self, view: &mut serde_json::Value) {
        let now = unix(SystemTime::now());
        if let Some(list) = view
            .get_mut("sessions")
            .and_then(serde_json::Value::as_array_mut)
        {
            for s in list.iter_mut() {
                s["proxy"] = self.id().into();
            }
        }
        let mut proxies = vec![self.id().to_owned()];
        let mut others = Vec::new();
        for (proxy, summary) in self.other_summaries().await {
            proxies.push(proxy.clone());
            let sessions = summary
                .get("sessions")
                .and_then(serde_json::Value::as_array)
                .cloned()
                .unwrap_or_default();
            for mut s in sessions {
                let since = s.get("since").and_then(serde_json::Value::as_u64);
                s["seconds"] = since.map_or(0, |t| now.saturating_sub(t)).into();
                s["proxy"] = proxy.clone().into();
                others.push(s);
            }
        }
        if let Some(list) = view
            .get_mut("sessions")
            .and_then(serde_json::Value::as_array_mut)
        {
            list.extend(others);
            let count = list.len();
            view["count"] = count.into();
        }
        view["fleet"] = serde_json::json!({
            "proxy": self.id(),
            "connected": self.connected(),
            "proxies": proxies,
            "pending_changes": self.pending(),
        });
    }

    /// The other proxies' latest summaries; proxies whose summary expired are dropped from
    /// the set.
    async fn other_summaries(&self) -> Vec<(String, serde_json::Value)> {
        let Some(ids): Option<Vec<String>> = self
            .query(redis::cmd("SMEMBERS").arg(self.key("proxies")).clone())
            .await
        else {
            return Vec::new();
        };
        let ids: Vec<String> = ids.into_iter().filter(|id| id != self.id()).collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.key(&format!("sessions:{id}")))
            .collect();
        let Some(texts): Option<Vec<Option<String>>> =
            self.query(redis::cmd("MGET").arg(&keys).clone()).await
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (id, text) in ids.into_iter().zip(texts) {
            match text.and_then(|t| serde_json::from_str(&t).ok()) {
                Some(summary) => out.push((id, summary)),
                None => {
                    let _: Option<i64> = self
                        .query(redis::cmd("SREM").arg(self.key("proxies")).arg(&id).clone())
                        .await;
                }
            }
        }
        out
    }
}
