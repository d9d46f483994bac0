//! What an idle logged-in session costs in heap, counted exactly: this test binary's global
//! allocator counts live bytes per allocation size, 200 sessions log in against Dovecot and
//! sit idle, and the growth per session is checked against a budget.
//!
//! RSS over thousands of sessions (`loadbench idle-memory`) is the operator's figure; this is
//! its deterministic part, fine-grained enough to catch a regression of a few hundred bytes:
//! the relay's future once kept its arguments' slots after moving out of them (3,352 bytes
//! per session instead of 2,160, 5.7 KiB in all).
//!
//! `unsafe` is allowed in this file only: a `GlobalAlloc` cannot be written without it, and
//! it only forwards to the system allocator.
#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use imapproxy_pool::PoolSettings;
use imapproxy_session::SessionSettings;
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

/// Sizes counted one by one up to this; larger allocations share the last slot.
const SIZES: usize = 65_536;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];

struct Counting;

fn count(size: usize, delta: isize) {
    LIVE.fetch_add(delta * size as isize, Ordering::Relaxed);
    BY_SIZE[size.min(SIZES - 1)].fetch_add(delta, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        // SAFETY: as for `dealloc`; the new size is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

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
    let (proxy, _pool) = common::start_proxy_pooled(
        &[d.imap_addr()],
        SessionSettings::default(),
        PoolSettings {
            reuse: false,
            warm: 0,
            max_per_user: 1000,
            ..PoolSettings::default()
        },
    )
    .await;
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
    let sizes_before: Vec<isize> = BY_SIZE.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..n {
        clients.push(idle_client(proxy.plain, &login).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_session = (LIVE.load(Ordering::Relaxed) - before) / n as isize;
    let grown: Vec<String> = BY_SIZE
        .iter()
        .zip(&sizes_before)
        .enumerate()
        .filter_map(|(size, (now, then))| {
            let d = now.load(Ordering::Relaxed) - then;
            (d >= n as isize / 2).then(|| format!("{size} B x {:.1}", d as f64 / n as f64))
        })
        .collect();
    println!("heap per idle session: {per_session} bytes; by size: {grown:?}");
    assert!(
        per_session <= BUDGET,
        "an idle session holds {per_session} bytes of heap (budget {BUDGET}): {grown:?}"
    );
    drop(clients);
}
