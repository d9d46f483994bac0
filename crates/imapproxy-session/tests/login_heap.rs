//! What a login costs in heap while it waits on the backend, counted exactly: in a burst of
//! logins every session holds its pre-auth state and its half-made backend connection at
//! once, and the allocator's high-water mark keeps that memory resident afterwards (glibc
//! returns little of it), so it weighs on the memory of every idle session behind it.
//!
//! The backend here accepts connections and never greets: each login stays in flight for as
//! long as the test needs, a fault Dovecot cannot be asked to produce.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/counting.rs"]
mod counting;

use std::time::Duration;

use imapproxy_pool::PoolSettings;
use imapproxy_session::SessionSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Heap per login in flight, with the test client's socket registration. Measured 4,203
/// bytes (Rust 1.95, tokio 1.54, this test's debug build) in 10 allocations: the session's
/// boxed pre-auth state 3,240 (the login's whole chain of futures down to the backend
/// connection), the session task 384, two socket registrations of 256, the `LOGIN` line and
/// a few names. (Before: 6,659, with the backend TLS handshake, STARTTLS, a literal login, a
/// capability refresh, a pool revival and a warm take inline in every login's future (4,672
/// bytes instead of 3,240) and a 1 KiB pre-auth read buffer per session.)
const BUDGET: isize = 4_600;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// A client that reads the proxy's greeting, sends `LOGIN` and waits.
async fn logging_in(addr: std::net::SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 512];
    let mut got = 0;
    while got == 0 || !b[..got].ends_with(b"\r\n") {
        let n = c.read(&mut b[got..]).await.unwrap();
        assert!(n > 0, "closed before the greeting");
        got += n;
    }
    c.write_all(b"a LOGIN user1 secret\r\n").await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_flight_stays_within_its_heap_budget() {
    // Accepts and holds every connection, silent.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let (proxy, _pool) = common::start_proxy_pooled(
        &[backend],
        SessionSettings::default(),
        PoolSettings {
            reuse: false,
            warm: 0,
            max_per_user: 1000,
            ..PoolSettings::default()
        },
    )
    .await;
    // Warm up: lazily built tables reach their size first.
    let mut warm = Vec::new();
    for _ in 0..10 {
        warm.push(logging_in(proxy.plain).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let n = 50;
    let mut clients = Vec::with_capacity(n);
    let sizes_before = counting::sizes();
    let before = counting::live();
    for _ in 0..n {
        clients.push(logging_in(proxy.plain).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_login = (counting::live() - before) / n as isize;
    let grown = counting::grown(&sizes_before, n);
    // Every login is still waiting: none was answered (refused, throttled, timed out).
    for c in &clients {
        let mut b = [0u8; 64];
        match c.try_read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a login was answered: {other:?} {:?}", &b[..]),
        }
    }
    println!("heap per login in flight: {per_login} bytes; by size: {grown:?}");
    assert!(
        per_login <= BUDGET,
        "a login in flight holds {per_login} bytes of heap (budget {BUDGET}): {grown:?}"
    );
    drop(clients);
    drop(warm);
    held.abort();
}
