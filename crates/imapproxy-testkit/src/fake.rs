//! A scripted fake IMAP backend for faults Dovecot cannot be made to produce:
//! garbage, a half-sent literal, a hang, a close at the worst moment.
//!
//! It runs on plain std threads (one for accepting, one per connection), so it works
//! from sync tests and from any tokio runtime flavour alike, and it never depends on
//! the test's runtime making progress.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long an [`Step::ExpectLine`] or [`Step::ReplyTo`] waits for the client's line.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the bytes to send from the tag of the line that was received.
pub type Reply = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

/// One step of a fake backend's script, run in order for each connection.
///
/// Lines from the client are matched by prefix, case-insensitively, against either
/// the whole line or the line without its first word (the tag), so
/// `ExpectLine("LOGIN")` matches `x1 LOGIN "u" "p"` and `ExpectLine("PROXY TCP4")`
/// matches a PROXY v1 header. The fake reads lines only: client literals are not
/// acknowledged. When the script runs out the connection is closed.
#[derive(Clone)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Read one line; it must match the prefix, otherwise the mismatch is recorded
    /// (see [`FakeBackend::errors`]) and the connection closed.
    ExpectLine(String),
    /// Read one line matching the prefix and answer with `reply(tag)`.
    ReplyTo(String, Reply),
    /// Wait this long.
    Sleep(Duration),
    /// Keep the connection open, reading and recording whatever arrives, until the
    /// client closes it or the fake backend is dropped.
    Hang,
    /// Close the connection now.
    Close,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Send(b) => write!(f, "Send({:?})", String::from_utf8_lossy(b)),
            Step::ExpectLine(p) => write!(f, "ExpectLine({p:?})"),
            Step::ReplyTo(p, _) => write!(f, "ReplyTo({p:?}, ..)"),
            Step::Sleep(d) => write!(f, "Sleep({d:?})"),
            Step::Hang => f.write_str("Hang"),
            Step::Close => f.write_str("Close"),
        }
    }
}

impl Step {
    /// `Send` of anything byte-like.
    pub fn send(bytes: impl AsRef<[u8]>) -> Step {
        Step::Send(bytes.as_ref().to_vec())
    }

    /// `ExpectLine` of a prefix.
    pub fn expect(prefix: &str) -> Step {
        Step::ExpectLine(prefix.to_owned())
    }

    /// `ReplyTo` with a closure.
    pub fn reply(prefix: &str, f: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Step {
        Step::ReplyTo(prefix.to_owned(), Arc::new(f))
    }

    /// Reads a line matching `prefix` and answers `tag OK <text>`.
    pub fn ok_to(prefix: &str, text: &str) -> Step {
        let text = text.to_owned();
        Step::reply(prefix, move |tag| {
            format!("{tag} OK {text}\r\n").into_bytes()
        })
    }

    /// A plausible IMAP4rev1 greeting with a capability list.
    pub fn greeting() -> Step {
        Step::send("* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN] fake backend ready\r\n")
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    accepted: AtomicUsize,
    open: Mutex<Vec<TcpStream>>,
    received: Mutex<Vec<Vec<u8>>>,
    errors: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking script thread must not hide what was recorded before it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A scripted fake backend listening on `127.0.0.1:<ephemeral>`.
///
/// ```no_run
/// use imapproxy_testkit::{FakeBackend, Step};
///
/// // Greets, accepts the login, then sends half a literal and hangs.
/// let fake = FakeBackend::start(vec![
///     Step::greeting(),
///     Step::ok_to("LOGIN", "logged in"),
///     Step::send("* 1 FETCH (BODY[] {100}\r\nonly a few bytes"),
///     Step::Hang,
/// ])
/// .unwrap();
/// println!("backend at {}", fake.addr());
/// ```
pub struct FakeBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeBackend {
    /// Starts listening; every connection runs `script`.
    pub fn start(script: Vec<Step>) -> io::Result<FakeBackend> {
        Self::start_per_connection(vec![script])
    }

    /// Starts listening; connection *i* (from 0) runs `scripts[i]`, and connections
    /// beyond the list run the last script (e.g. first connection fails, later ones work).
    pub fn start_per_connection(scripts: Vec<Vec<Step>>) -> io::Result<FakeBackend> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fake-backend-{addr}"))
                .spawn(move || accept_loop(&listener, &scripts, &shared))?
        };
        Ok(FakeBackend {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Every line received so far, over all connections, with CRLF.
    pub fn received(&self) -> Vec<Vec<u8>> {
        lock(&self.shared.received).clone()
    }

    /// Script mismatches and I/O errors so far (empty when every script went to plan).
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.errors).clone()
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for s in lock(&self.shared.open).drain(..) {
            // Wakes connection threads blocked in a read (Hang) so they end.
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wakes the acceptor blocked in accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, scripts: &[Vec<Step>], shared: &Arc<Shared>) {
    for (i, stream) in listener.incoming().enumerate() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let script = scripts
            .get(i)
            .or_else(|| scripts.last())
            .cloned()
            .unwrap_or_default();
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.open).push(clone);
        }
        let conn_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("fake-backend-conn-{i}"))
            .spawn(move || {
                if let Err(e) = run_script(stream, &script, &conn_shared) {
                    lock(&conn_shared.errors).push(format!("connection {i}: {e}"));
                }
            });
        if let Err(e) = spawned {
            lock(&shared.errors).push(format!("connection {i}: cannot spawn thread: {e}"));
        }
    }
}

fn run_script(stream: TcpStream, script: &[Step], shared: &Shared) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let closer = stream.try_clone()?;
    let result = play(stream, script, shared);
    // The stream is also held in `Shared::open`, so dropping ours would not close it.
    let _ = closer.shutdown(Shutdown::Both);
    result
}

fn play(stream: TcpStream, script: &[Step], shared: &Shared) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    for step in script {
        match step {
            Step::Send(bytes) => {
                writer.write_all(bytes)?;
                writer.flush()?;
            }
            Step::ExpectLine(prefix) => {
                let line = read_line(&mut reader, shared)?;
                if !matches_prefix(&line, prefix) {
                    return Err(mismatch(prefix, &line));
                }
            }
            Step::ReplyTo(prefix, reply) => {
                let line = read_line(&mut reader, shared)?;
                if !matches_prefix(&line, prefix) {
                    return Err(mismatch(prefix, &line));
                }
                let text = String::from_utf8_lossy(&line);
                let tag = text.split(' ').next().unwrap_or_default().trim_end();
                writer.write_all(&reply(tag))?;
                writer.flush()?;
            }
            Step::Sleep(d) => std::thread::sleep(*d),
            Step::Hang => {
                reader.get_ref().set_read_timeout(None)?;
                loop {
                    if shared.stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    let mut line = Vec::new();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return Ok(()),
                        Ok(_) => lock(&shared.received).push(line),
                    }
                }
            }
            Step::Close => break,
        }
    }
    Ok(())
}

fn read_line(reader: &mut BufReader<TcpStream>, shared: &Shared) -> io::Result<Vec<u8>> {
    reader.get_ref().set_read_timeout(Some(LINE_TIMEOUT))?;
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "client closed the connection while a line was expected",
        ));
    }
    lock(&shared.received).push(line.clone());
    Ok(line)
}

fn matches_prefix(line: &[u8], prefix: &str) -> bool {
    let starts = |s: &[u8]| {
        s.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    let after_tag = line
        .iter()
        .position(|&b| b == b' ')
        .and_then(|i| line.get(i + 1..))
        .unwrap_or_default();
    starts(line) || starts(after_tag)
}

fn mismatch(prefix: &str, line: &[u8]) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "expected a line starting with {prefix:?}, got {:?}",
            String::from_utf8_lossy(line)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_with_or_without_tag() {
        assert!(matches_prefix(b"x1 LOGIN a b\r\n", "login"));
        assert!(matches_prefix(b"PROXY TCP4 1.2.3.4\r\n", "PROXY TCP4"));
        assert!(matches_prefix(b"anything\r\n", ""));
        assert!(!matches_prefix(b"x1 NOOP\r\n", "LOGIN"));
    }

    #[test]
    fn script_runs_against_a_std_client() {
        let fake = FakeBackend::start(vec![
            Step::greeting(),
            Step::ok_to("NOOP", "done"),
            Step::Close,
        ])
        .unwrap();
        let mut s = TcpStream::connect(fake.addr()).unwrap();
        s.write_all(b"a7 NOOP\r\n").unwrap();
        let mut out = String::new();
        io::Read::read_to_string(&mut s, &mut out).unwrap();
        assert!(out.starts_with("* OK [CAPABILITY"));
        assert!(out.ends_with("a7 OK done\r\n"));
        assert_eq!(fake.connections(), 1);
        assert_eq!(fake.received(), vec![b"a7 NOOP\r\n".to_vec()]);
        assert!(fake.errors().is_empty());
    }
}
