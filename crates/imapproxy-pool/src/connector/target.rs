//! Where and how to reach one backend, and how long each step may take.

use std::time::Duration;

use imapproxy_tls::{BackendTls, TlsMode};

use super::response::ResponseLimits;

/// Where and how to reach one backend.
///
/// Start from [`BackendTarget::plain`] and set the fields that differ. The timeouts bound
/// each step separately, so that a backend whose socket is alive but which answers nothing
/// (a frozen process, a full disk) is given up on in seconds, not after `io_timeout`:
///
/// | step | bound | default |
/// |---|---|---|
/// | TCP connect, TLS handshake, PROXY header | `connect_timeout` | 5 s |
/// | greeting; with STARTTLS the `STARTTLS` and pre-login `CAPABILITY` exchanges, each | `greeting_timeout` | 5 s |
/// | `ID` plus `LOGIN`/`AUTHENTICATE` (and a post-login `CAPABILITY`); each step of a relayed SASL exchange | `login_timeout` | 10 s |
/// | every other read or write | `io_timeout` | 30 s |
#[derive(Clone, Debug)]
pub struct BackendTarget {
    /// `host:port`.
    pub addr: String,
    /// Transport security towards the backend.
    pub tls: TlsMode,
    /// TLS client settings; required when `tls` is not [`TlsMode::None`].
    pub tls_client: Option<BackendTls>,
    /// Name verified in the backend's certificate (defaults to the host part of `addr`).
    pub server_name: String,
    /// Bound on TCP connect plus TLS handshake (and on writing the PROXY header).
    pub connect_timeout: Duration,
    /// Bound on the greeting once the transport is up, and on each pre-login exchange of the
    /// connector (`STARTTLS`, `CAPABILITY`). A healthy server greets within milliseconds; one
    /// that accepts connections but does not greet is overloaded or hung.
    pub greeting_timeout: Duration,
    /// Bound on a whole login: `ID`, `LOGIN` or `AUTHENTICATE PLAIN`, and a post-login
    /// `CAPABILITY` when the server's `OK` carries none; also on each step of a relayed SASL
    /// exchange. It must exceed the server's delay after a failed login (Dovecot's
    /// `auth_failure_delay`, 2 s by default), or wrong passwords turn into timeouts.
    pub login_timeout: Duration,
    /// Bound on every other read or write of the connector, counted per operation.
    pub io_timeout: Duration,
    /// How much the connector buffers of one response (see [`ResponseLimits`]).
    pub response_limits: ResponseLimits,
    /// Send a PROXY protocol v2 header right after the TCP connect, before TLS and the
    /// greeting, so that the backend (Dovecot with `haproxy = yes` and
    /// `haproxy_trusted_networks`) sees the real client. The pool then keeps no warm
    /// connections for this backend (they cannot know their client in advance). A cached
    /// authenticated session is reused only for the same user, and keeps the address of the
    /// client it was opened for.
    pub proxy_protocol: bool,
}

impl BackendTarget {
    /// Default [`BackendTarget::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default [`BackendTarget::greeting_timeout`].
    pub const DEFAULT_GREETING_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default [`BackendTarget::login_timeout`]: Dovecot's 2 s failure delay, a slow
    /// password database, and room to spare.
    pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default [`BackendTarget::io_timeout`].
    pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

    /// A plain-TCP target with the default timeouts (connect 5 s, greeting 5 s, login 10 s,
    /// other I/O 30 s) and response limits.
    pub fn plain(addr: impl Into<String>) -> Self {
        let addr = addr.into();
        let server_name = host_part(&addr).to_owned();
        Self {
            addr,
            tls: TlsMode::None,
            tls_client: None,
            server_name,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            greeting_timeout: Self::DEFAULT_GREETING_TIMEOUT,
            login_timeout: Self::DEFAULT_LOGIN_TIMEOUT,
            io_timeout: Self::DEFAULT_IO_TIMEOUT,
            response_limits: ResponseLimits::default(),
            proxy_protocol: false,
        }
    }
}

fn host_part(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_part_strips_port_and_brackets() {
        assert_eq!(host_part("127.0.0.1:143"), "127.0.0.1");
        assert_eq!(host_part("[::1]:143"), "::1");
        assert_eq!(host_part("mail.example.org:993"), "mail.example.org");
    }

    #[test]
    fn a_frozen_backend_is_given_up_on_in_seconds_by_default() {
        let t = BackendTarget::plain("127.0.0.1:143");
        assert_eq!(t.greeting_timeout, Duration::from_secs(5));
        assert_eq!(t.login_timeout, Duration::from_secs(10));
        assert!(t.greeting_timeout < t.io_timeout && t.login_timeout < t.io_timeout);
    }
}
