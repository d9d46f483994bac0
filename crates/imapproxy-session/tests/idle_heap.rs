//! What an idle logged-in session costs in heap, counted exactly: this test binary's global
//! allocator counts live bytes per allocation size, 200 sessions log in against Dovecot and
//! sit idle, and the growth per session is checked against a budget.
//!
//! RSS over thousands of sessions (`loadbench idle-memory`) is the operator's figure; this is
//! its deterministic part, fine-grained enough to catch a regression of a few hundred bytes:
//! the relay's future once kept its arguments' slots after moving out of them (3,352 bytes
//! per session instead of 2,160, 5.7 KiB in all).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/counting.rs"]
mod counting;

use std::time::Duration;

use imapproxy_testkit::Dovecot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Heap per idle session, the proxy's and the test client's socket registration together.
/// Measured about 2,660 bytes (Rust 1.95, tokio 1.54, this test's debug build) in 13
/// allocations: the relay's boxed state 1,168, the session task 384, three socket
/// registrations of 256, the rest under 120, and growth of shared tables spread over the
/// sessions. (Before: 2,820 with a session task in tokio's 512-byte cell; 3,280 with each
/// direction's framer, buffer and offsets (248 bytes) kept while at rest; 4,110 with a relay
/// future that kept slots for the values of its rare ways out (a parked wait, a re-home's
/// reply, the last answer) beside the relay's own, a session task that kept its greeting and
/// the slots of its arguments, and a 160-byte list of replies to time kept by every session
/// that had sent a command; 4,600 before that.)
const BUDGET: isize = 2_900;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// A client holding no buffer of its own: greeting, `LOGIN`, then silence.
async fn idle_client(addr: std::net::SocketAddr, login: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 2048];
    let mut got = 0;
    while got == 0 || !b[..got].ends_with(b"\r\n") {
        got += c.read(&mut b[got..]).await.unwrap();
    }
    c.write_all(login).await.unwrap();
    got = 0;
    while !(b[..got].windows(4).any(|w| w == b"a OK") && b[..got].ends_with(b"\r\n")) {
        let n = c.read(&mut b[got..]).await.unwrap();
        assert!(n > 0, "{:?}", String::from_utf8_lossy(&b[..got]));
        got += n;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_logged_in_session_stays_within_its_heap_budget() {
    let d = Dovecot::builder()
        .users(1)
        .max_userip_connections(1000)
        .start()
        .unwrap();
    let (user, pass) = d.user(1);
    let (proxy, _pool) = common::start_proxy_unpooled(&[d.imap_addr()]).await;
    let login = format!("a LOGIN {user} {pass}\r\n").into_bytes();
    // Warm up: lazily built tables (registry, pool, runtime) reach their size first.
    let mut warm = Vec::new();
    for _ in 0..20 {
        warm.push(idle_client(proxy.plain, &login).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let n = 200;
    let mut clients = Vec::with_capacity(n);
    // The snapshot first: its own allocation must not count.
    let sizes_before = counting::sizes();
    let before = counting::live();
    for _ in 0..n {
        clients.push(idle_client(proxy.plain, &login).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_session = (counting::live() - before) / n as isize;
    let grown = counting::grown(&sizes_before, n);
    println!("heap per idle session: {per_session} bytes; by size: {grown:?}");
    assert!(
        per_session <= BUDGET,
        "an idle session holds {per_session} bytes of heap (budget {BUDGET}): {grown:?}"
    );
    drop(clients);
}
