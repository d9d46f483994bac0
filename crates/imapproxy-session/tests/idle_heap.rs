//! What an idle logged-in session costs in heap, counted exactly: this test binary's global
//! allocator counts live bytes per allocation size, 200 sessions log in against Dovecot and
//! sit idle, then wait in IDLE on a selected mailbox; the growth per session is checked against
//! a budget at each step.
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
/// Measured 2,144 bytes (Rust 1.95, tokio 1.54, this test's debug build) in 9 allocations:
/// the relay's boxed state 784, the session task 384, three socket registrations of 256,
/// the session's `Control` (how kicks, moves, the shutdown, its idle deadline and a waiting
/// client wake it) 48, the user's name and password kept for a re-home 10 (one
/// allocation), the backend's address 15, and growth of shared tables (the registry's entry
/// included) spread over the sessions. (Before: 2,607 with a timer per session (112), a future per cause beside the
/// relay's own (requested, shutdown, a waiting client: 232), three more copies of the user's
/// name, and wider counters, timeouts and credentials in the relay's state (96);
/// 2,660 with a relay future that kept its arguments' slots; 2,820 with a session task in
/// tokio's 512-byte cell; 3,280 with each direction's framer, buffer and offsets (248 bytes)
/// kept while at rest; 4,110 with a relay future that kept slots for the values of its rare
/// ways out (a parked wait, a re-home's reply, the last answer) beside the relay's own, a
/// session task that kept its greeting and the slots of its arguments, and a 160-byte list
/// of replies to time kept by every session that had sent a command; 4,600 before that.)
const BUDGET: isize = 2_450;

/// What waiting in `IDLE` on a selected mailbox adds per session: the mailbox's state (80
/// bytes) and its name, and the `IDLE` in flight (96 bytes; its bytes are not kept, a re-home
/// starts it again from its tag). Measured 183 bytes. (Before, by the same types' sizes: 261,
/// with a 112-byte mailbox state of 64-bit numbers, a 136-byte command in flight around a
/// 64-byte inline tag, and the 8-byte `IDLE` line kept for a replay that never used it.)
const IDLE_BUDGET: isize = 230;

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

    // The same sessions wait in IDLE on a selected mailbox, as a mail client or a worker
    // does: what that adds (the mailbox's state and the IDLE in flight).
    for c in &mut clients {
        until(c, b"s SELECT INBOX\r\n", b"s OK").await;
        until(c, b"i IDLE\r\n", b"+ ").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let in_idle = (counting::live() - before) / n as isize;
    let grown = counting::grown(&sizes_before, n);
    println!("heap per session in IDLE: {in_idle} bytes; by size: {grown:?}");
    assert!(
        in_idle - per_session <= IDLE_BUDGET,
        "IDLE adds {} bytes of heap per session (budget {IDLE_BUDGET}): {grown:?}",
        in_idle - per_session
    );
    drop(clients);
}

/// Sends `command` and reads until a line starting with `answer` has come whole.
async fn until(c: &mut TcpStream, command: &[u8], answer: &[u8]) {
    c.write_all(command).await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = c.read(&mut b).await.unwrap();
        assert!(n > 0, "{:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
        let done = got.ends_with(b"\r\n")
            && got
                .split(|&b| b == b'\n')
                .any(|line| line.starts_with(answer));
        if done {
            return;
        }
    }
}
