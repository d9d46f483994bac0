//! Invariant checks for the session crate's fuzz targets (`proxy_header`, `session`), shared
//! with the corpus replay test `crates/imapproxy-session/tests/fuzz_corpus.rs` (which includes
//! this file with `#[path]`), so the committed corpora are checked on every `cargo test`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use imapproxy_pool::{BackendTarget, PoolSettings};
use imapproxy_route::{Backend, BackendId, Registry, RoundRobin};
use imapproxy_session::proxy_protocol::{ProxiedAddrs, parse_v1, parse_v2, read_header};
use imapproxy_session::{ListenerSettings, Proxy, SessionSettings, TrustedNetworks, Upstreams};
use imapproxy_tls::TlsMode;
use ppp::v2;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// The 12-byte v2 signature (PROXY protocol spec §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A small deterministic generator seeded from the input, so a corpus file always yields the
/// same addresses.
fn seed_of(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Reads a header with `read_header` from an in-memory reader; returns the result and how many
/// bytes it consumed.
fn read_from(rt: &Runtime, data: &[u8]) -> (Result<Option<ProxiedAddrs>, String>, usize) {
    let mut rest = data;
    let r = rt.block_on(read_header(&mut rest));
    (r.map_err(|e| e.to_string()), data.len() - rest.len())
}

/// PROXY header invariants:
/// - `parse_v1`, `parse_v2` and `read_header` never panic on any bytes;
/// - `read_header` never consumes more than a header: what it accepted is itself a complete
///   header that the matching parser accepts with the same result, at most 107 bytes for v1
///   (spec §2.1) and at most 16 + `MAX_V2_PAYLOAD` for v2, and bytes after a valid header
///   stay in the reader;
/// - a valid v1 and v2 header built from addresses derived from the input round-trips through
///   both the parser and `read_header`, leaving the input behind it unread.
pub fn check_proxy_header(data: &[u8]) {
    static RT: OnceLock<Runtime> = OnceLock::new();
    let rt = RT.get_or_init(current_thread);
    let _ = parse_v1(data);
    let _ = parse_v2(data);
    let (r, used) = read_from(rt, data);
    assert!(used <= data.len());
    if let Ok(addrs) = &r {
        let header = &data[..used];
        if header.starts_with(V2_SIGNATURE) {
            assert!(used <= 16 + imapproxy_session::proxy_protocol::MAX_V2_PAYLOAD);
            assert_eq!(parse_v2(header).ok().as_ref(), Some(addrs), "v2 reparse");
        } else {
            assert!(used <= 107, "v1 header of {used} bytes");
            assert!(header.ends_with(b"\r\n"));
            assert_eq!(parse_v1(header).ok().as_ref(), Some(addrs), "v1 reparse");
        }
        // Appending more bytes must not change what is read (nothing past the header).
        let mut longer = header.to_vec();
        longer.extend_from_slice(b"a1 LOGIN user pass\r\n");
        let (r2, used2) = read_from(rt, &longer);
        assert_eq!(
            (r2.ok(), used2),
            (Some(*addrs), used),
            "trailing bytes changed the read"
        );
    }

    // Round trip of headers built from addresses derived from the input.
    let mut seed = seed_of(data) | 1;
    let v4 = |s: &mut u64| SocketAddr::from((Ipv4Addr::from(next(s) as u32), next(s) as u16));
    let v6 = |s: &mut u64| {
        SocketAddr::from((
            Ipv6Addr::from(u128::from(next(s)) << 64 | u128::from(next(s))),
            next(s) as u16,
        ))
    };
    let (src, dst) = if next(&mut seed) % 2 == 0 {
        (v4(&mut seed), v4(&mut seed))
    } else {
        (v6(&mut seed), v6(&mut seed))
    };
    let want = ProxiedAddrs {
        source: src,
        destination: dst,
    };
    let v1 = format!(
        "PROXY {} {} {} {} {}\r\n",
        if src.is_ipv4() { "TCP4" } else { "TCP6" },
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    );
    let mut v2 = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (src, dst),
    );
    // Optional TLVs of a length taken from the input, within the proxy's payload bound.
    let tlv = (next(&mut seed) % 512) as usize;
    if tlv > 0 {
        v2 = v2.write_tlv(v2::Type::NoOp, &vec![0xa5; tlv]).unwrap();
    }
    let v2 = v2.build().unwrap();
    for (header, parsed) in [
        (v1.as_bytes().to_vec(), parse_v1(v1.as_bytes())),
        (v2.clone(), parse_v2(&v2)),
    ] {
        assert_eq!(parsed.ok(), Some(Some(want)), "{header:?}");
        let mut stream = header.clone();
        stream.extend_from_slice(data);
        let (r, used) = read_from(rt, &stream);
        assert_eq!(r.ok(), Some(Some(want)), "read_header {header:?}");
        assert_eq!(used, header.len(), "read past the header");
    }
}

/// Client input is cut to this size: the session's limits are far below it.
pub const MAX_INPUT: usize = 64 * 1024;
/// One execution must finish (the proxy closed the connection after the client's EOF)
/// within this time; the pre-auth timeout below is shorter.
const EXEC_DEADLINE: Duration = Duration::from_secs(2);
/// Pre-auth timeout of the fuzzed proxy: a client that stops sending is closed quickly.
const PREAUTH_TIMEOUT: Duration = Duration::from_millis(150);
/// The proxy's writes to the client: a greeting and capability list, then a bounded
/// answer per command (the shortest command line is 4 bytes), including what the fake
/// backend relays back.
fn max_output(input: usize) -> usize {
    8192 + 64 * input
}

/// A proxy in front of an in-process fake backend, on a current-thread runtime.
pub struct Harness {
    rt: Runtime,
    proxy: Arc<Proxy>,
    listener: Arc<ListenerSettings>,
    front: TcpListener,
    shutdown: CancellationToken,
}

static HARNESS: OnceLock<std::sync::Mutex<Harness>> = OnceLock::new();

impl Harness {
    fn new() -> Harness {
        let rt = current_thread();
        let (proxy, front) = rt.block_on(async {
            let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend_addr = backend.local_addr().unwrap();
            tokio::spawn(fake_backend(backend));
            let id = BackendId::new("fake");
            let mut targets = std::collections::HashMap::new();
            targets.insert(id.clone(), BackendTarget::plain(backend_addr.to_string()));
            let upstreams = Upstreams {
                registry: Registry::new(vec![Backend::new(id, backend_addr.to_string())]).unwrap(),
                selector: Arc::new(RoundRobin::default()),
                directory: None,
                targets,
                health: None,
            };
            let mut settings = SessionSettings {
                preauth_timeout: PREAUTH_TIMEOUT,
                auth_timeout: Duration::from_secs(1),
                tls_handshake_timeout: Duration::from_millis(150),
                ..SessionSettings::default()
            };
            // Loopback is trusted: no throttling delays, no connection limits.
            let loopback = TrustedNetworks::parse(&["127.0.0.0/8"]).unwrap();
            settings.limits.throttle.trusted = loopback.clone();
            settings.limits.connections.trusted = loopback;
            settings.limits.connections.max_connections_per_ip = 0;
            settings
                .limits
                .connections
                .max_new_connections_per_ip_per_sec = 0;
            let pool = PoolSettings {
                reuse: false,
                warm: 0,
                ..PoolSettings::default()
            };
            let proxy = Arc::new(Proxy::new(settings, upstreams, pool).unwrap());
            let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
            (proxy, front)
        });
        Harness {
            rt,
            proxy,
            listener: Arc::new(ListenerSettings {
                tls: TlsMode::None,
                allow_plaintext_auth: true,
                server_tls: None,
            }),
            front,
            shutdown: CancellationToken::new(),
        }
    }

    /// One session: connect, send `data`, half-close, read until the proxy closes.
    /// Returns the bytes the proxy wrote.
    fn run(&self, data: &[u8]) -> Vec<u8> {
        let data = &data[..data.len().min(MAX_INPUT)];
        let cap = max_output(data.len());
        self.rt.block_on(async {
            let addr = self.front.local_addr().unwrap();
            let (client, accepted) = tokio::join!(TcpStream::connect(addr), self.front.accept());
            let client = client.unwrap();
            let (tcp, peer) = accepted.unwrap();
            let shutdown = self.shutdown.child_token();
            let session = tokio::spawn(imapproxy_session::serve(
                Arc::clone(&self.proxy),
                Arc::clone(&self.listener),
                tcp,
                peer,
                shutdown.clone(),
            ));
            let (mut rd, mut wr) = client.into_split();
            let input = data.to_vec();
            let writer = tokio::spawn(async move {
                // The proxy may close early (too many bad commands): write errors are fine.
                let _ = wr.write_all(&input).await;
                let _ = wr.shutdown().await;
                wr
            });
            let mut out = Vec::new();
            let read = tokio::time::timeout(EXEC_DEADLINE, async {
                let mut buf = [0u8; 4096];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            out.extend_from_slice(&buf[..n]);
                            if out.len() > cap {
                                return;
                            }
                        }
                    }
                }
            })
            .await;
            shutdown.cancel();
            drop(rd);
            let _ = writer.await;
            match tokio::time::timeout(EXEC_DEADLINE, session).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(Err(e)) => panic!("session task: {e}"),
                Err(_) => panic!("session did not end after shutdown"),
            }
            assert!(
                out.len() <= cap,
                "proxy wrote {} bytes for {} input bytes",
                out.len(),
                data.len()
            );
            assert!(
                read.is_ok(),
                "proxy neither closed nor timed out within {EXEC_DEADLINE:?}"
            );
            out
        })
    }
}

/// Session invariants for arbitrary client bytes (sent, then EOF) against a fake backend that
/// accepts any login: no panic, the proxy greets, its output is bounded by the input, and it
/// closes the connection within a deadline.
pub fn check_session(data: &[u8]) {
    let harness = HARNESS
        .get_or_init(|| std::sync::Mutex::new(Harness::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = harness.run(data);
    assert!(
        out.starts_with(b"* OK") || out.starts_with(b"* BYE"),
        "{:?}",
        String::from_utf8_lossy(&out[..out.len().min(80)])
    );
}

/// A fake IMAP server: greets, answers every tagged line with OK (capabilities for
/// CAPABILITY, BYE for LOGOUT), acknowledges synchronizing literals, and closes on EOF.
async fn fake_backend(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = fake_connection(tcp).await;
        });
    }
}

async fn fake_connection(tcp: TcpStream) -> std::io::Result<()> {
    const CAPS: &str =
        "IMAP4rev1 LITERAL+ SASL-IR ID IDLE AUTH=PLAIN AUTH=XOAUTH2 AUTH=SCRAM-SHA-256";
    let (rd, mut wr) = tcp.into_split();
    let mut rd = BufReader::new(rd.take(1 << 20));
    wr.write_all(format!("* OK [CAPABILITY {CAPS}] fake ready\r\n").as_bytes())
        .await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if rd.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        // Literals (RFC 9051 §4.3): `{n}` needs a continuation, `{n+}` does not; both are
        // followed by n bytes and the rest of the command.
        let mut whole = line.clone();
        while let Some(n) = literal_len(&whole) {
            if !whole.ends_with(b"+}\r\n") && !whole.ends_with(b"+}\n") {
                wr.write_all(b"+ go ahead\r\n").await?;
            }
            let mut lit = vec![0u8; n.min(1 << 16)];
            rd.read_exact(&mut lit).await?;
            let mut more = Vec::new();
            if rd.read_until(b'\n', &mut more).await? == 0 {
                return Ok(());
            }
            whole = more;
        }
        let text = String::from_utf8_lossy(&line);
        let mut words = text.split_ascii_whitespace();
        let tag = words.next().unwrap_or("*").to_owned();
        let cmd = words.next().unwrap_or("").to_ascii_uppercase();
        let reply = match cmd.as_str() {
            "CAPABILITY" => format!("* CAPABILITY {CAPS}\r\n{tag} OK done\r\n"),
            "LOGOUT" => format!("* BYE bye\r\n{tag} OK done\r\n"),
            "LOGIN" | "AUTHENTICATE" => {
                format!("{tag} OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n")
            }
            _ => format!("{tag} OK done\r\n"),
        };
        wr.write_all(reply.as_bytes()).await?;
        if cmd == "LOGOUT" {
            return Ok(());
        }
    }
}

/// The length of a literal announced at the end of a line (`{12}` or `{12+}`).
fn literal_len(line: &[u8]) -> Option<usize> {
    let body = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))?;
    let body = body.strip_suffix(b"}")?;
    let body = body.strip_suffix(b"+").unwrap_or(body);
    let open = body.iter().rposition(|&b| b == b'{')?;
    let digits = &body[open + 1..];
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}
