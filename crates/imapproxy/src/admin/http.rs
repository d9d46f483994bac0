//! The admin endpoint's HTTP/1.1: one request per connection, bounded head and body.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (`backend=<name>` and the like).
const MAX_BODY: usize = 4 * 1024;
/// The header that carries the console's anti-CSRF value (see `auth`).
pub(super) const CSRF_HEADER: &str = "x-imapproxy-csrf";

pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) authorization: Option<String>,
    /// `Host`, as sent.
    pub(super) host: Option<String>,
    /// `Origin`, sent by browsers with cross-origin and state-changing requests.
    pub(super) origin: Option<String>,
    /// `Cookie`, as sent: the console's login session travels in it.
    pub(super) cookie: Option<String>,
    /// `X-Imapproxy-Csrf`: what the console's script sends with every state change.
    pub(super) csrf: Option<String>,
    pub(super) body: String,
}

pub(super) async fn read_request(tcp: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let body_start = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut body = buf.split_off(body_start);
    buf.truncate(body_start.saturating_sub(4));
    let head = String::from_utf8(buf).ok()?;
    let mut first = head.split("\r\n").next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let authorization = header("authorization");
    let host = header("host");
    let origin = header("origin");
    let cookie = header("cookie");
    let csrf = header(CSRF_HEADER);
    let length: usize = match header("content-length") {
        Some(v) => v.parse().ok()?,
        None => 0,
    };
    if length > MAX_BODY {
        return None;
    }
    while body.len() < length {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Request {
        method,
        path,
        authorization,
        host,
        origin,
        cookie,
        csrf,
        body: String::from_utf8(body).ok()?,
    })
}

pub(super) struct Response {
    pub(super) status: &'static str,
    pub(super) content_type: &'static str,
    /// Headers besides the ones every answer has; names and values are ours, never a
    /// client's, so they cannot smuggle a line break into the head.
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: String,
}

impl Response {
    pub(super) fn new(
        status: &'static str,
        content_type: &'static str,
        body: impl Into<String>,
    ) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The same answer with one more header.
    pub(super) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// `303 See Other` to `location`: where a browser goes after posting a form.
    pub(super) fn see_other(location: &'static str) -> Self {
        Self::new("303 See Other", "text/plain; charset=utf-8", "")
            .with_header("Location", location)
    }

    pub(super) fn json(status: &'static str, value: serde_json::Value) -> Self {
        Self::new(status, "application/json", format!("{value}\n"))
    }

    pub(super) fn error(status: &'static str, message: &str) -> Self {
        Self::json(status, serde_json::json!({ "error": message }))
    }
}

/// `name`'s value in an `application/x-www-form-urlencoded` string.
pub(super) fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then(|| percent_decode(&v.replace('+', " ")))
    })
}

/// The body's `name`: a form (`backend=mail2`) or a JSON object (`{"backend":"mail2"}`).
pub(super) fn body_param(body: &str, name: &str) -> Option<String> {
    let body = body.trim();
    if body.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        return value.get(name)?.as_str().map(str::to_owned);
    }
    param(body, name)
}

/// Decodes `%XX` escapes (RFC 3986 §2.1); malformed escapes are kept as they are.
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
