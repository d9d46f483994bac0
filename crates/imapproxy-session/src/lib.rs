//! One IMAP proxy client session.
//!
//! [`serve`] takes an accepted TCP connection and runs it to the end: TLS (implicit or
//! STARTTLS), the proxy's own greeting and pre-auth answers (`CAPABILITY`, `NOOP`, `LOGOUT`,
//! `ID`, `STARTTLS`, `LOGIN`, `AUTHENTICATE PLAIN/LOGIN`), backend selection and login with the
//! client's credentials, then a framing-aware relay that forwards the original bytes both ways.
//! No backend name, address or banner ever reaches the client.
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
pub mod throttle;

pub use error::Error;
pub use health::ImapHealthCheck;
pub use limits::{ConnectionLimitSettings, ConnectionLimits, LimitSettings};
pub use proxy_protocol::{ProxyProtocolSettings, TrustedNetworks};
pub use registry::{Overrides, Registration, SessionInfo, SessionRegistry};
pub use session::{Proxy, serve};
pub use settings::{ListenerSettings, SessionSettings, Upstreams};
pub use stream::ClientStream;
pub use throttle::{Throttle, ThrottleSettings};
