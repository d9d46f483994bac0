//! One IMAP proxy client session.
//!
//! [`serve`] takes an accepted TCP connection and runs it to the end: TLS (implicit or
//! STARTTLS), the proxy's own greeting and pre-auth answers (`CAPABILITY`, `NOOP`, `LOGOUT`,
//! `ID`, `STARTTLS`, `LOGIN`, `AUTHENTICATE PLAIN/LOGIN`), backend selection and login with the
//! client's credentials, then a framing-aware relay that forwards the original bytes both ways.
//! No backend name, address or banner ever reaches the client.
//!
//! # Session state
//!
//! Pooling (and re-homing a session onto another backend connection) relies on knowing what
//! state a backend connection carries. The relay keeps a small model of each logged-in
//! session, fed by both directions, with the server as the source of truth:
//!
//! - **Tracked**: the commands in flight (tag, effect, `SELECT` target), removed by their
//!   tagged reply; the selected mailbox and whether it is read-only (tagged `OK` to
//!   `SELECT`/`EXAMINE`, `NO` to them, `OK` to `UNSELECT`/`CLOSE`, `* OK [CLOSED]`); its
//!   UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and EXISTS as the server last said; the extensions
//!   the server said it enabled (`* ENABLED`); whether the client is in `IDLE`.
//! - **Clean**: every command the client sent is on the allowlist of
//!   [`imapproxy_codec::command`]: commands that leave no connection state beyond the selected
//!   mailbox (`CAPABILITY NOOP CHECK EXPUNGE NAMESPACE SELECT EXAMINE UNSELECT CLOSE IDLE
//!   LOGOUT APPEND CREATE DELETE RENAME SUBSCRIBE UNSUBSCRIBE LIST LSUB STATUS FETCH STORE COPY
//!   MOVE SEARCH SORT THREAD`, their `UID` forms, `ID`, and the quota, ACL and metadata
//!   commands), none of them with a state-bearing argument (`MODSEQ`, `HIGHESTMODSEQ`,
//!   `CHANGEDSINCE`, `UNCHANGEDSINCE`, `CONDSTORE`, `QRESYNC`, `VANISHED`, `SAVE`, `UPDATE`,
//!   `CONTEXT`). Only a clean session, quiet in both directions, outside `IDLE` and with
//!   every command answered, goes back to the pool (which resets it with `UNSELECT`).
//! - **Tainted**: anything else (`ENABLE`, `NOTIFY`, `COMPRESS`, `UNAUTHENTICATE`, `LANGUAGE`,
//!   vendor commands, a command too long to inspect), or state the server revealed
//!   (`* ENABLED`, `MODSEQ` or `VANISHED` data). The session continues; its backend connection
//!   is closed at the end.
//! - **Desynchronised**: a tagged reply with an unknown tag (a command hidden from the framer,
//!   e.g. inside `NOOP {20+}`, which Dovecot reads as commands), a literal on an argument-less
//!   command, `BAD`, `BYE`, more than 1,024 commands in flight. The relay then only forwards
//!   bytes (the client's `LOGOUT` goes to the server) and the connection is closed at the end.
//!
//! Literals: the framer knows synchronizing (`{n}`) from non-synchronizing (`{n+}`) literals and
//! whether the server's `+` came; only a synchronizing literal still waiting for `+` is ended
//! by a tagged reply (RFC 9051 §4.3). A reply that comes while a non-synchronizing literal
//! still streams answers that command once it ends (RFC 7888). Literal bodies are never read
//! as commands.
//!
//! ```no_run
//! use std::{collections::HashMap, sync::Arc};
//! use imapproxy_pool::{BackendTarget, PoolSettings};
//! use imapproxy_route::{Backend, BackendId, Registry, RoundRobin};
//! use imapproxy_session::{ListenerSettings, Proxy, SessionSettings, Upstreams, serve};
//! use imapproxy_tls::TlsMode;
//!
//! # async fn run() -> std::io::Result<()> {
//! let id = BackendId::new("mail1");
//! let registry = Registry::new(vec![Backend::new(id.clone(), "127.0.0.1:143")])
//!     .map_err(std::io::Error::other)?;
//! let targets = HashMap::from([(id, BackendTarget::plain("127.0.0.1:143"))]);
//! let upstreams = Upstreams {
//!     registry,
//!     selector: Arc::new(RoundRobin::default()),
//!     directory: None,
//!     targets,
//!     health: None,
//! };
//! let proxy = Arc::new(
//!     Proxy::new(SessionSettings::default(), upstreams, PoolSettings::default())
//!         .map_err(std::io::Error::other)?,
//! );
//! tokio::spawn(proxy.pool().clone().maintain());
//! let listener = Arc::new(ListenerSettings {
//!     tls: TlsMode::None,
//!     allow_plaintext_auth: true,
//!     server_tls: None,
//! });
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let accept = tokio::net::TcpListener::bind("127.0.0.1:1143").await?;
//! loop {
//!     let (tcp, peer) = accept.accept().await?;
//!     tokio::spawn(serve(proxy.clone(), listener.clone(), tcp, peer, shutdown.clone()));
//! }
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod command_metrics;
mod error;
mod health;
pub mod limits;
pub mod proxy_protocol;
mod registry;
mod relay;
mod sasl;
mod session;
mod settings;
pub(crate) mod state;
mod stream;
mod sync;
pub mod throttle;

pub use command_metrics::render_command_histograms;
#[doc(hidden)]
pub use command_metrics::set_command_histograms;
pub use error::Error;
pub use health::ImapHealthCheck;
pub use limits::{ConnectionLimitSettings, ConnectionLimits, LimitSettings};
pub use proxy_protocol::{ProxyProtocolSettings, TrustedNetworks};
pub use registry::{
    MigrationCause, Overrides, Registration, Request, SessionInfo, SessionRegistry,
};
#[doc(hidden)]
pub use relay::ChunkBench;
pub use session::{Proxy, serve};
pub use settings::{ListenerSettings, SessionSettings, Upstreams};
pub use stream::ClientStream;
pub use throttle::{Attempt, SharedCounts, SharedFailures, Throttle, ThrottleSettings, Verdict};
