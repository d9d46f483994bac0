//! The `imapproxy` binary end to end: configuration, real clients (curl, Python's imaplib),
//! Dovecot's view of the client address, bounded memory under hostile input, SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Binary, loopback};
use imapproxy_testkit::{Dovecot, TestClient};

const ADMIN_TOKEN: &str = "t0ken-for-tests";

fn dovecot() -> &'static Dovecot {
    Dovecot::shared()
}

/// The proxy under test and its listeners.
struct ProxyProcess {
    binary: Binary,
    plain: SocketAddr,
    starttls: SocketAddr,
    implicit: SocketAddr,
    admin: SocketAddr,
}

impl ProxyProcess {
    fn start() -> Self {
        let [plain, starttls, implicit, admin] = [(); 4].map(|()| loopback());
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

[session]
shutdown_grace = "3s"

[admin]
addr = "{admin}"
token = "{ADMIN_TOKEN}"
"#,
            backend = dovecot().imap_addr()
        );
        Self {
            binary: Binary::start(&config, &[plain, starttls, implicit, admin]),
            plain,
            starttls,
            implicit,
            admin,
        }
    }

    fn rss_kib(&self) -> u64 {
        self.binary.rss_kib()
    }
}

fn imapproxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imapproxy"))
        .args(args)
        .output()
        .unwrap()
}

fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn check_accepts_a_valid_config_and_explains_a_bad_one() {
    let (_d, good) = write_config(
        "[[listeners]]\naddr = \"127.0.0.1:1143\"\ntls = \"starttls\"\n\n\
         [[backends]]\nname = \"m\"\naddr = \"127.0.0.1:143\"\n\n[pool]\nidle_timeout = \"60s\"\n",
    );
    let out = imapproxy(&["check", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));

    let (_d, typo) = write_config("[pool]\nreuse = true\nwram = 2\n");
    let out = imapproxy(&["check", "--config", typo.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wram"),
        "{out:?}"
    );

    let out = imapproxy(&["check", "--config", "/nonexistent/imapproxy.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    // Environment overrides the file (`__` separates levels).
    let out = Command::new(env!("CARGO_BIN_EXE_imapproxy"))
        .args(["check", "--config", good.to_str().unwrap()])
        .env("IMAPPROXY_POOL__IDLE_TIMEOUT", "not-a-duration")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn curl_sessions_over_imap_and_imaps() {
    let proxy = ProxyProcess::start();
    let (user, pass) = dovecot().user(8);
    let creds = format!("{user}:{pass}");
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--user", &creds])
        .arg(format!("imap://{}/INBOX;UID=1", proxy.plain))
        .output()
        .expect("curl is installed (cargo xtask test installs it)");
    assert!(plain.status.success(), "{plain:?}");
    assert!(String::from_utf8_lossy(&plain.stdout).contains("Subject:"));

    let tls = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--insecure", "--user", &creds])
        .arg(format!("imaps://{}/INBOX;UID=2", proxy.implicit))
        .output()
        .unwrap();
    assert!(tls.status.success(), "{tls:?}");
    assert!(String::from_utf8_lossy(&tls.stdout).contains("Subject:"));

    // STARTTLS, required by the listener (plaintext login is refused before it).
    let starttls = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--insecure",
            "--ssl-reqd",
            "--user",
            &creds,
        ])
        .arg(format!("imap://{}/INBOX;UID=3", proxy.starttls))
        .output()
        .unwrap();
    assert!(starttls.status.success(), "{starttls:?}");
    assert!(String::from_utf8_lossy(&starttls.stdout).contains("Subject:"));
}

#[test]
fn dovecot_logs_the_clients_address_not_only_the_proxys() {
    let proxy = ProxyProcess::start();
    let (user, pass) = dovecot().user(9);
    // The client comes from 127.0.0.9; the proxy connects to Dovecot from 127.0.0.1.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--interface", "127.0.0.9"])
        .args(["--user", &format!("{user}:{pass}")])
        .arg(format!("imap://{}/INBOX;UID=1", proxy.plain))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = dovecot().log();
        let hit = log
            .lines()
            .any(|l| l.contains(&format!("user=<{user}>")) && l.contains("rip=127.0.0.9"));
        if hit {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rip=127.0.0.9 for {user} in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn python_imaplib_sessions() {
    let proxy = ProxyProcess::start();
    let (user, pass) = dovecot().user(10);
    let script = format!(
        r#"
import imaplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def session(m):
    typ, _ = m.login({user:?}, {pass:?}); assert typ == 'OK', typ
    typ, data = m.select('INBOX'); assert typ == 'OK' and int(data[0]) >= 5, data
    typ, data = m.search(None, 'ALL'); assert typ == 'OK' and len(data[0].split()) >= 5, data
    typ, data = m.fetch('1', '(BODY.PEEK[HEADER.FIELDS (SUBJECT)])'); assert typ == 'OK', data
    assert b'Subject' in data[0][1], data
    typ, data = m.noop(); assert typ == 'OK'
    typ, _ = m.logout(); assert typ == 'BYE', typ
session(imaplib.IMAP4('127.0.0.1', {plain}))
m = imaplib.IMAP4('127.0.0.1', {starttls}); m.starttls(ssl_context=ctx); session(m)
session(imaplib.IMAP4_SSL('127.0.0.1', {implicit}, ssl_context=ctx))
print('ok')
"#,
        plain = proxy.plain.port(),
        starttls = proxy.starttls.port(),
        implicit = proxy.implicit.port(),
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn hostile_input_keeps_memory_bounded() {
    let proxy = ProxyProcess::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = proxy.plain;
    // Warm up allocator pools with a few normal sessions first.
    rt.block_on(async {
        for _ in 0..5 {
            let mut c = TestClient::connect(addr).await.unwrap();
            c.cmd("a", "NOOP").await.unwrap();
        }
    });
    let before = proxy.rss_kib();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..50 {
            tasks.push(tokio::spawn(async move {
                let mut c = TestClient::connect(addr).await.unwrap();
                let mut junk = match i % 3 {
                    0 => b"a LOGIN ".to_vec(),
                    1 => b"a LOGIN {4294967295+}\r\n".to_vec(),
                    _ => b"a ID (\"x\" {4000+}\r\n".to_vec(),
                };
                junk.resize(1 << 20, b'z');
                let _ = c.send_raw(&junk).await;
                let _ = c.expect_eof(Duration::from_secs(5)).await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let after = proxy.rss_kib();
    // 50 MiB went in; what stays must be far less (allocator slack included).
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    rt.block_on(async {
        let (user, pass) = dovecot().user(11);
        let mut c = TestClient::connect(addr).await.unwrap();
        assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
    });
}

#[test]
fn sigterm_drains_then_says_bye_and_exits_cleanly() {
    let mut proxy = ProxyProcess::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = proxy.plain;
    let (user, pass) = dovecot().user(12);
    let mut client = rt.block_on(async {
        let mut c = TestClient::connect(addr).await.unwrap();
        assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
        c
    });
    proxy.binary.signal("TERM");
    // Draining: the listeners close at once, the running session goes on working during
    // the grace period (3 s in this config)...
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after SIGTERM"
    );
    let r = rt.block_on(client.cmd("n", "NOOP")).unwrap();
    assert!(r.tagged_ok(), "{}", r.text());
    // ...and is told BYE when it is over.
    let line = rt.block_on(client.read_line()).unwrap();
    assert!(
        line.starts_with(b"* BYE"),
        "{:?}",
        String::from_utf8_lossy(&line)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = proxy.binary.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "proxy still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}

/// glibc's allocator set compact (`heap.rs`): the binary executes itself again once at start,
/// keeping its process id and name, with `GLIBC_TUNABLES` for its thread count, unless the
/// configuration turns it off or the operator set `GLIBC_TUNABLES`; sessions work each way.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_heap_settings_are_applied_at_start_unless_turned_off_or_set_by_the_operator() {
    const MARKER: &str = "IMAPPROXY_HEAP_COMPACTED";
    const OURS: &str = "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0:glibc.malloc.arena_max=2";
    const THEIRS: &str = "glibc.malloc.arena_max=3";
    /// A start: the `[server]` lines and environment given, the marker and the first setting
    /// of `GLIBC_TUNABLES` expected.
    struct Start {
        server: &'static str,
        env: &'static [(&'static str, &'static str)],
        marker: Option<&'static str>,
        tunables: Option<&'static str>,
    }
    let cases = [
        // Six worker threads: an arena per four.
        Start {
            server: "",
            env: &[],
            marker: Some(OURS),
            tunables: Some(OURS),
        },
        Start {
            server: "heap_compact = false\n",
            env: &[],
            marker: None,
            tunables: None,
        },
        Start {
            server: "",
            env: &[("GLIBC_TUNABLES", THEIRS)],
            marker: None,
            tunables: Some(THEIRS),
        },
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pass) = dovecot().user(13);
    for Start {
        server,
        env,
        marker,
        tunables,
    } in cases
    {
        let plain = loopback();
        let config = format!(
            "[[listeners]]\naddr = \"{plain}\"\ntls = \"none\"\nallow_plaintext_auth = true\n\n\
             [[backends]]\nname = \"mail1\"\naddr = \"{}\"\n\n[server]\nthreads = 6\n{server}",
            dovecot().imap_addr()
        );
        let binary = common::Binary::start_with_env(&config, &[plain], env);
        rt.block_on(async {
            let mut c = TestClient::connect(plain).await.unwrap();
            assert!(c.login(&user, &pass).await.unwrap().tagged_ok());
            assert!(c.cmd("s", "SELECT INBOX").await.unwrap().tagged_ok());
        });
        // The process that was started (same id) now runs with this environment. glibc
        // rewrites its copy of GLIBC_TUNABLES in place as it parses it: only the first
        // setting is sure to read back whole.
        let environ = std::fs::read(format!("/proc/{}/environ", binary.pid())).unwrap();
        let var = |name: &str| {
            environ.split(|&b| b == 0).find_map(|v| {
                let v = std::str::from_utf8(v).ok()?;
                v.strip_prefix(name)?.strip_prefix('=').map(str::to_owned)
            })
        };
        assert_eq!(var(MARKER).as_deref(), marker, "{config}");
        // Named as it was started, not `exe` (what executing /proc/self/exe names it).
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", binary.pid())).unwrap();
        assert_eq!(comm.trim_end(), "imapproxy", "{config}");
        let first = |t: &str| t.split(':').next().unwrap().to_owned();
        assert_eq!(
            var("GLIBC_TUNABLES").map(|t| first(&t)),
            tunables.map(first),
            "{config}"
        );
    }
}

/// `curl` against the admin endpoint: (HTTP status, body).
fn admin(proxy: &ProxyProcess, method: &str, path: &str, token: bool) -> (u16, String) {
    common::admin_request(proxy.admin, method, path, token.then_some(ADMIN_TOKEN), &[])
}

#[test]
fn admin_endpoint_reports_drains_and_exports_metrics() {
    let proxy = ProxyProcess::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (user, pass) = dovecot().user(19);

    assert_eq!(
        admin(&proxy, "GET", "/healthz", false),
        (200, "ok\n".into())
    );
    assert_eq!(
        admin(&proxy, "GET", "/backends", false).0,
        401,
        "the token is required"
    );

    let login = |expect_ok: bool| {
        rt.block_on(async {
            let mut c = TestClient::connect(proxy.plain).await.unwrap();
            let r = c.login(&user, &pass).await.unwrap();
            assert_eq!(r.tagged_ok(), expect_ok, "{}", r.text());
            if expect_ok {
                assert!(c.logout().await.unwrap().tagged_ok());
            }
        })
    };
    login(true);

    let (code, body) = admin(&proxy, "GET", "/backends", true);
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["backends"][0]["name"], "mail1");
    assert_eq!(json["backends"][0]["health"], "up");
    assert!(json["pool"]["misses"].as_u64().unwrap() >= 1, "{json}");

    // Prometheus text: every sample line is `name{labels} value`, and the counters moved.
    let (code, metrics) = admin(&proxy, "GET", "/metrics", true);
    assert_eq!(code, 200);
    for line in metrics
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample {line:?}");
        assert!(
            name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'),
            "{line:?}"
        );
    }
    assert!(
        metrics.contains("imapproxy_pool_checkouts_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imapproxy_backend_health{backend=\"mail1\",state=\"up\"} 1"),
        "{metrics}"
    );
    // The login counters move as logins happen.
    let logins = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("imapproxy_logins_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let before = logins(&metrics);
    assert!(before >= 1.0, "{metrics}");
    login(true);
    let after = logins(&admin(&proxy, "GET", "/metrics", true).1);
    assert_eq!(after, before + 1.0);

    // Draining the only backend: no new sessions; undrain brings it back.
    let (code, body) = admin(&proxy, "POST", "/backends/mail1/drain", true);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("draining"));
    login(false);
    assert_eq!(admin(&proxy, "POST", "/backends/nope/drain", true).0, 404);
    assert_eq!(
        admin(&proxy, "POST", "/backends/mail1/undrain", true).0,
        200
    );
    login(true);

    // The status page names every backend.
    let (code, page) = admin(&proxy, "GET", "/", true);
    assert_eq!(code, 200);
    assert!(page.contains("<td>mail1</td>"), "{page}");
    assert!(page.contains(&dovecot().imap_addr().to_string()));
}
