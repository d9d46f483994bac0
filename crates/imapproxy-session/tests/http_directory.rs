//! An nginx-style HTTP auth service routes logins and refuses bad ones, through the proxy, in
//! front of a real Dovecot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::start_proxy_routed;
use imapproxy_pool::PoolSettings;
use imapproxy_route::{Backend, CachedDirectory, HttpAuthDirectory, RoundRobin};
use imapproxy_session::SessionSettings;
use imapproxy_testkit::{Dovecot, TestClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers `Auth-Status: OK` pointing at `backend` when `Auth-Pass` is the user's password
/// (`pass<N>` for `user<N>`), else nginx's usual refusal.
async fn auth_service(backend: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                        .unwrap_or("")
                        .to_owned()
                };
                let (user, pass) = (header("Auth-User"), header("Auth-Pass"));
                let good = !user.is_empty() && pass == user.replace("user", "pass");
                let reply = if good && header("Auth-Protocol") == "imap" {
                    format!(
                        "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: {}\r\nAuth-Port: {}\r\n\r\n",
                        backend.ip(),
                        backend.port()
                    )
                } else {
                    "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 1\r\n\r\n"
                        .to_owned()
                };
                let _ = tcp.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_auth_service_routes_and_refuses() {
    let dovecot = Dovecot::shared();
    let service = auth_service(dovecot.imap_addr()).await;
    let backends = [Backend::new("backend0", dovecot.imap_addr().to_string())];
    let http = HttpAuthDirectory::new(&format!("http://{service}/auth"))
        .unwrap()
        .with_backends(backends.iter());
    // Keyed by password too, as the binary builds it: a cached OK for one password must not
    // skip the service for another.
    let directory = CachedDirectory::new(http, Duration::from_secs(30), Duration::from_secs(2))
        .keyed_by_password();
    let (proxy, _pool) = start_proxy_routed(
        &[dovecot.imap_addr()],
        SessionSettings::default(),
        PoolSettings {
            reuse: false,
            warm: 0,
            ..PoolSettings::default()
        },
        Arc::new(RoundRobin::default()),
        Some(Arc::new(directory)),
    )
    .await;

    let (user, pass) = dovecot.user(11);
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let r = c.login(&user, &pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());

    // The service's refusal reaches the client as an ordinary authentication failure; its
    // text is not shown, and Dovecot never sees the attempt.
    // Dovecot's auth process logs every password it checks for the user.
    let checked = || dovecot.log_count(&format!("passwd-file({user},"));
    let before = checked();
    let mut c = TestClient::connect(proxy.plain).await.unwrap();
    let r = c.login(&user, "wrong").await.unwrap();
    assert!(
        r.status_line().contains("NO [AUTHENTICATIONFAILED]"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("Invalid login"), "{}", r.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(checked(), before, "the refused attempt reached Dovecot");
}
