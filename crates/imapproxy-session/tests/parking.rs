//! Parking: more clients of one user than `max_per_user` all make progress, because a session
//! quiet between commands lends its backend session to a waiting one and is re-homed at its
//! next command. Dovecot is held to the same cap, so one session too many would be refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::start_proxy_pooled;
use imapproxy_pool::PoolSettings;
use imapproxy_session::SessionSettings;
use imapproxy_testkit::{Dovecot, TestClient};

const CAP: u32 = 4;

fn dovecot() -> &'static Dovecot {
    static D: OnceLock<Dovecot> = OnceLock::new();
    D.get_or_init(|| {
        Dovecot::builder()
            .users(2)
            .max_userip_connections(CAP)
            .start()
            .unwrap()
    })
}

/// SELECT + FETCH of every message's flags and size: what the loop compares.
async fn snapshot(c: &mut TestClient, n: usize) -> String {
    let s = c.cmd(&format!("s{n}"), "SELECT INBOX").await.unwrap();
    assert!(s.tagged_ok(), "{}", s.text());
    let f = c
        .cmd(&format!("f{n}"), "FETCH 1:* (UID RFC822.SIZE)")
        .await
        .unwrap();
    assert!(f.tagged_ok(), "{}", f.text());
    f.untagged().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_of_one_user_share_four_backend_sessions() {
    let settings = SessionSettings {
        park_after: Some(Duration::from_millis(100)),
        ..SessionSettings::default()
    };
    let pool = PoolSettings {
        reuse: true,
        warm: 0,
        max_per_user: CAP as usize,
        // Shorter than a worker's whole run (3 × 2 s quiet): without parking, the workers
        // queued behind the first four would time out with NO [LIMIT].
        wait_timeout: Duration::from_secs(5),
        ..PoolSettings::default()
    };
    let (proxy, pool) = start_proxy_pooled(&[dovecot().imap_addr()], settings, pool).await;
    let (user, pass) = dovecot().user(1);
    let mut reference = TestClient::connect(dovecot().imap_addr()).await.unwrap();
    assert!(reference.login(&user, &pass).await.unwrap().tagged_ok());
    let expected = snapshot(&mut reference, 0).await;
    assert!(reference.logout().await.unwrap().tagged_ok());

    let addr = proxy.plain;
    let mut workers = Vec::new();
    for _ in 0..20 {
        let (user, pass, expected) = (user.clone(), pass.clone(), expected.clone());
        workers.push(tokio::spawn(async move {
            let mut c = TestClient::connect(addr).await.unwrap();
            c.set_timeout(Duration::from_secs(30));
            let r = c.login(&user, &pass).await.unwrap();
            assert!(r.tagged_ok(), "login: {}", r.text());
            for n in 1..=3 {
                assert_eq!(snapshot(&mut c, n).await, expected);
                // Quiet between commands: long enough to park when others wait.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            assert!(c.logout().await.unwrap().tagged_ok());
        }));
    }
    let all = async {
        for w in workers {
            w.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every worker finished");
    assert!(pool.status().slots_in_use <= CAP as usize);
    // Dovecot refused nothing: the cap held at the backend.
    assert_eq!(
        dovecot().log_count("Maximum number of connections"),
        0,
        "{}",
        dovecot().log()
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_session_logs_out_at_once_while_its_slot_is_busy() {
    let settings = SessionSettings {
        park_after: Some(Duration::from_millis(50)),
        ..SessionSettings::default()
    };
    let pool = PoolSettings {
        reuse: true,
        warm: 0,
        max_per_user: 1,
        wait_timeout: Duration::from_secs(3),
        ..PoolSettings::default()
    };
    let (proxy, _pool) = start_proxy_pooled(&[dovecot().imap_addr()], settings, pool).await;
    let (user, pass) = dovecot().user(2);
    let mut a = TestClient::connect(proxy.plain).await.unwrap();
    assert!(a.login(&user, &pass).await.unwrap().tagged_ok());
    assert!(a.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
    // B waits for the one slot; A, quiet, parks and B gets its backend session.
    let mut b = TestClient::connect(proxy.plain).await.unwrap();
    assert!(b.login(&user, &pass).await.unwrap().tagged_ok());
    let busy = tokio::spawn(async move {
        for n in 0..100 {
            let r = b.cmd(&format!("n{n}"), "NOOP").await.unwrap();
            assert!(r.tagged_ok(), "{}", r.text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A's LOGOUT needs no backend: answered at once, not after B's slot frees up.
    let started = std::time::Instant::now();
    let r = a.logout().await.unwrap();
    assert!(r.text().contains("* BYE") && r.tagged_ok(), "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "LOGOUT waited {:?} for a backend session",
        started.elapsed()
    );
    assert!(a.expect_eof(Duration::from_secs(3)).await);
    let mut b = busy.await.unwrap();
    assert!(b.logout().await.unwrap().tagged_ok());
}
