//! The admin HTTP endpoint on `[admin].addr`: health, Prometheus metrics, backends (JSON),
//! drain/undrain, live sessions (list, kick), user moves, the last five minutes of metrics
//! (`/stats`), and the operator console for people at `/` (see `console`).
//!
//! A deliberately small HTTP/1.1 server: one request per connection, bounded sizes and
//! time, no keep-alive. It listens on loopback by default; `[admin].token` requires
//! `Authorization: Bearer <token>`, or a console login (a cookie, see `auth`), everywhere but
//! `/healthz` and `/login`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use imapproxy_route::Health;
use imapproxy_session::{Proxy, Throttle, ThrottleSettings, Verdict};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Secret;

mod auth;
mod console;
mod history;
mod http;
mod overrides;
mod scrape;
#[cfg(test)]
mod tests;
mod views;

pub use overrides::{load_overrides, save_overrides};
pub(crate) use views::session_json;

use auth::{Auth, Caller};
use console::{Page, console_page, login_page};
use history::History;
use http::{Request, Response, body_param, param, percent_decode, read_request};
use overrides::{move_user, save};
use views::{backends_json, record_gauges, sessions_json};

/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 32;
/// Bound on reading a request and writing its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoint reads and changes.
pub struct AdminState {
    pub proxy: Arc<Proxy>,
    pub metrics: PrometheusHandle,
    pub token: Option<Secret>,
    /// Host names accepted besides IP literals and `localhost` (`[admin].allowed_hosts`).
    pub allowed_hosts: Vec<String>,
    pub sessions: TaskTracker,
    /// Where user overrides are saved (`[admin].overrides_file`).
    pub overrides_file: Option<PathBuf>,
    /// Fleet mode: moves, drains and kicks reach every proxy; `/sessions` lists them all.
    pub fleet: Option<crate::fleet::Fleet>,
}

impl AdminState {
    /// The Prometheus text of `GET /metrics`: the exporter's, then the per-command latency
    /// histograms the sessions library keeps itself (process-wide, so those of `proxy`).
    fn render_metrics(&self) -> String {
        let mut text = self.metrics.render();
        imapproxy_session::render_command_histograms(&mut text);
        text
    }
}

/// What the endpoint keeps for itself: the metrics history and the keys of console logins.
/// Made by [`serve`], so each process has its own keys.
struct Console {
    history: Arc<History>,
    auth: Auth,
    /// Counts wrong tokens (bearer or login form) per client address: a guesser is refused
    /// with 429 after [`GUESSES`] within [`GUESS_WINDOW`], for [`GUESS_BLOCK`].
    guard: Throttle,
}

/// Wrong tokens from one address before it is refused (an operator's typos fit well below).
const GUESSES: u32 = 10;
const GUESS_WINDOW: Duration = Duration::from_secs(5 * 60);
const GUESS_BLOCK: Duration = Duration::from_secs(15 * 60);
/// The throttle's user name for the admin token.
const GUARD_USER: &str = "admin-token";

fn token_guard() -> Throttle {
    Throttle::new(ThrottleSettings {
        max_failures: GUESSES,
        max_failures_per_ip: GUESSES,
        failure_window: GUESS_WINDOW,
        block_duration: GUESS_BLOCK,
        // Answered at once: the block, not a delay, is the defence here.
        free_failures: GUESSES,
        trusted: imapproxy_session::TrustedNetworks::default(),
        ..ThrottleSettings::default()
    })
}

/// Serves until `stop` is cancelled; samples the metrics for `/stats` meanwhile.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let Some(auth) = Auth::generate() else {
        // Practically unreachable on Linux (getrandom); refusing beats forgeable logins.
        error!("admin endpoint not started: no system randomness for its session keys");
        return;
    };
    let console = Arc::new(Console {
        history: Arc::new(History::new(history::CAPACITY)),
        auth,
        guard: token_guard(),
    });
    tokio::spawn({
        let (state, history, stop) = (
            Arc::clone(&state),
            Arc::clone(&console.history),
            stop.clone(),
        );
        async move {
            // The exporter's text alone: the console charts nothing per command.
            let read = || (state.metrics.render(), state.sessions.len());
            history::run(history::INTERVAL, read, &history, stop).await;
        }
    });
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
        let (state, console) = (Arc::clone(&state), Arc::clone(&console));
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(IO_TIMEOUT, handle(tcp, peer, &state, &console))
                .await
                .is_err()
            {
                warn!(%peer, "admin request timed out");
            }
        });
    }
}

async fn handle(mut tcp: TcpStream, peer: SocketAddr, state: &AdminState, console: &Console) {
    let response = match read_request(&mut tcp).await {
        Some(req) => route(&req, state, console, peer.ip()).await,
        None => Response::error("400 Bad Request", "malformed request"),
    };
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(response.body.as_bytes());
    if tcp.write_all(&out).await.is_err() {
        warn!(%peer, "admin response not delivered");
    }
    let _ = tcp.shutdown().await;
}

/// Compares a presented token with the configured one in time that depends on neither's
/// content nor on the configured token's length: both are hashed with a per-process key first
/// (HMAC-SHA256), then the fixed-size digests are compared in constant time.
fn same(a: &[u8], b: &[u8]) -> bool {
    static KEY: std::sync::OnceLock<ring::hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"imapproxy-admin"))
    });
    let (da, db) = (ring::hmac::sign(key, a), ring::hmac::sign(key, b));
    imapproxy_codec::constant_time_eq(da.as_ref(), db.as_ref())
}

/// What a web page in an operator's browser cannot fake: the `Host` it reached us under
/// (DNS rebinding gives its own name) must be an address, `localhost` or an allowed name,
/// and a state-changing request's `Origin`, when the browser sends one, must be this
/// endpoint itself (a cross-site form posting to `/backends/x/drain` carries the site's).
fn same_origin(req: &Request, allowed_hosts: &[String]) -> Result<(), &'static str> {
    let host = req.host.as_deref().ok_or("a Host header is required")?;
    let name = host_name(host).ok_or("malformed Host header")?;
    let known = name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(name));
    if !known {
        return Err("unknown Host (add it to [admin] allowed_hosts)");
    }
    if matches!(req.method.as_str(), "GET" | "HEAD") {
        return Ok(());
    }
    match req.origin.as_deref() {
        None => Ok(()),
        Some(origin) => {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .ok_or("cross-origin request")?;
            if authority.eq_ignore_ascii_case(host) {
                Ok(())
            } else {
                Err("cross-origin request")
            }
        }
    }
}

/// The name in a `Host` value: `name`, `name:port`, `[v6]` or `[v6]:port`.
fn host_name(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(is_port)).then_some(v6);
    }
    match host.split_once(':') {
        Some((name, port)) if is_port(port) && !name.is_empty() => Some(name),
        Some(_) => None,
        None => (!host.is_empty()).then_some(host),
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `GET /sessions`: this proxy's sessions and, in fleet mode, every proxy's.
async fn sessions_view(state: &AdminState) -> serde_json::Value {
    let mut view = sessions_json(state);
    if let Some(fleet) = &state.fleet {
        fleet.annotate_sessions(&mut view).await;
    }
    view
}

/// Who sent `req`, or the answer for a request that proved nothing (the login form, for a
/// browser opening the console) or that changes state without the anti-CSRF value it needs.
fn admit(
    req: &Request,
    path: &str,
    token: Option<&str>,
    console: &Console,
    peer: IpAddr,
) -> Result<Caller, Response> {
    let auth = &console.auth;
    let Some(caller) = auth.authenticate(req, token, auth::unix_now()) else {
        if req.authorization.is_some() {
            console.guard.record_failure(peer, GUARD_USER);
        }
        return Err(if (req.method.as_str(), path) == ("GET", "/") {
            login_page(auth, None)
        } else {
            Response::error("401 Unauthorized", "a bearer token is required")
        });
    };
    if !matches!(req.method.as_str(), "GET" | "HEAD") && !auth.csrf_ok(&caller, req) {
        warn!(host = ?req.host, "admin request refused: no valid X-Imapproxy-Csrf header");
        return Err(Response::error(
            "403 Forbidden",
            "this request needs the console's X-Imapproxy-Csrf header",
        ));
    }
    Ok(caller)
}

async fn route(req: &Request, state: &AdminState, console: &Console, peer: IpAddr) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    if path == "/healthz" {
        return Response::new("200 OK", "text/plain; charset=utf-8", "ok\n");
    }
    if let Err(why) = same_origin(req, &state.allowed_hosts) {
        warn!(host = ?req.host, origin = ?req.origin, "admin request refused: {why}");
        return Response::error("403 Forbidden", why);
    }
    if console.guard.check(peer, GUARD_USER) != Verdict::Allow {
        warn!(%peer, "admin request refused: too many wrong tokens from this address");
        return Response::error(
            "429 Too Many Requests",
            "too many wrong tokens from this address; try again later",
        );
    }
    let token = state.token.as_ref().map(Secret::expose);
    match (req.method.as_str(), path) {
        ("POST", "/login") => {
            return auth::login(req, token, &console.auth, || {
                console.guard.record_failure(peer, GUARD_USER);
            });
        }
        ("POST", "/logout") => return auth::logout(),
        _ => {}
    }
    let caller = match admit(req, path, token, console, peer) {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", [""]) => {
            let query = req.path.split_once('?').map_or("", |(_, q)| q);
            let page = Page {
                csrf: &console.auth.csrf_token(&caller),
                logged_in: matches!(caller, Caller::Browser(_)),
                user: &param(query, "user").unwrap_or_default(),
            };
            console_page(state, &sessions_view(state).await, &page, &console.auth)
        }
        ("GET", ["stats"]) => Response::json("200 OK", console.history.to_json()),
        ("GET", ["metrics"]) => {
            record_gauges(state);
            Response::new(
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                state.render_metrics(),
            )
        }
        ("GET", ["backends"]) => Response::json("200 OK", backends_json(state)),
        ("POST", ["backends", name, action @ ("drain" | "undrain")]) => {
            let draining = *action == "drain";
            let health = if draining {
                Health::Draining
            } else {
                Health::Up
            };
            let query = req.path.split_once('?').map_or("", |(_, q)| q);
            let migrate = draining && param(query, "migrate").as_deref() == Some("true");
            match crate::actions::set_drain(&state.proxy, name, draining, migrate) {
                Ok((previous, migrating)) => {
                    info!(backend = %name, from = %previous, to = %health, migrating, "backend health set by admin");
                    let mut answer = serde_json::json!({
                        "name": name,
                        "health": health.to_string(),
                        "migrating": migrating,
                    });
                    if let Some(fleet) = &state.fleet {
                        let change = crate::fleet::Change::Health {
                            backend: (*name).to_owned(),
                            draining,
                            migrate,
                        };
                        answer["fleet"] = fleet.change(change).await.json();
                    }
                    Response::json("200 OK", answer)
                }
                Err(_) => Response::error("404 Not Found", "no such backend"),
            }
        }
        ("GET", ["sessions"]) => Response::json("200 OK", sessions_view(state).await),
        ("POST", ["users", user, "kick"]) => {
            let user = percent_decode(user);
            let kicked = state.proxy.sessions().kick_user(&user);
            info!(%user, kicked, "user's sessions ended by admin");
            let mut answer = serde_json::json!({ "user": user.to_lowercase(), "kicked": kicked });
            if let Some(fleet) = &state.fleet {
                let change = crate::fleet::Change::Kick { user: user.clone() };
                answer["fleet"] = fleet.change(change).await.json();
            }
            Response::json("200 OK", answer)
        }
        ("POST", ["users", user, "move"]) => {
            let user = percent_decode(user);
            let query = req.path.split_once('?').map_or("", |(_, q)| q);
            let kick = param(query, "kick").as_deref() == Some("true");
            match param(query, "backend").or_else(|| body_param(&req.body, "backend")) {
                Some(backend) => move_user(state, &user, &backend, kick).await,
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
            let mut answer = serde_json::json!({
                "user": user.to_lowercase(),
                "removed": removed.map(|b| b.to_string()),
            });
            if let Some(fleet) = &state.fleet {
                let change = crate::fleet::Change::Unmove { user: user.clone() };
                answer["fleet"] = fleet.change(change).await.json();
            }
            Response::json("200 OK", answer)
        }
        (_, ["" | "metrics" | "backends" | "sessions" | "stats"])
        | (_, ["backends", _, "drain" | "undrain"])
        | (_, ["users", _, "kick" | "move"]) => {
            Response::error("405 Method Not Allowed", "method not allowed")
        }
        _ => Response::error("404 Not Found", "not found"),
    }
}
