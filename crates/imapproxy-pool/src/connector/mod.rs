//! A connection to one backend: opened over TCP, TLS or STARTTLS and greeted ([`connect`]),
//! logged in with a password ([`login`]) or through a relayed SASL exchange ([`sasl`]), and
//! exchanging commands whose responses are read by the sans-IO [`response`] reader.

mod connect;
mod login;
mod proxy_header;
mod response;
mod sasl;
mod secret_buf;
mod target;

use std::fmt;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::capabilities::Capabilities;
use crate::error::Error;
use crate::stream::BackendStream;

pub use login::Credentials;
pub use proxy_header::{ClientAddrs, proxy_v2_header};
pub use response::{Greeting, Response, ResponseLimits, ResponseReader};
pub use sasl::SaslStep;
pub use target::BackendTarget;

use response::response_code;

/// Largest read of a backend exchange outside the relay (greeting, login, revival).
const READ_CHUNK: usize = 4096;

/// An open backend connection that has been greeted and whose capabilities are known, not yet
/// logged in (or logged in, after [`BackendConn::login`]).
pub struct BackendConn {
    stream: BackendStream,
    /// Made on first use, dropped when the connection is handed over
    /// ([`BackendConn::take_buffered`]): a relayed session, which holds its connection for
    /// as long as it lives, keeps no reader state (about 250 bytes).
    reader: Option<Box<ResponseReader>>,
    /// The bounds of the reader, kept for the next one.
    limits: ResponseLimits,
    capabilities: Capabilities,
    next_tag: u32,
    /// [`BackendTarget::io_timeout`](crate::BackendTarget::io_timeout) and
    /// [`login_timeout`](crate::BackendTarget::login_timeout) in milliseconds (at most 49
    /// days): 8 bytes of every connection rather than two `Duration`s' 32.
    io_timeout_ms: u32,
    login_timeout_ms: u32,
    addr: String,
}

impl fmt::Debug for BackendConn {
    // Neither the bytes buffered nor anything sent: they may hold mail or SASL data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendConn")
            .field("addr", &self.addr)
            .field("tls", &self.stream.is_tls())
            .field("capabilities", &self.capabilities)
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

/// `d` in whole milliseconds, at most `u32::MAX` (49 days).
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl BackendConn {
    fn io_timeout(&self) -> Duration {
        Duration::from_millis(self.io_timeout_ms.into())
    }

    fn login_timeout(&self) -> Duration {
        Duration::from_millis(self.login_timeout_ms.into())
    }

    /// The backend's current capabilities (pre-login until [`BackendConn::login`] succeeds).
    pub fn capabilities(&self) -> impl Iterator<Item = &str> + '_ {
        self.capabilities.iter()
    }

    /// Whether the backend advertises `cap` (case-insensitive).
    pub fn has_capability(&self, cap: &str) -> bool {
        self.capabilities.contains(cap)
    }

    /// The capability list, shared.
    pub(crate) fn capability_list(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Shares the capability list with other connections to the same backend: `shared` holds
    /// the last list seen; an equal list is replaced by that shared copy.
    pub(crate) fn share_capabilities(&mut self, shared: &std::sync::Mutex<Option<Capabilities>>) {
        self.capabilities.share(&mut crate::sync::lock(shared));
    }

    /// Sends `CAPABILITY` and stores the answer.
    pub async fn refresh_capabilities(&mut self) -> Result<(), Error> {
        let resp = self.command("CAPABILITY").await?;
        if let Some(caps) = resp
            .untagged
            .iter()
            .find_map(|l| Capabilities::from_line(l))
        {
            self.capabilities = caps;
        }
        Ok(())
    }

    fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("P{}", self.next_tag)
    }

    /// Sends one command line (without tag and CRLF) under the connector's own tag and reads
    /// its response.
    pub async fn command(&mut self, command: &str) -> Result<Response, Error> {
        self.command_bytes(command.as_bytes()).await
    }

    /// Sends one command (`args`: everything after the tag, without CRLF, as bytes, e.g. a
    /// mailbox name in a quoted string) under the connector's own tag and reads its response.
    pub async fn command_bytes(&mut self, args: &[u8]) -> Result<Response, Error> {
        let tag = self.tag();
        let mut line = Vec::with_capacity(tag.len() + args.len() + 3);
        line.extend_from_slice(tag.as_bytes());
        line.push(b' ');
        line.extend_from_slice(args);
        line.extend_from_slice(b"\r\n");
        self.write_all(&line).await?;
        self.read_response(&tag).await
    }

    /// Writes `bytes` as they are (whole commands of someone else's, with their own tags),
    /// bounded by the I/O timeout.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.write_all(bytes).await
    }

    /// Reads until a `+` continuation; returns the untagged responses before it. A tagged
    /// response instead is [`Error::CommandRejected`] (`command: "continuation"`, with its
    /// code).
    pub async fn read_continuation(&mut self) -> Result<Vec<Vec<u8>>, Error> {
        let mut untagged = Vec::new();
        loop {
            let msg = self.read_message().await?;
            if msg.starts_with(b"+") {
                return Ok(untagged);
            }
            if !msg.starts_with(b"*") {
                return Err(Error::CommandRejected {
                    command: "continuation",
                    code: response_code(&msg),
                });
            }
            untagged.push(msg);
        }
    }

    /// Reads responses until the tagged one for `tag`. A `* BYE` before it is
    /// [`Error::Bye`].
    pub async fn read_response(&mut self, tag: &str) -> Result<Response, Error> {
        loop {
            if let Some(resp) = self.reader().next_response(tag)? {
                return Ok(resp);
            }
            self.fill().await?;
        }
    }

    /// Reads one whole response message (literals included).
    async fn read_message(&mut self) -> Result<Vec<u8>, Error> {
        loop {
            if let Some(msg) = self.reader().next_message()? {
                return Ok(msg);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into the reader, bounded by the I/O timeout; EOF is
    /// [`Error::Closed`].
    ///
    /// Through a buffer on the stack for the length of one poll, appended to the reader's
    /// buffer as read: a connection waiting on its server (every login of a burst is one)
    /// holds no empty read buffer.
    async fn fill(&mut self) -> Result<(), Error> {
        let limits = self.limits;
        let io_timeout = self.io_timeout();
        let reader = self
            .reader
            .get_or_insert_with(|| Box::new(ResponseReader::new(limits)));
        let stream = &mut self.stream;
        let read = std::future::poll_fn(|cx| {
            let mut chunk = [const { std::mem::MaybeUninit::<u8>::uninit() }; READ_CHUNK];
            let mut read = tokio::io::ReadBuf::uninit(&mut chunk);
            std::task::ready!(tokio::io::AsyncRead::poll_read(
                std::pin::Pin::new(&mut *stream),
                cx,
                &mut read
            ))?;
            reader.read_buf().extend_from_slice(read.filled());
            std::task::Poll::Ready(std::io::Result::Ok(read.filled().len()))
        });
        let n = tokio::time::timeout(io_timeout, read)
            .await
            .map_err(|_| self.timed_out("read"))??;
        if n == 0 {
            return Err(Error::Closed);
        }
        Ok(())
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let io_timeout = self.io_timeout();
        let io = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(io_timeout, io)
            .await
            .map_err(|_| self.timed_out("write"))??;
        Ok(())
    }

    /// The error for an exchange that outlived its bound (the connection is then out of step
    /// with the server: drop it).
    fn timed_out(&self, step: &'static str) -> Error {
        Error::Timeout {
            addr: self.addr.clone(),
            step,
        }
    }

    /// Gives up the connection for relaying: the stream and any bytes already read past the
    /// last response (normally none).
    pub fn into_parts(mut self) -> (BackendStream, Vec<u8>) {
        let rest = self.take_buffered();
        (self.stream, rest)
    }

    /// Takes the bytes read past the last response (normally none): they belong to whoever
    /// reads the stream next.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.reader
            .take()
            .map(|mut r| r.take_buffered())
            .unwrap_or_default()
    }

    /// The response reader, made when first needed.
    fn reader(&mut self) -> &mut ResponseReader {
        let limits = self.limits;
        self.reader
            .get_or_insert_with(|| Box::new(ResponseReader::new(limits)))
    }

    /// Bytes read from the backend and not yet consumed.
    fn buffered(&self) -> usize {
        self.reader.as_ref().map_or(0, |r| r.buffered())
    }

    /// The stream, for callers that exchange commands themselves.
    pub fn stream_mut(&mut self) -> &mut BackendStream {
        &mut self.stream
    }
}
