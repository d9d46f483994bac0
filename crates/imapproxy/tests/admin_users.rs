//! The admin API's live sessions and user moves, end to end: the real binary in front of two
//! Dovecot instances sharing one mail store, driven with curl; each Dovecot's own log shows
//! where a login landed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Binary, loopback, shared_backends};
use imapproxy_testkit::TestClient;

const ADMIN_TOKEN: &str = "t0ken-for-user-tests";

/// The proxy under test: its plain listener and admin endpoint.
struct ProxyProcess {
    _binary: Binary,
    plain: SocketAddr,
    admin: SocketAddr,
}

impl ProxyProcess {
    fn start(overrides_file: Option<&Path>) -> Self {
        let b = shared_backends();
        let [plain, admin] = [(); 2].map(|()| loopback());
        let overrides = overrides_file
            .map(|p| format!("overrides_file = \"{}\"\n", p.display()))
            .unwrap_or_default();
        let config = format!(
            r#"
[[listeners]]
addr = "{plain}"
tls = "none"
allow_plaintext_auth = true

[[backends]]
name = "mail1"
addr = "{a}"

[[backends]]
name = "mail2"
addr = "{b}"

[admin]
addr = "{admin}"
token = "{ADMIN_TOKEN}"
{overrides}"#,
            a = b.mail1.imap_addr(),
            b = b.mail2.imap_addr(),
        );
        Self {
            _binary: Binary::start(&config, &[plain, admin]),
            plain,
            admin,
        }
    }

    /// An admin request with curl: (status, body). `form` is sent as the request body.
    fn admin(&self, method: &str, path: &str, form: Option<&str>, token: bool) -> (u16, String) {
        let form: Vec<&str> = form.map(|f| vec!["-d", f]).unwrap_or_default();
        common::admin_request(
            self.admin,
            method,
            path,
            token.then_some(ADMIN_TOKEN),
            &form,
        )
    }

    fn sessions(&self) -> serde_json::Value {
        let (code, body) = self.admin("GET", "/sessions", None, true);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The backends of `user`'s live sessions.
    fn backends_of(&self, user: &str) -> Vec<String> {
        self.sessions()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["user"] == user)
            .map(|s| s["backend"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until `user` has `n` live sessions; returns their backends.
    fn wait_sessions(&self, user: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let list = self.backends_of(user);
            if list.len() == n || Instant::now() > deadline {
                assert_eq!(list.len(), n, "{user}: {list:?}");
                return list;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn logged_in(proxy: &ProxyProcess, user: &str, pass: &str) -> TestClient {
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let r = c.login(user, pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    c
}

/// The client hears the administrator's BYE, then the connection closes.
async fn expect_kicked(c: &mut TestClient) {
    let line = String::from_utf8(c.read_line().await.unwrap()).unwrap();
    assert_eq!(
        line,
        "* BYE [UNAVAILABLE] Session ended by the administrator, please reconnect.\r\n"
    );
    assert!(c.expect_eof(Duration::from_secs(5)).await, "not closed");
}

#[test]
fn sessions_are_listed_and_kicked() {
    let proxy = ProxyProcess::start(None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pass) = shared_backends().mail1.user(3);
    assert_eq!(proxy.admin("GET", "/sessions", None, false).0, 401);
    assert!(proxy.backends_of(&user).is_empty());

    let mut a = rt.block_on(logged_in(&proxy, &user.to_uppercase(), &pass));
    let mut b = rt.block_on(logged_in(&proxy, &user, &pass));
    let (other, other_pass) = shared_backends().mail1.user(4);
    let mut c = rt.block_on(logged_in(&proxy, &other, &other_pass));
    // Listed lower-cased, each with the backend it runs on (whose log shows the login).
    let on = proxy.wait_sessions(&user, 2);
    for backend in &on {
        assert!(
            shared_backends().get(backend).logins(&user) >= 1,
            "{backend}"
        );
    }
    let listed = proxy.sessions();
    let entry = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["user"] == user.as_str())
        .unwrap()
        .clone();
    assert!(entry["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(entry["since"].as_u64().unwrap() > 0);

    let (code, body) = proxy.admin("POST", &format!("/users/{user}/kick"), None, true);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["kicked"], 2);
    rt.block_on(async {
        expect_kicked(&mut a).await;
        expect_kicked(&mut b).await;
    });
    proxy.wait_sessions(&user, 0);
    // The other user's session is untouched and still works.
    assert_eq!(proxy.backends_of(&other).len(), 1);
    rt.block_on(async {
        let r = c.cmd("n", "NOOP").await.unwrap();
        assert!(r.tagged_ok(), "{}", r.text());
    });
    let (code, body) = proxy.admin("POST", &format!("/users/{user}/kick"), None, true);
    assert_eq!((code, body.contains("\"kicked\":0")), (200, true), "{body}");
    assert_eq!(
        proxy
            .admin("GET", &format!("/users/{user}/kick"), None, true)
            .0,
        405
    );
}

#[test]
fn a_moved_user_is_ended_and_lands_on_the_new_backend_even_after_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("overrides.json");
    let proxy = ProxyProcess::start(Some(&file));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pass) = shared_backends().mail1.user(6);

    let mut old = rt.block_on(logged_in(&proxy, &user, &pass));
    let from = proxy.wait_sessions(&user, 1).remove(0);
    let to = if from == "mail1" { "mail2" } else { "mail1" };
    let target = shared_backends().get(to);
    let before = target.logins(&user);

    // Refused: unknown backend, no backend at all.
    let path = format!("/users/{user}/move");
    assert_eq!(
        proxy.admin("POST", &path, Some("backend=nope"), true).0,
        404
    );
    assert_eq!(proxy.admin("POST", &path, None, true).0, 400);
    assert!(!file.exists(), "nothing saved for refused moves");

    // `kick=true`: the sessions end and the clients reconnect (without it, they move).
    let (code, body) = proxy.admin(
        "POST",
        &format!("{path}?kick=true"),
        Some(&format!("backend={to}")),
        true,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["backend"].as_str(), v["kicked"].as_u64()),
        (Some(to), Some(1))
    );
    rt.block_on(expect_kicked(&mut old));
    proxy.wait_sessions(&user, 0);

    // Every later login lands on the target, fresh at first (the old backend's session was
    // not cached for reuse).
    for _ in 0..3 {
        let mut c = rt.block_on(logged_in(&proxy, &user, &pass));
        assert_eq!(proxy.wait_sessions(&user, 1), vec![to.to_owned()]);
        rt.block_on(async { assert!(c.logout().await.unwrap().tagged_ok()) });
        proxy.wait_sessions(&user, 0);
    }
    assert!(
        target.wait_for_log(
            &format!("imap-login: Info: Login: user=<{user}>,"),
            before + 1,
            Duration::from_secs(5)
        ) > before,
        "no login on {to}"
    );
    assert_eq!(proxy.sessions()["overrides"][&user], to);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["users"][&user], to);

    // A restarted proxy reads the override back.
    drop(proxy);
    let proxy = ProxyProcess::start(Some(&file));
    assert_eq!(proxy.sessions()["overrides"][&user], to);
    let mut c = rt.block_on(logged_in(&proxy, &user, &pass));
    assert_eq!(proxy.wait_sessions(&user, 1), vec![to.to_owned()]);
    rt.block_on(async { assert!(c.logout().await.unwrap().tagged_ok()) });

    // Removing the override leaves the file without it.
    let (code, body) = proxy.admin("DELETE", &path, None, true);
    assert_eq!(code, 200, "{body}");
    assert!(proxy.sessions()["overrides"].get(&user).is_none());
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(saved["users"].get(&user).is_none());
}
