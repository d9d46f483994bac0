//! Issue #8, "Session fidelity": the binary, with session reuse on, in front of a real
//! Dovecot 2.3 must behave like Dovecot would for real clients — no delayed-ACK stall for
//! clients that split a command over two writes, long `ID` after login, TLS sessions ended
//! with close_notify, no plaintext written into a TLS handshake, and defaults that an
//! ordinary office behind one address never runs into.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Binary, loopback};
use imapproxy_testkit::Dovecot;

fn dovecot() -> &'static Dovecot {
    Dovecot::shared()
}

/// The proxy under test: reuse on, one listener of each kind.
struct Proxy {
    _binary: Binary,
    plain: SocketAddr,
    starttls: SocketAddr,
    implicit: SocketAddr,
}

impl Proxy {
    /// Starts the binary in front of `backend`; `session` and `limits` are the bodies of
    /// the `[session]` and `[limits]` tables (empty: defaults).
    fn start(backend: SocketAddr, session: &str, limits: &str) -> Self {
        let [plain, starttls, implicit] = [(); 3].map(|()| loopback());
        let config = format!(
            r#"
[[listeners]]
addr = "{plain}"
tls = "none"
allow_plaintext_auth = true

[[listeners]]
addr = "{starttls}"
tls = "starttls"

[[listeners]]
addr = "{implicit}"
tls = "implicit"

[[backends]]
name = "mail1"
addr = "{backend}"

[pool]
reuse = true

[session]
{session}

[limits]
{limits}
"#
        );
        Self {
            _binary: Binary::start(&config, &[plain, starttls, implicit]),
            plain,
            starttls,
            implicit,
        }
    }
}

/// A blocking line client with the socket options of an ordinary client library: Nagle on
/// (`TCP_NODELAY` off), as Python's imaplib and most others leave it.
struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    fn connect(addr: SocketAddr) -> Self {
        Self::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// Connects from `source` (another loopback address: another device or office).
    fn connect_from(source: [u8; 4], addr: SocketAddr) -> std::io::Result<Self> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::from((source, 0)).into())?;
        socket.connect_timeout(&addr.into(), Duration::from_secs(10))?;
        Ok(Self::from_stream(socket.into()))
    }

    fn from_stream(tcp: TcpStream) -> Self {
        tcp.set_nodelay(false).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let writer = tcp.try_clone().unwrap();
        let mut c = Self {
            reader: BufReader::new(tcp),
            writer,
        };
        let greeting = c.line().unwrap();
        assert!(greeting.starts_with("* OK"), "{greeting:?}");
        c
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line)
    }

    /// Lines up to and including the one tagged `tag`.
    fn until_tagged(&mut self, tag: &str) -> std::io::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.line()?;
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return Ok(lines);
            }
        }
    }

    /// Sends `tag cmd\r\n` in one write and returns the tagged line.
    fn cmd(&mut self, tag: &str, cmd: &str) -> std::io::Result<String> {
        self.writer
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())?;
        Ok(self.until_tagged(tag)?.pop().unwrap_or_default())
    }

    /// Sends `tag cmd\r\n` and returns every line up to the tagged one (panics on EOF).
    fn until_tagged_after(&mut self, tag: &str, cmd: &str) -> Vec<String> {
        self.writer
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .unwrap();
        self.until_tagged(tag).unwrap()
    }

    /// Sends `tag cmd` and its CRLF in two writes, as imaplib and imapclient do for some
    /// commands, and returns the round trip and the tagged line.
    fn split_cmd(&mut self, tag: &str, cmd: &str) -> (Duration, String) {
        let start = Instant::now();
        self.writer
            .write_all(format!("{tag} {cmd}").as_bytes())
            .unwrap();
        self.writer.write_all(b"\r\n").unwrap();
        let line = self.until_tagged(tag).unwrap().pop().unwrap();
        (start.elapsed(), line)
    }

    /// `APPEND` the way imaplib sends it: the command line with a synchronizing literal,
    /// then (after `+`) the literal and the final CRLF in two writes.
    fn split_append(&mut self, tag: &str, message: &[u8]) -> (Duration, String) {
        let start = Instant::now();
        self.writer
            .write_all(format!("{tag} APPEND INBOX {{{}}}\r\n", message.len()).as_bytes())
            .unwrap();
        let cont = self.line().unwrap();
        assert!(cont.starts_with('+'), "{cont:?}");
        self.writer.write_all(message).unwrap();
        self.writer.write_all(b"\r\n").unwrap();
        let line = self.until_tagged(tag).unwrap().pop().unwrap();
        (start.elapsed(), line)
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Linux delays an ACK by at least 40 ms. A client with Nagle on holds the second half of a
/// split command until the first half is acknowledged, so a server that delays its ACK adds
/// 40 ms to every such command; Dovecot avoids it with TCP_QUICKACK. These bounds check for
/// that protocol-level stall (a round trip that waits for a timer), not for speed: on
/// loopback a NOOP takes well under a millisecond otherwise.
const STALL_FREE: Duration = Duration::from_millis(15);
/// What the proxy may add to Dovecot's own median for commands whose time is Dovecot's
/// (APPEND writes the message to disk): less than half the stall.
const STALL_FREE_EXTRA: Duration = Duration::from_millis(20);

#[test]
fn split_commands_before_login_see_no_delayed_ack_stall() {
    let proxy = Proxy::start(dovecot().imap_addr(), "", "");
    // Dovecot itself, for comparison: the test's client must see no stall there.
    let direct = median(split_noops(&mut LineClient::connect(dovecot().imap_addr())));
    let proxied = median(split_noops(&mut LineClient::connect(proxy.plain)));
    eprintln!("median pre-auth split NOOP: Dovecot {direct:?}, proxy {proxied:?}");
    assert!(direct < STALL_FREE, "Dovecot itself: {direct:?}");
    assert!(proxied < STALL_FREE, "through the proxy: {proxied:?}");
}

#[test]
fn split_commands_after_login_see_no_delayed_ack_stall() {
    let proxy = Proxy::start(dovecot().imap_addr(), "", "");
    let (user, pass) = dovecot().user(13);
    let mut medians = Vec::new();
    for addr in [dovecot().imap_addr(), proxy.plain] {
        let mut c = LineClient::connect(addr);
        let line = c.cmd("l", &format!("LOGIN {user} {pass}")).unwrap();
        assert!(line.starts_with("l OK"), "{line:?}");
        medians.push((median(split_noops(&mut c)), median(split_appends(&mut c))));
    }
    let [(direct_noop, direct_append), (noop, append)] = medians[..] else {
        unreachable!()
    };
    eprintln!(
        "median split round trips after login: NOOP Dovecot {direct_noop:?}, proxy {noop:?}; \
         APPEND Dovecot {direct_append:?}, proxy {append:?}"
    );
    assert!(
        direct_noop < STALL_FREE,
        "Dovecot itself: NOOP {direct_noop:?}"
    );
    assert!(noop < STALL_FREE, "through the proxy: NOOP {noop:?}");
    assert!(
        append < direct_append + STALL_FREE_EXTRA,
        "APPEND: Dovecot {direct_append:?}, through the proxy {append:?}"
    );
}

/// 20 `NOOP`s, each written in two pieces.
fn split_noops(c: &mut LineClient) -> Vec<Duration> {
    (0..20)
        .map(|i| {
            let (t, line) = c.split_cmd(&format!("n{i}"), "NOOP");
            assert!(line.contains(" OK "), "{line:?}");
            t
        })
        .collect()
}

/// 20 `APPEND`s, each literal followed by its CRLF in a second write.
fn split_appends(c: &mut LineClient) -> Vec<Duration> {
    (0..20)
        .map(|i| {
            let message = format!("Subject: split {i}\r\n\r\nbody\r\n");
            let (t, line) = c.split_append(&format!("a{i}"), message.as_bytes());
            assert!(line.contains(" OK "), "{line:?}");
            t
        })
        .collect()
}

/// `ID` with the most fields RFC 2971 allows (30), each value `len` characters long.
fn long_id_command(len: usize) -> String {
    let fields: Vec<String> = (1..=30)
        .map(|i| format!("\"k{i}\" \"{}\"", "v".repeat(len)))
        .collect();
    format!("ID ({})", fields.join(" "))
}

#[test]
fn long_id_before_login_is_answered_as_dovecot_answers_it() {
    let proxy = Proxy::start(dovecot().imap_addr(), "", "");
    let (user, pass) = dovecot().user(15);
    for (name, addr) in [("Dovecot", dovecot().imap_addr()), ("proxy", proxy.plain)] {
        let mut c = LineClient::connect(addr);
        // 30 values of 1,024 octets (RFC 2971 §3.3's maximum): over the proxy's 8 KiB pre-auth
        // line bound, answered OK as Dovecot does (the fields are not kept).
        for len in [200, 1024] {
            let lines = c.until_tagged_after("i", &long_id_command(len));
            assert!(
                lines.last().unwrap().starts_with("i OK"),
                "{name}: {lines:?}"
            );
            assert!(
                lines.iter().any(|l| l.starts_with("* ID ")),
                "{name}: {lines:?}"
            );
        }
        let line = c.cmd("l", &format!("LOGIN {user} {pass}")).unwrap();
        assert!(line.starts_with("l OK"), "{name}: {line:?}");
        let lines = c.until_tagged_after("o", "LOGOUT");
        assert!(
            lines.last().unwrap().starts_with("o OK"),
            "{name}: {lines:?}"
        );
    }
}

#[test]
fn long_id_after_login_is_answered_as_dovecot_answers_it() {
    let proxy = Proxy::start(dovecot().imap_addr(), "", "");
    let (user, pass) = dovecot().user(14);
    for (name, addr) in [("Dovecot", dovecot().imap_addr()), ("proxy", proxy.plain)] {
        let mut c = LineClient::connect(addr);
        let line = c.cmd("l", &format!("LOGIN {user} {pass}")).unwrap();
        assert!(line.starts_with("l OK"), "{name}: {line:?}");
        // Values of 200 octets, and of 1024, the most RFC 2971 §3.3 allows (a 31 KB line).
        for len in [200, 1024] {
            let lines = c.until_tagged_after("i", &long_id_command(len));
            assert!(
                lines.last().unwrap().starts_with("i OK"),
                "{name}: {lines:?}"
            );
        }
        let line = c.cmd("n", "NOOP").unwrap();
        assert!(line.starts_with("n OK"), "{name}: {line:?}");
        let lines = c.until_tagged_after("o", "LOGOUT");
        assert!(
            lines.iter().any(|l| l.starts_with("* BYE")),
            "{name}: {lines:?}"
        );
        assert!(
            lines.last().unwrap().starts_with("o OK"),
            "{name}: {lines:?}"
        );
    }
}

/// Runs a Python script (the standard library's `ssl` is a strict TLS client) and expects
/// it to print `ok`.
fn python(script: &str) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 is installed (cargo xtask test installs it)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Python helpers: `tls(port)` connects with implicit TLS, `starttls(port)` upgrades a plain
/// connection, `until(s, marker)` reads until `marker`, `closed(s)` reads to the end and
/// fails unless the TLS session ended with close_notify (`suppress_ragged_eofs=False` turns
/// a bare TCP end into `SSLEOFError`).
const PY_TLS: &str = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
BUF = {}
def tls(port):
    raw = socket.create_connection(('127.0.0.1', port), timeout=20)
    s = ctx.wrap_socket(raw, suppress_ragged_eofs=False)
    until(s, b'\r\n')
    return s
def starttls(port):
    raw = socket.create_connection(('127.0.0.1', port), timeout=20)
    until(raw, b'\r\n')
    raw.sendall(b's STARTTLS\r\n')
    until(raw, b's OK')
    s = ctx.wrap_socket(raw, suppress_ragged_eofs=False)
    return s
def until(s, marker):
    data = BUF.pop(id(s), b'')
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit(f'closed before {marker!r}: {data!r}')
        data += chunk
    i = data.index(marker) + len(marker)
    BUF[id(s)] = data[i:]
    return data[:i]
FAILED = []
def closed(s, what):
    data = BUF.pop(id(s), b'')
    while True:
        try:
            chunk = s.recv(65536)
        except ssl.SSLEOFError as e:
            FAILED.append(f'{what}: TLS ended without close_notify after {data!r}')
            return data
        if not chunk:
            return data
        data += chunk
"#;

#[test]
fn every_tls_session_the_proxy_ends_ends_with_close_notify() {
    let proxy = Proxy::start(
        dovecot().imap_addr(),
        "preauth_timeout = \"2s\"\nauth_timeout = \"2s\"",
        "",
    );
    let (user, pass) = dovecot().user(16);
    let script = format!(
        r#"{PY_TLS}
implicit, starttls_port = {implicit}, {starttls}

s = tls(implicit)
s.sendall(b'a LOGOUT\r\n')
assert b'a OK' in closed(s, 'pre-auth LOGOUT')

s = starttls(starttls_port)
s.sendall(b'a LOGOUT\r\n')
assert b'a OK' in closed(s, 'LOGOUT after STARTTLS')

s = tls(implicit)
assert b'BYE' in closed(s, 'pre-auth timeout')

s = tls(implicit)
for i in range(10):
    s.sendall(b'b%d FROB\r\n' % i)
    until(s, b'b%d BAD' % i)
s.sendall(b'b10 FROB\r\n')
assert b'BYE' in closed(s, 'too many invalid commands')

s = tls(implicit)
s.sendall(b'l LOGIN {user} {pass}\r\n')
until(s, b'l OK')
s.sendall(b'a LOGOUT\r\n')
assert b'a OK' in closed(s, 'LOGOUT after login')

s = tls(implicit)
s.sendall(b'l LOGIN {user} {pass}\r\n')
until(s, b'l OK')
assert b'BYE' in closed(s, 'autologout after login')
if FAILED:
    raise SystemExit('\n'.join(FAILED))
print('ok')
"#,
        implicit = proxy.implicit.port(),
        starttls = proxy.starttls.port(),
    );
    python(&script);
}

/// Whether the server closes the connection before sending a single byte.
fn closed_without_a_byte(addr: SocketAddr) -> Result<(), String> {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    match tcp.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(String::from_utf8_lossy(&buf[..n]).into_owned()),
        // A reset (the proxy closed with our bytes unread) is a close without a byte too.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn over_the_connection_limit_implicit_tls_is_closed_and_plain_hears_bye() {
    // Loopback is trusted (exempt) by default: trust nothing so that the limit applies.
    let proxy = Proxy::start(
        dovecot().imap_addr(),
        "",
        "trusted_networks = []\nmax_connections_per_ip = 1",
    );
    for addr in [proxy.plain, proxy.starttls, proxy.implicit] {
        // The one connection the address may hold: counted once the proxy greets it (on the
        // implicit-TLS port it waits for a handshake instead, so give it time). The previous
        // round's connection may still be counted for a moment: retry until it is not.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let held = loop {
            let mut held = TcpStream::connect(addr).unwrap();
            if addr == proxy.implicit {
                std::thread::sleep(Duration::from_millis(500));
                break held;
            }
            held.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut first = [0u8; 4];
            if held.read_exact(&mut first).is_ok() && &first == b"* OK" {
                break held;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{addr}: never greeted"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        if addr == proxy.implicit {
            // ...and the next one: no plaintext into what the client sees as a TLS handshake.
            assert_eq!(closed_without_a_byte(addr), Ok(()));
            // A real TLS client hears a closed connection, not "wrong version number".
            python(&format!(
                r#"{PY_TLS}
try:
    tls({port})
except ssl.SSLError as e:
    assert 'WRONG_VERSION_NUMBER' not in str(e), e
    print('ok')
except (ConnectionError, OSError, SystemExit) as e:
    print('ok')
"#,
                port = addr.port()
            ));
        } else {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut text = String::new();
            let _ = c.read_to_string(&mut text);
            assert!(text.starts_with("* BYE [LIMIT]"), "{addr}: {text:?}");
        }
        drop(held);
        // The count drops when the proxy notices the close.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The defaults must never bother an ordinary office or person: Dovecot's own limit (10
/// sessions per user *and* address, which it applies to the real client address the proxy
/// passes on) is what a user with several devices meets, and an office behind one NAT
/// address opens as many connections as its people's mail programs do.
#[test]
fn defaults_let_an_office_behind_one_address_and_a_user_with_many_devices_in() {
    // Dovecot as shipped: 10 sessions per user and address.
    let dovecot = Dovecot::builder()
        .max_userip_connections(10)
        .start()
        .unwrap();
    // Loopback is exempt from the per-address limits by default; trust nothing so that
    // every other default applies as it would to clients on the Internet.
    let proxy = Proxy::start(dovecot.imap_addr(), "", "trusted_networks = []");

    // 9 am: an office of 30 behind one NAT address starts Thunderbird (up to 5 connections
    // each), ten people in the same second, three seconds in a row.
    let mut office = Vec::new();
    for second in 0..3 {
        if second > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        for _ in 0..50 {
            let mut c = LineClient::connect(proxy.plain);
            let line = c.cmd("c", "CAPABILITY").unwrap();
            assert!(
                line.starts_with("c OK"),
                "connection {} of the office: {line:?}",
                office.len() + 1
            );
            office.push(c);
        }
    }

    // One person: Thunderbird at the office, at home, on a laptop elsewhere (5 connections
    // each, from three addresses), all at once.
    let (user, pass) = dovecot.user(1);
    let mut devices = Vec::new();
    for source in [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]] {
        for _ in 0..5 {
            let mut c = LineClient::connect_from(source, proxy.plain).unwrap();
            let line = c.cmd("l", &format!("LOGIN {user} {pass}")).unwrap();
            assert!(
                line.starts_with("l OK"),
                "session {} of {user}: {line:?}",
                devices.len() + 1
            );
            devices.push(c);
        }
    }
    for c in &mut devices {
        assert!(c.cmd("n", "NOOP").unwrap().starts_with("n OK"));
    }
}
