//! An in-process proxy in front of the given backends, for integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use imapproxy_pool::{BackendTarget, PoolSettings, SessionPool};
use imapproxy_route::{Backend, BackendId, Registry, RoundRobin};
use imapproxy_session::{ListenerSettings, Proxy, SessionSettings, Upstreams, serve};
use imapproxy_tls::{ServerTls, TlsMode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running proxy: three listeners, stopped on drop.
pub struct TestProxy {
    /// `tls = none`, plaintext auth allowed.
    pub plain: SocketAddr,
    /// `tls = starttls`, plaintext auth refused before TLS.
    pub starttls: SocketAddr,
    /// `tls = implicit`.
    pub implicit: SocketAddr,
    /// The proxy itself, for its registry and counters.
    pub proxy: Arc<Proxy>,
    shutdown: CancellationToken,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start_proxy(backends: &[SocketAddr]) -> TestProxy {
    start_proxy_with(backends, SessionSettings::default()).await
}

pub async fn start_proxy_with(backends: &[SocketAddr], settings: SessionSettings) -> TestProxy {
    let pool = PoolSettings {
        reuse: false,
        warm: 0,
        ..PoolSettings::default()
    };
    start_proxy_pooled(backends, settings, pool).await.0
}

/// A proxy with pooling as `pool` says; also returns the pool for its counters.
pub async fn start_proxy_pooled(
    backends: &[SocketAddr],
    settings: SessionSettings,
    pool: PoolSettings,
) -> (TestProxy, SessionPool) {
    start_proxy_routed(
        backends,
        settings,
        pool,
        Arc::new(RoundRobin::default()),
        None,
    )
    .await
}

/// A proxy for the heap-budget tests: every session logs in to the backend (no reuse, no
/// warm connections), up to 1,000 of one user.
pub async fn start_proxy_unpooled(backends: &[SocketAddr]) -> (TestProxy, SessionPool) {
    start_proxy_pooled(
        backends,
        SessionSettings::default(),
        PoolSettings {
            reuse: false,
            warm: 0,
            max_per_user: 1000,
            ..PoolSettings::default()
        },
    )
    .await
}

/// A proxy with its own selector and directory; backends are named `backend0`, `backend1`...
pub async fn start_proxy_routed(
    backends: &[SocketAddr],
    settings: SessionSettings,
    pool: PoolSettings,
    selector: Arc<dyn imapproxy_route::Selector>,
    directory: Option<Arc<dyn imapproxy_route::Directory>>,
) -> (TestProxy, SessionPool) {
    let mut list = Vec::new();
    let mut targets = HashMap::new();
    for (i, addr) in backends.iter().enumerate() {
        let id = BackendId::new(format!("backend{i}"));
        list.push(Backend::new(id.clone(), addr.to_string()));
        targets.insert(id, BackendTarget::plain(addr.to_string()));
    }
    let upstreams = Upstreams {
        registry: Registry::new(list).unwrap(),
        selector,
        directory,
        targets,
        health: None,
    };
    let proxy = Arc::new(Proxy::new(settings, upstreams, pool).unwrap());
    let session_pool = proxy.pool().clone();
    tokio::spawn(session_pool.clone().maintain());
    let (tls, _pem) = ServerTls::self_signed(&[]).unwrap();
    let shutdown = CancellationToken::new();
    let mut addrs = Vec::new();
    for (mode, plaintext) in [
        (TlsMode::None, true),
        (TlsMode::StartTls, false),
        (TlsMode::Implicit, false),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let settings = Arc::new(ListenerSettings {
            tls: mode,
            allow_plaintext_auth: plaintext,
            server_tls: (mode != TlsMode::None).then(|| tls.clone()),
        });
        let proxy = Arc::clone(&proxy);
        let shutdown = shutdown.clone();
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
    (
        TestProxy {
            plain: addrs[0],
            starttls: addrs[1],
            implicit: addrs[2],
            proxy,
            shutdown,
        },
        session_pool,
    )
}

/// Reads lines until every tag in `tags` has its tagged response; returns all lines.
pub async fn read_tags(client: &mut imapproxy_testkit::TestClient, tags: &[&str]) -> Vec<Vec<u8>> {
    let mut pending: Vec<&str> = tags.to_vec();
    let mut lines = Vec::new();
    while !pending.is_empty() {
        let line = client.read_line().await.unwrap();
        pending.retain(|t| !(line.starts_with(t.as_bytes()) && line.get(t.len()) == Some(&b' ')));
        lines.push(line);
    }
    lines
}

/// [`start_proxy_pooled`] with every backend capped at `max_connections` backend connections
/// (`[[backends]] max_connections`, which the pool enforces).
pub async fn start_proxy_capped(
    backends: &[SocketAddr],
    settings: SessionSettings,
    pool: PoolSettings,
    max_connections: usize,
) -> (TestProxy, SessionPool) {
    let (proxy, session_pool) = start_proxy_pooled(backends, settings, pool).await;
    // Registering a backend again replaces its pool entry (and drops any warm connection
    // opened for the old one); no client has logged in yet.
    for (i, addr) in backends.iter().enumerate() {
        session_pool.add_backend(
            &format!("backend{i}"),
            BackendTarget::plain(addr.to_string()),
            max_connections,
        );
    }
    (proxy, session_pool)
}
