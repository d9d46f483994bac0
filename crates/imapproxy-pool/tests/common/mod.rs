//! Helpers shared by the integration tests that run against the scripted fake backend.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use imapproxy_pool::{BackendTarget, Credentials, PoolSettings, Secret, SessionPool};
use imapproxy_testkit::Step;

/// A plain target at `addr` with the default timeouts.
pub fn target(addr: SocketAddr) -> BackendTarget {
    BackendTarget::plain(addr.to_string())
}

pub fn creds(user: &str, pass: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: Secret::new(pass.as_bytes().to_vec()),
    }
}

/// A pool without warm connections (every login connects, so scripts run in order) holding
/// `target` as backend `mail`.
pub fn pool(settings: PoolSettings, target: BackendTarget) -> SessionPool {
    let pool = SessionPool::new(PoolSettings {
        warm: 0,
        ..settings
    })
    .unwrap();
    pool.add_backend("mail", target, 100);
    pool
}

/// A greeting whose capabilities make the connector use `LOGIN` with quoted strings.
pub fn greeting() -> Step {
    Step::send("* OK [CAPABILITY IMAP4rev1 ID LITERAL+] fake backend ready\r\n")
}

/// Answers `LOGIN` with `OK` and post-login capabilities that allow caching (`UNSELECT`).
pub fn login_ok() -> Step {
    Step::reply("LOGIN", |tag| {
        format!("{tag} OK [CAPABILITY IMAP4rev1 UNSELECT] Logged in\r\n").into_bytes()
    })
}

/// Answers `UNSELECT` as a server with nothing selected does (RFC 3691 §2).
pub fn unselect_bad() -> Step {
    Step::reply("UNSELECT", |tag| {
        format!("{tag} BAD No mailbox selected\r\n").into_bytes()
    })
}

/// Runs `f` and returns its output with how long it took.
pub async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = std::time::Instant::now();
    let out = f.await;
    (out, start.elapsed())
}
