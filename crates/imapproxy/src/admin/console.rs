//! The operator console at `GET /`, and its login form.
//!
//! One self-contained page: its tables (backends, pool, sessions) are rendered here and work
//! without JavaScript (the session search is a plain GET form); the charts and the buttons are
//! `console.js`, inlined, which reads `/stats`, `/backends` and `/sessions`. No framework, no
//! external resource: the `Content-Security-Policy` lets only this page's own script and style
//! run, and forbids framing (no clickjacking of the drain buttons). Everything from outside
//! (user names above all, which whoever logs in chooses) is escaped with [`esc`] here, and
//! set with `textContent` in the script.

use std::fmt::Write as _;

use super::AdminState;
use super::auth::Auth;
use super::http::Response;
use super::views::esc;

const STYLE: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");
/// Sessions listed in the page at most; the search narrows them.
const MAX_ROWS: usize = 200;

/// What the console page needs besides the proxy's state.
pub(super) struct Page<'a> {
    /// The anti-CSRF value the script sends with every state change.
    pub(super) csrf: &'a str,
    /// Whether the viewer logged in with the form (and so may log out).
    pub(super) logged_in: bool,
    /// The session search (`?user=`): a part of the user name, any case.
    pub(super) user: &'a str,
}

/// The console; `sessions` is what `GET /sessions` answers.
pub(super) fn console_page(
    state: &AdminState,
    sessions: &serde_json::Value,
    page: &Page<'_>,
    auth: &Auth,
) -> Response {
    let backends: Vec<String> = state
        .proxy
        .upstreams()
        .registry
        .iter()
        .map(|(b, _)| b.id.to_string())
        .collect();
    let logout = if page.logged_in {
        "<form method=\"post\" action=\"/logout\"><button>log out</button></form>"
    } else {
        ""
    };
    let body = format!(
        "<header><h1>imapproxy</h1><p>Client sessions: <b id=\"sessions\">{clients}</b></p>{logout}</header>\
         <p id=\"message\" role=\"status\"></p>\
         <section id=\"charts\"><noscript><p>The charts need JavaScript; \
         <a href=\"/stats\">/stats</a> has their data.</p></noscript>{charts}</section>\
         <h2>Backends</h2>{backend_table}\
         <h2>Pool</h2>{pool_table}\
         <h2>Sessions</h2>{sessions_section}\
         <footer><a href=\"/backends\">/backends</a> · <a href=\"/sessions\">/sessions</a> · \
         <a href=\"/stats\">/stats</a> · <a href=\"/metrics\">/metrics</a></footer>",
        clients = state.sessions.len(),
        charts = charts(),
        backend_table = backend_table(state),
        pool_table = pool_table(state),
        sessions_section = sessions_section(sessions, page.user, &backends),
    );
    html(
        "200 OK",
        auth,
        "imapproxy console",
        // Without the script, the tables refresh with the whole page.
        &format!(
            "<meta name=\"csrf\" content=\"{}\">\
             <noscript><meta http-equiv=\"refresh\" content=\"10\"></noscript>",
            esc(page.csrf)
        ),
        &body,
        true,
    )
}

/// The login form, shown at `GET /` to a browser that has not logged in (and after a wrong
/// token, with `message`).
pub(super) fn login_page(auth: &Auth, message: Option<&str>) -> Response {
    let message = message.map_or(String::new(), |m| {
        format!(
            "<p id=\"message\" class=\"bad\" role=\"alert\">{}</p>",
            esc(m)
        )
    });
    let body = format!(
        "<header><h1>imapproxy</h1></header>{message}\
         <form id=\"login\" method=\"post\" action=\"/login\">\
         <label>Admin token <input id=\"token\" name=\"token\" type=\"password\" \
         autocomplete=\"current-password\" required autofocus></label> \
         <button id=\"login-button\">log in</button></form>"
    );
    html(
        "401 Unauthorized",
        auth,
        "imapproxy login",
        "",
        &body,
        false,
    )
}

/// A whole page, with the headers that confine it: only the nonce'd style and script run, it
/// talks only to this endpoint, and no other page may frame it.
fn html(
    status: &'static str,
    auth: &Auth,
    title: &str,
    head: &str,
    body: &str,
    script: bool,
) -> Response {
    let nonce = auth.page_nonce();
    let script = if script {
        format!("<script nonce=\"{nonce}\">{SCRIPT}</script>")
    } else {
        String::new()
    };
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{head}\
         <title>{title}</title><style nonce=\"{nonce}\">{STYLE}</style></head>\
         <body>{body}{script}</body></html>\n"
    );
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    Response::new(status, "text/html; charset=utf-8", page)
        .with_header("Content-Security-Policy", policy)
        .with_header("X-Frame-Options", "DENY")
        .with_header("X-Content-Type-Options", "nosniff")
        // Not `no-referrer`: under it a browser posts the login form with `Origin: null`,
        // which the Origin check refuses.
        .with_header("Referrer-Policy", "same-origin")
}

/// The four chart frames; the script draws into them.
fn charts() -> String {
    [
        ("sessions", "Client sessions", ""),
        ("logins", "Logins per second, by result", ""),
        ("latency", "Login latency p50 / p99", "<span id=\"latency-over\"></span>"),
        ("bytes", "Bytes relayed per second", ""),
    ]
    .iter()
    .fold(String::new(), |mut out, (id, caption, note)| {
        let _ = write!(
            out,
            "<figure><figcaption>{caption} {note}<span class=\"legend\" id=\"legend-{id}\"></span>\
             </figcaption><svg id=\"chart-{id}\" class=\"chart\" viewBox=\"0 0 600 120\" role=\"img\" \
             aria-label=\"{caption}\"></svg></figure>"
        );
        out
    })
}

fn backend_table(state: &AdminState) -> String {
    let pool = state.proxy.pool().status();
    let mut rows = String::new();
    for (b, s) in state.proxy.upstreams().registry.iter() {
        let health = s.health().to_string();
        let warm = pool
            .warm
            .iter()
            .find(|(name, _)| name == b.id.as_str())
            .map_or(0, |(_, n)| *n);
        let name = esc(b.id.as_str());
        let draining = health == "draining";
        let button = |action: &str, label: &str, enabled: bool| {
            format!(
                "<button type=\"button\" data-action=\"{action}\" data-backend=\"{name}\"{}>{label}</button>",
                if enabled { "" } else { " disabled" }
            )
        };
        // The row starts `<tr class="{health}"><td>{name}</td>`, as the script draws it too.
        let _ = write!(
            rows,
            "<tr class=\"{h}\"><td>{name}</td><td>{addr}</td><td>{h}</td><td>{sessions}</td>\
             <td>{warm}</td><td>{weight}</td><td>{max}</td><td>{drain} {migrate} {undrain}</td></tr>",
            h = esc(&health),
            addr = esc(&b.addr),
            sessions = s.active(),
            weight = b.weight,
            max = b.max_connections,
            drain = button("drain", "drain", !draining),
            migrate = button("migrate", "drain + move sessions", !draining),
            undrain = button("undrain", "undrain", draining),
        );
    }
    format!(
        "<table id=\"backends\"><thead><tr><th>name</th><th>address</th><th>health</th>\
         <th>sessions</th><th>warm</th><th>weight</th><th>max connections</th><th></th></tr>\
         </thead><tbody>{rows}</tbody></table>"
    )
}

fn pool_table(state: &AdminState) -> String {
    let pool = state.proxy.pool().status();
    format!(
        "<table id=\"pool\"><thead><tr><th>cached sessions</th><th>slots in use</th>\
         <th>waiting</th><th>hits</th><th>misses</th><th>waits</th><th>timeouts</th></tr></thead>\
         <tbody><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         </tr></tbody></table>",
        pool.idle_sessions,
        pool.slots_in_use,
        pool.waiting,
        pool.hits,
        pool.misses,
        pool.waits,
        pool.timeouts,
    )
}

/// The search form and the sessions whose user contains `user` (any case). In fleet mode
/// (the view has `fleet`) a column names each session's proxy; otherwise it is hidden.
fn sessions_section(sessions: &serde_json::Value, user: &str, backends: &[String]) -> String {
    let all = sessions
        .get("sessions")
        .and_then(serde_json::Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let needle = user.to_lowercase();
    let found: Vec<&serde_json::Value> = all
        .iter()
        .filter(|s| text(s, "user").to_lowercase().contains(&needle))
        .collect();
    let options = backends.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "<option>{}</option>", esc(b));
        out
    });
    let mut rows = String::new();
    for s in found.iter().take(MAX_ROWS) {
        let user = esc(text(s, "user"));
        let _ = write!(
            rows,
            "<tr><td>{user}</td><td class=\"proxy\">{proxy}</td><td>{backend}</td>\
             <td>{client}</td><td>{age}</td><td>\
             <button type=\"button\" data-action=\"kick\" data-user=\"{user}\">kick</button> \
             <select aria-label=\"move to\">{options}</select> \
             <button type=\"button\" data-action=\"move\" data-user=\"{user}\">move</button></td></tr>",
            proxy = esc(text(s, "proxy")),
            backend = esc(text(s, "backend")),
            client = esc(text(s, "client")),
            age = age(s
                .get("seconds")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)),
        );
    }
    format!(
        "<form id=\"search\" method=\"get\" action=\"/\"><input id=\"user\" name=\"user\" \
         type=\"search\" placeholder=\"user\" value=\"{value}\" aria-label=\"user\"> \
         <button>find</button></form>\
         <p id=\"session-count\">{count}</p>\
         <table id=\"session-list\"{fleet}><thead><tr><th>user</th><th class=\"proxy\">proxy</th>\
         <th>backend</th><th>client</th><th>for</th><th></th></tr></thead><tbody>{rows}</tbody></table>",
        value = esc(user),
        count = count_line(found.len(), all.len()),
        fleet = if sessions.get("fleet").is_some() {
            " class=\"fleet\""
        } else {
            ""
        },
    )
}

/// "3 of 10 sessions", and how many are shown when not all are.
fn count_line(found: usize, all: usize) -> String {
    let shown = found.min(MAX_ROWS);
    let mut line = format!("{found} of {all} sessions");
    if shown < found {
        let _ = write!(line, ", the first {shown} shown");
    }
    line
}

fn text<'a>(value: &'a serde_json::Value, key: &str) -> &'a str {
    value
        .get(key)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}

/// `75` → `1m 15s`: how long a session has been open.
fn age(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {}s", seconds / 60, seconds % 60),
        _ => format!("{}h {}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_filtered_escaped_and_bounded() {
        let sessions = serde_json::json!({ "sessions": [
            { "user": "<script>alert(1)</script>", "backend": "m1", "client": "1.2.3.4:5", "seconds": 3 },
            { "user": "Alice", "backend": "m\"2", "client": "1.2.3.4:6", "seconds": 75 },
        ]});
        let all = sessions_section(&sessions, "", &["m1".into()]);
        assert!(
            all.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{all}"
        );
        assert!(!all.contains("<script>"), "{all}");
        assert!(all.contains("2 of 2 sessions"));
        let alice = sessions_section(&sessions, "aLI", &[]);
        assert!(
            alice.contains("<td>Alice</td><td class=\"proxy\"></td><td>m&quot;2</td>"),
            "{alice}"
        );
        assert!(!alice.contains("class=\"fleet\""));
        assert!(alice.contains("1 of 2 sessions") && alice.contains("1m 15s"));
        assert!(!alice.contains("script"));
        let evil = sessions_section(&sessions, "\"><script>", &[]);
        assert!(
            evil.contains("value=\"&quot;&gt;&lt;script&gt;\""),
            "{evil}"
        );
        assert_eq!(
            count_line(500, 900),
            "500 of 900 sessions, the first 200 shown"
        );
    }

    #[test]
    fn the_script_cannot_end_its_element_early() {
        assert!(!SCRIPT.to_lowercase().contains("</script"));
        assert!(!STYLE.to_lowercase().contains("</style"));
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(75), "1m 15s");
        assert_eq!(age(7500), "2h 5m");
    }
}
