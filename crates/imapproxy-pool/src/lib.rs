//! Backend connections for IMAP proxies and workers.
//!
//! [`BackendConn::connect`] opens a connection to an IMAP server over plain TCP, implicit TLS or
//! STARTTLS, reads the greeting (refusing `PREAUTH`) and learns the server's capabilities;
//! [`BackendConn::login`] sends `ID` with the real client's address and logs in, in one round
//! trip where the server allows it. The stream can then be taken for relaying with
//! [`BackendConn::into_parts`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), imapproxy_pool::Error> {
//! use imapproxy_pool::{BackendConn, BackendTarget, Credentials, Secret};
//!
//! let target = BackendTarget::plain("127.0.0.1:143");
//! let mut conn = BackendConn::connect(&target).await?;
//! let creds = Credentials { username: "user1".into(), password: Secret::new(b"pass1".to_vec()) };
//! conn.login(&creds, &[("x-originating-ip".into(), "192.0.2.7".into())]).await?;
//! let inbox = conn.command("SELECT INBOX").await?;
//! assert!(inbox.is_ok());
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod connector;
mod digest;
mod error;
mod liveness;
mod pool;
mod stream;
mod warm;

pub use connector::{BackendConn, BackendTarget, Credentials, Response};
pub use error::Error;
pub use imapproxy_codec::Secret;
pub use pool::{PoolSettings, PoolStatus, PooledSession, Reset, SessionPool};
pub use stream::BackendStream;
