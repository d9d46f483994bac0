//! IMAP framing for proxies. No I/O: bytes in, answers out.
//!
//! - [`framer`]: the post-login relay scanner. It finds message boundaries in both directions
//!   (tags, command names, response kinds, literals) without decoding or buffering anything, so
//!   the relay can forward the original bytes and still intercept `LOGOUT`, follow `IDLE` and
//!   count commands.
//! - [`preauth`]: pre-login command parsing on [`imap-codec`](https://docs.rs/imap-codec) under
//!   tight limits: `CAPABILITY`, `NOOP`, `LOGOUT`, `STARTTLS`, `ID`, `LOGIN`, `AUTHENTICATE`
//!   (with SASL-IR and continuation data), with passwords held in a redacting [`Secret`].
//! - [`capability`]: parsing and filtering `CAPABILITY` responses and `[CAPABILITY ...]` codes.
//! - [`command`]: what a client command does to its connection's state (an allowlist of the
//!   commands that leave none), for proxies that reuse or move backend connections.
//! - [`response`]: what server responses reveal about that state (response codes,
//!   `* ENABLED`, `EXISTS`, mod-sequence data).
//!
//! ```
//! use imapproxy_codec::{CommandName, Direction, FrameKind, Framer};
//!
//! let mut framer = Framer::new(Direction::Client);
//! let mut stream: &[u8] = b"a1 SELECT INBOX\r\na2 APPEND INBOX {11}\r\nhello\r\nyou\r\na3 LOGOUT\r\n";
//! let mut seen = Vec::new();
//! while let Some((n, frame)) = framer.advance(stream) {
//!     seen.push((frame.tag.unwrap().to_string(), frame.kind, frame.literal_bytes));
//!     stream = &stream[n..];
//! }
//! assert_eq!(seen, [
//!     ("a1".to_string(), FrameKind::Command(CommandName::Select), 0),
//!     ("a2".to_string(), FrameKind::Command(CommandName::Append), 11),
//!     ("a3".to_string(), FrameKind::Command(CommandName::Logout), 0),
//! ]);
//! assert!(framer.at_boundary());
//! ```
//!
//! This crate has no cargo features of its own; it enables imap-codec's `starttls` and `ext_id`.
#![deny(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod capability;
pub mod command;
mod error;
pub mod framer;
pub mod preauth;
pub mod response;
mod secret;
mod tag;

pub use capability::{default_post_login_drop, filter_capabilities, parse_capabilities};
pub use error::Error;
pub use framer::{CommandName, Direction, Frame, FrameKind, Framer, Status, UntaggedKind};
pub use preauth::{
    AuthData, Mechanism, PreAuthCommand, PreAuthEvent, PreAuthLimits, PreAuthParser, SaslPlain,
    parse_sasl_plain,
};
pub use secret::{Secret, constant_time_eq};
pub use tag::Tag;
