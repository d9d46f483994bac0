//! Backend connections and session pooling for IMAP proxies and IMAP workers — think
//! deadpool-postgres, for IMAP.
//!
//! - [`BackendConn`] opens a connection over plain TCP, implicit TLS or STARTTLS, reads the
//!   greeting (refusing `PREAUTH`), learns the capabilities, and logs in after sending `ID` with
//!   the real client's address — in one round trip where the server allows it.
//! - [`SessionPool`] keeps, per backend, **warm** connections (TLS done, greeting read, not yet
//!   logged in; a deadpool per backend, topped up by [`SessionPool::maintain`]) and a cache of
//!   **authenticated** sessions keyed by (backend, user, HMAC of the credentials), compared in
//!   constant time. The caller returns a session with a [`Disposition`]; one it may `Reuse`
//!   is always reset with `UNSELECT` (never `CLOSE`, which expunges) and cached only if the
//!   answer is clean, checked for liveness before it is lent again (nothing waiting on the
//!   socket; a `NOOP` answered within `liveness_timeout` once idle for `noop_after`, else the
//!   session is closed and the checkout logs in afresh), and expired after `idle_timeout`.
//!   [`SessionPool::backends_with_idle`] tells a router which backends hold a cached session
//!   for given credentials. No session is served from the cache longer than `max_age` after
//!   its backend login, so a changed password or a disabled account stops working through the
//!   cache within that time. Sessions that ran `ENABLE` or `COMPRESS`, saw an error, or whose
//!   backend lacks `UNSELECT` are never reused.
//! - Caps: at most `max_per_user` backend sessions per user (lent and cached together) and
//!   `max_connections` per backend; clients over the cap wait in a FIFO queue for at most
//!   `wait_timeout`, so 50 workers of one user share 8 sessions instead of hitting the server's
//!   per-user limit. A backend at `max_connections` closes its least recently used cached
//!   session (of any user) to make room before it refuses a login; warm connections only use
//!   the room left under the cap.
//!
//! 200 tasks, at most 8 backend sessions:
//!
//! ```no_run
//! # async fn demo() -> Result<(), imapproxy_pool::Error> {
//! use std::sync::Arc;
//! use imapproxy_pool::{
//!     BackendTarget, Credentials, Disposition, PoolSettings, Secret, SessionPool,
//! };
//!
//! let pool = SessionPool::new(PoolSettings { max_per_user: 8, ..PoolSettings::default() })?;
//! pool.add_backend("mail", BackendTarget::plain("127.0.0.1:143"), 100);
//! tokio::spawn(pool.clone().maintain());
//! let creds = Arc::new(Credentials {
//!     username: "user1".into(),
//!     password: Secret::new(b"pass1".to_vec()),
//! });
//! let mut tasks = Vec::new();
//! for _ in 0..200 {
//!     let (pool, creds) = (pool.clone(), creds.clone());
//!     tasks.push(tokio::spawn(async move {
//!         let mut session = pool.checkout("mail", &creds, &[]).await?;
//!         session.conn().command("SELECT INBOX").await?;
//!         let headers = session.conn().command("FETCH 1:* (BODY.PEEK[HEADER])").await?;
//!         pool.checkin(session, Disposition::Reuse).await;
//!         Ok::<_, imapproxy_pool::Error>(headers.untagged.len())
//!     }));
//! }
//! for t in tasks {
//!     let _ = t.await;
//! }
//! assert!(pool.status().misses <= 8);
//! # Ok(()) }
//! ```
//!
//! A single connection without a pool:
//!
//! ```no_run
//! # async fn demo() -> Result<(), imapproxy_pool::Error> {
//! use imapproxy_pool::{BackendConn, BackendTarget, Credentials, Secret};
//!
//! let target = BackendTarget::plain("127.0.0.1:143");
//! let mut conn = BackendConn::connect(&target).await?;
//! let creds = Credentials { username: "user1".into(), password: Secret::new(b"pass1".to_vec()) };
//! conn.login(&creds, &[("x-originating-ip".into(), "192.0.2.7".into())]).await?;
//! assert!(conn.command("SELECT INBOX").await?.is_ok());
//! # Ok(()) }
//! ```
//!
//! For SASL mechanisms a proxy cannot verify itself (XOAUTH2, OAUTHBEARER, SCRAM-*),
//! [`SessionPool::checkout_sasl`] reserves a connection for the user and returns a
//! [`SaslLogin`] through which the caller relays the exchange (`start`, `respond`, `cancel`,
//! each returning a [`SaslStep`]); such sessions have no password to key the cache with and
//! are never cached. [`SessionPool::common_prelogin_mechanisms`] tells which mechanisms every
//! backend advertises before login, learnt from warm and fresh connections.
//!
//! A backend that accepts connections but answers nothing is given up on per step: the
//! greeting within [`BackendTarget::greeting_timeout`], a login within
//! [`BackendTarget::login_timeout`], before the catch-all `io_timeout`. What the connector
//! reads is bounded by [`ResponseLimits`] (one message, and the untagged data before a tagged
//! reply), in the sans-IO [`ResponseReader`], which [`Greeting`] and [`Capabilities`]
//! complete for anyone reading a backend's responses. Buffers that hold a password or SASL
//! data are zeroed when dropped, and no `Debug` output shows one.
//!
//! [`ImapCheck`] is an active health check (connect, greeting, `NOOP`, optional probe
//! login, `LOGOUT`) for a health monitor such as `imapproxy_route::HealthMonitor`.
//!
//! The crate emits `tracing` events and `metrics` counters (`imapproxy_pool_checkouts_total`
//! by result, `imapproxy_pool_evictions_total` by reason: `backend_full`, `user_full`,
//! `max_age`, `idle_timeout`, `liveness`); it installs no subscriber or recorder.
#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod capabilities;
mod checkin;
mod connector;
mod digest;
mod error;
mod health;
mod liveness;
mod pool;
mod stream;
mod sync;
mod warm;

pub use capabilities::Capabilities;
pub use checkin::Disposition;
pub use connector::{
    BackendConn, BackendTarget, ClientAddrs, Credentials, Greeting, Response, ResponseLimits,
    ResponseReader, SaslStep, proxy_v2_header,
};
pub use error::Error;
pub use health::ImapCheck;
pub use imapproxy_codec::Secret;
pub use pool::{
    Acquire, PoolSettings, PoolStatus, PooledSession, SaslLogin, SessionPool, SharedPlace,
    SharedUserCap,
};
pub use stream::BackendStream;
