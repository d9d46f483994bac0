//! The HTTP auth service nginx's mail proxy asks where each user goes (`auth_http`,
//! nginx's "mail auth protocol"): every request is answered `Auth-Status: OK` with the
//! testkit Dovecot's address; Dovecot itself checks the password when nginx logs in
//! there.
//!
//! Blocking, one request at a time, on a thread of its own: the measuring client runs on
//! a single-threaded runtime, and an auth answer must not wait for it (nor it for us).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::BenchError;

/// Longest request head read (nginx's are a few hundred bytes).
const MAX_REQUEST: usize = 16 * 1024;
/// Bound on reading one request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A running responder; stopped and joined on drop.
pub struct AuthResponder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AuthResponder {
    /// Listens on a free loopback port and sends every user to `backend`.
    pub fn start(backend: SocketAddr) -> Result<AuthResponder, BenchError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(BenchError::io("auth_http responder: bind"))?;
        let addr = listener
            .local_addr()
            .map_err(BenchError::io("auth_http responder: local address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let reply = response(backend);
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("auth_http".to_owned())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        if let Ok(stream) = conn {
                            answer(stream, reply.as_bytes());
                        }
                    }
                })
                .map_err(BenchError::io("auth_http responder: thread"))?
        };
        Ok(AuthResponder {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where nginx's `auth_http` points.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AuthResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept; it sees the flag and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer for every request: nginx mail auth protocol, `Auth-Server` must be an IP
/// address.
fn response(backend: SocketAddr) -> String {
    format!(
        "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: {}\r\nAuth-Port: {}\r\n\r\n",
        backend.ip(),
        backend.port()
    )
}

/// Reads a request head (up to the blank line) and writes `reply`; a request that is cut off or too
/// long gets nothing (nginx then refuses that login).
fn answer(mut stream: TcpStream, reply: &[u8]) {
    if stream.set_read_timeout(Some(READ_TIMEOUT)).is_err() {
        return;
    }
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or(&[])),
        }
        if head.len() > MAX_REQUEST {
            return;
        }
    }
    let _ = stream.write_all(reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_sent_to_the_backend() {
        let backend: SocketAddr = "127.0.0.1:10143".parse().unwrap();
        let auth = AuthResponder::start(backend).unwrap();
        for _ in 0..2 {
            let mut s = TcpStream::connect(auth.addr()).unwrap();
            s.write_all(
                b"GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\n\
                  Auth-User: user1\r\nAuth-Pass: pass1\r\nAuth-Protocol: imap\r\n\r\n",
            )
            .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
            assert!(text.contains("Auth-Status: OK\r\n"));
            assert!(text.contains("Auth-Server: 127.0.0.1\r\nAuth-Port: 10143\r\n\r\n"));
        }
        drop(auth);
    }
}
