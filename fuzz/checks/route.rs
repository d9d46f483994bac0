//! Invariant checks for the route crate's fuzz targets (`route_http_answer`,
//! `route_static_map`), shared with the corpus replay test
//! `crates/imapproxy-route/tests/fuzz_corpus.rs` (which includes this file with `#[path]`), so
//! the committed corpora are checked on every `cargo test`, not only when fuzzing.
//!
//! Both checks compare the parser with a small independent reading of the same input (a
//! model): what the model sees in the input bounds what the parser may answer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::OnceLock;

use imapproxy_route::{Backend, Error, HttpAuthDirectory, Route, StaticMap};

/// The backends the fuzzed directory knows: an IPv4 address, a host name, an IPv6 address,
/// and a backend whose name looks like an address of another one.
pub const BACKENDS: &[(&str, &str)] = &[
    ("mail1", "127.0.0.1:10143"),
    ("mail2", "localhost:10144"),
    ("mail3", "[::1]:993"),
    ("10.0.0.7", "imap.example.org:143"),
];

fn directory() -> &'static HttpAuthDirectory {
    static DIRECTORY: OnceLock<HttpAuthDirectory> = OnceLock::new();
    DIRECTORY.get_or_init(|| {
        let backends: Vec<Backend> = BACKENDS
            .iter()
            .map(|(id, addr)| Backend::new(*id, *addr))
            .collect();
        HttpAuthDirectory::new("http://127.0.0.1:9000/auth")
            .unwrap()
            .with_backends(&backends)
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The trimmed values of every header line named `name` (any case) in `lines`.
fn values<'a>(lines: &[&'a str], name: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim_matches([' ', '\t']))
        .collect()
}

/// Whether `Auth-Server: server` with `Auth-Port: port` names the backend at `addr`.
fn names_addr(addr: &str, server: &str, port: &str) -> bool {
    let joined = [format!("{server}:{port}"), format!("[{server}]:{port}")];
    if joined.iter().any(|j| j == addr) {
        return true;
    }
    let parsed = addr.parse::<SocketAddr>().ok();
    parsed.is_some()
        && joined
            .iter()
            .any(|j| j.parse::<SocketAddr>().ok() == parsed)
}

fn is_unavailable(r: &Result<Option<Route>, Error>) -> bool {
    matches!(r, Err(Error::DirectoryUnavailable(_)))
}

/// nginx auth-service answer invariants (`HttpAuthDirectory::parse_response`):
/// - never panics; error texts stay short (a service cannot fill the logs);
/// - nothing but [`Error::DirectoryUnavailable`] without a complete head, and for every
///   prefix cut before the end of the head (a truncated `Auth-Port` never routes);
/// - an answer (route or refusal) only with an `HTTP/1.x 2NN` status line and an
///   `Auth-Status` header;
/// - a route only when every `Auth-Status` is `OK`, and only to a configured backend that an
///   `Auth-Server` header names, by id or by address with an `Auth-Port`; no route (`None`)
///   only without `Auth-Server`;
/// - a refusal only with an `Auth-Status` other than `OK`, its text at most 200 characters,
///   free of control characters and taken from the first refusing header; its wait only
///   from an `Auth-Wait` header;
/// - the body does not matter: another answer after the head changes nothing.
pub fn check_http_answer(data: &[u8]) {
    let d = directory();
    let r = d.parse_response(data);
    if let Err(e) = &r {
        // Characters, not bytes: a refusal keeps 200 characters of any width.
        let text = e.to_string();
        assert!(text.chars().count() <= 320, "error text {text:?}");
    }
    let Some(end) = find(data, b"\r\n\r\n").map(|i| i + 4) else {
        assert!(is_unavailable(&r), "answer without a complete head: {r:?}");
        return;
    };
    for cut in [0, end / 2, end - 2, end - 1] {
        let prefix = d.parse_response(&data[..cut]);
        assert!(is_unavailable(&prefix), "prefix of {cut} bytes: {prefix:?}");
    }
    let head = String::from_utf8_lossy(&data[..end - 4]);
    let lines: Vec<&str> = head.split("\r\n").collect();
    let statuses = values(&lines[1..], "auth-status");
    let servers = values(&lines[1..], "auth-server");
    let ports = values(&lines[1..], "auth-port");
    if !is_unavailable(&r) {
        let status = lines[0].as_bytes();
        assert!(
            status.starts_with(b"HTTP/1.") && status.get(9) == Some(&b'2'),
            "answer with status line {:?}: {r:?}",
            lines[0]
        );
        assert!(!statuses.is_empty(), "answer without Auth-Status: {r:?}");
    }
    match &r {
        Ok(None) => {
            assert!(statuses.iter().all(|s| *s == "OK"));
            assert!(servers.is_empty(), "Auth-Server {servers:?} ignored");
        }
        Ok(Some(route)) => {
            assert!(statuses.iter().all(|s| *s == "OK"), "{statuses:?}");
            let [id] = route.ids() else {
                panic!("more than one backend: {route:?}");
            };
            let &(_, addr) = BACKENDS
                .iter()
                .find(|(name, _)| *name == id.as_str())
                .unwrap_or_else(|| panic!("unconfigured backend {id}"));
            assert!(
                servers
                    .iter()
                    .any(|s| *s == id.as_str() || ports.iter().any(|p| names_addr(addr, s, p))),
                "{id} ({addr}) not named by Auth-Server {servers:?} Auth-Port {ports:?}"
            );
        }
        Err(Error::Denied { message, wait }) => {
            let refusal = statuses.iter().find(|s| **s != "OK");
            let refusal = refusal.unwrap_or_else(|| panic!("refused with {statuses:?}"));
            assert!(message.chars().count() <= 200);
            assert!(!message.chars().any(char::is_control), "{message:?}");
            let shown: String = refusal
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            assert_eq!(*message, shown, "refusal text not from {refusal:?}");
            if let Some(wait) = wait {
                let secs = wait.as_secs();
                assert!(
                    values(&lines[1..], "auth-wait")
                        .iter()
                        .any(|w| w.parse() == Ok(secs)),
                    "wait {secs} s from nowhere"
                );
            }
        }
        Err(_) => {}
    }
    let mut other_body = data[..end].to_vec();
    other_body
        .extend_from_slice(b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: mail1\r\n\r\n");
    assert_eq!(
        d.parse_response(&other_body),
        r,
        "the body changed the answer"
    );
}

/// A map entry as the model reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Domain(String),
    Default,
}

/// The model of the map format: entries in file order, or the number of the first bad line.
fn model_map(text: &str) -> Result<Vec<(Key, Vec<String>)>, usize> {
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    for (index, raw) in text.split('\n').enumerate() {
        let fields: Vec<&str> = raw
            .split_whitespace()
            .take_while(|f| !f.starts_with('#'))
            .collect();
        let Some((key, ids)) = fields.split_first() else {
            continue;
        };
        if ids.is_empty() {
            return Err(index + 1);
        }
        let key = key.to_lowercase();
        let key = match key.strip_prefix('@') {
            _ if key == "*" => Key::Default,
            Some(domain) if domain.is_empty() || domain.contains('@') => return Err(index + 1),
            Some(domain) => Key::Domain(domain.to_owned()),
            None => Key::User(key),
        };
        if !seen.insert(key.clone()) {
            return Err(index + 1);
        }
        entries.push((key, ids.iter().map(|s| (*s).to_owned()).collect()));
    }
    Ok(entries)
}

fn route_of(ids: &[String]) -> Route {
    match ids {
        [one] => Route::Backend(one.as_str().into()),
        _ => Route::Candidates(ids.iter().map(|s| s.as_str().into()).collect()),
    }
}

/// Static map invariants (`str::parse::<StaticMap>`), against [`model_map`]:
/// - never panics; accepts exactly what the model accepts, and reports the same first bad
///   line;
/// - a map that parses has one entry per entry line, names every backend of its lines, and
///   its lookups agree with its lines: each `user` line is found by `get(user)` (lower-cased),
///   each `@domain` line by a user of that domain without an entry of its own, `*` by a user
///   matching nothing else (and nothing is found for one without `*`);
/// - the lines written back (`key backend...`) parse to the same map;
/// - CRLF line ends read as LF ones.
pub fn check_static_map(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = text.parse::<StaticMap>();
    let model = model_map(&text);
    match (&parsed, &model) {
        (Ok(map), Ok(entries)) => {
            assert_eq!(map.len(), entries.len());
            let ids: usize = entries.iter().map(|(_, ids)| ids.len()).sum();
            assert_eq!(map.backends().count(), ids);
            let mut has_default = false;
            for (key, ids) in entries {
                let want = route_of(ids);
                let (probe, shown) = match key {
                    // Whitespace never occurs in a key, so these users have no entry.
                    Key::User(user) => (user.clone(), user.clone()),
                    Key::Domain(domain) => (format!("no such@{domain}"), format!("@{domain}")),
                    Key::Default => {
                        has_default = true;
                        ("no such".to_owned(), "*".to_owned())
                    }
                };
                assert_eq!(map.get(&probe), Some(&want), "line for {shown}");
            }
            if !has_default {
                assert_eq!(map.get("no such"), None);
            }
            let written: String = entries
                .iter()
                .map(|(key, ids)| {
                    let key = match key {
                        Key::User(u) => u.clone(),
                        Key::Domain(d) => format!("@{d}"),
                        Key::Default => "*".to_owned(),
                    };
                    format!("{key} {}\n", ids.join(" "))
                })
                .collect();
            assert_eq!(written.parse::<StaticMap>().as_ref(), Ok(map), "{written}");
        }
        (Err(Error::InvalidMap { line, .. }), Err(bad)) => assert_eq!(line, bad),
        _ => panic!("parser says {parsed:?}, model says {model:?}"),
    }
    let crlf = text.replace('\n', "\r\n");
    assert_eq!(crlf.parse::<StaticMap>(), parsed, "CRLF changed the map");
}
