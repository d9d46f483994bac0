//! The operator console at `GET /`, in a real headless Chromium against the real binary in
//! front of Dovecot: the charts draw the proxy's own metrics after real logins; a click on a
//! drain button drains the backend; with a token, the login form, its cookie and the
//! anti-CSRF header that every cookie-authenticated state change needs.
//!
//! Clicks go through `tests/console/drive.py`, which drives Chromium over the DevTools
//! protocol (standard library Python only).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Binary, admin_request, dump_dom, loopback, run_bounded};
use imapproxy_testkit::{Dovecot, TestClient};

const TOKEN: &str = "console-t0ken";

/// The proxy under test, with two backends on the shared Dovecot.
struct Proxy {
    _binary: Binary,
    imap: SocketAddr,
    admin: SocketAddr,
}

impl Proxy {
    fn start(token: Option<&str>) -> Self {
        let [imap, admin] = [(); 2].map(|()| loopback());
        let token = token.map_or(String::new(), |t| format!("token = \"{t}\"\n"));
        let config = format!(
            r#"
[[listeners]]
addr = "{imap}"
tls = "none"
allow_plaintext_auth = true

[[backends]]
name = "mail-alpha"
addr = "{dovecot}"

[[backends]]
name = "mail-beta"
addr = "{dovecot}"

[admin]
addr = "{admin}"
{token}"#,
            dovecot = Dovecot::shared().imap_addr(),
        );
        Self {
            _binary: Binary::start(&config, &[imap, admin]),
            imap,
            admin,
        }
    }

    /// A backend's health, as `GET /backends` reports it.
    fn health(&self, backend: &str, token: Option<&str>) -> String {
        let (code, body) = admin_request(self.admin, "GET", "/backends", token, &[]);
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == backend)
            .map(|b| b["health"].as_str().unwrap().to_owned())
            .unwrap()
    }
}

/// Clicks `backend`'s drain button in Chromium (logging in with `token` when asked);
/// returns what the page said and the row's class.
fn click_drain(admin: SocketAddr, backend: &str, token: Option<&str>) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/drive.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--url", &format!("http://{admin}/"), "--drain", backend])
        .args(["--timeout", "15"]);
    if let Some(token) = token {
        cmd.args(["--token", token]);
    }
    let out = run_bounded(&mut cmd, Duration::from_secs(25));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One line of a chart: its series name, the largest value, its points, and the y at which
/// the chart draws 0.
#[derive(Debug)]
struct Line {
    series: String,
    max: f64,
    points: Vec<(f64, f64)>,
    zero: f64,
}

/// `name="value"`'s value in `tag`.
fn attribute<'a>(tag: &'a str, name: &str) -> &'a str {
    let from = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
    &tag[from..from + tag[from..].find('"').unwrap()]
}

/// The lines the script drew into `<svg id="chart-{id}">`.
fn chart(dom: &str, id: &str) -> Vec<Line> {
    let start = dom
        .find(&format!("<svg id=\"chart-{id}\""))
        .unwrap_or_else(|| panic!("no chart {id}: {dom}"));
    let svg = &dom[start..start + dom[start..].find("</svg>").unwrap()];
    let zero: f64 = attribute(&svg[..svg.find('>').unwrap()], "data-zero")
        .parse()
        .unwrap();
    svg.split("<polyline")
        .skip(1)
        .map(|p| {
            let attr = |name: &str| attribute(p, name).to_owned();
            Line {
                zero,
                series: attr("data-series"),
                max: attr("data-max").parse().unwrap(),
                points: attr("points")
                    .split(' ')
                    .map(|xy| {
                        let (x, y) = xy.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Whether `series` in `lines` has a value above zero, plotted above the zero line.
fn plotted(lines: &[Line], series: &str) -> bool {
    lines
        .iter()
        .filter(|l| l.series == series)
        .any(|l| l.max > 0.0 && l.points.iter().any(|(_, y)| *y < l.zero - 1.0))
}

#[test]
fn the_charts_draw_the_proxys_own_logins_latency_and_bytes() {
    let proxy = Proxy::start(None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pass) = Dovecot::shared().user(1);
    let held = rt.block_on(async {
        for _ in 0..3 {
            let mut c = TestClient::connect(proxy.imap).await.unwrap();
            assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
            c.cmd("S1", "SELECT INBOX").await.unwrap();
            c.logout().await.unwrap();
        }
        let mut bad = TestClient::connect(proxy.imap).await.unwrap();
        assert!(!bad.login(&user, "wrong").await.unwrap().tagged_ok());
        // One session stays open while the page is drawn.
        let mut held = TestClient::connect(proxy.imap).await.unwrap();
        assert!(held.login(&user, &pass).await.unwrap().tagged_ok());
        held
    });
    // The sampler takes a sample a second: let it see the logins.
    std::thread::sleep(Duration::from_millis(2500));

    let dom = dump_dom(proxy.admin, Duration::from_secs(5));
    drop(held);
    assert!(dom.contains("<h1>imapproxy</h1>"), "{dom}");
    let sessions = chart(&dom, "sessions");
    assert!(plotted(&sessions, "open"), "{sessions:?}");
    let logins = chart(&dom, "logins");
    assert!(plotted(&logins, "ok"), "{logins:?}");
    assert!(plotted(&logins, "failed"), "{logins:?}");
    let latency = chart(&dom, "latency");
    // p50 of logins served from the pool may be a fraction of a millisecond, less than a
    // pixel under a p99 of a fresh login: its values must be there, p99 must show.
    assert!(
        latency.iter().any(|l| l.series == "p50" && l.max > 0.0) && plotted(&latency, "p99"),
        "{latency:?}"
    );
    let bytes = chart(&dom, "bytes");
    assert!(plotted(&bytes, "to clients"), "{bytes:?}");
    // What the latency covers is said, not implied.
    assert!(dom.contains("(per 1 s interval)"), "{dom}");
    // /stats itself: bounded, one sample a second.
    let (code, body) = admin_request(proxy.admin, "GET", "/stats", None, &[]);
    assert_eq!(code, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["capacity"], 300);
    assert!(stats["samples"].as_array().unwrap().len() >= 3, "{stats}");
}

#[test]
fn a_click_on_drain_drains_the_backend() {
    let proxy = Proxy::start(None);
    assert_eq!(proxy.health("mail-beta", None), "up");
    let page = click_drain(proxy.admin, "mail-beta", None);
    assert_eq!(page["message"], "mail-beta is draining", "{page}");
    assert_eq!(page["row"], "draining", "{page}");
    assert_eq!(proxy.health("mail-beta", None), "draining");
    assert_eq!(proxy.health("mail-alpha", None), "up");
}

/// The `imapproxy_console` cookie a successful login sets (its value), from `curl -i` output.
fn session_cookie(response: &str) -> Option<String> {
    let line = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))?;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(line.contains(attribute), "{line}");
    }
    let value = line.split_once("imapproxy_console=")?.1.split(';').next()?;
    Some(value.to_owned())
}

#[test]
fn with_a_token_the_browser_logs_in_and_state_changes_need_the_csrf_header() {
    let proxy = Proxy::start(Some(TOKEN));
    let admin = proxy.admin;
    // Not logged in: the login form, and nothing else.
    let (code, body) = admin_request(admin, "GET", "/", None, &[]);
    assert_eq!(code, 401);
    assert!(body.contains("<form id=\"login\""), "{body}");
    assert_eq!(admin_request(admin, "GET", "/stats", None, &[]).0, 401);
    let (code, body) = admin_request(admin, "POST", "/login", None, &["-i", "-d", "token=guess"]);
    assert_eq!(code, 401);
    assert_eq!(session_cookie(&body), None, "{body}");

    let (code, body) = admin_request(
        admin,
        "POST",
        "/login",
        None,
        &["-i", "-d", &format!("token={TOKEN}")],
    );
    assert_eq!(code, 303, "{body}");
    let cookie = session_cookie(&body).unwrap();
    assert!(!cookie.contains(TOKEN));
    let cookie = format!("Cookie: imapproxy_console={cookie}");

    // The cookie reads like the token does.
    let (code, page) = admin_request(admin, "GET", "/", None, &["-H", cookie.as_str()]);
    assert_eq!(code, 200);
    let csrf = page
        .split_once("<meta name=\"csrf\" content=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .unwrap()
        .0
        .to_owned();
    // A state change with the cookie alone (what a forged form would send) is refused, as is
    // a wrong value; the page's value is accepted; bearer clients need none.
    let drain = "/backends/mail-alpha/drain";
    let (cookie, origin) = (cookie.as_str(), format!("Origin: http://{admin}"));
    for extra in [
        vec!["-H", cookie],
        vec!["-H", cookie, "-H", &origin],
        vec!["-H", cookie, "-H", "X-Imapproxy-Csrf: 00"],
    ] {
        let (code, body) = admin_request(admin, "POST", drain, None, &extra);
        assert_eq!(code, 403, "{extra:?}: {body}");
    }
    assert_eq!(proxy.health("mail-alpha", Some(TOKEN)), "up");
    let header = format!("X-Imapproxy-Csrf: {csrf}");
    let (code, body) = admin_request(
        admin,
        "POST",
        drain,
        None,
        &["-H", cookie, "-H", &origin, "-H", &header],
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = admin_request(
        admin,
        "POST",
        "/backends/mail-alpha/undrain",
        Some(TOKEN),
        &[],
    );
    assert_eq!(code, 200, "{body}");

    // And in the browser: the form, then the button.
    let page = click_drain(admin, "mail-beta", Some(TOKEN));
    assert_eq!(page["logged_in"], true, "{page}");
    assert_eq!(page["message"], "mail-beta is draining", "{page}");
    assert_eq!(proxy.health("mail-beta", Some(TOKEN)), "draining");
    assert_eq!(proxy.health("mail-alpha", Some(TOKEN)), "up");
}
