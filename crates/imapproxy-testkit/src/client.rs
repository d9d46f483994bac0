//! A scripted async IMAP client for tests: plain, STARTTLS or implicit TLS.
//!
//! It frames responses (see [`crate::framing`]) but interprets nothing else, so
//! tests see exactly the bytes a server or the proxy sent.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::TestkitError;
use crate::framing;

/// Every read waits at most this long unless [`TestClient::set_timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The SNI name sent when none is given; the testkit's certificates are for it.
const DEFAULT_SERVER_NAME: &str = "localhost";

enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while a STARTTLS upgrade is in progress, or after it failed.
    Gone,
}

/// Scripted IMAP client for tests (async, tokio), plain or TLS.
///
/// TLS accepts any certificate: this is test code talking to loopback.
pub struct TestClient {
    conn: Conn,
    /// Bytes read but not yet returned as a response.
    buf: Vec<u8>,
    greeting: String,
    timeout: Duration,
    tags: u32,
}

/// Every line of one exchange, up to and including the tagged response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// Each response line with its CRLF and any literals inlined as raw bytes.
    pub lines: Vec<Vec<u8>>,
    /// All lines concatenated, exactly as received.
    pub raw: Vec<u8>,
}

impl Response {
    /// Whether the last (tagged) line says `OK`.
    pub fn tagged_ok(&self) -> bool {
        self.lines.last().is_some_and(|l| {
            l.split(|&b| b == b' ')
                .nth(1)
                .is_some_and(|w| framing::trim_crlf(w).eq_ignore_ascii_case(b"OK"))
        })
    }

    /// The last (tagged) line as text, without CRLF.
    pub fn status_line(&self) -> String {
        self.lines
            .last()
            .map(|l| String::from_utf8_lossy(framing::trim_crlf(l)).into_owned())
            .unwrap_or_default()
    }

    /// Everything received, as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The untagged lines (`* ...`) as text, without CRLF.
    pub fn untagged(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| l.starts_with(b"* "))
            .map(|l| String::from_utf8_lossy(framing::trim_crlf(l)).into_owned())
            .collect()
    }

    fn push(&mut self, line: Vec<u8>) {
        self.raw.extend_from_slice(&line);
        self.lines.push(line);
    }
}

impl TestClient {
    /// Connects in plain text and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> io::Result<TestClient> {
        let mut c = Self::connect_without_greeting(addr).await?;
        c.read_greeting().await?;
        Ok(c)
    }

    /// Connects with implicit TLS (SNI `localhost`, any certificate) and reads the greeting.
    pub async fn connect_tls(addr: SocketAddr) -> io::Result<TestClient> {
        Self::connect_tls_named(addr, DEFAULT_SERVER_NAME).await
    }

    /// Like [`TestClient::connect_tls`] with a chosen SNI name (for SNI tests).
    pub async fn connect_tls_named(addr: SocketAddr, server_name: &str) -> io::Result<TestClient> {
        let tcp = tcp_connect(addr).await?;
        let tls = tls_handshake(tcp, server_name).await?;
        let mut c = Self::from_conn(Conn::Tls(Box::new(tls)));
        c.read_greeting().await?;
        Ok(c)
    }

    /// Connects in plain text without reading anything: for listeners that expect a
    /// PROXY header first (send it with [`TestClient::send_raw`], then call
    /// [`TestClient::read_greeting`]) or tests of the pre-greeting phase.
    pub async fn connect_without_greeting(addr: SocketAddr) -> io::Result<TestClient> {
        Ok(Self::from_conn(Conn::Plain(tcp_connect(addr).await?)))
    }

    fn from_conn(conn: Conn) -> TestClient {
        TestClient {
            conn,
            buf: Vec::new(),
            greeting: String::new(),
            timeout: DEFAULT_TIMEOUT,
            tags: 0,
        }
    }

    /// Reads one response line as the greeting, stores it and returns it (without CRLF).
    pub async fn read_greeting(&mut self) -> io::Result<String> {
        let line = self.read_line().await?;
        self.greeting = String::from_utf8_lossy(framing::trim_crlf(&line)).into_owned();
        Ok(self.greeting.clone())
    }

    /// The greeting line, without CRLF.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// Whether the connection is TLS (implicit or after STARTTLS).
    pub fn is_tls(&self) -> bool {
        matches!(self.conn, Conn::Tls(_))
    }

    /// Changes how long each read may wait (default 10 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends `tag STARTTLS`, reads up to the tagged response and, if it is `OK`,
    /// performs the TLS handshake (SNI `localhost`, any certificate). Returns the
    /// tagged line either way; check it, or [`TestClient::is_tls`].
    ///
    /// Fails if the server sent anything after its `OK` before the handshake:
    /// RFC 9051 §6.2.1 (and RFC 2595 §3.1) require that to be discarded, and a test
    /// should notice a server or proxy that injects it.
    pub async fn starttls(&mut self, tag: &str) -> io::Result<String> {
        let resp = self.cmd(tag, "STARTTLS").await?;
        if !resp.tagged_ok() {
            return Ok(resp.status_line());
        }
        if !self.buf.is_empty() {
            return Err(TestkitError::Protocol(format!(
                "{} bytes arrived after STARTTLS OK, before the handshake",
                self.buf.len()
            ))
            .into());
        }
        let Conn::Plain(tcp) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            return Err(
                TestkitError::Tls("STARTTLS on a connection that is not plain".into()).into(),
            );
        };
        let tls = tls_handshake(tcp, DEFAULT_SERVER_NAME).await?;
        self.conn = Conn::Tls(Box::new(tls));
        Ok(resp.status_line())
    }

    /// Performs the TLS handshake on a plain connection whose `STARTTLS` was already answered
    /// (sent by hand with [`TestClient::send_raw`], e.g. with commands pipelined behind it).
    /// Bytes received and not yet read are discarded, as RFC 9051 §6.2.1 requires.
    pub async fn upgrade_tls(&mut self) -> io::Result<()> {
        let Conn::Plain(tcp) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            return Err(
                TestkitError::Tls("upgrade on a connection that is not plain".into()).into(),
            );
        };
        self.buf.clear();
        let tls = tls_handshake(tcp, DEFAULT_SERVER_NAME).await?;
        self.conn = Conn::Tls(Box::new(tls));
        Ok(())
    }

    /// Writes `bytes` as they are and flushes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.conn {
            Conn::Plain(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Conn::Gone => Err(gone()),
        }
    }

    /// Sends `tag cmd\r\n` and returns every response line up to and including the
    /// tagged response for `tag`. `{n}` literals in responses are inlined (but not
    /// after status text, where `{n}` is text).
    pub async fn cmd(&mut self, tag: &str, cmd: &str) -> io::Result<Response> {
        self.send_raw(format!("{tag} {cmd}\r\n").as_bytes()).await?;
        self.read_until_tagged(tag).await
    }

    /// Reads response lines until the tagged response for `tag` (included).
    pub async fn read_until_tagged(&mut self, tag: &str) -> io::Result<Response> {
        let mut resp = Response::default();
        loop {
            let line = self.read_line().await?;
            let done = line
                .strip_prefix(tag.as_bytes())
                .is_some_and(|rest| rest.starts_with(b" "));
            resp.push(line);
            if done {
                return Ok(resp);
            }
        }
    }

    /// Reads one response line, with its CRLF and with any literals inlined.
    pub async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(n) = framing::response_len(&self.buf) {
                let rest = self.buf.split_off(n);
                return Ok(std::mem::replace(&mut self.buf, rest));
            }
            let got = tokio::time::timeout_at(deadline, self.fill())
                .await
                .map_err(|_| io::Error::from(TestkitError::Timeout(self.timeout)))??;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed with {} unframed bytes: {:?}",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Sends a quoted `LOGIN` with a fresh tag and returns the response. Asserts nothing.
    pub async fn login(&mut self, user: &str, pass: &str) -> io::Result<Response> {
        let tag = self.next_tag();
        self.cmd(&tag, &format!("LOGIN {} {}", quote(user), quote(pass)))
            .await
    }

    /// Sends `LOGOUT` with a fresh tag and returns the response (`* BYE` + tagged `OK`).
    pub async fn logout(&mut self) -> io::Result<Response> {
        let tag = self.next_tag();
        self.cmd(&tag, "LOGOUT").await
    }

    /// A tag this client has not used yet (`T1`, `T2`, ...).
    pub fn next_tag(&mut self) -> String {
        self.tags += 1;
        format!("T{}", self.tags)
    }

    /// Whether the peer closes the connection within `within` (bytes received
    /// meanwhile are kept for later reads). A reset counts as closed.
    pub async fn expect_eof(&mut self, within: Duration) -> bool {
        let wait = async {
            loop {
                match self.fill().await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, wait).await.unwrap_or(false)
    }

    /// Bytes received but not yet returned by a read.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = match &mut self.conn {
            Conn::Plain(s) => s.read(&mut chunk).await?,
            Conn::Tls(s) => s.read(&mut chunk).await?,
            Conn::Gone => return Err(gone()),
        };
        self.buf
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n)
    }
}

fn gone() -> io::Error {
    TestkitError::Tls("connection lost during the STARTTLS upgrade".into()).into()
}

/// An IMAP quoted string (RFC 9051 §4.3): backslash and double quote escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

async fn tcp_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let tcp = tokio::time::timeout(DEFAULT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::from(TestkitError::Timeout(DEFAULT_TIMEOUT)))??;
    // Small request/response exchanges: do not let Nagle hold them back.
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn tls_handshake(tcp: TcpStream, server_name: &str) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| TestkitError::Tls(format!("bad server name {server_name:?}: {e}")))?;
    let connector = TlsConnector::from(insecure_client_config()?);
    tokio::time::timeout(DEFAULT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| io::Error::from(TestkitError::Timeout(DEFAULT_TIMEOUT)))?
}

/// A rustls client config (ring provider) that accepts any server certificate but
/// still checks handshake signatures: `imapproxy-tls`'s lab-only `Insecure` verification.
/// Test code only.
pub fn insecure_client_config() -> io::Result<Arc<rustls::ClientConfig>> {
    let tls = imapproxy_tls::BackendTls::new(imapproxy_tls::BackendVerify::Insecure)
        .map_err(|e| TestkitError::Tls(e.to_string()))?;
    Ok(tls.config())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_quote_and_backslash() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn response_status_helpers() {
        let mut r = Response::default();
        r.push(b"* 1 EXISTS\r\n".to_vec());
        r.push(b"a ok done\r\n".to_vec());
        assert!(r.tagged_ok());
        assert_eq!(r.status_line(), "a ok done");
        assert_eq!(r.untagged(), vec!["* 1 EXISTS".to_string()]);
        assert_eq!(r.text(), "* 1 EXISTS\r\na ok done\r\n");
    }
}
