//! The admin HTTP endpoint on `[admin].addr`: health, Prometheus metrics, backends (JSON),
//! drain/undrain, and a status page for people.
//!
//! A deliberately small HTTP/1.1 server: one request per connection, bounded sizes and
//! time, no keep-alive. It listens on loopback by default; `[admin].token` requires
//! `Authorization: Bearer <token>` everywhere but `/healthz`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imapproxy_route::Health;
use imapproxy_session::Proxy;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Bound on reading a request and writing its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoint reads and changes.
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub metrics: PrometheusHandle,
    pub token: Option<String>,
    pub sessions: TaskTracker,
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
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
        let state = Arc::clone(&state);
        tokio::spawn(async move {
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
}

async fn read_request(tcp: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            break;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8(buf).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let authorization = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| v.trim().to_owned())
    });
    Some(Request {
        method,
        path,
        authorization,
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
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
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
        ("GET", ["metrics"]) => Response::new(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        ("GET", ["backends"]) => Response::json("200 OK", backends_json(state)),
        ("POST", ["backends", name, action @ ("drain" | "undrain")]) => {
            let health = if *action == "drain" {
                Health::Draining
            } else {
                Health::Up
            };
            match state.proxy.upstreams().registry.set_health(*name, health) {
                Ok(previous) => {
                    info!(backend = %name, from = %previous, to = %health, "backend health set by admin");
                    Response::json(
                        "200 OK",
                        serde_json::json!({ "name": name, "health": health.to_string() }),
                    )
                }
                Err(_) => Response::error("404 Not Found", "no such backend"),
            }
        }
        (_, ["" | "metrics" | "backends"]) | (_, ["backends", _, "drain" | "undrain"]) => {
            Response::error("405 Method Not Allowed", "method not allowed")
        }
        _ => Response::error("404 Not Found", "not found"),
    }
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
}
