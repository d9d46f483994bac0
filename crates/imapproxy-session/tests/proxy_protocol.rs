//! PROXY protocol against a real Dovecot: inbound headers (v1, v2) from trusted peers decide
//! the client address Dovecot logs; untrusted peers and garbage are dropped unanswered; an
//! outbound v2 header reaches Dovecot's `haproxy = yes` listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imapproxy_pool::{BackendConn, BackendTarget, ClientAddrs, Credentials, PoolSettings, Secret};
use imapproxy_route::{Backend, BackendId, Registry, RoundRobin};
use imapproxy_session::{
    ListenerSettings, Proxy, ProxyProtocolSettings, SessionSettings, TrustedNetworks, Upstreams,
    serve,
};
use imapproxy_testkit::{Dovecot, TestClient};
use imapproxy_tls::TlsMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

fn dovecot() -> &'static Dovecot {
    Dovecot::shared()
}

/// One plain listener (plaintext auth allowed) in front of one backend; stopped on drop.
struct PpProxy {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for PpProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `inbound`: the listener expects a PROXY header from `trusted`.
async fn start(target: BackendTarget, inbound: bool, trusted: &[&str]) -> PpProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = SessionSettings {
        proxy_protocol: ProxyProtocolSettings {
            listeners: if inbound { vec![addr] } else { Vec::new() },
            trusted: TrustedNetworks::parse(trusted).unwrap(),
            timeout: Duration::from_secs(2),
        },
        ..SessionSettings::default()
    };
    let id = BackendId::new("backend0");
    let upstreams = Upstreams {
        registry: Registry::new(vec![Backend::new(id.clone(), target.addr.clone())]).unwrap(),
        selector: Arc::new(RoundRobin::default()),
        directory: None,
        targets: HashMap::from([(id, target)]),
        health: None,
    };
    let pool = PoolSettings {
        reuse: false,
        warm: 2,
        ..PoolSettings::default()
    };
    let proxy = Arc::new(Proxy::new(settings, upstreams, pool).unwrap());
    tokio::spawn(proxy.pool().clone().maintain());
    let listener_settings = Arc::new(ListenerSettings {
        tls: TlsMode::None,
        allow_plaintext_auth: true,
        server_tls: None,
    });
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
                _ = stop.cancelled() => return,
            };
            tokio::spawn(serve(
                Arc::clone(&proxy),
                Arc::clone(&listener_settings),
                tcp,
                peer,
                stop.clone(),
            ));
        }
    });
    PpProxy { addr, shutdown }
}

fn v2_header(src: &str, dst: SocketAddr) -> Vec<u8> {
    imapproxy_pool::proxy_v2_header(Some(ClientAddrs {
        source: src.parse().unwrap(),
        destination: dst,
    }))
    .unwrap()
}

/// Sends `header` and then logs in as user `i`, over one raw connection.
async fn login_behind_header(addr: SocketAddr, header: &[u8], i: usize) -> String {
    let (user, pass) = dovecot().user(i);
    let mut client = TestClient::connect_without_greeting(addr).await.unwrap();
    client.send_raw(header).await.unwrap();
    client.read_greeting().await.unwrap();
    let resp = client.login(&user, &pass).await.unwrap();
    assert!(resp.tagged_ok(), "{}", resp.status_line());
    user
}

/// Whether the peer closes without sending a byte (EOF or reset) within `within`.
async fn dropped_silently(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Reads until a line starting with `prefix` has arrived whole; returns everything read.
async fn read_until(tcp: &mut TcpStream, prefix: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        let done = text
            .split_inclusive("\r\n")
            .any(|l| l.starts_with(prefix) && l.ends_with("\r\n"));
        if done {
            return format!("\r\n{text}");
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("timed out")
            .unwrap();
        assert!(n > 0, "EOF after {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn expect_rip(user: &str, rip: &str) {
    let needle = format!("user=<{user}>, method=PLAIN, rip={rip},");
    let n = dovecot().wait_for_log(&needle, 1, Duration::from_secs(5));
    assert!(n >= 1, "no login line {needle:?} in:\n{}", dovecot().log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_v2_header_sets_client_address() {
    let proxy = start(
        BackendTarget::plain(dovecot().imap_addr().to_string()),
        true,
        &["127.0.0.0/8"],
    )
    .await;
    let header = v2_header("203.0.113.7:5555", proxy.addr);
    let user = login_behind_header(proxy.addr, &header, 11).await;
    expect_rip(&user, "203.0.113.7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_v1_header_sets_client_address() {
    let proxy = start(
        BackendTarget::plain(dovecot().imap_addr().to_string()),
        true,
        &["127.0.0.0/8"],
    )
    .await;
    let header = format!(
        "PROXY TCP4 198.51.100.23 127.0.0.1 6666 {}\r\n",
        proxy.addr.port()
    );
    let user = login_behind_header(proxy.addr, header.as_bytes(), 12).await;
    expect_rip(&user, "198.51.100.23");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_local_header_keeps_tcp_peer() {
    let proxy = start(
        BackendTarget::plain(dovecot().imap_addr().to_string()),
        true,
        &["127.0.0.0/8"],
    )
    .await;
    let user = login_behind_header(proxy.addr, b"PROXY UNKNOWN\r\n", 13).await;
    expect_rip(&user, "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_untrusted_peer_is_dropped() {
    let proxy = start(
        BackendTarget::plain(dovecot().imap_addr().to_string()),
        true,
        &["10.0.0.0/8"],
    )
    .await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&v2_header("203.0.113.7:5555", proxy.addr))
        .await
        .unwrap();
    assert!(dropped_silently(&mut tcp, Duration::from_secs(3)).await);
    // Silent untrusted peers are dropped too, at once.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(dropped_silently(&mut tcp, Duration::from_secs(1)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_garbage_or_missing_header_is_dropped() {
    let proxy = start(
        BackendTarget::plain(dovecot().imap_addr().to_string()),
        true,
        &["127.0.0.0/8"],
    )
    .await;
    for junk in [
        &b"a LOGIN user1 pass1\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 999.2.3.4 5.6.7.8 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00\x00\x00\x00\x00",
    ] {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(junk).await.unwrap();
        assert!(
            dropped_silently(&mut tcp, Duration::from_secs(3)).await,
            "not dropped: {junk:?}"
        );
    }
    // A trusted peer that sends nothing is dropped after the header timeout (2 s here).
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(dropped_silently(&mut tcp, Duration::from_secs(5)).await);
    // The listener still serves well-formed clients.
    let header = v2_header("203.0.113.8:1", proxy.addr);
    let user = login_behind_header(proxy.addr, &header, 14).await;
    expect_rip(&user, "203.0.113.8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_header_carries_client_address() {
    let mut target = BackendTarget::plain(dovecot().haproxy_addr().to_string());
    target.proxy_protocol = true;
    let proxy = start(target, false, &["127.0.0.0/8"]).await;
    let (user, pass) = dovecot().user(15);
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.5:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(proxy.addr).await.unwrap();
    let greeting = read_until(&mut tcp, "* ").await;
    assert!(greeting.contains("\r\n* OK"), "{greeting}");
    tcp.write_all(format!("a LOGIN {user} {pass}\r\nb SELECT INBOX\r\n").as_bytes())
        .await
        .unwrap();
    let answers = read_until(&mut tcp, "b ").await;
    assert!(answers.contains("\r\na OK"), "{answers}");
    assert!(answers.contains("\r\nb OK"), "{answers}");
    expect_rip(&user, "127.0.0.5");
}

/// Without the proxy's `ID x-originating-ip`: only the PROXY header can tell Dovecot the
/// address, and a `LOCAL` header keeps the real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_header_alone_sets_rip() {
    let mut target = BackendTarget::plain(dovecot().haproxy_addr().to_string());
    target.proxy_protocol = true;
    let (user, pass) = dovecot().user(16);
    let creds = Credentials {
        username: user.clone(),
        password: Secret::new(pass.into_bytes()),
    };
    let client = ClientAddrs {
        source: "192.0.2.44:4444".parse().unwrap(),
        destination: "127.0.0.1:1143".parse().unwrap(),
    };
    let mut conn = BackendConn::connect_for(&target, Some(client))
        .await
        .unwrap();
    conn.login(&creds, &[]).await.unwrap();
    expect_rip(&user, "192.0.2.44");

    let (user, pass) = dovecot().user(17);
    let creds = Credentials {
        username: user.clone(),
        password: Secret::new(pass.into_bytes()),
    };
    let mut conn = BackendConn::connect(&target).await.unwrap();
    conn.login(&creds, &[]).await.unwrap();
    expect_rip(&user, "127.0.0.1");
}
