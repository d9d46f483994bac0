//! Routing through the proxy to two real Dovecot instances sharing one mail store: each
//! instance's own log shows where every login landed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::start_proxy_routed;
use imapproxy_pool::PoolSettings;
use imapproxy_route::{RendezvousHash, StaticMap};
use imapproxy_session::SessionSettings;
use imapproxy_testkit::{Dovecot, TestClient, shared_mail_dir};

fn no_reuse() -> PoolSettings {
    PoolSettings {
        reuse: false,
        warm: 0,
        ..PoolSettings::default()
    }
}

async fn login(addr: std::net::SocketAddr, user: &str, pass: &str) {
    let mut c = TestClient::connect(addr).await.unwrap();
    let r = c.login(user, pass).await.unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    c.logout().await.unwrap();
}

fn landed(d: &Dovecot, user: &str) -> usize {
    d.logins(user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_routing_sends_each_user_to_the_same_backend_and_a_map_entry_wins() {
    let store = shared_mail_dir().unwrap();
    let a = Dovecot::builder()
        .users(8)
        .mail_dir(store.path())
        .start()
        .unwrap();
    let b = Dovecot::builder()
        .users(8)
        .mail_dir(store.path())
        .start()
        .unwrap();

    // Hash routing: three logins per user, all on one instance.
    let (proxy, _pool) = start_proxy_routed(
        &[a.imap_addr(), b.imap_addr()],
        SessionSettings::default(),
        no_reuse(),
        Arc::new(RendezvousHash::new()),
        None,
    )
    .await;
    let mut per_backend = [0usize; 2];
    for i in 1..=6 {
        let (user, pass) = a.user(i);
        for _ in 0..3 {
            login(proxy.plain, &user, &pass).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (on_a, on_b) = (landed(&a, &user), landed(&b, &user));
        assert!(
            (on_a, on_b) == (3, 0) || (on_a, on_b) == (0, 3),
            "{user} was split: {on_a} on a, {on_b} on b"
        );
        per_backend[usize::from(on_b > 0)] += 1;
    }
    // Deterministic (fixed hash, fixed names): both backends get users.
    assert!(per_backend[0] > 0 && per_backend[1] > 0, "{per_backend:?}");
    drop(proxy);

    // A map entry wins over the hash: pin user7 and user8 to backend1 and backend0.
    let map: StaticMap = "user7 backend1\nuser8 backend0\n".parse().unwrap();
    let (proxy, _pool) = start_proxy_routed(
        &[a.imap_addr(), b.imap_addr()],
        SessionSettings::default(),
        no_reuse(),
        Arc::new(RendezvousHash::new()),
        Some(Arc::new(map)),
    )
    .await;
    let (u7, p7) = a.user(7);
    let (u8, p8) = a.user(8);
    for _ in 0..2 {
        login(proxy.plain, &u7, &p7).await;
        login(proxy.plain, &u8, &p8).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!((landed(&a, &u7), landed(&b, &u7)), (0, 2));
    assert_eq!((landed(&a, &u8), landed(&b, &u8)), (2, 0));
}
