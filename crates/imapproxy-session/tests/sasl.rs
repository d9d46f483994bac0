//! SASL pass-through against a real Dovecot: SCRAM-SHA-256 (client side implemented here
//! with `ring`, RFC 5802/7677) and XOAUTH2 / OAUTHBEARER (Dovecot's oauth2 passdb asking a
//! tiny introspection server run by this test) log in through the proxy with the right
//! secret and get `NO [AUTHENTICATIONFAILED]` with a wrong one; the mechanisms are
//! advertised before login only when the backend offers them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use imapproxy_pool::PoolSettings;
use imapproxy_session::SessionSettings;
use imapproxy_testkit::{Dovecot, TestClient};
use ring::{digest, hmac, pbkdf2};

const GOOD_TOKEN: &str = "good-token-5";

/// An OAuth2 introspection endpoint (RFC 7662): the good token is user5's, anything else is
/// inactive. Blocking, one thread per connection, keep-alive.
fn introspection_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let mut writer = conn.try_clone().unwrap();
                let mut reader = BufReader::new(conn);
                loop {
                    let mut content_length = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" && !first {
                            break;
                        }
                        first = false;
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            content_length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; content_length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let body = String::from_utf8_lossy(&body);
                    let json = if body.contains(GOOD_TOKEN) {
                        r#"{"active": true, "username": "user5"}"#
                    } else {
                        r#"{"active": false}"#
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                        json.len()
                    );
                    if writer.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A Dovecot offering SCRAM and the OAuth2 mechanisms.
fn dovecot() -> &'static Dovecot {
    static D: OnceLock<Dovecot> = OnceLock::new();
    D.get_or_init(|| {
        let http = introspection_server();
        let conf = std::env::temp_dir().join(format!(
            "imapproxy-sasl-oauth2-{}.conf.ext",
            std::process::id()
        ));
        std::fs::write(
            &conf,
            format!(
                "introspection_mode = post\nintrospection_url = http://{http}/introspect\n\
                 username_attribute = username\nactive_attribute = active\nactive_value = true\n"
            ),
        )
        .unwrap();
        Dovecot::builder()
            .users(6)
            // Held in a static, never dropped: the watchdog removes the file at exit.
            .remove_on_exit(&conf)
            .extra_config(&format!(
                "auth_mechanisms = plain login scram-sha-1 scram-sha-256 xoauth2 oauthbearer\n\
                 passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n}}\n",
                conf.display()
            ))
            .start()
            .unwrap()
    })
}

fn pool() -> PoolSettings {
    PoolSettings {
        reuse: true,
        warm: 1,
        ..PoolSettings::default()
    }
}

/// The proxy's pre-auth capability line, once its warm connection has learnt the backend's.
async fn capabilities_after_warmup(
    proxy: SocketAddr,
    pool: &imapproxy_pool::SessionPool,
) -> String {
    for _ in 0..100 {
        if pool.status().warm.iter().any(|(_, n)| *n > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = TestClient::connect(proxy).await.unwrap();
    let r = c.cmd("C1", "CAPABILITY").await.unwrap();
    assert!(r.tagged_ok());
    r.untagged().join(" ")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// Runs AUTHENTICATE SCRAM-SHA-256 (RFC 5802 §3, without SASL-IR so that the proxy's own
/// first continuation is exercised) and returns the tagged line.
async fn scram_login(c: &mut TestClient, user: &str, password: &str) -> String {
    c.send_raw(b"S1 AUTHENTICATE SCRAM-SHA-256\r\n")
        .await
        .unwrap();
    let line = c.read_line().await.unwrap();
    assert!(line.starts_with(b"+"), "{}", String::from_utf8_lossy(&line));
    let cnonce = "rOprNGfwEbeRWgbNEkqO";
    let bare = format!("n={user},r={cnonce}");
    c.send_raw(format!("{}\r\n", B64.encode(format!("n,,{bare}"))).as_bytes())
        .await
        .unwrap();
    let line = c.read_line().await.unwrap();
    let text = String::from_utf8(line).unwrap();
    let challenge = text.trim_end().strip_prefix("+ ").expect(&text);
    let server_first = String::from_utf8(B64.decode(challenge).unwrap()).unwrap();
    let mut nonce = "";
    let mut salt = Vec::new();
    let mut iterations = 0u32;
    for attr in server_first.split(',') {
        if let Some(v) = attr.strip_prefix("r=") {
            nonce = v;
        } else if let Some(v) = attr.strip_prefix("s=") {
            salt = B64.decode(v).unwrap();
        } else if let Some(v) = attr.strip_prefix("i=") {
            iterations = v.parse().unwrap();
        }
    }
    assert!(nonce.starts_with(cnonce));
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations).unwrap(),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, &client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac_sha256(stored_key.as_ref(), auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let client_final = format!("{without_proof},p={}", B64.encode(proof));
    c.send_raw(format!("{}\r\n", B64.encode(client_final)).as_bytes())
        .await
        .unwrap();
    finish(c, "S1").await
}

/// Answers any further challenge (SCRAM's server-final, an OAuth error) with an empty line
/// and returns the tagged line.
async fn finish(c: &mut TestClient, tag: &str) -> String {
    loop {
        let line = String::from_utf8(c.read_line().await.unwrap()).unwrap();
        if line.starts_with('+') {
            c.send_raw(b"\r\n").await.unwrap();
        } else if line.starts_with(&format!("{tag} ")) {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_passes_through() {
    let d = dovecot();
    let (proxy, pool) =
        common::start_proxy_pooled(&[d.imap_addr()], SessionSettings::default(), pool()).await;
    let caps = capabilities_after_warmup(proxy.plain, &pool).await;
    assert!(caps.contains("AUTH=SCRAM-SHA-256"), "{caps}");
    assert!(caps.contains("AUTH=SCRAM-SHA-1"), "{caps}");
    assert!(!caps.contains("PLUS"), "{caps}");

    let (user, pass) = d.user(3);
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let tagged = scram_login(&mut c, &user, &pass).await;
    assert!(tagged.starts_with("S1 OK [CAPABILITY "), "{tagged}");
    assert!(!tagged.contains("AUTH="), "{tagged}");
    let r = c.cmd("S2", "SELECT INBOX").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.status_line());
    let r = c.logout().await.unwrap();
    assert!(r.tagged_ok());

    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let tagged = scram_login(&mut c, &user, "wrong-password").await;
    assert!(
        tagged.starts_with("S1 NO [AUTHENTICATIONFAILED]"),
        "{tagged}"
    );
    // The session is still usable pre-auth.
    let r = c.login(&user, &pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.status_line());
    // Never cached: a relayed login leaves nothing to reuse.
    assert_eq!(pool.status().idle_sessions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_cancel_and_garbage() {
    let d = dovecot();
    let (proxy, pool) =
        common::start_proxy_pooled(&[d.imap_addr()], SessionSettings::default(), pool()).await;
    capabilities_after_warmup(proxy.plain, &pool).await;
    let (user, _) = d.user(4);
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    // Cancel after the backend's first challenge.
    let first = B64.encode(format!("n,,n={user},r=abcdefgh"));
    c.send_raw(format!("X1 AUTHENTICATE SCRAM-SHA-256 {first}\r\n").as_bytes())
        .await
        .unwrap();
    let line = c.read_line().await.unwrap();
    assert!(
        line.starts_with(b"+ "),
        "{}",
        String::from_utf8_lossy(&line)
    );
    c.send_raw(b"*\r\n").await.unwrap();
    let line = String::from_utf8(c.read_line().await.unwrap()).unwrap();
    assert!(line.starts_with("X1 BAD"), "{line}");
    // A first message without a user name never reaches a backend.
    let bad = B64.encode("n,,r=abcdefgh");
    let r = c
        .cmd("X2", &format!("AUTHENTICATE SCRAM-SHA-256 {bad}"))
        .await
        .unwrap();
    assert!(
        r.status_line().starts_with("X2 NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.status_line()
    );
    // -PLUS is not relayed.
    let r = c
        .cmd("X3", &format!("AUTHENTICATE SCRAM-SHA-256-PLUS {bad}"))
        .await
        .unwrap();
    assert!(r.status_line().starts_with("X3 NO"), "{}", r.status_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_mechanisms_pass_through() {
    let d = dovecot();
    let (proxy, pool) =
        common::start_proxy_pooled(&[d.imap_addr()], SessionSettings::default(), pool()).await;
    let caps = capabilities_after_warmup(proxy.plain, &pool).await;
    assert!(caps.contains("AUTH=XOAUTH2"), "{caps}");
    assert!(caps.contains("AUTH=OAUTHBEARER"), "{caps}");

    let xoauth2 = |token: &str| B64.encode(format!("user=user5\x01auth=Bearer {token}\x01\x01"));
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(format!("O1 AUTHENTICATE XOAUTH2 {}\r\n", xoauth2(GOOD_TOKEN)).as_bytes())
        .await
        .unwrap();
    let tagged = finish(&mut c, "O1").await;
    assert!(tagged.starts_with("O1 OK [CAPABILITY "), "{tagged}");
    let r = c.cmd("O2", "SELECT INBOX").await.unwrap();
    assert!(r.tagged_ok(), "{}", r.status_line());

    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(format!("O1 AUTHENTICATE XOAUTH2 {}\r\n", xoauth2("bad-token")).as_bytes())
        .await
        .unwrap();
    let tagged = finish(&mut c, "O1").await;
    assert!(
        tagged.starts_with("O1 NO [AUTHENTICATIONFAILED]"),
        "{tagged}"
    );

    // OAUTHBEARER without SASL-IR: the proxy prompts for the first message itself.
    let bearer = |token: &str| {
        B64.encode(format!(
            "n,a=user5,\x01host=127.0.0.1\x01port=143\x01auth=Bearer {token}\x01\x01"
        ))
    };
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(b"B1 AUTHENTICATE OAUTHBEARER\r\n")
        .await
        .unwrap();
    let line = c.read_line().await.unwrap();
    assert_eq!(line, b"+ \r\n");
    c.send_raw(format!("{}\r\n", bearer(GOOD_TOKEN)).as_bytes())
        .await
        .unwrap();
    let tagged = finish(&mut c, "B1").await;
    assert!(tagged.starts_with("B1 OK [CAPABILITY "), "{tagged}");

    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    c.send_raw(format!("B1 AUTHENTICATE OAUTHBEARER {}\r\n", bearer("nope")).as_bytes())
        .await
        .unwrap();
    let tagged = finish(&mut c, "B1").await;
    assert!(
        tagged.starts_with("B1 NO [AUTHENTICATIONFAILED]"),
        "{tagged}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_advertised_when_the_backend_lacks_them() {
    let d = Dovecot::shared();
    let (proxy, pool) =
        common::start_proxy_pooled(&[d.imap_addr()], SessionSettings::default(), pool()).await;
    let caps = capabilities_after_warmup(proxy.plain, &pool).await;
    assert!(caps.contains("AUTH=PLAIN"), "{caps}");
    for mech in ["SCRAM", "XOAUTH2", "OAUTHBEARER"] {
        assert!(!caps.contains(mech), "{caps}");
    }
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let first = B64.encode("n,,n=user1,r=abcdefgh");
    let r = c
        .cmd("N1", &format!("AUTHENTICATE SCRAM-SHA-256 {first}"))
        .await
        .unwrap();
    assert!(r.status_line().starts_with("N1 NO"), "{}", r.status_line());
}
