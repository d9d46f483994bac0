//! The admin endpoint against what a web page in an operator's browser can do, with the real
//! binary and curl: a cross-site form posting to `/backends/…/drain` (it carries the site's
//! `Origin`), DNS rebinding (the request names the attacker's host), and an endpoint
//! listening beyond loopback without a token, which the binary refuses to start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{Binary, loopback};
use imapproxy_testkit::Dovecot;

const TOKEN: &str = "t0ken-from-a-file";

fn curl(admin: SocketAddr, method: &str, path: &str, headers: &[String]) -> (u16, String) {
    let extra: Vec<&str> = headers.iter().flat_map(|h| ["-H", h.as_str()]).collect();
    common::admin_request(admin, method, path, Some(TOKEN), &extra)
}

#[test]
fn cross_origin_and_rebound_requests_are_refused_and_the_token_comes_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let [imap, admin] = [(); 2].map(|()| loopback());
    let config = format!(
        r#"
[[listeners]]
addr = "{imap}"
tls = "none"
allow_plaintext_auth = true

[[backends]]
name = "mail1"
addr = "{backend}"

[admin]
addr = "{admin}"
token_file = "{token}"
"#,
        backend = Dovecot::shared().imap_addr(),
        token = token_file.display(),
    );
    let _proxy = Binary::start(&config, &[imap, admin]);

    // A form on another site, posted from the operator's browser.
    let (code, body) = curl(
        admin,
        "POST",
        "/backends/mail1/drain",
        &["Origin: http://evil.example".into()],
    );
    assert_eq!(code, 403, "{body}");
    // DNS rebinding: the attacker's name resolved to us.
    let (code, body) = curl(admin, "GET", "/sessions", &["Host: evil.example".into()]);
    assert_eq!(code, 403, "{body}");
    let (code, body) = curl(
        admin,
        "POST",
        "/backends/mail1/drain",
        &[format!("Host: evil.example:{}", admin.port())],
    );
    assert_eq!(code, 403, "{body}");
    // Nothing was drained.
    let (code, body) = curl(admin, "GET", "/backends", &[]);
    assert_eq!(code, 200);
    assert!(body.contains("\"health\":\"up\""), "{body}");

    // The endpoint's own page posting to itself, and curl without an Origin, are served;
    // the token read from the file is the one required.
    let (code, body) = curl(
        admin,
        "POST",
        "/backends/mail1/drain",
        &[format!("Origin: http://{admin}")],
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(admin, "POST", "/backends/mail1/undrain", &[]);
    assert_eq!(code, 200, "{body}");
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "Authorization: Bearer wrong"])
        .arg(format!("http://{admin}/backends"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}

#[test]
fn an_admin_endpoint_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[[listeners]]\naddr = \"127.0.0.1:1143\"\ntls = \"none\"\n\n\
                [[backends]]\nname = \"m\"\naddr = \"127.0.0.1:143\"\n\n[admin]\n";
    let check = |admin: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("{base}{admin}")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_imapproxy"))
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = check("addr = \"0.0.0.0:8143\"\n");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("token"),
        "{err}"
    );
    // A token, or a file holding one, makes it acceptable; loopback needs none.
    assert!(
        check("addr = \"0.0.0.0:8143\"\ntoken = \"x\"\n")
            .status
            .success()
    );
    assert!(check("addr = \"127.0.0.1:8143\"\n").status.success());
    let missing = check("addr = \"0.0.0.0:8143\"\ntoken_file = \"/nonexistent/token\"\n");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("token_file"));
}

#[test]
fn an_address_guessing_the_token_is_refused_even_with_the_right_one() {
    let [imap, admin] = [(); 2].map(|()| loopback());
    let config = format!(
        r#"
[[listeners]]
addr = "{imap}"
tls = "none"

[[backends]]
name = "mail1"
addr = "{backend}"

[admin]
addr = "{admin}"
token = "{TOKEN}"
"#,
        backend = Dovecot::shared().imap_addr(),
    );
    let _proxy = Binary::start(&config, &[imap, admin]);
    let wrong = |i: usize| {
        common::admin_request(admin, "GET", "/sessions", Some(&format!("guess-{i}")), &[])
    };
    for i in 0..5 {
        assert_eq!(wrong(i).0, 401);
    }
    // The console's login form counts too.
    for i in 0..5 {
        let form = format!("token=guess-form-{i}");
        let (code, body) = common::admin_request(admin, "POST", "/login", None, &["-d", &form]);
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("not the admin token"), "{body}");
    }
    let (code, body) = curl(admin, "GET", "/sessions", &[]);
    assert_eq!(code, 429, "{body}");
    // /healthz stays open (balancers poll it).
    let (code, _) = common::admin_request(admin, "GET", "/healthz", None, &[]);
    assert_eq!(code, 200);
}
