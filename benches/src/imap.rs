//! A lean IMAP client for measuring: one fixed read buffer, responses framed with the
//! proxy's own literal-aware [`Framer`], bodies counted but never copied.
//!
//! `TestClient` from the testkit keeps every response line, which is right for tests
//! and far too slow to measure a relay that moves hundreds of MB/s.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use imapproxy_codec::{Direction, Frame, FrameKind, Framer, Status, UntaggedKind};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::BenchError;

/// Read size for bulk transfers: a 256 KiB literal takes a handful of reads.
pub const BULK_READ_BUF: usize = 256 * 1024;
/// Read size for sessions that only exchange short lines.
pub const SMALL_READ_BUF: usize = 4 * 1024;
/// How much of each response's start is kept for error messages and checks.
const HEAD_KEEP: usize = 512;
/// Bound on connecting, the TLS handshake and the greeting.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one small command (LOGIN, SELECT, IDLE).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Plain TCP or TLS from the first byte (RFC 8314 implicit TLS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Security {
    /// No TLS.
    Plain,
    /// Implicit TLS, any certificate accepted (loopback benchmark).
    Tls,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What a command's response amounted to.
#[derive(Debug, Default, Clone)]
pub struct Reply {
    /// Bytes of every response to the command, the tagged one included.
    pub bytes: u64,
    /// Untagged `FETCH` responses.
    pub fetches: u64,
    /// Bytes inside literals.
    pub literal_bytes: u64,
    /// The start of each untagged response but `FETCH` (for checks such as `EXISTS`).
    pub untagged: Vec<String>,
    /// The start of each untagged `FETCH` response (its first 512 bytes, literals
    /// inlined), for comparing small fetches before and after an event.
    pub fetched: Vec<String>,
    /// The tagged response, or the continuation request that ended the wait.
    pub last: String,
}

/// One IMAP connection used by a scenario.
pub struct ImapConn {
    io: Box<dyn Stream>,
    framer: Framer,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    head: Vec<u8>,
    tags: u32,
    label: String,
}

/// Runs `fut` with a bound, naming the step when it runs out.
pub async fn bounded<T>(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(BenchError::Timeout {
            what: what.to_owned(),
            secs: limit.as_secs(),
        }),
    }
}

impl ImapConn {
    /// Connects (with `TCP_NODELAY`, as the proxy does), does the TLS handshake when
    /// asked, and reads the `* OK` greeting. `label` names the connection in errors;
    /// `read_buf` is the size of the one read buffer.
    pub async fn connect(
        addr: SocketAddr,
        security: Security,
        tls: &TlsConnector,
        label: &str,
        read_buf: usize,
    ) -> Result<ImapConn, BenchError> {
        bounded(
            &format!("{label}: connect and greeting"),
            CONNECT_TIMEOUT,
            async {
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(BenchError::io(format!("{label}: connect to {addr}")))?;
                tcp.set_nodelay(true)
                    .map_err(BenchError::io(format!("{label}: TCP_NODELAY")))?;
                let io: Box<dyn Stream> = match security {
                    Security::Plain => Box::new(tcp),
                    Security::Tls => {
                        let name = ServerName::try_from("localhost")
                            .map_err(|e| BenchError::protocol(label, e.to_string()))?;
                        Box::new(
                            tls.connect(name, tcp)
                                .await
                                .map_err(BenchError::io(format!("{label}: TLS handshake")))?,
                        )
                    }
                };
                let mut conn = ImapConn {
                    io,
                    framer: Framer::new(Direction::Server),
                    buf: vec![0u8; read_buf.max(64)].into_boxed_slice(),
                    pos: 0,
                    filled: 0,
                    head: Vec::with_capacity(HEAD_KEEP),
                    tags: 0,
                    label: label.to_owned(),
                };
                let frame = conn.next_frame().await?;
                if frame.kind != FrameKind::Untagged(UntaggedKind::Status(Status::Ok)) {
                    return Err(conn.unexpected("greeting"));
                }
                Ok(conn)
            },
        )
        .await
    }

    /// Sends `cmd` with a fresh tag and reads up to its tagged response, which must be
    /// `OK`. Bodies are counted, not kept.
    pub async fn command(&mut self, cmd: &str) -> Result<Reply, BenchError> {
        let tag = self.send(cmd).await?;
        let reply = self.read_until_tagged(&tag, cmd).await?;
        Ok(reply)
    }

    /// Sends `tag SP cmd CRLF` in one write; returns the tag.
    pub async fn send(&mut self, cmd: &str) -> Result<String, BenchError> {
        self.tags += 1;
        let tag = format!("b{}", self.tags);
        self.write_raw(format!("{tag} {cmd}\r\n").as_bytes())
            .await?;
        Ok(tag)
    }

    /// Writes bytes as they are (e.g. `DONE\r\n`).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), BenchError> {
        let what = format!("{}: write", self.label);
        self.io
            .write_all(bytes)
            .await
            .map_err(BenchError::io(what.clone()))?;
        self.io.flush().await.map_err(BenchError::io(what))
    }

    /// Reads responses until the tagged one for `tag`; anything but `OK` is an error.
    pub async fn read_until_tagged(&mut self, tag: &str, cmd: &str) -> Result<Reply, BenchError> {
        let mut reply = Reply::default();
        loop {
            let frame = self.next_frame().await?;
            reply.bytes += frame.len;
            reply.literal_bytes += frame.literal_bytes;
            match frame.kind {
                FrameKind::Tagged(status) => {
                    reply.last = self.head_text();
                    let ours = frame.tag.is_some_and(|t| t.as_bytes() == tag.as_bytes());
                    if !ours || status != Status::Ok {
                        return Err(self.unexpected(cmd));
                    }
                    return Ok(reply);
                }
                FrameKind::Untagged(UntaggedKind::Fetch) => {
                    reply.fetches += 1;
                    if reply.fetched.len() < 64 {
                        reply.fetched.push(self.head_text());
                    }
                }
                FrameKind::Untagged(UntaggedKind::Status(Status::Bye)) => {
                    return Err(self.unexpected(cmd));
                }
                FrameKind::Untagged(_) => {
                    if reply.untagged.len() < 64 {
                        reply.untagged.push(self.head_text());
                    }
                }
                _ => return Err(self.unexpected(cmd)),
            }
        }
    }

    /// Reads the answers to `commands` pipelined commands, the last of which is tagged
    /// `last`: every tagged response must be `OK`, and `last`'s must be the `commands`-th.
    pub async fn read_pipelined(
        &mut self,
        commands: usize,
        last: &str,
        what: &str,
    ) -> Result<Reply, BenchError> {
        let mut reply = Reply::default();
        let mut answered = 0;
        loop {
            let frame = self.next_frame().await?;
            reply.bytes += frame.len;
            match frame.kind {
                FrameKind::Tagged(Status::Ok) => {
                    answered += 1;
                    if frame.tag.is_some_and(|t| t.as_bytes() == last.as_bytes()) {
                        if answered != commands {
                            return Err(BenchError::protocol(
                                format!("{}: {what}", self.label),
                                format!("{answered} answers, {commands} commands"),
                            ));
                        }
                        reply.last = self.head_text();
                        return Ok(reply);
                    }
                }
                FrameKind::Untagged(UntaggedKind::Fetch) => reply.fetches += 1,
                FrameKind::Untagged(UntaggedKind::Status(Status::Bye)) | FrameKind::Tagged(_) => {
                    return Err(self.unexpected(what));
                }
                _ => {}
            }
        }
    }

    /// Sends `LOGOUT` and reads up to its tagged `OK`, past the untagged `BYE` that
    /// RFC 9051 §6.1.3 puts before it.
    pub async fn logout(&mut self) -> Result<(), BenchError> {
        let tag = self.send("LOGOUT").await?;
        loop {
            let frame = self.next_frame().await?;
            match frame.kind {
                FrameKind::Tagged(status) => {
                    let ours = frame.tag.is_some_and(|t| t.as_bytes() == tag.as_bytes());
                    if !ours || status != Status::Ok {
                        return Err(self.unexpected("LOGOUT"));
                    }
                    return Ok(());
                }
                FrameKind::Untagged(_) => {}
                _ => return Err(self.unexpected("LOGOUT")),
            }
        }
    }

    /// Sends `IDLE` and waits for the server's `+`; returns the tag, for [`ImapConn::done`].
    pub async fn idle(&mut self) -> Result<String, BenchError> {
        let tag = self.send("IDLE").await?;
        self.read_until_continuation("IDLE").await?;
        Ok(tag)
    }

    /// Ends the `IDLE` started under `tag` (`DONE`) and reads up to its tagged `OK`.
    pub async fn done(&mut self, tag: &str) -> Result<Reply, BenchError> {
        self.write_raw(b"DONE\r\n").await?;
        self.read_until_tagged(tag, "IDLE (after DONE)").await
    }

    /// Reads responses until a `+` continuation request (e.g. `+ idling`); a tagged
    /// response first is an error.
    pub async fn read_until_continuation(&mut self, cmd: &str) -> Result<Reply, BenchError> {
        let mut reply = Reply::default();
        loop {
            let frame = self.next_frame().await?;
            reply.bytes += frame.len;
            match frame.kind {
                FrameKind::Continuation => {
                    reply.last = self.head_text();
                    return Ok(reply);
                }
                FrameKind::Untagged(UntaggedKind::Status(Status::Bye)) | FrameKind::Tagged(_) => {
                    return Err(self.unexpected(cmd));
                }
                _ => {}
            }
        }
    }

    /// Reads until the framer reports the end of one response. Bytes already read past
    /// it stay in the buffer for the next call.
    async fn next_frame(&mut self) -> Result<Frame, BenchError> {
        self.head.clear();
        loop {
            if self.pos < self.filled {
                let chunk = self.buf.get(self.pos..self.filled).unwrap_or(&[]);
                let step = self.framer.advance(chunk);
                let used = step.as_ref().map_or(chunk.len(), |(n, _)| *n);
                let room = HEAD_KEEP.saturating_sub(self.head.len());
                self.head
                    .extend_from_slice(chunk.get(..used.min(room)).unwrap_or(&[]));
                self.pos += used;
                if let Some((_, frame)) = step {
                    return Ok(frame);
                }
            }
            // Everything buffered was consumed: read afresh into the whole buffer.
            self.pos = 0;
            self.filled = 0;
            let n = self
                .io
                .read(&mut self.buf)
                .await
                .map_err(BenchError::io(format!("{}: read", self.label)))?;
            if n == 0 {
                return Err(BenchError::protocol(
                    &self.label,
                    format!(
                        "connection closed; last response started with {:?}",
                        self.head_text()
                    ),
                ));
            }
            self.filled = n;
        }
    }

    fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).trim_end().to_owned()
    }

    fn unexpected(&self, step: &str) -> BenchError {
        BenchError::protocol(format!("{}: {step}", self.label), self.head_text())
    }
}

/// A TLS connector that accepts any certificate (loopback, self-signed test certificates).
pub fn insecure_connector() -> Result<TlsConnector, BenchError> {
    let config = imapproxy_testkit::insecure_client_config()
        .map_err(BenchError::io("client TLS configuration"))?;
    Ok(TlsConnector::from(config))
}

/// Like [`insecure_connector`], without TLS session resumption: every connection pays
/// for a full handshake, as a webmail backend that opens a fresh connection per request
/// (and keeps no ticket cache between its worker processes) does.
pub fn insecure_connector_no_resumption() -> Result<TlsConnector, BenchError> {
    let shared = imapproxy_testkit::insecure_client_config()
        .map_err(BenchError::io("client TLS configuration"))?;
    let mut config = (*shared).clone();
    config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(std::sync::Arc::new(config)))
}

/// Logs in and selects INBOX; returns the SELECT reply.
pub async fn login_select(
    conn: &mut ImapConn,
    user: &str,
    pass: &str,
) -> Result<Reply, BenchError> {
    bounded("LOGIN and SELECT", COMMAND_TIMEOUT, async {
        conn.command(&format!("LOGIN {user} {pass}")).await?;
        conn.command("SELECT INBOX").await
    })
    .await
}
