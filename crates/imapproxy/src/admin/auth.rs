//! Who is asking: the bearer token of API clients, or the login session of a browser, and the
//! anti-CSRF value every state change from the console carries.
//!
//! A browser cannot send `Authorization: Bearer`, so `POST /login` trades the token for a
//! cookie. The cookie never holds the token: it is `<issued>.<HMAC(session key, issued)>`,
//! valid for [`SESSION_LIFETIME`] and in this process only (the keys are random per process,
//! so a restart logs every browser out). It is `HttpOnly` (no script reads it),
//! `SameSite=Strict` (no other site's page makes the browser send it) and `Path=/`. It cannot be
//! `Secure`: the endpoint speaks plain HTTP, which is why it belongs on loopback or a private
//! network.
//!
//! The browser attaches a cookie on its own, so a request the cookie authenticates must also
//! prove that the console page sent it: the `X-Imapproxy-Csrf` header, whose value is
//! `HMAC(csrf key, cookie)` and is embedded in the page. Another site can neither read the page
//! (same-origin policy; DNS rebinding is stopped by the `Host` check) nor put a custom header
//! on a cross-site form post, and `fetch` from another origin would need CORS, which this
//! endpoint never grants.
//!
//! Without `[admin].token` (a loopback-only endpoint) there is no login. The header is then
//! required of state changes that carry an `Origin`, i.e. that a browser sent (browsers send
//! `Origin` with every POST and DELETE), and not of API clients such as curl and scripts, which
//! keep working unchanged. A cross-site page is already refused for its `Origin`; the header
//! makes the console's requests prove themselves in both modes alike, so that a hole in the
//! `Origin` check alone would not be enough.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imapproxy_codec::constant_time_eq;
use ring::hmac;
use ring::rand::SystemRandom;
use tracing::warn;

use super::console::login_page;
use super::http::{Request, Response, body_param};
use super::same;

/// The cookie that carries a console login.
const COOKIE: &str = "imapproxy_console";
/// How long a console login lasts.
pub(super) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How far in the future an issue time may lie (clock steps) and still be accepted.
const CLOCK_SLACK: u64 = 60;

/// How a request proved itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Caller {
    /// No `[admin].token` is configured: whoever can connect may act.
    Open,
    /// The bearer token: an API client.
    Bearer,
    /// A console login: the session cookie's value.
    Browser(String),
}

/// The per-process keys behind console logins, anti-CSRF values and script nonces.
pub(super) struct Auth {
    session: hmac::Key,
    csrf: hmac::Key,
    nonce: hmac::Key,
    /// Numbers the page nonces; each is MACed, so none can be predicted from another.
    pages: AtomicU64,
}

impl Auth {
    /// Fresh random keys; `None` when the system has no randomness to give (then no key
    /// would be secret, and a forgeable login is worse than none).
    pub(super) fn generate() -> Option<Self> {
        let rng = SystemRandom::new();
        let key = || hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok();
        Some(Self {
            session: key()?,
            csrf: key()?,
            nonce: key()?,
            pages: AtomicU64::new(0),
        })
    }

    /// Who sent `req`, given the configured token; `None` when it proved nothing. A bearer
    /// header, when present, decides alone: a wrong one is not rescued by a cookie.
    pub(super) fn authenticate(
        &self,
        req: &Request,
        token: Option<&str>,
        now: u64,
    ) -> Option<Caller> {
        let Some(token) = token else {
            return Some(Caller::Open);
        };
        if let Some(bearer) = req
            .authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            return same(bearer.as_bytes(), token.as_bytes()).then_some(Caller::Bearer);
        }
        cookie_values(req.cookie.as_deref()?, COOKIE)
            .find(|v| self.session_valid(v, now))
            .map(|v| Caller::Browser(v.to_owned()))
    }

    /// Whether a state-changing request from `caller` may go ahead: API clients need nothing
    /// more; a browser needs the page's anti-CSRF value (see the module docs).
    pub(super) fn csrf_ok(&self, caller: &Caller, req: &Request) -> bool {
        let needed = match caller {
            Caller::Bearer => false,
            Caller::Open => req.origin.is_some(),
            Caller::Browser(_) => true,
        };
        !needed
            || req
                .csrf
                .as_deref()
                .is_some_and(|v| constant_time_eq(v.as_bytes(), self.csrf_token(caller).as_bytes()))
    }

    /// The anti-CSRF value the console page embeds for `caller`.
    pub(super) fn csrf_token(&self, caller: &Caller) -> String {
        let session = match caller {
            Caller::Browser(cookie) => cookie.as_str(),
            Caller::Open | Caller::Bearer => "",
        };
        hex(hmac::sign(&self.csrf, session.as_bytes()).as_ref())
    }

    /// A nonce for one page's `Content-Security-Policy`: only the page's own script and style
    /// run, even if some text ever escaped escaping.
    pub(super) fn page_nonce(&self) -> String {
        let n = self.pages.fetch_add(1, Ordering::Relaxed);
        hex(&hmac::sign(&self.nonce, &n.to_be_bytes()).as_ref()[..16])
    }

    /// A new login session issued at `now` (Unix seconds).
    fn new_session(&self, now: u64) -> String {
        let issued = now.to_string();
        let mac = hex(hmac::sign(&self.session, issued.as_bytes()).as_ref());
        format!("{issued}.{mac}")
    }

    fn session_valid(&self, value: &str, now: u64) -> bool {
        let Some((issued, mac)) = value.split_once('.') else {
            return false;
        };
        let Ok(at) = issued.parse::<u64>() else {
            return false;
        };
        let fresh = at <= now.saturating_add(CLOCK_SLACK)
            && now.saturating_sub(at) < SESSION_LIFETIME.as_secs();
        let expected = hex(hmac::sign(&self.session, issued.as_bytes()).as_ref());
        fresh && constant_time_eq(expected.as_bytes(), mac.as_bytes())
    }
}

/// `POST /login`: the form's `token` for a session cookie, then back to the console.
pub(super) fn login(
    req: &Request,
    token: Option<&str>,
    auth: &Auth,
    refused: impl FnOnce(),
) -> Response {
    let Some(token) = token else {
        // Nothing to log in to: the console is open.
        return Response::see_other("/");
    };
    let presented = body_param(&req.body, "token").unwrap_or_default();
    if !same(presented.as_bytes(), token.as_bytes()) {
        warn!(host = ?req.host, "console login refused: wrong token");
        refused();
        return login_page(auth, Some("That is not the admin token."));
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        auth.new_session(unix_now()),
        SESSION_LIFETIME.as_secs()
    );
    Response::see_other("/").with_header("Set-Cookie", cookie)
}

/// `POST /logout`: the browser forgets its cookie. The value itself stays valid until it
/// expires (nothing is stored server-side to revoke); a restart revokes them all. No anti-CSRF
/// value is asked: a forged logout costs a login, and it works without the script.
pub(super) fn logout() -> Response {
    Response::see_other("/").with_header(
        "Set-Cookie",
        format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    )
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The values of the cookies called `name` in a `Cookie` header (RFC 6265 §5.4: `a=1; b=2`).
fn cookie_values<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
    header.split(';').filter_map(move |pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_750_000_000;

    fn request(authorization: Option<&str>, cookie: Option<&str>) -> Request {
        Request {
            method: "POST".into(),
            path: "/backends/m/drain".into(),
            authorization: authorization.map(Into::into),
            host: Some("127.0.0.1:8143".into()),
            origin: Some("http://127.0.0.1:8143".into()),
            cookie: cookie.map(Into::into),
            csrf: None,
            body: String::new(),
        }
    }

    fn auth() -> Auth {
        Auth::generate().unwrap()
    }

    #[test]
    fn a_session_cookie_is_accepted_until_it_expires_and_never_holds_the_token() {
        let auth = auth();
        let session = auth.new_session(NOW);
        assert!(!session.contains("s3cret"));
        let cookie = format!("other=1; {COOKIE}={session}");
        let req = request(None, Some(&cookie));
        assert_eq!(
            auth.authenticate(&req, Some("s3cret"), NOW + 60),
            Some(Caller::Browser(session.clone()))
        );
        let lifetime = SESSION_LIFETIME.as_secs();
        assert_eq!(
            auth.authenticate(&req, Some("s3cret"), NOW + lifetime),
            None
        );
        // Issued too far in the future: a forged time, or a clock that went back.
        assert_eq!(auth.authenticate(&req, Some("s3cret"), NOW - 3600), None);
    }

    #[test]
    fn forged_or_foreign_sessions_are_refused() {
        let (auth, other) = (auth(), auth());
        let session = auth.new_session(NOW);
        let (issued, mac) = session.split_once('.').unwrap();
        let later = format!("{}.{mac}", issued.parse::<u64>().unwrap() + 1);
        for forged in [
            other.new_session(NOW), // another process's key
            later,                  // the time moved, the MAC kept
            format!("{issued}."),
            "garbage".into(),
            String::new(),
        ] {
            let cookie = format!("{COOKIE}={forged}");
            let req = request(None, Some(&cookie));
            assert_eq!(auth.authenticate(&req, Some("t"), NOW), None, "{forged}");
        }
    }

    #[test]
    fn the_bearer_token_decides_alone_and_no_token_means_open() {
        let auth = auth();
        let cookie = format!("{COOKIE}={}", auth.new_session(NOW));
        let ok = request(Some("Bearer t"), None);
        assert_eq!(auth.authenticate(&ok, Some("t"), NOW), Some(Caller::Bearer));
        // A wrong bearer is not rescued by a valid cookie.
        let wrong = request(Some("Bearer x"), Some(&cookie));
        assert_eq!(auth.authenticate(&wrong, Some("t"), NOW), None);
        assert_eq!(
            auth.authenticate(&request(None, None), Some("t"), NOW),
            None
        );
        assert_eq!(
            auth.authenticate(&request(None, None), None, NOW),
            Some(Caller::Open)
        );
    }

    #[test]
    fn browser_state_changes_need_the_csrf_value_of_their_session() {
        let auth = auth();
        let (a, b) = (auth.new_session(NOW), auth.new_session(NOW + 1));
        let browser = Caller::Browser(a.clone());
        let mut req = request(None, Some(&format!("{COOKIE}={a}")));
        assert!(!auth.csrf_ok(&browser, &req), "no header");
        req.csrf = Some(auth.csrf_token(&Caller::Browser(b)));
        assert!(!auth.csrf_ok(&browser, &req), "another session's value");
        req.csrf = Some(auth.csrf_token(&Caller::Open));
        assert!(!auth.csrf_ok(&browser, &req), "the open console's value");
        req.csrf = Some(auth.csrf_token(&browser));
        assert!(auth.csrf_ok(&browser, &req));
        // Another process derives other values from the same cookie.
        assert_ne!(auth.csrf_token(&browser), self::auth().csrf_token(&browser));
        assert!(!auth.csrf_token(&browser).contains(&a));
    }

    #[test]
    fn api_clients_need_no_csrf_value_but_browsers_of_an_open_console_do() {
        let auth = auth();
        let mut req = request(None, None);
        assert!(auth.csrf_ok(&Caller::Bearer, &req));
        // A browser (it sends `Origin`) without the page's value.
        assert!(!auth.csrf_ok(&Caller::Open, &req));
        req.csrf = Some(auth.csrf_token(&Caller::Open));
        assert!(auth.csrf_ok(&Caller::Open, &req));
        // curl: no Origin, no value.
        req.origin = None;
        req.csrf = None;
        assert!(auth.csrf_ok(&Caller::Open, &req));
    }

    #[test]
    fn login_sets_an_opaque_strict_http_only_cookie_and_refuses_a_wrong_token() {
        let auth = auth();
        let mut req = request(None, None);
        req.body = "token=s3cr%65t".into();
        let refusals = std::cell::Cell::new(0);
        let ok = login(&req, Some("s3cret"), &auth, || {
            refusals.set(refusals.get() + 1)
        });
        assert_eq!(ok.status, "303 See Other");
        assert_eq!(refusals.get(), 0);
        let (_, cookie) = ok.headers.iter().find(|(k, _)| *k == "Set-Cookie").unwrap();
        assert!(cookie.starts_with("imapproxy_console="), "{cookie}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        assert!(!cookie.contains("s3cret"));
        req.body = "token=guess".into();
        let refused = login(&req, Some("s3cret"), &auth, || {
            refusals.set(refusals.get() + 1)
        });
        assert_eq!(refused.status, "401 Unauthorized");
        assert_eq!(refusals.get(), 1, "a wrong token is counted");
        assert!(!refused.headers.iter().any(|(k, _)| *k == "Set-Cookie"));
    }

    #[test]
    fn page_nonces_differ() {
        let auth = auth();
        let (a, b) = (auth.page_nonce(), auth.page_nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
