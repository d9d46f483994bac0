//! The admin HTTP endpoint on `[admin].addr`: health, Prometheus metrics, backends (JSON),
//! drain/undrain, live sessions (list, kick), user moves, and a status page for people.
//!
//! A deliberately small HTTP/1.1 server: one request per connection, bounded sizes and
//! time, no keep-alive. It listens on loopback by default; `[admin].token` requires
//! `Authorization: Bearer <token>` everywhere but `/healthz`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imapproxy_route::{BackendId, Health};
use imapproxy_session::{Overrides, Proxy};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (`backend=<name>` and the like).
const MAX_BODY: usize = 4 * 1024;
/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 32;
/// Bound on reading a request and writing its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoint reads and changes.
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub metrics: PrometheusHandle,
    pub token: Option<String>,
    pub sessions: TaskTracker,
    /// Where user overrides are saved (`[admin].overrides_file`).
    pub overrides_file: Option<PathBuf>,
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        // Bounded: the request is read before the token is checked, so anyone who can reach
        // the port could otherwise hold descriptors the IMAP listeners need.
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(IO_TIMEOUT, handle(tcp, peer, &state))
                .await
                .is_err()
            {
                warn!(%peer, "admin request timed out");
            }
        });
    }
}

struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

async fn read_request(tcp: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let body_start = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut body = buf.split_off(body_start);
    buf.truncate(body_start.saturating_sub(4));
    let head = String::from_utf8(buf).ok()?;
    let mut first = head.split("\r\n").next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let authorization = header("authorization");
    let length: usize = match header("content-length") {
        Some(v) => v.parse().ok()?,
        None => 0,
    };
    if length > MAX_BODY {
        return None;
    }
    while body.len() < length {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Request {
        method,
        path,
        authorization,
        body: String::from_utf8(body).ok()?,
    })
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn new(status: &'static str, content_type: &'static str, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
        }
    }

    fn json(status: &'static str, value: serde_json::Value) -> Self {
        Self::new(status, "application/json", format!("{value}\n"))
    }

    fn error(status: &'static str, message: &str) -> Self {
        Self::json(status, serde_json::json!({ "error": message }))
    }
}

async fn handle(mut tcp: TcpStream, peer: SocketAddr, state: &AdminState) {
    let response = match read_request(&mut tcp).await {
        Some(req) => route(&req, state),
        None => Response::error("400 Bad Request", "malformed request"),
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(response.body.as_bytes());
    if tcp.write_all(&out).await.is_err() {
        warn!(%peer, "admin response not delivered");
    }
    let _ = tcp.shutdown().await;
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
/// Compares a presented token with the configured one in time that depends on neither's
/// content nor on the configured token's length: both are hashed with a per-process key first
/// (HMAC-SHA256), then the fixed-size digests are compared without early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    static KEY: std::sync::OnceLock<ring::hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"imapproxy-admin"))
    });
    let (da, db) = (ring::hmac::sign(key, a), ring::hmac::sign(key, b));
    da.as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y))
        == 0
}

fn route(req: &Request, state: &AdminState) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    if path == "/healthz" {
        return Response::new("200 OK", "text/plain; charset=utf-8", "ok\n");
    }
    if let Some(token) = &state.token {
        let presented = req
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(presented.as_bytes(), token.as_bytes()) {
            return Response::error("401 Unauthorized", "a bearer token is required");
        }
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", [""]) => Response::new("200 OK", "text/html; charset=utf-8", status_page(state)),
        ("GET", ["metrics"]) => {
            record_gauges(state);
            Response::new(
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics.render(),
            )
        }
        ("GET", ["backends"]) => Response::json("200 OK", backends_json(state)),
        ("POST", ["backends", name, action @ ("drain" | "undrain")]) => {
            let health = if *action == "drain" {
                Health::Draining
            } else {
                Health::Up
            };
            let query = req.path.split_once('?').map_or("", |(_, q)| q);
            let migrate = *action == "drain" && param(query, "migrate").as_deref() == Some("true");
            match state.proxy.upstreams().registry.set_health(*name, health) {
                Ok(previous) => {
                    // With migration the backend's sessions move to others at their next
                    // command boundary (at once when in IDLE); without, they run on.
                    let migrating = if migrate {
                        state.proxy.sessions().migrate_backend(name)
                    } else {
                        0
                    };
                    info!(backend = %name, from = %previous, to = %health, migrating, "backend health set by admin");
                    Response::json(
                        "200 OK",
                        serde_json::json!({
                            "name": name,
                            "health": health.to_string(),
                            "migrating": migrating,
                        }),
                    )
                }
                Err(_) => Response::error("404 Not Found", "no such backend"),
            }
        }
        ("GET", ["sessions"]) => Response::json("200 OK", sessions_json(state)),
        ("POST", ["users", user, "kick"]) => {
            let user = percent_decode(user);
            let kicked = state.proxy.sessions().kick_user(&user);
            info!(%user, kicked, "user's sessions ended by admin");
            Response::json(
                "200 OK",
                serde_json::json!({ "user": user.to_lowercase(), "kicked": kicked }),
            )
        }
        ("POST", ["users", user, "move"]) => {
            let user = percent_decode(user);
            let query = req.path.split_once('?').map_or("", |(_, q)| q);
            let kick = param(query, "kick").as_deref() == Some("true");
            match param(query, "backend").or_else(|| body_param(&req.body, "backend")) {
                Some(backend) => move_user(state, &user, &backend, kick),
                None => Response::error("400 Bad Request", "backend=<name> is required"),
            }
        }
        ("DELETE", ["users", user, "move"]) => {
            let user = percent_decode(user);
            let removed = state.proxy.overrides().remove(&user);
            if let Err(e) = save(state) {
                return Response::error("500 Internal Server Error", &e);
            }
            info!(%user, "user override removed by admin");
            Response::json(
                "200 OK",
                serde_json::json!({
                    "user": user.to_lowercase(),
                    "removed": removed.map(|b| b.to_string()),
                }),
            )
        }
        (_, ["" | "metrics" | "backends" | "sessions"])
        | (_, ["backends", _, "drain" | "undrain"])
        | (_, ["users", _, "kick" | "move"]) => {
            Response::error("405 Method Not Allowed", "method not allowed")
        }
        _ => Response::error("404 Not Found", "not found"),
    }
}

/// Moves `user` to `backend`: records the override (saved when a file is configured), drops
/// the user's cached backend sessions so that no login is handed the old backend, and moves
/// the user's live sessions there under their clients (with `kick`, ends them instead, so
/// that the clients reconnect).
fn move_user(state: &AdminState, user: &str, backend: &str, kick: bool) -> Response {
    let registry = &state.proxy.upstreams().registry;
    let Some((b, _)) = registry.get(backend) else {
        return Response::error("404 Not Found", "no such backend");
    };
    let id: BackendId = b.id.clone();
    let previous = state.proxy.overrides().set(user, id.clone());
    if let Err(e) = save(state) {
        // Not kept in memory either: what the file says is what a restart will do.
        match previous {
            Some(p) => state.proxy.overrides().set(user, p),
            None => state.proxy.overrides().remove(user),
        };
        return Response::error("500 Internal Server Error", &e);
    }
    // Forget first: no cached session of the old backend must survive to greet a reconnect
    // or a moving session.
    let forgotten = state.proxy.pool().forget_user(user);
    let (kicked, migrating) = if kick {
        (state.proxy.sessions().kick_user(user), 0)
    } else {
        (0, state.proxy.sessions().migrate_user(user))
    };
    info!(%user, backend = %id, kicked, migrating, forgotten, "user moved by admin");
    Response::json(
        "200 OK",
        serde_json::json!({
            "user": user.to_lowercase(),
            "backend": id.as_str(),
            "previous": previous.map(|p| p.to_string()),
            "kicked": kicked,
            "migrating": migrating,
            "cached_sessions_closed": forgotten,
        }),
    )
}

/// Writes the overrides to `[admin].overrides_file`, if configured: a temporary file renamed
/// over the old one, so a crash leaves either version, never half of one.
fn save(state: &AdminState) -> Result<(), String> {
    match &state.overrides_file {
        Some(path) => save_overrides(path, state.proxy.overrides()),
        None => Ok(()),
    }
}

fn save_overrides(path: &Path, overrides: &Overrides) -> Result<(), String> {
    let users: serde_json::Map<String, serde_json::Value> = overrides
        .all()
        .into_iter()
        .map(|(u, b)| (u, serde_json::Value::String(b.to_string())))
        .collect();
    let text = format!("{}\n", serde_json::json!({ "users": users }));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot save the overrides to {}: {e}", path.display()))
}

/// Reads the overrides saved in `path` into `overrides`; a missing file is an empty set.
/// Returns how many were read.
pub fn load_overrides(path: &Path, overrides: &Overrides) -> Result<usize, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("invalid overrides file {}: {e}", path.display()))?;
    let users = value
        .get("users")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| {
            format!(
                "invalid overrides file {}: no \"users\" object",
                path.display()
            )
        })?;
    let mut entries = Vec::with_capacity(users.len());
    for (user, backend) in users {
        let backend = backend.as_str().ok_or_else(|| {
            format!(
                "invalid overrides file {}: {user:?} is not mapped to a backend name",
                path.display()
            )
        })?;
        entries.push((user.clone(), BackendId::new(backend)));
    }
    let n = entries.len();
    overrides.replace_all(entries);
    Ok(n)
}

fn sessions_json(state: &AdminState) -> serde_json::Value {
    let now = std::time::SystemTime::now();
    let sessions: Vec<serde_json::Value> = state
        .proxy
        .sessions()
        .list()
        .into_iter()
        .map(|s| {
            let since = s
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            serde_json::json!({
                "id": s.id,
                "user": s.user,
                "client": s.client.to_string(),
                "backend": s.backend,
                "since": since,
                "seconds": now.duration_since(s.since).map_or(0, |d| d.as_secs()),
            })
        })
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

/// `name`'s value in an `application/x-www-form-urlencoded` string.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then(|| percent_decode(&v.replace('+', " ")))
    })
}

/// The body's `name`: a form (`backend=mail2`) or a JSON object (`{"backend":"mail2"}`).
fn body_param(body: &str, name: &str) -> Option<String> {
    let body = body.trim();
    if body.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        return value.get(name)?.as_str().map(str::to_owned);
    }
    param(body, name)
}

/// Decodes `%XX` escapes (RFC 3986 §2.1); malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Gauges read at scrape time: backend health and sessions, pool occupancy.
fn record_gauges(state: &AdminState) {
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

fn backends_json(state: &AdminState) -> serde_json::Value {
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

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A page for people, in the spirit of HAProxy's stats page: no script, refreshes itself.
fn status_page(state: &AdminState) -> String {
    let pool = state.proxy.pool().status();
    let mut rows = String::new();
    for (b, s) in state.proxy.upstreams().registry.iter() {
        let health = s.health().to_string();
        let warm = pool
            .warm
            .iter()
            .find(|(name, _)| name == b.id.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = write!(
            rows,
            "<tr class=\"{h}\"><td>{name}</td><td>{addr}</td><td>{h}</td><td>{sessions}</td>\
             <td>{warm}</td><td>{weight}</td><td>{max}</td></tr>",
            h = esc(&health),
            name = esc(b.id.as_str()),
            addr = esc(&b.addr),
            sessions = s.active(),
            weight = b.weight,
            max = b.max_connections,
        );
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>imapproxy status</title><style>\
         body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #999;padding:.3em .8em;text-align:left}}\
         tr.up td:nth-child(3){{background:#cfc}}tr.down td:nth-child(3){{background:#fcc}}\
         tr.draining td:nth-child(3){{background:#ffc}}</style></head><body>\
         <h1>imapproxy</h1><p>Client sessions: <b id=\"sessions\">{sessions}</b></p>\
         <h2>Backends</h2><table id=\"backends\"><tr><th>name</th><th>address</th><th>health</th>\
         <th>sessions</th><th>warm</th><th>weight</th><th>max connections</th></tr>{rows}</table>\
         <h2>Pool</h2><table id=\"pool\"><tr><th>cached sessions</th><th>slots in use</th>\
         <th>waiting</th><th>hits</th><th>misses</th><th>waits</th><th>timeouts</th></tr>\
         <tr><td>{idle}</td><td>{slots}</td><td>{waiting}</td><td>{hits}</td><td>{misses}</td>\
         <td>{waits}</td><td>{timeouts}</td></tr></table>\
         <p><a href=\"/backends\">/backends</a> · <a href=\"/metrics\">/metrics</a></p></body></html>\n",
        sessions = state.sessions.len(),
        idle = pool.idle_sessions,
        slots = pool.slots_in_use,
        waiting = pool.waiting,
        hits = pool.hits,
        misses = pool.misses,
        waits = pool.waits,
        timeouts = pool.timeouts,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_and_escaping() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn parameters_and_percent_decoding() {
        assert_eq!(percent_decode("a%40b.org"), "a@b.org");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(
            param("x=1&backend=mail2", "backend").as_deref(),
            Some("mail2")
        );
        assert_eq!(param("backend=", "backend"), None);
        assert_eq!(
            body_param("backend=mail1\n", "backend").as_deref(),
            Some("mail1")
        );
        assert_eq!(
            body_param("{\"backend\":\"mail2\"}", "backend").as_deref(),
            Some("mail2")
        );
    }

    #[test]
    fn overrides_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overrides.json");
        let o = Overrides::new();
        assert_eq!(load_overrides(&path, &o).unwrap(), 0, "missing file: none");
        o.set("Alice", BackendId::new("mail2"));
        save_overrides(&path, &o).unwrap();
        let loaded = Overrides::new();
        assert_eq!(load_overrides(&path, &loaded).unwrap(), 1);
        assert_eq!(loaded.get("alice"), Some(BackendId::new("mail2")));
        std::fs::write(&path, "{\"users\": {\"bob\": 3}}").unwrap();
        assert!(load_overrides(&path, &loaded).is_err());
    }
}
