//! Health checks and failover of new sessions, against two real Dovecot instances sharing one
//! mail store: a killed backend is marked down and new logins land on the survivor; a drained
//! backend gets no new sessions while its running ones continue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imapproxy_pool::{BackendTarget, ImapCheck, PoolSettings};
use imapproxy_route::{
    Backend, BackendId, Health, HealthMonitor, HealthSettings, MonitorHandle, Registry, RoundRobin,
};
use imapproxy_session::{
    ImapHealthCheck, ListenerSettings, Proxy, SessionSettings, Upstreams, serve,
};
use imapproxy_testkit::{Dovecot, TestClient, shared_mail_dir};
use imapproxy_tls::TlsMode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct Running {
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    _monitor: MonitorHandle,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Running {
    fn health(&self, id: &str) -> Health {
        self.proxy.upstreams().registry.state(id).unwrap().health()
    }
}

/// Round-robin over `backend0`, `backend1`, ... with a health monitor (interval 200 ms,
/// fall 1, rise 1) feeding the sessions' passive reports too.
async fn start(backends: &[SocketAddr]) -> Running {
    start_with(backends, INTERVAL).await
}

async fn start_with(backends: &[SocketAddr], interval: Duration) -> Running {
    let mut list = Vec::new();
    let mut targets = HashMap::new();
    for (i, addr) in backends.iter().enumerate() {
        let id = BackendId::new(format!("backend{i}"));
        list.push(Backend::new(id.clone(), addr.to_string()));
        let mut target = BackendTarget::plain(addr.to_string());
        target.connect_timeout = CONNECT_TIMEOUT;
        target.io_timeout = Duration::from_secs(5);
        targets.insert(id, target);
    }
    let registry = Registry::new(list).unwrap();
    let monitor = Arc::new(HealthMonitor::new(
        &registry,
        Arc::new(ImapHealthCheck::new(targets.clone(), ImapCheck::new())),
        HealthSettings {
            interval,
            timeout: CONNECT_TIMEOUT,
            rise: 1,
            fall: 1,
        },
    ));
    let handle = monitor.spawn();
    let upstreams = Upstreams {
        registry,
        selector: Arc::new(RoundRobin::default()),
        directory: None,
        targets,
        health: Some(monitor),
    };
    let pool = PoolSettings {
        reuse: false,
        warm: 0,
        ..PoolSettings::default()
    };
    let proxy = Arc::new(Proxy::new(SessionSettings::default(), upstreams, pool).unwrap());
    tokio::spawn(proxy.pool().clone().maintain());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = Arc::new(ListenerSettings {
        tls: TlsMode::None,
        allow_plaintext_auth: true,
        server_tls: None,
    });
    let shutdown = CancellationToken::new();
    {
        let (proxy, shutdown) = (Arc::clone(&proxy), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
                    _ = shutdown.cancelled() => return,
                };
                tokio::spawn(serve(
                    Arc::clone(&proxy),
                    Arc::clone(&settings),
                    tcp,
                    peer,
                    shutdown.clone(),
                ));
            }
        });
    }
    Running {
        addr,
        proxy,
        _monitor: handle,
        shutdown,
    }
}

fn two_backends(store: &std::path::Path) -> (Dovecot, Dovecot) {
    let a = Dovecot::builder().users(4).mail_dir(store).start().unwrap();
    let b = Dovecot::builder().users(4).mail_dir(store).start().unwrap();
    (a, b)
}

async fn logged_in(addr: SocketAddr, user: &str, pass: &str) -> TestClient {
    let mut c = TestClient::connect(addr).await.unwrap();
    let r = c.login(user, pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    c
}

fn login_line(user: &str) -> String {
    format!("imap-login: Info: Login: user=<{user}>,")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_backend_is_killed_new_logins_all_succeed_on_the_survivor() {
    let store = shared_mail_dir().unwrap();
    let (mut a, b) = two_backends(store.path());
    let proxy = start(&[a.imap_addr(), b.imap_addr()]).await;
    let (user, pass) = a.user(1);

    // Both take sessions while healthy.
    for _ in 0..2 {
        let mut c = logged_in(proxy.addr, &user, &pass).await;
        c.logout().await.unwrap();
    }
    assert_eq!(
        a.wait_for_log(&login_line(&user), 1, Duration::from_secs(5)),
        1
    );
    assert_eq!(
        b.wait_for_log(&login_line(&user), 1, Duration::from_secs(5)),
        1
    );
    assert_eq!(proxy.health("backend0"), Health::Up);

    a.kill();
    tokio::time::sleep(INTERVAL + CONNECT_TIMEOUT).await;
    assert_eq!(proxy.health("backend0"), Health::Down);
    assert_eq!(proxy.health("backend1"), Health::Up);

    for i in 0..10 {
        let mut c = TestClient::connect(proxy.addr).await.unwrap();
        let r = c.login(&user, &pass).await.unwrap();
        assert!(r.tagged_ok(), "login {i} after the kill: {}", r.text());
        assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
        c.logout().await.unwrap();
    }
    assert_eq!(
        b.wait_for_log(&login_line(&user), 11, Duration::from_secs(5)),
        11,
        "all ten landed on the survivor"
    );
    assert_eq!(proxy.health("backend0"), Health::Down);
    let record = proxy
        .proxy
        .upstreams()
        .health
        .as_ref()
        .unwrap()
        .record("backend0")
        .unwrap();
    assert!(
        record.failures >= 1 && record.last_error.is_some(),
        "{record:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_gets_no_new_sessions_while_its_running_one_continues() {
    let store = shared_mail_dir().unwrap();
    let (a, b) = two_backends(store.path());
    let proxy = start(&[a.imap_addr(), b.imap_addr()]).await;
    let registry = &proxy.proxy.upstreams().registry;
    let (user, pass) = a.user(2);

    // Pin the first session to backend0 by draining backend1 for a moment.
    registry.set_health("backend1", Health::Draining).unwrap();
    let mut running = logged_in(proxy.addr, &user, &pass).await;
    assert!(running.cmd("s1", "SELECT INBOX").await.unwrap().tagged_ok());
    assert_eq!(
        a.wait_for_log(&login_line(&user), 1, Duration::from_secs(5)),
        1
    );
    registry.set_health("backend1", Health::Up).unwrap();

    registry.set_health("backend0", Health::Draining).unwrap();
    for i in 0..6 {
        let mut c = logged_in(proxy.addr, &user, &pass).await;
        assert!(c.cmd("s", "NOOP").await.unwrap().tagged_ok(), "session {i}");
        c.logout().await.unwrap();
    }
    assert_eq!(
        b.wait_for_log(&login_line(&user), 6, Duration::from_secs(5)),
        6
    );
    // Several check rounds passed: a healthy drained backend stays drained.
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(a.logins(&user), 1, "no new session on the drained backend");
    assert_eq!(proxy.health("backend0"), Health::Draining);

    // The session that was already there keeps working.
    assert!(running.cmd("s2", "NOOP").await.unwrap().tagged_ok());
    assert!(
        running
            .cmd("s3", "FETCH 1:* (FLAGS)")
            .await
            .unwrap()
            .tagged_ok()
    );
    running.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_connect_marks_the_backend_down_before_the_next_check() {
    let store = shared_mail_dir().unwrap();
    let (mut a, b) = two_backends(store.path());
    // The first round runs at start; the next one only in an hour.
    let proxy = start_with(&[a.imap_addr(), b.imap_addr()], Duration::from_secs(3600)).await;
    let (user, pass) = a.user(3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.health("backend0"), Health::Up);
    a.kill();
    // Round-robin tries backend0 within two logins; its refused connect is reported
    // (fall 1) and the login falls through to backend1 unseen by the client.
    for _ in 0..2 {
        let mut c = logged_in(proxy.addr, &user, &pass).await;
        c.logout().await.unwrap();
    }
    assert_eq!(proxy.health("backend0"), Health::Down);
    let record = proxy
        .proxy
        .upstreams()
        .health
        .as_ref()
        .unwrap()
        .record("backend0")
        .unwrap();
    assert_eq!(record.checks, 1, "only the first round ran: {record:?}");
    assert_eq!(
        b.wait_for_log(&login_line(&user), 2, Duration::from_secs(5)),
        2
    );
}
