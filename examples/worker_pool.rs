//! 200 tokio tasks fetch message headers of one mailbox through `imapproxy-pool` directly —
//! no proxy — sharing at most 8 backend sessions. Each task checks a session out, uses it,
//! and checks it back in; the pool logs in at most 8 times however many tasks there are, and
//! the rest wait their turn in a fair queue instead of failing at the server's connection limit.
//!
//! ```sh
//! cargo run -p imapproxy-examples --example worker_pool -- 127.0.0.1:143 user1 pass1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imapproxy_pool::{BackendTarget, Credentials, Disposition, PoolSettings, Secret, SessionPool};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:143".into());
    let user = args.next().unwrap_or_else(|| "user1".into());
    let pass = args.next().unwrap_or_else(|| "pass1".into());

    let pool = SessionPool::new(PoolSettings {
        max_per_user: 8,
        wait_timeout: Duration::from_secs(60),
        ..PoolSettings::default()
    })?;
    pool.add_backend("mail", BackendTarget::plain(addr), 100);
    tokio::spawn(pool.clone().maintain());

    let creds = Arc::new(Credentials {
        username: user,
        password: Secret::new(pass.into_bytes()),
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..200 {
        let (pool, creds) = (pool.clone(), Arc::clone(&creds));
        tasks.push(tokio::spawn(async move {
            let mut session = pool.checkout("mail", &creds, &[]).await?;
            let conn = session.conn();
            conn.command("SELECT INBOX").await?;
            let headers = conn
                .command("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
                .await?;
            pool.checkin(session, Disposition::Reuse).await;
            Ok::<_, imapproxy_pool::Error>((worker, headers.untagged.len()))
        }));
    }
    let mut fetched: HashMap<usize, usize> = HashMap::new();
    for task in tasks {
        let (worker, n) = task.await??;
        fetched.insert(worker, n);
    }
    let status = pool.status();
    println!(
        "{} workers done in {:?}: {} backend logins, {} reuses, {} waited; at most {} sessions held",
        fetched.len(),
        started.elapsed(),
        status.misses,
        status.hits,
        status.waits,
        pool.settings().max_per_user
    );
    assert!(status.misses <= 8);
    Ok(())
}
