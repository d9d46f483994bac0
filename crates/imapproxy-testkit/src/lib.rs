//! Test support for imapproxy: a sandboxed Dovecot 2.3 launcher, a scripted IMAP
//! client and a scripted fake backend.
//!
//! Every integration test in the workspace talks to a *real* Dovecot started by
//! [`Dovecot`]: a generated configuration in a temporary directory, loopback
//! high ports, passwd-file users (`user1`/`pass1` …), maildir mailboxes seeded
//! with known messages, a self-signed certificate made at start, a PROXY-protocol
//! listener and a master user. The instance is stopped on drop, and a watchdog
//! makes sure it cannot outlive the test process even when it sits in a `static`
//! (see [`Dovecot::shared`]).
//!
//! [`TestClient`] is a small async IMAP client that understands response framing
//! (`{n}` literals, but not after status text) and can speak plain, STARTTLS and
//! implicit TLS. [`FakeBackend`] plays a script for faults Dovecot cannot produce
//! (garbage, half-sent literals, hangs).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use imapproxy_testkit::{Dovecot, TestClient};
//!
//! let dovecot = Dovecot::shared();
//! let (user, pass) = dovecot.user(1);
//! let mut client = TestClient::connect(dovecot.imap_addr()).await?;
//! assert!(client.login(&user, &pass).await?.tagged_ok());
//! let select = client.cmd("s", "SELECT INBOX").await?;
//! assert!(select.text().contains("6 EXISTS"));
//! # Ok(()) }
//! ```
//!
//! Requirements: Dovecot 2.3 (`dovecot`, Debian's `dovecot-imapd`) and root, because
//! the sandbox creates a system user (`imapproxy-test`) that owns the mail store.
//! `cargo xtask test` installs Dovecot when it is missing. Without it, tests fail
//! with a clear message; they never pass by skipping.
#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod client;
pub mod conformance;
mod dovecot;
mod error;
mod fake;
mod framing;
mod net;
mod redis;
mod signal;

pub use client::{Response, TestClient, insecure_client_config};
pub use dovecot::seed::{BIG_MESSAGE_SIZE, Seed, big_message, default_seed, small_message};
pub use dovecot::{Dovecot, DovecotBuilder, MAIL_USER, find_dovecot, shared_mail_dir};
pub use error::TestkitError;
pub use fake::{FakeBackend, Reply, Step};
pub use net::free_port;
pub use redis::RedisServer;
