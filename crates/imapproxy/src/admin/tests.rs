//! The admin endpoint's helpers.

use imapproxy_route::BackendId;
use imapproxy_session::Overrides;

use super::http::{body_param, param, percent_decode};
use super::overrides::save_overrides;
use super::views::esc;
use super::{load_overrides, same};

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

fn request(method: &str, host: Option<&str>, origin: Option<&str>) -> super::http::Request {
    super::http::Request {
        method: method.into(),
        path: "/".into(),
        authorization: None,
        host: host.map(Into::into),
        origin: origin.map(Into::into),
        cookie: None,
        csrf: None,
        body: String::new(),
    }
}

#[test]
fn only_this_endpoint_may_change_state_and_only_under_known_names() {
    use super::same_origin;
    let allowed = vec!["admin.internal".to_owned()];
    let ok = |m, h, o| same_origin(&request(m, h, o), &allowed).is_ok();
    // Addresses, localhost and allowed names, with or without a port.
    assert!(ok("GET", Some("127.0.0.1:8143"), None));
    assert!(ok("GET", Some("[::1]:8143"), None));
    assert!(ok("GET", Some("localhost"), None));
    assert!(ok("GET", Some("Admin.Internal:80"), None));
    // Rebinding: any other name; and malformed or missing Host.
    assert!(!ok("GET", Some("evil.example:8143"), None));
    assert!(!ok("GET", Some("127.0.0.1:99999999"), None));
    assert!(!ok("GET", Some("[::1"), None));
    assert!(!ok("GET", None, None));
    // State changes: no Origin (curl) or our own origin only.
    assert!(ok("POST", Some("127.0.0.1:8143"), None));
    assert!(ok(
        "POST",
        Some("127.0.0.1:8143"),
        Some("http://127.0.0.1:8143")
    ));
    assert!(!ok(
        "POST",
        Some("127.0.0.1:8143"),
        Some("http://evil.example")
    ));
    assert!(!ok(
        "POST",
        Some("127.0.0.1:8143"),
        Some("http://127.0.0.1:9999")
    ));
    assert!(!ok("DELETE", Some("127.0.0.1:8143"), Some("null")));
    // Reads are not refused for their Origin (the token protects them).
    assert!(ok(
        "GET",
        Some("127.0.0.1:8143"),
        Some("http://evil.example")
    ));
}
