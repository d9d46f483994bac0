//! The PROXY protocol v2 header the connector sends before anything else, so that a backend
//! that trusts it (Dovecot with `haproxy = yes`) sees the real client.

use std::net::SocketAddr;

use crate::error::Error;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
