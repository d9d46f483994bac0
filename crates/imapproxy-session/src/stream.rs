//! The client's byte stream: plain TCP, or TLS (implicit, or after STARTTLS).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use imapproxy_pool::BackendStream;
use imapproxy_tls::tokio_rustls::server::TlsStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client connection.
#[derive(Debug)]
pub enum ClientStream {
    /// Plain TCP (a `none` listener, or `starttls` before the upgrade).
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// Transitional state while the TCP stream is handed to the TLS handshake; never observed by
    /// I/O in a correct session (every operation fails with `NotConnected`).
    Detached,
}

impl ClientStream {
    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Acknowledges the client's data at once rather than after the delayed-ACK timer (at
    /// least 40 ms on Linux). Call it after every read that returned data.
    ///
    /// A client with Nagle's algorithm on (most libraries: Python's imaplib, imapclient)
    /// that writes a command and its CRLF in two `send()`s holds the CRLF back until the
    /// first part is acknowledged; the proxy cannot answer an incomplete command, so without
    /// an immediate ACK every such command waits for the timer. Dovecot sets `TCP_QUICKACK`
    /// after its reads for the same reason. The kernel leaves quick-ACK mode by itself, hence
    /// once per read. Best effort, and a no-op where the option does not exist.
    pub fn quickack(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(tcp) = self.tcp() {
            // A failure only costs latency; the connection itself is unaffected.
            let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
        }
    }

    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(s) => Some(s),
            Self::Tls(s) => Some(s.get_ref().0),
            Self::Detached => None,
        }
    }
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "client stream detached")
}

/// A stream a relay can wait on without holding a read buffer.
pub(crate) trait ReadReady: AsyncRead + AsyncWrite + Unpin {
    /// Ready when a read may make progress. Only meaningful after a read returned `Pending`: TLS
    /// implementations then hold no decrypted bytes, so the socket's readiness is the truth.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Called after every read that returned data (see [`ClientStream::quickack`]).
    fn after_read(&self) {}

    /// The TCP socket, when the stream is nothing more (no TLS): bytes may then be moved to or
    /// from it with `splice(2)`.
    fn plain_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl ReadReady for ClientStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.tcp() {
            Some(tcp) => tcp.poll_read_ready(cx),
            None => Poll::Ready(Err(detached())),
        }
    }

    fn after_read(&self) {
        self.quickack();
    }

    fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(s) => Some(s),
            Self::Tls(_) | Self::Detached => None,
        }
    }
}

impl ReadReady for BackendStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        BackendStream::poll_read_ready(self, cx)
    }

    fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(s) => Some(s),
            Self::Tls(_) => None,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Detached => Poll::Ready(Err(detached())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Detached => Poll::Ready(Err(detached())),
        }
    }
}
