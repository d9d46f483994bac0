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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Heap per login in flight at the backend, with the test client's socket registration.
/// Measured 5,675 bytes (Rust 1.95, tokio 1.54, this test's debug build) in about 30
/// allocations: the session's boxed pre-auth state 3,240 (the login's whole chain of
/// futures down to the backend connection), two of 384 (one the session's task), four of
/// 256 (three of them socket registrations: the test client's and the session's two), and
/// small ones (the `LOGIN` line, the user's name in the throttle, pool and routing tables,
/// the backend connection's response reader). (Before: 9,155, with
/// the backend TLS handshake, STARTTLS, a literal login, a capability refresh, a pool revival
/// and a warm take inline in every login's future (4,672 bytes instead of 3,240), a 1 KiB
/// pre-auth read buffer per session and a 1 KiB backend read buffer reserved while waiting
/// for the server.)
const BUDGET: isize = 6_100;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// A client that reads the proxy's greeting, sends `LOGIN` as `user` and waits. Each login
/// is another user's: the throttle lets only a few logins of one user with an unproven
/// password reach the backends at once, and queued ones would not be in flight.
async fn logging_in(addr: std::net::SocketAddr, user: usize) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 512];
    let mut got = 0;
    while got == 0 || !b[..got].ends_with(b"\r\n") {
        let n = c.read(&mut b[got..]).await.unwrap();
        assert!(n > 0, "closed before the greeting");
        got += n;
    }
    c.write_all(format!("a LOGIN user{user} secret\r\n").as_bytes())
        .await
        .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_in_flight_stays_within_its_heap_budget() {
    // Accepts and holds every connection, silent; on a thread of its own with std sockets,
    // so that its side of each connection is not a tokio registration counted as the
    // proxy's.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let backend = silent.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let held = {
        let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut held = Vec::with_capacity(100);
            while !stop.load(Ordering::Relaxed) {
                match silent.accept() {
                    Ok((s, _)) => {
                        held.push(s);
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let (proxy, _pool) = common::start_proxy_unpooled(&[backend]).await;
    // Warm up: lazily built tables reach their size first.
    let mut warm = Vec::new();
    for user in 0..10 {
        warm.push(logging_in(proxy.plain, user).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let n = 50;
    let mut clients = Vec::with_capacity(n);
    let sizes_before = counting::sizes();
    let before = counting::live();
    for user in 10..10 + n {
        clients.push(logging_in(proxy.plain, user).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_login = (counting::live() - before) / n as isize;
    let grown = counting::grown(&sizes_before, n);
    // Every login reached the backend (none waits in the throttle or for a pool slot).
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        10 + n,
        "logins not at the backend"
    );
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
    stop.store(true, Ordering::Relaxed);
    held.join().unwrap();
}
