//! `HttpAuthDirectory` against a tiny nginx-style auth server written here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use imapproxy_route::{
    Backend, CachedDirectory, Directory, Error, HttpAuthDirectory, LookupContext, Route,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves every request: OK → mail2 for password "right", an nginx error otherwise; user
/// "slow" gets no answer for 10 s. Returns the URL.
async fn auth_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let req = String::from_utf8(buf).unwrap();
                assert!(req.starts_with("GET /auth HTTP/1.1\r\n"), "{req}");
                for h in [
                    "Auth-Method: plain",
                    "Auth-Protocol: imap",
                    "Auth-Login-Attempt: 1",
                ] {
                    assert!(req.contains(h), "{req}");
                }
                let answer = if req.contains("Auth-User: slow\r\n") {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n\r\n".to_owned()
                } else if req.contains("Auth-Pass: right\r\n")
                    && req.contains("Client-IP: 192.0.2.42\r\n")
                {
                    "HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n\
                     Auth-Port: 10144\r\nContent-Length: 0\r\n\r\n"
                        .to_owned()
                } else {
                    "HTTP/1.1 200 OK\r\nAuth-Status: Invalid login or password\r\n\
                     Auth-Wait: 3\r\n\r\n"
                        .to_owned()
                };
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/auth")
}

fn directory(url: &str) -> CachedDirectory<HttpAuthDirectory> {
    let backends = [
        Backend::new("mail1", "127.0.0.1:10143"),
        Backend::new("mail2", "127.0.0.1:10144"),
    ];
    let http = HttpAuthDirectory::new(url)
        .unwrap()
        .with_backends(&backends);
    CachedDirectory::new(http, Duration::from_secs(30), Duration::from_millis(500))
        .keyed_by_password()
}

#[tokio::test]
async fn ok_routes_to_the_named_backend() {
    let dir = directory(&auth_server().await);
    let ctx = LookupContext::new("alice")
        .with_password(b"right")
        .with_client_ip("192.0.2.42".parse().unwrap());
    assert_eq!(
        dir.lookup_with(&ctx).await,
        Ok(Some(Route::Backend("mail2".into())))
    );
}

#[tokio::test]
async fn an_error_status_is_denied_with_the_service_text() {
    let dir = directory(&auth_server().await);
    let ctx = LookupContext::new("alice")
        .with_password(b"wrong")
        .with_client_ip("192.0.2.42".parse().unwrap());
    assert_eq!(
        dir.lookup_with(&ctx).await,
        Err(Error::Denied {
            message: "Invalid login or password".into(),
            wait: Some(Duration::from_secs(3)),
        })
    );
    // Refusals are not cached: the right password afterwards is routed...
    let right = ctx.with_password(b"right");
    assert!(dir.lookup_with(&right).await.unwrap().is_some());
    // ...and a cached OK does not let a wrong password through.
    assert!(matches!(
        dir.lookup_with(&ctx).await,
        Err(Error::Denied { .. })
    ));
}

#[tokio::test]
async fn a_slow_service_is_unavailable_after_the_timeout() {
    let dir = directory(&auth_server().await);
    let started = std::time::Instant::now();
    let got = dir.lookup_with(&LookupContext::new("slow")).await;
    assert!(
        matches!(got, Err(Error::DirectoryUnavailable(_))),
        "{got:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_dead_service_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth", listener.local_addr().unwrap());
    drop(listener);
    let got = directory(&url).lookup("alice").await;
    assert!(
        matches!(got, Err(Error::DirectoryUnavailable(_))),
        "{got:?}"
    );
}
