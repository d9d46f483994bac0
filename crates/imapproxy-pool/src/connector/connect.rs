//! Opening a connection: TCP, the PROXY header, TLS or STARTTLS, the greeting and the
//! pre-login capabilities.

use imapproxy_tls::{BackendTls, TlsMode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::BackendConn;
use super::proxy_header::{ClientAddrs, proxy_v2_header};
use super::response::Greeting;
use super::target::BackendTarget;
use crate::capabilities::Capabilities;
use crate::error::Error;
use crate::stream::BackendStream;

impl BackendConn {
    /// Connects to `target`: TCP (with `TCP_NODELAY`), TLS or STARTTLS as configured, reads the
    /// greeting and learns the capabilities. With [`BackendTarget::proxy_protocol`] it sends a
    /// PROXY v2 `LOCAL` header; use [`BackendConn::connect_for`] to name a client.
    ///
    /// # Errors
    /// [`Error::Timeout`] with step `greeting` when the server accepts the connection but does
    /// not greet within [`BackendTarget::greeting_timeout`]; [`Error::GreetingBye`],
    /// [`Error::PreAuthGreeting`] or [`Error::UnexpectedData`] for a greeting that does not
    /// allow a login; [`Error::Closed`] when it hangs up first.
    pub async fn connect(target: &BackendTarget) -> Result<Self, Error> {
        Self::connect_for(target, None).await
    }

    /// [`BackendConn::connect`] on behalf of `client`: with [`BackendTarget::proxy_protocol`]
    /// the PROXY v2 header names it (`LOCAL` when `None`); otherwise `client` is unused.
    pub async fn connect_for(
        target: &BackendTarget,
        client: Option<ClientAddrs>,
    ) -> Result<Self, Error> {
        let timed_out = |step| Error::Timeout {
            addr: target.addr.clone(),
            step,
        };
        let tcp = tokio::time::timeout(target.connect_timeout, TcpStream::connect(&target.addr))
            .await
            .map_err(|_| timed_out("connect"))?
            .map_err(|source| Error::Connect {
                addr: target.addr.clone(),
                source,
            })?;
        // Every exchange is a small request and a reply: Nagle plus delayed ACK would add
        // ~40 ms to each (see DESIGN.md, "Performance").
        tcp.set_nodelay(true)?;
        let mut tcp = tcp;
        if target.proxy_protocol {
            // Before TLS and before the greeting: the header is the first thing on the wire.
            let header = proxy_v2_header(client)?;
            tokio::time::timeout(target.connect_timeout, tcp.write_all(&header))
                .await
                .map_err(|_| timed_out("PROXY header"))??;
        }
        let stream = match target.tls {
            TlsMode::Implicit => {
                // Boxed, as is `start_tls` below: a handshake's state (1.3 KB) would otherwise
                // size this future, and every future awaiting it, for the whole of a plain
                // backend's login too; a burst of logins holds one each.
                let s = Box::pin(tls_client(target)?.connect(
                    tcp,
                    &target.server_name,
                    target.connect_timeout,
                ))
                .await?;
                BackendStream::Tls(Box::new(s))
            }
            _ => BackendStream::Plain(tcp),
        };
        let mut conn = Self {
            stream,
            reader: None,
            limits: target.response_limits,
            capabilities: Capabilities::default(),
            next_tag: 0,
            io_timeout_ms: super::millis(target.io_timeout),
            login_timeout_ms: super::millis(target.login_timeout),
            addr: target.addr.clone(),
        };
        let greeting = tokio::time::timeout(target.greeting_timeout, conn.read_message())
            .await
            .map_err(|_| timed_out("greeting"))??;
        if let Some(caps) = Greeting::parse(&greeting)?.capabilities {
            conn.capabilities = caps;
        }
        if target.tls == TlsMode::StartTls {
            conn = Box::pin(conn.start_tls(target)).await?;
        }
        if conn.capabilities.is_empty() {
            tokio::time::timeout(
                target.greeting_timeout,
                Box::pin(conn.refresh_capabilities()),
            )
            .await
            .map_err(|_| timed_out("CAPABILITY"))??;
        }
        Ok(conn)
    }

    /// RFC 9051 §6.2.1: `STARTTLS`, then the TLS handshake; the capabilities learnt in the
    /// clear are forgotten.
    async fn start_tls(mut self, target: &BackendTarget) -> Result<Self, Error> {
        let resp = tokio::time::timeout(target.greeting_timeout, self.command("STARTTLS"))
            .await
            .map_err(|_| self.timed_out("STARTTLS"))??;
        if !resp.is_ok() {
            return Err(Error::CommandRejected {
                command: "STARTTLS",
                code: resp.code(),
            });
        }
        if self.buffered() > 0 {
            // Anything sent in the clear after the STARTTLS reply is an injection attempt.
            return Err(Error::UnexpectedData {
                what: "data after the STARTTLS response",
            });
        }
        let tls = tls_client(target)?;
        let BackendStream::Plain(tcp) = self.stream else {
            return Err(Error::UnexpectedData {
                what: "STARTTLS on a TLS connection",
            });
        };
        let s = tls
            .connect(tcp, &target.server_name, target.connect_timeout)
            .await?;
        self.stream = BackendStream::Tls(Box::new(s));
        self.capabilities = Capabilities::default();
        Ok(self)
    }
}

fn tls_client(target: &BackendTarget) -> Result<&BackendTls, Error> {
    target.tls_client.as_ref().ok_or(Error::TlsNotConfigured)
}
