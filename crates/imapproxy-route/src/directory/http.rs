//! [`HttpAuthDirectory`]: an nginx mail-proxy compatible HTTP auth service as a directory.
//!
//! The protocol is nginx's `ngx_mail_auth_http_module`: one `GET` per login, everything in
//! headers, the body ignored. Services written for nginx's mail proxy work unchanged.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::directory::{Directory, LookupContext, Route};
use crate::{Backend, BackendId, Error};

/// Largest response head read; the service's answer is a handful of short headers.
const MAX_RESPONSE: usize = 16 * 1024;
/// Longest `Auth-Status` error text passed on to the client.
const MAX_MESSAGE: usize = 200;

/// Asks an nginx-style HTTP auth service where a user lives, and whether it may log in.
///
/// Request (HTTP/1.1, `Connection: close`): `Auth-Method: plain` (`external` when the login
/// carries no password: SASL mechanisms relayed to the backend), `Auth-User`, `Auth-Pass`
/// (both escaped as nginx does: `%XX` for `%`, space, control and non-ASCII bytes),
/// `Auth-Protocol: imap`, `Auth-Login-Attempt`, `Client-IP` (when known), plus any
/// [`HttpAuthDirectory::with_header`] (nginx's `auth_http_header`, e.g. a shared secret).
///
/// Answer, from the response headers of a 2xx response:
/// - `Auth-Status: OK` with `Auth-Server`/`Auth-Port` → [`Route::Backend`] of the backend whose
///   `addr` is `server:port` (or whose name is `Auth-Server`). An address that is no
///   configured backend is [`Error::DirectoryUnavailable`]: the proxy never connects where a
///   service points it unless the operator listed that server. `OK` without `Auth-Server` →
///   `None` (the selector decides).
/// - any other `Auth-Status` → [`Error::Denied`] with that text and `Auth-Wait` (seconds).
/// - no answer, a non-2xx status, a malformed or oversized (> 16 KiB) head →
///   [`Error::DirectoryUnavailable`].
///
/// [`HttpAuthDirectory::parse_response`] is this reading of an answer on its own, without I/O.
///
/// Plain `http://` only (a loopback or internal service); no time bound of its own: wrap it
/// in [`crate::CachedDirectory`]. [`Directory::lookup`] without a password sends an empty
/// `Auth-Pass`.
#[derive(Debug, Clone)]
pub struct HttpAuthDirectory {
    connect: String,
    host: String,
    path: String,
    headers: String,
    backends: Vec<(String, Option<SocketAddr>, BackendId)>,
}

impl HttpAuthDirectory {
    /// A directory for the service at `url` (`http://host[:port]/path`, port 80 by default).
    ///
    /// # Errors
    /// [`Error::InvalidDirectory`] when `url` is not such a URL.
    pub fn new(url: &str) -> Result<Self, Error> {
        let invalid = |why: &str| Error::InvalidDirectory(format!("http url {url:?}: {why}"));
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| invalid("must start with http:// (https is not supported)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(invalid("needs a host and no user info"));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) || path.contains('#') {
            return Err(invalid(
                "the path has spaces, control characters or a fragment",
            ));
        }
        // `[v6]:port`, `host:port`, or a host alone.
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let connect = if has_port {
            let port = authority.rsplit(':').next().unwrap_or_default();
            port.parse::<u16>().map_err(|_| invalid("bad port"))?;
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            connect,
            host: authority.to_owned(),
            path: path.to_owned(),
            headers: String::new(),
            backends: Vec::new(),
        })
    }

    /// The backends an `Auth-Server`/`Auth-Port` answer may name (typically every configured
    /// backend). Replaces any earlier list.
    #[must_use]
    pub fn with_backends<'b>(mut self, backends: impl IntoIterator<Item = &'b Backend>) -> Self {
        self.backends = backends
            .into_iter()
            .map(|b| (b.addr.clone(), b.addr.parse().ok(), b.id.clone()))
            .collect();
        self
    }

    /// Adds a request header to every request (nginx's `auth_http_header`).
    ///
    /// # Errors
    /// [`Error::InvalidDirectory`] when the name or value has characters a header cannot
    /// carry (CR, LF, or a name that is not a token).
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Self, Error> {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(Error::InvalidDirectory(format!(
                "http header {name:?} is not a valid header"
            )));
        }
        let _ = write!(self.headers, "{name}: {value}\r\n");
        Ok(self)
    }

    fn request(&self, ctx: &LookupContext<'_>) -> String {
        // Without a password (SASL mechanisms the backend verifies itself: SCRAM, OAuth),
        // nginx's `external`: the service routes, the backend authenticates.
        let method = if ctx.password.is_some() {
            "plain"
        } else {
            "external"
        };
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuth-Method: {method}\r\n\
             Auth-User: {}\r\nAuth-Pass: {}\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: {}\r\n",
            self.path,
            self.host,
            escape(ctx.user.as_bytes()),
            escape(ctx.password.unwrap_or_default()),
            ctx.login_attempt,
        );
        if let Some(ip) = ctx.client_ip {
            let _ = write!(req, "Client-IP: {ip}\r\n");
        }
        req.push_str(&self.headers);
        req.push_str("\r\n");
        req
    }

    async fn exchange(&self, request: &[u8]) -> Result<Vec<u8>, Error> {
        let unavailable = |e: std::io::Error| {
            Error::DirectoryUnavailable(format!("auth service {}: {e}", self.connect))
        };
        let mut stream = TcpStream::connect(&self.connect)
            .await
            .map_err(unavailable)?;
        stream.write_all(request).await.map_err(unavailable)?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            if find_head_end(&buf).is_some() {
                return Ok(buf);
            }
            if buf.len() >= MAX_RESPONSE {
                return Err(Error::DirectoryUnavailable(format!(
                    "auth service {}: response head larger than {MAX_RESPONSE} bytes",
                    self.connect
                )));
            }
            let n = stream.read(&mut chunk).await.map_err(unavailable)?;
            if n == 0 {
                return Err(Error::DirectoryUnavailable(format!(
                    "auth service {}: connection closed before the end of the headers",
                    self.connect
                )));
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    fn backend_for(&self, server: &str, port: Option<&str>) -> Option<BackendId> {
        let joined = port.map(|p| {
            if server.contains(':') && !server.starts_with('[') {
                format!("[{server}]:{p}")
            } else {
                format!("{server}:{p}")
            }
        });
        let parsed: Option<SocketAddr> = joined.as_deref().and_then(|j| j.parse().ok());
        let by_addr = self.backends.iter().find(|(addr, sock, _)| {
            joined.as_deref() == Some(addr.as_str()) || (parsed.is_some() && *sock == parsed)
        });
        by_addr
            .or_else(|| {
                self.backends
                    .iter()
                    .find(|(_, _, id)| id.as_str() == server)
            })
            .map(|(_, _, id)| id.clone())
    }

    /// Interprets the auth service's answer exactly as [`Directory::lookup_with`] does after
    /// sending its request: the same rules as listed on [`HttpAuthDirectory`].
    ///
    /// `response` is what the service sent, at least through the end of its head
    /// (`\r\n\r\n`); anything after the head (the body) is ignored. Useful to check a
    /// service's answers without a network (what would this answer route to?), or to talk to
    /// the service over a transport of your own.
    ///
    /// Strict where a lenient reading could route a login somewhere the service did not mean:
    /// a head that is cut short, a status line that is not `HTTP/1.x NNN`, a header line that
    /// is not `name: value` (including obsolete line folding), and `Auth-Server`/`Auth-Port`/
    /// `Auth-Wait` given twice with different values are all
    /// [`Error::DirectoryUnavailable`]. Every `Auth-Status` counts (as in nginx): one that
    /// is not `OK` denies the login, whatever the others say.
    ///
    /// ```
    /// use imapproxy_route::{Backend, Error, HttpAuthDirectory, Route};
    ///
    /// let directory = HttpAuthDirectory::new("http://127.0.0.1:9000/auth")?
    ///     .with_backends(&[Backend::new("mail1", "10.0.0.1:143")]);
    /// let ok = b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n\
    ///            Auth-Server: 10.0.0.1\r\nAuth-Port: 143\r\n\r\n";
    /// assert_eq!(directory.parse_response(ok), Ok(Some(Route::Backend("mail1".into()))));
    /// let no = b"HTTP/1.1 200 OK\r\nAuth-Status: Invalid login\r\nAuth-Wait: 3\r\n\r\n";
    /// assert!(matches!(directory.parse_response(no), Err(Error::Denied { .. })));
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Denied`] when the service refused the login, [`Error::DirectoryUnavailable`]
    /// when the answer is not a usable 2xx answer or names a server that is no configured
    /// backend.
    pub fn parse_response(&self, response: &[u8]) -> Result<Option<Route>, Error> {
        let bad = |why: &str| {
            Error::DirectoryUnavailable(format!("auth service {}: {why}", self.connect))
        };
        let end = find_head_end(response).ok_or_else(|| bad("incomplete response head"))?;
        // Lossy: a refusal text in Latin-1 is still a refusal; a mangled Auth-Server simply
        // matches no backend.
        let text = String::from_utf8_lossy(response.get(..end - 4).unwrap_or_default());
        let mut lines = text.split("\r\n");
        let code = status_code(lines.next().unwrap_or_default())
            .ok_or_else(|| bad("not an HTTP/1.x response"))?;
        if !code.starts_with('2') {
            return Err(bad(&format!("HTTP status {code}")));
        }
        let mut answer = Answer::default();
        for line in lines {
            let (name, value) = header(line).ok_or_else(|| bad("malformed header line"))?;
            let slot = match name.to_ascii_lowercase().as_str() {
                "auth-status" => {
                    // nginx: any refusal wins; the first one's text is shown.
                    if value != "OK" && answer.refusal.is_none() {
                        answer.refusal = Some(value);
                    }
                    answer.status = true;
                    continue;
                }
                "auth-server" => &mut answer.server,
                "auth-port" => &mut answer.port,
                "auth-wait" => &mut answer.wait,
                _ => continue,
            };
            if slot.is_some_and(|old| old != value) {
                return Err(bad(&format!("conflicting {name} headers")));
            }
            *slot = Some(value);
        }
        if !answer.status {
            return Err(bad("no Auth-Status header"));
        }
        if let Some(refusal) = answer.refusal {
            let message: String = refusal
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_MESSAGE)
                .collect();
            return Err(Error::Denied {
                message,
                wait: answer
                    .wait
                    .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|w| w.parse::<u64>().ok())
                    .map(Duration::from_secs),
            });
        }
        let Some(server) = answer.server else {
            return Ok(None);
        };
        self.backend_for(server, answer.port)
            .map(Route::Backend)
            .map(Some)
            .ok_or_else(|| {
                bad(&format!(
                    "Auth-Server {:?} port {:?} is not a configured backend",
                    clip(server),
                    clip(answer.port.unwrap_or_default()),
                ))
            })
    }
}

/// The auth headers of one answer, borrowed from its head.
#[derive(Default)]
struct Answer<'a> {
    /// Whether any `Auth-Status` header was present.
    status: bool,
    /// The first `Auth-Status` other than `OK`.
    refusal: Option<&'a str>,
    server: Option<&'a str>,
    port: Option<&'a str>,
    wait: Option<&'a str>,
}

/// The status code of an `HTTP/1.x NNN reason` line (RFC 9112 §4).
fn status_code(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("HTTP/1.")?;
    let (version, rest) = rest.split_at_checked(1)?;
    let rest = rest.strip_prefix(' ')?;
    let (code, reason) = rest.split_at_checked(3)?;
    let valid = version.bytes().all(|b| b.is_ascii_digit())
        && code.bytes().all(|b| b.is_ascii_digit())
        && (reason.is_empty() || reason.starts_with(' '));
    valid.then_some(code)
}

/// A `name: value` header line (RFC 9112 §5): the name a token, no whitespace before the
/// colon, the value without surrounding blanks and free of control characters other than
/// tab. A line starting with a blank (obsolete folding) is not a header.
fn header(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let value = value.trim_matches([' ', '\t']);
    let clean = !value.chars().any(|c| c.is_control() && c != '\t');
    (token && clean).then_some((name, value))
}

/// At most 64 characters of a service-provided value, for an error message.
fn clip(value: &str) -> &str {
    value
        .char_indices()
        .nth(64)
        .map_or(value, |(i, _)| value.get(..i).unwrap_or_default())
}

#[async_trait::async_trait]
impl Directory for HttpAuthDirectory {
    async fn lookup(&self, user: &str) -> Result<Option<Route>, Error> {
        self.lookup_with(&LookupContext::new(user)).await
    }

    async fn lookup_with(&self, ctx: &LookupContext<'_>) -> Result<Option<Route>, Error> {
        let head = self.exchange(self.request(ctx).as_bytes()).await?;
        self.parse_response(&head)
    }
}

/// Where the response head ends (`\r\n\r\n`), after it.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// nginx's escaping of `Auth-User`/`Auth-Pass`: `%XX` for `%`, space, control and
/// non-ASCII bytes, so no value can break the header line (no CR/LF reaches the wire).
fn escape(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if b <= b' ' || b == b'%' || b >= 0x7f {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> HttpAuthDirectory {
        HttpAuthDirectory::new("http://127.0.0.1:9000/auth")
            .unwrap()
            .with_backends(&[
                Backend::new("mail1", "127.0.0.1:10143"),
                Backend::new("mail2", "localhost:10144"),
            ])
    }

    #[test]
    fn urls_are_checked() {
        let d = HttpAuthDirectory::new("http://auth.internal/x?y=1").unwrap();
        assert_eq!(d.connect, "auth.internal:80");
        assert_eq!(d.path, "/x?y=1");
        assert_eq!(HttpAuthDirectory::new("http://[::1]:81").unwrap().path, "/");
        for bad in [
            "https://a/",
            "a:80/",
            "http:///x",
            "http://a:x/",
            "http://a/b c",
        ] {
            assert!(HttpAuthDirectory::new(bad).is_err(), "{bad}");
        }
        assert!(dir().with_header("X-Auth-Key", "s\r\nX: y").is_err());
    }

    #[test]
    fn requests_escape_credentials() {
        let ctx = LookupContext::new("al ice")
            .with_password(b"p%w\r\n\xff")
            .with_client_ip("192.0.2.1".parse().unwrap());
        let req = dir().with_header("X-Auth-Key", "k").unwrap().request(&ctx);
        assert!(req.starts_with("GET /auth HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n"));
        assert!(req.contains("Auth-User: al%20ice\r\n"));
        assert!(req.contains("Auth-Pass: p%25w%0D%0A%FF\r\n"));
        assert!(req.contains("Client-IP: 192.0.2.1\r\nX-Auth-Key: k\r\n\r\n"));
    }

    #[test]
    fn answers_are_interpreted() {
        let d = dir();
        let ok = |h: &str| d.parse_response(format!("HTTP/1.1 200 OK\r\n{h}\r\n").as_bytes());
        assert_eq!(
            ok("Auth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 10143\r\n"),
            Ok(Some(Route::Backend("mail1".into())))
        );
        assert_eq!(
            ok("auth-status: OK\r\nauth-server: localhost\r\nauth-port: 10144\r\n"),
            Ok(Some(Route::Backend("mail2".into())))
        );
        assert_eq!(
            ok("Auth-Status: OK\r\nAuth-Server: mail2\r\n"),
            Ok(Some(Route::Backend("mail2".into())))
        );
        assert_eq!(ok("Auth-Status: OK\r\n"), Ok(None));
        assert!(matches!(
            ok("Auth-Status: OK\r\nAuth-Server: 10.9.9.9\r\nAuth-Port: 143\r\n"),
            Err(Error::DirectoryUnavailable(_))
        ));
        assert_eq!(
            ok("Auth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n"),
            Err(Error::Denied {
                message: "Invalid login or password".into(),
                wait: Some(Duration::from_secs(3)),
            })
        );
        assert!(matches!(
            ok("X: y\r\n"),
            Err(Error::DirectoryUnavailable(_))
        ));
        assert!(matches!(
            d.parse_response(b"HTTP/1.1 500 Oops\r\n\r\n"),
            Err(Error::DirectoryUnavailable(_))
        ));
        assert!(d.parse_response(b"garbage\r\n\r\n").is_err());
        assert!(d.parse_response(b"HTTP/1.1 2").is_err());
    }

    fn unavailable(r: Result<Option<Route>, Error>) -> bool {
        matches!(r, Err(Error::DirectoryUnavailable(_)))
    }

    #[test]
    fn a_head_cut_short_is_never_an_answer() {
        let d = dir();
        let full = b"HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n\
                     Auth-Port: 10143\r\n\r\n";
        assert_eq!(
            d.parse_response(full),
            Ok(Some(Route::Backend("mail1".into())))
        );
        // Cut inside the port ("1014") or before the blank line: no route to a wrong port.
        for end in 0..full.len() {
            assert!(unavailable(d.parse_response(&full[..end])), "{end}");
        }
    }

    #[test]
    fn the_body_is_ignored() {
        let d = dir();
        let answer = d.parse_response(
            b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nContent-Length: 32\r\n\r\n\
              Auth-Status: nope\r\n\r\n\xff\x00",
        );
        assert_eq!(answer, Ok(None));
    }

    #[test]
    fn status_lines_must_be_http_1() {
        let d = dir();
        for status in [
            "HTTP/1.1 2xx OK",
            "HTTP/1.1  200 OK",
            "HTTP/1.1 2000 OK",
            "HTTP/2 200 OK",
            "HTTP/1.x 200 OK",
            " HTTP/1.1 200 OK",
        ] {
            let r = d.parse_response(format!("{status}\r\nAuth-Status: OK\r\n\r\n").as_bytes());
            assert!(unavailable(r), "{status}");
        }
        let r = d.parse_response(b"HTTP/1.1 204\r\nAuth-Status: OK\r\n\r\n");
        assert_eq!(r, Ok(None));
    }

    #[test]
    fn malformed_or_conflicting_headers_are_unavailable() {
        let d = dir();
        let ok = |h: &str| d.parse_response(format!("HTTP/1.1 200 OK\r\n{h}\r\n").as_bytes());
        // A folded line continues the header before it; it is not an Auth-Status of its own.
        assert!(unavailable(ok("X-Note: a\r\n Auth-Status: OK\r\n")));
        assert!(unavailable(ok("Auth-Status : OK\r\n")));
        assert!(unavailable(ok("Auth-Status: OK\r\nno colon here\r\n")));
        assert!(unavailable(ok("Auth-Status: OK\nAuth-Server: mail1\r\n")));
        assert!(unavailable(ok(
            "Auth-Status: OK\r\nAuth-Server: mail1\r\nAuth-Server: mail2\r\n"
        )));
        assert!(unavailable(ok(
            "Auth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 10143\r\nAuth-Port: 1\r\n"
        )));
        assert_eq!(
            ok("Auth-Status: OK\r\nAuth-Server: mail1\r\nAuth-Server: mail1\r\n"),
            Ok(Some(Route::Backend("mail1".into())))
        );
        // An error text naming a long server is clipped.
        let long = "x".repeat(10_000);
        let Err(Error::DirectoryUnavailable(why)) =
            ok(&format!("Auth-Status: OK\r\nAuth-Server: {long}\r\n"))
        else {
            panic!("unknown server accepted");
        };
        assert!(why.len() < 200, "{why}");
    }

    #[test]
    fn any_refusal_wins_over_ok() {
        let d = dir();
        for head in [
            "Auth-Status: OK\r\nAuth-Status: Locked\r\nAuth-Server: mail1\r\n",
            "Auth-Status: Locked\r\nAuth-Status: OK\r\nAuth-Server: mail1\r\n",
        ] {
            let r = d.parse_response(format!("HTTP/1.1 200 OK\r\n{head}\r\n").as_bytes());
            assert_eq!(
                r,
                Err(Error::Denied {
                    message: "Locked".into(),
                    wait: None
                }),
                "{head}"
            );
        }
        let r = d.parse_response(
            b"HTTP/1.1 200 OK\r\nAuth-Status: Wait \xe9t\xe9\r\nAuth-Wait: +3\r\n\r\n",
        );
        assert_eq!(
            r,
            Err(Error::Denied {
                message: "Wait \u{fffd}t\u{fffd}".into(),
                wait: None
            })
        );
    }
}
