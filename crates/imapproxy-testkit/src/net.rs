//! Loopback port helpers.

use std::net::TcpListener;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it
/// for a listener that is closed again before returning).
///
/// Another process may grab it before the caller binds it; callers that start a
/// server on it should retry with a new port when binding fails, as
/// [`crate::DovecotBuilder::start`] does.
///
/// # Panics
///
/// When no loopback port can be bound at all (the machine is out of ports or has no
/// loopback interface); a test cannot do anything useful then.
pub fn free_port() -> u16 {
    match TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"),
    }
}
