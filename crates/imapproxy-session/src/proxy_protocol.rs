//! Inbound PROXY protocol (HAProxy's spec, versions 1 and 2): the real client address when the
//! proxy sits behind an L4 balancer.
//!
//! A header is honoured only from [`TrustedNetworks`]; anyone else could claim any address.
//! The header is read without reading past its end, so the IMAP bytes behind it stay in the
//! socket for the session. Parsing is done by the `ppp` crate; this module only frames the
//! header (bounded: a v1 line is at most 107 bytes, a v2 payload at most
//! [`MAX_V2_PAYLOAD`] bytes here) and decides what to do with it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::Error;

/// The 12-byte signature that opens a v2 header (spec §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header starts with this (spec §2.1).
const V1_PREFIX: &[u8] = b"PROXY ";
/// Spec §2.1: a v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The shortest v1 line, `PROXY UNKNOWN\r\n`: reading this many bytes first never reads past
/// a header of either version (a v2 header is at least 16 bytes).
const FIRST_READ: usize = 15;
/// Bound on a v2 header's address and TLV part. Addresses take at most 216 bytes (AF_UNIX);
/// the rest is TLVs, which balancers keep small. Memory per connection stays bounded.
pub const MAX_V2_PAYLOAD: usize = 2048;

/// A set of networks (CIDR), e.g. `[limits].trusted_networks`. IPv4-mapped IPv6 peers
/// (`::ffff:192.0.2.1`, as a dual-stack listener reports them) match their IPv4 network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedNetworks {
    nets: Vec<(IpAddr, u8)>,
}

impl TrustedNetworks {
    /// Parses `192.0.2.0/24`, `2001:db8::/32` or a bare address (a host) for each entry.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, Error> {
        let mut nets = Vec::with_capacity(list.len());
        for entry in list {
            let entry = entry.as_ref();
            let net = parse_cidr(entry).ok_or_else(|| Error::InvalidNetwork(entry.to_owned()))?;
            nets.push(net);
        }
        Ok(Self { nets })
    }

    /// Whether `ip` lies in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets
            .iter()
            .any(|(net, len)| in_network(ip, *net, *len))
    }

    /// True when no network is listed (then nobody is trusted).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.trim().parse().ok()?;
    let ip = ip.to_canonical();
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Which listeners expect a PROXY header, and from whom.
///
/// Listeners are named by their bound address; an accepted connection's local address
/// matches a listener with the same port and the same IP, or an unspecified one
/// (`0.0.0.0`, `::`).
#[derive(Clone, Debug)]
pub struct ProxyProtocolSettings {
    /// Bound addresses of the listeners with `proxy_protocol = true`.
    pub listeners: Vec<SocketAddr>,
    /// Peers allowed to send a header; a connection from anyone else is dropped unanswered.
    pub trusted: TrustedNetworks,
    /// Time a trusted peer has to send the whole header.
    pub timeout: Duration,
}

impl Default for ProxyProtocolSettings {
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            trusted: TrustedNetworks::default(),
            timeout: Duration::from_secs(5),
        }
    }
}

impl ProxyProtocolSettings {
    /// Whether a connection accepted on local address `local` must start with a header.
    pub fn expects_header(&self, local: SocketAddr) -> bool {
        self.listeners.iter().any(|l| {
            l.port() == local.port()
                && (l.ip().is_unspecified() || l.ip().to_canonical() == local.ip().to_canonical())
        })
    }
}

/// The addresses a header announced: the client (`source`) and the address it connected to
/// (`destination`, the balancer's front).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxiedAddrs {
    /// The real client.
    pub source: SocketAddr,
    /// Where the client connected.
    pub destination: SocketAddr,
}

/// Reads one PROXY v1 or v2 header from `stream` and nothing more. `Ok(None)` for a header
/// that carries no client (v1 `UNKNOWN`, v2 `LOCAL`, or a non-IP family): the caller keeps
/// the TCP peer (spec §2.1, §2.2). No timeout here; see [`accept_header`].
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<ProxiedAddrs>, Error> {
    let mut buf = vec![0u8; FIRST_READ];
    read_exact(stream, &mut buf).await?;
    if buf.starts_with(V2_SIGNATURE) {
        // Byte 16 ends the fixed part; bytes 15..16 are the payload length (big endian).
        buf.resize(16, 0);
        read_exact(stream, &mut buf[FIRST_READ..]).await?;
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > MAX_V2_PAYLOAD {
            return Err(Error::ProxyHeader("v2 header too long"));
        }
        buf.resize(16 + len, 0);
        read_exact(stream, &mut buf[16..]).await?;
        return parse_v2(&buf);
    }
    if !buf.starts_with(V1_PREFIX) {
        return Err(Error::ProxyHeader("no PROXY header"));
    }
    // Until CRLF: read at most what cannot pass it. After a CR exactly one byte (the LF) is
    // left; otherwise at least two (CR LF), so two bytes are safe to read.
    while !buf.ends_with(b"\r\n") {
        let step = if buf.ends_with(b"\r") { 1 } else { 2 };
        if buf.len() + step > V1_MAX {
            return Err(Error::ProxyHeader("v1 header too long"));
        }
        let start = buf.len();
        buf.resize(start + step, 0);
        read_exact(stream, &mut buf[start..]).await?;
    }
    parse_v1(&buf)
}

async fn read_exact<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), Error> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::ClientClosed),
        Err(e) => Err(Error::Client(e)),
    }
}

/// Parses a complete v1 line (CRLF included).
pub fn parse_v1(line: &[u8]) -> Result<Option<ProxiedAddrs>, Error> {
    // A CR or LF before the end would let ppp parse only a prefix of what was read.
    let body = line
        .strip_suffix(b"\r\n")
        .ok_or(Error::ProxyHeader("v1 header without CRLF"))?;
    if body.iter().any(|b| matches!(b, b'\r' | b'\n')) {
        return Err(Error::ProxyHeader("malformed v1 header"));
    }
    let header =
        v1::Header::try_from(line).map_err(|_| Error::ProxyHeader("malformed v1 header"))?;
    Ok(match header.addresses {
        v1::Addresses::Tcp4(a) => Some(ProxiedAddrs {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        v1::Addresses::Tcp6(a) => Some(ProxiedAddrs {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        v1::Addresses::Unknown => None,
    })
}

/// Parses a complete v2 header (16-byte fixed part plus exactly its payload).
pub fn parse_v2(bytes: &[u8]) -> Result<Option<ProxiedAddrs>, Error> {
    let header =
        v2::Header::try_from(bytes).map_err(|_| Error::ProxyHeader("malformed v2 header"))?;
    if header.len() != bytes.len() {
        return Err(Error::ProxyHeader("v2 header length mismatch"));
    }
    if header.command == v2::Command::Local {
        // Spec §2.2: LOCAL is the balancer's own connection (health checks): real endpoints.
        return Ok(None);
    }
    Ok(match header.addresses {
        v2::Addresses::IPv4(a) => Some(ProxiedAddrs {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        v2::Addresses::IPv6(a) => Some(ProxiedAddrs {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        }),
        // Spec §2.2: unknown or AF_UNIX families: keep the connection's own endpoints.
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}

/// The whole inbound check: refuses a peer outside `settings.trusted` without reading a
/// byte, then reads the header within `settings.timeout`. `Ok(None)`: keep the TCP peer.
pub async fn accept_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    settings: &ProxyProtocolSettings,
) -> Result<Option<ProxiedAddrs>, Error> {
    if !settings.trusted.contains(peer.ip()) {
        return Err(Error::ProxyHeader("peer not in trusted_networks"));
    }
    tokio::time::timeout(settings.timeout, read_header(stream))
        .await
        .map_err(|_| Error::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(input: &[u8]) -> (Result<Option<ProxiedAddrs>, Error>, Vec<u8>) {
        let mut rest = input;
        let r = read_header(&mut rest).await;
        (r, rest.to_vec())
    }

    fn addrs(src: &str, dst: &str) -> ProxiedAddrs {
        ProxiedAddrs {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    fn v2(src: &str, dst: &str, command: v2::Command) -> Vec<u8> {
        let a: (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, a)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn v1_tcp4_leaves_imap_bytes() {
        let (r, rest) = read(b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 143\r\na LOGIN x y\r\n").await;
        assert_eq!(r.unwrap(), Some(addrs("203.0.113.7:5555", "192.0.2.1:143")));
        assert_eq!(rest, b"a LOGIN x y\r\n");
    }

    #[tokio::test]
    async fn v1_tcp6_and_unknown() {
        let (r, rest) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\nX").await;
        assert_eq!(
            r.unwrap(),
            Some(addrs("[2001:db8::1]:1", "[2001:db8::2]:2"))
        );
        assert_eq!(rest, b"X");
        let (r, rest) = read(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"X");
        let (r, rest) = read(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nX").await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn v2_proxy_and_local_leave_imap_bytes() {
        let mut input = v2("203.0.113.7:5555", "192.0.2.1:143", v2::Command::Proxy);
        input.extend_from_slice(b"a CAPABILITY\r\n");
        let (r, rest) = read(&input).await;
        assert_eq!(r.unwrap(), Some(addrs("203.0.113.7:5555", "192.0.2.1:143")));
        assert_eq!(rest, b"a CAPABILITY\r\n");

        let mut input = v2(
            "[2001:db8::7]:5555",
            "[2001:db8::1]:143",
            v2::Command::Proxy,
        );
        input.push(b'Z');
        let (r, rest) = read(&input).await;
        assert_eq!(
            r.unwrap(),
            Some(addrs("[2001:db8::7]:5555", "[2001:db8::1]:143"))
        );
        assert_eq!(rest, b"Z");

        let mut input = v2("203.0.113.7:5555", "192.0.2.1:143", v2::Command::Local);
        input.push(b'Z');
        let (r, rest) = read(&input).await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"Z");
    }

    #[tokio::test]
    async fn v2_with_tlvs() {
        let a: (SocketAddr, SocketAddr) = (
            "203.0.113.7:5555".parse().unwrap(),
            "192.0.2.1:143".parse().unwrap(),
        );
        let mut input = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            a,
        )
        .write_tlv(v2::Type::NoOp, &[0u8; 100])
        .unwrap()
        .build()
        .unwrap();
        input.extend_from_slice(b"rest");
        let (r, rest) = read(&input).await;
        assert_eq!(r.unwrap(), Some(addrs("203.0.113.7:5555", "192.0.2.1:143")));
        assert_eq!(rest, b"rest");
    }

    #[tokio::test]
    async fn malformed_headers_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"a LOGIN user pass\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4\r\n5.6.7.8 1 2\r\n",
            b"PROXY \xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\r\n",
            b"\r\n\r\n\0\r\nQUIT\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00",
            // Version 1 in the binary form.
            b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02",
            // Length shorter than IPv4 addresses need.
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
            // Length over the bound.
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
            // Truncated payload.
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x01\x02\x03",
            // Unknown command nibble.
            b"\r\n\r\n\0\r\nQUIT\n\x2f\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02",
        ];
        for case in cases {
            let (r, _) = read(case).await;
            assert!(r.is_err(), "accepted {case:?}: {r:?}");
        }
        // Longer than 107 bytes without CRLF: refused after at most 107 bytes.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 300));
        let (r, rest) = read(&long).await;
        assert!(r.is_err());
        assert!(rest.len() >= long.len() - V1_MAX);
    }

    #[tokio::test]
    async fn pseudo_random_input_never_panics() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..3000 {
            let len = (next() % 300) as usize;
            let mut input: Vec<u8> = match round % 3 {
                0 => V2_SIGNATURE.to_vec(),
                1 => b"PROXY ".to_vec(),
                _ => Vec::new(),
            };
            input.extend((0..len).map(|_| (next() & 0xff) as u8));
            let (_r, rest) = read(&input).await;
            assert!(rest.len() <= input.len());
        }
    }

    #[test]
    fn trusted_networks_match() {
        let t = TrustedNetworks::parse(&["127.0.0.0/8", "2001:db8::/32", "192.0.2.9", "0.0.0.0/0"])
            .unwrap();
        assert!(t.contains("127.1.2.3".parse().unwrap()));
        assert!(t.contains("8.8.8.8".parse().unwrap()));
        let t = TrustedNetworks::parse(&["127.0.0.0/8", "2001:db8::/32", "192.0.2.9"]).unwrap();
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(t.contains("2001:db8:1::5".parse().unwrap()));
        assert!(t.contains("192.0.2.9".parse().unwrap()));
        assert!(!t.contains("192.0.2.10".parse().unwrap()));
        assert!(!t.contains("::1".parse().unwrap()));
        assert!(!t.contains("10.0.0.1".parse().unwrap()));
        assert!(TrustedNetworks::parse(&["10.0.0.0/33"]).is_err());
        assert!(TrustedNetworks::parse(&["localhost"]).is_err());
        assert!(!TrustedNetworks::default().contains("127.0.0.1".parse().unwrap()));
        assert!(
            TrustedNetworks::parse(&["::/0"])
                .unwrap()
                .contains("::1".parse().unwrap())
        );
    }

    #[test]
    fn listener_matching() {
        let s = ProxyProtocolSettings {
            listeners: vec![
                "0.0.0.0:1143".parse().unwrap(),
                "127.0.0.1:2143".parse().unwrap(),
            ],
            ..ProxyProtocolSettings::default()
        };
        assert!(s.expects_header("10.1.1.1:1143".parse().unwrap()));
        assert!(s.expects_header("127.0.0.1:2143".parse().unwrap()));
        assert!(!s.expects_header("127.0.0.2:2143".parse().unwrap()));
        assert!(!s.expects_header("127.0.0.1:143".parse().unwrap()));
    }

    #[tokio::test]
    async fn untrusted_peer_is_refused_without_reading() {
        let s = ProxyProtocolSettings {
            listeners: Vec::new(),
            trusted: TrustedNetworks::parse(&["10.0.0.0/8"]).unwrap(),
            timeout: Duration::from_secs(1),
        };
        let input = b"PROXY UNKNOWN\r\nX".to_vec();
        let mut rest = input.as_slice();
        let r = accept_header(&mut rest, "127.0.0.1:1".parse().unwrap(), &s).await;
        assert!(r.is_err());
        assert_eq!(rest.len(), input.len());
        let r = accept_header(&mut rest, "10.9.9.9:1".parse().unwrap(), &s).await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn silent_trusted_peer_times_out() {
        let s = ProxyProtocolSettings {
            listeners: Vec::new(),
            trusted: TrustedNetworks::parse(&["127.0.0.0/8"]).unwrap(),
            timeout: Duration::from_millis(100),
        };
        let (mut a, _b) = tokio::io::duplex(64);
        let r = accept_header(&mut a, "127.0.0.1:1".parse().unwrap(), &s).await;
        assert!(matches!(r, Err(Error::Timeout)));
    }
}
