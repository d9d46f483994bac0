//! Opening a backend connection: TCP, TLS or STARTTLS, greeting, CAPABILITY, and login.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use imapproxy_codec::Secret;
use imapproxy_codec::capability::parse_capabilities;
use imapproxy_codec::framer::{Direction, Framer, Status};
use imapproxy_tls::{BackendTls, TlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::Error;
use crate::stream::BackendStream;

/// Upper bound on one response the connector reads itself (greeting, CAPABILITY, ID, login).
/// The relay never goes through this path, so a small bound costs nothing.
const MAX_RESPONSE: usize = 256 * 1024;

/// Where and how to reach one backend.
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
    /// Bound on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Bound on every exchange the connector performs (greeting, CAPABILITY, login).
    pub io_timeout: Duration,
    /// Send a PROXY protocol v2 header right after the TCP connect, before TLS and the
    /// greeting, so that the backend (Dovecot with `haproxy = yes` and
    /// `haproxy_trusted_networks`) sees the real client. The pool then keeps no warm
    /// connections for this backend (they cannot know their client in advance). A cached
    /// authenticated session is reused only for the same user, and keeps the address of the
    /// client it was opened for.
    pub proxy_protocol: bool,
}

/// The client a backend connection is opened for, as announced in a PROXY v2 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddrs {
    /// The client's address.
    pub source: SocketAddr,
    /// The address the client connected to (the proxy's listener, or the balancer's front).
    pub destination: SocketAddr,
}

/// A PROXY protocol v2 header (HAProxy spec §2.2): `PROXY` with the client's addresses, or
/// `LOCAL` (the backend keeps the connection's own endpoints) when there is no client, as for
/// health checks. Mixed families are sent as IPv6, the IPv4 side mapped (`::ffff:a.b.c.d`).
pub fn proxy_v2_header(client: Option<ClientAddrs>) -> Result<Vec<u8>, Error> {
    use ppp::v2::{AddressFamily, Builder, Command, Protocol, Version};
    let built = match client {
        Some(ClientAddrs {
            source,
            destination,
        }) => {
            let pair = match (source, destination) {
                (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
                    (source, destination)
                }
                _ => (as_v6(source), as_v6(destination)),
            };
            Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, pair).build()
        }
        None => Builder::new(
            Version::Two | Command::Local,
            AddressFamily::Unspecified | Protocol::Unspecified,
        )
        .build(),
    };
    Ok(built?)
}

fn as_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) => SocketAddr::from((a.ip().to_ipv6_mapped(), a.port())),
        v6 @ SocketAddr::V6(_) => v6,
    }
}

impl BackendTarget {
    /// A plain-TCP target with default timeouts (connect 5 s, I/O 30 s).
    pub fn plain(addr: impl Into<String>) -> Self {
        let addr = addr.into();
        let server_name = host_part(&addr).to_owned();
        Self {
            addr,
            tls: TlsMode::None,
            tls_client: None,
            server_name,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
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

/// A user's credentials, held only as long as a login needs them.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Login name as the client gave it.
    pub username: String,
    /// Password; redacted in every `Debug` output.
    pub password: Secret<Vec<u8>>,
}

/// One step of a relayed SASL exchange (see [`BackendConn::sasl_start`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslStep {
    /// The backend sent a continuation: its text (base64, as sent, without `+ ` and CRLF),
    /// for the client to answer.
    Challenge(Vec<u8>),
    /// The backend accepted: the connection is logged in, capabilities are post-login.
    Done,
}

/// One response read by the connector: the untagged lines before it and the tagged line.
#[derive(Debug, Default)]
pub struct Response {
    /// Untagged (`*`) and continuation lines received before the tagged status, raw.
    pub untagged: Vec<Vec<u8>>,
    /// The tagged status line, raw, including CRLF.
    pub tagged: Vec<u8>,
}

impl Response {
    /// The status word of the tagged line (`OK`, `NO`, `BAD`).
    pub fn status(&self) -> Option<Status> {
        status_of(&self.tagged)
    }

    /// True for a tagged `OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self.status(), Some(Status::Ok))
    }

    /// The response code of the tagged line (`[CODE ...]`), upper-cased first word.
    pub fn code(&self) -> Option<String> {
        response_code(&self.tagged)
    }
}

fn status_of(line: &[u8]) -> Option<Status> {
    let mut words = line.splitn(3, |b| *b == b' ');
    let _tag = words.next()?;
    let word = words.next()?;
    let word = word.strip_suffix(b"\r\n").unwrap_or(word);
    match word.to_ascii_uppercase().as_slice() {
        b"OK" => Some(Status::Ok),
        b"NO" => Some(Status::No),
        b"BAD" => Some(Status::Bad),
        b"BYE" => Some(Status::Bye),
        b"PREAUTH" => Some(Status::PreAuth),
        _ => None,
    }
}

fn response_code(line: &[u8]) -> Option<String> {
    let start = memchr::memchr(b'[', line)? + 1;
    let rest = line.get(start..)?;
    let end = rest.iter().position(|b| *b == b']' || *b == b' ')?;
    Some(String::from_utf8_lossy(&rest[..end]).to_ascii_uppercase())
}

/// An open backend connection that has been greeted and whose capabilities are known, not yet
/// logged in (or logged in, after [`BackendConn::login`]).
#[derive(Debug)]
pub struct BackendConn {
    stream: BackendStream,
    buf: Vec<u8>,
    /// Space-separated, one allocation: every idle session keeps its list, and a list of
    /// ~50 separately allocated strings would cost more than the rest of the session.
    capabilities: Arc<str>,
    next_tag: u32,
    io_timeout: Duration,
    addr: String,
}

impl BackendConn {
    /// Connects to `target`: TCP (with `TCP_NODELAY`), TLS or STARTTLS as configured, reads the
    /// greeting and learns the capabilities. With [`BackendTarget::proxy_protocol`] it sends a
    /// PROXY v2 `LOCAL` header; use [`BackendConn::connect_for`] to name a client.
    pub async fn connect(target: &BackendTarget) -> Result<Self, Error> {
        Self::connect_for(target, None).await
    }

    /// [`BackendConn::connect`] on behalf of `client`: with [`BackendTarget::proxy_protocol`]
    /// the PROXY v2 header names it (`LOCAL` when `None`); otherwise `client` is unused.
    pub async fn connect_for(
        target: &BackendTarget,
        client: Option<ClientAddrs>,
    ) -> Result<Self, Error> {
        let addr = target.addr.clone();
        let tcp = tokio::time::timeout(target.connect_timeout, TcpStream::connect(&target.addr))
            .await
            .map_err(|_| Error::Timeout {
                addr: addr.clone(),
                step: "connect",
            })?
            .map_err(|source| Error::Connect {
                addr: addr.clone(),
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
                .map_err(|_| Error::Timeout {
                    addr: addr.clone(),
                    step: "PROXY header",
                })??;
        }
        let stream = match target.tls {
            TlsMode::Implicit => {
                let tls = tls_client(target)?;
                let s = tls
                    .connect(tcp, &target.server_name, target.connect_timeout)
                    .await?;
                BackendStream::Tls(Box::new(s))
            }
            _ => BackendStream::Plain(tcp),
        };
        let mut conn = Self {
            stream,
            buf: Vec::new(),
            capabilities: Arc::from(""),
            next_tag: 0,
            io_timeout: target.io_timeout,
            addr,
        };
        let greeting = conn.read_message().await?;
        match status_of(&greeting) {
            Some(Status::Ok) => {}
            // RFC 9051 §7.1.4: a PREAUTH greeting would hand the client someone's session.
            Some(Status::PreAuth) => {
                return Err(Error::Protocol("backend greeted with PREAUTH".into()));
            }
            _ => return Err(Error::Refused),
        }
        if let Some(caps) = parse_capabilities(&greeting) {
            conn.capabilities = caps.join(" ").into();
        }
        if target.tls == TlsMode::StartTls {
            let resp = conn.command("STARTTLS").await?;
            if !resp.is_ok() {
                return Err(Error::Protocol("backend refused STARTTLS".into()));
            }
            if !conn.buf.is_empty() {
                // Anything sent in the clear after the STARTTLS reply is an injection attempt.
                return Err(Error::Protocol("data after STARTTLS response".into()));
            }
            let tls = tls_client(target)?;
            let BackendStream::Plain(tcp) = conn.stream else {
                return Err(Error::Protocol("STARTTLS on a TLS connection".into()));
            };
            let s = tls
                .connect(tcp, &target.server_name, target.connect_timeout)
                .await?;
            conn.stream = BackendStream::Tls(Box::new(s));
            conn.capabilities = Arc::from("");
        }
        if conn.capabilities.is_empty() {
            conn.refresh_capabilities().await?;
        }
        Ok(conn)
    }

    /// The backend's current capabilities (pre-login until [`BackendConn::login`] succeeds).
    pub fn capabilities(&self) -> impl Iterator<Item = &str> + '_ {
        self.capabilities.split_ascii_whitespace()
    }

    /// Shares the capability list with other connections to the same backend: `cache` holds
    /// the last list seen; an equal list is replaced by that shared copy.
    pub(crate) fn intern_capabilities(&mut self, cache: &std::sync::Mutex<Option<Arc<str>>>) {
        let mut cached = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match cached.as_ref() {
            Some(c) if **c == *self.capabilities => self.capabilities = Arc::clone(c),
            _ => *cached = Some(Arc::clone(&self.capabilities)),
        }
    }

    /// Whether the backend advertises `cap` (case-insensitive).
    pub fn has_capability(&self, cap: &str) -> bool {
        self.capabilities().any(|c| c.eq_ignore_ascii_case(cap))
    }

    /// Sends `CAPABILITY` and stores the answer.
    pub async fn refresh_capabilities(&mut self) -> Result<(), Error> {
        let resp = self.command("CAPABILITY").await?;
        if let Some(caps) = resp.untagged.iter().find_map(|l| parse_capabilities(l)) {
            self.capabilities = caps.join(" ").into();
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
        let tag = self.tag();
        let line = format!("{tag} {command}\r\n");
        self.write_all(line.as_bytes()).await?;
        self.read_response(&tag).await
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
    /// response instead is an error ([`Error::AuthFailed`] carries its code).
    pub async fn read_continuation(&mut self) -> Result<Vec<Vec<u8>>, Error> {
        let mut untagged = Vec::new();
        loop {
            let msg = self.read_message().await?;
            if msg.starts_with(b"+") {
                return Ok(untagged);
            }
            if !msg.starts_with(b"*") {
                return Err(Error::CommandRejected {
                    code: response_code(&msg),
                });
            }
            untagged.push(msg);
        }
    }

    /// Logs in with `creds`, first sending `ID` with `id_fields` (RFC 2971) in the same write so
    /// that the backend records the real client (Dovecot honours `x-originating-ip` from
    /// `login_trusted_networks`). Uses `AUTHENTICATE PLAIN` with SASL-IR when offered, `LOGIN`
    /// otherwise. On success the capabilities are the backend's post-login ones.
    pub async fn login(
        &mut self,
        creds: &Credentials,
        id_fields: &[(String, String)],
    ) -> Result<(), Error> {
        let mut out = Vec::with_capacity(256);
        let id_tag = if id_fields.is_empty() || !self.has_capability("ID") {
            None
        } else {
            let tag = self.tag();
            out.extend_from_slice(tag.as_bytes());
            out.extend_from_slice(b" ID (");
            for (i, (k, v)) in id_fields.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                push_quoted(&mut out, k.as_bytes());
                out.push(b' ');
                push_quoted(&mut out, v.as_bytes());
            }
            out.extend_from_slice(b")\r\n");
            Some(tag)
        };
        let login_tag = self.tag();
        let user = creds.username.as_bytes();
        let pass = creds.password.expose().as_slice();
        let literal_login = !(quotable(user) && quotable(pass));
        if self.has_capability("AUTH=PLAIN") && self.has_capability("SASL-IR") {
            let mut plain = Vec::with_capacity(user.len() + pass.len() + 2);
            plain.push(0);
            plain.extend_from_slice(user);
            plain.push(0);
            plain.extend_from_slice(pass);
            let b64 = base64::engine::general_purpose::STANDARD.encode(&plain);
            out.extend_from_slice(login_tag.as_bytes());
            out.extend_from_slice(b" AUTHENTICATE PLAIN ");
            out.extend_from_slice(b64.as_bytes());
            out.extend_from_slice(b"\r\n");
        } else if !literal_login {
            out.extend_from_slice(login_tag.as_bytes());
            out.extend_from_slice(b" LOGIN ");
            push_quoted(&mut out, user);
            out.push(b' ');
            push_quoted(&mut out, pass);
            out.extend_from_slice(b"\r\n");
        } else {
            return self
                .login_with_literals(out, id_tag, &login_tag, creds)
                .await;
        }
        self.write_all(&out).await?;
        if let Some(tag) = id_tag {
            // The ID answer carries the backend's name: read and drop it.
            self.read_response(&tag).await?;
        }
        let resp = self.read_response(&login_tag).await?;
        self.finish_login(resp).await
    }

    /// Starts relaying a SASL exchange the proxy does not verify itself (RFC 9051 §6.2.2):
    /// sends `ID` with `id_fields` (as [`BackendConn::login`] does), then
    /// `AUTHENTICATE <mechanism>` with the client's first message (`initial_response`, raw,
    /// not yet base64) — as SASL-IR (RFC 4959) when the backend offers it, otherwise after the
    /// backend's first empty continuation. `None` starts without a first message.
    ///
    /// Returns the tag of the exchange and the first step: a challenge for the client, or
    /// [`SaslStep::Done`] when the backend accepted at once. A refusal is
    /// [`Error::AuthFailed`].
    pub async fn sasl_start(
        &mut self,
        mechanism: &str,
        initial_response: Option<&[u8]>,
        id_fields: &[(String, String)],
    ) -> Result<(String, SaslStep), Error> {
        if mechanism.is_empty()
            || !mechanism
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Protocol("invalid SASL mechanism name".into()));
        }
        let mut out = Vec::with_capacity(256);
        let id_tag = self.push_id(&mut out, id_fields);
        let tag = self.tag();
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b" AUTHENTICATE ");
        out.extend_from_slice(mechanism.as_bytes());
        let sasl_ir = self.has_capability("SASL-IR");
        let mut pending = None;
        if let Some(ir) = initial_response {
            if sasl_ir {
                out.push(b' ');
                push_sasl_data(&mut out, ir);
            } else {
                pending = Some(ir);
            }
        }
        out.extend_from_slice(b"\r\n");
        self.write_all(&out).await?;
        if let Some(tag) = id_tag {
            // The ID answer carries the backend's name: read and drop it.
            self.read_response(&tag).await?;
        }
        let step = self.sasl_read(&tag).await?;
        match (pending, step) {
            // Without SASL-IR the first message answers the server's empty challenge.
            (Some(ir), SaslStep::Challenge(_)) => {
                let step = self.sasl_respond(&tag, ir).await?;
                Ok((tag, step))
            }
            (_, step) => Ok((tag, step)),
        }
    }

    /// Sends the client's answer (raw, not yet base64) to the last challenge of the exchange
    /// tagged `tag` and reads the next step.
    pub async fn sasl_respond(&mut self, tag: &str, response: &[u8]) -> Result<SaslStep, Error> {
        let mut out = Vec::with_capacity(response.len() * 4 / 3 + 8);
        // An empty answer to a continuation is an empty line (RFC 9051 §6.2.2).
        if !response.is_empty() {
            push_sasl_data(&mut out, response);
        }
        out.extend_from_slice(b"\r\n");
        self.write_all(&out).await?;
        self.sasl_read(tag).await
    }

    /// Cancels the exchange tagged `tag` with `*` (RFC 9051 §6.2.2) and waits for the
    /// backend's (`BAD`) answer.
    pub async fn sasl_cancel(&mut self, tag: &str) -> Result<(), Error> {
        self.write_all(b"*\r\n").await?;
        self.read_response(tag).await.map(|_| ())
    }

    /// The next continuation or the tagged end of a SASL exchange.
    async fn sasl_read(&mut self, tag: &str) -> Result<SaslStep, Error> {
        loop {
            let msg = self.read_message().await?;
            if let Some(rest) = msg.strip_prefix(b"+") {
                let text = rest.strip_suffix(b"\r\n").unwrap_or(rest);
                let text = text.strip_prefix(b" ").unwrap_or(text);
                return Ok(SaslStep::Challenge(text.to_vec()));
            }
            let is_ours = msg.len() > tag.len()
                && msg.starts_with(tag.as_bytes())
                && msg.get(tag.len()) == Some(&b' ');
            if is_ours {
                let resp = Response {
                    untagged: Vec::new(),
                    tagged: msg,
                };
                self.finish_login(resp).await?;
                return Ok(SaslStep::Done);
            }
            if msg.starts_with(b"* BYE") {
                return Err(Error::Refused);
            }
        }
    }

    /// Appends an `ID` command with `fields` when there are any and the backend has `ID`;
    /// returns its tag.
    fn push_id(&mut self, out: &mut Vec<u8>, id_fields: &[(String, String)]) -> Option<String> {
        if id_fields.is_empty() || !self.has_capability("ID") {
            return None;
        }
        let tag = self.tag();
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b" ID (");
        for (i, (k, v)) in id_fields.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            push_quoted(out, k.as_bytes());
            out.push(b' ');
            push_quoted(out, v.as_bytes());
        }
        out.extend_from_slice(b")\r\n");
        Some(tag)
    }

    /// The capability list as one shared string.
    pub(crate) fn capability_string(&self) -> Arc<str> {
        Arc::clone(&self.capabilities)
    }

    async fn login_with_literals(
        &mut self,
        mut out: Vec<u8>,
        id_tag: Option<String>,
        login_tag: &str,
        creds: &Credentials,
    ) -> Result<(), Error> {
        let user = creds.username.as_bytes();
        let pass = creds.password.expose().as_slice();
        let non_sync = self.has_capability("LITERAL+")
            || (self.has_capability("LITERAL-") && user.len() <= 4096 && pass.len() <= 4096);
        out.extend_from_slice(login_tag.as_bytes());
        out.extend_from_slice(b" LOGIN ");
        if non_sync {
            out.extend_from_slice(format!("{{{}+}}\r\n", user.len()).as_bytes());
            out.extend_from_slice(user);
            out.extend_from_slice(format!(" {{{}+}}\r\n", pass.len()).as_bytes());
            out.extend_from_slice(pass);
            out.extend_from_slice(b"\r\n");
            self.write_all(&out).await?;
        } else {
            out.extend_from_slice(format!("{{{}}}\r\n", user.len()).as_bytes());
            self.write_all(&out).await?;
            if let Some(tag) = &id_tag {
                self.read_response(tag).await?;
            }
            self.expect_continuation().await?;
            let mut part = user.to_vec();
            part.extend_from_slice(format!(" {{{}}}\r\n", pass.len()).as_bytes());
            self.write_all(&part).await?;
            self.expect_continuation().await?;
            let mut last = pass.to_vec();
            last.extend_from_slice(b"\r\n");
            self.write_all(&last).await?;
            let resp = self.read_response(login_tag).await?;
            return self.finish_login(resp).await;
        }
        if let Some(tag) = id_tag {
            self.read_response(&tag).await?;
        }
        let resp = self.read_response(login_tag).await?;
        self.finish_login(resp).await
    }

    async fn expect_continuation(&mut self) -> Result<(), Error> {
        let msg = self.read_message().await?;
        if msg.starts_with(b"+") {
            Ok(())
        } else {
            Err(Error::AuthFailed {
                code: response_code(&msg),
            })
        }
    }

    async fn finish_login(&mut self, resp: Response) -> Result<(), Error> {
        if !resp.is_ok() {
            return Err(Error::AuthFailed { code: resp.code() });
        }
        match parse_capabilities(&resp.tagged) {
            Some(caps) => self.capabilities = caps.join(" ").into(),
            None => self.refresh_capabilities().await?,
        }
        Ok(())
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let io = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(self.io_timeout, io)
            .await
            .map_err(|_| Error::Timeout {
                addr: self.addr.clone(),
                step: "write",
            })??;
        Ok(())
    }

    /// Reads responses until the tagged one for `tag`.
    pub async fn read_response(&mut self, tag: &str) -> Result<Response, Error> {
        let mut resp = Response::default();
        loop {
            let msg = self.read_message().await?;
            let is_ours = msg.len() > tag.len()
                && msg.starts_with(tag.as_bytes())
                && msg.get(tag.len()) == Some(&b' ');
            if is_ours {
                resp.tagged = msg;
                return Ok(resp);
            }
            if msg.starts_with(b"* BYE") {
                return Err(Error::Refused);
            }
            resp.untagged.push(msg);
        }
    }

    /// Reads one whole response message (literals included), bounded by [`MAX_RESPONSE`].
    async fn read_message(&mut self) -> Result<Vec<u8>, Error> {
        let mut framer = Framer::new(Direction::Server);
        let mut scanned = 0;
        loop {
            if let Some((n, _frame)) = framer.advance(&self.buf[scanned..]) {
                let rest = self.buf.split_off(scanned + n);
                return Ok(std::mem::replace(&mut self.buf, rest));
            }
            scanned = self.buf.len();
            if self.buf.len() >= MAX_RESPONSE {
                return Err(Error::TooLarge);
            }
            // Read straight into the heap buffer: a stack array here would sit in the state of
            // every future that awaits a response, and so in every session task.
            self.buf.reserve(4096);
            let n = tokio::time::timeout(self.io_timeout, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| Error::Timeout {
                    addr: self.addr.clone(),
                    step: "read",
                })??;
            if n == 0 {
                return Err(Error::Refused);
            }
        }
    }

    /// Gives up the connection for relaying: the stream and any bytes already read past the
    /// last response (normally none).
    pub fn into_parts(self) -> (BackendStream, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// Takes the bytes read past the last response (normally none): they belong to whoever
    /// reads the stream next.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The stream, for callers that exchange commands themselves.
    pub fn stream_mut(&mut self) -> &mut BackendStream {
        &mut self.stream
    }
}

/// Base64 of `data`; an empty message is `=` (RFC 4959 §3 for SASL-IR, and accepted by
/// servers as an empty continuation answer).
fn push_sasl_data(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        out.push(b'=');
    } else {
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(data)
                .as_bytes(),
        );
    }
}

fn tls_client(target: &BackendTarget) -> Result<&BackendTls, Error> {
    target
        .tls_client
        .as_ref()
        .ok_or_else(|| Error::Protocol("TLS requested but no TLS client configured".into()))
}

/// Whether `s` can be sent as an IMAP quoted string (RFC 9051 §4.3: no CR, LF or NUL; 7-bit).
fn quotable(s: &[u8]) -> bool {
    s.len() <= 1024
        && s.iter()
            .all(|b| *b != 0 && *b != b'\r' && *b != b'\n' && *b < 0x80)
}

/// Appends `s` as a quoted string; callers check [`quotable`] first.
pub(crate) fn push_quoted(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for b in s {
        if *b == b'"' || *b == b'\\' {
            out.push(b'\\');
        }
        out.push(*b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_code_of_tagged_lines() {
        assert!(matches!(status_of(b"P1 OK done\r\n"), Some(Status::Ok)));
        assert!(matches!(
            status_of(b"P1 no [AUTHENTICATIONFAILED] x\r\n"),
            Some(Status::No)
        ));
        assert_eq!(
            response_code(b"P1 NO [AUTHENTICATIONFAILED] x\r\n").as_deref(),
            Some("AUTHENTICATIONFAILED")
        );
        assert_eq!(response_code(b"P1 NO x\r\n"), None);
    }

    #[test]
    fn quoting_escapes_and_refuses_controls() {
        let mut out = Vec::new();
        push_quoted(&mut out, br#"a"b\c"#);
        assert_eq!(out, br#""a\"b\\c""#);
        assert!(quotable(b"pass word"));
        assert!(!quotable(b"a\r\nb"));
        assert!(!quotable("pässword".as_bytes()));
    }

    #[test]
    fn proxy_v2_headers_parse_back() {
        let client = ClientAddrs {
            source: "127.0.0.5:40000".parse().unwrap(),
            destination: "127.0.0.1:1143".parse().unwrap(),
        };
        let h = proxy_v2_header(Some(client)).unwrap();
        let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Proxy);
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((client.source, client.destination))
        );
        assert_eq!(parsed.len(), h.len());

        let mixed = ClientAddrs {
            source: "[2001:db8::1]:1".parse().unwrap(),
            destination: "127.0.0.1:143".parse().unwrap(),
        };
        let h = proxy_v2_header(Some(mixed)).unwrap();
        let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(parsed.address_family(), ppp::v2::AddressFamily::IPv6);

        let h = proxy_v2_header(None).unwrap();
        let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(parsed.command, ppp::v2::Command::Local);
        assert_eq!(h.len(), 16);
    }

    #[test]
    fn host_part_strips_port_and_brackets() {
        assert_eq!(host_part("127.0.0.1:143"), "127.0.0.1");
        assert_eq!(host_part("[::1]:143"), "::1");
        assert_eq!(host_part("mail.example.org:993"), "mail.example.org");
    }
}
