//! SASL mechanisms the proxy relays to the backend instead of verifying them itself: it only
//! reads the user name from the client's first message, for routing and throttling.

/// Mechanisms relayed to backends (channel-binding `-PLUS` variants cannot be: the TLS
/// channel the client binds to ends at the proxy).
pub(crate) const PASSTHROUGH: [&str; 4] =
    ["XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-1", "SCRAM-SHA-256"];

/// Whether `mechanism` (upper-case) is relayed.
pub(crate) fn is_passthrough(mechanism: &str) -> bool {
    PASSTHROUGH.contains(&mechanism)
}

/// The user name in the client's first message of `mechanism`, or `None` when it has none
/// or is malformed (or asks to act as another user).
pub(crate) fn username(mechanism: &str, first: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(first).ok()?;
    match mechanism {
        // Google's XOAUTH2: "user=" {User} "\x01auth=Bearer " {token} "\x01\x01".
        // Two `user=` fields could route and throttle one user while the backend logs in
        // another: refuse them.
        "XOAUTH2" => {
            let mut users = text.split('\x01').filter_map(|kv| kv.strip_prefix("user="));
            let user = users.next()?;
            users.next().is_none().then(|| user.to_owned())
        }
        // RFC 7628 §3.1: gs2-header "n,a=" saslname "," then kvpairs; the user is the authzid.
        "OAUTHBEARER" => {
            let (authzid, _) = gs2_header(text)?;
            authzid
        }
        // RFC 5802 §7: gs2-header, then client-first-message-bare "n=" saslname ",r=" nonce.
        "SCRAM-SHA-1" | "SCRAM-SHA-256" => {
            let (authzid, bare) = gs2_header(text)?;
            let user = saslname(bare.split(',').next()?.strip_prefix("n=")?)?;
            // Like PLAIN's authzid: acting as someone else is for the backend's master users.
            match authzid {
                Some(a) if a != user => None,
                _ => Some(user),
            }
        }
        _ => None,
    }
}

/// Splits a GS2 header (RFC 5801 §4): `n` or `y` (no channel binding; `p=` is -PLUS, which
/// cannot be relayed), an optional `a=` authzid, and the rest of the message.
fn gs2_header(text: &str) -> Option<(Option<String>, &str)> {
    let mut parts = text.splitn(3, ',');
    let flag = parts.next()?;
    if flag != "n" && flag != "y" {
        return None;
    }
    let authzid = parts.next()?;
    let rest = parts.next()?;
    let authzid = match authzid {
        "" => None,
        a => Some(saslname(a.strip_prefix("a=")?)?),
    };
    Some((authzid, rest))
}

/// Decodes a saslname (RFC 5802 §5.1): `=2C` is `,`, `=3D` is `=`, any other `=` is invalid.
fn saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(rest.get(..i)?);
        let esc = rest.get(i..i + 3)?;
        out.push(match esc {
            "=2C" | "=2c" => ',',
            "=3D" | "=3d" => '=',
            _ => return None,
        });
        rest = rest.get(i + 3..)?;
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoauth2_user() {
        let m = b"user=someone@example.com\x01auth=Bearer abc\x01\x01";
        assert_eq!(
            username("XOAUTH2", m).as_deref(),
            Some("someone@example.com")
        );
        assert_eq!(username("XOAUTH2", b"auth=Bearer abc\x01\x01"), None);
    }

    #[test]
    fn oauthbearer_user() {
        let m = b"n,a=user=2Cx@example.com,\x01host=server\x01port=143\x01auth=Bearer t\x01\x01";
        assert_eq!(
            username("OAUTHBEARER", m).as_deref(),
            Some("user,x@example.com")
        );
        assert_eq!(
            username("OAUTHBEARER", b"n,,\x01auth=Bearer t\x01\x01"),
            None
        );
        assert_eq!(username("OAUTHBEARER", b"p=tls-unique,a=u,\x01"), None);
    }

    #[test]
    fn scram_user() {
        assert_eq!(
            username("SCRAM-SHA-256", b"n,,n=us=3Der,r=abc").as_deref(),
            Some("us=er")
        );
        assert_eq!(
            username("SCRAM-SHA-1", b"y,a=bob,n=bob,r=x").as_deref(),
            Some("bob")
        );
        assert_eq!(username("SCRAM-SHA-1", b"n,a=root,n=bob,r=x"), None);
        assert_eq!(username("SCRAM-SHA-256", b"n,,n=bad=2X,r=x"), None);
        assert_eq!(username("SCRAM-SHA-256", b"n,,n=trail=,r=x"), None);
        assert_eq!(username("SCRAM-SHA-256", b"p=tls-unique,,n=u,r=x"), None);
        assert_eq!(username("SCRAM-SHA-256", b"n,,r=x"), None);
        assert_eq!(username("SCRAM-SHA-256", b"\xff"), None);
    }
    #[test]
    fn xoauth2_with_two_users_is_refused() {
        assert_eq!(
            username(
                "XOAUTH2",
                b"user=alice\x01user=bob\x01auth=Bearer t\x01\x01"
            ),
            None
        );
        assert_eq!(
            username("XOAUTH2", b"user=alice\x01auth=Bearer t\x01\x01").as_deref(),
            Some("alice")
        );
    }
}
